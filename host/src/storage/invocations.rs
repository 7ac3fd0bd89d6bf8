//! Invocation records: one row per run, with captured logs and outbound calls.

use std::ops::Range;

use rusqlite::{OptionalExtension, Row, ToSql, params};
use serde::{Deserialize, Serialize};

use super::{CachedExt, Storage, StorageError, write_tx};

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
    /// Row id (0 until one is taken: at insert, or before it by `Recorder::record_after`).
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

#[cfg(test)]
impl InvocationRow {
    /// A successful, empty record of `function`, for tests.
    pub(crate) fn for_test(function: &str) -> Self {
        Self {
            id: 0,
            function: function.into(),
            version: 1,
            started_at: 1,
            duration_us: 1,
            outcome: "ok".into(),
            error: None,
            output_bytes: 0,
            logs: vec![],
            stdout: String::new(),
            stderr: String::new(),
            outbound: vec![],
        }
    }
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

/// Take `n` ids from the table of the next id (inside the caller's transaction, if any).
fn take_ids(conn: &rusqlite::Connection, n: i64) -> rusqlite::Result<Range<i64>> {
    let first: i64 = conn.query_row_cached(
        "UPDATE invocation_ids SET next = next + ?1 WHERE only = 1 RETURNING next - ?1",
        [n],
        |r| r.get(0),
    )?;
    Ok(first..first + n)
}

/// Insert one record as `id` (its logs and outbound calls already encoded).
fn insert_one(
    conn: &rusqlite::Connection,
    id: i64,
    inv: &InvocationRow,
    logs: &str,
    outbound: &str,
) -> rusqlite::Result<usize> {
    conn.execute_cached(
        "INSERT INTO invocations (id, function, version, started_at, duration_us, outcome, error, output_bytes, logs, stdout, stderr, outbound) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            id,
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
}

impl Storage {
    /// Record an invocation; returns its id.
    pub fn insert_invocation(&self, inv: &InvocationRow) -> Result<i64, StorageError> {
        Ok(self.insert_invocations(&[inv])?[0])
    }

    /// Record several invocations in one transaction (one commit for all of them);
    /// returns their ids in order. All or none are stored. A record whose `id` is not 0
    /// is stored under it (an id taken earlier with [`Storage::reserve_invocation_ids`]);
    /// the others get theirs now.
    pub fn insert_invocations(&self, invs: &[&InvocationRow]) -> Result<Vec<i64>, StorageError> {
        Ok(self.insert_invocations_reserving(invs, 0)?.0)
    }

    /// [`Storage::insert_invocations`], and in the same transaction take a block of
    /// `reserve` ids for later records (as [`Storage::reserve_invocation_ids`]; none if 0).
    pub fn insert_invocations_reserving(
        &self,
        invs: &[&InvocationRow],
        reserve: u32,
    ) -> Result<(Vec<i64>, Option<Range<i64>>), StorageError> {
        let encoded = invs
            .iter()
            .map(|inv| {
                let logs = serde_json::to_string(&inv.logs)?;
                let outbound = serde_json::to_string(&inv.outbound)?;
                Ok((logs, outbound))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| StorageError::Malformed(e.to_string()))?;
        let mut conn = self.lock()?;
        // One record with its id is one statement, atomic on its own: no BEGIN/COMMIT
        // round.
        if let [inv] = invs
            && inv.id != 0
            && reserve == 0
        {
            let (logs, outbound) = &encoded[0];
            insert_one(&conn, inv.id, inv, logs, outbound).map_err(|e| self.err(e))?;
            return Ok((vec![inv.id], None));
        }
        let tx = write_tx(&mut conn).map_err(|e| self.err(e))?;
        let unnumbered = invs.iter().filter(|inv| inv.id == 0).count() as i64;
        let mut numbers = if unnumbered > 0 {
            take_ids(&tx, unnumbered).map_err(|e| self.err(e))?
        } else {
            0..0
        };
        let mut ids = Vec::with_capacity(invs.len());
        for (inv, (logs, outbound)) in invs.iter().zip(&encoded) {
            let id = match inv.id {
                0 => numbers.next().expect("one number per unnumbered record"),
                id => id,
            };
            insert_one(&tx, id, inv, logs, outbound).map_err(|e| self.err(e))?;
            ids.push(id);
        }
        let block = match reserve {
            0 => None,
            n => Some(take_ids(&tx, i64::from(n)).map_err(|e| self.err(e))?),
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok((ids, block))
    }

    /// Take `n` invocation record ids for records to be stored later (with
    /// [`Storage::insert_invocations`]); no other process gets any of them.
    pub fn reserve_invocation_ids(&self, n: u32) -> Result<Range<i64>, StorageError> {
        let conn = self.lock()?;
        take_ids(&conn, i64::from(n)).map_err(|e| self.err(e))
    }

    /// Give back `ids`, taken and not used, if they are the last taken (no process took
    /// any since): the next id is then `ids.start`. Returns whether they went back.
    pub fn return_invocation_ids(&self, ids: Range<i64>) -> Result<bool, StorageError> {
        let conn = self.lock()?;
        let n = conn
            .execute_cached(
                "UPDATE invocation_ids SET next = ?1 WHERE only = 1 AND next = ?2",
                params![ids.start, ids.end],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Delete each function's records beyond its newest `keep` (`keep` ≥ 1), at most
    /// `batch` rows per statement: the lock is released between batches, so invocations
    /// keep recording while a large backlog goes. Before each batch it asks `stop`, and
    /// ends the pass early when told to (a server shutting down). Returns how many were
    /// deleted.
    pub fn prune_invocations(
        &self,
        keep: u64,
        batch: usize,
        stop: impl Fn() -> bool,
    ) -> Result<u64, StorageError> {
        let keep = keep.max(1).min(i64::MAX as u64) as i64;
        let batch = batch.max(1) as i64;
        // The functions with records, one index seek each (a skip scan).
        let functions: Vec<String> = {
            let conn = self.lock()?;
            let mut stmt = conn
                .prepare_cached(
                    "WITH RECURSIVE f(name) AS ( \
                       SELECT MIN(function) FROM invocations \
                       UNION ALL \
                       SELECT (SELECT MIN(function) FROM invocations WHERE function > f.name) \
                       FROM f WHERE f.name IS NOT NULL) \
                     SELECT name FROM f WHERE name IS NOT NULL",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let mut deleted = 0;
        for function in functions {
            // The newest record to go: the (keep + 1)-th newest by start time (ids do not
            // follow time across processes, which take them in blocks).
            let cutoff: Option<(i64, i64)> = self
                .lock()?
                .query_row_cached(
                    "SELECT started_at, id FROM invocations WHERE function = ?1 \
                     ORDER BY started_at DESC, id DESC LIMIT 1 OFFSET ?2",
                    params![function, keep],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            let Some((cutoff_at, cutoff_id)) = cutoff else {
                continue;
            };
            loop {
                if stop() {
                    return Ok(deleted);
                }
                let n = self
                    .lock()?
                    .execute_cached(
                        "DELETE FROM invocations WHERE id IN \
                         (SELECT id FROM invocations WHERE function = ?1 AND (started_at, id) <= (?2, ?3) \
                          ORDER BY started_at, id LIMIT ?4)",
                        params![function, cutoff_at, cutoff_id, batch],
                    )
                    .map_err(|e| self.err(e))?;
                deleted += n as u64;
                if (n as i64) < batch {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// The most recent invocations, newest first (by start time, then id), optionally
    /// for one function.
    pub fn recent_invocations(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<InvocationRow>, StorageError> {
        macro_rules! select {
            () => {
                "SELECT id, function, version, started_at, duration_us, outcome, error, output_bytes, logs, stdout, stderr, outbound FROM invocations"
            };
        }
        let limit = limit as i64;
        // One statement per case, so each walks its own index.
        let (sql, args): (&str, Vec<&dyn ToSql>) = match &function {
            Some(f) => (
                concat!(
                    select!(),
                    " WHERE function = ?1 ORDER BY started_at DESC, id DESC LIMIT ?2"
                ),
                vec![f, &limit],
            ),
            None => (
                concat!(select!(), " ORDER BY started_at DESC, id DESC LIMIT ?1"),
                vec![&limit],
            ),
        };
        let conn = self.read()?;
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args.as_slice(), row_to_invocation)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &Storage, function: &str) -> Vec<i64> {
        let rows = s.recent_invocations(Some(function), 1000).unwrap();
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn pruning_keeps_the_newest_records_of_every_function() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.db")).unwrap();
        let mut busy = Vec::new();
        let mut quiet = Vec::new();
        // Interleaved, so the newest of one function are not the newest overall.
        for i in 0..30 {
            busy.push(
                s.insert_invocation(&InvocationRow::for_test("busy"))
                    .unwrap(),
            );
            if i % 10 == 0 {
                quiet.push(
                    s.insert_invocation(&InvocationRow::for_test("quiet"))
                        .unwrap(),
                );
            }
        }
        let lone = s
            .insert_invocation(&InvocationRow::for_test("lone"))
            .unwrap();

        // Told to stop after its first batch (a server shutting down), a pass ends there.
        let asked = std::cell::Cell::new(0);
        let first_only = || {
            asked.set(asked.get() + 1);
            asked.get() > 1
        };
        assert_eq!(s.prune_invocations(5, 7, first_only).unwrap(), 7);
        // Batches of 7 take several statements for `busy` (13 more to go).
        assert_eq!(s.prune_invocations(5, 7, || false).unwrap(), 18);

        let newest_busy: Vec<i64> = busy.iter().rev().take(5).copied().collect();
        assert_eq!(ids(&s, "busy"), newest_busy);
        quiet.reverse();
        assert_eq!(ids(&s, "quiet"), quiet, "under the limit: untouched");
        assert_eq!(ids(&s, "lone"), vec![lone]);
        assert_eq!(
            s.prune_invocations(5, 7, || false).unwrap(),
            0,
            "nothing left to prune"
        );
        assert_eq!(s.prune_invocations(1, 100, || false).unwrap(), 6);
        assert_eq!(ids(&s, "busy"), vec![busy[29]]);
        assert_eq!(ids(&s, "quiet"), vec![quiet[0]]);
    }

    /// Two processes recording at once interleave their ids (each takes them in blocks):
    /// a later record can have a lower id. Listing and pruning go by start time, so the
    /// newest record is listed first and kept.
    #[test]
    fn records_are_listed_and_pruned_by_start_time_not_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.db")).unwrap();
        let block = s.reserve_invocation_ids(64).unwrap();
        // Another process's record, numbered at its commit: after the block.
        let mut theirs = InvocationRow::for_test("f");
        theirs.started_at = 1_000;
        let theirs = s.insert_invocation(&theirs).unwrap();
        // This process's later record, under an id from its earlier block.
        let mut ours = InvocationRow::for_test("f");
        ours.id = block.start;
        ours.started_at = 2_000;
        assert_eq!(s.insert_invocation(&ours).unwrap(), block.start);
        assert!(block.start < theirs);

        assert_eq!(ids(&s, "f"), [block.start, theirs]);
        let all: Vec<i64> = s
            .recent_invocations(None, 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(all, [block.start, theirs]);
        assert_eq!(s.prune_invocations(1, 10, || false).unwrap(), 1);
        assert_eq!(ids(&s, "f"), [block.start], "the newest stays");
    }
}
