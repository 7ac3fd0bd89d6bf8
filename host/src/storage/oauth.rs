//! Pending OAuth authorizations: single-use, expiring `state` values bound to a connection.

use rusqlite::{OptionalExtension, params};

use super::{CachedExt, Storage, StorageError, now_ms, write_tx};

/// A pending authorization, taken (and deleted) by its state hash.
#[derive(Debug, Clone)]
pub struct PendingState {
    /// Connection being authorized.
    pub connection: String,
    /// The PKCE verifier, sealed.
    pub sealed_verifier: Vec<u8>,
    /// Redirect URL used in the authorization request (must be repeated at the token endpoint).
    pub redirect_url: String,
    /// The token endpoint the code is to be exchanged at (`None` in rows written before
    /// migration 13).
    pub token_url: Option<String>,
    /// Unix ms.
    pub expires_at: i64,
}

impl Storage {
    /// Record a pending authorization. Older pending ones for the same connection are
    /// dropped: only the newest authorization URL can complete.
    pub fn insert_oauth_state(
        &self,
        state_hash: &str,
        p: &PendingState,
    ) -> Result<(), StorageError> {
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        tx.execute_cached(
            "DELETE FROM oauth_states WHERE connection = ?1 OR expires_at < ?2",
            params![p.connection, now_ms()],
        )
        .map_err(|e| self.err(e))?;
        tx.execute_cached(
            "INSERT INTO oauth_states (state_hash, connection, sealed_verifier, redirect_url, created_at, expires_at, token_url) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![state_hash, p.connection, p.sealed_verifier, p.redirect_url, now_ms(), p.expires_at, p.token_url],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Take a pending authorization by state hash: it is deleted whatever happens next,
    /// so a state can be presented once.
    pub fn take_oauth_state(&self, state_hash: &str) -> Result<Option<PendingState>, StorageError> {
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        let row = tx
            .query_row_cached(
                "SELECT connection, sealed_verifier, redirect_url, expires_at, token_url FROM oauth_states WHERE state_hash = ?1",
                params![state_hash],
                |r| Ok(PendingState { connection: r.get(0)?, sealed_verifier: r.get(1)?, redirect_url: r.get(2)?, expires_at: r.get(3)?, token_url: r.get(4)? }),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        tx.execute_cached(
            "DELETE FROM oauth_states WHERE state_hash = ?1",
            params![state_hash],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(row)
    }
}
