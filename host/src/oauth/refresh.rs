//! Keeping access tokens fresh: refresh within the skew of expiry, force one refresh after
//! a 401, single-flight per connection (within a process and, by a file lock, across the
//! processes sharing a data directory), rotation persisted before use, a generation
//! compare-and-swap against stale writers, `invalid_grant` → needs-reauth, backoff
//! after transient failures (no refresh storms), and keep-alive refreshes of grants
//! nothing has refreshed for a while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oauth2::RefreshToken;
use zeroize::Zeroizing;

use super::flow::{describe, token_endpoint_redactor, tokens_from, url_params};
use super::{OAuth, REFRESH_SKEW, TokenInfo};
use crate::connections::gateway::Loaded;
use crate::connections::{Credentials, SendError, Status};
use crate::services::GrantType;
use crate::storage::{ConnectionRow, StorageError, now_ms};

/// What a guest is told when the token cannot be refreshed for now. The provider's own
/// answer goes to the connection's status (scrubbed), not to guests.
const REFRESH_FAILING: &str = "the connection's access token could not be refreshed (`keyhole connections show` tells an admin why); keyhole retries after a backoff";

/// How long a refresh keeps trying to store its answer before giving up on it.
pub(super) const STORE_PATIENCE: Duration = Duration::from_secs(30);

fn needs_refresh(loaded: &Loaded) -> bool {
    match loaded.creds.tokens.as_ref().and_then(|t| t.expires_at) {
        Some(at) => at - now_ms() <= REFRESH_SKEW.as_millis() as i64,
        None => false,
    }
}

/// Whether `row` is a connected grant with a refresh token that nothing has refreshed,
/// nor anyone connected, for `idle`: due a keep-alive refresh ([`OAuth::keep_alive`]).
/// A failed refresh counts as one, so a failing provider is asked again only after
/// `idle` (and after its backoff).
pub(crate) fn idle_for(row: &ConnectionRow, idle: Duration) -> bool {
    let info = TokenInfo::from_json(&row.token_info);
    if Status::parse(&row.status) != Status::Connected || !info.has_refresh_token {
        return false;
    }
    let last = [info.last_refresh_at, row.connected_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(row.created_at);
    now_ms().saturating_sub(last) >= idle.as_millis().min(i64::MAX as u128) as i64
}

/// Whether `loaded` is an authorization-code grant (the kind a refresh token serves).
fn code_grant(loaded: &Loaded) -> bool {
    loaded
        .service
        .oauth2
        .as_ref()
        .is_some_and(|d| d.grant == GrantType::AuthorizationCode)
}

fn expired(loaded: &Loaded) -> bool {
    loaded
        .creds
        .tokens
        .as_ref()
        .and_then(|t| t.expires_at)
        .is_some_and(|at| at <= now_ms())
}

impl OAuth {
    /// Make sure `loaded` holds a usable access token. With `force`, the upstream just
    /// answered 401 to the token in `loaded`: refresh unless someone already did. Returns
    /// whether `loaded` now holds different credentials (only then is a retry worth it).
    ///
    /// A 401 forces at most one refresh per connection every [`super::FORCED_REFRESH_COOLDOWN`],
    /// so a guest calling an endpoint that always answers 401 cannot make keyhole hammer
    /// the provider's token endpoint; within it the 401 goes back to the guest. Without a
    /// refresh token, a 401 on a token that has not expired goes back to the guest too: it
    /// does not prove the grant dead, and any granted guest could provoke one.
    pub(crate) async fn ensure_fresh(
        self: &Arc<Self>,
        loaded: &mut Loaded,
        force: bool,
    ) -> Result<bool, SendError> {
        if loaded.creds.tokens.is_none() {
            return Err(SendError::NotConnected);
        }
        if !force && !needs_refresh(loaded) {
            return Ok(false);
        }
        // The rest runs as a task of its own, awaited here. The caller can be cancelled at
        // any await (an invocation's timeout, a client that hung up), and a refresh the
        // provider has answered must be stored all the same: the provider may have
        // rotated the refresh token, and the old one, presented again, reads as reuse
        // (`invalid_grant`; with reuse detection the whole grant is revoked). The task
        // holds the refresh turn until it has stored the answer, whoever still waits.
        let this = Arc::clone(self);
        let mut owned = loaded.clone();
        let task = self.refreshes.spawn(async move {
            let answer = this.refresh_if_still_needed(&mut owned, force).await;
            (owned, answer)
        });
        match task.await {
            Ok((owned, answer)) => {
                *loaded = owned;
                answer
            }
            Err(e) => Err(host_fault(&e)),
        }
    }

    /// Refresh `loaded`'s grant if it is [`idle_for`] `idle`, as a task of its own (like
    /// [`OAuth::ensure_fresh`], so a caller cut off cannot lose a rotated token). Whether
    /// it refreshed; `NotConnected` when the provider refused the refresh token (the
    /// connection then needs re-authorization).
    ///
    /// Providers end refresh tokens left unused (Microsoft after 90 days, Salesforce and
    /// Okta by policy): a connection that functions call rarely would otherwise be found
    /// dead only when one calls it. This keeps it alive, and finds a dead grant early.
    pub(crate) async fn keep_alive(
        self: &Arc<Self>,
        mut loaded: Loaded,
        idle: Duration,
    ) -> Result<bool, SendError> {
        let this = Arc::clone(self);
        let task = self
            .refreshes
            .spawn(async move { this.refresh_if_idle(&mut loaded, idle).await });
        task.await.map_err(|e| host_fault(&e))?
    }

    /// [`OAuth::keep_alive`]'s work: take the connection's turn, look again, and refresh
    /// if it is still idle (a call or another process may have refreshed meanwhile).
    async fn refresh_if_idle(
        &self,
        loaded: &mut Loaded,
        idle: Duration,
    ) -> Result<bool, SendError> {
        // Client credentials hold no refresh token to keep alive: a new token is simply
        // fetched when one is needed.
        if !code_grant(loaded) {
            return Ok(false);
        }
        let name = loaded.row.name.clone();
        let _turn = self.storage.turn(&format!("refresh-{name}")).await;
        *loaded = self.reload(loaded)?;
        if !idle_for(&loaded.row, idle) || self.backed_off(loaded, false).is_some() {
            return Ok(false);
        }
        self.refresh_locked(loaded, false).await
    }

    /// [`OAuth::ensure_fresh`]'s work once a refresh looks due: take the connection's
    /// turn, look again, and refresh if nobody else did.
    async fn refresh_if_still_needed(
        &self,
        loaded: &mut Loaded,
        force: bool,
    ) -> Result<bool, SendError> {
        let name = loaded.row.name.clone();
        if let Some(answer) = self.backed_off(loaded, force) {
            return answer;
        }

        // Single flight: one refresh per connection, in this process and across the
        // processes on this data directory, so a rotating refresh token is never
        // presented twice (providers answer reuse by revoking the grant). If the lock file
        // cannot be used, the generation compare-and-swap still keeps stale writes out.
        let _turn = self.storage.turn(&format!("refresh-{name}")).await;
        // Someone may have refreshed while we waited: re-read before asking the provider.
        // (The re-read also brings the refresh token, which the gateway keeps no copy of.)
        let current = self.reload(loaded)?;
        let refreshed_meanwhile = current.row.generation != loaded.row.generation;
        *loaded = current;
        if refreshed_meanwhile {
            if Status::parse(&loaded.row.status) != Status::Connected {
                return Err(SendError::NotConnected);
            }
            return Ok(true);
        }
        // The refresh that held the turn may have failed transiently: then the callers
        // queued behind it take its answer rather than each asking the provider again.
        if let Some(answer) = self.backed_off(loaded, force) {
            return answer;
        }
        if force {
            let has_refresh = loaded
                .creds
                .tokens
                .as_ref()
                .is_some_and(|t| t.refresh.is_some());
            if code_grant(loaded) && !has_refresh && !expired(loaded) {
                return Ok(false);
            }
            if !self.may_force_refresh(&name) {
                tracing::info!(connection = %name, "a 401 right after a forced refresh; not refreshing again yet");
                return Ok(false);
            }
        }
        self.refresh_locked(loaded, force).await
    }

    /// While a transient refresh failure's backoff lasts: the answer, without asking the
    /// provider. `None` when there is no backoff.
    fn backed_off(&self, loaded: &Loaded, force: bool) -> Option<Result<bool, SendError>> {
        let until = self.backoff_until(&loaded.row.name)?;
        if Instant::now() >= until {
            return None;
        }
        Some(if expired(loaded) || force {
            Err(SendError::UpstreamUnreachable(REFRESH_FAILING.into()))
        } else {
            Ok(false)
        })
    }

    /// The connection's row and credentials as stored now. `NotConnected` if it is gone or
    /// is no longer the connection `loaded` was opened from (deleted and added again, or
    /// pointed elsewhere): the request in flight was built for that one's service and
    /// endpoint, and new credentials must not go there.
    fn reload(&self, loaded: &Loaded) -> Result<Loaded, SendError> {
        let row = self
            .storage
            .get_connection(&loaded.row.name)
            .map_err(|e| host_fault(&e))?
            .ok_or(SendError::NotConnected)?;
        let was = &loaded.row;
        if (&row.service, &row.base_url, &row.params, row.created_at)
            != (&was.service, &was.base_url, &was.params, was.created_at)
        {
            return Err(SendError::NotConnected);
        }
        let creds = match &row.sealed {
            Some(blob) => {
                Credentials::open(&self.sealer, &row.name, blob).map_err(|e| host_fault(&e))?
            }
            None => Credentials::default(),
        };
        Ok(Loaded::new(
            row,
            loaded.service.clone(),
            creds,
            loaded.endpoint.clone(),
        ))
    }

    async fn refresh_locked(&self, loaded: &mut Loaded, force: bool) -> Result<bool, SendError> {
        let name = loaded.row.name.clone();
        let def = loaded
            .service
            .oauth2
            .clone()
            .ok_or(SendError::NotConnected)?;
        let mut info = TokenInfo::from_json(&loaded.row.token_info);
        info.last_refresh_at = Some(now_ms());

        let result = if def.grant == GrantType::ClientCredentials {
            // Its errors come scrubbed of the client secret.
            self.fetch_client_credentials(&loaded.service, &loaded.row)
                .await
                .map_err(|e| (false, e.to_string()))
        } else {
            'refresh: {
                let Some(refresh) = loaded.creds.tokens.as_ref().and_then(|t| t.refresh.clone())
                else {
                    if !expired(loaded) {
                        // Within the skew of expiry, but still good: use it while it lasts.
                        return Ok(false);
                    }
                    self.mark_needs_reauth(
                        loaded,
                        "the access token expired and the provider issued no refresh token",
                    )?;
                    return Err(SendError::NotConnected);
                };
                let (client, config, _) = match self.client_for(
                    &loaded.service,
                    &loaded.row.name,
                    &url_params(&loaded.service, &loaded.row),
                ) {
                    Ok(c) => c,
                    // keyhole's own refusal (no client, or one registered elsewhere than
                    // this connection's token endpoint): handled as a failure that may
                    // pass (an admin fixes it), so it is logged, shown by `connections
                    // show`, backed off, and the guest gets the fixed message.
                    Err(e) => break 'refresh Err((false, format!("cannot refresh: {e}"))),
                };
                let refresh_token = RefreshToken::new(refresh.expose().to_string());
                let request = client
                    .exchange_refresh_token(&refresh_token)
                    .map_err(|e| SendError::UpstreamUnreachable(format!("cannot refresh: {e}")))?;
                let access = loaded.creds.tokens.as_ref().map(|t| t.access.expose());
                let redactor = token_endpoint_redactor(
                    &config,
                    &[refresh.expose(), access.unwrap_or_default()],
                );
                // An answer without `scope` leaves the grant's scopes as they were (RFC 6749
                // §5.1), not as requested since (`connections edit --scope` asks at the next
                // authorization).
                let unchanged = if info.granted_scopes.is_empty() {
                    &loaded.row.scopes
                } else {
                    &info.granted_scopes
                };
                match request.request_async(&super::token::Http(&self.http)).await {
                    Ok(response) => Ok(tokens_from(
                        &response,
                        Some(refresh),
                        unchanged,
                        &def.scope_separator,
                    )),
                    Err(e) => Err(describe(&e, &redactor, &def.reauth_errors)),
                }
            }
        };

        match result {
            Ok((tokens, mut new_info)) => {
                crate::metrics::token_refresh(crate::metrics::RefreshOutcome::Ok);
                new_info.last_refresh_at = info.last_refresh_at;
                new_info.last_refresh_outcome = Some("ok".into());
                let creds = Credentials {
                    params: loaded.creds.params.clone(),
                    tokens: Some(tokens),
                };
                // Persist (sealed) before anyone uses the new token: a rotated refresh
                // token that only lived in memory would be lost with the process.
                let sealed = Zeroizing::new(creds.seal(&self.sealer, &name));
                // The same grant, refreshed: what the status reason says about it (another
                // account than before, a failed re-authorization) still holds.
                let reason = (Status::parse(&loaded.row.status) == Status::Connected)
                    .then_some(loaded.row.status_reason.as_deref())
                    .flatten();
                let swapped = self
                    .store_refreshed(
                        &name,
                        loaded.row.generation,
                        &sealed,
                        reason,
                        &new_info.to_json(),
                    )
                    .await
                    .map_err(|e| host_fault(&e))?;
                match swapped {
                    Some(generation) => {
                        let row = Arc::make_mut(&mut loaded.row);
                        row.generation = generation;
                        row.token_info = new_info.to_json();
                        loaded.set_creds(creds);
                        self.note_success(&name);
                        tracing::info!(connection = %name, "access token refreshed");
                        Ok(true)
                    }
                    None => {
                        // Another writer stored newer credentials first (another process's
                        // refresh), or an admin revoked or reconnected meanwhile: use what
                        // is stored now, if anything.
                        *loaded = self.reload(loaded)?;
                        if Status::parse(&loaded.row.status) != Status::Connected
                            || loaded.creds.tokens.is_none()
                        {
                            return Err(SendError::NotConnected);
                        }
                        Ok(true)
                    }
                }
            }
            Err((true, reason)) => {
                crate::metrics::token_refresh(crate::metrics::RefreshOutcome::InvalidGrant);
                // invalid_grant: unless someone else refreshed meanwhile, the grant is dead.
                let current = self.reload(loaded)?;
                if current.row.generation != loaded.row.generation {
                    *loaded = current;
                    if Status::parse(&loaded.row.status) != Status::Connected {
                        return Err(SendError::NotConnected);
                    }
                    return Ok(true);
                }
                tracing::warn!(connection = %name, "refresh token rejected (invalid_grant); connection needs re-authorization");
                self.mark_needs_reauth(
                    loaded,
                    &format!("the provider rejected the refresh token ({reason})"),
                )?;
                Err(SendError::NotConnected)
            }
            Err((false, reason)) => {
                crate::metrics::token_refresh(crate::metrics::RefreshOutcome::Transient);
                let wait = self.note_failure(&name);
                tracing::warn!(connection = %name, %reason, retry_in_s = wait.as_secs(), "token refresh failed transiently");
                info.last_refresh_outcome = Some(format!("transient: {reason}"));
                // Only onto the grant this refresh was for: a re-authorization meanwhile
                // has facts of its own.
                let generation = loaded.row.generation;
                if let Err(e) = self
                    .storage
                    .set_token_info(&name, generation, &info.to_json())
                {
                    tracing::warn!(error = %e, "could not record the refresh outcome");
                }
                // After a 401 the current token is known bad; otherwise it may still serve.
                // The guest gets a fixed message: the provider's text is for admins.
                if expired(loaded) || force {
                    Err(SendError::UpstreamUnreachable(REFRESH_FAILING.into()))
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// Store the tokens a refresh brought, trying again for up to [`STORE_PATIENCE`] when
    /// the database refuses (another process's lock held past the busy timeout, a full
    /// disk): if the provider rotated the refresh token, these are its only copy, and the
    /// turn held meanwhile keeps anyone from presenting the old one.
    async fn store_refreshed(
        &self,
        name: &str,
        generation: i64,
        sealed: &[u8],
        reason: Option<&str>,
        token_info: &serde_json::Value,
    ) -> Result<Option<i64>, StorageError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let stored = self.storage.swap_credentials(
                name,
                generation,
                Some(sealed),
                Status::Connected.as_str(),
                reason,
                token_info,
                false,
            );
            match stored {
                Err(e) if e.may_pass_later() && started.elapsed() < STORE_PATIENCE => {
                    tracing::warn!(connection = %name, error = %e, "could not store the refreshed tokens yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(connection = %name, error = %e, "could not store the refreshed tokens; if the provider rotated the refresh token, the connection will need re-authorization");
                    return Err(e);
                }
                Ok(generation) => return Ok(generation),
            }
        }
    }

    fn mark_needs_reauth(&self, loaded: &Loaded, reason: &str) -> Result<(), SendError> {
        let mut info = TokenInfo::from_json(&loaded.row.token_info);
        info.last_refresh_at = Some(now_ms());
        info.last_refresh_outcome = Some("invalid_grant".into());
        let reason = format!(
            "{reason}; reconnect with `keyhole connections connect {}`",
            loaded.row.name
        );
        self.storage
            .swap_credentials(
                &loaded.row.name,
                loaded.row.generation,
                loaded.row.sealed.as_deref(),
                Status::NeedsReauth.as_str(),
                Some(&reason),
                &info.to_json(),
                false,
            )
            .map_err(|e| host_fault(&e))?;
        Ok(())
    }
}

fn host_fault(e: &dyn std::fmt::Display) -> SendError {
    tracing::error!(error = %e, "host fault while refreshing a token");
    SendError::UpstreamUnreachable("keyhole host error; see the host's logs".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{MasterKey, Sealer};
    use crate::services::ServiceDef;
    use crate::storage::{ConnectionRow, Storage};

    fn row(params: &[(&str, &str)], created_at: i64) -> ConnectionRow {
        ConnectionRow {
            name: "c".into(),
            service: "acme".into(),
            status: "connected".into(),
            status_reason: None,
            scopes: vec![],
            base_url: None,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sealed: None,
            generation: 0,
            token_info: serde_json::json!({}),
            created_at,
            connected_at: None,
            last_used_at: None,
            account: None,
            account_source: None,
        }
    }

    #[test]
    fn a_grant_is_idle_from_its_last_refresh_or_connect_whichever_is_later() {
        let hour = Duration::from_secs(3600);
        let now = now_ms();
        let at = |token_info: serde_json::Value, connected_at: Option<i64>| {
            let mut r = row(&[], now - 10 * 3_600_000);
            r.token_info = token_info;
            r.connected_at = connected_at;
            r
        };
        let refreshed = |ago_h: i64| serde_json::json!({"has_refresh_token": true, "last_refresh_at": now - ago_h * 3_600_000});
        assert!(idle_for(&at(refreshed(2), None), hour));
        assert!(!idle_for(&at(refreshed(0), None), hour), "just refreshed");
        assert!(
            !idle_for(&at(refreshed(2), Some(now)), hour),
            "just connected"
        );
        // Neither: from its creation.
        assert!(idle_for(
            &at(serde_json::json!({"has_refresh_token": true}), None),
            hour
        ));
        // Nothing to refresh with, or not connected: never due.
        assert!(!idle_for(
            &at(serde_json::json!({"last_refresh_at": 0}), None),
            hour
        ));
        let mut r = at(refreshed(2), None);
        r.status = "needs-reauth".into();
        assert!(!idle_for(&r, hour));
        assert!(idle_for(&at(refreshed(0), None), Duration::ZERO));
    }

    #[test]
    fn a_reload_refuses_a_connection_that_is_no_longer_the_one_opened() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("db")).unwrap());
        let oauth = OAuth::new(
            storage.clone(),
            Arc::new(Sealer::new(&MasterKey::from_bytes([3; 32]))),
        );
        let service = ServiceDef::from_toml(crate::services::MINIMAL).unwrap();
        let endpoint = service.resolve(&Default::default(), None).unwrap();
        let opened = row(&[("site", "a")], 1);
        storage.insert_connection(&opened).unwrap();
        let loaded = Loaded::new(opened, service, Credentials::default(), endpoint);
        assert!(oauth.reload(&loaded).is_ok(), "unchanged");

        // Pointed elsewhere while a request was in flight.
        storage
            .update_connection_settings(&row(&[("site", "b")], 1))
            .unwrap();
        assert!(matches!(
            oauth.reload(&loaded),
            Err(SendError::NotConnected)
        ));
        // Deleted and added again under the same name, settings as before.
        storage.delete_connection("c").unwrap();
        storage
            .insert_connection(&row(&[("site", "a")], 2))
            .unwrap();
        assert!(matches!(
            oauth.reload(&loaded),
            Err(SendError::NotConnected)
        ));
        storage.delete_connection("c").unwrap();
        assert!(matches!(
            oauth.reload(&loaded),
            Err(SendError::NotConnected)
        ));
    }
}
