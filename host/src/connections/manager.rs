//! Administering connections: add, connect (ask, seal, verify), show, edit, test,
//! revoke, delete, and the grants that let functions use them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::credentials::Credentials;
use super::gateway::{Loaded, RequestLimits, resolve_endpoint};
use super::{Catalog, ConnectionError, Gateway, OutboundRequest, Status};
use crate::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES};
use crate::oauth::{
    CallbackParams, ClientConfig, OAuthError, PendingAuthorization, ProviderRevocation,
    RevocationOutcome,
};
use crate::secrets::Secret;
use crate::services::{
    AuthKind, GrantType, Origin, ParamDef, ParamLocation, ServiceDef, validate_name,
};
use crate::storage::{ConnectionRow, now_ms};

/// Timeout of a verification request.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest excerpt of an upstream's answer shown as a failure reason.
const REASON_EXCERPT: usize = 300;

/// How many times `revoke` revokes credentials that changed under it before it gives up.
const REVOKE_ATTEMPTS: usize = 3;

/// Administration of connections. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connections {
    gateway: Arc<Gateway>,
}

/// What a keep-alive pass did with one connection ([`Connections::keep_alive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepAlive {
    /// Refreshed: the provider's new tokens are stored.
    Refreshed,
    /// Not refreshed now: it was refreshed, revoked, deleted or edited meanwhile, or the
    /// provider failed in a way that may pass (`connections show` says how; it is tried
    /// again later).
    NotRefreshed,
    /// The provider refused the refresh token: the connection needs re-authorization.
    NeedsReauth,
    /// keyhole could not open the connection or store the answer.
    Failed(String),
}

/// A service's OAuth client as `services show` tells it (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct OAuthClientSummary {
    /// The client id, if a client is set.
    pub client_id: Option<String>,
    /// The redirect URL to register at the provider.
    pub callback_url: String,
    /// The origins the client's id and secret may be sent to (its token and revocation
    /// endpoints). `None` without a client, or for one an older keyhole saved without
    /// them whose service's endpoints are on a host a param names (`set-client` again).
    pub origins: Option<Vec<String>>,
}

/// One param of a connection as shown to an admin: secrets only masked.
#[derive(Debug, Clone, Serialize)]
pub struct ParamView {
    /// Wire name (the "actual parameter").
    pub name: String,
    /// Name shown to the admin.
    pub display_name: String,
    /// Whether the value is secret.
    pub secret: bool,
    /// The value, or a mask for secrets, or `None` when unset.
    pub value: Option<String>,
}

/// The connection summary (`connections show`). Contains no secret value.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    /// Connection name.
    pub name: String,
    /// Service name.
    pub service: String,
    /// Service display name.
    pub service_display_name: String,
    /// Auth type.
    pub auth: AuthKind,
    /// Status.
    pub status: Status,
    /// Why (e.g. the upstream's answer to a failed verification).
    pub status_reason: Option<String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Effective base URL (when resolvable).
    pub base_url: Option<String>,
    /// Whether the base URL is a connection-level override.
    pub base_url_overridden: bool,
    /// Allowed origins.
    pub allowed_origins: Vec<String>,
    /// Params with masked secrets.
    pub params: Vec<ParamView>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub connected_at: Option<i64>,
    /// Unix ms.
    pub last_used_at: Option<i64>,
    /// Functions granted this connection.
    pub granted_functions: Vec<String>,
    /// OAuth token metadata (expiry, granted scopes, last refresh), never token values.
    pub token: serde_json::Value,
    /// The account the credentials belong to, as the service's verification request
    /// last named it (`None` when it names none, or no verification has succeeded).
    pub account: Option<String>,
}

/// Result of a verification request.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    /// Whether the credentials worked.
    pub ok: bool,
    /// `METHOD /path` that was sent.
    pub request: String,
    /// Upstream status, when one came back.
    pub status: Option<u16>,
    /// Upstream's reason on failure (scrubbed excerpt), or the transport error.
    pub reason: Option<String>,
    /// The account the credentials belong to, when the service says where the
    /// response names it ([`crate::services::VerifyDef::account`]).
    pub account: Option<String>,
    /// The pointer `account` was read from.
    #[serde(skip)]
    pub account_source: Option<String>,
    /// Set by a test that found the credentials now belong to another account than
    /// before: what the connection's status reason now says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_change: Option<String>,
}

impl VerifyOutcome {
    /// The account a successful verification named, with its pointer.
    fn learned(&self) -> Option<(&str, &str)> {
        if !self.ok {
            return None;
        }
        Some((self.account_source.as_deref()?, self.account.as_deref()?))
    }
}

/// Result of `connect`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectOutcome {
    /// The connection after connecting.
    pub connection: ConnectionView,
    /// The verification, when the service declares one.
    pub verification: Option<VerifyOutcome>,
    /// Whether the new credentials were stored.
    pub stored: bool,
}

impl Connections {
    /// Administration over `gateway`'s storage.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// The service catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.gateway.catalog
    }

    /// The gateway guests send through.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    fn row(&self, name: &str) -> Result<ConnectionRow, ConnectionError> {
        self.gateway
            .storage
            .get_connection(name)?
            .ok_or_else(|| ConnectionError::UnknownConnection(name.to_string()))
    }

    /// Create a pending connection to `service`.
    pub fn add(
        &self,
        name: &str,
        service: &str,
        scopes: Vec<String>,
        base_url: Option<String>,
    ) -> Result<ConnectionView, ConnectionError> {
        validate_name("connection", name)?;
        let entry = self.catalog().require(service)?;
        no_scopes_without_oauth(&entry.def, &scopes)?;
        let scopes = if scopes.is_empty() {
            entry
                .def
                .oauth2
                .as_ref()
                .map(|o| o.default_scopes.clone())
                .unwrap_or_default()
        } else {
            scopes
        };
        if let Some(url) = &base_url {
            check_override(&entry.def, url)?;
        }
        let row = ConnectionRow {
            name: name.to_string(),
            service: service.to_string(),
            status: Status::Pending.as_str().to_string(),
            status_reason: Some(
                "created; run `keyhole connections connect` to supply credentials".into(),
            ),
            scopes,
            base_url,
            params: BTreeMap::new(),
            sealed: None,
            generation: 0,
            token_info: serde_json::json!({}),
            created_at: now_ms(),
            connected_at: None,
            last_used_at: None,
            account: None,
            account_source: None,
        };
        self.gateway.storage.insert_connection(&row)?;
        tracing::info!(connection = name, service, "connection created");
        self.show(name)
    }

    /// Every connection.
    pub fn list(&self) -> Result<Vec<ConnectionView>, ConnectionError> {
        self.gateway
            .storage
            .list_connections()?
            .into_iter()
            .map(|row| self.view(row))
            .collect()
    }

    /// One connection's summary.
    pub fn show(&self, name: &str) -> Result<ConnectionView, ConnectionError> {
        let row = self.row(name)?;
        self.view(row)
    }

    fn view(&self, row: ConnectionRow) -> Result<ConnectionView, ConnectionError> {
        let entry = self.catalog().require(&row.service)?;
        let service = entry.def;
        // Open the blob once; if it does not open (wrong key), still show the connection,
        // just without which secrets are set.
        let creds = row
            .sealed
            .as_ref()
            .and_then(|blob| Credentials::open(&self.gateway.sealer, &row.name, blob).ok())
            .unwrap_or_default();
        let secret_names: Vec<String> = creds.params.keys().cloned().collect();
        let endpoint = resolve_endpoint(&service, &row, &creds).ok();
        let secret_url = service
            .params
            .iter()
            .any(|p| p.secret && p.location == ParamLocation::Url);
        let params = service
            .params
            .iter()
            .map(|p| ParamView {
                name: p.name.clone(),
                display_name: p.display_name.clone(),
                secret: p.secret,
                value: if p.secret {
                    secret_names
                        .contains(&p.name)
                        .then(|| "••••••••".to_string())
                } else {
                    row.params
                        .get(&p.name)
                        .cloned()
                        .or_else(|| p.default.clone())
                },
            })
            .collect();
        Ok(ConnectionView {
            granted_functions: self.gateway.storage.grants_of_connection(&row.name)?,
            name: row.name,
            service_display_name: service.display_name.clone(),
            service: row.service,
            auth: service.auth,
            status: Status::parse(&row.status),
            status_reason: row.status_reason,
            scopes: row.scopes,
            base_url: endpoint.as_ref().map(|e| {
                if secret_url {
                    "[secret webhook URL]".to_string()
                } else {
                    e.base_url.to_string()
                }
            }),
            base_url_overridden: row.base_url.is_some(),
            // Scrubbed: a capability URL may carry its secret in the host name.
            allowed_origins: endpoint
                .map(|e| {
                    let redactor = super::inject::redactor_for(&service, &creds, &row.params);
                    e.allowed_origins
                        .iter()
                        .map(|o| redactor.scrub(&o.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            params,
            created_at: row.created_at,
            connected_at: row.connected_at,
            last_used_at: row.last_used_at,
            token: row.token_info,
            account: row.account,
        })
    }

    /// The params `connect` asks for, in order.
    pub fn params_to_ask(
        &self,
        name: &str,
    ) -> Result<(ServiceDef, Vec<ParamDef>), ConnectionError> {
        let row = self.row(name)?;
        let service = self.catalog().require(&row.service)?.def;
        let params = service.params.clone();
        Ok((service, params))
    }

    /// Change a connection's scopes, base URL override or non-secret params.
    ///
    /// A change that would send stored credentials to other origins (a new base URL, or a
    /// param the URL is built from) is refused unless `move_credentials` confirms it: a
    /// typo in a URL must not hand a key to whoever owns the mistyped host.
    pub fn edit(
        &self,
        name: &str,
        scopes: Option<Vec<String>>,
        base_url: Option<Option<String>>,
        params: BTreeMap<String, String>,
        move_credentials: bool,
    ) -> Result<ConnectionView, ConnectionError> {
        let mut row = self.row(name)?;
        let service = self.catalog().require(&row.service)?.def;
        // Opened once: the edit changes where they go, not what they are.
        let creds = self.opened(&row)?;
        let before = origins(&service, &row, &creds);
        if let Some(s) = scopes {
            no_scopes_without_oauth(&service, &s)?;
            row.scopes = s;
        }
        if let Some(b) = base_url {
            if let Some(url) = &b {
                check_override(&service, url)?;
            }
            row.base_url = b;
        }
        for (k, v) in params {
            let p = service.param(&k).ok_or_else(|| unknown_param(&service))?;
            if p.secret {
                return Err(ConnectionError::Invalid(format!(
                    "{:?} is a secret; set it with `keyhole connections connect {name}`",
                    p.display_name
                )));
            }
            check_choice(p, &v)?;
            // Stored under the service's own spelling: readers look it up by that.
            row.params.insert(p.name.clone(), v);
        }
        if let Some(after) = origins(&service, &row, &creds)
            && row.sealed.is_some()
            && before.as_ref() != Some(&after)
            && !move_credentials
        {
            return Err(credentials_would_move(
                &service,
                &row,
                &creds,
                before.as_deref(),
                &after,
            ));
        }
        resolve_endpoint(&service, &row, &Credentials::default()).or_else(|e| {
            // Secret url params are not known here; only fail for non-secret problems.
            if service
                .params
                .iter()
                .any(|p| p.secret && p.location == ParamLocation::Url)
            {
                Ok(dummy_endpoint())
            } else {
                Err(e)
            }
        })?;
        self.gateway.storage.update_connection_settings(&row)?;
        self.show(name)
    }

    /// Supply credentials (values by param name), verify them, and store them.
    ///
    /// A failed verification of a connection that was working leaves its old
    /// credentials in place; a never-connected one keeps the new ones as `pending`.
    pub async fn connect(
        &self,
        name: &str,
        values: BTreeMap<String, Secret>,
    ) -> Result<ConnectOutcome, ConnectionError> {
        let row = self.row(name)?;
        let service = self.catalog().require(&row.service)?.def;
        if let Some(def) = &service.oauth2 {
            if def.grant != GrantType::ClientCredentials {
                return Err(ConnectionError::Invalid(format!(
                    "{:?} uses the OAuth 2.0 authorization-code flow; run `keyhole connections connect {name}` to authorize in a browser",
                    service.display_name
                )));
            }
            if !values.is_empty() {
                return Err(ConnectionError::Invalid(format!(
                    "{:?} gets its tokens with its OAuth client's credentials (`keyhole services \
                     set-client`), so `connect` takes no values; set non-secret params with \
                     `keyhole connections edit {name} --param NAME=VALUE`",
                    service.display_name
                )));
            }
            self.gateway
                .oauth
                .client_credentials(&service, &row)
                .await?;
            let mut loaded = self
                .gateway
                .load(name)?
                .ok_or_else(|| ConnectionError::UnknownConnection(name.to_string()))?;
            let verification = match &service.verify {
                Some(_) => Some(self.verify(&mut loaded).await),
                None => None,
            };
            self.record_verified(
                name,
                loaded.row.generation,
                previous_account(&row),
                verification.as_ref(),
            )?;
            return Ok(ConnectOutcome {
                connection: self.show(name)?,
                verification,
                stored: true,
            });
        }
        let mut creds = Credentials::default();
        let mut plain = row.params.clone();
        if values.keys().any(|key| service.param(key).is_none()) {
            return Err(unknown_param(&service));
        }
        for p in &service.params {
            match values.get(&p.name) {
                Some(v) => {
                    check_choice(p, v.expose())?;
                    if p.secret {
                        creds.params.insert(p.name.clone(), v.clone());
                    } else {
                        plain.insert(p.name.clone(), v.expose().to_string());
                    }
                }
                None if p.required
                    && p.default.is_none()
                    && (p.secret || !plain.contains_key(&p.name)) =>
                {
                    return Err(ConnectionError::Invalid(format!(
                        "missing a value for {:?}; pass it as `{}=VALUE` on a line of stdin with \
                         --params-stdin (or --param {}=VALUE, or answer the prompt in a terminal)",
                        p.display_name, p.name, p.name
                    )));
                }
                None => {}
            }
        }
        let mut candidate = row.clone();
        candidate.params = plain;
        let endpoint = resolve_endpoint(&service, &candidate, &creds)?;
        let mut loaded = Loaded::new(candidate.clone(), service.clone(), creds, endpoint);

        let verification = match &service.verify {
            Some(_) => Some(self.verify(&mut loaded).await),
            None => None,
        };
        let ok = verification.as_ref().is_none_or(|v| v.ok);
        let was_connected = Status::parse(&row.status) == Status::Connected;
        let stored = ok || !was_connected;
        let learned = verification.as_ref().and_then(VerifyOutcome::learned);
        if stored {
            let sealed =
                (!loaded.creds.is_empty()).then(|| loaded.creds.seal(&self.gateway.sealer, name));
            let (status, reason) = if ok {
                (
                    Status::Connected,
                    account_change(previous_account(&row), learned),
                )
            } else {
                (
                    Status::Pending,
                    verification
                        .as_ref()
                        .and_then(|v| v.reason.clone())
                        .map(|r| format!("verification failed: {r}")),
                )
            };
            let swapped = self.gateway.storage.swap_settings_and_credentials(
                &candidate,
                row.generation,
                sealed.as_deref(),
                status.as_str(),
                reason.as_deref(),
                &serde_json::json!({}),
                ok,
            )?;
            let Some(generation) = swapped else {
                return Err(ConnectionError::Invalid(format!(
                    "connection {name:?} changed while connecting; run the command again"
                )));
            };
            // New credentials: whose they are is what this verification said, or unknown.
            self.gateway
                .storage
                .record_account(name, generation, learned, None)?;
            tracing::info!(
                connection = name,
                status = status.as_str(),
                "credentials stored"
            );
        } else {
            tracing::info!(
                connection = name,
                "verification failed; previous credentials kept"
            );
        }
        Ok(ConnectOutcome {
            connection: self.show(name)?,
            verification,
            stored,
        })
    }

    async fn verify(&self, loaded: &mut Loaded) -> VerifyOutcome {
        let Some(v) = loaded.service.verify.clone() else {
            return VerifyOutcome {
                ok: true,
                request: String::new(),
                status: None,
                reason: None,
                account: None,
                account_source: None,
                account_change: None,
            };
        };
        let request = format!("{} {}", v.method, v.path);
        let req = OutboundRequest {
            method: v.method.clone(),
            target: v.path.clone(),
            ..Default::default()
        };
        let limits = RequestLimits {
            timeout: VERIFY_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        };
        match self.gateway.execute(loaded, req, &limits, None).await {
            Ok(r) => match v.failure(r.status, &r.body) {
                None => {
                    let learned = v.account(&r.body);
                    VerifyOutcome {
                        ok: true,
                        request,
                        status: Some(r.status),
                        reason: None,
                        account_source: learned.as_ref().map(|(p, _)| p.to_string()),
                        account: learned.map(|(_, a)| a),
                        account_change: None,
                    }
                }
                Some(why) => {
                    let body = String::from_utf8_lossy(&r.body);
                    let excerpt: String = body.trim().chars().take(REASON_EXCERPT).collect();
                    VerifyOutcome {
                        ok: false,
                        reason: Some(format!("{request} {why}: {excerpt}")),
                        request,
                        status: Some(r.status),
                        account: None,
                        account_source: None,
                        account_change: None,
                    }
                }
            },
            Err(e) => VerifyOutcome {
                ok: false,
                reason: Some(format!("{request} failed: {e}")),
                request,
                status: None,
                account: None,
                account_source: None,
                account_change: None,
            },
        }
    }

    /// Refresh every OAuth grant that nothing has refreshed, nor anyone connected, for
    /// `idle` (see [`crate::oauth::OAuth`]'s keep-alive): what became of each one tried.
    /// `keyhole serve` runs this now and then (`--refresh-idle-after`).
    pub async fn keep_alive(
        &self,
        idle: Duration,
    ) -> Result<Vec<(String, KeepAlive)>, ConnectionError> {
        let rows = self.gateway.storage.list_connections()?;
        let mut report = Vec::new();
        for row in rows {
            if !crate::oauth::idle_for(&row, idle) {
                continue;
            }
            let name = row.name.clone();
            let loaded = match self.gateway.load(&name) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    report.push((name, KeepAlive::Failed(e.to_string())));
                    continue;
                }
            };
            let outcome = match self.gateway.oauth.keep_alive(loaded, idle).await {
                Ok(true) => KeepAlive::Refreshed,
                Ok(false) => KeepAlive::NotRefreshed,
                // The provider refused the refresh token, or the connection changed under
                // the refresh (revoked, deleted, edited): the stored status tells which.
                Err(super::SendError::NotConnected) => {
                    match self.gateway.storage.get_connection(&name) {
                        Ok(Some(row)) if Status::parse(&row.status) == Status::NeedsReauth => {
                            KeepAlive::NeedsReauth
                        }
                        Ok(_) => KeepAlive::NotRefreshed,
                        // One connection's read failing does not end the pass for the rest.
                        Err(e) => KeepAlive::Failed(e.to_string()),
                    }
                }
                Err(e) => KeepAlive::Failed(e.to_string()),
            };
            report.push((name, outcome));
        }
        Ok(report)
    }

    /// Run the service's verification request with the stored credentials.
    pub async fn test(&self, name: &str) -> Result<VerifyOutcome, ConnectionError> {
        let mut loaded = self
            .gateway
            .load(name)?
            .ok_or_else(|| ConnectionError::UnknownConnection(name.to_string()))?;
        if loaded.row.sealed.is_none()
            && (loaded.service.params.iter().any(|p| p.secret) || loaded.service.oauth2.is_some())
        {
            return Err(ConnectionError::Invalid(format!(
                "connection {name:?} has no credentials (status {}); run `keyhole connections connect {name}`",
                loaded.row.status
            )));
        }
        if loaded.service.verify.is_none() {
            return Err(ConnectionError::Invalid(format!(
                "service {:?} declares no verification request, so there is nothing to test",
                loaded.service.name
            )));
        }
        let mut outcome = self.verify(&mut loaded).await;
        if outcome.ok {
            let change = self.record_verified(
                name,
                loaded.row.generation,
                previous_account(&loaded.row),
                Some(&outcome),
            )?;
            // Only a note the status reason now holds (it keeps one only while connected).
            if Status::parse(&loaded.row.status) == Status::Connected {
                outcome.account_change = change;
            }
        }
        Ok(outcome)
    }

    /// Wipe a connection's credentials; it stays, with status `revoked`, and can be
    /// connected again under the same name with the same grants. The credentials are
    /// wiped whatever the provider says; its answer to each token comes back (and goes
    /// into the status reason), so a caller can tell a grant that may still be live. A
    /// connection that holds no credentials is left as it is (`wiped` false).
    ///
    /// It takes the connection's refresh turn, so no refresh (in this process or another)
    /// stores new tokens while the old ones are being revoked. If the credentials still
    /// change meanwhile (a `connect` elsewhere), it revokes what is there now, a few
    /// times at most, and then fails rather than report a wipe that did not happen.
    pub async fn revoke(&self, name: &str) -> Result<Revocation, ConnectionError> {
        let _turn = self.gateway.storage.turn(&format!("refresh-{name}")).await;
        let mut provider = Vec::new();
        for _ in 0..REVOKE_ATTEMPTS {
            let row = self.row(name)?;
            if row.sealed.is_none() {
                // Nothing (left) to wipe: on a later attempt, someone else wiped it.
                return Ok(Revocation {
                    connection: self.show(name)?,
                    provider,
                    wiped: false,
                });
            }
            provider = self.revoke_at_provider(name, &row).await?;
            let mut reason = format!("revoked by admin at {}", crate::util::format_ms(now_ms()));
            if !provider.is_empty() {
                reason.push_str("; provider: ");
                let lines: Vec<&str> = provider.iter().map(|p| p.detail.as_str()).collect();
                reason.push_str(&lines.join("; "));
            }
            let swapped = self.gateway.storage.swap_credentials(
                name,
                row.generation,
                None,
                Status::Revoked.as_str(),
                Some(&reason),
                &serde_json::json!({}),
                false,
            )?;
            if swapped.is_some() {
                tracing::info!(connection = name, "connection revoked; credentials wiped");
                return Ok(Revocation {
                    connection: self.show(name)?,
                    provider,
                    wiped: true,
                });
            }
            tracing::info!(
                connection = name,
                "credentials changed while being revoked; revoking the new ones"
            );
        }
        Err(ConnectionError::Invalid(format!(
            "connection {name:?} kept getting new credentials while being revoked (another \
             keyhole process is connecting it); nothing was wiped: run the command again"
        )))
    }

    /// Revoke a row's OAuth tokens at the provider (RFC 7009): its answer to each.
    /// Nothing for other kinds of credentials.
    async fn revoke_at_provider(
        &self,
        name: &str,
        row: &ConnectionRow,
    ) -> Result<Vec<ProviderRevocation>, ConnectionError> {
        let service = self.catalog().require(&row.service)?.def;
        let mut provider = Vec::new();
        if service.oauth2.is_some()
            && let Some(blob) = &row.sealed
        {
            match Credentials::open(&self.gateway.sealer, name, blob) {
                Ok(creds) => {
                    provider = self
                        .gateway
                        .oauth
                        .revoke_tokens(&service, row, &creds)
                        .await
                }
                Err(e) => provider.push(ProviderRevocation {
                    outcome: RevocationOutcome::Failed,
                    detail: format!("could not open the stored tokens ({e}); wiped locally only"),
                }),
            }
        }
        Ok(provider)
    }

    /// Replace a custom service's definition. If that would send a connected
    /// connection's credentials to other origins, it is refused unless `move_credentials`
    /// confirms it (see [`Connections::edit`]).
    pub fn edit_service(
        &self,
        def: &ServiceDef,
        move_credentials: bool,
    ) -> Result<(), ConnectionError> {
        let old = self.catalog().require(&def.name)?.def;
        if !move_credentials {
            for row in self.gateway.storage.list_connections()? {
                if row.service != def.name || row.sealed.is_none() {
                    continue;
                }
                let creds = self.opened(&row)?;
                let before = origins(&old, &row, &creds);
                if let Some(after) = origins(def, &row, &creds)
                    && before.as_ref() != Some(&after)
                {
                    return Err(credentials_would_move(
                        &old,
                        &row,
                        &creds,
                        before.as_deref(),
                        &after,
                    ));
                }
            }
        }
        self.catalog().edit(def)
    }

    /// `row`'s credentials, opened (none when it holds none).
    fn opened(&self, row: &ConnectionRow) -> Result<Credentials, ConnectionError> {
        Ok(match &row.sealed {
            Some(blob) => Credentials::open(&self.gateway.sealer, &row.name, blob)?,
            None => Credentials::default(),
        })
    }

    /// Store a service's OAuth client registration (sealed), registered where the
    /// service's endpoints are with their params' defaults (see
    /// [`Self::set_oauth_client_at`]).
    pub fn set_oauth_client(
        &self,
        service: &str,
        config: &ClientConfig,
    ) -> Result<(), ConnectionError> {
        self.set_oauth_client_at(service, config, &BTreeMap::new())
            .map(drop)
    }

    /// The origins a client registration of `service` made with `params` (values of the
    /// params its token and revocation endpoints' host is built from) would be bound to.
    /// A param left out takes each of its choices, else its default; without either, it
    /// must be given.
    pub fn client_registration_origins(
        &self,
        service: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, ConnectionError> {
        let def = self.catalog().require(service)?.def;
        if def.oauth2.is_none() {
            return Err(ConnectionError::Invalid(format!(
                "service {service:?} does not use OAuth 2.0"
            )));
        }
        let hosts = crate::oauth::origin_params(&def);
        if hosts.is_empty() && !params.is_empty() {
            return Err(ConnectionError::Invalid(format!(
                "the OAuth endpoints of service {service:?} are on fixed URLs, so `set-client` takes no --param"
            )));
        }
        let mut given = BTreeMap::new();
        for (k, v) in params {
            let p = def.param(k).ok_or_else(|| unknown_param(&def))?;
            if !hosts.contains(&p.name) {
                return Err(ConnectionError::Invalid(format!(
                    "param {:?} does not decide where the OAuth endpoints of service {service:?} are; --param takes only {}",
                    p.name,
                    hosts.join(", ")
                )));
            }
            if p.secret {
                return Err(ConnectionError::Invalid(format!(
                    "param {:?} is a secret, and where a client is registered is shown; a client cannot be bound by it",
                    p.name
                )));
            }
            check_choice(p, v)?;
            given.insert(p.name.clone(), v.clone());
        }
        crate::oauth::registration_origins(&def, &given, true).map_err(|e| match e {
            crate::oauth::OriginsError::Missing(names) => ConnectionError::Invalid(format!(
                "the OAuth endpoints of service {service:?} are on the host that param {} names, and the client is sent only there: add --param {}=VALUE, the value for the host the OAuth app is registered at",
                names.join(", "),
                names[0]
            )),
            crate::oauth::OriginsError::Invalid(message) => ConnectionError::Invalid(message),
        })
    }

    /// Store a service's OAuth client registration (sealed), bound to where it is
    /// registered: its id and secret are sent only to token and revocation endpoints on
    /// the origins [`Self::client_registration_origins`] gives for `params`, which are
    /// returned.
    pub fn set_oauth_client_at(
        &self,
        service: &str,
        config: &ClientConfig,
        params: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, ConnectionError> {
        let origins = self.client_registration_origins(service, params)?;
        if config.client_id.trim().is_empty() {
            return Err(ConnectionError::Invalid(
                "the client id is empty; copy it from the OAuth app's settings at the provider"
                    .into(),
            ));
        }
        if config
            .client_secret
            .as_ref()
            .is_some_and(|s| s.expose().trim().is_empty())
        {
            return Err(ConnectionError::Invalid(
                "the client secret is empty; copy it from the OAuth app's settings at the provider (or use --public for a public client, which has none)"
                    .into(),
            ));
        }
        if let Some(url) = &config.redirect_url {
            url::Url::parse(url).map_err(|e| {
                ConnectionError::Invalid(format!("redirect URL {url:?} is invalid: {e}"))
            })?;
        }
        self.gateway.oauth.save_client(service, config, &origins)?;
        tracing::info!(service, origins = %origins.join(", "), "OAuth client configured");
        Ok(origins)
    }

    /// The OAuth client id, the exact redirect URL to register at the provider and where
    /// the client may be sent.
    pub fn oauth_client_summary(
        &self,
        service: &str,
    ) -> Result<OAuthClientSummary, ConnectionError> {
        let def = self.catalog().require(service)?.def;
        let config = self.gateway.oauth.load_client(service)?;
        let origins = match self.gateway.oauth.client_origins(&def) {
            Ok(origins) => origins,
            Err(OAuthError::ClientUnbound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let callback_url = config
            .as_ref()
            .map(|c| c.effective_redirect_url())
            .unwrap_or_else(crate::oauth::client_default_redirect);
        Ok(OAuthClientSummary {
            client_id: config.map(|c| c.client_id),
            callback_url,
            origins,
        })
    }

    /// Start authorizing an OAuth connection: the URL to open in a browser.
    pub fn begin_authorization(&self, name: &str) -> Result<PendingAuthorization, ConnectionError> {
        let row = self.row(name)?;
        let service = self.catalog().require(&row.service)?.def;
        Ok(self.gateway.oauth.begin(&service, &row)?)
    }

    /// Finish an authorization from the provider's redirect. A bad state, a provider
    /// `error=` or a failed exchange stores nothing; the reason is recorded on the
    /// connection (its status is left as it was: pending, or connected with the old tokens).
    pub async fn complete_authorization(
        &self,
        params: &CallbackParams,
        expected: Option<&str>,
    ) -> Result<ConnectionView, ConnectionError> {
        let state = params
            .state
            .as_deref()
            .ok_or_else(|| OAuthError::BadState("the callback carries no state".into()))?;
        let taken = match self.gateway.oauth.take_state(state, expected) {
            Ok(v) => v,
            Err(e) => {
                if let Some(conn) = expected {
                    self.note_failure(conn, &e.to_string());
                }
                return Err(e.into());
            }
        };
        let name = taken.connection.clone();
        let row = self.row(&name)?;
        let service = self.catalog().require(&row.service)?.def;
        // Before anything else in the response is believed (RFC 9207 §2.4).
        if let Err(e) = check_issuer(&service, params.iss.as_deref()) {
            self.note_failure(&name, &e.to_string());
            return Err(e.into());
        }
        if let Some(error) = &params.error {
            let mut why = error.clone();
            if let Some(d) = &params.error_description {
                why.push_str(": ");
                why.push_str(d);
            }
            let e = OAuthError::Denied(why);
            self.note_failure(&name, &e.to_string());
            return Err(e.into());
        }
        let code = params
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::BadState("the callback carries no code".into()))?;
        if let Err(e) = self
            .gateway
            .oauth
            .exchange(&service, &row, code, taken)
            .await
        {
            self.note_failure(&name, &e.to_string());
            return Err(e.into());
        }
        self.learn_account(&name, previous_account(&row)).await;
        self.show(&name)
    }

    /// After an authorization: ask the service's verification request whose the new
    /// tokens are, record it, and when it is not the account the connection had before,
    /// say so in the status reason (functions granted the connection now act as another
    /// account). The authorization stands whatever the verification answers; the records
    /// are written only while the credentials are still the ones just stored.
    async fn learn_account(&self, name: &str, previous: Option<(&str, &str)>) {
        let Ok(Some(mut loaded)) = self.gateway.load(name) else {
            return;
        };
        let generation = loaded.row.generation;
        let declared = loaded
            .service
            .verify
            .as_ref()
            .is_some_and(|v| !v.account.is_empty());
        let outcome = if declared {
            Some(self.verify(&mut loaded).await)
        } else {
            None
        };
        if let Some(o) = outcome.as_ref().filter(|o| !o.ok) {
            tracing::warn!(
                connection = name,
                reason = o.reason.as_deref().unwrap_or_default(),
                "authorized, but the verification request failed, so whose the tokens are is not known"
            );
        }
        match self.record_verified(name, generation, previous, outcome.as_ref()) {
            Ok(Some(_)) => tracing::warn!(
                connection = name,
                "authorized as another account than before (see `keyhole connections show`)"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(connection = name, error = %e, "cannot record the account"),
        }
    }

    /// Record whose the credentials of `generation` are, as `verification` says (unknown
    /// without one that succeeded), noting in the status reason that they are not
    /// `previous`'s. Returns that note when it was written; nothing is written once the
    /// credentials have been replaced.
    fn record_verified(
        &self,
        name: &str,
        generation: i64,
        previous: Option<(&str, &str)>,
        verification: Option<&VerifyOutcome>,
    ) -> Result<Option<String>, crate::storage::StorageError> {
        let learned = verification.and_then(VerifyOutcome::learned);
        let note = account_change(previous, learned);
        let recorded =
            self.gateway
                .storage
                .record_account(name, generation, learned, note.as_deref())?;
        Ok(note.filter(|_| recorded))
    }

    /// A failed authorization leaves the connection as it was (`connected` still works,
    /// `needs-reauth` still needs it, `revoked` holds nothing), with the failure as the
    /// reason.
    fn note_failure(&self, name: &str, reason: &str) {
        let reason = format!("authorization failed: {reason}");
        if let Err(e) = self.gateway.storage.set_status_reason(name, &reason) {
            tracing::warn!(connection = %name, error = %e, "could not record why an authorization failed");
        }
    }

    /// Delete a connection. While functions hold grants on it, nothing is deleted
    /// unless `with_grants` (the grants go with it). OAuth tokens it holds are revoked at
    /// the provider first, as [`Self::revoke`] does, so deleting never leaves a grant live
    /// there that keyhole no longer knows about; the provider's outcomes are returned.
    pub async fn delete(
        &self,
        name: &str,
        with_grants: bool,
    ) -> Result<Vec<ProviderRevocation>, ConnectionError> {
        let row = self.row(name)?;
        let grants = self.gateway.storage.grants_of_connection(name)?;
        if !grants.is_empty() && !with_grants {
            return Err(ConnectionError::InUse(format!(
                "connection {name:?} is granted to function{} {}, which would lose access; take the grant{} back first (`keyhole functions revoke-grant FUNCTION {name}`) or delete {} with it (--with-grants); nothing was deleted",
                if grants.len() == 1 { "" } else { "s" },
                grants.join(", "),
                if grants.len() == 1 { "" } else { "s" },
                if grants.len() == 1 { "it" } else { "them" },
            )));
        }
        let oauth = self.catalog().require(&row.service)?.def.oauth2.is_some();
        let provider = if oauth && row.sealed.is_some() {
            self.revoke(name).await?.provider
        } else {
            Vec::new()
        };
        if !self.gateway.storage.delete_connection(name)? {
            return Err(ConnectionError::UnknownConnection(name.to_string()));
        }
        tracing::info!(connection = name, "connection deleted");
        Ok(provider)
    }

    /// Grant `connection` to `function` (the function must exist). Returns whether the
    /// grant is new (`false`: the function already held it).
    pub fn grant(&self, function: &str, connection: &str) -> Result<bool, ConnectionError> {
        if self.gateway.storage.latest_function(function)?.is_none() {
            return Err(ConnectionError::UnknownFunction(function.to_string()));
        }
        self.row(connection)?;
        let new = self.gateway.storage.grant(function, connection)?;
        if new {
            tracing::info!(function, connection, "grant added");
        }
        Ok(new)
    }

    /// Take a grant back.
    pub fn revoke_grant(&self, function: &str, connection: &str) -> Result<(), ConnectionError> {
        if self.gateway.storage.latest_function(function)?.is_none() {
            return Err(ConnectionError::UnknownFunction(function.to_string()));
        }
        self.row(connection)?;
        if !self.gateway.storage.revoke_grant(function, connection)? {
            return Err(ConnectionError::NotGranted(format!(
                "function {function:?} holds no grant for connection {connection:?}; `keyhole functions show {function}` lists its grants"
            )));
        }
        Ok(())
    }
}

/// The note to keep when credentials that worked for `previous` now belong to `now`
/// (each (pointer, account)). Only accounts read from the same pointer compare: a
/// fallback pointer (an id where the email was) names the same account differently.
fn account_change(previous: Option<(&str, &str)>, now: Option<(&str, &str)>) -> Option<String> {
    match (previous, now) {
        (Some((was_from, was)), Some((from, now))) if was_from == from && was != now => {
            Some(format!(
                "now connected as {now:?}, not {was:?} as before: functions granted this \
                 connection act as {now:?} from now on; if that is wrong, sign in to the \
                 provider as the right account (or switch accounts there) and connect it again"
            ))
        }
        _ => None,
    }
}

/// The account a connection's stored credentials were last verified as, with its pointer.
fn previous_account(row: &ConnectionRow) -> Option<(&str, &str)> {
    Some((row.account_source.as_deref()?, row.account.as_deref()?))
}

/// RFC 9207: when the service names its issuer, the authorization response must carry
/// it as `iss`. (Without a configured issuer there is nothing to compare `iss` with.)
fn check_issuer(service: &ServiceDef, iss: Option<&str>) -> Result<(), OAuthError> {
    let Some(expected) = service.oauth2.as_ref().and_then(|o| o.issuer.as_deref()) else {
        return Ok(());
    };
    match iss {
        Some(got) if got == expected => Ok(()),
        Some(got) => {
            let got: String = got.chars().take(200).collect();
            Err(OAuthError::WrongIssuer(format!(
                "the authorization response came from issuer {got:?}, not from {expected:?}, the issuer of service {:?}",
                service.name
            )))
        }
        None => Err(OAuthError::WrongIssuer(format!(
            "the authorization response names no issuer (`iss`), but service {:?} says its provider {expected:?} always does",
            service.name
        ))),
    }
}

/// Scopes are OAuth's: on any other service they would be stored and shown, and mean
/// nothing.
fn no_scopes_without_oauth(service: &ServiceDef, scopes: &[String]) -> Result<(), ConnectionError> {
    if !scopes.is_empty() && service.oauth2.is_none() {
        return Err(ConnectionError::Invalid(format!(
            "service {:?} does not use OAuth 2.0, so --scope means nothing for it",
            service.name
        )));
    }
    Ok(())
}

/// What [`Connections::revoke`] did.
#[derive(Debug, Serialize)]
pub struct Revocation {
    /// The connection afterwards.
    pub connection: ConnectionView,
    /// The provider's answer per token (OAuth only).
    pub provider: Vec<ProviderRevocation>,
    /// Whether there were credentials to wipe (false: nothing changed).
    pub wiped: bool,
}

/// Where `row`'s credentials go under `service`: the API's allowed origins, and for
/// OAuth the token and revocation endpoints (the refresh token and client secret go
/// there). `None`: nowhere, the API endpoint does not resolve. Secret URL params
/// count, so it takes the opened credentials: a URL built from a secret token
/// must not move unnoticed either.
fn origins(service: &ServiceDef, row: &ConnectionRow, creds: &Credentials) -> Option<Vec<Origin>> {
    let endpoint = resolve_endpoint(service, row, creds).ok()?;
    let mut origins = endpoint.allowed_origins;
    if let Some(o) = &service.oauth2 {
        let params = crate::oauth::url_params(service, row);
        for template in std::iter::once(&o.token_url).chain(&o.revocation_url) {
            if let Ok(url) = service.resolve_url(template, &params) {
                origins.push(Origin::of(&url));
            }
        }
    }
    origins.sort_by_key(ToString::to_string);
    origins.dedup();
    Some(origins)
}

/// The refusal of a change that would send `row`'s stored credentials from `before`
/// to `after`, its origins scrubbed: a capability URL may hold its secret in a host
/// label.
fn credentials_would_move(
    service: &ServiceDef,
    row: &ConnectionRow,
    creds: &Credentials,
    before: Option<&[Origin]>,
    after: &[Origin],
) -> ConnectionError {
    let redactor = super::inject::redactor_for(service, creds, &row.params);
    let list = |o: &[Origin]| {
        let text = o
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        redactor.scrub(&text)
    };
    ConnectionError::Invalid(format!(
        "connection {:?} holds credentials for {}; this change would send them to {}. Check the URL, then repeat with --move-credentials, or revoke the connection first (nothing was changed)",
        row.name,
        before.map_or_else(|| "no reachable origin".to_string(), list),
        list(after)
    ))
}

fn check_override(service: &ServiceDef, url: &str) -> Result<(), ConnectionError> {
    // Resolving with the override validates it (https, or http to loopback; no userinfo).
    let mut params = BTreeMap::new();
    for p in service
        .params
        .iter()
        .filter(|p| p.location == ParamLocation::Url)
    {
        params.insert(
            p.name.clone(),
            p.default.clone().unwrap_or_else(|| "x".into()),
        );
    }
    match service.resolve(&params, Some(url)) {
        Ok(_) => Ok(()),
        Err(e @ crate::services::ServiceError::InvalidUrl { .. }) => Err(e.into()),
        Err(_) => Ok(()),
    }
}

fn check_choice(p: &ParamDef, value: &str) -> Result<(), ConnectionError> {
    if !p.choices.is_empty() && !p.choices.iter().any(|c| c == value) {
        return Err(ConnectionError::Invalid(format!(
            "{:?} must be one of: {}",
            p.display_name,
            p.choices.join(", ")
        )));
    }
    Ok(())
}

/// A `NAME=VALUE` whose name the service lacks. The name is not echoed: a secret given
/// without its name (`--param c2VjcmV0==`) splits at its own `=`.
pub(crate) fn unknown_param(service: &ServiceDef) -> ConnectionError {
    let known: Vec<String> = service
        .params
        .iter()
        .map(|p| {
            if p.display_name == p.name {
                p.name.clone()
            } else {
                format!("{} ({})", p.name, p.display_name)
            }
        })
        .collect();
    ConnectionError::Invalid(format!(
        "service {:?} has no param by the name before the `=` (not shown, in case it was a \
         secret given without its name); its params are: {}",
        service.name,
        if known.is_empty() {
            "(none)".to_string()
        } else {
            known.join(", ")
        }
    ))
}

fn dummy_endpoint() -> crate::services::Endpoint {
    let url = url::Url::parse("https://placeholder.invalid/").expect("static URL");
    crate::services::Endpoint {
        allowed_origins: vec![crate::services::Origin::of(&url)],
        base_url: url,
    }
}
