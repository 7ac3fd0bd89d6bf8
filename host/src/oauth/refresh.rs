//! Keeping access tokens fresh: refresh within the skew of expiry, force one refresh after
//! a 401, single-flight per connection (within a process and, by a file lock, across the
//! processes sharing a data directory), rotation persisted before use, a generation
//! compare-and-swap against stale writers, `invalid_grant` → needs-reauth, and backoff
//! after transient failures (no refresh storms).

use std::sync::Arc;
use std::time::Instant;

use oauth2::RefreshToken;
use zeroize::Zeroizing;

use super::flow::{describe, token_endpoint_redactor, tokens_from, url_params};
use super::{OAuth, REFRESH_SKEW, TokenInfo};
use crate::connections::gateway::Loaded;
use crate::connections::{Credentials, SendError, Status};
use crate::services::GrantType;
use crate::storage::now_ms;

/// What a guest is told when the token cannot be refreshed for now. The provider's own
/// answer goes to the connection's status (scrubbed), not to guests.
const REFRESH_FAILING: &str = "the connection's access token could not be refreshed (the provider's token endpoint is failing); keyhole retries after a backoff";

fn needs_refresh(loaded: &Loaded) -> bool {
    match loaded.creds.tokens.as_ref().and_then(|t| t.expires_at) {
        Some(at) => at - now_ms() <= REFRESH_SKEW.as_millis() as i64,
        None => false,
    }
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
        &self,
        loaded: &mut Loaded,
        force: bool,
    ) -> Result<bool, SendError> {
        if loaded.creds.tokens.is_none() {
            return Err(SendError::NotConnected);
        }
        if !force && !needs_refresh(loaded) {
            return Ok(false);
        }
        let name = loaded.row.name.clone();
        if let Some(until) = self.backoff_until(&name)
            && Instant::now() < until
        {
            // A recent refresh failed transiently: don't hammer the provider.
            return if expired(loaded) || force {
                Err(SendError::UpstreamUnreachable(REFRESH_FAILING.into()))
            } else {
                Ok(false)
            };
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
        if force {
            let has_refresh = loaded
                .creds
                .tokens
                .as_ref()
                .is_some_and(|t| t.refresh.is_some());
            let code_grant = loaded
                .service
                .oauth2
                .as_ref()
                .is_some_and(|d| d.grant == GrantType::AuthorizationCode);
            if code_grant && !has_refresh && !expired(loaded) {
                return Ok(false);
            }
            if !self.may_force_refresh(&name) {
                tracing::info!(connection = %name, "a 401 right after a forced refresh; not refreshing again yet");
                return Ok(false);
            }
        }
        self.refresh_locked(loaded, force).await
    }

    fn reload(&self, loaded: &Loaded) -> Result<Loaded, SendError> {
        let row = self
            .storage
            .get_connection(&loaded.row.name)
            .map_err(|e| host_fault(&e))?
            .ok_or(SendError::NotConnected)?;
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
            let Some(refresh) = loaded.creds.tokens.as_ref().and_then(|t| t.refresh.clone()) else {
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
            let (client, config, _) =
                match self.client_for(&loaded.service, &url_params(&loaded.service, &loaded.row)) {
                    Ok(c) => c,
                    Err(e) => {
                        return Err(SendError::UpstreamUnreachable(format!(
                            "cannot refresh: {e}"
                        )));
                    }
                };
            let refresh_token = RefreshToken::new(refresh.expose().to_string());
            let request = client
                .exchange_refresh_token(&refresh_token)
                .map_err(|e| SendError::UpstreamUnreachable(format!("cannot refresh: {e}")))?;
            let access = loaded.creds.tokens.as_ref().map(|t| t.access.expose());
            let redactor =
                token_endpoint_redactor(&config, &[refresh.expose(), access.unwrap_or_default()]);
            match request.request_async(&self.http).await {
                Ok(response) => Ok(tokens_from(
                    &response,
                    Some(refresh),
                    &loaded.row.scopes,
                    &def.scope_separator,
                )),
                Err(e) => Err(describe(&e, &redactor)),
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
                    .storage
                    .swap_credentials(
                        &name,
                        loaded.row.generation,
                        Some(&sealed),
                        Status::Connected.as_str(),
                        reason,
                        &new_info.to_json(),
                        false,
                    )
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
                if let Err(e) = self.storage.set_token_info(&name, &info.to_json()) {
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
