//! The authorization-code flow (PKCE S256 + single-use, expiring state) and the
//! client-credentials grant.

use std::collections::BTreeMap;

use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType};
use oauth2::{
    AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, TokenResponse,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::client::token_endpoint;
use super::token::{self, AnswerError, TokenAnswer};
use super::{ClientConfig, OAuth, OAuthError, STATE_TTL, TokenInfo};
use crate::connections::redact::Redactor;
use crate::connections::{Credentials, Status, Tokens};
use crate::secrets::Secret;
use crate::services::{GrantType, ServiceDef};
use crate::storage::{ConnectionRow, PendingState, now_ms};

/// What an admin opens to authorize a connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingAuthorization {
    /// The provider's authorization URL, with state and PKCE challenge.
    pub authorize_url: String,
    /// Where the provider will send the browser back.
    pub redirect_url: String,
    /// Unix ms after which the URL no longer completes.
    pub expires_at: i64,
}

/// A consumed authorization state: whose it was, its PKCE verifier, the redirect URL the
/// authorization request carried and the token endpoint it was started for. (oauth2's
/// verifier prints as `[redacted]`.)
#[derive(Debug)]
pub struct TakenState {
    /// The connection being authorized.
    pub connection: String,
    /// The PKCE verifier for the token request; `None` when the authorization request
    /// carried no challenge (the service has `pkce = false`).
    pub verifier: Option<PkceCodeVerifier>,
    /// The `redirect_uri` sent with the authorization request.
    pub redirect_url: String,
    /// The token endpoint the code was to be exchanged at when the authorization started
    /// (`None`: started by a keyhole that did not record it).
    pub token_url: Option<String>,
}

fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

fn verifier_context(connection: &str) -> String {
    format!("keyhole:pkce-verifier:{connection}")
}

/// Non-secret url params of a connection (OAuth URLs may use them, e.g. Zoho's `dc`).
pub(crate) fn url_params(service: &ServiceDef, row: &ConnectionRow) -> BTreeMap<String, String> {
    service
        .params
        .iter()
        .filter_map(|p| {
            row.params
                .get(&p.name)
                .or(p.default.as_ref())
                .map(|v| (p.name.clone(), v.clone()))
        })
        .collect()
}

/// Scrubs what a token endpoint's answer may quote back: the client secret (raw, and as
/// the Basic pair oauth2 sends it) and `more` (tokens, the code, the PKCE verifier).
pub(crate) fn token_endpoint_redactor(config: &ClientConfig, more: &[&str]) -> Redactor {
    let mut r = Redactor::default();
    if let Some(secret) = &config.client_secret {
        r.add(secret.expose());
    }
    if let Some(basic) = config.basic_credentials() {
        r.add_exact(&basic);
    }
    for value in more {
        r.add(value);
    }
    r
}

/// Classify a token endpoint failure: `(true, _)` for `invalid_grant` or one of the
/// service's `reauth_errors` (terminal), with a description scrubbed by `redactor`
/// (providers may quote what they were sent).
///
/// An error object sent with status 200 (GitHub, Slack and Zoho do) counts as the error
/// it is, not as a malformed token response.
pub(crate) fn describe(
    e: &RequestTokenError<AnswerError, BasicErrorResponse>,
    redactor: &Redactor,
    reauth_errors: &[String],
) -> (bool, String) {
    let server = |r: &BasicErrorResponse| {
        let terminal = match r.error() {
            BasicErrorResponseType::InvalidGrant => true,
            other => reauth_errors.iter().any(|code| *code == other.as_ref()),
        };
        let mut msg = r.error().to_string();
        if let Some(d) = r.error_description() {
            msg.push_str(": ");
            msg.push_str(d);
        }
        (terminal, msg)
    };
    let (terminal, msg) = match e {
        RequestTokenError::ServerResponse(r) => server(r),
        RequestTokenError::Request(AnswerError::Request(e)) => {
            (false, format!("could not reach the token endpoint: {e}"))
        }
        RequestTokenError::Request(e @ AnswerError::TooLong) => {
            (false, format!("the token endpoint answered, but {e}"))
        }
        RequestTokenError::Parse(e, body) => {
            match serde_json::from_slice::<BasicErrorResponse>(body) {
                Ok(r) => server(&r),
                Err(_) => {
                    // serde may quote a value of the answer, and a malformed token
                    // response may hold new tokens no scrubber knows: scrub every value.
                    let mut values = Redactor::default();
                    if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body) {
                        add_values(&mut values, &answer);
                    }
                    let msg = format!("unexpected token endpoint answer: {e}");
                    (false, values.scrub(&msg))
                }
            }
        }
        RequestTokenError::Other(s) => (false, s.clone()),
    };
    (terminal, redactor.scrub(&msg))
}

/// Every string and number in `value`, for scrubbing.
fn add_values(r: &mut Redactor, value: &serde_json::Value) {
    match value {
        serde_json::Value::String(s) => r.add(s),
        serde_json::Value::Number(n) => r.add(&n.to_string()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| add_values(r, v)),
        serde_json::Value::Object(fields) => fields.values().for_each(|v| add_values(r, v)),
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

/// Turn a token response into credentials and facts. `previous_refresh` is kept when the
/// provider did not send a new refresh token.
pub(crate) fn tokens_from(
    response: &TokenAnswer,
    previous_refresh: Option<Secret>,
    scopes_if_unsaid: &[String],
    separator: &str,
) -> (Tokens, TokenInfo) {
    let expires_at = response
        .expires_in()
        .map(|d| now_ms() + d.as_millis() as i64);
    let refresh = response
        .refresh_token()
        .map(|r| Secret::new(r.secret().clone()))
        .or(previous_refresh);
    let granted_scopes = match response.scopes() {
        Some(s) => s
            .iter()
            .flat_map(|s| s.split(separator).map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect(),
        None => scopes_if_unsaid.to_vec(),
    };
    let info = TokenInfo {
        expires_at,
        granted_scopes,
        has_refresh_token: refresh.is_some(),
        last_refresh_at: None,
        last_refresh_outcome: None,
    };
    (
        Tokens {
            access: Secret::new(response.access_token().secret().clone()),
            refresh,
            expires_at,
        },
        info,
    )
}

impl OAuth {
    /// Start the authorization-code flow for `row`: a fresh state (single use, 10 minutes)
    /// and PKCE S256 pair bound to this connection.
    pub fn begin(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
    ) -> Result<PendingAuthorization, OAuthError> {
        let def = service
            .oauth2
            .as_ref()
            .ok_or_else(|| OAuthError::Config("not an OAuth service".into()))?;
        if def.grant != GrantType::AuthorizationCode {
            return Err(OAuthError::Config(format!(
                "service {:?} uses the client-credentials grant; `connections connect` fetches a token directly",
                service.name
            )));
        }
        let params = url_params(service, row);
        let (client, config, _) = self.client_for(service, &row.name, &params)?;
        let token_url = token_endpoint(service, &params)?;
        let redirect_url = config.effective_redirect_url();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(CsrfToken::new_random).map_err(|e| {
            OAuthError::Config(format!(
                "service {:?} has no authorize URL: {e}",
                service.name
            ))
        })?;
        if !row.scopes.is_empty() {
            request = request.add_extra_param("scope", row.scopes.join(&def.scope_separator));
        }
        for (k, v) in &def.auth_params {
            request = request.add_extra_param(k.clone(), v.clone());
        }
        // PKCE goes along unless the service says its provider rejects it: it is what
        // binds the code to this client instance (RFC 9700 §2.1.1). Without it the stored
        // verifier is empty (a real one is 43 to 128 characters), and the token request
        // carries none.
        let verifier = if def.pkce {
            request = request.set_pkce_challenge(challenge);
            verifier.secret().clone()
        } else {
            String::new()
        };
        let (url, state) = request.url();
        let expires_at = now_ms() + STATE_TTL.as_millis() as i64;
        let sealed_verifier = self
            .sealer
            .seal(verifier.as_bytes(), &verifier_context(&row.name));
        self.storage
            .insert_oauth_state(
                &state_hash(state.secret()),
                &PendingState {
                    connection: row.name.clone(),
                    sealed_verifier,
                    redirect_url: redirect_url.clone(),
                    token_url: Some(token_url.to_string()),
                    expires_at,
                },
            )
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        tracing::info!(connection = %row.name, "authorization started");
        Ok(PendingAuthorization {
            authorize_url: url.to_string(),
            redirect_url,
            expires_at,
        })
    }

    /// Take the pending authorization for a callback's `state`. The state is consumed
    /// whatever happens next.
    pub fn take_state(
        &self,
        state: &str,
        expected_connection: Option<&str>,
    ) -> Result<TakenState, OAuthError> {
        let pending = self
            .storage
            .take_oauth_state(&state_hash(state))
            .map_err(|e| OAuthError::Config(e.to_string()))?
            .ok_or_else(|| {
                OAuthError::BadState("the callback's state is unknown or was already used".into())
            })?;
        if pending.expires_at < now_ms() {
            return Err(OAuthError::BadState(
                "the authorization expired (10 minutes)".into(),
            ));
        }
        if let Some(expected) = expected_connection
            && expected != pending.connection
        {
            return Err(OAuthError::BadState(format!(
                "the callback belongs to connection {:?}, not {expected:?}",
                pending.connection
            )));
        }
        let verifier = self
            .sealer
            .open(
                &pending.sealed_verifier,
                &verifier_context(&pending.connection),
            )
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        let verifier = String::from_utf8(verifier.to_vec())
            .map_err(|_| OAuthError::Config("stored verifier is malformed".into()))?;
        Ok(TakenState {
            connection: pending.connection,
            verifier: (!verifier.is_empty()).then(|| PkceCodeVerifier::new(verifier)),
            redirect_url: pending.redirect_url,
            token_url: pending.token_url,
        })
    }

    /// Exchange an authorization code and store the tokens; the connection becomes
    /// `connected`. The token request repeats the `redirect_uri` the authorization request
    /// carried (RFC 6749 §4.1.3), even if the configured one changed meanwhile.
    ///
    /// It goes only to the token endpoint the authorization was started for: if an edit
    /// of the connection (its params) or of its service moved the endpoint while the
    /// browser was out, the code, the verifier and the client secret are not sent.
    pub async fn exchange(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
        code: &str,
        taken: TakenState,
    ) -> Result<(), OAuthError> {
        let def = service
            .oauth2
            .as_ref()
            .ok_or_else(|| OAuthError::Config("not an OAuth service".into()))?;
        let params = url_params(service, row);
        let now = token_endpoint(service, &params)?;
        match taken.token_url.as_deref() {
            Some(then) if then == now.as_str() => {}
            Some(then) => {
                return Err(OAuthError::BadState(format!(
                    "the token endpoint of connection {:?} changed after this authorization started (from {then} to {now}), so its code was not sent anywhere",
                    row.name
                )));
            }
            None => {
                return Err(OAuthError::BadState(
                    "the authorization was started by an older keyhole, which did not record its token endpoint, so its code was not sent anywhere".into(),
                ));
            }
        }
        let (client, config, _) = self.client_for(service, &row.name, &params)?;
        let redirect = RedirectUrl::new(taken.redirect_url.clone()).map_err(|e| {
            OAuthError::Config(format!("redirect URL {:?}: {e}", taken.redirect_url))
        })?;
        let mut secrets = vec![code];
        secrets.extend(taken.verifier.as_ref().map(|v| v.secret().as_str()));
        let redactor = token_endpoint_redactor(&config, &secrets);
        let mut request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OAuthError::Config(e.to_string()))?
            .set_redirect_uri(std::borrow::Cow::Owned(redirect));
        if let Some(verifier) = taken.verifier {
            request = request.set_pkce_verifier(verifier);
        }
        let response = request
            .request_async(&token::Http(&self.http))
            .await
            .map_err(|e| OAuthError::Token(describe(&e, &redactor, &[]).1))?;
        let (tokens, info) = tokens_from(&response, None, &row.scopes, &def.scope_separator);
        self.store_tokens(row, tokens, info)
    }

    /// Fetch a token with the client-credentials grant and store it.
    pub async fn client_credentials(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
    ) -> Result<(), OAuthError> {
        let (tokens, info) = self.fetch_client_credentials(service, row).await?;
        self.store_tokens(row, tokens, info)
    }

    pub(crate) async fn fetch_client_credentials(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
    ) -> Result<(Tokens, TokenInfo), OAuthError> {
        let def = service
            .oauth2
            .as_ref()
            .ok_or_else(|| OAuthError::Config("not an OAuth service".into()))?;
        let (client, config, _) = self.client_for(service, &row.name, &url_params(service, row))?;
        let redactor = token_endpoint_redactor(&config, &[]);
        let mut request = client
            .exchange_client_credentials()
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        if !row.scopes.is_empty() {
            request = request.add_extra_param("scope", row.scopes.join(&def.scope_separator));
        }
        let response = request
            .request_async(&token::Http(&self.http))
            .await
            .map_err(|e| OAuthError::Token(describe(&e, &redactor, &[]).1))?;
        Ok(tokens_from(
            &response,
            None,
            &row.scopes,
            &def.scope_separator,
        ))
    }

    fn store_tokens(
        &self,
        row: &ConnectionRow,
        tokens: Tokens,
        info: TokenInfo,
    ) -> Result<(), OAuthError> {
        let creds = Credentials {
            params: Default::default(),
            tokens: Some(tokens),
        };
        let sealed = Zeroizing::new(creds.seal(&self.sealer, &row.name));
        let current = self
            .storage
            .get_connection(&row.name)
            .map_err(|e| OAuthError::Config(e.to_string()))?
            .ok_or_else(|| {
                OAuthError::Config(format!("connection {:?} was deleted meanwhile", row.name))
            })?;
        let swapped = self
            .storage
            .swap_credentials(
                &row.name,
                current.generation,
                Some(&sealed),
                Status::Connected.as_str(),
                None,
                &info.to_json(),
                true,
            )
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        if swapped.is_none() {
            return Err(OAuthError::Config(format!(
                "connection {:?} changed while connecting; try again",
                row.name
            )));
        }
        self.note_success(&row.name);
        tracing::info!(connection = %row.name, "tokens stored; connection connected");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secrets::{MasterKey, Sealer};
    use crate::storage::Storage;

    fn oauth() -> (tempfile::TempDir, OAuth) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("db")).unwrap());
        let row = ConnectionRow {
            name: "c".into(),
            service: "s".into(),
            status: "pending".into(),
            status_reason: None,
            scopes: vec![],
            base_url: None,
            params: Default::default(),
            sealed: None,
            generation: 0,
            token_info: serde_json::json!({}),
            created_at: 0,
            connected_at: None,
            last_used_at: None,
            account: None,
            account_source: None,
        };
        storage.insert_connection(&row).unwrap();
        (
            dir,
            OAuth::new(
                storage,
                Arc::new(Sealer::new(&MasterKey::from_bytes([3; 32]))),
            ),
        )
    }

    fn pending(o: &OAuth, expires_at: i64) -> PendingState {
        PendingState {
            connection: "c".into(),
            sealed_verifier: o.sealer.seal(b"verifier", &verifier_context("c")),
            redirect_url: "http://127.0.0.1:1/cb".into(),
            token_url: Some("http://127.0.0.1:1/token".into()),
            expires_at,
        }
    }

    #[test]
    fn a_malformed_token_answer_is_described_without_its_values() {
        // A token in the wrong type: serde's message would quote it.
        let body = br#"{"access_token": 98765432123456789, "token_type": "bearer"}"#.to_vec();
        let parse = serde_path_to_error::deserialize::<_, TokenAnswer>(
            &mut serde_json::Deserializer::from_slice(&body),
        )
        .unwrap_err();
        let e = RequestTokenError::<AnswerError, BasicErrorResponse>::Parse(parse, body);
        let (terminal, msg) = describe(&e, &Redactor::default(), &[]);
        assert!(!terminal);
        assert!(msg.starts_with("unexpected token endpoint answer"), "{msg}");
        assert!(!msg.contains("98765432123456789"), "{msg}");
    }

    #[test]
    fn states_are_single_use_expire_and_are_bound_to_their_connection() {
        let (_d, o) = oauth();
        o.storage
            .insert_oauth_state(&state_hash("s1"), &pending(&o, now_ms() + 60_000))
            .unwrap();
        let err = o.take_state("s1", Some("other")).unwrap_err().to_string();
        assert!(err.contains("belongs to connection"), "{err}");
        // Taken (and burnt) by the failed attempt above.
        assert!(
            o.take_state("s1", Some("c"))
                .unwrap_err()
                .to_string()
                .contains("already used")
        );

        o.storage
            .insert_oauth_state(&state_hash("s2"), &pending(&o, now_ms() + 60_000))
            .unwrap();
        let taken = o.take_state("s2", Some("c")).unwrap();
        assert_eq!(
            (
                taken.connection.as_str(),
                taken.verifier.as_ref().map(|v| v.secret().as_str()),
                taken.redirect_url.as_str(),
                taken.token_url.as_deref()
            ),
            (
                "c",
                Some("verifier"),
                "http://127.0.0.1:1/cb",
                Some("http://127.0.0.1:1/token")
            )
        );
        assert!(o.take_state("s2", Some("c")).is_err(), "state reused");

        o.storage
            .insert_oauth_state(&state_hash("s3"), &pending(&o, now_ms() - 1))
            .unwrap();
        assert!(
            o.take_state("s3", None)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
    }
}
