//! Graceful shutdown: on SIGINT/SIGTERM (or a cancelled token) stop accepting, let
//! in-flight requests and background tasks finish up to a deadline, then return.

use std::time::{Duration, Instant};

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{AppState, ServeError};

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

/// Cancel `token` on the first SIGINT (Ctrl-C) or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        token.cancel();
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

/// Serve `app` on `listener` until `shutdown` is cancelled, then drain for at most
/// `timeout`.
pub(super) async fn serve_until_drained(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    background: Vec<JoinHandle<()>>,
    timeout: Duration,
    state: AppState,
) -> Result<ShutdownReport, ServeError> {
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let mut server = std::pin::pin!(server);
    // Until the signal: serve (an accept-loop failure ends the server early).
    let finished = tokio::select! {
        result = &mut server => {
            result?;
            true
        }
        _ = shutdown.cancelled() => false,
    };
    shutdown.cancel();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    // axum stops accepting as soon as the token is cancelled and resolves once every
    // open connection has finished its request.
    let mut forced = !finished
        && tokio::time::timeout_at(deadline, &mut server)
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
    Ok(report)
}
