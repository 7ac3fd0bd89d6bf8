//! `OAuthServer`: a strict OAuth 2.0 authorization server (RFC 6749, RFC 7636 S256-only
//! PKCE, RFC 7009 revocation) plus a bearer-protected resource, on `127.0.0.1`, with the
//! knobs and counters end-to-end tests need to exercise refresh, rotation and revocation.
//!
//! Endpoints: `GET /authorize`, `POST /authorize/decision`, `POST /token`, `POST /revoke`,
//! `GET /api/user`, `ANY /api/echo[/*rest]`. There is no login page: a test approves or
//! denies with [`OAuthServer::approve`] / [`OAuthServer::deny`], as the signed-in user
//! `keyhole-test` or, with [`OAuthServer::approve_as`], another resource owner.

mod endpoints;
mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::server::{RecordedRequest, RequestLog, TestServer};
use endpoints::Shared;
pub use store::{AnswerStyle, ClientAuth, pkce_challenge};
use store::{Client, Store};

/// A loopback OAuth 2.0 authorization server; it stops when dropped.
pub struct OAuthServer {
    server: TestServer,
    shared: Arc<Shared>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ConsentPage {
    consent: String,
}

impl OAuthServer {
    /// Starts a server with no registered clients and the defaults: access tokens live
    /// 3600 s, codes 60 s, refresh tokens rotate, no delay, no injected failures.
    pub async fn start() -> Self {
        Self::start_blocking()
    }

    /// [`start`](Self::start) for synchronous tests: the server runs on a thread of its
    /// own either way, so no runtime is needed.
    pub fn start_blocking() -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            log: Arc::new(RequestLog::default()),
        });
        let server = TestServer::spawn(endpoints::router(shared.clone()));
        // Like current providers, it names itself in authorization responses (RFC 9207).
        shared.store.lock().unwrap().knobs.issuer = Some(server.base_url());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("build a reqwest client");
        Self {
            server,
            shared,
            http,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    /// Registers (or replaces) a client. Redirect URIs are matched exactly.
    /// With [`ClientAuth::None`] the client is public and `client_secret` is ignored.
    pub fn register_client<I, S>(
        &self,
        client_id: &str,
        client_secret: &str,
        redirect_uris: I,
        auth: ClientAuth,
    ) where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let client = Client {
            secret: client_secret.to_owned(),
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
            auth,
        };
        self.store().clients.insert(client_id.to_owned(), client);
    }

    /// `http://127.0.0.1:PORT`, no trailing slash; also the issuer.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `base_url() + path`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    /// The authorization endpoint.
    pub fn authorize_url(&self) -> String {
        self.url("/authorize")
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        self.url("/token")
    }

    /// The RFC 7009 revocation endpoint.
    pub fn revoke_url(&self) -> String {
        self.url("/revoke")
    }

    /// A complete authorization URL for `client_id`, with S256 PKCE over `verifier`.
    pub fn authorization_request(
        &self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        state: &str,
        verifier: &str,
    ) -> String {
        let mut url = url::Url::parse(&self.authorize_url()).expect("valid base url");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", &pkce_challenge(verifier))
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// Loads `authorize_url` (any authorization request, e.g. one the host built) and
    /// approves it with the requested scope. Returns the `Location` the browser would
    /// follow: `redirect_uri?code=…&state=…`, or the error redirect `/authorize` chose.
    pub async fn approve(&self, authorize_url: &str) -> anyhow::Result<String> {
        self.decide(authorize_url, true, None, None).await
    }

    /// Like [`approve`](Self::approve), signed in at the provider as `user`: the tokens
    /// reach `user`'s resources, and `/api/user` answers with that login.
    pub async fn approve_as(&self, authorize_url: &str, user: &str) -> anyhow::Result<String> {
        self.decide(authorize_url, true, None, Some(user)).await
    }

    /// Like [`approve`](Self::approve) but grants `scope` instead of the requested one.
    pub async fn approve_with_scope(
        &self,
        authorize_url: &str,
        scope: &str,
    ) -> anyhow::Result<String> {
        self.decide(authorize_url, true, Some(scope), None).await
    }

    /// Denies the request: `redirect_uri?error=access_denied&state=…`.
    pub async fn deny(&self, authorize_url: &str) -> anyhow::Result<String> {
        self.decide(authorize_url, false, None, None).await
    }

    async fn decide(
        &self,
        authorize_url: &str,
        approve: bool,
        scope: Option<&str>,
        user: Option<&str>,
    ) -> anyhow::Result<String> {
        let response = self
            .http
            .get(authorize_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .context("load the authorization URL")?;
        if response.status() == StatusCode::FOUND {
            return location(&response);
        }
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("authorization endpoint answered {status}: {body}");
        }
        let page: ConsentPage = response.json().await.context("parse the consent page")?;
        let mut form = vec![("consent", page.consent), ("approve", approve.to_string())];
        if let Some(scope) = scope {
            form.push(("scope", scope.to_owned()));
        }
        if let Some(user) = user {
            form.push(("user", user.to_owned()));
        }
        let response = self
            .http
            .post(self.url("/authorize/decision"))
            .form(&form)
            .send()
            .await
            .context("post the consent decision")?;
        if response.status() != StatusCode::FOUND {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            bail!("consent decision answered {status}: {body}");
        }
        location(&response)
    }

    /// The issuer identifier it sends as `iss` (RFC 9207): its base URL.
    pub fn issuer(&self) -> String {
        self.base_url()
    }

    /// Send `issuer` as `iss` in authorization responses from now on (`None`: send none,
    /// as providers without RFC 9207 support do). For mix-up tests.
    pub fn set_issuer_in_responses(&self, issuer: Option<&str>) {
        self.store().knobs.issuer = issuer.map(str::to_owned);
    }

    /// Lifetime of access tokens issued from now on (`expires_in`).
    pub fn set_access_ttl(&self, secs: u64) {
        self.store().knobs.access_ttl = secs;
    }

    /// Lifetime of authorization codes issued from now on.
    pub fn set_code_ttl(&self, secs: u64) {
        self.store().knobs.code_ttl = Duration::from_secs(secs);
    }

    /// Makes every access token issued so far expired.
    pub fn expire_all_access_tokens(&self) {
        self.store().expire_all_access();
    }

    /// Revokes every grant: all access and refresh tokens issued so far.
    pub fn revoke_all(&self) {
        self.store().revoke_all();
    }

    /// The next `n` `/token` requests answer `status` (e.g. 503) without being processed.
    pub fn fail_next_token_requests(&self, n: u32, status: u16) {
        let mut store = self.store();
        store.knobs.fail_next = n;
        store.knobs.fail_status = StatusCode::from_u16(status).expect("a valid status code");
    }

    /// The next `n` refresh-token grants answer `invalid_grant` (or the code set with
    /// [`set_refresh_refusal_code`](Self::set_refresh_refusal_code)) without touching any
    /// token.
    pub fn reject_next_refreshes(&self, n: u32) {
        self.store().knobs.reject_next_refreshes = n;
    }

    /// The error code [`reject_next_refreshes`](Self::reject_next_refreshes) answers with
    /// (default `invalid_grant`): a provider of its own ways, like GitHub's
    /// `bad_refresh_token`.
    pub fn set_refresh_refusal_code(&self, code: &'static str) {
        self.store().knobs.refresh_refusal = code;
    }

    /// Whether a refresh issues a new refresh token and retires the old one (default on).
    /// Off: the same refresh token is returned and stays valid.
    pub fn set_rotate_refresh(&self, rotate: bool) {
        self.store().knobs.rotate_refresh = rotate;
    }

    /// Whether refresh responses leave out `refresh_token` (the old one stays valid).
    pub fn set_omit_refresh_token_on_refresh(&self, omit: bool) {
        self.store().knobs.omit_refresh_on_refresh = omit;
    }

    /// Whether refresh responses leave out `scope`, as Dropbox's do (the grant's scopes
    /// are unchanged).
    pub fn set_omit_scope_on_refresh(&self, omit: bool) {
        self.store().knobs.omit_scope_on_refresh = omit;
    }

    /// Whether `/token` errors are sent with status 200, as GitHub, Slack and Zoho do.
    pub fn set_errors_with_200(&self, on: bool) {
        self.store().knobs.errors_with_200 = on;
    }

    /// Whether injected `/token` failures quote what the request presented (its refresh
    /// token and `Authorization` header), as careless providers' error texts do.
    pub fn set_quote_in_errors(&self, on: bool) {
        self.store().knobs.quote_in_errors = on;
    }

    /// The next `n` `/revoke` requests answer 503 without revoking anything.
    pub fn fail_next_revocations(&self, n: u32) {
        self.store().knobs.fail_next_revocations = n;
    }

    /// Whether the code exchange issues a refresh token (default on).
    pub fn set_refresh_token_on_code(&self, on: bool) {
        self.store().knobs.refresh_on_code = on;
    }

    /// Whether the server supports PKCE (default on, and then required). Off, it is a
    /// provider without PKCE that refuses `code_challenge` and `code_verifier` as unknown
    /// parameters.
    pub fn set_pkce_supported(&self, on: bool) {
        self.store().knobs.pkce = on;
    }

    /// Delays every `/revoke` request before it is handled.
    pub fn set_revoke_delay(&self, ms: u64) {
        self.store().knobs.revoke_delay = Duration::from_millis(ms);
    }

    /// Delays every `/token` answer after the request was handled: the tokens are
    /// issued (a refresh token rotated) before the wait, as at a provider whose answer is
    /// slow to come back.
    pub fn set_token_answer_delay(&self, ms: u64) {
        self.store().knobs.token_answer_delay = Duration::from_millis(ms);
    }

    /// With `on`, `/revoke` answers 400 `invalid_token` for a token that is unknown,
    /// expired or already revoked (as Google does) rather than RFC 7009's 200.
    pub fn set_invalid_token_on_dead_revocation(&self, on: bool) {
        self.store().knobs.invalid_token_on_dead_revocation = on;
    }

    /// How `/token` writes its answers from now on (default [`AnswerStyle::Json`]).
    pub fn set_token_answer_style(&self, style: AnswerStyle) {
        self.store().knobs.answer_style = style;
    }

    /// Adds a field of `bytes` bytes to every successful `/token` answer (0: none).
    pub fn set_token_answer_padding(&self, bytes: usize) {
        self.store().knobs.answer_padding = bytes;
    }

    /// Delays every `/token` answer, so concurrent refreshers pile up.
    pub fn set_token_delay(&self, ms: u64) {
        self.store().knobs.token_delay = Duration::from_millis(ms);
    }

    /// `/token` requests received (including failed and injected-failure ones).
    pub fn token_requests(&self) -> usize {
        self.store().token_requests
    }

    /// `/token` requests received with `grant_type=grant`.
    pub fn token_requests_for(&self, grant: &str) -> usize {
        let store = self.store();
        store
            .token_requests_by_grant
            .get(grant)
            .copied()
            .unwrap_or(0)
    }

    /// `/token` requests by `grant_type` (`""` when it was absent or the form was bad).
    pub fn token_requests_by_grant(&self) -> BTreeMap<String, usize> {
        self.store().token_requests_by_grant.clone()
    }

    /// Successful `/revoke` requests (unknown tokens included, as RFC 7009 answers 200).
    pub fn revocations(&self) -> usize {
        self.store().revocations
    }

    /// The `token` values of successful `/revoke` requests, in order.
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.store().revoked_tokens.clone()
    }

    /// Whether `token` is a known, unexpired, unrevoked access token.
    pub fn is_access_token_active(&self, token: &str) -> bool {
        self.store().active_access(token).is_some()
    }

    /// Whether `token` is a known refresh token, neither rotated out nor revoked.
    pub fn is_refresh_token_active(&self, token: &str) -> bool {
        self.store().is_refresh_active(token)
    }

    /// Every access token ever issued, in order (to grep logs and databases for).
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.store().issued_access.clone()
    }

    /// Every refresh token ever issued, in order.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.store().issued_refresh.clone()
    }

    /// Every request received so far (bodies included), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.snapshot()
    }

    /// The requests whose path is exactly `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        let mut all = self.shared.log.snapshot();
        all.retain(|r| r.path == path);
        all
    }

    /// How many requests hit exactly `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared.log.hits(path)
    }

    /// Stops the server and waits for in-flight requests (dropping it also stops it).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// A fresh `(code_verifier, code_challenge)` pair for S256 PKCE.
pub fn pkce_pair() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = pkce_challenge(&verifier);
    (verifier, challenge)
}

/// The first decoded value of query parameter `name` in `url` (e.g. a redirect location).
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn location(response: &reqwest::Response) -> anyhow::Result<String> {
    let value = response
        .headers()
        .get(reqwest::header::LOCATION)
        .context("redirect without a Location header")?;
    Ok(value.to_str().context("non-ASCII Location")?.to_owned())
}

#[cfg(test)]
mod tests;
