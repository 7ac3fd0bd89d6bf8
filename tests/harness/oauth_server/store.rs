//! The authorization server's state and its rules: clients, pending consents, codes and
//! token families, following RFC 6749, RFC 7636 (S256 only) and RFC 7009.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// How a registered client may authenticate to `/token` and `/revoke` (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic only (`client_secret_basic`).
    Basic,
    /// `client_id` + `client_secret` in the form body only (`client_secret_post`).
    Body,
    /// Either of the above (never both in one request).
    Both,
    /// A public client: `client_id` in the body, no secret; client credentials refused.
    None,
}

/// An OAuth error response (RFC 6749 §5.2, §4.1.2.1; RFC 7009 §2.2.1).
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub code: &'static str,
    pub description: String,
    pub status: StatusCode,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            status: StatusCode::BAD_REQUEST,
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }

    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            ..Self::new("invalid_client", d)
        }
    }

    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }

    pub fn unauthorized_client(d: impl Into<String>) -> Self {
        Self::new("unauthorized_client", d)
    }

    pub fn unsupported_grant_type(d: impl Into<String>) -> Self {
        Self::new("unsupported_grant_type", d)
    }

    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new("invalid_scope", d)
    }
}

pub(crate) struct Client {
    pub secret: String,
    pub redirect_uris: Vec<String>,
    pub auth: ClientAuth,
}

/// An authorization request that passed validation and waits for the test's decision.
pub(crate) struct PendingConsent {
    pub client_id: String,
    /// The redirect URI in effect (given, or the single registered one).
    pub redirect_uri: String,
    /// Whether the request carried `redirect_uri` (then `/token` must repeat it).
    pub redirect_uri_given: bool,
    pub scope: String,
    pub state: Option<String>,
    /// The PKCE challenge; `None` only on a server without PKCE ([`Knobs::pkce`] off).
    pub challenge: Option<String>,
}

struct Code {
    consent: PendingConsent,
    scope: String,
    /// The resource owner who approved it.
    user: String,
    expires_at: Instant,
    used: bool,
    /// The family of tokens issued from this code, once exchanged.
    family: Option<usize>,
}

struct Access {
    client_id: String,
    scope: String,
    family: usize,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RefreshStatus {
    Active,
    /// Replaced by a newer token; presenting it again is reuse.
    Rotated,
    Revoked,
}

struct Refresh {
    client_id: String,
    scope: String,
    family: usize,
    status: RefreshStatus,
}

/// What `/token` hands out.
pub(crate) struct Issued {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    pub scope: String,
}

/// How `/token` writes its answers: as RFC 6749 §5.1 says, or as some providers do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnswerStyle {
    /// `application/json`, `expires_in` a number, `token_type` given.
    #[default]
    Json,
    /// `"expires_in": "3600"` (a string) and no `token_type`.
    OffSpec,
    /// Successes and errors form-encoded (`access_token=…&token_type=bearer`), as GitHub
    /// answers a client that does not ask for JSON.
    Form,
    /// JSON, labelled `text/plain`.
    JsonAsText,
    /// JSON sent in 16 KiB pieces with no `Content-Length` (chunked transfer coding), so
    /// a reader learns the answer's size only by reading it.
    Chunked,
}

/// Test knobs; see the setters on `OAuthServer`.
pub(crate) struct Knobs {
    pub access_ttl: u64,
    pub code_ttl: Duration,
    pub rotate_refresh: bool,
    pub omit_refresh_on_refresh: bool,
    /// Refresh answers leave out `scope` (the grant's is unchanged, RFC 6749 §5.1).
    pub omit_scope_on_refresh: bool,
    pub token_delay: Duration,
    pub fail_next: u32,
    pub fail_status: StatusCode,
    pub reject_next_refreshes: u32,
    pub errors_with_200: bool,
    pub quote_in_errors: bool,
    pub refresh_on_code: bool,
    pub fail_next_revocations: u32,
    /// The error code `reject_next_refreshes` answers with.
    pub refresh_refusal: &'static str,
    pub revoke_delay: Duration,
    /// A pause after a `/token` request has been handled (tokens issued, a refresh token
    /// rotated) and before the answer goes out: a provider slow on the way back.
    pub token_answer_delay: Duration,
    /// `/revoke` answers 400 `invalid_token` for a token that is unknown or no longer
    /// active, as Google's endpoint does, instead of RFC 7009's 200.
    pub invalid_token_on_dead_revocation: bool,
    /// How `/token` writes its answers.
    pub answer_style: AnswerStyle,
    /// A field of this many bytes added to every successful `/token` answer.
    pub answer_padding: usize,
    /// `iss` sent with every authorization response (RFC 9207), if any.
    pub issuer: Option<String>,
    /// Whether the server supports PKCE (then it requires it). Off, it is a provider that
    /// rejects the PKCE parameters as unknown.
    pub pkce: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            access_ttl: 3600,
            code_ttl: Duration::from_secs(60),
            rotate_refresh: true,
            omit_refresh_on_refresh: false,
            omit_scope_on_refresh: false,
            token_delay: Duration::ZERO,
            fail_next: 0,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            reject_next_refreshes: 0,
            errors_with_200: false,
            quote_in_errors: false,
            refresh_on_code: true,
            fail_next_revocations: 0,
            refresh_refusal: "invalid_grant",
            revoke_delay: Duration::ZERO,
            token_answer_delay: Duration::ZERO,
            invalid_token_on_dead_revocation: false,
            answer_style: AnswerStyle::Json,
            answer_padding: 0,
            issuer: None,
            pkce: true,
        }
    }
}

#[derive(Default)]
pub(crate) struct Store {
    pub clients: HashMap<String, Client>,
    pub knobs: Knobs,
    consents: HashMap<String, PendingConsent>,
    codes: HashMap<String, Code>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    /// Indexed by family id: whether the whole grant was revoked.
    family_revoked: Vec<bool>,
    /// Indexed by family id: whose resources the grant reaches (the resource owner who
    /// approved it; the client itself for client credentials).
    family_owner: Vec<String>,
    pub issued_access: Vec<String>,
    pub issued_refresh: Vec<String>,
    pub token_requests: usize,
    pub token_requests_by_grant: BTreeMap<String, usize>,
    pub revocations: usize,
    pub revoked_tokens: Vec<String>,
}

/// A random URL-safe secret with a readable prefix.
pub(crate) fn random_token(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// `BASE64URL(SHA256(verifier))` without padding (RFC 7636 §4.2, S256).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1/§4.2: 43–128 characters of `[A-Za-z0-9-._~]`.
pub(crate) fn is_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// RFC 6749 §3.3: space-delimited tokens of `%x21 / %x23-5B / %x5D-7E`.
pub(crate) fn is_valid_scope(scope: &str) -> bool {
    scope.split(' ').all(|t| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
    })
}

fn scope_is_subset(requested: &str, granted: &str) -> bool {
    requested
        .split(' ')
        .all(|r| granted.split(' ').any(|g| g == r))
}

impl Store {
    pub fn add_consent(&mut self, consent: PendingConsent) -> String {
        let token = random_token("consent");
        self.consents.insert(token.clone(), consent);
        token
    }

    pub fn take_consent(&mut self, token: &str) -> Option<PendingConsent> {
        self.consents.remove(token)
    }

    /// Issues a single-use code for a consent `user` approved, with the granted `scope`.
    pub fn issue_code(&mut self, consent: PendingConsent, scope: String, user: String) -> String {
        let code = random_token("code");
        let expires_at = Instant::now() + self.knobs.code_ttl;
        self.codes.insert(
            code.clone(),
            Code {
                consent,
                scope,
                user,
                expires_at,
                used: false,
                family: None,
            },
        );
        code
    }

    fn new_family(&mut self, owner: String) -> usize {
        self.family_owner.push(owner);
        self.family_revoked.push(false);
        self.family_revoked.len() - 1
    }

    fn revoke_family(&mut self, family: usize) {
        self.family_revoked[family] = true;
        for r in self.refresh.values_mut().filter(|r| r.family == family) {
            r.status = RefreshStatus::Revoked;
        }
        for a in self.access.values_mut().filter(|a| a.family == family) {
            a.revoked = true;
        }
    }

    fn mint_access(&mut self, client_id: &str, scope: &str, family: usize) -> (String, u64) {
        let token = random_token("at");
        let ttl = self.knobs.access_ttl;
        self.access.insert(
            token.clone(),
            Access {
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                family,
                expires_at: Instant::now() + Duration::from_secs(ttl),
                revoked: false,
            },
        );
        self.issued_access.push(token.clone());
        (token, ttl)
    }

    fn mint_refresh(&mut self, client_id: &str, scope: &str, family: usize) -> String {
        let token = random_token("rt");
        self.refresh.insert(
            token.clone(),
            Refresh {
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                family,
                status: RefreshStatus::Active,
            },
        );
        self.issued_refresh.push(token.clone());
        token
    }

    /// `grant_type=authorization_code` (RFC 6749 §4.1.3, RFC 7636 §4.6).
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<Issued, OAuthError> {
        let Some(entry) = self.codes.get_mut(code) else {
            return Err(OAuthError::invalid_grant("unknown authorization code"));
        };
        if entry.consent.client_id != client_id {
            // Not burned: a client guessing codes must not be able to spoil another's.
            return Err(OAuthError::invalid_grant(
                "authorization code was issued to another client",
            ));
        }
        if entry.used {
            // §4.1.2: a reused code SHOULD revoke every token issued from it.
            let family = entry.family;
            if let Some(family) = family {
                self.revoke_family(family);
            }
            return Err(OAuthError::invalid_grant(
                "authorization code was already used",
            ));
        }
        entry.used = true;
        if Instant::now() >= entry.expires_at {
            return Err(OAuthError::invalid_grant("authorization code expired"));
        }
        let consent = &entry.consent;
        match (consent.redirect_uri_given, redirect_uri) {
            (true, None) => {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri is required: the authorization request carried one",
                ));
            }
            (_, Some(given)) if given != consent.redirect_uri => {
                return Err(OAuthError::invalid_grant(
                    "redirect_uri does not match the authorization request",
                ));
            }
            _ => {}
        }
        match (&consent.challenge, verifier) {
            (Some(_), None) => {
                return Err(OAuthError::invalid_request("code_verifier is required"));
            }
            (Some(challenge), Some(verifier)) => {
                if !is_pkce_string(verifier) || pkce_challenge(verifier) != *challenge {
                    return Err(OAuthError::invalid_grant(
                        "code_verifier does not match the code_challenge",
                    ));
                }
            }
            (None, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "unknown parameter code_verifier: this server does not support PKCE",
                ));
            }
            (None, None) => {}
        }
        let scope = entry.scope.clone();
        let user = entry.user.clone();
        let family = self.new_family(user);
        if let Some(entry) = self.codes.get_mut(code) {
            entry.family = Some(family);
        }
        let (access_token, expires_in) = self.mint_access(client_id, &scope, family);
        let refresh_token = self
            .knobs
            .refresh_on_code
            .then(|| self.mint_refresh(client_id, &scope, family));
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token,
            scope,
        })
    }

    /// `grant_type=refresh_token` (RFC 6749 §6; RFC 9700 §4.14 rotation and reuse).
    pub fn refresh(
        &mut self,
        client_id: &str,
        token: &str,
        scope: Option<&str>,
    ) -> Result<Issued, OAuthError> {
        if self.knobs.reject_next_refreshes > 0 {
            self.knobs.reject_next_refreshes -= 1;
            return Err(OAuthError::new(
                self.knobs.refresh_refusal,
                "refresh token rejected (test knob)",
            ));
        }
        let Some(entry) = self.refresh.get(token) else {
            return Err(OAuthError::invalid_grant("unknown refresh token"));
        };
        if entry.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "refresh token was issued to another client",
            ));
        }
        let (family, status) = (entry.family, entry.status);
        let granted = entry.scope.clone();
        match status {
            RefreshStatus::Revoked => {
                return Err(OAuthError::invalid_grant("refresh token was revoked"));
            }
            RefreshStatus::Rotated => {
                self.revoke_family(family);
                return Err(OAuthError::invalid_grant(
                    "refresh token was already used; the grant is revoked",
                ));
            }
            RefreshStatus::Active if self.family_revoked[family] => {
                return Err(OAuthError::invalid_grant("grant was revoked"));
            }
            RefreshStatus::Active => {}
        }
        let access_scope = match scope {
            Some(s) if !is_valid_scope(s) => {
                return Err(OAuthError::invalid_scope("malformed scope"));
            }
            Some(s) if !scope_is_subset(s, &granted) => {
                return Err(OAuthError::invalid_scope(
                    "requested scope exceeds the original grant",
                ));
            }
            Some(s) => s.to_owned(),
            None => granted.clone(),
        };
        let (access_token, expires_in) = self.mint_access(client_id, &access_scope, family);
        let refresh_token = if self.knobs.omit_refresh_on_refresh {
            None
        } else if self.knobs.rotate_refresh {
            if let Some(old) = self.refresh.get_mut(token) {
                old.status = RefreshStatus::Rotated;
            }
            // §6: a new refresh token keeps the scope of the one presented.
            Some(self.mint_refresh(client_id, &granted, family))
        } else {
            Some(token.to_owned())
        };
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token,
            scope: access_scope,
        })
    }

    /// `grant_type=client_credentials` (RFC 6749 §4.4): no refresh token.
    pub fn client_credentials(
        &mut self,
        client_id: &str,
        scope: Option<&str>,
    ) -> Result<Issued, OAuthError> {
        if self.clients.get(client_id).map(|c| c.auth) == Some(ClientAuth::None) {
            return Err(OAuthError::unauthorized_client(
                "public clients may not use client_credentials",
            ));
        }
        if scope.is_some_and(|s| !is_valid_scope(s)) {
            return Err(OAuthError::invalid_scope("malformed scope"));
        }
        let scope = scope.unwrap_or_default().to_owned();
        let family = self.new_family(client_id.to_owned());
        let (access_token, expires_in) = self.mint_access(client_id, &scope, family);
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token: None,
            scope,
        })
    }

    /// RFC 7009 §2.1: unknown tokens are not an error; another client's token is.
    pub fn revoke(
        &mut self,
        client_id: &str,
        token: &str,
        hint: Option<&str>,
    ) -> Result<(), OAuthError> {
        let refresh_first = hint == Some("refresh_token");
        let as_refresh = self
            .refresh
            .get(token)
            .map(|r| (r.client_id.clone(), r.family));
        let as_access = self.access.get(token).map(|a| a.client_id.clone());
        // The hint only orders the lookup; tokens are unique across both kinds anyway.
        let found_refresh = if refresh_first || as_access.is_none() {
            as_refresh
        } else {
            None
        };
        if let Some((owner, family)) = found_refresh {
            if owner != client_id {
                return Err(OAuthError::unauthorized_client(
                    "token was issued to another client",
                ));
            }
            // Revoking a refresh token ends the grant, its access tokens included.
            if let Some(r) = self.refresh.get_mut(token) {
                r.status = RefreshStatus::Revoked;
            }
            self.revoke_family(family);
        } else if let Some(owner) = as_access {
            if owner != client_id {
                return Err(OAuthError::unauthorized_client(
                    "token was issued to another client",
                ));
            }
            if let Some(a) = self.access.get_mut(token) {
                a.revoked = true;
            }
        }
        self.revocations += 1;
        self.revoked_tokens.push(token.to_owned());
        Ok(())
    }

    /// The client, scope and resource owner of an access token that is known, unexpired
    /// and unrevoked.
    pub fn active_access(&self, token: &str) -> Option<(String, String, String)> {
        let a = self.access.get(token)?;
        let active = !a.revoked && !self.family_revoked[a.family] && Instant::now() < a.expires_at;
        active.then(|| {
            let owner = self.family_owner[a.family].clone();
            (a.client_id.clone(), a.scope.clone(), owner)
        })
    }

    /// Whether `token` is an access token [`Store::active_access`] accepts or an active
    /// refresh token.
    pub fn is_token_active(&self, token: &str) -> bool {
        self.active_access(token).is_some() || self.is_refresh_active(token)
    }

    pub fn is_refresh_active(&self, token: &str) -> bool {
        self.refresh
            .get(token)
            .is_some_and(|r| r.status == RefreshStatus::Active && !self.family_revoked[r.family])
    }

    pub fn expire_all_access(&mut self) {
        let now = Instant::now();
        for a in self.access.values_mut() {
            a.expires_at = now;
        }
    }

    pub fn revoke_all(&mut self) {
        for family in 0..self.family_revoked.len() {
            self.revoke_family(family);
        }
    }
}
