//! Versioned schema migrations, applied in order inside one transaction each.

use std::path::Path;

use rusqlite::Connection;

use super::{CachedExt, StorageError};

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a released entry:
/// append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: functions, compiled artifacts, invocations.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE functions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        wasm BLOB NOT NULL,
        limits TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (name, version)
    );
    CREATE TABLE artifacts (
        content_hash TEXT NOT NULL,
        engine_hash TEXT NOT NULL,
        artifact BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (content_hash, engine_hash)
    );
    CREATE TABLE invocations (
        id INTEGER PRIMARY KEY,
        function TEXT NOT NULL,
        version INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        duration_us INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        output_bytes INTEGER NOT NULL,
        logs TEXT NOT NULL,
        stdout TEXT NOT NULL,
        stderr TEXT NOT NULL,
        outbound TEXT NOT NULL
    );
    CREATE INDEX invocations_by_function ON invocations (function, id);
    "#,
    // 2: services, connections (credentials sealed), grants.
    r#"
    CREATE TABLE services (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        sealed_client BLOB,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE connections (
        name TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        status TEXT NOT NULL,
        status_reason TEXT,
        scopes TEXT NOT NULL,
        base_url TEXT,
        params TEXT NOT NULL,
        sealed BLOB,
        generation INTEGER NOT NULL DEFAULT 0,
        token_info TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        connected_at INTEGER,
        last_used_at INTEGER
    );
    CREATE TABLE grants (
        function TEXT NOT NULL,
        connection TEXT NOT NULL REFERENCES connections(name) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (function, connection)
    );
    "#,
    // 3: pending OAuth authorizations (state is stored hashed, the PKCE verifier sealed).
    r#"
    CREATE TABLE oauth_states (
        state_hash TEXT PRIMARY KEY,
        connection TEXT NOT NULL REFERENCES connections(name) ON DELETE CASCADE,
        sealed_verifier BLOB NOT NULL,
        redirect_url TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 4: per-function key-value state and schedules.
    r#"
    CREATE TABLE kv (
        function TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (function, key)
    );
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        function TEXT NOT NULL,
        input TEXT NOT NULL,
        every_ms INTEGER,
        cron TEXT,
        paused INTEGER NOT NULL DEFAULT 0,
        next_run_at INTEGER NOT NULL,
        last_run_at INTEGER,
        last_outcome TEXT,
        last_invocation INTEGER,
        created_at INTEGER NOT NULL
    );
    "#,
    // 5: API tokens for `keyhole serve` (only a hash of each token is stored).
    r#"
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        function TEXT,
        label TEXT,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        last_used_at INTEGER
    );
    "#,
    // 6: functions keep the component last, with its size beside the metadata, so that
    // reading a function (once per invocation) does not walk the component's overflow
    // pages to reach `limits` and `created_at`.
    r#"
    CREATE TABLE functions_v6 (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        limits TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        size INTEGER NOT NULL,
        wasm BLOB NOT NULL,
        UNIQUE (name, version)
    );
    INSERT INTO functions_v6 (id, name, version, content_hash, limits, created_at, size, wasm)
        SELECT id, name, version, content_hash, limits, created_at, length(wasm), wasm
        FROM functions;
    DROP TABLE functions;
    ALTER TABLE functions_v6 RENAME TO functions;
    "#,
    // 7: the last version of each deleted function, so that a name uploaded again
    // continues its numbering and its invocation records never share a version number.
    r#"
    CREATE TABLE retired_versions (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
    "#,
    // 8: the account a connection's credentials belong to, as its service's verification
    // request names it (shown as "connected as"; a re-authorization compares with it),
    // and the JSON pointer it was read from (only values from the same pointer compare).
    r#"
    ALTER TABLE connections ADD COLUMN account TEXT;
    ALTER TABLE connections ADD COLUMN account_source TEXT;
    "#,
    // 9: the next invocation record id. A process takes ids from it in blocks, so that
    // `keyhole serve` can answer with a record's id before the record is committed; every
    // insert takes its id from here, so no two processes pick the same one.
    r#"
    CREATE TABLE invocation_ids (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        next INTEGER NOT NULL
    );
    INSERT INTO invocation_ids (only, next) SELECT 1, COALESCE(MAX(id), 0) + 1 FROM invocations;
    "#,
    // 10: records are listed and pruned newest first by start time, not by id: processes
    // take ids in blocks, so two recording at once interleave their ids.
    r#"
    -- (An index holds the row id after its columns: these order ties by id too.)
    DROP INDEX IF EXISTS invocations_by_function;
    CREATE INDEX invocations_by_function_time ON invocations (function, started_at);
    CREATE INDEX invocations_by_time ON invocations (started_at);
    "#,
    // 11: a counter that every change to a connection, grant or service moves, in any
    // process: a guest's call reads it, not the three tables, while nothing changed.
    r#"
    CREATE TABLE config_version (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        n INTEGER NOT NULL
    );
    INSERT INTO config_version (only, n) VALUES (1, 1);
    CREATE TRIGGER connections_inserted AFTER INSERT ON connections
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER connections_updated AFTER UPDATE ON connections
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER connections_deleted AFTER DELETE ON connections
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER grants_inserted AFTER INSERT ON grants
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER grants_updated AFTER UPDATE ON grants
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER grants_deleted AFTER DELETE ON grants
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER services_inserted AFTER INSERT ON services
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER services_updated AFTER UPDATE ON services
        BEGIN UPDATE config_version SET n = n + 1; END;
    CREATE TRIGGER services_deleted AFTER DELETE ON services
        BEGIN UPDATE config_version SET n = n + 1; END;
    "#,
    // 12: a schedule run's lease, so that two servers on one data directory never run
    // one schedule at once: a run is claimed only when no lease is live.
    r#"
    ALTER TABLE schedules ADD COLUMN running_until INTEGER;
    "#,
    // 13: the token endpoint a pending authorization was started for: its callback
    // sends the code and the client secret there only. Rows from before (at most 10
    // minutes old) have none, and their callbacks are refused.
    r#"
    ALTER TABLE oauth_states ADD COLUMN token_url TEXT;
    "#,
    // 14: the process id of the server whose claim holds a schedule, so that a release
    // by hand can tell a crashed run's claim from a live one.
    r#"
    ALTER TABLE schedules ADD COLUMN claimed_by INTEGER;
    "#,
];

/// Bring the schema up to date.
pub fn apply(conn: &mut Connection, path: &Path) -> Result<(), StorageError> {
    apply_list(conn, path, MIGRATIONS)
}

/// Fail with [`StorageError::TooNew`] if another process (a newer keyhole) has migrated
/// the database past the schema this build knows since it was opened.
pub fn check_not_newer(conn: &Connection, path: &Path) -> Result<(), StorageError> {
    version_within(conn, path, MIGRATIONS.len() as i64).map(drop)
}

/// The database's schema version, or [`StorageError::TooNew`] if it is past `supported`.
/// Read through the statement cache: a long-running process asks now and then.
fn version_within(conn: &Connection, path: &Path, supported: i64) -> Result<i64, StorageError> {
    let found: i64 = conn
        .query_row_cached("SELECT user_version FROM pragma_user_version", [], |r| {
            r.get(0)
        })
        .map_err(|source| StorageError::from_sqlite(path, source))?;
    if found > supported {
        return Err(StorageError::TooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    Ok(found)
}

/// Apply the migrations of `migrations` not applied yet, one transaction each. Each
/// reads the schema version inside its own write transaction, so processes opening a
/// new data directory at the same moment apply each migration once, in turn.
fn apply_list(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), StorageError> {
    let err = |source| StorageError::from_sqlite(path, source);
    let supported = migrations.len() as i64;
    let version = |conn: &Connection| version_within(conn, path, supported);
    // Up to date (every open but the first): no write lock needed.
    if version(conn)? == supported {
        return Ok(());
    }
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let current = version(&tx)?;
        let Some(sql) = migrations.get(current as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", current + 1)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::debug!(version = current + 1, "applied schema migration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by a keyhole from before migration 6 keeps its functions, which
    /// gain their size, and stores the component in the last column.
    #[test]
    fn functions_stored_before_migration_6_survive_it_with_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhole.db");
        let mut conn = Connection::open(&path).unwrap();
        apply_list(&mut conn, &path, &MIGRATIONS[..5]).unwrap();
        let wasm = b"\0asm\x0d\0\x01\0 and more".to_vec();
        conn.execute(
            "INSERT INTO functions (name, version, content_hash, wasm, limits, created_at) \
             VALUES ('greet', 3, 'abc', ?1, '{\"fuel\":7}', 1234)",
            [&wasm],
        )
        .unwrap();

        apply(&mut conn, &path).unwrap();

        let (version, hash, limits, created_at, size, stored): (i64, String, String, i64, i64, Vec<u8>) = conn
            .query_row(
                "SELECT version, content_hash, limits, created_at, size, wasm FROM functions WHERE name = 'greet'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
        assert_eq!(
            (version, hash.as_str(), limits.as_str(), created_at),
            (3, "abc", r#"{"fuel":7}"#, 1234)
        );
        assert_eq!(size, wasm.len() as i64);
        assert_eq!(stored, wasm);
        let last: String = conn
            .query_row(
                "SELECT name FROM pragma_table_info('functions') ORDER BY cid DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(last, "wasm");
        let duplicate = conn.execute(
            "INSERT INTO functions (name, version, content_hash, limits, created_at, size, wasm) \
             VALUES ('greet', 3, 'def', '{}', 1, 0, x'')",
            [],
        );
        assert!(duplicate.is_err(), "(name, version) is still unique");
        let at: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(at, MIGRATIONS.len() as i64);
    }

    /// Records stored before migration 9 keep their ids, and new ones are numbered after
    /// them (the table of the next id starts past the largest).
    #[test]
    fn invocation_ids_continue_after_the_records_stored_before_migration_9() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhole.db");
        let mut conn = Connection::open(&path).unwrap();
        apply_list(&mut conn, &path, &MIGRATIONS[..8]).unwrap();
        conn.execute(
            "INSERT INTO invocations (id, function, version, started_at, duration_us, outcome, output_bytes, logs, stdout, stderr, outbound) \
             VALUES (41, 'f', 1, 1, 1, 'ok', 0, '[]', '', '', '[]')",
            [],
        )
        .unwrap();
        drop(conn);
        let storage = crate::storage::Storage::open(&path).unwrap();
        assert_eq!(storage.reserve_invocation_ids(3).unwrap(), 42..45);
        let row = crate::storage::InvocationRow::for_test("g");
        assert_eq!(storage.insert_invocations(&[&row, &row]).unwrap(), [45, 46]);
        let ids: Vec<i64> = storage
            .recent_invocations(None, 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [46, 45, 41]);
    }

    /// A database another process migrates past this build's schema while it is open is
    /// found out by the next check, on the connection opened before.
    #[test]
    fn a_migration_by_a_newer_keyhole_is_found_on_a_connection_already_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyhole.db");
        let mut conn = Connection::open(&path).unwrap();
        apply(&mut conn, &path).unwrap();
        check_not_newer(&conn, &path).unwrap();
        let newer = Connection::open(&path).unwrap();
        newer
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        match check_not_newer(&conn, &path) {
            Err(StorageError::TooNew {
                found, supported, ..
            }) => assert_eq!((found, supported), (supported + 1, MIGRATIONS.len() as i64)),
            other => panic!("expected TooNew, got {other:?}"),
        }
    }
}
