//! Function versions and their precompiled artifacts.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{CachedExt, Storage, StorageError, now_ms, write_tx};
use crate::config::Limits;

/// A function version to insert.
#[derive(Debug)]
pub struct NewFunction<'a> {
    /// Function name.
    pub name: &'a str,
    /// SHA-256 of the wasm bytes, hex.
    pub content_hash: &'a str,
    /// The component bytes.
    pub wasm: &'a [u8],
    /// Limits for this version.
    pub limits: Limits,
}

/// A change to a function's grants, made with an upload.
#[derive(Debug, Default, Clone)]
pub struct GrantChange {
    /// Remove every grant first.
    pub reset: bool,
    /// Connections to grant.
    pub add: Vec<String>,
}

impl GrantChange {
    fn apply(&self, tx: &rusqlite::Transaction<'_>, function: &str) -> rusqlite::Result<()> {
        if self.reset {
            tx.execute_cached("DELETE FROM grants WHERE function = ?1", params![function])?;
        }
        for connection in &self.add {
            tx.execute_cached(
                "INSERT OR IGNORE INTO grants (function, connection, created_at) VALUES (?1, ?2, ?3)",
                params![function, connection, now_ms()],
            )?;
        }
        Ok(())
    }
}

/// One stored function version (without its wasm bytes).
#[derive(Debug, Clone, Serialize)]
pub struct FunctionRow {
    /// Function name.
    pub name: String,
    /// Version, starting at 1.
    pub version: i64,
    /// SHA-256 of the wasm bytes, hex.
    pub content_hash: String,
    /// Size of the wasm in bytes.
    pub size: i64,
    /// Limits for this version.
    pub limits: Limits,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A function and its latest version, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionSummary {
    /// The latest version.
    #[serde(flatten)]
    pub latest: FunctionRow,
    /// How many versions are stored.
    pub versions: i64,
}

/// The columns `row_to_function` reads, in order (the component itself is never read here).
/// A macro, so statements are `concat!`-ed at compile time.
macro_rules! function_columns {
    () => {
        "name, version, content_hash, size, limits, created_at"
    };
}

fn row_to_function(r: &Row<'_>) -> rusqlite::Result<FunctionRow> {
    let limits: String = r.get(4)?;
    Ok(FunctionRow {
        name: r.get(0)?,
        version: r.get(1)?,
        content_hash: r.get(2)?,
        size: r.get(3)?,
        // Limits are written by us as JSON; an unreadable value falls back to defaults
        // rather than making the function unusable.
        limits: serde_json::from_str(&limits).unwrap_or_default(),
        created_at: r.get(5)?,
    })
}

/// What [`Storage::delete_function`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum FunctionDeletion {
    /// Deleted: this many versions, and these schedules with them.
    Deleted {
        /// Versions removed.
        versions: usize,
        /// Schedules removed with the function.
        schedules: Vec<String>,
    },
    /// Nothing deleted: these schedules run the function.
    InUse(Vec<String>),
    /// No function by that name.
    Unknown,
}

impl Storage {
    /// Store a new version of a function (version = previous + 1) and return it, with
    /// `true`; or, when the latest version already is this component with these limits
    /// (a concurrent identical upload stored it first), that version with `false`.
    pub fn insert_function(
        &self,
        f: &NewFunction<'_>,
    ) -> Result<(FunctionRow, bool), StorageError> {
        self.insert_function_with_grants(f, &GrantChange::default())
    }

    /// [`Self::insert_function`], changing the function's grants in the same transaction
    /// (also when the version is unchanged): no invocation sees the new version with the
    /// old grants, or the grants half changed.
    pub fn insert_function_with_grants(
        &self,
        f: &NewFunction<'_>,
        grants: &GrantChange,
    ) -> Result<(FunctionRow, bool), StorageError> {
        let limits =
            serde_json::to_string(&f.limits).map_err(|e| StorageError::Malformed(e.to_string()))?;
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        grants.apply(&tx, f.name).map_err(|e| self.err(e))?;
        let latest = tx
            .query_row_cached(
                concat!(
                    "SELECT ",
                    function_columns!(),
                    " FROM functions WHERE name = ?1 ORDER BY version DESC LIMIT 1"
                ),
                params![f.name],
                row_to_function,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(latest) = latest
            && latest.content_hash == f.content_hash
            && latest.limits == f.limits
        {
            tx.commit().map_err(|e| self.err(e))?;
            return Ok((latest, false));
        }
        let version: i64 = tx
            .query_row_cached(
                "SELECT MAX(COALESCE((SELECT MAX(version) FROM functions WHERE name = ?1), 0), \
                        COALESCE((SELECT last_version FROM retired_versions WHERE name = ?1), 0)) + 1",
                params![f.name],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        tx.execute_cached(
            "INSERT INTO functions (name, version, content_hash, limits, created_at, size, wasm) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![f.name, version, f.content_hash, limits, now_ms(), f.wasm.len() as i64, f.wasm],
        )
        .map_err(|e| self.err(e))?;
        let row = tx
            .query_row_cached(
                concat!(
                    "SELECT ",
                    function_columns!(),
                    " FROM functions WHERE name = ?1 AND version = ?2"
                ),
                params![f.name, version],
                row_to_function,
            )
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok((row, true))
    }

    /// Change a function's grants in one transaction.
    pub fn change_grants(&self, function: &str, change: &GrantChange) -> Result<(), StorageError> {
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        change.apply(&tx, function).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The latest version of `name`, if any.
    pub fn latest_function(&self, name: &str) -> Result<Option<FunctionRow>, StorageError> {
        self.read()?
            .query_row_cached(
                concat!(
                    "SELECT ",
                    function_columns!(),
                    " FROM functions WHERE name = ?1 ORDER BY version DESC LIMIT 1"
                ),
                params![name],
                row_to_function,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every version of `name`, newest first.
    pub fn function_versions(&self, name: &str) -> Result<Vec<FunctionRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                function_columns!(),
                " FROM functions WHERE name = ?1 ORDER BY version DESC"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![name], row_to_function)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every function with its latest version, by name.
    pub fn list_functions(&self) -> Result<Vec<FunctionSummary>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!("SELECT ", function_columns!(), ", (SELECT COUNT(*) FROM functions g WHERE g.name = f.name) FROM functions f \
                 WHERE version = (SELECT MAX(version) FROM functions h WHERE h.name = f.name) ORDER BY name"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(FunctionSummary {
                    latest: row_to_function(r)?,
                    versions: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The wasm bytes with this content hash.
    pub fn function_wasm(&self, content_hash: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT wasm FROM functions WHERE content_hash = ?1 LIMIT 1",
                params![content_hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Delete every version of `name`, its grants and its state, in one transaction.
    /// When schedules run it, they are deleted too if `schedules_too`, or else nothing
    /// is. Invocation records stay: they are history (and the numbering of versions
    /// goes on if the name is uploaded again).
    pub fn delete_function(
        &self,
        name: &str,
        schedules_too: bool,
    ) -> Result<FunctionDeletion, StorageError> {
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        let schedules: Vec<String> = {
            let mut stmt = tx
                .prepare_cached("SELECT name FROM schedules WHERE function = ?1 ORDER BY name")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![name], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        if !schedules.is_empty() && !schedules_too {
            return Ok(FunctionDeletion::InUse(schedules));
        }
        tx.execute_cached(
            "INSERT INTO retired_versions (name, last_version) \
             SELECT name, MAX(version) FROM functions WHERE name = ?1 GROUP BY name \
             ON CONFLICT (name) DO UPDATE SET last_version = MAX(last_version, excluded.last_version)",
            params![name],
        )
        .map_err(|e| self.err(e))?;
        let n = tx
            .execute_cached("DELETE FROM functions WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Ok(FunctionDeletion::Unknown);
        }
        tx.execute_cached("DELETE FROM schedules WHERE function = ?1", params![name])
            .map_err(|e| self.err(e))?;
        tx.execute_cached("DELETE FROM grants WHERE function = ?1", params![name])
            .map_err(|e| self.err(e))?;
        tx.execute_cached("DELETE FROM kv WHERE function = ?1", params![name])
            .map_err(|e| self.err(e))?;
        tx.execute_cached(
            "DELETE FROM artifacts WHERE content_hash NOT IN (SELECT content_hash FROM functions)",
            [],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(FunctionDeletion::Deleted {
            versions: n,
            schedules,
        })
    }

    /// The precompiled artifact for a content hash and engine compatibility hash.
    pub fn artifact(
        &self,
        content_hash: &str,
        engine_hash: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT artifact FROM artifacts WHERE content_hash = ?1 AND engine_hash = ?2",
                params![content_hash, engine_hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Whether an artifact for `content_hash` compiled by `engine_hash` is stored.
    pub fn has_artifact(
        &self,
        content_hash: &str,
        engine_hash: &str,
    ) -> Result<bool, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT EXISTS (SELECT 1 FROM artifacts WHERE content_hash = ?1 AND engine_hash = ?2)",
                params![content_hash, engine_hash],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Store a precompiled artifact (idempotent).
    pub fn put_artifact(
        &self,
        content_hash: &str,
        engine_hash: &str,
        artifact: &[u8],
    ) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                "INSERT OR REPLACE INTO artifacts (content_hash, engine_hash, artifact, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![content_hash, engine_hash, artifact, now_ms()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}
