//! Connections: a service plus its sealed credentials, and the gateway through which a
//! guest's `http.send(connection, request)` reaches the service.
//!
//! Where credentials live: sealed in `connections.sealed` (SQLite), opened in memory by
//! [`Gateway`] for one request at a time, attached by [`inject::apply`] (the single
//! injection point) and scrubbed from the response by [`redact::Redactor`]. Nothing in
//! this module hands a credential to a guest, a log line or an error message.

mod answer;
pub mod catalog;
mod credentials;
pub mod egress;
pub(crate) mod gateway;
pub mod inject;
mod manager;
pub mod outbound;
pub(crate) use manager::unknown_param;
pub mod redact;

pub use catalog::{Catalog, CatalogEntry, ServiceSource};
pub use credentials::{Credentials, Tokens};
pub use gateway::Gateway;
pub use manager::{
    ConnectOutcome, ConnectionView, Connections, KeepAlive, OAuthClientSummary, ParamView,
    Revocation, VerifyOutcome,
};
pub use outbound::build_client;

use serde::{Deserialize, Serialize};

use crate::secrets::SealError;
use crate::services::ServiceError;
use crate::storage::StorageError;

/// A request from a guest, before any check.
#[derive(Debug, Clone, Default)]
pub struct OutboundRequest {
    /// HTTP method.
    pub method: String,
    /// Relative path or absolute URL.
    pub target: String,
    /// Extra query pairs.
    pub query: Vec<(String, String)>,
    /// Guest headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Requested timeout.
    pub timeout_ms: Option<u32>,
}

/// The upstream's answer, already scrubbed of secrets.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why a guest's request was not answered (mirrors the WIT `http.error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Unknown or not granted: the same answer for both.
    #[error("access denied: unknown connection or not granted to this function")]
    AccessDenied,
    /// No usable credentials.
    #[error("the connection is not connected; an admin must run `keyhole connections connect`")]
    NotConnected,
    /// Destination outside the connection.
    #[error("forbidden destination: {0}")]
    ForbiddenDestination(String),
    /// Malformed request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No answer in time.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// Body over the cap.
    #[error("the upstream's response is over the size limit")]
    TooLarge,
    /// Per-invocation cap reached.
    #[error("this invocation made its maximum number of outbound requests")]
    TooManyRequests,
    /// Network failure.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
}

impl SendError {
    /// Stable kebab-case kind, as in the WIT variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AccessDenied => "access-denied",
            Self::NotConnected => "not-connected",
            Self::ForbiddenDestination(_) => "forbidden-destination",
            Self::InvalidRequest(_) => "invalid-request",
            Self::Timeout => "timeout",
            Self::TooLarge => "too-large",
            Self::TooManyRequests => "too-many-requests",
            Self::UpstreamUnreachable(_) => "upstream-unreachable",
        }
    }
}

/// Lifecycle state of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Created, not (successfully) connected yet.
    Pending,
    /// Credentials stored and verified (or no verification declared).
    Connected,
    /// The provider rejected the refresh token: an admin must connect again.
    NeedsReauth,
    /// Credentials wiped by `connections revoke`.
    Revoked,
}

impl Status {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Connected => "connected",
            Self::NeedsReauth => "needs-reauth",
            Self::Revoked => "revoked",
        }
    }

    /// Parse the stored string (unknown values read as pending: the safe side).
    pub fn parse(s: &str) -> Self {
        match s {
            "connected" => Self::Connected,
            "needs-reauth" => Self::NeedsReauth,
            "revoked" => Self::Revoked,
            _ => Self::Pending,
        }
    }
}

/// Errors from administering connections and services. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// No such connection.
    #[error("no connection named {0:?}; `keyhole connections list` shows them")]
    UnknownConnection(String),
    /// No such service.
    #[error("no service named {0:?}; `keyhole services list` shows presets and custom services")]
    UnknownService(String),
    /// No such function.
    #[error("no function named {0:?}; `keyhole functions list` shows what is uploaded")]
    UnknownFunction(String),
    /// Bad input from the admin.
    #[error("{0}")]
    Invalid(String),
    /// The function holds no grant for that connection.
    #[error("{0}")]
    NotGranted(String),
    /// Refused because something depends on it (functions hold grants on it).
    #[error("{0}")]
    InUse(String),
    /// A service definition problem.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Sealing / key problem.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Storage problem.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// OAuth flow problem.
    #[error(transparent)]
    OAuth(#[from] crate::oauth::OAuthError),
}
