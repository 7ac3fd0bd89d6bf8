//! HTTP endpoints of the OAuth test server: `/authorize` (+ the consent decision), `/token`,
//! `/revoke` and the bearer-protected `/api/*` resource.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{any, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::store::{
    AnswerStyle, ClientAuth, Issued, OAuthError, PendingConsent, Store, is_pkce_string,
    is_valid_scope,
};
use crate::fake_api::strip_scheme;
use crate::server::{Echo, RequestLog, decode_pairs, record};

const REALM: &str = "keyhole-oauth";

/// The resource owner who approves when the test names none.
pub const DEFAULT_USER: &str = "keyhole-test";

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub log: Arc<RequestLog>,
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let log = shared.log.clone();
    Router::new()
        .route("/authorize", get(authorize))
        .route("/authorize/decision", post(decision))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/api/user", get(api_user))
        .route("/api/always-401", any(api_always_401))
        .route("/api/echo", any(api_echo))
        .route("/api/echo/{*rest}", any(api_echo))
        .with_state(shared)
        .layer(axum::middleware::from_fn_with_state(log, record))
}

/// Request parameters with RFC 6749 §3.1 semantics: empty values count as absent.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(input: &[u8]) -> Self {
        Self(decode_pairs(input))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The first name given more than once (§3.1/§3.2 forbid repeats).
    fn repeated(&self) -> Option<&str> {
        let mut seen = HashSet::new();
        self.0
            .iter()
            .find(|(k, _)| !seen.insert(k.as_str()))
            .map(|(k, _)| k.as_str())
    }
}

fn json_no_store(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = json_no_store(self.status, body);
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = format!("Basic realm=\"{REALM}\"").parse().expect("ascii");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// A 400 page for errors that must not redirect (RFC 6749 §4.1.2.1: bad client or URI).
fn error_page(message: &str) -> Response {
    let body =
        format!("<!doctype html><title>error</title><h1>Authorization error</h1><p>{message}</p>");
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

fn found(location: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// `redirect_uri` with `extra` appended to its query, keeping what it already had (§3.1.2).
fn redirect_with(redirect_uri: &str, extra: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(redirect_uri).expect("registered redirect URIs are absolute");
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in extra {
            pairs.append_pair(k, v);
        }
    }
    url.into()
}

fn redirect_error(
    redirect_uri: &str,
    state: Option<&str>,
    iss: Option<&str>,
    error: &str,
    desc: &str,
) -> Response {
    let mut extra = vec![("error", error), ("error_description", desc)];
    if let Some(state) = state {
        extra.push(("state", state));
    }
    // RFC 9207 §2: error responses carry the issuer too.
    if let Some(iss) = iss {
        extra.push(("iss", iss));
    }
    found(redirect_with(redirect_uri, &extra))
}

/// `GET /authorize`: validates the request and shows a consent page carrying a token.
async fn authorize(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap) -> Response {
    let params = Params::parse(uri.query().unwrap_or("").as_bytes());
    let repeated = params.repeated();
    if matches!(repeated, Some("client_id" | "redirect_uri")) {
        return error_page("client_id and redirect_uri may be given only once");
    }
    let mut store = shared.store.lock().unwrap();
    let Some(client_id) = params.get("client_id") else {
        return error_page("missing client_id");
    };
    let Some(client) = store.clients.get(client_id) else {
        return error_page("unknown client_id");
    };
    let (redirect_uri, redirect_uri_given) = match params.get("redirect_uri") {
        Some(given) if client.redirect_uris.iter().any(|r| r == given) => (given.to_owned(), true),
        Some(_) => return error_page("redirect_uri is not registered for this client"),
        // §3.1.2.3: may be omitted only when exactly one URI is registered.
        None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
        None => return error_page("redirect_uri is required"),
    };
    let state = params.get("state");
    let iss = store.knobs.issuer.clone();
    let fail =
        |error: &str, desc: &str| redirect_error(&redirect_uri, state, iss.as_deref(), error, desc);
    if let Some(name) = repeated {
        return fail("invalid_request", &format!("parameter {name} is repeated"));
    }
    match params.get("response_type") {
        None => return fail("invalid_request", "missing response_type"),
        Some("code") => {}
        Some(_) => return fail("unsupported_response_type", "only response_type=code"),
    }
    let challenge = if store.knobs.pkce {
        let Some(challenge) = params.get("code_challenge") else {
            return fail("invalid_request", "code_challenge is required (PKCE)");
        };
        // RFC 7636 §4.3: an absent method means `plain`, which this server refuses.
        if params.get("code_challenge_method") != Some("S256") {
            return fail(
                "invalid_request",
                "transform algorithm not supported: use S256",
            );
        }
        if !is_pkce_string(challenge) {
            return fail("invalid_request", "malformed code_challenge");
        }
        Some(challenge.to_owned())
    } else {
        // A provider without PKCE that refuses parameters it does not know.
        if let Some(name) = ["code_challenge", "code_challenge_method"]
            .into_iter()
            .find(|name| params.get(name).is_some())
        {
            return fail("invalid_request", &format!("unknown parameter {name}"));
        }
        None
    };
    let scope = params.get("scope").unwrap_or_default();
    if !scope.is_empty() && !is_valid_scope(scope) {
        return fail("invalid_scope", "malformed scope");
    }
    let consent = PendingConsent {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.clone(),
        redirect_uri_given,
        scope: scope.to_owned(),
        state: state.map(str::to_owned),
        challenge,
    };
    let token = store.add_consent(consent);
    drop(store);

    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        return Json(json!({
            "consent": token,
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
        }))
        .into_response();
    }
    Html(format!(
        "<!doctype html><title>consent</title>\
         <h1>Allow {client_id} ({scope})?</h1>\
         <form method=post action=/authorize/decision>\
         <input type=hidden name=consent value=\"{token}\">\
         <button name=approve value=true>Allow</button>\
         <button name=approve value=false>Deny</button></form>"
    ))
    .into_response()
}

/// `POST /authorize/decision`: `consent`, `approve=true|false`, optional `scope` override.
async fn decision(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let params = Params::parse(&body);
    let approve = match params.get("approve") {
        Some("true") => true,
        Some("false") => false,
        _ => return error_page("approve must be true or false"),
    };
    let granted = params.get("scope").map(str::to_owned);
    // Who is signed in at the provider and approves: the resource owner.
    let user = params.get("user").unwrap_or(DEFAULT_USER).to_owned();
    if granted.as_deref().is_some_and(|s| !is_valid_scope(s)) {
        return error_page("malformed scope override");
    }
    let mut store = shared.store.lock().unwrap();
    let Some(consent) = params.get("consent").and_then(|c| store.take_consent(c)) else {
        return error_page("unknown or already used consent token");
    };
    if !approve {
        let state = consent.state.as_deref();
        let desc = "the resource owner denied the request";
        let iss = store.knobs.issuer.as_deref();
        return redirect_error(&consent.redirect_uri, state, iss, "access_denied", desc);
    }
    let redirect_uri = consent.redirect_uri.clone();
    let state = consent.state.clone();
    let scope = granted.unwrap_or_else(|| consent.scope.clone());
    let code = store.issue_code(consent, scope, user);
    let mut extra = vec![("code", code.as_str())];
    if let Some(state) = state.as_deref() {
        extra.push(("state", state));
    }
    if let Some(iss) = store.knobs.issuer.as_deref() {
        extra.push(("iss", iss));
    }
    found(redirect_with(&redirect_uri, &extra))
}

/// Identifies the client per its registration (RFC 6749 §2.3.1); one method per request.
fn authenticate_client(
    store: &Store,
    headers: &HeaderMap,
    params: &Params,
) -> Result<String, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let decoded = value
                .to_str()
                .ok()
                .and_then(|h| strip_scheme(h, "Basic"))
                .and_then(|b64| BASE64.decode(b64.trim()).ok())
                .and_then(|raw| String::from_utf8(raw).ok());
            let Some((id, secret)) = decoded.as_deref().and_then(|s| s.split_once(':')) else {
                return Err(OAuthError::invalid_client("malformed Authorization header"));
            };
            Some((form_decode(id), form_decode(secret)))
        }
    };
    let body_id = params.get("client_id");
    let body_secret = params.get("client_secret");
    if basic.is_some() && body_secret.is_some() {
        return Err(OAuthError::invalid_request(
            "use exactly one client authentication method",
        ));
    }
    let (id, secret, via_basic) = match (basic, body_id) {
        (Some((id, secret)), body_id) => {
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::invalid_client("client_id does not match"));
            }
            (id, Some(secret), true)
        }
        (None, Some(id)) => (id.to_owned(), body_secret.map(str::to_owned), false),
        (None, None) => return Err(OAuthError::invalid_client("client authentication required")),
    };
    let Some(client) = store.clients.get(&id) else {
        return Err(OAuthError::invalid_client("unknown client"));
    };
    let allowed = match (client.auth, via_basic, secret.is_some()) {
        (ClientAuth::Basic | ClientAuth::Both, true, _) => true,
        (ClientAuth::Body | ClientAuth::Both, false, true) => true,
        (ClientAuth::None, false, false) => return Ok(id),
        _ => false,
    };
    if !allowed {
        return Err(OAuthError::invalid_client(
            "client authentication method not allowed for this client",
        ));
    }
    if secret.as_deref() != Some(client.secret.as_str()) {
        return Err(OAuthError::invalid_client("client authentication failed"));
    }
    Ok(id)
}

/// `application/x-www-form-urlencoded` decoding of one Basic credential half (§2.3.1).
fn form_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The form body of a `/token` or `/revoke` request, after the §3.2 checks.
fn form_params(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::invalid_request(
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    let params = Params::parse(body);
    if let Some(name) = params.repeated() {
        return Err(OAuthError::invalid_request(format!(
            "parameter {name} is repeated"
        )));
    }
    Ok(params)
}

fn token_response(issued: Issued, style: AnswerStyle, padding: usize) -> Response {
    let mut body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    });
    if let Some(refresh) = issued.refresh_token {
        body["refresh_token"] = refresh.into();
    }
    if !issued.scope.is_empty() {
        body["scope"] = issued.scope.into();
    }
    if padding > 0 {
        body["padding"] = "x".repeat(padding).into();
    }
    styled(StatusCode::OK, body, style)
}

/// A `/token` answer (a token or an error object) written as `style` says.
fn styled(status: StatusCode, mut body: Value, style: AnswerStyle) -> Response {
    let no_store = [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ];
    match style {
        AnswerStyle::Json => json_no_store(status, body),
        AnswerStyle::OffSpec => {
            if let Some(n) = body.get("expires_in").and_then(Value::as_u64) {
                body["expires_in"] = n.to_string().into();
            }
            if let Some(fields) = body.as_object_mut() {
                fields.remove("token_type");
            }
            json_no_store(status, body)
        }
        AnswerStyle::JsonAsText => {
            let mut response = (status, no_store, body.to_string()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        AnswerStyle::Chunked => {
            let text = body.to_string().into_bytes();
            let pieces: Vec<Result<Bytes, std::convert::Infallible>> = text
                .chunks(16 * 1024)
                .map(|piece| Ok(Bytes::copy_from_slice(piece)))
                .collect();
            let mut response = (
                status,
                no_store,
                axum::body::Body::from_stream(futures::stream::iter(pieces)),
            )
                .into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        AnswerStyle::Form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in body.as_object().into_iter().flatten() {
                match value {
                    Value::String(s) => form.append_pair(name, s),
                    Value::Null => continue,
                    other => form.append_pair(name, &other.to_string()),
                };
            }
            let mut response = (status, no_store, form.finish()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            response
        }
    }
}

/// `POST /token` (RFC 6749 §4.1.3, §4.4.2, §6).
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = form_params(&headers, &body);
    let (delay, injected, errors_with_200, quote) = {
        let mut store = shared.store.lock().unwrap();
        let grant = parsed
            .as_ref()
            .ok()
            .and_then(|p| p.get("grant_type"))
            .unwrap_or_default()
            .to_owned();
        store.token_requests += 1;
        *store.token_requests_by_grant.entry(grant).or_insert(0) += 1;
        let knobs = &mut store.knobs;
        let injected = (knobs.fail_next > 0).then(|| {
            knobs.fail_next -= 1;
            knobs.fail_status
        });
        (
            knobs.token_delay,
            injected,
            knobs.errors_with_200,
            knobs.quote_in_errors,
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = injected {
        let mut description = "injected failure (test knob)".to_string();
        if quote {
            let presented = parsed.as_ref().ok().and_then(|p| p.get("refresh_token"));
            let auth = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            description = format!(
                "cannot refresh {} now (client {})",
                presented.unwrap_or("-"),
                auth.unwrap_or("-")
            );
        }
        let body = json!({
            "error": "temporarily_unavailable",
            "error_description": description,
        });
        let status = if errors_with_200 {
            StatusCode::OK
        } else {
            status
        };
        return (status, [(header::RETRY_AFTER, "1")], Json(body)).into_response();
    }
    let params = match parsed {
        Ok(params) => params,
        Err(err) => return err.into_response(),
    };
    let (result, answer) = {
        let mut store = shared.store.lock().unwrap();
        let client_id = match authenticate_client(&store, &headers, &params) {
            Ok(id) => id,
            Err(err) => return err.into_response(),
        };
        let result = match params.get("grant_type") {
            None => Err(OAuthError::invalid_request("missing grant_type")),
            Some("authorization_code") => match params.get("code") {
                None => Err(OAuthError::invalid_request("missing code")),
                Some(code) => store.exchange_code(
                    &client_id,
                    code,
                    params.get("redirect_uri"),
                    params.get("code_verifier"),
                ),
            },
            Some("refresh_token") => match params.get("refresh_token") {
                None => Err(OAuthError::invalid_request("missing refresh_token")),
                Some(rt) => {
                    let omit_scope = store.knobs.omit_scope_on_refresh;
                    store
                        .refresh(&client_id, rt, params.get("scope"))
                        .map(|mut issued| {
                            if omit_scope {
                                issued.scope.clear();
                            }
                            issued
                        })
                }
            },
            Some("client_credentials") => store.client_credentials(&client_id, params.get("scope")),
            Some(other) => Err(OAuthError::unsupported_grant_type(format!(
                "grant_type {other} is not supported"
            ))),
        };
        let knobs = &store.knobs;
        let answer = (
            knobs.token_answer_delay,
            knobs.answer_style,
            knobs.answer_padding,
        );
        (result, answer)
    };
    let (answer_delay, style, padding) = answer;
    if !answer_delay.is_zero() {
        tokio::time::sleep(answer_delay).await;
    }
    match result {
        Ok(issued) => token_response(issued, style, padding),
        Err(err) if errors_with_200 => {
            let mut response = err.into_response();
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(err) if style == AnswerStyle::Form => {
            let body = json!({ "error": err.code, "error_description": err.description });
            styled(err.status, body, style)
        }
        Err(err) => err.into_response(),
    }
}

/// `POST /revoke` (RFC 7009 §2): 200 even for unknown tokens.
async fn revoke(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match form_params(&headers, &body) {
        Ok(params) => params,
        Err(err) => return err.into_response(),
    };
    let delay = shared.store.lock().unwrap().knobs.revoke_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut store = shared.store.lock().unwrap();
    if store.knobs.fail_next_revocations > 0 {
        store.knobs.fail_next_revocations -= 1;
        let body = json!({
            "error": "temporarily_unavailable",
            "error_description": "injected failure (test knob)",
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let client_id = match authenticate_client(&store, &headers, &params) {
        Ok(id) => id,
        Err(err) => return err.into_response(),
    };
    let Some(token) = params.get("token") else {
        return OAuthError::invalid_request("missing token").into_response();
    };
    if store.knobs.invalid_token_on_dead_revocation && !store.is_token_active(token) {
        let body = json!({
            "error": "invalid_token",
            "error_description": "Token expired or revoked",
        });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    match store.revoke(&client_id, token, params.get("token_type_hint")) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}

/// A 401 from the resource, carrying its `WWW-Authenticate` challenge.
struct Unauthorized(String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let challenge = [(header::WWW_AUTHENTICATE, self.0)];
        let body = Json(json!({ "error": "unauthorized" }));
        (StatusCode::UNAUTHORIZED, challenge, body).into_response()
    }
}

/// RFC 6750 §3: no error code when no credentials came, `invalid_token` for anything else.
/// Answers the owner and scope of a valid token.
fn check_bearer(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(String, String, String), Unauthorized> {
    let values: Vec<&str> = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let challenge = match values.as_slice() {
        [] => format!("Bearer realm=\"{REALM}\""),
        [one] => {
            let owner = strip_scheme(one, "Bearer")
                .and_then(|t| shared.store.lock().unwrap().active_access(t));
            if let Some(owner) = owner {
                return Ok(owner);
            }
            format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", \
                 error_description=\"the access token is unknown, expired or revoked\""
            )
        }
        _ => format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", \
             error_description=\"more than one Authorization header\""
        ),
    };
    Err(Unauthorized(challenge))
}

async fn api_user(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match check_bearer(&shared, &headers) {
        Ok((client_id, scope, owner)) => Json(json!({
            "login": owner,
            "client_id": client_id,
            "scope": scope,
        }))
        .into_response(),
        Err(unauthorized) => unauthorized.into_response(),
    }
}

/// Refuses every token, valid or not (an endpoint the grant does not cover, answering 401
/// instead of 403).
async fn api_always_401() -> Response {
    Unauthorized(format!(
        "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"not for this token\""
    ))
    .into_response()
}

async fn api_echo(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match check_bearer(&shared, &headers) {
        Ok(_) => Json(Echo::of(&method, &uri, &headers, &body)).into_response(),
        Err(unauthorized) => unauthorized.into_response(),
    }
}
