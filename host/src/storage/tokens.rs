//! API tokens for `keyhole serve`: only the SHA-256 hash of a token is stored, never the
//! token itself, so a copy of the database cannot be replayed against the server.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{CachedExt, Storage, StorageError, now_ms};

/// One API token as stored (no secret material: the hash stays inside storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTokenRow {
    /// Token id, shown by `keyhole tokens list` and used by `tokens revoke`.
    pub id: i64,
    /// `invoke` or `admin`.
    pub scope: String,
    /// For `invoke` tokens: the only function the token may invoke (`None`: any).
    pub function: Option<String>,
    /// Free-text note from the admin.
    pub label: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; a revoked token authenticates nothing.
    pub revoked_at: Option<i64>,
    /// Unix ms of the last authenticated request (updated at most once a minute).
    pub last_used_at: Option<i64>,
}

/// A token to insert.
#[derive(Debug)]
pub struct NewApiToken<'a> {
    /// Hex SHA-256 of the token text.
    pub token_hash: &'a str,
    /// `invoke` or `admin`.
    pub scope: &'a str,
    /// Function restriction.
    pub function: Option<&'a str>,
    /// Note.
    pub label: Option<&'a str>,
}

/// The columns `row_to_token` reads, in order.
/// A macro, so statements are `concat!`-ed at compile time.
macro_rules! token_columns {
    () => {
        "id, scope, function, label, created_at, revoked_at, last_used_at"
    };
}

fn row_to_token(r: &Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: r.get(0)?,
        scope: r.get(1)?,
        function: r.get(2)?,
        label: r.get(3)?,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
        last_used_at: r.get(6)?,
    })
}

impl Storage {
    /// Store a new token's hash; returns the stored row.
    pub fn insert_api_token(&self, t: &NewApiToken<'_>) -> Result<ApiTokenRow, StorageError> {
        let conn = self.lock()?;
        conn.execute_cached(
            "INSERT INTO api_tokens (token_hash, scope, function, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.token_hash, t.scope, t.function, t.label, now_ms()],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StorageError::Conflict("a token with this hash already exists".into())
            }
            e => self.err(e),
        })?;
        let id = conn.last_insert_rowid();
        conn.query_row_cached(
            concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE id = ?1"
            ),
            params![id],
            row_to_token,
        )
        .map_err(|e| self.err(e))
    }

    /// The token whose hash is `token_hash`, revoked or not.
    /// Runs on every authenticated request, so the statement is cached.
    pub fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiTokenRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE token_hash = ?1"
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_row(params![token_hash], row_to_token)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every token, oldest first.
    pub fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row_to_token).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Revoke token `id`: its revocation time, and whether this call revoked it
    /// (revoking twice keeps the first time); `None` when no such token exists.
    pub fn revoke_api_token(&self, id: i64) -> Result<Option<(i64, bool)>, StorageError> {
        let now = now_ms();
        let conn = self.lock()?;
        let n = conn
            .execute_cached(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )
            .map_err(|e| self.err(e))?;
        if n > 0 {
            return Ok(Some((now, true)));
        }
        let at: Option<Option<i64>> = conn
            .query_row_cached(
                "SELECT revoked_at FROM api_tokens WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(at.flatten().map(|at| (at, false)))
    }

    /// Record that token `id` was used at `at` (Unix ms).
    pub fn touch_api_token(&self, id: i64, at: i64) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_lookup_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.db")).unwrap();
        let row = s
            .insert_api_token(&NewApiToken {
                token_hash: "abc",
                scope: "invoke",
                function: Some("echo"),
                label: None,
            })
            .unwrap();
        assert_eq!(row.function.as_deref(), Some("echo"));
        assert_eq!(s.api_token_by_hash("abc").unwrap(), Some(row.clone()));
        assert!(s.api_token_by_hash("abd").unwrap().is_none());
        assert!(matches!(
            s.insert_api_token(&NewApiToken {
                token_hash: "abc",
                scope: "admin",
                function: None,
                label: None,
            }),
            Err(StorageError::Conflict(_))
        ));
        s.touch_api_token(row.id, 42).unwrap();
        let (at, now) = s.revoke_api_token(row.id).unwrap().unwrap();
        assert!(now);
        assert_eq!(s.revoke_api_token(row.id).unwrap(), Some((at, false)));
        assert_eq!(s.revoke_api_token(row.id + 100).unwrap(), None);
        let listed = s.list_api_tokens().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_used_at, Some(42));
        assert!(listed[0].revoked_at.is_some());
    }
}
