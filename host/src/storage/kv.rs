//! Per-function key-value state. Writes arrive as one batch per successful invocation.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{CachedExt, Storage, StorageError, now_ms, write_tx};

/// What each entry counts toward a function's state quota beyond its key and value:
/// about what its row and index entry take on disk. Without it, a function storing empty
/// values under short keys would fit millions of entries in its quota.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

impl Storage {
    /// The value of `key` in `function`'s namespace.
    pub fn kv_get(&self, function: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT value FROM kv WHERE function = ?1 AND key = ?2",
                params![function, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Keys of `function` starting with `prefix`, ascending.
    pub fn kv_keys(&self, function: &str, prefix: &str) -> Result<Vec<String>, StorageError> {
        let conn = self.read()?;
        // `substr` rather than LIKE: keys may contain % and _.
        let mut stmt = conn
            .prepare_cached("SELECT key FROM kv WHERE function = ?1 AND substr(key, 1, length(?2)) = ?2 ORDER BY key")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![function, prefix], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Bytes `function` stores, as its quota counts them: keys plus values, plus
    /// [`ENTRY_OVERHEAD_BYTES`] an entry.
    pub fn kv_total(&self, function: &str) -> Result<u64, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value) + ?2), 0) FROM kv WHERE function = ?1",
                params![function, ENTRY_OVERHEAD_BYTES as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// What one key of `function` counts toward its quota (key plus value plus
    /// [`ENTRY_OVERHEAD_BYTES`]), 0 if absent.
    pub fn kv_entry_size(&self, function: &str, key: &str) -> Result<u64, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT length(CAST(key AS BLOB)) + length(value) + ?3 FROM kv WHERE function = ?1 AND key = ?2",
                params![function, key, ENTRY_OVERHEAD_BYTES as i64],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Apply the writes of one invocation of `function` at `version` atomically (`None`
    /// deletes). If the function was deleted while the invocation ran, its state went with
    /// it, and nothing is written: a function uploaded later under that name starts with
    /// no state, even when that upload came before this commit (versions are never
    /// reused, and only deleting the function removes one).
    pub fn kv_commit(
        &self,
        function: &str,
        version: i64,
        writes: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        let exists: bool = tx
            .query_row_cached(
                "SELECT EXISTS (SELECT 1 FROM functions WHERE name = ?1 AND version = ?2)",
                params![function, version],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if !exists {
            return Ok(());
        }
        let now = now_ms();
        for (key, value) in writes {
            match value {
                Some(v) => tx.execute_cached(
                    "INSERT INTO kv (function, key, value, updated_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT(function, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    params![function, key, v, now],
                ),
                None => tx.execute_cached("DELETE FROM kv WHERE function = ?1 AND key = ?2", params![function, key]),
            }
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}
