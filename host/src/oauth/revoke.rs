//! RFC 7009 token revocation.
//!
//! Done with a plain form POST rather than `oauth2::Client::revoke_token`, which refuses
//! non-https endpoints: keyhole's loopback test provider (and local stand-ins) speak http.
//! The request is the same: `token`, `token_type_hint`, client authentication as the
//! service's token endpoint expects it.

use super::OAuth;
use super::flow::{token_endpoint_redactor, url_params};
use crate::connections::Credentials;
use crate::services::{ServiceDef, TokenAuthMethod};
use crate::storage::ConnectionRow;

/// What became of one token at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationOutcome {
    /// The provider confirmed it (RFC 7009: 200).
    Revoked,
    /// The provider answered that the token was no longer valid (400 `invalid_token`, as
    /// Google answers for a token already expired or revoked, where RFC 7009 would say
    /// 200): nothing is left to revoke.
    AlreadyInvalid,
    /// Nothing to do or no way to do it: no tokens held, no revocation endpoint.
    NotSupported,
    /// The provider refused or could not be reached: the grant may still be live there.
    Failed,
}

/// One line of a revocation's result, for people (never holds a token).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderRevocation {
    /// What happened.
    pub outcome: RevocationOutcome,
    /// The details.
    pub detail: String,
}

impl ProviderRevocation {
    fn new(outcome: RevocationOutcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
        }
    }
}

impl OAuth {
    /// Revoke the refresh token, then the access token, at the service's revocation
    /// endpoint. Returns one result per token (or one saying why nothing was sent).
    pub async fn revoke_tokens(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
        creds: &Credentials,
    ) -> Vec<ProviderRevocation> {
        use RevocationOutcome::{AlreadyInvalid, Failed, NotSupported, Revoked};
        let Some(def) = &service.oauth2 else {
            return vec![];
        };
        let Some(tokens) = &creds.tokens else {
            return vec![ProviderRevocation::new(NotSupported, "no tokens were held")];
        };
        // The client's id and secret go with the tokens: only to a revocation endpoint on
        // an origin the client is registered for.
        if let Err(e) = self.check_revocation_endpoint(service, row) {
            return vec![ProviderRevocation::new(
                Failed,
                format!("{e}; the tokens were wiped here only"),
            )];
        }
        let Some(template) = &def.revocation_url else {
            return vec![ProviderRevocation::new(
                NotSupported,
                format!(
                    "service {:?} has no RFC 7009 revocation endpoint, so the tokens were wiped here only and the grant stays live at the provider until it expires or you remove keyhole's access in the provider's account settings{}",
                    service.name,
                    service
                        .docs_url
                        .as_deref()
                        .map(|d| format!(" (see {d})"))
                        .unwrap_or_default()
                ),
            )];
        };
        let url = match service.resolve_url(template, &url_params(service, row)) {
            Ok(u) => u,
            Err(e) => {
                return vec![ProviderRevocation::new(
                    Failed,
                    format!("revocation URL unusable: {e}"),
                )];
            }
        };
        let config = match self.load_client(&service.name) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return vec![ProviderRevocation::new(
                    Failed,
                    "no OAuth client configured; tokens wiped locally only",
                )];
            }
            Err(e) => {
                return vec![ProviderRevocation::new(
                    Failed,
                    format!("cannot load the OAuth client: {e}"),
                )];
            }
        };
        let mut outcomes = Vec::new();
        // A provider's error page may quote what we sent; never let a token or the client
        // secret reach the status reason, the CLI or the database through it.
        let refresh = tokens
            .refresh
            .as_ref()
            .map(|r| r.expose())
            .unwrap_or_default();
        let redactor = token_endpoint_redactor(&config, &[tokens.access.expose(), refresh]);
        let mut list: Vec<(&str, &crate::secrets::Secret)> = Vec::new();
        if let Some(r) = &tokens.refresh {
            list.push(("refresh_token", r));
        }
        list.push(("access_token", &tokens.access));
        for (hint, token) in list {
            let mut form: Vec<(&str, &str)> =
                vec![("token", token.expose()), ("token_type_hint", hint)];
            let mut request = self.http.post(url.clone());
            // A public client (no secret) identifies itself with `client_id` in the body
            // (RFC 7009 §2.1, RFC 6749 §2.3), whatever the service's method says.
            let basic = config.basic_credentials();
            match (def.token_auth_method, basic) {
                (TokenAuthMethod::Basic, Some(blob)) => {
                    request =
                        request.header(reqwest::header::AUTHORIZATION, format!("Basic {blob}"));
                }
                _ => {
                    form.push(("client_id", &config.client_id));
                    if let Some(s) = &config.client_secret {
                        form.push(("client_secret", s.expose()));
                    }
                }
            }
            let label = hint.replace('_', " ");
            let line = match request.form(&form).send().await {
                Ok(r) if r.status().is_success() => ProviderRevocation::new(
                    Revoked,
                    format!("{label}: revoked at the provider ({})", r.status().as_u16()),
                ),
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    let body = match super::token::read_capped(&mut r).await {
                        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                        Err(super::token::AnswerError::Request(e)) => {
                            format!("(its answer could not be read: {})", e.without_url())
                        }
                        Err(e) => format!("({e})"),
                    };
                    // Scrub before cutting, so a cut cannot leave part of a token behind.
                    let body = redactor.scrub(&body);
                    if status == 400 && names_invalid_token(&body) {
                        // Revoking the refresh token first usually ends its access token
                        // too, and a provider like Google then refuses the second request.
                        ProviderRevocation::new(
                            AlreadyInvalid,
                            format!(
                                "{label}: already expired or revoked at the provider (400 invalid_token)"
                            ),
                        )
                    } else {
                        let body: String = body.trim().chars().take(200).collect();
                        ProviderRevocation::new(
                            Failed,
                            format!("{label}: the provider answered {status}: {body}"),
                        )
                    }
                }
                Err(e) => ProviderRevocation::new(
                    Failed,
                    format!(
                        "{label}: revocation request failed: {}",
                        redactor.scrub(&e.without_url().to_string())
                    ),
                ),
            };
            outcomes.push(line);
        }
        outcomes
    }
}

/// Whether a revocation endpoint's error body is an OAuth error naming `invalid_token`.
fn names_invalid_token(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v["error"].as_str() == Some("invalid_token"))
}
