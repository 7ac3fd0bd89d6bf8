//! The accept loop and graceful shutdown: serve connections (with a header timeout and a
//! connection cap) until SIGINT/SIGTERM or a cancelled token, then stop accepting, let
//! in-flight requests and background tasks finish up to a deadline, and return; a
//! second signal exits at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::AppState;

/// How a server stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Time from the shutdown signal to the end of draining.
    pub drained_in: Duration,
    /// Whether the deadline passed with work still running (it was abandoned).
    pub forced: bool,
    /// Invocations still admitted (running or queued) when the server gave up (0 unless
    /// `forced`).
    pub abandoned_invocations: usize,
}

/// Cancel `token` on the first SIGINT (Ctrl-C) or SIGTERM; on a second one, stop at once
/// (exit status 1) without waiting for the drain.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (a second signal stops at once)");
        token.cancel();
        wait_for_signal().await;
        // The log line is the message (JSON under `--json`); it is at warn, which the
        // default filter shows.
        tracing::warn!(
            "second shutdown signal; stopped before in-flight work finished (exit status 1)"
        );
        std::process::exit(1);
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Accept connections and serve `app` on each until `shutdown` is cancelled; returns
/// the handle that drains them.
///
/// Our own accept loop rather than `axum::serve`, for two limits it cannot set: a
/// header timeout (hyper needs a timer for it; without one a client sending a header a
/// byte at a time holds its connection forever, and stalls shutdown) and a cap on open
/// connections (without one, idle clients use up the file descriptors and the server
/// stops accepting anyone).
async fn accept_until(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: &CancellationToken,
    state: &AppState,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections.max(1)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => return graceful,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return graceful,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Serve `app` on `listener` until `shutdown` is cancelled, then drain for at most
/// `timeout`.
pub(super) async fn serve_until_drained(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    background: Vec<JoinHandle<()>>,
    timeout: Duration,
    state: AppState,
) -> ShutdownReport {
    let graceful = accept_until(listener, app, &shutdown, &state).await;
    shutdown.cancel();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    // Every connection finishes the request it is serving, then closes; one that has not
    // sent a whole request yet closes at once.
    let mut forced = tokio::time::timeout_at(deadline, graceful.shutdown())
        .await
        .is_err();
    // Invocations whose clients went away finish too (none start after the connections
    // are gone).
    state.detached.close();
    forced |= tokio::time::timeout_at(deadline, state.detached.wait())
        .await
        .is_err();
    for task in background {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            abort.abort();
            forced = true;
        }
    }
    let abandoned = if forced { state.capacity.admitted() } else { 0 };
    let report = ShutdownReport {
        drained_in: started.elapsed(),
        forced,
        abandoned_invocations: abandoned,
    };
    if forced {
        tracing::warn!(
            abandoned,
            timeout_ms = timeout.as_millis() as u64,
            "shutdown deadline passed with work still running"
        );
    } else {
        tracing::info!(
            drained_ms = report.drained_in.as_millis() as u64,
            "server drained"
        );
    }
    report
}
