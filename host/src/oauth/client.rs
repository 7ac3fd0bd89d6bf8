//! A service's OAuth client registration (sealed at rest, bound to the origins it was
//! registered for) and the `oauth2` client built from it for one connection.

use std::collections::{BTreeMap, BTreeSet};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, AuthUrl, ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, RedirectUrl,
    StandardRevocableToken, TokenUrl,
};
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use super::flow::url_params;
use super::token::TokenAnswer;
use super::{OAuth, OAuthError};
use crate::secrets::{SealError, Secret};
use crate::services::{OAuth2Def, ServiceDef, TokenAuthMethod};
use crate::storage::ConnectionRow;

/// Where providers send the browser back to, unless a service's client config says
/// otherwise. Register exactly this URL at the provider.
pub const DEFAULT_REDIRECT_URL: &str = "http://127.0.0.1:8976/oauth/callback";
/// Environment variable overriding [`DEFAULT_REDIRECT_URL`] for every service.
pub const REDIRECT_URL_ENV: &str = "KEYHOLE_REDIRECT_URL";
/// Most origins one client registration is bound to. Each combination of the `choices`
/// of the params an endpoint's host is built from counts; past this, `set-client` asks
/// for the values with `--param`.
const MAX_CLIENT_ORIGINS: usize = 256;

/// An `oauth2` client whose token answers are read as providers send them
/// ([`TokenAnswer`]); with no endpoint set yet.
type NewClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

/// The `oauth2` client type used everywhere (endpoints loaded at runtime).
pub(crate) type Client = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
>;

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
    /// The origins (`scheme://host[:port]`) of the token and revocation endpoints the
    /// client was registered for: its id and secret go nowhere else. Sealed with the
    /// secret, so the binding cannot be changed without the master key. `None`: saved by
    /// a keyhole from before the binding (see [`bound_origins`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origins: Option<Vec<String>>,
}

/// A stored registration with the origins it was saved for.
struct Registration {
    config: ClientConfig,
    origins: Option<Vec<String>>,
    /// The sealed blob it was read from.
    blob: Vec<u8>,
}

/// Why the origins a registration is bound to cannot be worked out.
#[derive(Debug)]
pub(crate) enum OriginsError {
    /// These params decide an endpoint's host and have neither a value, choices nor (where
    /// defaults count) a default.
    Missing(Vec<String>),
    /// The definition or a value does not resolve (the message says why).
    Invalid(String),
}

/// The names of the params that decide the host of `service`'s token or revocation
/// endpoint (empty when those URLs are fixed by the definition).
pub(crate) fn origin_params(service: &ServiceDef) -> Vec<String> {
    let mut names = Vec::new();
    for template in endpoint_templates(service) {
        if let Ok((_, used)) = service.origin_template(template) {
            for name in used {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

/// The URLs a client's id and secret are sent to: the token endpoint and, if there is
/// one, the revocation endpoint.
fn endpoint_templates(service: &ServiceDef) -> impl Iterator<Item = &String> {
    service
        .oauth2
        .iter()
        .flat_map(|o| std::iter::once(&o.token_url).chain(&o.revocation_url))
}

/// The origins of `service`'s token and revocation endpoints for a registration made
/// with `given` param values. A param that decides an endpoint's host and is not given
/// takes each of its `choices` (the definition vouches for every one: a typo cannot
/// pick a stranger's host), else, with `defaults`, its default. One with none of these
/// is [`OriginsError::Missing`]: only the admin knows where the app is registered.
pub(crate) fn registration_origins(
    service: &ServiceDef,
    given: &BTreeMap<String, String>,
    defaults: bool,
) -> Result<Vec<String>, OriginsError> {
    let mut origins = BTreeSet::new();
    let mut missing: Vec<String> = Vec::new();
    for template in endpoint_templates(service) {
        let (part, names) = service
            .origin_template(template)
            .map_err(|e| OriginsError::Invalid(e.to_string()))?;
        let mut combinations = vec![BTreeMap::new()];
        for name in names {
            let values = match service.param(name) {
                Some(p) if p.name == name => match given.get(name) {
                    Some(v) => vec![v.clone()],
                    None if !p.choices.is_empty() => p.choices.clone(),
                    None => match (&p.default, defaults) {
                        (Some(d), true) => vec![d.clone()],
                        _ => {
                            if !missing.iter().any(|m| m == name) {
                                missing.push(name.to_string());
                            }
                            continue;
                        }
                    },
                },
                // `origin_template` only names placeholders, and a valid definition has a
                // url param for each; resolving reports it otherwise.
                _ => vec![String::new()],
            };
            combinations = combinations
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(name.to_string(), v.clone());
                        c
                    })
                })
                .collect();
            if combinations.len() > MAX_CLIENT_ORIGINS {
                return Err(OriginsError::Invalid(format!(
                    "the OAuth endpoints of service {:?} can be on more than {MAX_CLIENT_ORIGINS} hosts; name the one the OAuth app is registered at with --param {name}=VALUE",
                    service.name
                )));
            }
        }
        if !missing.is_empty() {
            continue;
        }
        for params in combinations {
            let url = service
                .resolve_url(part, &params)
                .map_err(|e| OriginsError::Invalid(e.to_string()))?;
            origins.insert(url.origin().ascii_serialization());
        }
    }
    if !missing.is_empty() {
        return Err(OriginsError::Missing(missing));
    }
    Ok(origins.into_iter().collect())
}

/// Where a registration's id and secret may go. A registration saved with its origins
/// is bound to those.
///
/// One saved by a keyhole from before the binding has none recorded. It is taken to be
/// bound to what the service definition alone names: endpoints on fixed URLs (every
/// service but those below: nothing changes for them), and, for a host param with
/// `choices` (Zoho's `dc`, Salesforce's `login_host`), each choice. A host param without
/// choices (GitLab's `host`) is not guessed, not even as its default: the app may be
/// registered at a self-managed instance, and a connection left at the default would
/// then hand that instance's secret to gitlab.com. Such a registration is refused until
/// `set-client` saves it again with the host. (No migration does this: the origins live
/// inside the sealed blob, which a migration, running without the master key, cannot
/// open. Instead the first use seals them in: `registration_to_send`.)
fn bound_origins(
    service: &ServiceDef,
    recorded: Option<&[String]>,
) -> Result<Vec<String>, OAuthError> {
    if let Some(origins) = recorded {
        return Ok(origins.to_vec());
    }
    registration_origins(service, &BTreeMap::new(), false).map_err(|e| match e {
        OriginsError::Missing(params) => OAuthError::ClientUnbound {
            service: service.name.clone(),
            example: params[0].clone(),
            params: params.join(", "),
        },
        OriginsError::Invalid(message) => OAuthError::Config(message),
    })
}

/// Refuses `url` (where `endpoint`, the token or revocation endpoint, would send the
/// client's id and secret) unless it is on one of the `bound` origins. `connection` and
/// `params` (its url params) are for the advice.
fn check_bound(
    service: &ServiceDef,
    connection: &str,
    bound: &[String],
    url: &Url,
    endpoint: &'static str,
    params: &BTreeMap<String, String>,
) -> Result<(), OAuthError> {
    let origin = url.origin().ascii_serialization();
    if bound.contains(&origin) {
        return Ok(());
    }
    let hosts = origin_params(service);
    let next = if hosts.is_empty() {
        // The definition moved the endpoint (`services edit`, or a preset changed).
        format!(
            "The service's {endpoint} endpoint moved since the client was saved; if the OAuth app is registered at {origin}, save the client again with `keyhole services set-client {} --client-id ID --client-secret-stdin`",
            service.name
        )
    } else {
        let values: Vec<String> = hosts
            .iter()
            .map(|name| {
                let value = params
                    .get(name)
                    .or_else(|| service.param(name).and_then(|p| p.default.as_ref()))
                    .map_or("VALUE", String::as_str);
                format!("--param {name}={value}")
            })
            .collect();
        format!(
            "If the connection points at the wrong host, fix it with `keyhole connections edit {connection} --param {}=VALUE`; if the OAuth app is registered at {origin}, save the client for that host with `keyhole services set-client {} {} --client-id ID --client-secret-stdin` (a service holds one client: for a second host, add a custom service)",
            hosts[0],
            service.name,
            values.join(" ")
        )
    };
    Err(OAuthError::ClientElsewhere {
        service: service.name.clone(),
        registered: bound.join(", "),
        origin,
        endpoint,
        next,
    })
}

/// The token endpoint of `service` with a connection's url params.
pub(crate) fn token_endpoint(
    service: &ServiceDef,
    url_params: &BTreeMap<String, String>,
) -> Result<Url, OAuthError> {
    let def: &OAuth2Def = service.oauth2.as_ref().ok_or_else(|| {
        OAuthError::Config(format!(
            "service {:?} is not an OAuth service",
            service.name
        ))
    })?;
    service
        .resolve_url(&def.token_url, url_params)
        .map_err(|e| OAuthError::Config(e.to_string()))
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
    /// Store (sealed) a service's client registration, bound to `origins` (see
    /// [`registration_origins`]).
    pub(crate) fn save_client(
        &self,
        service: &str,
        config: &ClientConfig,
        origins: &[String],
    ) -> Result<(), crate::storage::StorageError> {
        let blob = self.seal_registration(service, config, origins);
        self.storage.set_service_client(service, Some(&blob))
    }

    /// A registration as stored: sealed, bound to `origins`.
    fn seal_registration(
        &self,
        service: &str,
        config: &ClientConfig,
        origins: &[String],
    ) -> Vec<u8> {
        let stored = Stored {
            client_id: config.client_id.clone(),
            client_secret: config
                .client_secret
                .as_ref()
                .map(|s| s.expose().to_string()),
            redirect_url: config.redirect_url.clone(),
            origins: Some(origins.to_vec()),
        };
        let json = Zeroizing::new(serde_json::to_vec(&stored).expect("client config serializes"));
        self.sealer.seal(&json, &context(service))
    }

    /// A service's client registration, if set. Whoever sends it checks first that the
    /// endpoint is one it is bound to ([`Self::check_revocation_endpoint`]; `client_for`
    /// checks the token endpoint).
    pub fn load_client(&self, service: &str) -> Result<Option<ClientConfig>, OAuthError> {
        Ok(self.load_registration(service)?.map(|r| r.config))
    }

    /// Where `service`'s client may be sent (origins): `None` without a client; an error
    /// for one saved before keyhole recorded where it is registered, when the service
    /// definition alone does not say (see [`bound_origins`]).
    pub fn client_origins(&self, service: &ServiceDef) -> Result<Option<Vec<String>>, OAuthError> {
        match self.load_registration(&service.name)? {
            Some(r) => bound_origins(service, r.origins.as_deref()).map(Some),
            None => Ok(None),
        }
    }

    /// Refuses to revoke `row`'s tokens when that would send its service's client to a
    /// revocation endpoint on an origin the client is not bound to. Nothing to check (no
    /// revocation endpoint, no client, a URL that does not resolve) is no refusal: then
    /// nothing is sent.
    pub(crate) fn check_revocation_endpoint(
        &self,
        service: &ServiceDef,
        row: &ConnectionRow,
    ) -> Result<(), OAuthError> {
        let Some(template) = service
            .oauth2
            .as_ref()
            .and_then(|o| o.revocation_url.as_ref())
        else {
            return Ok(());
        };
        let params = url_params(service, row);
        let Ok(url) = service.resolve_url(template, &params) else {
            return Ok(());
        };
        let Some((_, bound)) = self.registration_to_send(service)? else {
            return Ok(());
        };
        check_bound(service, &row.name, &bound, &url, "revocation", &params)
    }

    fn load_registration(&self, service: &str) -> Result<Option<Registration>, OAuthError> {
        let row = self
            .storage
            .get_service(service)
            .map_err(|e| OAuthError::Config(e.to_string()))?;
        let Some(blob) = row.and_then(|r| r.sealed_client) else {
            return Ok(None);
        };
        let sealed = blob.clone();
        let json = self
            .sealer
            .open(&blob, &context(service))
            .map_err(|e: SealError| OAuthError::Config(e.to_string()))?;
        let mut stored: Stored = serde_json::from_slice(&json)
            .map_err(|_| OAuthError::Config("stored client config is malformed".into()))?;
        Ok(Some(Registration {
            config: ClientConfig {
                client_id: std::mem::take(&mut stored.client_id),
                client_secret: stored.client_secret.take().map(Secret::new),
                redirect_url: stored.redirect_url.take(),
            },
            origins: stored.origins.take(),
            blob: sealed,
        }))
    }

    /// `service`'s registration and the origins it is bound to, for sending it. One saved
    /// before keyhole recorded its origins is bound to what the service definition names
    /// at its first use, and those origins are sealed into it then, so a later `services
    /// edit` that moves an endpoint cannot take the client along (best effort: if the
    /// write fails, the next use tries again; a `set-client` meanwhile wins).
    fn registration_to_send(
        &self,
        service: &ServiceDef,
    ) -> Result<Option<(ClientConfig, Vec<String>)>, OAuthError> {
        let Some(registration) = self.load_registration(&service.name)? else {
            return Ok(None);
        };
        let bound = bound_origins(service, registration.origins.as_deref())?;
        if registration.origins.is_none() {
            let blob = self.seal_registration(&service.name, &registration.config, &bound);
            match self
                .storage
                .replace_service_client(&service.name, &registration.blob, &blob)
            {
                Ok(true) => {
                    tracing::info!(service = %service.name, origins = %bound.join(", "), "recorded where an OAuth client saved by an older keyhole may be sent");
                }
                // A `set-client` landed meanwhile: its registration is bound already.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(service = %service.name, error = %e, "could not record where the OAuth client may be sent; trying again at its next use");
                }
            }
        }
        Ok(Some((registration.config, bound)))
    }

    /// The `oauth2` client for `service` with `connection`'s URL params. Refused when
    /// the token endpoint is not on an origin the client is bound to: the client secret
    /// (and the code or refresh token) would go to a host it was not registered at.
    pub(crate) fn client_for(
        &self,
        service: &ServiceDef,
        connection: &str,
        url_params: &BTreeMap<String, String>,
    ) -> Result<(Client, ClientConfig, &'static str), OAuthError> {
        let def: &OAuth2Def = service.oauth2.as_ref().ok_or_else(|| {
            OAuthError::Config(format!(
                "service {:?} is not an OAuth service",
                service.name
            ))
        })?;
        let (config, bound) = self
            .registration_to_send(service)?
            .ok_or_else(|| OAuthError::NoClient(service.name.clone()))?;
        let token_url = token_endpoint(service, url_params)?;
        check_bound(service, connection, &bound, &token_url, "token", url_params)?;
        let auth_url = match &def.authorize_url {
            Some(u) => Some(
                service
                    .resolve_url(u, url_params)
                    .map_err(|e| OAuthError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let redirect = config.effective_redirect_url();
        let mut client = NewClient::new(ClientId::new(config.client_id.clone()))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secrets::{MasterKey, Sealer};
    use crate::services::find_preset;
    use crate::storage::Storage;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn oauth() -> (tempfile::TempDir, OAuth) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("db")).unwrap());
        let sealer = Arc::new(Sealer::new(&MasterKey::from_bytes([3; 32])));
        (dir, OAuth::new(storage, sealer))
    }

    fn refusal(o: &OAuth, service: &ServiceDef, pairs: &[(&str, &str)]) -> Option<String> {
        o.client_for(service, "conn", &params(pairs))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_registration_is_bound_to_where_its_endpoints_are() {
        let of = |name: &str, pairs: &[(&str, &str)], defaults: bool| {
            registration_origins(find_preset(name).unwrap(), &params(pairs), defaults)
        };
        // Fixed URLs, or a param only in the path: the definition says where.
        assert_eq!(of("github", &[], false).unwrap(), ["https://github.com"]);
        assert_eq!(
            of("microsoft", &[], false).unwrap(),
            ["https://login.microsoftonline.com"]
        );
        // A free host: the given one, else (for set-client) the default.
        assert_eq!(of("gitlab", &[], true).unwrap(), ["https://gitlab.com"]);
        assert_eq!(
            of("gitlab", &[("host", "gitlab.example.com")], true).unwrap(),
            ["https://gitlab.example.com"]
        );
        assert!(matches!(of("gitlab", &[], false), Err(OriginsError::Missing(p)) if p == ["host"]));
        assert!(matches!(
            of("gitlab", &[("host", "a:1")], true),
            Err(OriginsError::Invalid(_))
        ));
        // A host from a list of choices: each of them, unless one is given.
        assert_eq!(
            of("salesforce", &[], false).unwrap(),
            [
                "https://login.salesforce.com",
                "https://test.salesforce.com"
            ]
        );
        assert_eq!(of("zoho", &[], false).unwrap().len(), 7);
        assert_eq!(
            of("zoho", &[("dc", "eu")], true).unwrap(),
            ["https://accounts.zoho.eu"]
        );
    }

    #[test]
    fn a_client_goes_only_to_the_origins_it_was_saved_for() {
        let (_dir, o) = oauth();
        let gitlab = find_preset("gitlab").unwrap();
        let config = ClientConfig {
            client_id: "id".into(),
            client_secret: Some(Secret::new("kh-unit-client-secret")),
            redirect_url: None,
        };
        o.save_client("gitlab", &config, &["https://gitlab.com".into()])
            .unwrap();
        assert_eq!(refusal(&o, gitlab, &[]), None);
        assert_eq!(refusal(&o, gitlab, &[("host", "gitlab.com")]), None);
        let e = refusal(&o, gitlab, &[("host", "gitlab.example.com")]).unwrap();
        assert!(
            e.contains("registered for https://gitlab.com, not for https://gitlab.example.com")
                && e.contains("set-client gitlab --param host=gitlab.example.com")
                && e.contains("`keyhole connections edit conn --param host=VALUE`"),
            "{e}"
        );
        assert!(!e.contains("kh-unit-client-secret"), "{e}");
        assert_eq!(
            o.client_origins(gitlab).unwrap().unwrap(),
            ["https://gitlab.com"]
        );
    }

    /// A client stored by a keyhole from before the binding (no origins in its blob).
    #[test]
    fn a_client_saved_before_the_binding_goes_only_where_the_definition_says() {
        let (_dir, o) = oauth();
        let legacy =
            br#"{"client_id":"id","client_secret":"kh-unit-legacy-secret","redirect_url":null}"#;
        for name in ["gitlab", "github", "zoho"] {
            let blob = o.sealer.seal(legacy, &context(name));
            o.storage.set_service_client(name, Some(&blob)).unwrap();
        }
        let gitlab = find_preset("gitlab").unwrap();
        for host in ["gitlab.com", "gitlab.example.com"] {
            let e = refusal(&o, gitlab, &[("host", host)]).unwrap();
            assert!(
                e.contains("older keyhole") && e.contains("--param host=HOST"),
                "{e}"
            );
            assert!(!e.contains("kh-unit-legacy-secret"), "{e}");
        }
        assert!(matches!(
            o.client_origins(gitlab),
            Err(OAuthError::ClientUnbound { .. })
        ));
        let github = find_preset("github").unwrap();
        assert_eq!(refusal(&o, github, &[]), None);
        let zoho = find_preset("zoho").unwrap();
        assert_eq!(refusal(&o, zoho, &[("dc", "eu")]), None);
        assert_eq!(o.client_origins(zoho).unwrap().unwrap().len(), 7);

        // Its first use sealed in where it went: a definition moved since (a custom
        // service's `services edit`) cannot take the client along.
        let mut moved: ServiceDef = (**github).clone();
        moved.oauth2.as_mut().unwrap().token_url = "https://elsewhere.example/token".into();
        let e = refusal(&o, &moved, &[]).unwrap();
        assert!(
            e.contains("https://github.com") && e.contains("https://elsewhere.example"),
            "{e}"
        );
    }
}
