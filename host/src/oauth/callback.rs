//! Receiving the provider's redirect in CLI-only setups: a one-shot listener. (`keyhole
//! serve` has the same route in its router.)

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::OAuthError;

/// The query of a redirect to the callback URL (RFC 6749 §4.1.2).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallbackParams {
    /// Authorization code on success.
    pub code: Option<String>,
    /// The state we sent.
    pub state: Option<String>,
    /// Error code on refusal (e.g. `access_denied`).
    pub error: Option<String>,
    /// Human-readable error text.
    pub error_description: Option<String>,
    /// The issuer that sent the response (RFC 9207), if the provider says.
    pub iss: Option<String>,
}

impl std::fmt::Display for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the code: it is a credential until exchanged.
        write!(f, "callback(error={:?})", self.error)
    }
}

/// The small HTML page shown in the browser after a redirect (also used by `keyhole serve`).
pub fn page(title: &str, message: &str) -> Html<String> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>keyhole: {t}</title><h1>{t}</h1><p>{m}</p><p>You can close this tab.</p>",
        t = esc(title),
        m = esc(message)
    ))
}

/// A bound one-shot callback listener: bind first, then show the authorization URL, so
/// a fast browser can never beat the listener.
#[derive(Debug)]
pub struct CallbackListener {
    listener: tokio::net::TcpListener,
    path: String,
}

/// Bind a one-shot listener for redirects to `redirect_url`, which must be an http URL on
/// a loopback address: keyhole listens there itself.
pub async fn bind_callback(redirect_url: &str) -> Result<CallbackListener, OAuthError> {
    let url = url::Url::parse(redirect_url)
        .map_err(|e| OAuthError::Callback(format!("redirect URL {redirect_url:?}: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if url.scheme() != "http" || !loopback {
        return Err(OAuthError::Callback(format!(
            "the redirect URL {redirect_url} is not a loopback http address, so this command cannot receive it; run `keyhole serve` where {redirect_url} reaches it and authorize with `keyhole connections connect NAME --no-listen`"
        )));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let host = if url.host_str() == Some("localhost") {
        "127.0.0.1".to_string()
    } else {
        url.host_str()
            .unwrap_or("127.0.0.1")
            .trim_matches(['[', ']'])
            .to_string()
    };
    let addr: SocketAddr = format!(
        "{}:{port}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        }
    )
    .parse()
    .map_err(|e| OAuthError::Callback(format!("bad callback address: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        OAuthError::Callback(format!(
            "cannot listen on {addr} for the OAuth callback: {e}"
        ))
    })?;
    Ok(CallbackListener {
        listener,
        path: url.path().to_string(),
    })
}

/// A redirect that carries the awaited state, and where to send the page the browser
/// gets: the outcome of completing the authorization.
type Arrival = (CallbackParams, oneshot::Sender<Result<String, String>>);

impl CallbackListener {
    /// Wait (up to `timeout`) for the redirect carrying `state`, complete it with
    /// `complete`, and show the outcome in the browser. A redirect with any other state
    /// (a stale tab, a stray request) gets a 400 page and does not end the wait.
    pub async fn wait<T, E, F, Fut>(
        self,
        timeout: Duration,
        state: &str,
        complete: F,
    ) -> Result<Result<T, E>, OAuthError>
    where
        F: FnOnce(CallbackParams) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let CallbackListener { listener, path } = self;
        let (tx, mut rx) = mpsc::channel::<Arrival>(1);
        let expected = state.to_string();
        let app = axum::Router::new()
            .route(
                &path,
                get(
                    move |State(tx): State<mpsc::Sender<Arrival>>,
                          Query(p): Query<CallbackParams>| async move {
                        if p.state.as_deref() != Some(expected.as_str()) {
                            return (
                                StatusCode::BAD_REQUEST,
                                page(
                                    "not this authorization",
                                    "This redirect does not carry the state keyhole is waiting for, so it was ignored. Use the URL the terminal shows.",
                                ),
                            );
                        }
                        let (reply, outcome) = oneshot::channel();
                        if tx.send((p, reply)).await.is_err() {
                            return (
                                StatusCode::GONE,
                                page("authorization failed", "keyhole stopped waiting; see the terminal."),
                            );
                        }
                        match outcome.await {
                            Ok(Ok(message)) => (StatusCode::OK, page("authorization complete", &message)),
                            Ok(Err(message)) => {
                                (StatusCode::BAD_REQUEST, page("authorization failed", &message))
                            }
                            Err(_) => (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                page("authorization failed", "see the terminal"),
                            ),
                        }
                    },
                ),
            )
            .with_state(tx);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        let arrival = tokio::time::timeout(timeout, rx.recv()).await;
        let result = match arrival {
            Ok(Some((params, reply))) => {
                let outcome = complete(params).await;
                let _ = reply.send(match &outcome {
                    Ok(_) => Ok("keyhole stored the authorization; you can close this tab.".into()),
                    Err(e) => Err(e.to_string()),
                });
                Ok(outcome)
            }
            Ok(None) => Err(OAuthError::Callback("the callback listener stopped".into())),
            Err(_) => Err(OAuthError::Callback(format!(
                "no callback arrived within {} minutes",
                timeout.as_secs() / 60
            ))),
        };
        // Graceful: the browser's request gets its page before the listener closes.
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        result
    }
}
