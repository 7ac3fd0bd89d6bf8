//! Custom services, connections (credentials as sealed blobs) and grants.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{CachedExt, Storage, StorageError, now_ms, write_tx};

/// A custom service definition as stored (TOML text, same schema as presets).
#[derive(Debug, Clone)]
pub struct ServiceRow {
    /// Service name.
    pub name: String,
    /// TOML definition.
    pub definition: String,
    /// Sealed OAuth client credentials, if set.
    pub sealed_client: Option<Vec<u8>>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

/// A connection as stored. `sealed` is opaque here: only `connections` opens it.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    /// Connection name.
    pub name: String,
    /// Service name (preset or custom).
    pub service: String,
    /// `pending`, `connected`, `needs-reauth`, `revoked`.
    pub status: String,
    /// Why the status is what it is (e.g. the upstream's answer to verification).
    pub status_reason: Option<String>,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Connection-level base URL override.
    pub base_url: Option<String>,
    /// Non-secret parameter values.
    pub params: BTreeMap<String, String>,
    /// Sealed credential material.
    pub sealed: Option<Vec<u8>>,
    /// Credential generation: bumped on every credential write, used for compare-and-swap.
    pub generation: i64,
    /// Non-secret token metadata (expiry, granted scopes, last refresh).
    pub token_info: serde_json::Value,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the last successful connect.
    pub connected_at: Option<i64>,
    /// Unix ms of the last outbound request.
    pub last_used_at: Option<i64>,
    /// The account the credentials belong to, as the verification request named it.
    pub account: Option<String>,
    /// The JSON pointer `account` was read from.
    pub account_source: Option<String>,
}

/// A connection as an outbound call needs it (`Storage::connection_for_call`).
#[derive(Debug, Clone)]
pub struct CallConnection {
    /// The connection.
    pub row: ConnectionRow,
    /// Its service's stored definition; `None` when the service is a preset.
    pub service_definition: Option<String>,
    /// Whether the calling function holds a grant for it.
    pub granted: bool,
}

/// A grant of a connection to a function.
#[derive(Debug, Clone, Serialize)]
pub struct GrantRow {
    /// Function name.
    pub function: String,
    /// Connection name.
    pub connection: String,
    /// Unix ms.
    pub created_at: i64,
}

/// The columns `row_to_connection` reads, in order.
/// A macro, so statements are `concat!`-ed at compile time.
macro_rules! connection_columns {
    () => {
        "name, service, status, status_reason, scopes, base_url, params, sealed, generation, token_info, created_at, connected_at, last_used_at, account, account_source"
    };
}

/// How many columns [`connection_columns!`] names; a query's own columns come after.
const CONNECTION_COLUMNS: usize = 15;

fn row_to_connection(r: &Row<'_>) -> rusqlite::Result<ConnectionRow> {
    let scopes: String = r.get(4)?;
    let params: String = r.get(6)?;
    let token_info: String = r.get(9)?;
    Ok(ConnectionRow {
        name: r.get(0)?,
        service: r.get(1)?,
        status: r.get(2)?,
        status_reason: r.get(3)?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        base_url: r.get(5)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        sealed: r.get(7)?,
        generation: r.get(8)?,
        token_info: serde_json::from_str(&token_info).unwrap_or(serde_json::Value::Null),
        created_at: r.get(10)?,
        connected_at: r.get(11)?,
        last_used_at: r.get(12)?,
        account: r.get(13)?,
        account_source: r.get(14)?,
    })
}

fn json(v: &impl Serialize) -> Result<String, StorageError> {
    serde_json::to_string(v).map_err(|e| StorageError::Malformed(e.to_string()))
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

impl Storage {
    // ---- services ----

    /// Insert a custom service; refuses a duplicate name.
    pub fn insert_service(&self, name: &str, definition: &str) -> Result<(), StorageError> {
        let now = now_ms();
        self.lock()?
            .execute_cached(
                "INSERT INTO services (name, definition, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![name, definition, now],
            )
            .map(drop)
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StorageError::Conflict(format!("a service named {name:?} already exists; pick another name or use `keyhole services edit {name}`"))
                } else {
                    self.err(e)
                }
            })
    }

    /// Replace a custom service's definition. Returns false if it does not exist.
    pub fn update_service(&self, name: &str, definition: &str) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE services SET definition = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, definition, now_ms()],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Store sealed OAuth client credentials for a service (custom or preset: a preset
    /// gets a row holding only its client credentials, with an empty definition).
    pub fn set_service_client(
        &self,
        name: &str,
        sealed: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        self.lock()?
            .execute_cached(
                "INSERT INTO services (name, definition, sealed_client, created_at, updated_at) VALUES (?1, '', ?2, ?3, ?3) \
                 ON CONFLICT(name) DO UPDATE SET sealed_client = excluded.sealed_client, updated_at = excluded.updated_at",
                params![name, sealed, now],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Replace a service's sealed OAuth client only if it is still `expected`: a rewrite
    /// of a registration must not undo a `set-client` that landed meanwhile. Returns
    /// whether it was replaced.
    pub fn replace_service_client(
        &self,
        name: &str,
        expected: &[u8],
        sealed: &[u8],
    ) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE services SET sealed_client = ?3 WHERE name = ?1 AND sealed_client = ?2",
                params![name, expected, sealed],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// A stored service row.
    pub fn get_service(&self, name: &str) -> Result<Option<ServiceRow>, StorageError> {
        self.read()?
            .query_row_cached(
                "SELECT name, definition, sealed_client, created_at, updated_at FROM services WHERE name = ?1",
                params![name],
                |r| {
                    Ok(ServiceRow {
                        name: r.get(0)?,
                        definition: r.get(1)?,
                        sealed_client: r.get(2)?,
                        created_at: r.get(3)?,
                        updated_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every stored service row, by name.
    pub fn list_services(&self) -> Result<Vec<ServiceRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached("SELECT name, definition, sealed_client, created_at, updated_at FROM services ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ServiceRow {
                    name: r.get(0)?,
                    definition: r.get(1)?,
                    sealed_client: r.get(2)?,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Delete a service row, refusing while a connection uses it. Returns false if absent.
    pub fn delete_service(&self, name: &str) -> Result<bool, StorageError> {
        let mut conn = self.lock()?;
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        let users: Vec<String> = {
            let mut stmt = tx
                .prepare_cached("SELECT name FROM connections WHERE service = ?1 ORDER BY name")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![name], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        if !users.is_empty() {
            return Err(StorageError::Conflict(format!(
                "service {name:?} is used by connection(s) {}; delete those connections first",
                users.join(", ")
            )));
        }
        let n = tx
            .execute_cached("DELETE FROM services WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    // ---- connections ----

    /// Insert a new connection; refuses a duplicate name.
    pub fn insert_connection(&self, c: &ConnectionRow) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                concat!("INSERT INTO connections (", connection_columns!(), ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
                params![
                    c.name,
                    c.service,
                    c.status,
                    c.status_reason,
                    json(&c.scopes)?,
                    c.base_url,
                    json(&c.params)?,
                    c.sealed,
                    c.generation,
                    json(&c.token_info)?,
                    c.created_at,
                    c.connected_at,
                    c.last_used_at,
                    c.account,
                    c.account_source
                ],
            )
            .map(drop)
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StorageError::Conflict(format!(
                        "a connection named {:?} already exists; pick another name, or `keyhole connections connect {}` to re-authorize it",
                        c.name, c.name
                    ))
                } else {
                    self.err(e)
                }
            })
    }

    /// Connection `name` as an outbound call needs it, in one read: the row, its
    /// service's stored definition and whether `function` holds a grant for it.
    pub fn connection_for_call(
        &self,
        function: &str,
        name: &str,
    ) -> Result<Option<CallConnection>, StorageError> {
        self.read()?
            .query_row_cached(
                concat!(
                    "SELECT ",
                    connection_columns!(),
                    ", \
                     (SELECT definition FROM services WHERE services.name = connections.service), \
                     EXISTS (SELECT 1 FROM grants WHERE function = ?1 AND connection = ?2) \
                     FROM connections WHERE name = ?2"
                ),
                params![function, name],
                |r| {
                    Ok(CallConnection {
                        row: row_to_connection(r)?,
                        service_definition: r.get(CONNECTION_COLUMNS)?,
                        granted: r.get(CONNECTION_COLUMNS + 1)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// A number that moves whenever a connection, a grant or a service changes, in this
    /// process or any other (triggers of migration 11): what was read from those tables
    /// under one value is still current while it stays the same.
    pub fn config_version(&self) -> Result<i64, StorageError> {
        self.read()?
            .query_row_cached("SELECT n FROM config_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// A connection by name.
    pub fn get_connection(&self, name: &str) -> Result<Option<ConnectionRow>, StorageError> {
        self.read()?
            .query_row_cached(
                concat!(
                    "SELECT ",
                    connection_columns!(),
                    " FROM connections WHERE name = ?1"
                ),
                params![name],
                row_to_connection,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every connection, by name.
    pub fn list_connections(&self) -> Result<Vec<ConnectionRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                connection_columns!(),
                " FROM connections ORDER BY name"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], row_to_connection)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Update a connection's non-credential settings (scopes, base URL, params).
    pub fn update_connection_settings(&self, c: &ConnectionRow) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE connections SET scopes = ?2, base_url = ?3, params = ?4 WHERE name = ?1",
                params![c.name, json(&c.scopes)?, c.base_url, json(&c.params)?],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Compare-and-swap the credentials: writes only if the stored generation still
    /// equals `expected_generation`, then bumps it. Returns the new generation, or
    /// `None` when another writer got there first (the caller must re-read).
    #[allow(clippy::too_many_arguments)]
    pub fn swap_credentials(
        &self,
        name: &str,
        expected_generation: i64,
        sealed: Option<&[u8]>,
        status: &str,
        status_reason: Option<&str>,
        token_info: &serde_json::Value,
        connected_now: bool,
    ) -> Result<Option<i64>, StorageError> {
        self.swap(
            name,
            None,
            expected_generation,
            sealed,
            status,
            status_reason,
            token_info,
            connected_now,
        )
    }

    /// [`Self::swap_credentials`], also setting `candidate`'s scopes, base URL and
    /// params, all in one statement: settings never move unless these credentials are
    /// stored with them (a connect that lost the race changes nothing).
    #[allow(clippy::too_many_arguments)]
    pub fn swap_settings_and_credentials(
        &self,
        candidate: &ConnectionRow,
        expected_generation: i64,
        sealed: Option<&[u8]>,
        status: &str,
        status_reason: Option<&str>,
        token_info: &serde_json::Value,
        connected_now: bool,
    ) -> Result<Option<i64>, StorageError> {
        self.swap(
            &candidate.name,
            Some(candidate),
            expected_generation,
            sealed,
            status,
            status_reason,
            token_info,
            connected_now,
        )
    }

    /// The one compare-and-swap statement behind both: `settings`, if given, move with
    /// the credentials.
    #[allow(clippy::too_many_arguments)]
    fn swap(
        &self,
        name: &str,
        settings: Option<&ConnectionRow>,
        expected_generation: i64,
        sealed: Option<&[u8]>,
        status: &str,
        status_reason: Option<&str>,
        token_info: &serde_json::Value,
        connected_now: bool,
    ) -> Result<Option<i64>, StorageError> {
        let scopes = settings.map(|c| json(&c.scopes)).transpose()?;
        let params = settings.map(|c| json(&c.params)).transpose()?;
        let base_url = settings.and_then(|c| c.base_url.as_deref());
        let n = self
            .lock()?
            .execute_cached(
                "UPDATE connections SET sealed = ?3, status = ?4, status_reason = ?5, token_info = ?6, generation = generation + 1, \
                 connected_at = CASE WHEN ?7 THEN ?8 ELSE connected_at END, \
                 scopes = CASE WHEN ?9 THEN ?10 ELSE scopes END, \
                 base_url = CASE WHEN ?9 THEN ?11 ELSE base_url END, \
                 params = CASE WHEN ?9 THEN ?12 ELSE params END \
                 WHERE name = ?1 AND generation = ?2",
                params![
                    name,
                    expected_generation,
                    sealed,
                    status,
                    status_reason,
                    json(token_info)?,
                    connected_now,
                    now_ms(),
                    settings.is_some(),
                    scopes,
                    base_url,
                    params
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok((n > 0).then_some(expected_generation + 1))
    }

    /// Set status and reason without touching credentials (e.g. verification failed).
    pub fn set_connection_status(
        &self,
        name: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE connections SET status = ?2, status_reason = ?3 WHERE name = ?1",
                params![name, status, reason],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Set a connection's status reason and leave its status as it is at the moment of the
    /// write (reading the status first and writing it back could undo a change made
    /// meanwhile, say a refresh marking it `needs-reauth`).
    pub fn set_status_reason(&self, name: &str, reason: &str) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE connections SET status_reason = ?2 WHERE name = ?1",
                params![name, reason],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Record whose credentials generation `generation` of a connection holds: `account`
    /// is (pointer, name), `None` for not known. With a `note`, a connected connection
    /// gets it as its status reason. Nothing changes if the credentials changed meanwhile
    /// (another generation); returns whether it was recorded.
    pub fn record_account(
        &self,
        name: &str,
        generation: i64,
        account: Option<(&str, &str)>,
        note: Option<&str>,
    ) -> Result<bool, StorageError> {
        let (source, account) = account.unzip();
        let n = self
            .lock()?
            .execute_cached(
                "UPDATE connections SET account = ?3, account_source = ?4, \
                 status_reason = CASE WHEN ?5 IS NOT NULL AND status = 'connected' THEN ?5 ELSE status_reason END \
                 WHERE name = ?1 AND generation = ?2",
                params![name, generation, account, source, note],
            )
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Replace the non-secret token facts without touching credentials or generation,
    /// only while the credentials are still those of `generation`: facts about a grant
    /// must not land on the one a re-authorization stored meanwhile. Returns whether
    /// they were written.
    pub fn set_token_info(
        &self,
        name: &str,
        generation: i64,
        token_info: &serde_json::Value,
    ) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE connections SET token_info = ?3 WHERE name = ?1 AND generation = ?2",
                params![name, generation, json(token_info)?],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Record that a connection was just used.
    pub fn touch_connection(&self, name: &str) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE connections SET last_used_at = ?2 WHERE name = ?1",
                params![name, now_ms()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Delete a connection and its grants. Returns false if absent.
    pub fn delete_connection(&self, name: &str) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached("DELETE FROM connections WHERE name = ?1", params![name])
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    // ---- grants ----

    /// Grant `connection` to `function` (idempotent); whether the grant is new.
    pub fn grant(&self, function: &str, connection: &str) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "INSERT OR IGNORE INTO grants (function, connection, created_at) VALUES (?1, ?2, ?3)",
                params![function, connection, now_ms()],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Remove a grant. Returns false if there was none.
    pub fn revoke_grant(&self, function: &str, connection: &str) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "DELETE FROM grants WHERE function = ?1 AND connection = ?2",
                params![function, connection],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Connections granted to a function.
    pub fn grants_of_function(&self, function: &str) -> Result<Vec<String>, StorageError> {
        self.query_strings(
            "SELECT connection FROM grants WHERE function = ?1 ORDER BY connection",
            function,
        )
    }

    /// Functions granted a connection.
    pub fn grants_of_connection(&self, connection: &str) -> Result<Vec<String>, StorageError> {
        self.query_strings(
            "SELECT function FROM grants WHERE connection = ?1 ORDER BY function",
            connection,
        )
    }

    fn query_strings(&self, sql: &str, arg: &str) -> Result<Vec<String>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![arg], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(name: &str) -> ConnectionRow {
        ConnectionRow {
            name: name.into(),
            service: "github".into(),
            status: "connected".into(),
            status_reason: None,
            scopes: vec![],
            base_url: None,
            params: BTreeMap::new(),
            sealed: None,
            generation: 0,
            token_info: serde_json::json!({}),
            created_at: now_ms(),
            connected_at: None,
            last_used_at: None,
            account: None,
            account_source: None,
        }
    }

    #[test]
    fn a_connect_that_loses_the_race_moves_no_settings() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("db")).unwrap();
        s.insert_connection(&connection("jira")).unwrap();
        let with_site = |site: &str| {
            let mut c = connection("jira");
            c.params.insert("site".into(), site.into());
            c
        };
        let swap = |candidate: &ConnectionRow, blob: &[u8]| {
            s.swap_settings_and_credentials(
                candidate,
                0,
                Some(blob),
                "connected",
                None,
                &serde_json::json!({}),
                true,
            )
            .unwrap()
        };
        // Both read generation 0; the first stores its credentials and settings.
        assert_eq!(swap(&with_site("a"), b"creds-a"), Some(1));
        assert_eq!(swap(&with_site("b"), b"creds-b"), None);
        let row = s.get_connection("jira").unwrap().unwrap();
        assert_eq!(row.params["site"], "a");
        assert_eq!(row.sealed.as_deref(), Some(&b"creds-a"[..]));
    }

    #[test]
    fn a_status_reason_leaves_the_status_as_it_is_at_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("db")).unwrap();
        s.insert_connection(&connection("gh")).unwrap();
        // Changed after a caller read `connected`, before it notes its failure.
        s.set_connection_status("gh", "needs-reauth", Some("refresh token rejected"))
            .unwrap();
        s.set_status_reason("gh", "authorization failed: denied")
            .unwrap();
        let row = s.get_connection("gh").unwrap().unwrap();
        assert_eq!(row.status, "needs-reauth");
        assert_eq!(
            row.status_reason.as_deref(),
            Some("authorization failed: denied")
        );
    }

    #[test]
    fn token_facts_land_only_on_the_grant_they_are_about() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("db")).unwrap();
        s.insert_connection(&connection("gh")).unwrap();
        let info = |n: i64| serde_json::json!({ "last_refresh_outcome": n.to_string() });
        assert!(s.set_token_info("gh", 0, &info(0)).unwrap());
        // A re-authorization stores new credentials (generation 1) meanwhile.
        let stored = s
            .swap_credentials("gh", 0, Some(b"new"), "connected", None, &info(1), true)
            .unwrap();
        assert_eq!(stored, Some(1));
        assert!(!s.set_token_info("gh", 0, &info(0)).unwrap());
        let row = s.get_connection("gh").unwrap().unwrap();
        assert_eq!(row.token_info, info(1));
    }

    #[test]
    fn the_column_count_matches_the_column_list() {
        assert_eq!(
            connection_columns!().split(", ").count(),
            CONNECTION_COLUMNS
        );
    }

    #[test]
    fn every_change_to_a_connection_grant_or_service_moves_the_config_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = Storage::open(&path).unwrap();
        // Changes made through another handle (another process) count the same.
        let other = Storage::open(&path).unwrap();
        let mut last = s.config_version().unwrap();
        let mut moved = |what: &str| {
            let now = s.config_version().unwrap();
            assert!(now > last, "{what} left the config version at {now}");
            last = now;
        };
        other.insert_service("acme", "name = \"acme\"").unwrap();
        moved("adding a service");
        other
            .update_service("acme", "name = \"acme\" # v2")
            .unwrap();
        moved("editing a service");
        other.insert_connection(&connection("gh")).unwrap();
        moved("adding a connection");
        other.grant("f", "gh").unwrap();
        moved("a grant");
        other.revoke_grant("f", "gh").unwrap();
        moved("taking a grant back");
        other.set_connection_status("gh", "revoked", None).unwrap();
        moved("a status change");
        other.touch_connection("gh").unwrap();
        moved("recording a use (the cached row carries it)");
        other.grant("f", "gh").unwrap();
        moved("a grant again");
        other.delete_connection("gh").unwrap();
        moved("deleting a connection (and its grants)");
        other.delete_service("acme").unwrap();
        moved("deleting a service");
        // Records and state are not configuration.
        other
            .insert_invocations(&[&crate::storage::InvocationRow::for_test("f")])
            .unwrap();
        other
            .kv_commit("f", 1, &[("k".to_string(), Some(b"v".to_vec()))].into())
            .unwrap();
        assert_eq!(s.config_version().unwrap(), last, "records and kv moved it");
        // A later migration that rebuilds one of the tables would drop its triggers.
        let triggers: i64 = s
            .lock()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%config_version%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            triggers, 9,
            "one per change to connections, grants and services"
        );
    }

    #[test]
    fn a_connection_for_a_call_carries_its_grant_and_service() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.db")).unwrap();
        let granted = |f: &str, c: &str| s.connection_for_call(f, c).unwrap().map(|c| c.granted);
        s.insert_connection(&connection("gh")).unwrap();
        s.insert_connection(&connection("other")).unwrap();
        assert_eq!(granted("f", "gh"), Some(false), "no grant");
        s.grant("g", "gh").unwrap();
        s.grant("f", "other").unwrap();
        assert_eq!(
            granted("f", "gh"),
            Some(false),
            "another function's grant, or a grant to another connection, does not count"
        );
        s.grant("f", "gh").unwrap();
        let call = s.connection_for_call("f", "gh").unwrap().expect("exists");
        assert!(call.granted);
        assert_eq!(call.row.name, "gh");
        assert_eq!(call.service_definition, None, "github is a preset");
        s.insert_service("acme", "name = \"acme\"").unwrap();
        let mut custom = connection("acme-main");
        custom.service = "acme".into();
        custom.account = Some("octocat".into());
        custom.account_source = Some("/login".into());
        s.insert_connection(&custom).unwrap();
        let call = s
            .connection_for_call("f", "acme-main")
            .unwrap()
            .expect("exists");
        assert_eq!(
            call.service_definition.as_deref(),
            Some("name = \"acme\""),
            "a custom service"
        );
        assert_eq!(call.row.account.as_deref(), Some("octocat"));
        assert_eq!(call.row.account_source.as_deref(), Some("/login"));
        let generation = call.row.generation;
        assert!(
            !s.record_account("acme-main", generation + 1, Some(("/login", "x")), None)
                .unwrap(),
            "another generation of credentials: nothing recorded"
        );
        assert!(
            s.record_account("acme-main", generation, Some(("/id", "7")), Some("note"))
                .unwrap()
        );
        let row = s.get_connection("acme-main").unwrap().unwrap();
        assert_eq!(row.account.as_deref(), Some("7"));
        assert_eq!(row.account_source.as_deref(), Some("/id"));
        assert_eq!(
            row.status_reason.as_deref(),
            Some("note"),
            "connected: the note is kept"
        );
        s.delete_connection("gh").unwrap();
        assert_eq!(granted("f", "gh"), None, "deleted");
        assert_eq!(granted("f", "nope"), None, "unknown");
    }
}
