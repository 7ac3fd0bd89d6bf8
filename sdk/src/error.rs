//! The SDK's error type: every way a connection request can fail, plus room for
//! a plugin's own errors.

use std::fmt;
use std::time::Duration;

use crate::__private::http::Error as WitError;
use crate::http::find_header;

/// How many bytes of an upstream body [`Error::Status`] shows when displayed,
/// so one error page does not flood the caller's message.
const DISPLAYED_BODY_LIMIT: usize = 256;

/// Why a keyhole call (or the plugin itself) failed.
///
/// The first eight cases mirror the host's answers to an HTTP request; every
/// one is something the function can act on. `?` converts `serde_json` errors
/// into [`Error::Json`], and [`Error::msg`] builds a plugin's own error.
///
/// ```no_run
/// use keyhole_sdk::{Connection, Error};
///
/// match Connection::new("github").get("/user").send() {
///     Ok(response) => println!("{}", response.status()),
///     Err(Error::NotConnected) => println!("ask an admin to reconnect github"),
///     Err(other) => println!("{}: {other}", other.kind()),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The connection does not exist or this function was not granted it.
    /// Both answer the same, so a function cannot probe for names.
    AccessDenied,
    /// The connection exists and is granted but has no usable credentials: it
    /// is pending, revoked, or needs re-authorization by an admin.
    NotConnected,
    /// The target resolves outside the connection's allowed origins or base
    /// path. Nothing was sent.
    ForbiddenDestination(String),
    /// The request is malformed (bad method, bad or refused header, body too
    /// large, ...). Nothing was sent.
    InvalidRequest(String),
    /// The upstream did not answer within the request's timeout.
    Timeout,
    /// The upstream's response body exceeded the host's size cap.
    TooLarge,
    /// This invocation already made its maximum number of outbound requests (the host's
    /// own limit; an upstream's HTTP 429 is a [`Response`](crate::Response) or
    /// [`Error::Status`]).
    TooManyRequests,
    /// The upstream could not be reached (DNS, connect, TLS, reset, ...), sent an answer
    /// the host cannot pass on (an encoded body it cannot check for secrets), or the host
    /// failed on the way; the message says which.
    UpstreamUnreachable(String),
    /// The upstream answered with a non-2xx status; see
    /// [`Response::error_for_status`](crate::Response::error_for_status). The headers
    /// stay readable, e.g. through [`Error::retry_after`] on a 429 or 503.
    Status {
        /// The HTTP status code.
        status: u16,
        /// The response headers as [`Response::headers`](crate::Response::headers) gives
        /// them: `(name, value)` pairs in the order received, names as the host passes them
        /// (lower-case), secret values already `[redacted]`. Not part of the error's
        /// `Display`.
        headers: Vec<(String, String)>,
        /// The response body, decoded as UTF-8 with invalid bytes replaced.
        body: String,
    },
    /// JSON could not be encoded or decoded.
    Json(String),
    /// A plugin's own error, built with [`Error::msg`].
    Message(String),
    /// A state key was empty or too long (see [`crate::kv`]).
    InvalidKey(String),
    /// A state value was over the host's per-value limit.
    ValueTooLarge(String),
    /// The function's state would exceed its quota, or the run has set or deleted as many
    /// keys as one run may; the message says which.
    QuotaExceeded(String),
}

impl Error {
    /// Builds a plugin's own error from a message.
    ///
    /// ```
    /// let err = keyhole_sdk::Error::msg("no comments found");
    /// assert_eq!(err.to_string(), "no comments found");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::Message(message.to_string())
    }

    /// A stable, kebab-case name for the case, for logs and machine-readable
    /// answers: `access-denied`, `not-connected`, `forbidden-destination`,
    /// `invalid-request`, `timeout`, `too-large`, `too-many-requests`,
    /// `upstream-unreachable`, `status`, `json`, `message`, `invalid-key`,
    /// `value-too-large` or `quota-exceeded`.
    ///
    /// ```
    /// assert_eq!(keyhole_sdk::Error::TooManyRequests.kind(), "too-many-requests");
    /// ```
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
            Self::Status { .. } => "status",
            Self::Json(_) => "json",
            Self::Message(_) => "message",
            Self::InvalidKey(_) => "invalid-key",
            Self::ValueTooLarge(_) => "value-too-large",
            Self::QuotaExceeded(_) => "quota-exceeded",
        }
    }

    /// The detail text carried by the case, if any: the host's explanation
    /// for `forbidden-destination`, `invalid-request` and
    /// `upstream-unreachable`, the body for `status` (its headers through
    /// [`Error::header`]), the message otherwise.
    ///
    /// ```
    /// let err = keyhole_sdk::Error::InvalidRequest("refused header: cookie".into());
    /// assert_eq!(err.detail(), Some("refused header: cookie"));
    /// assert_eq!(keyhole_sdk::Error::Timeout.detail(), None);
    /// ```
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::ForbiddenDestination(detail)
            | Self::InvalidRequest(detail)
            | Self::UpstreamUnreachable(detail)
            | Self::Json(detail)
            | Self::Message(detail)
            | Self::InvalidKey(detail)
            | Self::ValueTooLarge(detail)
            | Self::QuotaExceeded(detail) => Some(detail),
            Self::Status { body, .. } => Some(body),
            Self::AccessDenied
            | Self::NotConnected
            | Self::Timeout
            | Self::TooLarge
            | Self::TooManyRequests => None,
        }
    }

    /// For [`Error::Status`], the first response header called `name`, compared
    /// case-insensitively, as [`Response::header`](crate::Response::header) finds it;
    /// `None` for every other case.
    ///
    /// ```
    /// let err = keyhole_sdk::Error::Status {
    ///     status: 429,
    ///     headers: vec![("x-ratelimit-reset".into(), "1767225600".into())],
    ///     body: String::new(),
    /// };
    /// assert_eq!(err.header("X-RateLimit-Reset"), Some("1767225600"));
    /// assert_eq!(keyhole_sdk::Error::Timeout.header("x-ratelimit-reset"), None);
    /// ```
    pub fn header(&self, name: impl AsRef<str>) -> Option<&str> {
        match self {
            Self::Status { headers, .. } => find_header(headers, name.as_ref()),
            _ => None,
        }
    }

    /// For [`Error::Status`], how long the upstream asked to wait before trying again:
    /// its `Retry-After` header in the delay-seconds form (RFC 9110, section 10.2.3),
    /// digits only, with spaces or tabs around them. A number too large for a `u64` saturates.
    ///
    /// `None` when there is no such header, when it holds an HTTP date (`Retry-After:
    /// Wed, 21 Oct 2026 07:28:00 GMT`; read it with [`Error::header`] and a date parser if
    /// the upstream sends those) or anything else, and for every case but `Status`.
    /// Only the first `Retry-After` header counts.
    ///
    /// ```no_run
    /// use keyhole_sdk::Connection;
    ///
    /// let sent = Connection::new("api").get("/items").send()?.error_for_status();
    /// if let Err(err) = &sent {
    ///     if let Some(wait) = err.retry_after() {
    ///         keyhole_sdk::warn!("api is busy; retry in {}s", wait.as_secs());
    ///     }
    /// }
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let busy = |value: &str| keyhole_sdk::Error::Status {
    ///     status: 503,
    ///     headers: vec![("retry-after".into(), value.into())],
    ///     body: String::new(),
    /// };
    /// assert_eq!(busy("120").retry_after(), Some(Duration::from_secs(120)));
    /// assert_eq!(busy("Wed, 21 Oct 2026 07:28:00 GMT").retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.header("retry-after")?.trim_matches([' ', '\t']);
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Only digits are left, so a parse can fail only by overflowing.
        let seconds = value.parse().unwrap_or(u64::MAX);
        Some(Duration::from_secs(seconds))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AccessDenied => f.write_str(
                "access denied: the connection does not exist or is not granted to this \
                 function; check the name or ask an admin to grant it",
            ),
            Self::NotConnected => f.write_str(
                "connection has no usable credentials (pending, revoked or expired); \
                 ask an admin to reconnect it",
            ),
            Self::ForbiddenDestination(detail) => write!(
                f,
                "forbidden destination: {detail}; use a path under the connection's base URL"
            ),
            Self::InvalidRequest(detail) => write!(f, "invalid request: {detail}"),
            Self::Timeout => f.write_str(
                "upstream did not answer in time; retry, or raise the timeout with \
                 RequestBuilder::timeout",
            ),
            Self::TooLarge => f.write_str(
                "upstream response is larger than the host allows; ask for less data, \
                 e.g. a smaller page",
            ),
            Self::TooManyRequests => f.write_str(
                "this invocation reached its limit of outbound requests; make fewer \
                 requests per run",
            ),
            Self::UpstreamUnreachable(detail) => write!(f, "upstream unreachable: {detail}"),
            Self::InvalidKey(detail) => write!(f, "invalid state key: {detail}"),
            Self::ValueTooLarge(detail) => write!(f, "state value too large: {detail}"),
            Self::QuotaExceeded(detail) => write!(f, "state quota exceeded: {detail}"),
            Self::Status { status, body, .. } => {
                write!(f, "upstream answered HTTP {status}")?;
                if !body.is_empty() {
                    write!(f, ": {}", truncate(body, DISPLAYED_BODY_LIMIT))?;
                }
                Ok(())
            }
            Self::Json(detail) => write!(f, "invalid JSON: {detail}"),
            Self::Message(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::Json(err.to_string())
    }
}

impl From<WitError> for Error {
    fn from(err: WitError) -> Self {
        match err {
            WitError::AccessDenied => Self::AccessDenied,
            WitError::NotConnected => Self::NotConnected,
            WitError::ForbiddenDestination(detail) => Self::ForbiddenDestination(detail),
            WitError::InvalidRequest(detail) => Self::InvalidRequest(detail),
            WitError::Timeout => Self::Timeout,
            WitError::TooLarge => Self::TooLarge,
            WitError::TooManyRequests => Self::TooManyRequests,
            WitError::UpstreamUnreachable(detail) => Self::UpstreamUnreachable(detail),
        }
    }
}

/// Cuts `text` to at most `limit` bytes on a character boundary, marking the cut.
fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_display_truncates_long_bodies() {
        let err = Error::Status {
            status: 500,
            headers: Vec::new(),
            body: "é".repeat(200),
        };
        let shown = err.to_string();
        assert!(shown.starts_with("upstream answered HTTP 500: é"));
        assert!(shown.ends_with("..."));
        assert!(shown.len() < 300);
    }

    #[test]
    fn status_display_omits_empty_body() {
        let err = Error::Status {
            status: 404,
            headers: Vec::new(),
            body: String::new(),
        };
        assert_eq!(err.to_string(), "upstream answered HTTP 404");
    }

    /// A `Status` error whose headers are `headers`.
    fn status_with(headers: &[(&str, &str)]) -> Error {
        Error::Status {
            status: 503,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: "busy".to_owned(),
        }
    }

    #[test]
    fn status_display_leaves_headers_out() {
        let err = status_with(&[("retry-after", "7"), ("x-request-id", "r-1")]);
        assert_eq!(err.to_string(), "upstream answered HTTP 503: busy");
        assert_eq!(err.detail(), Some("busy"));
    }

    #[test]
    fn header_ignores_case_and_takes_the_first() {
        let err = status_with(&[("x-request-id", "r-1"), ("X-Request-Id", "r-2")]);
        assert_eq!(err.header("X-REQUEST-ID"), Some("r-1"));
        assert_eq!(err.header("x-missing"), None);
        assert_eq!(Error::msg("x-request-id").header("x-request-id"), None);
    }

    #[test]
    fn retry_after_reads_delay_seconds_only() {
        let wait = |value: &str| status_with(&[("Retry-After", value)]).retry_after();
        assert_eq!(wait("120"), Some(Duration::from_secs(120)));
        assert_eq!(wait("0"), Some(Duration::ZERO));
        assert_eq!(wait(" 5\t"), Some(Duration::from_secs(5)));
        assert_eq!(
            wait("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        for not_seconds in [
            "Wed, 21 Oct 2026 07:28:00 GMT",
            "",
            "+5",
            "-5",
            "1.5",
            "5 s",
            "٣",
        ] {
            assert_eq!(wait(not_seconds), None, "{not_seconds:?}");
        }
        assert_eq!(status_with(&[]).retry_after(), None);
        assert_eq!(Error::Timeout.retry_after(), None);
    }

    #[test]
    fn retry_after_uses_the_first_header() {
        let err = status_with(&[("retry-after", "soon"), ("retry-after", "10")]);
        assert_eq!(err.retry_after(), None);
    }

    #[test]
    fn serde_errors_convert_with_question_mark() {
        fn parse() -> Result<u32, Error> {
            Ok(serde_json::from_str("nope")?)
        }
        assert_eq!(parse().unwrap_err().kind(), "json");
    }
}
