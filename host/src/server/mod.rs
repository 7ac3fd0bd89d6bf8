//! `keyhole serve`: the HTTP API (axum) for invoking functions and administering the host.
//!
//! | endpoint | token | what |
//! |---|---|---|
//! | `GET /healthz` | none | `ok` |
//! | `GET /oauth/callback` | none | completes an OAuth authorization |
//! | `POST /v1/functions/{name}/invoke` | invoke or admin | body = input JSON, answer = output JSON |
//! | `GET /v1/functions` | admin | list |
//! | `GET/POST/DELETE /v1/functions/{name}` | admin | show / upload (raw .wasm body) / delete |
//! | `GET /v1/functions/{name}/grants` | admin | grants |
//! | `PUT/DELETE /v1/functions/{name}/grants/{connection}` | admin | grant / take back |
//! | `GET /v1/functions/{name}/invocations` | admin | recent invocations of one function |
//! | `GET /v1/invocations?function=&limit=` | admin | recent invocations |
//! | `GET /v1/connections`, `GET /v1/connections/{name}` | admin | list / show (masked) |
//! | `POST /v1/connections/{name}/test`, `.../revoke` | admin | verify / wipe credentials |
//! | `GET /v1/services`, `GET /v1/services/{name}` | admin | service catalog |
//! | `GET /v1/schedules`, `GET/PUT/DELETE /v1/schedules/{name}` | admin | list / show / create / delete |
//! | `POST /v1/schedules/{name}/pause`, `.../resume`, `.../release` | admin | pause / resume / release a crashed run's claim |
//! | `GET /metrics` | admin | Prometheus (OpenMetrics text) |
//!
//! Errors are JSON `{"error": {"kind", "message"}}` (see [`error`]). Missing or bad
//! token: 401 (before any lookup); valid token lacking the scope: 403; over the token's
//! rate: 429; every invocation slot and queue place taken: 503; both with `Retry-After`.
//!
//! Driving it from code (the CLI does exactly this):
//!
//! ```no_run
//! # async fn demo(host: std::sync::Arc<keyhole::Keyhole>) -> Result<(), keyhole::server::ServeError> {
//! use keyhole::server::{ServeConfig, Server, cancel_on_signals};
//! let mut server = Server::bind(host, ServeConfig::default()).await?;
//! // Extra work that lives as long as the server (e.g. a scheduler): it gets a child
//! // token that is cancelled when shutdown begins, and is awaited up to the deadline.
//! server.spawn_background(|stop| async move { stop.cancelled().await });
//! cancel_on_signals(server.shutdown_token()); // SIGINT / SIGTERM begin shutdown
//! let report = server.run().await;
//! # let _ = report; Ok(()) }
//! ```

pub mod admin;
pub mod auth;
pub mod error;
pub mod invoke;
pub mod limits;
pub mod router;
pub mod schedules;
mod shutdown;

pub use auth::{Caller, CreatedToken, Scope, TokenError, create_token, list_tokens, revoke_token};
pub use error::{ApiError, error_kind};
pub use router::router;
pub use shutdown::{ShutdownReport, cancel_on_signals};
/// The shutdown signal type of [`Server::shutdown_token`] and [`Server::spawn_background`].
pub use tokio_util::sync::CancellationToken;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use self::limits::{BodyBudget, Capacity, RateLimit};
use crate::Keyhole;
use crate::connections::KeepAlive;
use crate::runtime::DEFAULT_MAX_INSTANCES;
use crate::storage::{Storage, StorageError};

/// Default listen address: loopback only. Expose the API beyond this machine only
/// behind TLS (a reverse proxy); tokens are bearer credentials.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8976";
/// Default number of invocations running at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = DEFAULT_MAX_INSTANCES as usize;
/// Default number of invocations waiting for a slot before new ones get 503.
pub const DEFAULT_QUEUE: usize = 256;
/// Default cap on a request body (uploads have their own, `MAX_COMPONENT_BYTES`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 << 20;
/// Default for [`ServeConfig::max_body_memory`]: 128 full-size bodies at the default cap.
pub const DEFAULT_MAX_BODY_MEMORY: usize = 256 << 20;
/// Default sustained requests per second per token (0 disables the limit).
pub const DEFAULT_RATE_LIMIT: u32 = 100;
/// Default burst per token.
pub const DEFAULT_RATE_BURST: u32 = 200;
/// Default time in-flight work gets to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ServeConfig::body_timeout`].
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of invocation records kept per function (the newest).
pub const DEFAULT_KEEP_INVOCATIONS: u64 = 10_000;
/// Default for [`ServeConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default for [`ServeConfig::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`keep_invocations_bounded`] prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// After a pass that deleted at least [`PRUNE_BUSY`] records, the next comes this soon: a
/// busy server prunes in small steps, not in one large pass a minute, which would hold a
/// core for seconds and delay the requests that share it.
pub const PRUNE_SOON: Duration = Duration::from_secs(5);
/// See [`PRUNE_SOON`].
pub const PRUNE_BUSY: u64 = 5_000;
/// Rows deleted per statement while pruning: the storage lock is held for one batch at a
/// time, so a large backlog never stalls invocations for long.
const PRUNE_BATCH: usize = 100;

/// Keep invocation records bounded until `token` is cancelled: each function's newest
/// `keep` stay, older ones are deleted now and every `every` (a busy server would
/// otherwise grow its database without end), or every [`PRUNE_SOON`] while passes find
/// much to delete.
pub async fn keep_invocations_bounded(
    storage: Arc<Storage>,
    keep: u64,
    every: Duration,
    token: CancellationToken,
) {
    loop {
        let storage = storage.clone();
        // A pass ends early at shutdown, so a large backlog never holds the drain up.
        let stopping = token.clone();
        let prune =
            move || storage.prune_invocations(keep, PRUNE_BATCH, || stopping.is_cancelled());
        let deleted = match tokio::task::spawn_blocking(prune).await {
            Ok(Ok(deleted)) => deleted,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not prune invocation records; will retry");
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, "invocation record pruning stopped; will retry");
                0
            }
        };
        if deleted > 0 {
            tracing::info!(
                deleted,
                keep,
                "pruned invocation records beyond the newest per function"
            );
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(next_prune_in(deleted, every)) => {}
        }
    }
}

/// Keep OAuth grants alive until `token` is cancelled: now and then, every grant that
/// nothing has refreshed (nor anyone connected) for `idle` is refreshed
/// ([`crate::connections::Connections::keep_alive`]), so providers that end unused refresh
/// tokens do not end these, and a grant revoked at the provider shows as needing
/// re-authorization before a function finds out. Passes come every quarter of `idle`,
/// between a second and an hour apart.
pub async fn keep_grants_alive(host: Arc<Keyhole>, idle: Duration, token: CancellationToken) {
    let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let pass = host.connections().keep_alive(idle);
        let report = tokio::select! {
            () = token.cancelled() => return,
            report = pass => report,
        };
        match report {
            Ok(report) => {
                for (connection, outcome) in report {
                    match outcome {
                        KeepAlive::Refreshed => {
                            tracing::info!(%connection, "refreshed an idle OAuth grant")
                        }
                        KeepAlive::NotRefreshed => {}
                        KeepAlive::NeedsReauth => tracing::warn!(
                            %connection,
                            "an idle OAuth grant was refused by its provider; the connection needs re-authorization"
                        ),
                        KeepAlive::Failed(error) => tracing::warn!(
                            %connection,
                            %error,
                            "could not refresh an idle OAuth grant; will retry"
                        ),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list connections to keep their grants alive; will retry")
            }
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// How often [`stop_on_newer_schema`] looks at the database's schema version.
pub const SCHEMA_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Stop the server when a newer keyhole migrates its database: every `every` until
/// `token` is cancelled, [`Storage::check_schema`]; once it finds the schema past what
/// this build knows, the error is logged and put in `found`, and `stop` (the server's
/// shutdown token) is cancelled, so the server drains and exits instead of going on
/// writing rows the way an older schema wants them. Any other error (another process
/// held the lock) waits for the next check.
pub async fn stop_on_newer_schema(
    storage: Arc<Storage>,
    every: Duration,
    stop: CancellationToken,
    found: Arc<std::sync::Mutex<Option<StorageError>>>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let check = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || storage.check_schema()).await
        };
        match check {
            Ok(Err(e @ StorageError::TooNew { .. })) => {
                tracing::error!(error = %e, "a newer keyhole migrated the database; stopping this server");
                *found.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                stop.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "could not check the database's schema version; will retry")
            }
            Ok(Ok(())) | Err(_) => {}
        }
    }
}

/// The wait before the next pass, after one that deleted `deleted` records.
fn next_prune_in(deleted: u64, every: Duration) -> Duration {
    if deleted >= PRUNE_BUSY {
        every.min(PRUNE_SOON)
    } else {
        every
    }
}

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Invocations running at once. Admission allows `max_in_flight + queue`; how many
    /// run at once is the host runtime's instance limit, so open the host with
    /// `RuntimeConfig { max_instances: max_in_flight, .. }` (as `keyhole serve` does).
    pub max_in_flight: usize,
    /// Invocations waiting beyond that; more get 503 with `Retry-After`.
    pub queue: usize,
    /// Request body cap in bytes (413 beyond), except uploads.
    pub max_body_bytes: usize,
    /// Memory for invocation inputs being received or run, in bytes: each reserves its
    /// declared length (the body cap if it declares none) first; beyond it, 503.
    pub max_body_memory: usize,
    /// Sustained requests per second per token; 0 disables.
    pub rate_limit: u32,
    /// Burst size per token.
    pub rate_burst: u32,
    /// How long in-flight requests and background tasks get after shutdown begins.
    pub shutdown_timeout: Duration,
    /// Longest pause while a client sends a request body, and the longest an
    /// invocation's whole input may take to arrive; then 408.
    pub body_timeout: Duration,
    /// Open connections at most; further clients wait in the kernel's accept queue until
    /// one closes, so idle or slow clients cannot use up the process's file descriptors.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open); then the connection is closed.
    pub header_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            queue: DEFAULT_QUEUE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_body_memory: DEFAULT_MAX_BODY_MEMORY,
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_burst: DEFAULT_RATE_BURST,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another address with --listen")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Shared state of every handler (cheap to clone).
#[derive(Clone, Debug)]
pub struct AppState {
    /// The host.
    pub host: Arc<Keyhole>,
    /// Invocation admission.
    pub capacity: Arc<Capacity>,
    /// Memory for invocation inputs.
    pub bodies: Arc<BodyBudget>,
    /// Per-token rate limit.
    pub rate: Arc<RateLimit>,
    /// Settings.
    pub config: Arc<ServeConfig>,
    /// Invocations whose client went away, running to their end; shutdown waits for them.
    pub detached: tokio_util::task::TaskTracker,
}

impl AppState {
    /// State for `host` under `config`.
    pub fn new(host: Arc<Keyhole>, config: ServeConfig) -> Self {
        Self {
            capacity: Arc::new(Capacity::new(config.max_in_flight, config.queue)),
            bodies: Arc::new(BodyBudget::new(
                config.max_body_memory,
                config.max_body_bytes,
            )),
            rate: Arc::new(RateLimit::new(config.rate_limit, config.rate_burst)),
            config: Arc::new(config),
            host,
            detached: tokio_util::task::TaskTracker::new(),
        }
    }
}

/// A bound server, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    background: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind `config.listen` for `host`.
    pub async fn bind(host: Arc<Keyhole>, config: ServeConfig) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.listen,
                source,
            })?;
        // The first answers then need no database write to name their records.
        host.reserve_record_ids();
        Ok(Self {
            listener,
            state: AppState::new(host, config),
            shutdown: CancellationToken::new(),
            background: Vec::new(),
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.config.listen)
    }

    /// The handler state (for tests and embedders).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling this token begins a graceful shutdown: stop accepting, let in-flight
    /// requests and background tasks finish up to `shutdown_timeout`, then `run` returns.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run `task` beside the server from now on. It receives a child of the shutdown
    /// token and should return soon after it is cancelled; `run` waits for it up to the
    /// shutdown deadline and aborts it after that.
    pub fn spawn_background<F, Fut>(&mut self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.background
            .push(tokio::spawn(task(self.shutdown.child_token())));
    }

    /// Serve until the shutdown token is cancelled, then drain.
    pub async fn run(self) -> ShutdownReport {
        let Server {
            listener,
            state,
            shutdown,
            background,
        } = self;
        let timeout = state.config.shutdown_timeout;
        let app = router(state.clone());
        shutdown::serve_until_drained(listener, app, shutdown, background, timeout, state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_that_deleted_much_brings_the_next_one_closer() {
        assert_eq!(next_prune_in(0, PRUNE_EVERY), PRUNE_EVERY);
        assert_eq!(next_prune_in(PRUNE_BUSY - 1, PRUNE_EVERY), PRUNE_EVERY);
        assert_eq!(next_prune_in(PRUNE_BUSY, PRUNE_EVERY), PRUNE_SOON);
        let often = Duration::from_secs(1);
        assert_eq!(
            next_prune_in(PRUNE_BUSY, often),
            often,
            "never later than the cadence asked for"
        );
    }
}
