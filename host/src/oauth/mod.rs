//! OAuth 2.0 for connections: authorization code with PKCE (S256) and state, client
//! credentials, single-flight refresh with rotation, and RFC 7009 revocation.
//!
//! Only this module sees refresh tokens and client secrets in the clear (the gateway
//! sees the access token it injects). Token endpoints are called through the `oauth2`
//! crate with a reqwest client that never follows redirects.

mod callback;
mod client;
mod flow;
mod refresh;
mod revoke;
mod token;

pub use callback::{CallbackListener, CallbackParams, bind_callback, page};
pub use client::{
    ClientConfig, DEFAULT_REDIRECT_URL, REDIRECT_URL_ENV,
    default_redirect_url as client_default_redirect,
};
pub(crate) use client::{OriginsError, origin_params, registration_origins};
pub(crate) use flow::url_params;
pub use flow::{PendingAuthorization, TakenState};
pub(crate) use refresh::idle_for;
pub use revoke::{ProviderRevocation, RevocationOutcome};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::secrets::Sealer;
use crate::storage::Storage;

/// A token within this much of its expiry is refreshed before use.
pub const REFRESH_SKEW: Duration = Duration::from_secs(60);
/// Longest a request to a token or revocation endpoint may take, connecting included.
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a process waits at exit for refreshes under way
/// ([`OAuth::refreshes_settled`]): the provider's answer, then storing it, retried for
/// [`refresh::STORE_PATIENCE`] with a last attempt that may wait out the busy timeout,
/// and a few seconds to spare.
pub const REFRESH_SETTLE_LIMIT: Duration = Duration::from_secs(
    TOKEN_REQUEST_TIMEOUT.as_secs()
        + refresh::STORE_PATIENCE.as_secs()
        + crate::storage::BUSY_TIMEOUT.as_secs()
        + 5,
);
/// After a 401 forced a refresh, further 401s go back to the guest for this long.
pub const FORCED_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// How long an authorization URL (its `state`) stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(10 * 60);
/// First and longest wait after a transient refresh failure.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Errors of the OAuth flows, shown to admins. Never carries a token or secret.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The service has no client credentials yet.
    #[error(
        "service {0:?} has no OAuth client configured; register keyhole's callback URL at the provider, then run `keyhole services set-client {0} --client-id ID --client-secret-stdin`"
    )]
    NoClient(String),
    /// The token or revocation endpoint a connection would send the service's client to
    /// is on an origin the client is not registered for.
    #[error(
        "the OAuth client of service {service:?} is registered for {registered}, not for {origin}, where this connection's {endpoint} endpoint is, so its id and secret were not sent there. {next}"
    )]
    ClientElsewhere {
        /// Service name.
        service: String,
        /// The origins the client is bound to, joined.
        registered: String,
        /// The endpoint's origin.
        origin: String,
        /// `token` or `revocation`.
        endpoint: &'static str,
        /// What to do about it.
        next: String,
    },
    /// The client was saved before keyhole recorded where it is registered, and the
    /// service's endpoints are on a host a param names, so keyhole cannot tell.
    #[error(
        "the OAuth client of service {service:?} was saved by an older keyhole, which did not record the host it is registered at, and this service's OAuth endpoints are on the host that param {params} names, so nothing was sent. Save it again with `keyhole services set-client {service} --param {example}=HOST --client-id ID --client-secret-stdin`, HOST being where the OAuth app is registered"
    )]
    ClientUnbound {
        /// Service name.
        service: String,
        /// The params the host is built from, joined.
        params: String,
        /// The first of them, for the example.
        example: String,
    },
    /// The callback's state is unknown, reused, expired or for another connection.
    #[error("{0}; start again with `keyhole connections connect`")]
    BadState(String),
    /// The provider redirected with `error=`.
    #[error("the provider refused the authorization: {0}")]
    Denied(String),
    /// RFC 9207: the response did not come from the service's issuer.
    #[error(
        "{0} (RFC 9207); it was refused and its code was not used. Start again with `keyhole connections connect`; if the provider's issuer really changed, fix oauth2.issuer in the service definition"
    )]
    WrongIssuer(String),
    /// The token endpoint refused or failed.
    #[error("the token request failed: {0}")]
    Token(String),
    /// Configuration problem (URLs, grant type).
    #[error("{0}")]
    Config(String),
    /// The callback listener failed.
    #[error("{0}")]
    Callback(String),
}

/// Non-secret token facts kept in `connections.token_info` and shown by `connections show`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// Unix ms when the access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Scopes the provider granted (its `scope` answer), else those requested.
    #[serde(default)]
    pub granted_scopes: Vec<String>,
    /// Whether a refresh token is held.
    #[serde(default)]
    pub has_refresh_token: bool,
    /// Unix ms of the last refresh attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_at: Option<i64>,
    /// `ok`, `invalid_grant`, or `transient: <reason>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_outcome: Option<String>,
}

impl TokenInfo {
    /// Read from the stored JSON (missing or malformed reads as empty).
    pub fn from_json(v: &serde_json::Value) -> Self {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    /// As stored JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Shared OAuth state: the token-endpoint client, per-connection refresh locks and
/// backoff after transient failures.
pub struct OAuth {
    pub(crate) storage: Arc<Storage>,
    pub(crate) sealer: Arc<Sealer>,
    pub(crate) http: reqwest::Client,
    backoff: Mutex<HashMap<String, (Instant, Duration)>>,
    /// When a 401 last forced a refresh, per connection.
    forced: Mutex<HashMap<String, Instant>>,
    /// Token refreshes under way, each a task of its own (see [`OAuth::refreshes_settled`]).
    refreshes: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth").finish_non_exhaustive()
    }
}

impl OAuth {
    /// OAuth over `storage`, sealing with `sealer`.
    pub fn new(storage: Arc<Storage>, sealer: Arc<Sealer>) -> Self {
        // SSRF guard (oauth2-rs docs): token endpoints must not redirect us anywhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .user_agent(concat!("keyhole/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        Self {
            storage,
            sealer,
            http,
            backoff: Mutex::new(HashMap::new()),
            forced: Mutex::new(HashMap::new()),
            refreshes: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Wait, for at most [`REFRESH_SETTLE_LIMIT`] (longer than any refresh can take),
    /// until the token refreshes under way have finished. A refresh outlives the
    /// invocation that started it (so that a rotated refresh token the provider has
    /// already issued is stored, not lost); a process about to exit calls this so that
    /// exiting does not cut one off either. (The tracker stays closed: it still takes new
    /// refreshes, and a closed tracker's `wait` ends whenever none is left.)
    pub async fn refreshes_settled(&self) {
        self.refreshes.close();
        if tokio::time::timeout(REFRESH_SETTLE_LIMIT, self.refreshes.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "a token refresh was still under way at exit; if the provider rotates refresh tokens, its connection may need re-authorization"
            );
        }
    }

    fn backoff_until(&self, connection: &str) -> Option<Instant> {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(connection)
            .map(|(until, _)| *until)
    }

    fn note_failure(&self, connection: &str) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let next = match map.get(connection) {
            Some((_, last)) => (*last * 2).min(BACKOFF_MAX),
            None => BACKOFF_MIN,
        };
        map.insert(connection.to_string(), (Instant::now() + next, next));
        next
    }

    /// Whether a 401 may force a refresh of `connection` now; if so, the cooldown starts.
    fn may_force_refresh(&self, connection: &str) -> bool {
        let mut map = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match map.get(connection) {
            Some(at) if now.duration_since(*at) < FORCED_REFRESH_COOLDOWN => false,
            _ => {
                map.insert(connection.to_string(), now);
                true
            }
        }
    }

    fn note_success(&self, connection: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(connection);
    }
}
