//! API tokens and bearer authentication for `keyhole serve`.
//!
//! A token is `kh_` + base64url of 32 random bytes, shown once at creation; only its
//! SHA-256 (hex) is stored, and a request's token is found by hashing it and looking the
//! hash up (a hash lookup needs no constant-time comparison: the attacker does not
//! control what is compared against).
//!
//! Scopes: an `admin` token may call every endpoint; an `invoke` token may only call
//! `POST /v1/functions/{name}/invoke`, and, when created with `--function F`, only for
//! `F`. A missing, unknown or revoked token is answered 401 before any lookup of the
//! resource, so it learns nothing about what exists; a valid token outside its scope is
//! answered 403, also before any lookup.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::secrets::Secret;
use crate::services::validate_name;
use crate::storage::{ApiTokenRow, NewApiToken, Storage, StorageError, now_ms};

/// Every token starts with this, so a leaked one is easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "kh_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// `last_used_at` is written at most this often per token (milliseconds), so that
/// authentication does not add a database write to every request.
const TOUCH_INTERVAL_MS: i64 = 60_000;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Invoke functions (optionally one function only).
    Invoke,
    /// Everything: invoke and administer.
    Admin,
}

impl Scope {
    /// `invoke` or `admin`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invoke => "invoke",
            Self::Admin => "admin",
        }
    }

    /// Parse a stored or typed scope.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        match s {
            "invoke" => Ok(Self::Invoke),
            "admin" => Ok(Self::Admin),
            other => Err(TokenError::UnknownScope(other.to_string())),
        }
    }
}

/// Errors from managing tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Not `invoke` or `admin`.
    #[error("unknown token scope {0:?}; use invoke or admin")]
    UnknownScope(String),
    /// `--function` given for an admin token.
    #[error(
        "an admin token may call every endpoint, so it cannot be limited to one function; use --scope invoke --function NAME"
    )]
    AdminWithFunction,
    /// The function restriction is not a valid function name.
    #[error("invalid function name for the token: {0}")]
    InvalidFunction(String),
    /// `--function` names no uploaded function.
    #[error(
        "no function named {0:?} to bind the token to; upload it first (`keyhole functions upload`), or see `keyhole functions list`"
    )]
    UnknownFunction(String),
    /// No token with that id.
    #[error("no API token with id {0}; `keyhole tokens list` shows them")]
    UnknownToken(i64),
}

/// A freshly created token: the only moment its text exists outside the caller's hands.
#[derive(Debug)]
pub struct CreatedToken {
    /// The token text (`kh_...`). Show it once; it cannot be recovered later.
    pub token: Secret,
    /// The stored record.
    pub row: ApiTokenRow,
}

/// The authenticated caller of a request (put in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token id.
    pub token_id: i64,
    /// Token scope.
    pub scope: Scope,
    /// Function restriction of an invoke token.
    pub function: Option<String>,
}

impl Caller {
    /// Whether this caller may invoke `function`.
    pub fn may_invoke(&self, function: &str) -> bool {
        match self.scope {
            Scope::Admin => true,
            Scope::Invoke => self.function.as_deref().is_none_or(|f| f == function),
        }
    }
}

/// Hex SHA-256 of a token's text: what the database keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Create a token with `scope`, optionally restricted to `function` (invoke only).
pub fn create_token(
    storage: &Storage,
    scope: Scope,
    function: Option<&str>,
    label: Option<&str>,
) -> Result<CreatedToken, TokenError> {
    if let Some(f) = function {
        if scope == Scope::Admin {
            return Err(TokenError::AdminWithFunction);
        }
        validate_name("function", f).map_err(|e| TokenError::InvalidFunction(e.to_string()))?;
        if storage.latest_function(f)?.is_none() {
            return Err(TokenError::UnknownFunction(f.to_string()));
        }
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let token = Secret::new(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)));
    let row = storage.insert_api_token(&NewApiToken {
        token_hash: &hash_token(token.expose()),
        scope: scope.as_str(),
        function,
        label,
    })?;
    tracing::info!(
        token_id = row.id,
        scope = scope.as_str(),
        function,
        "API token created"
    );
    Ok(CreatedToken { token, row })
}

/// Every token (no secret material: hashes are not returned).
pub fn list_tokens(storage: &Storage) -> Result<Vec<ApiTokenRow>, TokenError> {
    Ok(storage.list_api_tokens()?)
}

/// Revoke token `id`; it stops authenticating at once (every request looks it up).
/// Returns when it was revoked, and whether that was by this call (revoking twice keeps
/// the first time).
pub fn revoke_token(storage: &Storage, id: i64) -> Result<(i64, bool), TokenError> {
    let (at, now) = storage
        .revoke_api_token(id)?
        .ok_or(TokenError::UnknownToken(id))?;
    if now {
        tracing::info!(token_id = id, "API token revoked");
    }
    Ok((at, now))
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| t.starts_with(TOKEN_PREFIX))
}

/// Find the caller of a request from its `Authorization: Bearer` header. Any failure
/// (no header, unknown token, revoked token) is the same 401.
pub fn authenticate(storage: &Arc<Storage>, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let row = storage
        .api_token_by_hash(&hash_token(token))
        .map_err(ApiError::from)?
        .filter(|r| r.revoked_at.is_none())
        .ok_or_else(ApiError::unauthorized)?;
    let scope = Scope::parse(&row.scope).map_err(|_| ApiError::unauthorized())?;
    let now = now_ms();
    if row
        .last_used_at
        .is_none_or(|at| now - at >= TOUCH_INTERVAL_MS)
    {
        // One write per token at a time: until the first lands, every request of a busy
        // token finds its last use stale.
        let key = (Arc::as_ptr(storage) as usize, row.id);
        if !TOUCHING.lock().insert(key) {
            return Ok(caller(row, scope));
        }
        let (storage, id) = (storage.clone(), row.id);
        let touch = move || {
            if let Err(e) = storage.touch_api_token(id, now) {
                tracing::warn!(error = %e, "could not record an API token's last use");
            }
            TOUCHING.lock().remove(&key);
        };
        // Off the request's path: the write may wait out another process's lock, and a
        // request that only reads should not.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(touch)),
            Err(_) => touch(),
        }
    }
    Ok(caller(row, scope))
}

/// The tokens (by database and id) whose last use is being written now.
static TOUCHING: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<(usize, i64)>>> =
    std::sync::LazyLock::new(Default::default);

fn caller(row: ApiTokenRow, scope: Scope) -> Caller {
    Caller {
        token_id: row.id,
        scope,
        function: row.function,
    }
}

/// Extractor for admin-only handlers: 403 unless the caller holds an admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(c) if c.scope == Scope::Admin => Ok(Admin),
            Some(_) => {
                crate::metrics::http_rejection("forbidden");
                Err(ApiError::forbidden(
                    "this endpoint needs an admin token; this token may only invoke functions",
                ))
            }
            None => Err(ApiError::unauthorized()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        // A token is bound to a function that exists.
        assert!(matches!(
            create_token(&s, Scope::Invoke, Some("echo"), None),
            Err(TokenError::UnknownFunction(f)) if f == "echo"
        ));
        s.insert_function(&crate::storage::NewFunction {
            name: "echo",
            content_hash: "00",
            wasm: b"not run here",
            limits: Default::default(),
        })
        .unwrap();
        let t = create_token(&s, Scope::Invoke, Some("echo"), Some("ci")).unwrap();
        let text = t.token.expose().to_string();
        assert!(
            text.starts_with(TOKEN_PREFIX) && text.len() == 3 + 43,
            "{text}"
        );
        let caller = authenticate(&s, &headers(&format!("Bearer {text}"))).unwrap();
        assert!(caller.may_invoke("echo") && !caller.may_invoke("other"));
        assert!(authenticate(&s, &headers(&format!("bearer {text}"))).is_ok());
        for bad in ["", "Bearer", "Bearer kh_nope", "Basic abc", &text] {
            let e = authenticate(&s, &headers(bad)).unwrap_err();
            assert_eq!(e.status.as_u16(), 401, "{bad}");
        }
        assert!(authenticate(&s, &HeaderMap::new()).is_err());
        let (at, now) = revoke_token(&s, t.row.id).unwrap();
        assert!(now);
        assert!(authenticate(&s, &headers(&format!("Bearer {text}"))).is_err());
        // Revoking again changes nothing and says so.
        assert_eq!(revoke_token(&s, t.row.id).unwrap(), (at, false));
        assert!(matches!(
            revoke_token(&s, 999),
            Err(TokenError::UnknownToken(999))
        ));
        assert!(matches!(
            create_token(&s, Scope::Admin, Some("echo"), None),
            Err(TokenError::AdminWithFunction)
        ));
        let listed = list_tokens(&s).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some());
        // The database holds the hash, never the token.
        let raw = std::fs::read(dir.path().join("t.db")).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("t.db-wal")).unwrap_or_default();
        let needle = text.as_bytes();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
    }
}
