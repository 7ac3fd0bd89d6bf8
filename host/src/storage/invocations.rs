//! Invocation records: one row per run, with captured logs and outbound calls.

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use super::{CachedExt, Storage, StorageError};

/// One outbound HTTP call made during an invocation. Never holds credentials: the
/// path is recorded without its query string, which may carry an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundCall {
    /// Connection name.
    pub connection: String,
    /// HTTP method.
    pub method: String,
    /// `scheme://host:port`.
    pub origin: String,
    /// URL path, no query.
    pub path: String,
    /// Response status, or `None` when no response came back.
    pub status: Option<u16>,
    /// Error kind when the call failed (e.g. `forbidden-destination`).
    pub error: Option<String>,
    /// Milliseconds from send to end of body.
    pub latency_ms: u64,
    /// Response body bytes.
    pub bytes: u64,
}

/// One invocation record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationRow {
    /// Row id (0 before insert).
    pub id: i64,
    /// Function name.
    pub function: String,
    /// Function version run.
    pub version: i64,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Microseconds.
    pub duration_us: i64,
    /// `ok` or an error kind (see `InvokeError::kind`).
    pub outcome: String,
    /// Error message when not ok.
    pub error: Option<String>,
    /// Size of the output in bytes.
    pub output_bytes: i64,
    /// Log lines (`LEVEL message`).
    pub logs: Vec<String>,
    /// Captured guest stdout (bounded).
    pub stdout: String,
    /// Captured guest stderr (bounded).
    pub stderr: String,
    /// Outbound calls in order.
    pub outbound: Vec<OutboundCall>,
}

fn row_to_invocation(r: &Row<'_>) -> rusqlite::Result<InvocationRow> {
    let logs: String = r.get(8)?;
    let outbound: String = r.get(11)?;
    Ok(InvocationRow {
        id: r.get(0)?,
        function: r.get(1)?,
        version: r.get(2)?,
        started_at: r.get(3)?,
        duration_us: r.get(4)?,
        outcome: r.get(5)?,
        error: r.get(6)?,
        output_bytes: r.get(7)?,
        logs: serde_json::from_str(&logs).unwrap_or_default(),
        stdout: r.get(9)?,
        stderr: r.get(10)?,
        outbound: serde_json::from_str(&outbound).unwrap_or_default(),
    })
}

impl Storage {
    /// Record an invocation; returns its id.
    pub fn insert_invocation(&self, inv: &InvocationRow) -> Result<i64, StorageError> {
        Ok(self.insert_invocations(&[inv])?[0])
    }

    /// Record several invocations in one transaction (one commit for all of them);
    /// returns their ids in order. All or none are stored.
    pub fn insert_invocations(&self, invs: &[&InvocationRow]) -> Result<Vec<i64>, StorageError> {
        let encoded = invs
            .iter()
            .map(|inv| {
                let logs = serde_json::to_string(&inv.logs)?;
                let outbound = serde_json::to_string(&inv.outbound)?;
                Ok((logs, outbound))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| StorageError::Malformed(e.to_string()))?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut ids = Vec::with_capacity(invs.len());
        for (inv, (logs, outbound)) in invs.iter().zip(&encoded) {
            tx.execute_cached(
                "INSERT INTO invocations (function, version, started_at, duration_us, outcome, error, output_bytes, logs, stdout, stderr, outbound) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    inv.function,
                    inv.version,
                    inv.started_at,
                    inv.duration_us,
                    inv.outcome,
                    inv.error,
                    inv.output_bytes,
                    logs,
                    inv.stdout,
                    inv.stderr,
                    outbound
                ],
            )
            .map_err(|e| self.err(e))?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(ids)
    }

    /// The most recent invocations, newest first, optionally for one function.
    pub fn recent_invocations(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InvocationRow>, StorageError> {
        let conn = self.lock();
        let sql = "SELECT id, function, version, started_at, duration_us, outcome, error, output_bytes, logs, stdout, stderr, outbound \
                   FROM invocations WHERE (?1 IS NULL OR function = ?1) ORDER BY id DESC LIMIT ?2";
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![function, limit as i64], row_to_invocation)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
