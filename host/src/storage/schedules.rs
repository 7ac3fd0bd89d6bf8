//! Schedules: what to run, how often, and when next.

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{CachedExt, Storage, StorageError, now_ms};

/// JSON text as the JSON value it holds (as a string if it is not JSON).
fn as_json<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value.serialize(serializer),
        Err(_) => serializer.serialize_str(text),
    }
}

/// A stored schedule.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    /// Schedule name.
    pub name: String,
    /// Function to invoke.
    pub function: String,
    /// Input JSON text (serialized as the JSON it holds, as `PUT /v1/schedules` takes it).
    #[serde(serialize_with = "as_json")]
    pub input: String,
    /// Fixed interval in ms, when the schedule is `--every`.
    pub every_ms: Option<i64>,
    /// Cron expression, when the schedule is `--cron`.
    pub cron: Option<String>,
    /// Paused schedules never run.
    pub paused: bool,
    /// Unix ms of the next run.
    pub next_run_at: i64,
    /// Unix ms of the last run's start.
    pub last_run_at: Option<i64>,
    /// Outcome of the last run (`ok` or an error kind).
    pub last_outcome: Option<String>,
    /// Invocation id of the last run.
    pub last_invocation: Option<i64>,
    /// Unix ms until which a claimed run holds the schedule (the run ends sooner and
    /// releases it, unless it was cut off by a crash); `None` when no claim holds it now.
    pub running_until: Option<i64>,
    /// The process id of the server whose claim holds the schedule now (`None` when no
    /// claim holds it, or a keyhole from before this field made it).
    pub claimed_by: Option<i64>,
    /// Unix ms.
    pub created_at: i64,
}

/// The columns `row_to_schedule` reads, in order.
/// A macro, so statements are `concat!`-ed at compile time.
macro_rules! schedule_columns {
    () => {
        "name, function, input, every_ms, cron, paused, next_run_at, last_run_at, last_outcome, last_invocation, created_at, running_until, claimed_by"
    };
}

fn row(r: &Row<'_>) -> rusqlite::Result<ScheduleRow> {
    // A lease that has run out holds nothing (as the scheduler's `due_schedules` and
    // `claim_schedule_run` read it, by the same clock), though it stays stored until
    // the next claim overwrites it.
    let running_until = r
        .get::<_, Option<i64>>(11)?
        .filter(|&until| until > now_ms());
    Ok(ScheduleRow {
        name: r.get(0)?,
        function: r.get(1)?,
        input: r.get(2)?,
        every_ms: r.get(3)?,
        cron: r.get(4)?,
        paused: r.get::<_, i64>(5)? != 0,
        next_run_at: r.get(6)?,
        last_run_at: r.get(7)?,
        last_outcome: r.get(8)?,
        last_invocation: r.get(9)?,
        created_at: r.get(10)?,
        running_until,
        claimed_by: match running_until {
            Some(_) => r.get(12)?,
            None => None,
        },
    })
}

impl Storage {
    /// Insert a schedule; refuses a duplicate name.
    pub fn insert_schedule(&self, s: &ScheduleRow) -> Result<(), StorageError> {
        self.lock()?
            .execute_cached(
                concat!(
                    "INSERT INTO schedules (",
                    schedule_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, NULL, ?8, NULL, NULL)"
                ),
                params![
                    s.name,
                    s.function,
                    s.input,
                    s.every_ms,
                    s.cron,
                    s.paused as i64,
                    s.next_run_at,
                    now_ms()
                ],
            )
            .map(drop)
            .map_err(|e| match &e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StorageError::Conflict(format!("a schedule named {:?} already exists; delete it first (`keyhole schedules delete`) or choose another name", s.name))
                }
                _ => self.err(e),
            })
    }

    /// A schedule by name.
    pub fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>, StorageError> {
        self.read()?
            .query_row_cached(
                concat!(
                    "SELECT ",
                    schedule_columns!(),
                    " FROM schedules WHERE name = ?1"
                ),
                params![name],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every schedule, by name.
    pub fn list_schedules(&self) -> Result<Vec<ScheduleRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                schedule_columns!(),
                " FROM schedules ORDER BY name"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Unpaused schedules due at `now` that no run holds.
    pub fn due_schedules(&self, now: i64) -> Result<Vec<ScheduleRow>, StorageError> {
        let conn = self.read()?;
        let mut stmt = conn
            .prepare_cached(concat!(
                "SELECT ",
                schedule_columns!(),
                " FROM schedules WHERE paused = 0 AND next_run_at <= ?1 \
                 AND (running_until IS NULL OR running_until <= ?1) ORDER BY next_run_at"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map(params![now], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Pause or resume; resuming sets the next run. Returns false if absent.
    pub fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        next_run_at: Option<i64>,
    ) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE schedules SET paused = ?2, next_run_at = COALESCE(?3, next_run_at) WHERE name = ?1",
                params![name, paused as i64, next_run_at],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Claim the run of the slot `read` found due (its `next_run_at`): record it as
    /// started, move `next_run_at` on and hold the schedule until `running_until` (or
    /// until [`Storage::schedule_finished`]), if the slot is still the one read, the
    /// schedule still runs, is still what was read (not edited, nor deleted and added
    /// again, meanwhile: a run starts with what the schedule says when it is claimed),
    /// and no run holds it (here or in another process on this data directory). The
    /// claim names this process (`claimed_by`). `false`: not claimed; run nothing.
    pub fn claim_schedule_run(
        &self,
        read: &ScheduleRow,
        started_at: i64,
        next_run_at: i64,
        running_until: i64,
    ) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE schedules SET last_run_at = ?2, next_run_at = ?3, running_until = ?5, \
                 claimed_by = ?6 \
                 WHERE name = ?1 AND next_run_at = ?4 AND paused = 0 \
                 AND (running_until IS NULL OR running_until <= ?2) \
                 AND created_at = ?7 AND function = ?8 AND input = ?9 \
                 AND every_ms IS ?10 AND cron IS ?11",
                params![
                    read.name,
                    started_at,
                    next_run_at,
                    read.next_run_at,
                    running_until,
                    std::process::id(),
                    read.created_at,
                    read.function,
                    read.input,
                    read.every_ms,
                    read.cron,
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Change a schedule's function, input, or cadence (`(every_ms, cron, next_run_at)`:
    /// all three are written); what is `None` stays as it is. Returns false if absent.
    pub fn update_schedule(
        &self,
        name: &str,
        function: Option<&str>,
        input: Option<&str>,
        cadence: Option<(Option<i64>, Option<&str>, i64)>,
    ) -> Result<bool, StorageError> {
        let (every_ms, cron, next_run_at) = match cadence {
            Some((every_ms, cron, next)) => (every_ms, cron, Some(next)),
            None => (None, None, None),
        };
        self.lock()?
            .execute_cached(
                "UPDATE schedules SET function = COALESCE(?2, function), \
                 input = COALESCE(?3, input), \
                 every_ms = CASE WHEN ?6 IS NULL THEN every_ms ELSE ?4 END, \
                 cron = CASE WHEN ?6 IS NULL THEN cron ELSE ?5 END, \
                 next_run_at = COALESCE(?6, next_run_at) \
                 WHERE name = ?1",
                params![name, function, input, every_ms, cron, next_run_at],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// Move a schedule's next run from `from` to `to`, if it is still `from`.
    pub fn move_schedule_next_run(
        &self,
        name: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE schedules SET next_run_at = ?3 WHERE name = ?1 AND next_run_at = ?2",
                params![name, from, to],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// A run of the schedule created at `created_at` finished: record its outcome and
    /// release the claim that held it until `lease` (if it is still that claim: after a
    /// lease ran out, another server may hold a newer one). `skip`: `(slot, to)` moves a
    /// slot that fell due while the run was going on to `to`, if `next_run_at` is still
    /// `slot`. A schedule deleted (or deleted and added again) meanwhile is left alone.
    pub fn schedule_finished(
        &self,
        name: &str,
        created_at: i64,
        outcome: &str,
        invocation: Option<i64>,
        skip: Option<(i64, i64)>,
        lease: i64,
    ) -> Result<(), StorageError> {
        let (slot, to) = skip.unzip();
        self.lock()?
            .execute_cached(
                "UPDATE schedules SET last_outcome = ?3, last_invocation = ?4, \
                 running_until = CASE WHEN running_until = ?7 THEN NULL ELSE running_until END, \
                 claimed_by = CASE WHEN running_until = ?7 THEN NULL ELSE claimed_by END, \
                 next_run_at = CASE WHEN next_run_at = ?5 THEN ?6 ELSE next_run_at END \
                 WHERE name = ?1 AND created_at = ?2",
                params![name, created_at, outcome, invocation, slot, to, lease],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Release the claim on the schedule created at `created_at` that holds it until
    /// `lease`, if it is still that claim (a run cut off at shutdown, or one an admin
    /// knows was cut off by a crash). `true`: it was, and is released.
    pub fn release_schedule(
        &self,
        name: &str,
        created_at: i64,
        lease: i64,
    ) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached(
                "UPDATE schedules SET running_until = NULL, claimed_by = NULL \
                 WHERE name = ?1 AND created_at = ?2 AND running_until = ?3",
                params![name, created_at, lease],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Delete a schedule. Returns false if absent.
    pub fn delete_schedule(&self, name: &str) -> Result<bool, StorageError> {
        self.lock()?
            .execute_cached("DELETE FROM schedules WHERE name = ?1", params![name])
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }
}
