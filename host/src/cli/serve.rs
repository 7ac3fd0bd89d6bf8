//! `keyhole serve`: run the HTTP API until SIGINT/SIGTERM, then drain and exit 0 (or 1
//! when a newer keyhole migrated the database under it).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::Keyhole;
use crate::server::{self, ServeConfig, Server, cancel_on_signals};

/// Arguments of `keyhole serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. The default is loopback only; put a TLS reverse proxy in
    /// front before exposing the API to a network.
    #[arg(long, default_value = server::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Invocations running at once (also the wasm instance pool size).
    #[arg(long, default_value_t = server::DEFAULT_MAX_IN_FLIGHT, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_in_flight: usize,
    /// Invocations waiting for a slot; beyond that requests get 503 with Retry-After.
    #[arg(long, default_value_t = server::DEFAULT_QUEUE, value_name = "N")]
    pub queue: usize,
    /// Largest request body in bytes (413 beyond); uploads are capped separately at 64 MiB.
    #[arg(long, default_value_t = server::DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
    pub max_body: usize,
    /// Memory for invocation inputs being received or run, in bytes: each reserves its
    /// Content-Length (--max-body if it sends none) before it is read; past this, 503.
    #[arg(long, default_value_t = server::DEFAULT_MAX_BODY_MEMORY, value_name = "BYTES")]
    pub max_body_memory: usize,
    /// Sustained requests per second per token (429 with Retry-After beyond); 0 disables.
    #[arg(long, default_value_t = server::DEFAULT_RATE_LIMIT, value_name = "PER_SECOND")]
    pub rate_limit: u32,
    /// Requests a token may send in a burst above its sustained rate.
    #[arg(long, default_value_t = server::DEFAULT_RATE_BURST, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,
    /// After SIGINT/SIGTERM, how long in-flight invocations get to finish, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,
    /// Open connections at most; more clients wait to be accepted until one closes, so
    /// idle or slow clients cannot use up the process's file descriptors.
    #[arg(long, default_value_t = server::DEFAULT_MAX_CONNECTIONS, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open; then the connection is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// Longest pause while a client sends a request body before it gets 408; an
    /// invocation's whole input must also arrive within it (a slow client never holds an
    /// invocation slot: the input is read before the invocation takes one).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,
    /// Invocation records kept per function: the newest N stay, older ones are deleted at
    /// start and every minute (every 5 s while there is much to delete). 0 keeps every
    /// record (the database then grows without end).
    #[arg(long, default_value_t = server::DEFAULT_KEEP_INVOCATIONS, value_name = "N")]
    pub keep_invocations: u64,
    /// Refresh an OAuth grant that nothing has refreshed, nor anyone connected, for this
    /// long, e.g. 24h. Providers end refresh tokens left unused (Microsoft after 90 days),
    /// and a grant revoked at the provider then shows as needs-reauth before a function
    /// finds out. Passes run every quarter of it (at most hourly, at least every
    /// second); a value of minutes refreshes every grant that often. 0s turns it off.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub refresh_idle_after: Duration,
}

impl ServeArgs {
    /// The wasm instance slots the host needs for these settings.
    pub fn instances(&self) -> u32 {
        self.max_in_flight.clamp(1, u32::MAX as usize) as u32
    }

    fn config(&self) -> ServeConfig {
        ServeConfig {
            listen: self.listen,
            max_in_flight: self.max_in_flight.max(1),
            queue: self.queue,
            max_body_bytes: self.max_body,
            max_body_memory: self.max_body_memory,
            body_timeout: self.body_timeout,
            rate_limit: self.rate_limit,
            rate_burst: self.rate_burst,
            shutdown_timeout: self.shutdown_timeout,
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
        }
    }
}

/// Serve `host` (opened with [`ServeArgs::instances`] slots) until a signal. `json`: the
/// address served and how it stopped, as one JSON line each on stdout.
pub async fn serve(host: Arc<Keyhole>, args: ServeArgs, json: bool) -> anyhow::Result<i32> {
    let mut server = Server::bind(host.clone(), args.config()).await?;
    // A long-running process: checkpoint the WAL beside the requests, not inside one,
    // unless steady writes have kept the WAL from starting over.
    let _checkpointer = host.storage().checkpoint_in_background(
        std::time::Duration::from_secs(1),
        crate::storage::WAL_BOUND_PAGES,
    )?;
    if args.keep_invocations > 0 {
        let (storage, keep) = (host.storage().clone(), args.keep_invocations);
        server.spawn_background(move |token| {
            server::keep_invocations_bounded(storage, keep, server::PRUNE_EVERY, token)
        });
    }
    if !args.refresh_idle_after.is_zero() {
        let (host, idle) = (host.clone(), args.refresh_idle_after);
        server.spawn_background(move |token| server::keep_grants_alive(host, idle, token));
    }
    // A newer keyhole that migrates the database stops this server (its error is the
    // exit's).
    let newer_schema = Arc::new(std::sync::Mutex::new(None));
    {
        let (storage, stop, found) = (
            host.storage().clone(),
            server.shutdown_token(),
            newer_schema.clone(),
        );
        server.spawn_background(move |token| {
            server::stop_on_newer_schema(storage, server::SCHEMA_CHECK_EVERY, stop, found, token)
        });
    }
    // Schedules run beside the API and stop (draining runs in flight) with it, a little
    // before the server's own deadline so that runs cut off can release their schedules.
    let drain = args.shutdown_timeout.mul_f64(0.9);
    let app = host.clone();
    server.spawn_background(move |token| {
        crate::schedules::Scheduler::run(host, async move { token.cancelled().await }, drain)
    });
    cancel_on_signals(server.shutdown_token());
    let addr = server.local_addr();
    if json {
        let url = format!("http://{addr}");
        println!("{}", serde_json::json!({ "serving": url }));
    } else {
        println!(
            "keyhole serving on http://{addr} (API under /v1, OAuth callback at /oauth/callback); Ctrl-C stops"
        );
    }
    // Scripts and tests wait for this line; don't leave it in a buffer.
    std::io::stdout().flush()?;
    let report = server.run().await;
    // Records of answered invocations still being committed, then those held back by
    // another process's lock, if it held it to the end.
    app.records_settled().await;
    app.store_held_back_records();
    // So that the ids of the next process's records follow on from this one's.
    app.return_unused_record_ids();
    if json {
        let stopped = serde_json::json!({ "stopped": {
            "drained_in_ms": report.drained_in.as_millis() as u64,
            "forced": report.forced,
            "abandoned_invocations": report.abandoned_invocations,
        }});
        println!("{stopped}");
    } else if report.forced {
        eprintln!(
            "stopped after {:.1}s with {} invocation(s) still running (--shutdown-timeout)",
            report.drained_in.as_secs_f64(),
            report.abandoned_invocations
        );
    } else {
        eprintln!(
            "stopped: in-flight requests finished in {:.1}s",
            report.drained_in.as_secs_f64()
        );
    }
    if let Some(e) = newer_schema
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(anyhow::Error::new(e).context(
            "keyhole serve stopped: a newer keyhole migrated the database while it ran, so start the newer keyhole's `keyhole serve` instead",
        ));
    }
    Ok(0)
}
