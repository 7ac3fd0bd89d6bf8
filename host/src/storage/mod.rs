//! SQLite persistence: the only module that knows SQL.
//!
//! One database file in the data directory, WAL mode, versioned migrations applied in
//! order at open. Every other module talks to [`Storage`] through typed methods; sealed
//! credential blobs pass through here opaque (this module never sees plaintext secrets).

mod connections;
mod functions;
mod invocations;
mod kv;
mod migrations;
mod oauth;
mod recorder;
mod schedules;
mod tokens;

pub use connections::{CallConnection, ConnectionRow, GrantRow, ServiceRow};
pub use functions::{FunctionRow, FunctionSummary, NewFunction};
pub use invocations::{InvocationRow, OutboundCall};
pub use oauth::PendingState;
pub use recorder::Recorder;
pub use schedules::ScheduleRow;
pub use tokens::{ApiTokenRow, NewApiToken};

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be opened or queried.
    #[error("database error in {path}: {source}")]
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer keyhole.
    #[error(
        "database {path} has schema version {found}, newer than this keyhole understands ({supported}); upgrade keyhole"
    )]
    TooNew {
        /// Path of the database file.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// A stored JSON column did not parse.
    #[error("stored record is malformed: {0}")]
    Malformed(String),
    /// A uniqueness rule was violated.
    #[error("{0}")]
    Conflict(String),
    /// Storage work on a background task or thread failed: a batched write (the
    /// underlying error as text, since one failure answers every record of the batch), or
    /// the writer or checkpoint thread could not run.
    #[error("background storage work failed: {0}")]
    Background(String),
}

/// Statements kept prepared per connection: enough for every distinct statement in
/// this module, so a hot-path query is parsed once per process, not once per call.
const STATEMENT_CACHE: usize = 128;

/// `query_row` and `execute` through the connection's prepared-statement cache.
trait CachedExt {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl CachedExt for Connection {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// Handle to the database. Calls are short, so one connection behind a mutex is enough.
pub struct Storage {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

/// The background checkpointer of [`Storage::checkpoint_in_background`]; dropping it
/// runs a last checkpoint and joins the thread.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Current time as Unix milliseconds (every timestamp column uses this).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Storage {
    /// Open (creating if needed) the database at `path` and apply pending migrations.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let err = |source| StorageError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        migrations::apply(&mut conn, path)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each call is
        // one statement or one transaction), so recover from poisoning.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> StorageError {
        StorageError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Move WAL checkpoints off the write path for a long-running process: commits stop
    /// checkpointing (a checkpoint writes the database file and syncs, which would stall
    /// whichever invocation's commit triggered it), and a background thread with its own
    /// connection checkpoints every `every` instead. Stops when the returned value drops.
    pub fn checkpoint_in_background(&self, every: Duration) -> Result<Checkpointer, StorageError> {
        let conn = Connection::open(&self.path).map_err(|e| self.err(e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = self.path.clone();
        let thread = std::thread::Builder::new()
            .name("keyhole-checkpoint".into())
            .spawn(move || {
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(every),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    // PASSIVE: copies what it can without waiting for or blocking anyone.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(database = %path.display(), error = %e, "WAL checkpoint failed; will retry");
                    }
                    if last {
                        break;
                    }
                }
            })
            .map_err(|e| StorageError::Background(format!("cannot start the checkpoint thread: {e}")))?;
        self.lock()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| self.err(e))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Read a value from the `meta` table.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.lock()
            .query_row_cached("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Write a value into the `meta` table.
    pub fn meta_set(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.lock()
            .execute_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> InvocationRow {
        InvocationRow {
            logs: vec!["INFO ".repeat(200)],
            ..InvocationRow::for_test("f")
        }
    }

    /// Write 200 rows, one commit each (well under the default 1000-page autocheckpoint),
    /// and return the WAL's size afterwards.
    fn write_batch(s: &Storage) -> u64 {
        for _ in 0..200 {
            s.insert_invocation(&row()).unwrap();
        }
        std::fs::metadata(s.path().with_extension("db-wal"))
            .unwrap()
            .len()
    }

    #[test]
    fn the_background_checkpointer_lets_the_wal_be_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.db")).unwrap();
        let checkpointer = s
            .checkpoint_in_background(Duration::from_millis(5))
            .unwrap();
        let first = write_batch(&s);
        std::thread::sleep(Duration::from_millis(100));
        // Checkpointed in the background, so the next commits rewrite the WAL from its
        // start instead of appending (commits no longer checkpoint themselves).
        let second = write_batch(&s);
        assert!(
            second < first + first / 2,
            "WAL grew from {first} to {second}"
        );
        drop(checkpointer);
        assert_eq!(s.recent_invocations(None, 1000).unwrap().len(), 400);
    }

    #[test]
    fn without_checkpoints_the_wal_keeps_growing() {
        // The control for the test above: with commits not checkpointing and no
        // background thread, the second batch appends.
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.db")).unwrap();
        s.lock()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        let first = write_batch(&s);
        let second = write_batch(&s);
        assert!(
            second > first + first / 2,
            "WAL went from {first} to {second}"
        );
    }
}
