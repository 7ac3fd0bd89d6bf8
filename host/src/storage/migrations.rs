//! Versioned schema migrations, applied in order inside one transaction each.

use std::path::Path;

use rusqlite::Connection;

use super::StorageError;

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
];

/// Bring the schema up to date.
pub fn apply(conn: &mut Connection, path: &Path) -> Result<(), StorageError> {
    let err = |source| StorageError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StorageError::TooNew {
            path: path.to_path_buf(),
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::debug!(version = i + 1, "applied schema migration");
    }
    Ok(())
}
