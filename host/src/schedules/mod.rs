//! Schedules: run a function with a fixed input every N (or on a cron expression) while
//! `keyhole serve` runs. One schedule never overlaps itself, and runs missed while the
//! host was down run once at start, not once per missed slot.

mod runner;

pub use runner::Scheduler;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::services::validate_name;
use crate::storage::{ScheduleRow, Storage, StorageError, now_ms};

/// Shortest interval a schedule may use.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// Longest interval (a year and a day); rarer runs are what cron is for.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);

/// Errors from administering schedules.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// No such schedule.
    #[error("no schedule named {0:?}; `keyhole schedules list` shows them")]
    Unknown(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A release by hand found the process that claimed the schedule still running.
    #[error(
        "{}process {pid}{} claimed schedule {name:?} and is still running: if it is a `keyhole serve`, its run is going on, and releases the schedule when it ends (by {until} at the latest); wait for it, or stop that server. If process {pid} is not keyhole (its id was given to another process), release anyway with --force (HTTP: ?force=true)",
        if *.ours { "this server (" } else { "" },
        if *.ours { ")" } else { "" }
    )]
    ClaimLive {
        /// Schedule name.
        name: String,
        /// The claiming process's id.
        pid: i64,
        /// Whether it is the process asked to release (a server's own run).
        ours: bool,
        /// The end of the claim's lease, as text.
        until: String,
    },
    /// Storage problem.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A fixed interval.
    Every(Duration),
    /// A cron expression (seconds field first, UTC), e.g. `0 */5 * * * *`.
    Cron(Box<cron::Schedule>, String),
}

impl Cadence {
    /// Parse a cron expression with a clear error.
    pub fn cron(expr: &str) -> Result<Self, ScheduleError> {
        let parsed = cron::Schedule::from_str(expr).map_err(|e| {
            // The parser's message may draw a caret under the expression over several
            // lines; one line reads better inside this sentence.
            let why = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            ScheduleError::Invalid(format!(
                "cron expression {expr:?} is invalid ({why}); use six or seven fields with seconds first, e.g. \"0 */5 * * * *\""
            ))
        })?;
        Ok(Self::Cron(Box::new(parsed), expr.to_string()))
    }

    /// The cadence stored in a row.
    pub fn of(row: &ScheduleRow) -> Result<Self, ScheduleError> {
        match (&row.every_ms, &row.cron) {
            (Some(ms), _) => Ok(Self::Every(Duration::from_millis(*ms as u64))),
            (None, Some(expr)) => Self::cron(expr),
            (None, None) => Err(ScheduleError::Invalid(format!(
                "schedule {:?} has no cadence",
                row.name
            ))),
        }
    }

    /// The first fire time strictly after `now` that lines up with `anchor` (the
    /// previous due time), so a late or missed run never shifts the cadence and missed
    /// slots collapse into one.
    pub fn next_after(&self, anchor: i64, now: i64) -> i64 {
        match self {
            Self::Every(d) => {
                let step = (d.as_millis() as i64).max(1);
                if anchor > now {
                    return anchor;
                }
                anchor + ((now - anchor) / step + 1) * step
            }
            Self::Cron(schedule, _) => {
                let from =
                    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now).unwrap_or_default();
                schedule
                    .after(&from)
                    .next()
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(i64::MAX)
            }
        }
    }

    /// The latest next run a schedule with this cadence can have at `now`: one interval
    /// from now, or the next cron time. A stored next run later than that was computed
    /// under a clock that has since gone back.
    pub fn latest_next_run(&self, now: i64) -> i64 {
        match self {
            Self::Every(d) => now + (d.as_millis() as i64).max(1),
            Self::Cron(..) => self.next_after(now, now),
        }
    }

    /// Human description.
    pub fn describe(&self) -> String {
        match self {
            Self::Every(d) => format!("every {}", humantime::format_duration(*d)),
            Self::Cron(_, expr) => format!("cron {expr}"),
        }
    }
}

/// What [`Schedules::release`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Release {
    /// The schedule as it is now.
    #[serde(flatten)]
    pub row: ScheduleRow,
    /// The end of the lease of the claim released (Unix ms); `None`: no claim held the
    /// schedule (or it ended meanwhile), and nothing changed.
    pub released: Option<i64>,
}

/// Administration of schedules.
#[derive(Debug, Clone)]
pub struct Schedules {
    storage: Arc<Storage>,
}

impl Schedules {
    /// Schedules over `storage`.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self { storage }
    }

    /// Add a schedule; the first run is one interval (or the next cron time) from now.
    pub fn add(
        &self,
        name: &str,
        function: &str,
        cadence: &Cadence,
        input: &str,
    ) -> Result<ScheduleRow, ScheduleError> {
        validate_name("schedule", name).map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        self.check_function(function)?;
        check_input(input)?;
        let now = now_ms();
        let (every_ms, cron, first) = stored_cadence(cadence, now)?;
        let row = ScheduleRow {
            name: name.to_string(),
            function: function.to_string(),
            input: input.to_string(),
            every_ms,
            cron,
            paused: false,
            next_run_at: first,
            last_run_at: None,
            last_outcome: None,
            last_invocation: None,
            running_until: None,
            claimed_by: None,
            created_at: now,
        };
        self.storage.insert_schedule(&row)?;
        tracing::info!(schedule = name, function, cadence = %cadence.describe(), "schedule added");
        self.show(name)
    }

    /// Change what a schedule runs, how often, or with which input; what is `None` stays.
    /// A new cadence starts afresh: the next run is one interval (or the next cron time)
    /// from now, as for a new schedule. A run going on keeps what it started with; the
    /// change applies from the next run (a slot claimed before the change, and so read
    /// before it, is the only one that runs as it was).
    pub fn edit(&self, name: &str, edit: &ScheduleEdit) -> Result<ScheduleRow, ScheduleError> {
        if edit.function.is_none() && edit.cadence.is_none() && edit.input.is_none() {
            return Err(ScheduleError::Invalid(
                "nothing to change: give a function, a cadence (every or cron) or an input".into(),
            ));
        }
        if let Some(function) = &edit.function {
            self.check_function(function)?;
        }
        if let Some(input) = &edit.input {
            check_input(input)?;
        }
        let cadence = match &edit.cadence {
            Some(cadence) => Some(stored_cadence(cadence, now_ms())?),
            None => None,
        };
        if !self.storage.update_schedule(
            name,
            edit.function.as_deref(),
            edit.input.as_deref(),
            cadence
                .as_ref()
                .map(|(every_ms, cron, first)| (*every_ms, cron.as_deref(), *first)),
        )? {
            return Err(ScheduleError::Unknown(name.to_string()));
        }
        let row = self.show(name)?;
        tracing::info!(
            schedule = name,
            function = %row.function,
            cadence = %Cadence::of(&row).map(|c| c.describe()).unwrap_or_default(),
            "schedule edited"
        );
        Ok(row)
    }

    /// Refuse a function that does not exist.
    fn check_function(&self, function: &str) -> Result<(), ScheduleError> {
        match self.storage.latest_function(function)? {
            Some(_) => Ok(()),
            None => Err(ScheduleError::Invalid(format!(
                "no function named {function:?}; upload it first (`keyhole functions upload`)"
            ))),
        }
    }

    /// Every schedule.
    pub fn list(&self) -> Result<Vec<ScheduleRow>, ScheduleError> {
        Ok(self.storage.list_schedules()?)
    }

    /// One schedule.
    pub fn show(&self, name: &str) -> Result<ScheduleRow, ScheduleError> {
        self.storage
            .get_schedule(name)?
            .ok_or_else(|| ScheduleError::Unknown(name.to_string()))
    }

    /// Stop running a schedule until resumed.
    /// Pausing a paused schedule changes nothing.
    pub fn pause(&self, name: &str) -> Result<ScheduleRow, ScheduleError> {
        if !self.storage.set_schedule_paused(name, true, None)? {
            return Err(ScheduleError::Unknown(name.to_string()));
        }
        self.show(name)
    }

    /// Resume a paused schedule; the next run is the next slot from now. Resuming one
    /// that is not paused changes nothing (its next run stays).
    pub fn resume(&self, name: &str) -> Result<ScheduleRow, ScheduleError> {
        let row = self.show(name)?;
        if !row.paused {
            return Ok(row);
        }
        let now = now_ms();
        let next = Cadence::of(&row)?.next_after(row.next_run_at, now);
        self.storage.set_schedule_paused(name, false, Some(next))?;
        self.show(name)
    }

    /// Release the claim that holds a schedule now: for a run cut off by a crash (a
    /// killed `keyhole serve`), whose claim would otherwise hold the schedule until its
    /// lease — the function's timeout and a minute — runs out. The schedule then runs at
    /// its next due slot (at once if one is due). Only the claim read here is released:
    /// one that ended, or was replaced by a newer run's, meanwhile is left alone.
    ///
    /// Refused ([`ScheduleError::ClaimLive`]) while the process that claimed it is still
    /// running, as far as this machine's `/proc` tells (servers sharing a data directory
    /// share a machine), unless `force`. Releasing the claim of a run that is in fact
    /// still going lets another server start the schedule beside it (the server running
    /// it never overlaps itself).
    pub fn release(&self, name: &str, force: bool) -> Result<Release, ScheduleError> {
        let row = self.show(name)?;
        if let (Some(until), Some(pid)) = (row.running_until, row.claimed_by)
            && !force
            && process_is_running(pid)
        {
            return Err(ScheduleError::ClaimLive {
                name: name.to_string(),
                pid,
                ours: pid == i64::from(std::process::id()),
                until: crate::util::format_ms(until),
            });
        }
        let released = match row.running_until {
            Some(until) => self
                .storage
                .release_schedule(name, row.created_at, until)?
                .then_some(until),
            None => None,
        };
        if let Some(until) = released {
            tracing::warn!(
                schedule = name,
                claimed_until = until,
                "schedule claim released by hand"
            );
        }
        Ok(Release {
            row: self.show(name)?,
            released,
        })
    }

    /// Delete a schedule.
    pub fn delete(&self, name: &str) -> Result<(), ScheduleError> {
        if !self.storage.delete_schedule(name)? {
            return Err(ScheduleError::Unknown(name.to_string()));
        }
        Ok(())
    }
}

/// What [`Schedules::edit`] changes; `None` leaves that part as it is.
#[derive(Debug, Clone, Default)]
pub struct ScheduleEdit {
    /// Another function to run.
    pub function: Option<String>,
    /// Another cadence (the next run moves to its first slot from now).
    pub cadence: Option<Cadence>,
    /// Another input (JSON text).
    pub input: Option<String>,
}

/// Refuse input that is not JSON.
fn check_input(input: &str) -> Result<(), ScheduleError> {
    serde_json::from_str::<serde::de::IgnoredAny>(input)
        .map(drop)
        .map_err(|e| ScheduleError::Invalid(format!("--input is not valid JSON: {e}")))
}

/// A cadence as stored (`every_ms`, `cron`) with its first run after `now`, or why it
/// cannot be a schedule's.
fn stored_cadence(
    cadence: &Cadence,
    now: i64,
) -> Result<(Option<i64>, Option<String>, i64), ScheduleError> {
    match cadence {
        Cadence::Every(d) if *d < MIN_EVERY => Err(ScheduleError::Invalid(format!(
            "the interval must be at least {}s",
            MIN_EVERY.as_secs()
        ))),
        Cadence::Every(d) if *d > MAX_EVERY => Err(ScheduleError::Invalid(format!(
            "the interval must be at most {} days; for rarer runs use a cron expression",
            MAX_EVERY.as_secs() / 86_400
        ))),
        Cadence::Every(d) => Ok((Some(d.as_millis() as i64), None, now + d.as_millis() as i64)),
        Cadence::Cron(_, expr) => match cadence.next_after(now, now) {
            i64::MAX => Err(ScheduleError::Invalid(format!(
                "the cron expression {expr:?} never fires from now on (a past year, or a \
                 date that does not exist such as 31 February); check its fields"
            ))),
            first => Ok((None, Some(expr.clone()), first)),
        },
    }
}

/// Whether process `pid` is running on this machine: it has a `/proc` entry and is not a
/// zombie. Where there is no `/proc` to ask, `false` (a release then goes ahead, as the
/// admin asked).
fn process_is_running(pid: i64) -> bool {
    if pid <= 0 || !std::path::Path::new("/proc/self/stat").exists() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S …`: the state follows the last `)` (the name may hold one).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| !matches!(state, 'Z' | 'X' | 'x')),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_told_from_an_ended_one() {
        assert!(process_is_running(i64::from(std::process::id())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i64::from(child.id());
        child.wait().unwrap();
        assert!(!process_is_running(pid), "a reaped child counts as running");
        assert!(!process_is_running(0));
        assert!(!process_is_running(-1));
    }

    #[test]
    fn missed_slots_collapse_into_one_and_keep_the_cadence() {
        let c = Cadence::Every(Duration::from_secs(10));
        assert_eq!(c.next_after(1_000, 500), 1_000);
        assert_eq!(c.next_after(1_000, 1_000), 11_000);
        // Down for ten slots: the next run is the next slot after now, not ten catch-ups.
        assert_eq!(c.next_after(1_000, 101_500), 111_000);
    }

    #[test]
    fn cron_expressions_parse_or_explain() {
        let c = Cadence::cron("0 */5 * * * *").unwrap();
        let next = c.next_after(0, 0);
        assert_eq!(next, 5 * 60 * 1000);
        let err = Cadence::cron("every five minutes").unwrap_err().to_string();
        assert!(err.contains("seconds first"), "{err}");
    }
}
