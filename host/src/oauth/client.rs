//! A service's OAuth client registration (sealed at rest) and the `oauth2` client built
//! from it for one connection.

use std::collections::BTreeMap;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, RedirectUrl,
    TokenUrl,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{OAuth, OAuthError};
use crate::secrets::{SealError, Secret};
use crate::services::{OAuth2Def, ServiceDef, TokenAuthMethod};

/// Where providers send the browser back to, unless a service's client config says
/// otherwise. Register exactly this URL at the provider.
pub const DEFAULT_REDIRECT_URL: &str = "http://127.0.0.1:8976/oauth/callback";
/// Environment variable overriding [`DEFAULT_REDIRECT_URL`] for every service.
pub const REDIRECT_URL_ENV: &str = "KEYHOLE_REDIRECT_URL";

/// The `oauth2` client type used everywhere (endpoints loaded at runtime).
pub(crate) type Client =
    BasicClient<EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet>;

/// A service's registration at the provider.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The client id (not secret).
    pub client_id: String,
    /// The client secret, for confidential clients.
    pub client_secret: Option<Secret>,
    /// Redirect URL registered at the provider, if not the default.
    pub redirect_url: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    client_id: String,
    client_secret: Option<String>,
    redirect_url: Option<String>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.client_secret);
    }
}

fn context(service: &str) -> String {
    format!("keyhole:service-client:{service}")
}

impl ClientConfig {
    /// The Basic client credentials (`base64(id:secret)`, each half form-urlencoded first,
    /// RFC 6749 §2.3.1), for a confidential client.
    pub(crate) fn basic_credentials(&self) -> Option<String> {
        use base64::Engine as _;
        let form = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let secret = self.client_secret.as_ref()?;
        let pair = format!("{}:{}", form(&self.client_id), form(secret.expose()));
        Some(base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// The redirect URL to use: the service's own, else `KEYHOLE_REDIRECT_URL`, else the default.
    pub fn effective_redirect_url(&self) -> String {
        self.redirect_url
            .clone()
            .unwrap_or_else(default_redirect_url)
    }
}

/// The redirect URL used when a service sets none.
pub fn default_redirect_url() -> String {
    std::env::var(REDIRECT_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_REDIRECT_URL.to_string())
}

impl OAuth {
    /// Store (sealed) a service's client registration.
    pub fn save_client(
        &self,
        service: &str,
        config: &ClientConfig,
    ) -> Result<(), crate::storage::StorageError> {
        let stored = Stored {
            client_id: config.client_id.clone(),
            client_secret: config
                .client_secret
                .as_ref()
                .map(|s| s.expose().to_string()),
            redirect_url: config.redirect_url.clone(),
        };
        let json = Zeroizing::new(serde_json::to_vec(&stored).expect("client config serializes"));
        let blob = self.sealer.seal(&json, &context(service));
        self.storage.set_service_client(service, Some(&blob))
    }

    /// A service's client registration, if set.
    pub fn load_client(&self, service: &str) -> Result<Option<ClientConfig>, OAuthError> {
        let row = self
            .storage
            .get_service(service)
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        let Some(blob) = row.and_then(|r| r.sealed_client) else {
            return Ok(None);
        };
        let json = self
            .sealer
            .open(&blob, &context(service))
            .map_err(|e: SealError| OAuthError::Config(e.to_string()))?;
        let mut stored: Stored = serde_json::from_slice(&json)
            .map_err(|_| OAuthError::Config("stored client config is malformed".into()))?;
        Ok(Some(ClientConfig {
            client_id: std::mem::take(&mut stored.client_id),
            client_secret: stored.client_secret.take().map(Secret::new),
            redirect_url: stored.redirect_url.take(),
        }))
    }

    /// The `oauth2` client for `service` with this connection's URL params.
    pub(crate) fn client_for(
        &self,
        service: &ServiceDef,
        url_params: &BTreeMap<String, String>,
    ) -> Result<(Client, ClientConfig, &'static str), OAuthError> {
        let def: &OAuth2Def = service.oauth2.as_ref().ok_or_else(|| {
            OAuthError::Config(format!(
                "service {:?} is not an OAuth service",
                service.name
            ))
        })?;
        let config = self
            .load_client(&service.name)?
            .ok_or_else(|| OAuthError::NoClient(service.name.clone()))?;
        let token_url = service
            .resolve_url(&def.token_url, url_params)
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        let auth_url = match &def.authorize_url {
            Some(u) => Some(
                service
                    .resolve_url(u, url_params)
                    .map_err(|e| OAuthError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let redirect = config.effective_redirect_url();
        let mut client = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_auth_uri_option(auth_url.map(AuthUrl::from_url))
            .set_token_uri_option(Some(TokenUrl::from_url(token_url)))
            .set_redirect_uri(
                RedirectUrl::new(redirect.clone())
                    .map_err(|e| OAuthError::Config(format!("redirect URL {redirect:?}: {e}")))?,
            )
            .set_auth_type(match def.token_auth_method {
                TokenAuthMethod::Basic => AuthType::BasicAuth,
                TokenAuthMethod::Body => AuthType::RequestBody,
            });
        if let Some(secret) = &config.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_string()));
        }
        let method = match def.token_auth_method {
            TokenAuthMethod::Basic => "basic",
            TokenAuthMethod::Body => "body",
        };
        Ok((client, config, method))
    }
}
