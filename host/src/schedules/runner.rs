//! The scheduler loop run by `keyhole serve`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;

use super::Cadence;
use crate::Keyhole;
use crate::storage::now_ms;

/// How often the scheduler looks for due schedules.
pub const TICK: Duration = Duration::from_millis(200);

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
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(TICK) => {}
            }
            while tasks.try_join_next().is_some() {}
            let now = now_ms();
            let due = match host.storage().due_schedules(now) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read schedules");
                    continue;
                }
            };
            for schedule in due {
                // Never overlap a schedule with itself: a run still going skips this slot.
                if !running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(schedule.name.clone())
                {
                    continue;
                }
                let next = match Cadence::of(&schedule) {
                    Ok(c) => c.next_after(schedule.next_run_at, now),
                    Err(e) => {
                        tracing::error!(schedule = %schedule.name, error = %e, "unusable schedule");
                        running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&schedule.name);
                        continue;
                    }
                };
                // Run only a slot this process claimed: another server on this data
                // directory may have claimed it, and a claim that cannot be written runs
                // nothing (the slot stays due and is tried again at the next tick).
                let claimed = host
                    .storage()
                    .claim_schedule_run(&schedule.name, schedule.next_run_at, now, next)
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
                let host = host.clone();
                let running = running.clone();
                tasks.spawn(async move {
                    tracing::info!(schedule = %schedule.name, function = %schedule.function, "schedule run starting");
                    let (outcome, id) = match host.invoke(&schedule.function, &schedule.input).await {
                        Ok(inv) => (inv.result.as_ref().err().map(|e| e.kind()).unwrap_or("ok").to_string(), Some(inv.id)),
                        Err(e) => (e.kind().to_string(), None),
                    };
                    if let Err(e) = host.storage().schedule_finished(&schedule.name, &outcome, id) {
                        tracing::error!(schedule = %schedule.name, error = %e, "cannot record a schedule outcome");
                    }
                    running.lock().unwrap_or_else(|p| p.into_inner()).remove(&schedule.name);
                });
            }
        }
        if !tasks.is_empty() {
            tracing::info!(runs = tasks.len(), "waiting for scheduled runs to finish");
            let _ =
                tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
                    .await;
        }
    }
}
