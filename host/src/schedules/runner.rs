//! The scheduler loop run by `keyhole serve`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::Cadence;
use crate::Keyhole;
use crate::storage::now_ms;

/// How often the scheduler looks for due schedules.
pub const TICK: Duration = Duration::from_millis(200);

/// How often the scheduler looks for next runs a clock change left too far ahead.
const CLOCK_CHECK: Duration = Duration::from_secs(60);

/// Writes of a run's outcome (which releases its claim) before giving up.
const FINISH_ATTEMPTS: u32 = 5;

/// This process's claim on a schedule: which schedule (one deleted and added again under
/// the name is another), and until when it holds it.
#[derive(Debug, Clone, Copy)]
struct Claim {
    created_at: i64,
    lease: i64,
}

/// Runs due schedules until told to stop.
#[derive(Debug)]
pub struct Scheduler;

impl Scheduler {
    /// Run until `shutdown` resolves, then wait up to `drain` for runs in flight.
    pub async fn run(
        host: Arc<Keyhole>,
        shutdown: impl std::future::Future<Output = ()>,
        drain: Duration,
    ) {
        // The schedules this process runs now, with their claim once it is made.
        let running: Arc<Mutex<HashMap<String, Option<Claim>>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut clock_checked_at = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(TICK) => {}
            }
            while tasks.try_join_next().is_some() {}
            let now = now_ms();
            if clock_checked_at.is_none_or(|at: std::time::Instant| at.elapsed() >= CLOCK_CHECK) {
                clock_checked_at = Some(std::time::Instant::now());
                pull_back_after_clock_change(&host, now);
            }
            let due = match host.storage().due_schedules(now) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read schedules");
                    continue;
                }
            };
            for schedule in due {
                // Never overlap a schedule with itself: a run still going skips this slot
                // (and keeps its claim on record).
                match running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(schedule.name.clone())
                {
                    Entry::Occupied(_) => continue,
                    Entry::Vacant(v) => {
                        v.insert(None);
                    }
                }
                let cadence = match Cadence::of(&schedule) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(schedule = %schedule.name, error = %e, "unusable schedule");
                        running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&schedule.name);
                        continue;
                    }
                };
                let next = cadence.next_after(schedule.next_run_at, now);
                let claim = Claim {
                    created_at: schedule.created_at,
                    lease: now + lease(&host, &schedule.function),
                };
                // Run only a slot this process claimed: another server on this data
                // directory may have claimed it or still be running the schedule, an
                // admin may have edited it since it was read, and a claim that cannot be
                // written runs nothing (the slot stays due and is tried again, read
                // afresh, at the next tick). The claim holds the schedule for the run's
                // longest possible time, in case this process dies mid-run.
                let claimed = host
                    .storage()
                    .claim_schedule_run(&schedule, now, next, claim.lease)
                    .unwrap_or_else(|e| {
                        tracing::error!(schedule = %schedule.name, error = %e, "cannot record a schedule run; not running it");
                        false
                    });
                if !claimed {
                    running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&schedule.name);
                    continue;
                }
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(schedule.name.clone(), Some(claim));
                let host = host.clone();
                let running = running.clone();
                tasks.spawn(async move {
                    tracing::info!(schedule = %schedule.name, function = %schedule.function, "schedule run starting");
                    let (outcome, id) = match host.invoke(&schedule.function, &schedule.input).await {
                        // Id 0: the record was held back or lost.
                        Ok(inv) => (inv.result.as_ref().err().map(|e| e.kind()).unwrap_or("ok").to_string(), (inv.id != 0).then_some(inv.id)),
                        Err(e) => (e.kind().to_string(), None),
                    };
                    // A slot that fell due during the run is skipped, not run late.
                    let ended = now_ms();
                    let skip = (next <= ended).then(|| (next, cadence.next_after(next, ended)));
                    // The finish also releases the claim; until it is written the schedule
                    // waits for its lease to run out, so a write refused (another process
                    // held the database's lock) is tried again.
                    for attempt in 1..=FINISH_ATTEMPTS {
                        match host.storage().schedule_finished(&schedule.name, claim.created_at, &outcome, id, skip, claim.lease) {
                            Ok(()) => break,
                            Err(e) if attempt < FINISH_ATTEMPTS => {
                                tracing::warn!(schedule = %schedule.name, error = %e, attempt, "cannot record a schedule outcome yet; trying again");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(e) => tracing::error!(schedule = %schedule.name, error = %e, "cannot record a schedule outcome; the schedule runs again when its claim runs out"),
                        }
                    }
                    running.lock().unwrap_or_else(|p| p.into_inner()).remove(&schedule.name);
                });
            }
        }
        if !tasks.is_empty() {
            tracing::info!(runs = tasks.len(), "waiting for scheduled runs to finish");
            let drained =
                tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                // Runs cut off here release their schedules, so the next start (or another
                // server) need not wait for their leases to run out.
                let cut: Vec<(String, Claim)> = running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter_map(|(name, claim)| Some((name.clone(), (*claim)?)))
                    .collect();
                tasks.abort_all();
                for (name, claim) in cut {
                    if let Err(e) =
                        host.storage()
                            .release_schedule(&name, claim.created_at, claim.lease)
                    {
                        tracing::warn!(schedule = %name, error = %e, "cannot release a schedule whose run was cut off");
                    }
                }
            }
        }
    }
}

/// How long a claim holds its schedule: the function's timeout and a minute more (for a
/// wait on its state, a compile, the record), or the longest timeout there is when the
/// function cannot be read.
fn lease(host: &Keyhole, function: &str) -> i64 {
    let timeout = match host.storage().latest_function(function) {
        Ok(Some(row)) => row.limits.timeout(),
        _ => crate::config::MAX_TIMEOUT,
    };
    (timeout + Duration::from_secs(60)).as_millis() as i64
}

/// A next run stored under a clock that was ahead (and has since been set back) would
/// keep its schedule quiet until the clock catches up: bring it back to the latest run
/// its cadence allows from now.
fn pull_back_after_clock_change(host: &Keyhole, now: i64) {
    let schedules = match host.storage().list_schedules() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read schedules to check their next runs");
            return;
        }
    };
    for schedule in schedules.iter().filter(|s| !s.paused) {
        let Ok(cadence) = Cadence::of(schedule) else {
            continue;
        };
        let latest = cadence.latest_next_run(now);
        if schedule.next_run_at > latest {
            match host.storage().move_schedule_next_run(
                &schedule.name,
                schedule.next_run_at,
                latest,
            ) {
                Ok(true) => {
                    tracing::warn!(schedule = %schedule.name, "next run was further ahead than its cadence allows (the clock went back?); moved it to the latest it can be");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(schedule = %schedule.name, error = %e, "cannot move a next run the clock left ahead");
                }
            }
        }
    }
}
