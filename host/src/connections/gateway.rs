//! The guest's path to an API: grant check, destination check, header check, credential
//! injection (last), bounded send, scrubbed response, and a record of the call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use reqwest::header::{HeaderName, HeaderValue};

use super::answer::{MAX_SHOWN_CODINGS, clip, guest_headers, unscrubbable_coding};
use super::credentials::Credentials;
use super::redact::Redactor;
use super::{
    Catalog, ConnectionError, OutboundRequest, OutboundResponse, SendError, Status, egress, inject,
    outbound,
};
use crate::oauth::OAuth;
use crate::runtime::HttpState;
use crate::secrets::Sealer;
use crate::services::{Endpoint, ParamLocation, ServiceDef, validate_name};
use crate::storage::{ConnectionRow, OutboundCall, Storage};

/// Headers a guest may never set on a connection request: the connection decides them.
const REFUSED_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "host"];

/// Headers that would bring the answer back in a form the scrubber cannot read whole: a
/// compressed body (`Accept-Encoding`, `TE`) or a slice of one (`Range`, `If-Range`) could
/// carry an echoed secret past it. keyhole asks for the whole, uncompressed answer.
const UNSCRUBBABLE_HEADERS: &[&str] = &["accept-encoding", "te", "range", "if-range"];

/// A connection's `last_used_at` is written at most this often (milliseconds), so a busy
/// connection does not add a database write to every request.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// Shared by every invocation: storage, the sealer, the catalog and one pooled HTTP client.
pub struct Gateway {
    pub(crate) storage: Arc<Storage>,
    pub(crate) sealer: Arc<Sealer>,
    pub(crate) catalog: Catalog,
    pub(crate) client: outbound::Client,
    pub(crate) oauth: Arc<OAuth>,
    opened: Mutex<HashMap<String, Opened>>,
    calls: Mutex<CallCache>,
}

/// What a guest's calls found for each function and connection name, kept while the
/// configuration version ([`Storage::config_version`]) it was read under is current. A
/// call then reads that one counter instead of the connection, its service and the grant
/// (and builds nothing): any change to a connection, grant or service, by any process,
/// moves the counter, and the next call reads afresh. Everything goes at the first
/// change, and a function keeps at most [`MAX_CACHED_NAMES`] names.
#[derive(Default)]
struct CallCache {
    version: i64,
    /// function → connection → what a call gets.
    entries: HashMap<String, HashMap<String, Cached>>,
}

/// Names kept per function: more than any real configuration has, few enough that a
/// guest trying names cannot grow the cache much.
const MAX_CACHED_NAMES: usize = 256;

#[derive(Clone)]
enum Cached {
    /// No such connection, or the function holds no grant for it: the same answer, from
    /// the cache alike, so a guest cannot time the difference.
    Denied,
    /// Granted, and opened.
    Granted(Loaded),
}

impl CallCache {
    /// Make `version` current, dropping what was read under any other. (Also under a
    /// higher one: a database restored under a running server can move the counter
    /// back, and it must not climb back onto entries of the old file. Two calls that
    /// read different versions in a race only make each other read again.)
    fn at(&mut self, version: i64) {
        if version != self.version {
            self.version = version;
            self.entries.clear();
        }
    }

    fn get(&mut self, version: i64, function: &str, connection: &str) -> Option<Cached> {
        self.at(version);
        self.entries.get(function)?.get(connection).cloned()
    }

    /// Keep what a call read after seeing `version` (so at least as new as it).
    fn put(&mut self, version: i64, function: &str, connection: &str, found: &Cached) {
        self.at(version);
        let names = self.entries.entry(function.to_string()).or_default();
        if names.len() < MAX_CACHED_NAMES || names.contains_key(connection) {
            names.insert(connection.to_string(), found.clone());
        }
    }
}

/// A connection's opened credentials, the scrubber built from them and the endpoint they
/// resolve to, kept while the sealed blob, the plain params, the base URL and the service
/// definition they came from are unchanged. (Any credential write seals a new blob with a
/// fresh nonce, so a changed credential never matches.)
struct Opened {
    sealed: Option<Vec<u8>>,
    params: std::collections::BTreeMap<String, String>,
    base_url: Option<String>,
    service: Arc<ServiceDef>,
    creds: Arc<Credentials>,
    redactor: Arc<Redactor>,
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// What opening a connection yields: credentials, scrubber and endpoint, shared with the
/// gateway's cache.
type Opening = (Arc<Credentials>, Arc<Redactor>, Arc<Endpoint>);

/// A connection opened for one request, with the scrubber for its secrets. Row, service,
/// credentials and endpoint are shared with the caches: a call does not clone them.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub row: Arc<ConnectionRow>,
    pub service: Arc<ServiceDef>,
    pub creds: Arc<Credentials>,
    pub endpoint: Arc<Endpoint>,
    redactor: Arc<Redactor>,
}

impl Loaded {
    /// A connection opened with `creds`, building its scrubber.
    pub fn new(
        row: ConnectionRow,
        service: impl Into<Arc<ServiceDef>>,
        creds: Credentials,
        endpoint: impl Into<Arc<Endpoint>>,
    ) -> Self {
        let service = service.into();
        let redactor = Arc::new(inject::redactor_for(&service, &creds, &row.params));
        Self {
            row: Arc::new(row),
            service,
            creds: Arc::new(creds),
            endpoint: endpoint.into(),
            redactor,
        }
    }

    /// Replace the credentials (after a refresh), and with them the scrubber.
    pub fn set_creds(&mut self, creds: Credentials) {
        self.redactor = Arc::new(inject::redactor_for(
            &self.service,
            &creds,
            &self.row.params,
        ));
        self.creds = Arc::new(creds);
    }

    /// Scrubs every form of this connection's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

/// Limits for one request.
pub(crate) struct RequestLimits {
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub max_request_bytes: u64,
}

impl Gateway {
    /// A gateway over `storage`, sealing with `sealer`.
    pub fn new(storage: Arc<Storage>, sealer: Arc<Sealer>) -> Self {
        let oauth = Arc::new(OAuth::new(storage.clone(), sealer.clone()));
        Self {
            catalog: Catalog::new(storage.clone()),
            storage,
            sealer,
            client: outbound::build_client(),
            oauth,
            opened: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// Handle a guest's `http.send`.
    pub async fn send(
        &self,
        ctx: &mut HttpState,
        connection: &str,
        req: OutboundRequest,
    ) -> Result<OutboundResponse, SendError> {
        // Refused calls count toward the cap too, and past it nothing more is recorded:
        // the records of one invocation stay as bounded as its calls.
        if ctx.calls.len() as u32 >= ctx.limits.max_outbound_requests {
            return Err(SendError::TooManyRequests);
        }
        let started = Instant::now();
        // What the guest named, cut to the longest valid name (it may be anything).
        let clip = |s: &str, max: usize| s.chars().take(max).collect::<String>();
        let mut record = OutboundCall {
            connection: clip(connection, crate::services::MAX_NAME_LEN),
            method: clip(&req.method, 16),
            origin: String::new(),
            path: String::new(),
            status: None,
            error: None,
            latency_ms: 0,
            bytes: 0,
        };
        let result = self.send_checked(ctx, connection, req, &mut record).await;
        record.latency_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) => {
                record.status = Some(r.status);
                record.bytes = r.body.len() as u64;
            }
            Err(e) => record.error = Some(e.kind().to_string()),
        }
        tracing::debug!(
            function = %ctx.function,
            connection,
            method = %record.method,
            origin = %record.origin,
            path = %record.path,
            status = ?record.status,
            error = ?record.error,
            latency_ms = record.latency_ms,
            "outbound call"
        );
        ctx.calls.push(record);
        result
    }

    async fn send_checked(
        &self,
        ctx: &HttpState,
        connection: &str,
        req: OutboundRequest,
        record: &mut OutboundCall,
    ) -> Result<OutboundResponse, SendError> {
        // Unknown and ungranted answer the same, and a malformed name is just unknown.
        if validate_name("connection", connection).is_err() {
            return Err(SendError::AccessDenied);
        }
        let mut loaded = match self.for_call(&ctx.function, connection)? {
            Cached::Granted(loaded) => loaded,
            Cached::Denied => return Err(SendError::AccessDenied),
        };
        if Status::parse(&loaded.row.status) != Status::Connected {
            return Err(SendError::NotConnected);
        }
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let limits = RequestLimits {
            timeout: request_timeout(req.timeout_ms, ctx.limits.request_timeout_ms, remaining),
            max_response_bytes: ctx.limits.max_response_bytes,
            max_request_bytes: ctx.limits.max_request_bytes,
        };
        let response = self
            .execute(&mut loaded, req, &limits, Some(record))
            .await?;
        let now = crate::storage::now_ms();
        let stale = loaded
            .row
            .last_used_at
            .is_none_or(|at| now.saturating_sub(at) >= LAST_USED_RESOLUTION_MS);
        if stale && let Err(e) = self.storage.touch_connection(connection) {
            tracing::warn!(connection, error = %e, "could not record last use");
        }
        Ok(response)
    }

    /// What a call from `function` on `connection` gets: from the cache while the
    /// configuration is unchanged, else read, opened and kept.
    fn for_call(&self, function: &str, connection: &str) -> Result<Cached, SendError> {
        let version = self.storage.config_version().map_err(|e| host_fault(&e))?;
        let hit = self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(version, function, connection);
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let call = self
            .storage
            .connection_for_call(function, connection)
            .map_err(|e| host_fault(&e))?;
        // Unknown and ungranted answer the same. A connection that is gone also leaves
        // memory (its opened credentials); an ungranted call evicts nothing.
        let found = match call {
            Some(call) if call.granted => {
                let service = self
                    .catalog
                    .require_shared(&call.row.service, call.service_definition.as_deref());
                match service.and_then(|s| self.open_row(call.row, s)) {
                    Ok(l) => Cached::Granted(l),
                    Err(ConnectionError::Seal(e)) => {
                        tracing::error!(connection, error = %e, "cannot open a connection's credentials");
                        return Err(SendError::NotConnected);
                    }
                    Err(e) => return Err(host_fault(&e)),
                }
            }
            Some(_) => Cached::Denied,
            None => {
                self.forget(connection);
                Cached::Denied
            }
        };
        // A change since `version` was read has moved the counter: the next call reads
        // again.
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(version, function, connection, &found);
        Ok(found)
    }

    /// Open a connection's row, service, credentials and endpoint. `Ok(None)` if absent.
    pub(crate) fn load(&self, name: &str) -> Result<Option<Loaded>, ConnectionError> {
        let Some(row) = self.storage.get_connection(name)? else {
            self.forget(name);
            return Ok(None);
        };
        let service = Arc::new(self.catalog.require(&row.service)?.def);
        self.open_row(row, service).map(Some)
    }

    /// A connection row's credentials and endpoint, under `service`.
    fn open_row(
        &self,
        row: ConnectionRow,
        service: Arc<ServiceDef>,
    ) -> Result<Loaded, ConnectionError> {
        let (creds, redactor, endpoint) = self.open(&row, &service)?;
        Ok(Loaded {
            row: Arc::new(row),
            service,
            creds,
            endpoint,
            redactor,
        })
    }

    /// A row's credentials, scrubber and endpoint: reused when nothing they derive from
    /// changed, otherwise opened, built and resolved (once per change, not once per
    /// request).
    fn open(
        &self,
        row: &ConnectionRow,
        service: &Arc<ServiceDef>,
    ) -> Result<Opening, ConnectionError> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = opened.get(&row.name)
            && o.sealed == row.sealed
            && o.params == row.params
            && o.base_url == row.base_url
            // `Arc`'s `==` checks for the same allocation first.
            && o.service == *service
        {
            return Ok((o.creds.clone(), o.redactor.clone(), o.endpoint.clone()));
        }
        let Some(blob) = &row.sealed else {
            opened.remove(&row.name);
            let creds = Credentials::default();
            let redactor = Arc::new(inject::redactor_for(service, &creds, &row.params));
            let endpoint = resolve_endpoint(service, row, &creds)?;
            return Ok((Arc::new(creds), redactor, Arc::new(endpoint)));
        };
        // Kept for as long as the connection is used: without its refresh token, which the
        // OAuth module reads from storage when it refreshes.
        let creds = Credentials::open(&self.sealer, &row.name, blob)?.without_refresh_token();
        let redactor = Arc::new(inject::redactor_for(service, &creds, &row.params));
        let endpoint = Arc::new(resolve_endpoint(service, row, &creds)?);
        let creds = Arc::new(creds);
        opened.insert(
            row.name.clone(),
            Opened {
                sealed: row.sealed.clone(),
                params: row.params.clone(),
                base_url: row.base_url.clone(),
                service: service.clone(),
                creds: creds.clone(),
                redactor: redactor.clone(),
                endpoint: endpoint.clone(),
            },
        );
        Ok((creds, redactor, endpoint))
    }

    /// Drop what is kept in memory for a connection that is gone.
    fn forget(&self, name: &str) {
        self.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Check, inject, send and scrub one request for an already-authorised caller
    /// (a granted guest, or an admin's verification request). For OAuth connections the
    /// token is refreshed first when close to expiry, and once more after a 401.
    pub(crate) async fn execute(
        &self,
        loaded: &mut Loaded,
        req: OutboundRequest,
        limits: &RequestLimits,
        record: Option<&mut OutboundCall>,
    ) -> Result<OutboundResponse, SendError> {
        let prepared = prepare(loaded, req, limits, record)?;
        let oauth = loaded.service.oauth2.is_some();
        if oauth {
            self.oauth.ensure_fresh(loaded, false).await?;
        }
        let response = self.send_prepared(loaded, &prepared, limits).await?;
        if oauth && response.status == 401 {
            tracing::info!(connection = %loaded.row.name, "upstream answered 401; refreshing the token once and retrying once");
            if self.oauth.ensure_fresh(loaded, true).await? {
                return self.send_prepared(loaded, &prepared, limits).await;
            }
        }
        Ok(response)
    }

    async fn send_prepared(
        &self,
        loaded: &Loaded,
        prepared: &Prepared,
        limits: &RequestLimits,
    ) -> Result<OutboundResponse, SendError> {
        let redactor = loaded.redactor();
        let mut url = prepared.url.clone();
        let mut headers = prepared.headers.clone();
        // Last step before sending: attach the credentials.
        inject::apply(
            &mut url,
            &mut headers,
            &loaded.service,
            &loaded.creds,
            &loaded.row.params,
        )?;
        outbound::add_default_headers(&mut headers);
        // Not echoed: the URL may carry an API key in its query.
        let uri: hyper::Uri = url.as_str().parse().map_err(|_| {
            SendError::InvalidRequest("the target is not a URL that can be sent".into())
        })?;
        let mut request = hyper::Request::new(outbound::OutboundBody::from(prepared.body.clone()));
        *request.method_mut() = prepared.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        let send = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| map_send_error(&e, redactor))?;
            let (mut parts, mut incoming) = response.into_parts();
            let status = parts.status.as_u16();
            if let Some(coding) = unscrubbable_coding(&parts.headers) {
                // Asked for identity and got something else: the scrubber cannot see into
                // it, so it does not reach the guest.
                return Err(SendError::UpstreamUnreachable(format!(
                    "the upstream sent an encoded answer ({}) although keyhole asked for none; keyhole passes on only bodies it can check for secrets",
                    clip(&redactor.scrub(&coding), MAX_SHOWN_CODINGS)
                )));
            }
            // Taken, not copied: the length check reads the body's size hint.
            let upstream_headers = std::mem::take(&mut parts.headers);
            if hyper::body::Body::size_hint(&incoming)
                .exact()
                .is_some_and(|n| n > limits.max_response_bytes)
            {
                return Err(SendError::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| map_send_error(&e, redactor))?;
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers: not passed on
                };
                if (body.len() + chunk.len()) as u64 > limits.max_response_bytes {
                    return Err(SendError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            let (body, scrubbed) = redactor.scrub_vec(body);
            // Methods are case-sensitive, but a server that takes `head` for HEAD answers
            // it without a body all the same.
            let no_body = prepared.method.as_str().eq_ignore_ascii_case("HEAD") || status == 304;
            let headers = guest_headers(
                &upstream_headers,
                redactor,
                &prepared.credential_headers,
                no_body,
                scrubbed.then_some(body.len()),
            );
            Ok(OutboundResponse {
                status,
                headers,
                body,
            })
        };
        if limits.timeout.is_zero() {
            return Err(SendError::Timeout);
        }
        tokio::time::timeout(limits.timeout, send)
            .await
            .map_err(|_| SendError::Timeout)?
    }
}

/// A checked request, ready for credentials.
struct Prepared {
    method: reqwest::Method,
    url: url::Url,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
    /// The (lowercase) headers the connection's credentials go in.
    credential_headers: Vec<String>,
}

/// Every guest-controlled check, before anything is sent: method, destination, reserved
/// query keys and headers, control characters, body size.
fn prepare(
    loaded: &Loaded,
    req: OutboundRequest,
    limits: &RequestLimits,
    record: Option<&mut OutboundCall>,
) -> Result<Prepared, SendError> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
        SendError::InvalidRequest(format!("{:?} is not a valid HTTP method", req.method))
    })?;
    // Methods are case-sensitive, so `trace` is an extension method to hyper; some servers
    // still treat it as TRACE.
    if ["CONNECT", "TRACE"]
        .iter()
        .any(|m| method.as_str().eq_ignore_ascii_case(m))
    {
        return Err(SendError::InvalidRequest(format!(
            "method {method} is not allowed"
        )));
    }
    let url = match egress::resolve_target(&loaded.endpoint, &req.target, &req.query) {
        Ok(url) => url,
        Err(e) => {
            if let Some(record) = record {
                record_refused_target(record, loaded, &req.target);
            }
            return Err(e);
        }
    };
    if let Some(record) = record {
        record.origin = recorded_origin(loaded, &url);
        record.path = recorded_path(loaded, url.path());
    }
    let (reserved_headers, reserved_query) = inject::reserved_names(&loaded.service);
    if let Some((k, _)) = url
        .query_pairs()
        .find(|(k, _)| reserved_query.iter().any(|r| r == k))
    {
        return Err(SendError::InvalidRequest(format!(
            "query parameter {k:?} is set by the connection"
        )));
    }
    let body = req.body.unwrap_or_default();
    if body.len() as u64 > limits.max_request_bytes {
        return Err(SendError::InvalidRequest(format!(
            "request body is {} bytes, over the {}-byte limit",
            body.len(),
            limits.max_request_bytes
        )));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if REFUSED_HEADERS.contains(&lower.as_str()) || reserved_headers.contains(&lower) {
            return Err(SendError::InvalidRequest(format!(
                "header {name:?} is set by the connection and may not be supplied"
            )));
        }
        if UNSCRUBBABLE_HEADERS.contains(&lower.as_str()) {
            return Err(SendError::InvalidRequest(format!(
                "header {name:?} may not be supplied: keyhole asks for the whole, uncompressed answer so it can scrub secrets from it"
            )));
        }
        if name
            .chars()
            .chain(value.chars())
            .any(|c| c.is_control() && c != '\t')
        {
            return Err(SendError::InvalidRequest(format!(
                "header {name:?} contains control characters"
            )));
        }
        let hn = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            SendError::InvalidRequest(format!("{name:?} is not a valid header name"))
        })?;
        let hv = HeaderValue::from_str(value).map_err(|_| {
            SendError::InvalidRequest(format!("the value of header {name:?} is not valid"))
        })?;
        headers.append(hn, hv);
    }
    headers.insert(
        reqwest::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    Ok(Prepared {
        method,
        url,
        headers,
        body,
        credential_headers: reserved_headers,
    })
}

/// Resolve the service's endpoint with this connection's `url` params (secret ones too:
/// a webhook's capability URL is a secret `url` param).
pub(crate) fn resolve_endpoint(
    service: &ServiceDef,
    row: &ConnectionRow,
    creds: &Credentials,
) -> Result<Endpoint, ConnectionError> {
    let mut url_params = std::collections::BTreeMap::new();
    for p in service
        .params
        .iter()
        .filter(|p| p.location == ParamLocation::Url)
    {
        if let Some(v) = creds.params.get(&p.name) {
            url_params.insert(p.name.clone(), v.expose().to_string());
        } else if let Some(v) = row.params.get(&p.name) {
            url_params.insert(p.name.clone(), v.clone());
        }
    }
    Ok(service.resolve(&url_params, row.base_url.as_deref())?)
}

/// How long one outbound request may take: what the guest asked for (default: the
/// per-request limit), never more than that limit nor the invocation's remaining time.
fn request_timeout(wanted_ms: Option<u32>, limit_ms: u64, remaining: Duration) -> Duration {
    let limit = Duration::from_millis(limit_ms);
    wanted_ms
        .map(|ms| Duration::from_millis(ms.into()))
        .unwrap_or(limit)
        .min(limit)
        .min(remaining)
}

/// Longest path kept in a record, in characters (the guest chose it; it may be
/// anything, up to what its memory holds, for each of its calls).
const MAX_RECORDED_PATH: usize = 200;

/// Where a refused request wanted to go, for the admin reading the records: the origin
/// of an absolute target (else the connection's own), and the target's path without its
/// query, cut short, scrubbed like any recorded path.
fn record_refused_target(record: &mut OutboundCall, loaded: &Loaded, target: &str) {
    let without_query = target.split(['?', '#']).next().unwrap_or_default();
    let (origin, path) = match url::Url::parse(without_query) {
        Ok(url) if url.has_host() => (recorded_origin(loaded, &url), url.path().to_string()),
        _ => (
            recorded_origin(loaded, &loaded.endpoint.base_url),
            without_query.to_string(),
        ),
    };
    record.origin = origin;
    record.path = recorded_path(loaded, &path);
}

/// `path` as a record keeps it: scrubbed, then cut to [`MAX_RECORDED_PATH`] characters
/// (in that order, so a cut cannot leave part of a secret unscrubbed).
fn recorded_path(loaded: &Loaded, path: &str) -> String {
    clip(
        &scrub_path(&loaded.service, loaded.redactor(), path),
        MAX_RECORDED_PATH,
    )
}

/// The origin of `url` for a record, scrubbed: a capability URL may carry its secret in
/// the host name (`https://<secret id>.m.pipedream.net`).
fn recorded_origin(loaded: &Loaded, url: &url::Url) -> String {
    loaded
        .redactor()
        .scrub(&crate::services::Origin::of(url).to_string())
}

fn scrub_path(service: &ServiceDef, redactor: &Redactor, path: &str) -> String {
    let secret_url = service
        .params
        .iter()
        .any(|p| p.secret && p.location == ParamLocation::Url);
    if secret_url {
        "[redacted]".to_string()
    } else {
        redactor.scrub(path)
    }
}

/// A failed exchange as the guest sees it: a timeout, or the cause, scrubbed. hyper's
/// errors do not carry the URL (which may hold an API key in its query).
fn map_send_error(e: &(dyn std::error::Error + 'static), redactor: &Redactor) -> SendError {
    if outbound::is_timeout(e) {
        return SendError::Timeout;
    }
    SendError::UpstreamUnreachable(redactor.scrub(&outbound::describe(e)))
}

fn host_fault(e: &dyn std::fmt::Display) -> SendError {
    tracing::error!(error = %e, "host fault while handling an outbound request");
    SendError::UpstreamUnreachable("keyhole host error; see the host's logs".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_cache_serves_only_what_was_read_under_the_current_version() {
        let mut cache = CallCache::default();
        cache.put(5, "f", "gh", &Cached::Denied);
        assert!(matches!(cache.get(5, "f", "gh"), Some(Cached::Denied)));
        assert!(cache.get(5, "g", "gh").is_none(), "another function's");
        assert!(
            cache.get(6, "f", "gh").is_none(),
            "kept under an older version"
        );
        cache.put(6, "f", "gh", &Cached::Denied);
        assert!(
            cache.get(4, "f", "gh").is_none(),
            "a version that went back (a database restored under a running server)"
        );
        assert!(
            cache.get(6, "f", "gh").is_none(),
            "going back dropped what was kept"
        );
        for i in 0..MAX_CACHED_NAMES + 10 {
            cache.put(6, "f", &format!("c{i}"), &Cached::Denied);
        }
        assert_eq!(
            cache.entries["f"].len(),
            MAX_CACHED_NAMES,
            "names a guest tries"
        );
    }

    #[test]
    fn a_request_timeout_is_capped_by_the_limit_and_the_time_left() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Default: the per-request limit, unless less time is left.
        assert_eq!(request_timeout(None, 30_000, s(60)), s(30));
        assert_eq!(request_timeout(None, 30_000, s(5)), s(5));
        // A guest may ask for less, never for more.
        assert_eq!(request_timeout(Some(200), 30_000, s(60)), ms(200));
        assert_eq!(request_timeout(Some(3_600_000), 30_000, s(60)), s(30));
        assert_eq!(request_timeout(Some(3_600_000), 30_000, s(2)), s(2));
    }
}
