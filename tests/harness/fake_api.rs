//! `FakeApi`: a loopback HTTP API that checks credentials the way a real service does, so
//! end-to-end tests can tell whether the host injected them, and where, and nothing else.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::server::{Echo, RecordedRequest, RequestLog, TestServer, decode_pairs, record};

/// Longest `/slow` sleep, so a typo cannot hang a test run.
pub const MAX_SLOW_MS: u64 = 120_000;
/// Largest `/big` body.
pub const MAX_BIG_BYTES: u64 = 1 << 30;
const REALM: &str = "keyhole-fake-api";

/// A credential the fake API demands, exactly as the real service would check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Basic base64(user:pass)`.
    Basic { user: String, pass: String },
    /// A header `name: value` (name case-insensitive, value exact).
    ApiKeyHeader { name: String, value: String },
    /// A query parameter `name=value`, present exactly once.
    ApiKeyQuery { name: String, value: String },
    /// `Authorization: Bearer token`. Several `Bearer` entries mean "any one of these".
    Bearer(String),
}

impl Credential {
    /// Shorthand for [`Credential::Basic`].
    pub fn basic(user: impl Into<String>, pass: impl Into<String>) -> Self {
        Self::Basic {
            user: user.into(),
            pass: pass.into(),
        }
    }

    /// Shorthand for [`Credential::ApiKeyHeader`].
    pub fn api_key_header(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::ApiKeyHeader {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Shorthand for [`Credential::ApiKeyQuery`].
    pub fn api_key_query(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self::ApiKeyQuery {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Shorthand for [`Credential::Bearer`].
    pub fn bearer(token: impl Into<String>) -> Self {
        Self::Bearer(token.into())
    }

    /// The secret part: the password, the key value or the token.
    pub fn secret(&self) -> &str {
        match self {
            Self::Basic { pass, .. } => pass,
            Self::ApiKeyHeader { value, .. } | Self::ApiKeyQuery { value, .. } => value,
            Self::Bearer(token) => token,
        }
    }

    /// Every form in which the secret may travel (for Basic also the base64 blob).
    pub fn secret_forms(&self) -> Vec<String> {
        match self {
            Self::Basic { user, pass } => vec![pass.clone(), basic_blob(user, pass)],
            other => vec![other.secret().to_owned()],
        }
    }

    fn www_authenticate(&self, bearer_presented: bool) -> String {
        match self {
            Self::Basic { .. } => format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""),
            Self::Bearer(_) if bearer_presented => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", \
                 error_description=\"the access token is not valid\""
            ),
            Self::Bearer(_) => format!("Bearer realm=\"{REALM}\""),
            Self::ApiKeyHeader { name, .. } => {
                format!("ApiKey realm=\"{REALM}\", header=\"{name}\"")
            }
            Self::ApiKeyQuery { name, .. } => format!("ApiKey realm=\"{REALM}\", query=\"{name}\""),
        }
    }
}

/// `base64(user:pass)`, the value after `Basic `.
pub fn basic_blob(user: &str, pass: &str) -> String {
    BASE64.encode(format!("{user}:{pass}"))
}

struct ApiState {
    required: Mutex<Vec<Credential>>,
    /// Whose each secret is (the login `/user` answers with); others are [`DEFAULT_LOGIN`].
    accounts: Mutex<HashMap<String, String>>,
    /// Session ids `/session` handed out as cookies, with the secrets of the credentials
    /// each was issued for: a session authenticates as those credentials.
    sessions: Mutex<Vec<(String, Vec<String>)>>,
    log: Arc<RequestLog>,
}

/// The session cookie's name, as Java servers (Jira, Confluence) call it.
pub const SESSION_COOKIE: &str = "JSESSIONID";

/// The login `/user` answers for a credential with no account of its own.
pub const DEFAULT_LOGIN: &str = "keyhole-test";

/// A fake third-party API on `127.0.0.1`; it stops when dropped.
///
/// Routes: `GET /user`, `GET /v1/user`, `ANY /echo`, `ANY /v1/echo[/*rest]` (gzip when
/// the request accepts it), `ANY /gzip-echo` (gzip always), `GET /leak` (authenticated;
/// with an `ETag` and a `Digest` of its body, and 304 to a matching `If-None-Match`),
/// `GET /leak-escaped` (authenticated; the secrets percent-encoded); `ANY /open/echo[/*rest]`, `GET /redirect?to=URL[&status=30x]`,
/// `GET /session` (authenticated; sets a session cookie that then authenticates alone),
/// `GET /slow?ms=N`, `GET /big?bytes=N[&chunked=true]`, `ANY /status/{code}` (open).
pub struct FakeApi {
    server: TestServer,
    state: Arc<ApiState>,
}

impl FakeApi {
    /// Starts an API demanding `credential`.
    pub async fn start(credential: Credential) -> Self {
        Self::start_blocking(vec![credential])
    }

    /// Starts an API demanding every credential in `credentials` at once (several `Bearer`
    /// entries are alternatives). An empty list lets everything through.
    pub async fn start_with(credentials: Vec<Credential>) -> Self {
        Self::start_blocking(credentials)
    }

    /// [`start_with`](Self::start_with) for synchronous tests: the server runs on a thread
    /// of its own either way, so no runtime is needed.
    pub fn start_blocking(credentials: Vec<Credential>) -> Self {
        let log = Arc::new(RequestLog::default());
        let state = Arc::new(ApiState {
            required: Mutex::new(credentials),
            accounts: Mutex::new(HashMap::new()),
            sessions: Mutex::new(Vec::new()),
            log: log.clone(),
        });
        let router = Router::new()
            .route("/user", get(user))
            .route("/auth.test", any(auth_test))
            .route("/v1/user", get(user))
            .route("/echo", any(echo))
            .route("/v1/echo", any(echo))
            .route("/v1/echo/{*rest}", any(echo))
            .route("/open/echo", any(open_echo))
            .route("/open/echo/{*rest}", any(open_echo))
            .route("/gzip-echo", any(gzip_echo))
            .route("/leak", get(leak))
            .route("/leak-escaped", get(leak_escaped))
            .route("/session", get(session))
            .route("/redirect", get(redirect))
            .route("/slow", get(slow))
            .route("/big", get(big))
            .route("/status/{code}", any(status))
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(log, record));
        let server = TestServer::spawn(router);
        Self { server, state }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `base_url() + path`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Replaces every demanded credential.
    pub fn set_credentials(&self, credentials: Vec<Credential>) {
        *self.state.required.lock().unwrap() = credentials;
    }

    /// Replaces the set of valid bearer tokens, keeping any non-bearer requirement.
    pub fn set_bearer_tokens<I, S>(&self, tokens: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut required = self.state.required.lock().unwrap();
        required.retain(|c| !matches!(c, Credential::Bearer(_)));
        required.extend(tokens.into_iter().map(|t| Credential::Bearer(t.into())));
    }

    /// Says that `secret` (a key, password or token) belongs to account `login`: `/user`
    /// answers with it, as a real API names the owner of the credentials.
    pub fn set_account(&self, secret: impl Into<String>, login: impl Into<String>) {
        self.state
            .accounts
            .lock()
            .unwrap()
            .insert(secret.into(), login.into());
    }

    /// The session ids `/session` has handed out as [`SESSION_COOKIE`] cookies.
    pub fn sessions(&self) -> Vec<String> {
        let sessions = self.state.sessions.lock().unwrap();
        sessions.iter().map(|(id, _)| id.clone()).collect()
    }

    /// Accepts one more bearer token.
    pub fn add_bearer_token(&self, token: impl Into<String>) {
        let mut required = self.state.required.lock().unwrap();
        required.push(Credential::Bearer(token.into()));
    }

    /// Every request received so far, in arrival order (authenticated or not).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.log.snapshot()
    }

    /// The requests whose path is exactly `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        let mut all = self.state.log.snapshot();
        all.retain(|r| r.path == path);
        all
    }

    /// Forgets the request log and counters.
    pub fn clear_requests(&self) {
        self.state.log.clear();
    }

    /// How many requests hit exactly `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state.log.hits(path)
    }

    /// Request count per path.
    pub fn hits_by_path(&self) -> BTreeMap<String, usize> {
        self.state.log.hits_by_path()
    }

    /// Stops the server and waits for in-flight requests (dropping it also stops it).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// Outcome of checking a request against the demanded credentials.
enum Auth {
    /// The secrets the request presented (for `/leak`).
    Ok(Vec<String>),
    Denied(Response),
}

fn authenticate(state: &ApiState, headers: &HeaderMap, uri: &Uri) -> Auth {
    // A session cookie stands in for the credentials it was issued for, as on servers
    // that open a session on the first authenticated request.
    let sessions = state.sessions.lock().unwrap().clone();
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .find_map(|(_, id)| sessions.iter().find(|(s, _)| s == id));
    if let Some((_, presented)) = session {
        return Auth::Ok(presented.clone());
    }
    let required = state.required.lock().unwrap().clone();
    let pairs = decode_pairs(uri.query().unwrap_or("").as_bytes());
    let authorizations: Vec<&str> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let single_auth = match authorizations.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let mut presented = Vec::new();
    let mut bearer_presented = false;
    let mut ok = true;

    for cred in required
        .iter()
        .filter(|c| !matches!(c, Credential::Bearer(_)))
    {
        let matched = match cred {
            Credential::Basic { user, pass } => single_auth
                .and_then(|h| strip_scheme(h, "Basic"))
                .and_then(|b64| BASE64.decode(b64.trim()).ok())
                .and_then(|raw| String::from_utf8(raw).ok())
                .is_some_and(|pair| pair.split_once(':') == Some((user, pass))),
            Credential::ApiKeyHeader { name, value } => {
                let values: Vec<_> = headers.get_all(name.as_str()).iter().collect();
                values.len() == 1 && values[0].as_bytes() == value.as_bytes()
            }
            Credential::ApiKeyQuery { name, value } => {
                let values: Vec<_> = pairs.iter().filter(|(k, _)| k == name).collect();
                values.len() == 1 && values[0].1 == *value
            }
            Credential::Bearer(_) => unreachable!("filtered out above"),
        };
        if matched {
            presented.extend(cred.secret_forms());
        } else {
            ok = false;
        }
    }

    let bearers: Vec<&str> = required
        .iter()
        .filter_map(|c| match c {
            Credential::Bearer(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    if !bearers.is_empty() {
        let token = single_auth.and_then(|h| strip_scheme(h, "Bearer"));
        bearer_presented = token.is_some();
        match token {
            Some(t) if bearers.contains(&t) => presented.push(t.to_owned()),
            _ => ok = false,
        }
    }

    if ok {
        return Auth::Ok(presented);
    }
    let challenge = required
        .first()
        .map(|c| c.www_authenticate(bearer_presented))
        .unwrap_or_else(|| format!("Basic realm=\"{REALM}\""));
    let body = json!({
        "error": "unauthorized",
        "message": "missing or invalid credentials",
    });
    Auth::Denied(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
            Json(body),
        )
            .into_response(),
    )
}

/// `Scheme value` → `value`, with the scheme matched case-insensitively (RFC 9110 §11.1).
pub(crate) fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (got, rest) = header.split_once(' ')?;
    got.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_start())
        .filter(|v| !v.is_empty())
}

/// Like Slack's `auth.test`: 200 whatever the credentials, with `"ok"` saying whether they
/// worked.
async fn auth_test(State(state): State<Arc<ApiState>>, headers: HeaderMap, uri: Uri) -> Response {
    match authenticate(&state, &headers, &uri) {
        Auth::Ok(_) => Json(json!({ "ok": true, "user": DEFAULT_LOGIN })).into_response(),
        Auth::Denied(_) => Json(json!({ "ok": false, "error": "invalid_auth" })).into_response(),
    }
}

async fn user(State(state): State<Arc<ApiState>>, headers: HeaderMap, uri: Uri) -> Response {
    match authenticate(&state, &headers, &uri) {
        Auth::Ok(presented) => {
            let accounts = state.accounts.lock().unwrap();
            let login = presented
                .iter()
                .find_map(|secret| accounts.get(secret))
                .map_or(DEFAULT_LOGIN, String::as_str);
            Json(json!({ "login": login })).into_response()
        }
        Auth::Denied(resp) => resp,
    }
}

async fn echo(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Like most servers, compress when the client accepts it.
    let gzip_ok = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().unwrap_or("").trim() == "gzip");
    authenticated_echo(&state, method, uri, headers, body, gzip_ok).await
}

/// The echo, gzip-compressed whatever the client asked for (a misbehaving server).
async fn gzip_echo(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    authenticated_echo(&state, method, uri, headers, body, true).await
}

async fn authenticated_echo(
    state: &ApiState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    compress: bool,
) -> Response {
    match authenticate(state, &headers, &uri) {
        Auth::Ok(_) => {
            let echo = Json(Echo::of(&method, &uri, &headers, &body)).into_response();
            if compress { gzip(echo).await } else { echo }
        }
        Auth::Denied(resp) => resp,
    }
}

/// `response` with its body gzip-compressed and `Content-Encoding: gzip`.
async fn gzip(response: Response) -> Response {
    use std::io::Write as _;
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("an in-memory body reads");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&bytes).expect("writing to a Vec");
    let compressed = encoder.finish().expect("writing to a Vec");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_ENCODING,
        header::HeaderValue::from_static("gzip"),
    );
    Response::from_parts(parts, Body::from(compressed))
}

async fn open_echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    Json(Echo::of(&method, &uri, &headers, &body)).into_response()
}

/// The presented secrets, one a line, with digests of that body (`ETag` and `Digest`, as
/// frameworks that hash the body compute them) and conditional requests honoured: an
/// `If-None-Match` of `*` or of the body's tag gets a 304 carrying the tag.
async fn leak(State(state): State<Arc<ApiState>>, headers: HeaderMap, uri: Uri) -> Response {
    match authenticate(&state, &headers, &uri) {
        Auth::Ok(secrets) => {
            let first = secrets.first().cloned().unwrap_or_default();
            let body = secrets.join("\n");
            let hash = Sha256::digest(body.as_bytes());
            let etag = format!("\"{}\"", hex(&hash));
            let digests = [
                (header::ETAG, etag.clone()),
                (
                    header::HeaderName::from_static("digest"),
                    format!("sha-256={}", BASE64.encode(hash)),
                ),
            ];
            let matched = headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|tag| tag.trim() == "*" || tag.trim() == etag);
            if matched {
                return (StatusCode::NOT_MODIFIED, digests).into_response();
            }
            (
                [
                    (header::CONTENT_TYPE, "text/plain".to_owned()),
                    (header::HeaderName::from_static("x-leak"), first),
                ],
                digests,
                body,
            )
                .into_response()
        }
        Auth::Denied(resp) => resp,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The presented secrets percent-encoded the ways common encoders write them into a link,
/// one a line: RFC 3986 (unreserved `-._~` kept; Go's `url.QueryEscape`, JavaScript's
/// `encodeURIComponent`, Python's `quote`) in upper- and lower-case hex, and everything
/// but letters and digits encoded in lower-case hex.
async fn leak_escaped(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match authenticate(&state, &headers, &uri) {
        Auth::Ok(secrets) => {
            let mut lines = Vec::new();
            for secret in &secrets {
                lines.push(percent_encode(secret, "-._~", false));
                lines.push(percent_encode(secret, "-._~", true));
                lines.push(percent_encode(secret, "", true));
            }
            ([(header::CONTENT_TYPE, "text/plain")], lines.join("\n")).into_response()
        }
        Auth::Denied(resp) => resp,
    }
}

/// `s` with every byte but ASCII letters, digits and `keep` as `%XX`, in `lower` or
/// upper-case hex.
fn percent_encode(s: &str, keep: &str, lower: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.as_bytes().contains(&b) {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens a session, as Jira and other Java servers do on an authenticated request: the
/// answer sets a cookie that authenticates later requests on its own.
async fn session(State(state): State<Arc<ApiState>>, headers: HeaderMap, uri: Uri) -> Response {
    match authenticate(&state, &headers, &uri) {
        Auth::Ok(presented) => {
            let id = format!("kh-session-{:032x}", rand::random::<u128>());
            state.sessions.lock().unwrap().push((id.clone(), presented));
            (
                [
                    (
                        header::SET_COOKIE,
                        format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly"),
                    ),
                    (header::SET_COOKIE, "theme=dark; Path=/".to_owned()),
                ],
                Json(json!({ "session": "open" })),
            )
                .into_response()
        }
        Auth::Denied(resp) => resp,
    }
}

async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(to) = q.get("to") else {
        return (StatusCode::BAD_REQUEST, "missing `to`").into_response();
    };
    let status = match q.get("status").map(|s| s.parse::<u16>()) {
        None => StatusCode::FOUND,
        Some(Ok(code @ (301 | 302 | 303 | 307 | 308))) => {
            StatusCode::from_u16(code).expect("valid redirect code")
        }
        Some(_) => return (StatusCode::BAD_REQUEST, "bad `status`").into_response(),
    };
    (status, [(header::LOCATION, to.clone())]).into_response()
}

async fn slow(Query(q): Query<HashMap<String, String>>) -> Response {
    let ms = q
        .get("ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000)
        .min(MAX_SLOW_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "slept_ms": ms })).into_response()
}

async fn big(Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(bytes) = q.get("bytes").and_then(|v| v.parse::<u64>().ok()) else {
        return (StatusCode::BAD_REQUEST, "missing or bad `bytes`").into_response();
    };
    let bytes = bytes.min(MAX_BIG_BYTES);
    let chunked = q.get("chunked").is_some_and(|v| v == "true" || v == "1");
    const CHUNK: u64 = 64 * 1024;
    let stream = futures::stream::unfold(bytes, |left| async move {
        (left > 0).then(|| {
            let n = left.min(CHUNK);
            (
                Ok::<_, Infallible>(Bytes::from(vec![b'x'; n as usize])),
                left - n,
            )
        })
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if !chunked {
        headers.insert(header::CONTENT_LENGTH, bytes.into());
    }
    response
}

async fn status(Path(code): Path<String>) -> Response {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return (StatusCode::BAD_REQUEST, "status must be 200..=599").into_response();
    };
    if matches!(status.as_u16(), 204 | 304) {
        return status.into_response();
    }
    (status, Json(json!({ "status": status.as_u16() }))).into_response()
}

pub mod raw;

#[cfg(test)]
mod tests;
