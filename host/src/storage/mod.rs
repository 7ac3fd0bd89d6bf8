//! SQLite persistence: the only module that knows SQL.
//!
//! One database file in the data directory, WAL mode, versioned migrations applied in
//! order at open. Every other module talks to [`Storage`] through typed methods; sealed
//! credential blobs pass through here opaque (this module never sees plaintext secrets).

mod busy;
pub use busy::BUSY_TIMEOUT;
mod connections;
mod functions;
mod invocations;
mod kv;
pub mod locks;
mod migrations;
mod oauth;
mod recorder;
mod schedules;
mod tokens;

pub use connections::{CallConnection, ConnectionRow, GrantRow, ServiceRow};
pub use functions::{FunctionDeletion, FunctionRow, FunctionSummary, GrantChange, NewFunction};
pub use invocations::{InvocationRow, OutboundCall};
pub use kv::ENTRY_OVERHEAD_BYTES;
pub use oauth::PendingState;
pub use recorder::Recorder;
pub use schedules::ScheduleRow;
pub use tokens::{ApiTokenRow, NewApiToken};

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
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
    /// The database file could not be created.
    #[error(
        "cannot create the database file {path}: {source}; check the data directory's permissions, or use another with --home"
    )]
    Create {
        /// Path of the database file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
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
    /// Another process held the database's lock for longer than the busy timeout.
    #[error(
        "the database {path} stayed locked by another process (another keyhole, a backup, an sqlite3 shell) for {}s; retry, and if it persists find the process holding it (`fuser {path}`)", busy::BUSY_TIMEOUT.as_secs()
    )]
    Busy {
        /// Path of the database file.
        path: PathBuf,
    },
}

impl StorageError {
    /// Classify an SQLite error on the database at `path`.
    fn from_sqlite(path: &Path, source: rusqlite::Error) -> Self {
        // Plain SQLITE_BUSY: the busy handler waited its full time. (Write transactions
        // are IMMEDIATE, so the no-wait BUSY_SNAPSHOT does not arise.)
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) => Self::Busy {
                path: path.to_path_buf(),
            },
            _ => Self::Sqlite {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// Whether retrying later may succeed: another process held the lock.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy { .. })
    }

    /// Whether the same write may succeed a little later: the lock was held, or the disk
    /// was full or failed for a moment. (Not a constraint, a corrupt file, a bad query.)
    pub fn may_pass_later(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
        match self {
            Self::Busy { .. } => true,
            Self::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure)
            ),
            _ => false,
        }
    }
}

/// Statements kept prepared per connection: enough for every distinct statement in
/// this module, so a hot-path query is parsed once per process, not once per call.
const STATEMENT_CACHE: usize = 128;

/// The WAL size, in pages, past which a commit checkpoints for a process that
/// checkpoints in the background ([`Storage::checkpoint_in_background`]): 16 MiB with
/// SQLite's 4 KiB pages, a few seconds of single commits at full speed.
pub const WAL_BOUND_PAGES: u32 = 4096;

/// A write transaction: it takes the write lock at `BEGIN`, so waiting for another
/// process goes through the busy handler. (A deferred one that reads first could fail at
/// its first write with `SQLITE_BUSY_SNAPSHOT`, which no waiting helps.)
fn write_tx(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

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

/// Handle to the database. Calls are short, so one connection behind a mutex does the
/// work; a second one serves reads while that one is held by a write waiting out another
/// process's lock (in WAL mode a read never waits for a writer).
pub struct Storage {
    conn: Mutex<Connection>,
    /// What waits for another process's lock on this database have seen (see [`busy`]).
    busy: Arc<busy::BusyState>,
    /// Reads only, and only while `conn` is in such a wait: it has its own page cache,
    /// which every commit on `conn` would invalidate, so the hot path stays on `conn`.
    /// Opened the first time it is needed (most processes never need it).
    reader: OnceLock<Mutex<Connection>>,
    /// The busy waits of `reader` (rare: a read waits only while another process
    /// recovers the WAL or truncates it).
    read_busy: Arc<busy::BusyState>,
    path: PathBuf,
    /// In-process side of [`Storage::turn`].
    locks: locks::LocalLocks,
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

/// What the checkpoint thread does each tick, on a connection of its own.
///
/// Once a checkpoint has copied every WAL frame into the database file, the next write
/// starts the WAL over and syncs its new header (with `synchronous=NORMAL` the only
/// sync a commit makes). Left to itself, that write is an invocation's record, on the
/// path to its answer; for sporadic traffic, every one. So after such a checkpoint (or
/// on finding the WAL empty, as at start) the keeper makes that write itself, through
/// the shared connection (no busy-wait), and it does not checkpoint again until someone
/// else has written: checkpointing only its own frame would hand the restart straight
/// back to the next writer.
struct WalKeeper {
    conn: Connection,
    path: PathBuf,
    /// `PRAGMA data_version` right after the keeper's own restarting write: unchanged
    /// means nobody else has written since.
    after_restart: Option<i64>,
}

impl WalKeeper {
    fn new(storage: &Storage) -> Result<Self, StorageError> {
        let conn = Connection::open(&storage.path).map_err(|e| storage.err(e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| storage.err(e))?;
        Ok(Self {
            conn,
            path: storage.path.clone(),
            after_restart: None,
        })
    }

    fn data_version(&self) -> Option<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .ok()
    }

    /// Checkpoint what others wrote and, with `restart`, start the WAL over if the
    /// checkpoint emptied it. Returns whether others had written (more than one frame
    /// since the WAL started over).
    fn tick(&mut self, storage: &Weak<Storage>, restart: bool) -> bool {
        if let Some(version) = self.after_restart
            && self.data_version() == Some(version)
        {
            return false;
        }
        // PASSIVE: copies what it can without waiting for or blocking anyone.
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            });
        match done {
            // One frame is another process's keeper restarting the WAL (its one-page
            // meta write): restarting after it would have the two keepers take turns
            // writing every tick, forever. Real writes (an invocation record and its
            // index) take more.
            Ok((0, frames, copied))
                if restart && frames != 1 && frames >= 0 && copied == frames =>
            {
                let Some(storage) = storage.upgrade() else {
                    return false;
                };
                match storage.meta_set("wal-restarted-at", now_ms().to_string().as_bytes()) {
                    Ok(()) => self.after_restart = self.data_version(),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not restart the WAL; the next write will")
                    }
                }
                frames > 1
            }
            Ok((_, frames, _)) => frames > 1,
            Err(e) => {
                tracing::warn!(database = %self.path.display(), error = %e, "WAL checkpoint failed; will retry");
                false
            }
        }
    }
}

/// Create an empty database file readable by its owner only, if there is none: it holds
/// invocation logs and outbound paths. SQLite gives the WAL and shared-memory files the
/// database file's mode, and takes an empty file as a new database.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
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
        let err = |source| StorageError::from_sqlite(path, source);
        create_private(path).map_err(|source| StorageError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_handler(Some(busy::wait_while_busy))
            .map_err(err)?;
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
            busy: Arc::default(),
            reader: OnceLock::new(),
            read_busy: Arc::default(),
            path: path.to_path_buf(),
            locks: locks::LocalLocks::default(),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, or `Busy` when queueing for it would mean waiting behind a long
    /// wait for another process's lock (see [`busy`]).
    fn lock(&self) -> Result<busy::Held<'_, Connection>, StorageError> {
        busy::lock_contended(&self.conn, &self.busy).ok_or_else(|| self.busy_error())
    }

    /// A connection for a read: the shared one, unless a write holds it while waiting out
    /// another process's lock; then the reader, so reads go on meanwhile.
    fn read(&self) -> Result<busy::Held<'_, Connection>, StorageError> {
        if let Some(held) = busy::lock_unless_waiting(&self.conn, &self.busy) {
            return Ok(held);
        }
        busy::lock_contended(self.reader()?, &self.read_busy).ok_or_else(|| self.busy_error())
    }

    /// The read connection, opened on first use.
    fn reader(&self) -> Result<&Mutex<Connection>, StorageError> {
        if let Some(reader) = self.reader.get() {
            return Ok(reader);
        }
        let conn = Connection::open(&self.path).map_err(|e| self.err(e))?;
        conn.busy_handler(Some(busy::wait_while_busy))
            .map_err(|e| self.err(e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Two first readers at once: one connection is kept, the other closed.
        Ok(self.reader.get_or_init(|| Mutex::new(conn)))
    }

    fn busy_error(&self) -> StorageError {
        StorageError::Busy {
            path: self.path.clone(),
        }
    }

    /// Whether the database is still at a schema this build understands:
    /// [`StorageError::TooNew`] once a newer keyhole has migrated it. A long-running
    /// process (`keyhole serve`) checks this now and then, and stops on it.
    pub fn check_schema(&self) -> Result<(), StorageError> {
        migrations::check_not_newer(&*self.read()?, &self.path)
    }

    fn err(&self, source: rusqlite::Error) -> StorageError {
        StorageError::from_sqlite(&self.path, source)
    }

    /// Move WAL checkpoints off the write path for a long-running process: a background
    /// thread with its own connection checkpoints every `every`, ten times as often while
    /// writes keep coming (see [`WalKeeper`]), and commits checkpoint only once the WAL
    /// holds `wal_pages` pages or more (a checkpoint writes the database file and syncs,
    /// which stalls whichever commit runs it).
    ///
    /// That bound is what keeps the WAL from growing without end under steady writes: the
    /// WAL starts over only at a write that finds it wholly checkpointed, and while
    /// commits keep coming, one always lands between the keeper's checkpoint and its
    /// restarting write. A commit's own checkpoint leaves no write in between, so the
    /// next commit starts the WAL over (the keeper has copied most frames by then, so that
    /// checkpoint is mostly its two syncs). `journal_size_limit` then cuts the
    /// file back to twice the bound, so a burst does not keep its size on disk. Stops
    /// when the returned value drops.
    pub fn checkpoint_in_background(
        self: &Arc<Self>,
        every: Duration,
        wal_pages: u32,
    ) -> Result<Checkpointer, StorageError> {
        let mut keeper = WalKeeper::new(self)?;
        // Before the thread starts: a failure here leaves no thread behind.
        {
            let wal_pages = i64::from(wal_pages.max(1));
            let conn = self.lock()?;
            conn.pragma_update(None, "wal_autocheckpoint", wal_pages)
                .map_err(|e| self.err(e))?;
            let page_size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            conn.pragma_update(None, "journal_size_limit", 2 * wal_pages * page_size)
                .map_err(|e| self.err(e))?;
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let storage = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("keyhole-checkpoint".into())
            .spawn(move || {
                let mut wait = every;
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(wait),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    let written = keeper.tick(&storage, !last);
                    if last {
                        break;
                    }
                    // While writes keep coming, checkpoint ten times as often: the commit
                    // that finds the WAL past the bound then has little left to copy.
                    wait = if written { every / 10 } else { every };
                }
            })
            .map_err(|e| {
                StorageError::Background(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Read a value from the `meta` table.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.read()?
            .query_row_cached("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Write a value into the `meta` table.
    pub fn meta_set(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.lock()?
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
        let (_dir, s) = without_autocheckpoint();
        // The first batch before the thread starts, so it fills the WAL from one end to
        // the other: any restart during the second batch only makes that one smaller.
        let first = write_batch(&s);
        let before = wal_generation(&s);
        let checkpointer = s
            .checkpoint_in_background(Duration::from_millis(5), WAL_BOUND_PAGES)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wal_generation(&s) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the checkpoint thread never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Checkpointed and started over in the background, so the next commits rewrite
        // the WAL from its start instead of appending.
        let second = write_batch(&s);
        assert!(
            second < first + first / 2,
            "WAL grew from {first} to {second}"
        );
        drop(checkpointer);
        assert_eq!(s.recent_invocations(None, 1000).unwrap().len(), 400);
    }

    #[test]
    fn steady_writes_beside_the_checkpointer_keep_the_wal_starting_over() {
        // Commits back to back, as under load: a commit always lands between the keeper's
        // checkpoint and its restarting write, so only the commits' own checkpoint past
        // the bound lets the WAL start over. Counted in restarts, not in bytes: while the
        // keeper's checkpoint syncs, the commits' checkpoints cannot run, so how far the
        // WAL grows meanwhile depends on the disk (9 MB once, beside a build); that it
        // keeps starting over does not. (About 200 restarts seen here; none without the
        // commits' checkpoint, the WAL then reaching 57 MB.)
        let (_dir, s) = without_autocheckpoint();
        let bound = 64;
        let checkpointer = s
            .checkpoint_in_background(Duration::from_millis(50), bound)
            .unwrap();
        let wal = s.path().with_extension("db-wal");
        let (mut generation, mut restarts) = (wal_generation(&s), 0);
        for i in 0..3000 {
            s.insert_invocation(&row()).unwrap();
            if i % 10 == 0 {
                let now = wal_generation(&s);
                if now != generation {
                    (generation, restarts) = (now, restarts + 1);
                }
            }
        }
        // Its last checkpoint copies every frame (or it had just started the WAL over
        // itself); either way the file is then cut back to `journal_size_limit`, twice
        // the bound, at the commit that starts it over.
        drop(checkpointer);
        s.insert_invocation(&row()).unwrap();
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(
            restarts >= 10,
            "the WAL started over {restarts} times in 3,000 commits with a bound of {bound} pages"
        );
        let page_size: u64 = s
            .lock()
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert!(
            after <= 2 * u64::from(bound) * page_size,
            "the WAL is {after} bytes after a restart, with a bound of {bound} pages"
        );
        assert_eq!(s.recent_invocations(None, 5000).unwrap().len(), 3001);
    }

    /// A database whose commits never checkpoint, as under `keyhole serve` before its
    /// checkpointer starts.
    fn without_autocheckpoint() -> (tempfile::TempDir, Arc<Storage>) {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        s.lock()
            .unwrap()
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        (dir, s)
    }

    /// The WAL header's checkpoint sequence and salts: they change when, and only
    /// when, the WAL starts over.
    fn wal_generation(s: &Storage) -> [u8; 12] {
        use std::io::Read as _;
        let mut header = [0; 24];
        std::fs::File::open(s.path().with_extension("db-wal"))
            .and_then(|mut f| f.read_exact(&mut header))
            .unwrap();
        header[12..24].try_into().unwrap()
    }

    #[test]
    fn after_a_checkpoint_the_keeper_not_the_next_writer_restarts_the_wal() {
        let (_dir, s) = without_autocheckpoint();
        let mut keeper = WalKeeper::new(&s).unwrap();
        let weak = Arc::downgrade(&s);
        write_batch(&s);
        let before = wal_generation(&s);

        assert!(keeper.tick(&weak, true), "others had written");
        let restarted = wal_generation(&s);
        assert_ne!(
            restarted, before,
            "the keeper checkpointed and started the WAL over"
        );

        assert!(!keeper.tick(&weak, true), "nobody wrote since");
        assert!(!keeper.tick(&weak, true));
        assert_eq!(
            wal_generation(&s),
            restarted,
            "with no other writes the keeper leaves the WAL alone"
        );

        // An invocation record now appends: its commit writes no new header (no sync).
        s.insert_invocation(&row()).unwrap();
        assert_eq!(wal_generation(&s), restarted);

        // The next tick checkpoints that record and starts over again.
        assert!(keeper.tick(&weak, true), "the record was written");
        assert_ne!(wal_generation(&s), restarted);
        assert_eq!(s.recent_invocations(None, 1000).unwrap().len(), 201);
    }

    #[test]
    fn two_keepers_on_one_database_go_quiet_when_nobody_writes() {
        // Two `keyhole serve` processes on one data directory: each keeper sees the
        // other's restarting write as new activity. They must not answer it forever.
        let (_dir, s) = without_autocheckpoint();
        let other = Arc::new(Storage::open(s.path()).unwrap());
        let (mut a, mut b) = (WalKeeper::new(&s).unwrap(), WalKeeper::new(&other).unwrap());
        let (weak_a, weak_b) = (Arc::downgrade(&s), Arc::downgrade(&other));
        write_batch(&s);
        for _ in 0..3 {
            a.tick(&weak_a, true);
            b.tick(&weak_b, true);
        }
        let settled = (wal_generation(&s), s.meta_get("wal-restarted-at").unwrap());
        for _ in 0..3 {
            a.tick(&weak_a, true);
            b.tick(&weak_b, true);
        }
        assert_eq!(
            (wal_generation(&s), s.meta_get("wal-restarted-at").unwrap()),
            settled,
            "the keepers kept writing with nobody else writing"
        );
    }

    #[test]
    fn without_the_keeper_the_next_writer_restarts_the_wal() {
        // The control for the test above: a checkpoint alone leaves the restart (and its
        // header sync) to whoever writes next.
        let (_dir, s) = without_autocheckpoint();
        let mut keeper = WalKeeper::new(&s).unwrap();
        write_batch(&s);
        let before = wal_generation(&s);
        keeper.tick(&Arc::downgrade(&s), false);
        assert_eq!(wal_generation(&s), before, "checkpointed, not restarted");
        s.insert_invocation(&row()).unwrap();
        assert_ne!(wal_generation(&s), before, "the writer restarted it");
    }

    #[test]
    fn without_checkpoints_the_wal_keeps_growing() {
        // The control for the test above: with commits not checkpointing and no
        // background thread, the second batch appends.
        let (_dir, s) = without_autocheckpoint();
        let first = write_batch(&s);
        let second = write_batch(&s);
        assert!(
            second > first + first / 2,
            "WAL went from {first} to {second}"
        );
    }
}
