//! RFC 7009 token revocation.
//!
//! Done with a plain form POST rather than `oauth2::Client::revoke_token`, which refuses
//! non-https endpoints: keyhole's loopback test provider (and local stand-ins) speak http.
//! The request is the same: `token`, `token_type_hint`, client authentication as the
//! service's token endpoint expects it.

use base64::Engine as _;

use super::OAuth;
use super::flow::url_params;
use crate::connections::Credentials;
use crate::services::{ServiceDef, TokenAuthMethod};
use crate::storage::ConnectionRow;

impl OAuth {
    /// Revoke the refresh token, then the access token, at the service's revocation
    /// endpoint. Returns one human-readable line per token (never the token itself).
    pub async fn revoke_tokens(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
        creds: &Credentials,
    ) -> Vec<String> {
        let Some(def) = &service.oauth2 else {
            return vec![];
        };
        let Some(tokens) = &creds.tokens else {
            return vec!["no tokens were held".into()];
        };
        let Some(template) = &def.revocation_url else {
            return vec![format!(
                "service {:?} has no revocation endpoint; tokens wiped locally only",
                service.name
            )];
        };
        let url = match service.resolve_url(template, &url_params(service, row)) {
            Ok(u) => u,
            Err(e) => return vec![format!("revocation URL unusable: {e}")],
        };
        let config = match self.load_client(&service.name) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return vec!["no OAuth client configured; tokens wiped locally only".into()];
            }
            Err(e) => return vec![format!("cannot load the OAuth client: {e}")],
        };
        let mut outcomes = Vec::new();
        // A provider's error page may quote what we sent; never let a token or the client
        // secret reach the status reason, the CLI or the database through it.
        let mut redactor = crate::connections::redact::Redactor::default();
        redactor.add(tokens.access.expose());
        if let Some(r) = &tokens.refresh {
            redactor.add(r.expose());
        }
        if let Some(s) = &config.client_secret {
            redactor.add(s.expose());
        }
        let mut list: Vec<(&str, &crate::secrets::Secret)> = Vec::new();
        if let Some(r) = &tokens.refresh {
            list.push(("refresh_token", r));
        }
        list.push(("access_token", &tokens.access));
        for (hint, token) in list {
            let mut form: Vec<(&str, &str)> =
                vec![("token", token.expose()), ("token_type_hint", hint)];
            let mut request = self.http.post(url.clone());
            match def.token_auth_method {
                TokenAuthMethod::Basic => {
                    let user = form_encode(&config.client_id);
                    let pass = config
                        .client_secret
                        .as_ref()
                        .map(|s| form_encode(s.expose()))
                        .unwrap_or_default();
                    let blob =
                        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                    request =
                        request.header(reqwest::header::AUTHORIZATION, format!("Basic {blob}"));
                }
                TokenAuthMethod::Body => {
                    form.push(("client_id", &config.client_id));
                    if let Some(s) = &config.client_secret {
                        form.push(("client_secret", s.expose()));
                    }
                }
            }
            let label = hint.replace('_', " ");
            let line = match request.form(&form).send().await {
                Ok(r) if r.status().is_success() => {
                    format!("{label}: revoked at the provider ({})", r.status().as_u16())
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    // Scrub before cutting, so a cut cannot leave part of a token behind.
                    let body = redactor.scrub(&r.text().await.unwrap_or_default());
                    let body: String = body.trim().chars().take(200).collect();
                    format!("{label}: the provider answered {status}: {body}")
                }
                Err(e) => format!("{label}: revocation request failed: {}", e.without_url()),
            };
            outcomes.push(line);
        }
        outcomes
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
