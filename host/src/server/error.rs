//! The HTTP API's error answer: a status code plus a JSON body
//! `{"error": {"kind": "...", "message": "..."}}`, mapped from the library's typed errors.
//!
//! Messages come from the library's error types, which never carry a secret value
//! (credentials are `Secret`s that print `[redacted]`), so they are safe to send.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::HostError;
use crate::connections::ConnectionError;
use crate::oauth::OAuthError;
use crate::runtime::{InvokeError, UploadError};
use crate::schedules::ScheduleError;
use crate::services::ServiceError;
use crate::storage::StorageError;

use super::auth::TokenError;

/// Seconds a client is told to wait after a 503 (at capacity, or the database busy).
pub const RETRY_AFTER_BUSY_SECS: u64 = 1;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable kebab-case kind, e.g. `not-found`, `timeout`, `unauthorized`.
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// The recorded invocation, when the error came from running a function.
    pub invocation_id: Option<i64>,
}

impl ApiError {
    /// An error with no extras.
    /// Every 503 says when to retry.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(RETRY_AFTER_BUSY_SECS),
            invocation_id: None,
        }
    }

    /// 401: missing, unknown or revoked token. Says nothing about the resource.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer kh_...); `keyhole tokens create` makes one",
        )
    }

    /// 403: a valid token without the scope this request needs.
    pub fn forbidden(why: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", why)
    }

    /// 404 for a path no route serves.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such endpoint; the endpoints are listed in keyhole's README under \"HTTP API\"",
        )
    }

    /// 503 with `Retry-After`: every slot and queue place is taken.
    pub fn at_capacity() -> Self {
        // `new` gives every 503 its `Retry-After`.
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "at-capacity",
            "the host is at capacity (every invocation slot and queue place is taken); retry shortly",
        )
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "this token's request rate limit is exhausted; retry after the Retry-After seconds",
            )
        }
    }

    /// 400 with kind `invalid-request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", message)
    }

    /// A failed body read: 408 after a pause over `--body-timeout`, 413 over the cap,
    /// else 400.
    pub fn from_body(e: BytesRejection) -> Self {
        if paused(&e) {
            Self::body_paused()
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::body_too_large()
        } else {
            Self::new(e.status(), "invalid-request", e.body_text())
        }
    }

    /// [`Self::from_body`] for a body read with [`axum::body::to_bytes`].
    pub fn from_body_error(e: &axum::Error) -> Self {
        if paused(e) {
            Self::body_paused()
        } else if crate::util::error_chain(e).any(|s| s.is::<http_body_util::LengthLimitError>()) {
            Self::body_too_large()
        } else {
            Self::new(
                StatusCode::BAD_REQUEST,
                "invalid-request",
                format!("the request body could not be read: {e}"),
            )
        }
    }

    /// 413: the body is (or is declared) over `--max-body`.
    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is over the server's size cap (`keyhole serve --max-body`)",
        )
    }

    /// 408: the client paused too long mid-body.
    fn body_paused() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "the client paused for longer than the server allows while sending the request body (`keyhole serve --body-timeout`); send the body without stalling",
        )
    }

    /// 408: an invocation's whole input did not arrive within `--body-timeout`.
    pub fn body_deadline() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "the invocation input did not arrive in full within the server's limit (`keyhole serve --body-timeout`); send the whole body at once",
        )
    }

    /// Map a failed invocation: 404 unknown function, 400 invalid input, 413 input too
    /// large, 504 timeout, 503 at capacity, 500 for traps, guest errors and host faults.
    pub fn from_invoke(e: &InvokeError) -> Self {
        if matches!(e, InvokeError::AtCapacity) {
            return Self::at_capacity();
        }
        Self::new(invoke_status(e), e.kind(), e.to_string())
    }

    /// Attach the invocation record id.
    pub fn with_invocation(mut self, id: i64) -> Self {
        self.invocation_id = (id > 0).then_some(id);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "kind": self.kind, "message": self.message } });
        if let Some(id) = self.invocation_id {
            body["invocation_id"] = json!(id);
        }
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyhole\""),
            );
        }
        response
    }
}

fn invoke_status(e: &InvokeError) -> StatusCode {
    match e {
        InvokeError::NotFound(_) => StatusCode::NOT_FOUND,
        InvokeError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        InvokeError::InputTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        InvokeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        InvokeError::AtCapacity | InvokeError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        InvokeError::OutOfMemory { .. }
        | InvokeError::StackOverflow
        | InvokeError::Panic(_)
        | InvokeError::Trap(_)
        | InvokeError::Guest(_)
        | InvokeError::OutputTooLarge { .. }
        | InvokeError::InvalidOutput(_)
        | InvokeError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn storage_status(e: &StorageError) -> (StatusCode, &'static str) {
    match e {
        StorageError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        StorageError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "host-error"),
    }
}

fn connection_status(e: &ConnectionError) -> (StatusCode, &'static str) {
    match e {
        ConnectionError::UnknownConnection(_)
        | ConnectionError::UnknownService(_)
        | ConnectionError::UnknownFunction(_)
        | ConnectionError::NotGranted(_) => (StatusCode::NOT_FOUND, "not-found"),
        ConnectionError::Invalid(_) | ConnectionError::Service(_) => {
            (StatusCode::BAD_REQUEST, "invalid-request")
        }
        ConnectionError::InUse(_) => (StatusCode::CONFLICT, "in-use"),
        ConnectionError::OAuth(_) => (StatusCode::BAD_GATEWAY, "oauth-error"),
        ConnectionError::Storage(s) => storage_status(s),
        ConnectionError::Seal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "host-error"),
    }
}

fn host_status(e: &HostError) -> (StatusCode, &'static str) {
    match e {
        HostError::Connection(c) => connection_status(c),
        HostError::UnknownFunction(_) => (StatusCode::NOT_FOUND, "not-found"),
        HostError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-request"),
        HostError::InUse(_) => (StatusCode::CONFLICT, "in-use"),
        HostError::Upload(u) => upload_status(u),
        HostError::Storage(s) => storage_status(s),
        HostError::Seal(_) | HostError::Startup(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "host-error")
        }
    }
}

fn upload_status(e: &UploadError) -> (StatusCode, &'static str) {
    match e {
        UploadError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large"),
        _ => (StatusCode::BAD_REQUEST, "invalid-component"),
    }
}

fn schedule_status(e: &ScheduleError) -> (StatusCode, &'static str) {
    match e {
        ScheduleError::Unknown(_) => (StatusCode::NOT_FOUND, "not-found"),
        ScheduleError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-request"),
        ScheduleError::ClaimLive { .. } => (StatusCode::CONFLICT, "conflict"),
        ScheduleError::Storage(s) => storage_status(s),
    }
}

fn token_status(e: &TokenError) -> (StatusCode, &'static str) {
    match e {
        TokenError::Storage(s) => storage_status(s),
        TokenError::UnknownToken(_) => (StatusCode::NOT_FOUND, "not-found"),
        _ => (StatusCode::BAD_REQUEST, "invalid-request"),
    }
}

/// The API's kind for `e` when it is one of the library's errors: what the CLI's
/// `--json` errors carry, so scripts see the same kinds over HTTP and on the command line.
pub fn error_kind(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if let Some(e) = e.downcast_ref::<HostError>() {
        Some(host_status(e).1)
    } else if let Some(e) = e.downcast_ref::<ConnectionError>() {
        Some(connection_status(e).1)
    } else if let Some(e) = e.downcast_ref::<InvokeError>() {
        Some(e.kind())
    } else if let Some(e) = e.downcast_ref::<StorageError>() {
        Some(storage_status(e).1)
    } else if let Some(e) = e.downcast_ref::<UploadError>() {
        Some(upload_status(e).1)
    } else if let Some(e) = e.downcast_ref::<ScheduleError>() {
        Some(schedule_status(e).1)
    } else if let Some(e) = e.downcast_ref::<ServiceError>() {
        Some(match e {
            ServiceError::Serialize { .. } => "host-error",
            _ => "invalid-request",
        })
    } else if e.is::<OAuthError>() {
        Some("oauth-error")
    } else {
        e.downcast_ref::<TokenError>().map(|e| token_status(e).1)
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        let (status, kind) = schedule_status(&e);
        Self::new(status, kind, e.to_string())
    }
}

impl From<ConnectionError> for ApiError {
    fn from(e: ConnectionError) -> Self {
        let (status, kind) = connection_status(&e);
        Self::new(status, kind, e.to_string())
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let (status, kind) = host_status(&e);
        Self::new(status, kind, e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let (status, kind) = storage_status(&e);
        Self::new(status, kind, e.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let (status, kind) = token_status(&e);
        Self::new(status, kind, e.to_string())
    }
}

/// Whether a body read failed on the router's per-pause body timeout.
fn paused(e: &(dyn std::error::Error + 'static)) -> bool {
    crate::util::error_chain(e).any(|s| s.is::<tower_http::timeout::TimeoutError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn invoke_errors_map_to_statuses() {
        let cases = [
            (InvokeError::NotFound("x".into()), 404),
            (InvokeError::InvalidInput("x".into()), 400),
            (InvokeError::InputTooLarge { size: 2, limit: 1 }, 413),
            (
                InvokeError::Timeout {
                    limit: Duration::from_millis(5),
                },
                504,
            ),
            (InvokeError::Trap("x".into()), 500),
            (InvokeError::Guest("boom".into()), 500),
            (InvokeError::AtCapacity, 503),
        ];
        for (e, status) in cases {
            let api = ApiError::from_invoke(&e);
            assert_eq!(api.status.as_u16(), status, "{e}");
            assert_eq!(api.kind, e.kind());
        }
        let busy = ApiError::at_capacity().into_response();
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let unauth = ApiError::unauthorized().into_response();
        assert!(unauth.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
