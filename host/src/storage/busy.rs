//! Waiting out another process's database lock without stalling the async runtime.
//!
//! Storage calls run on the caller's thread, which in `keyhole serve` is a tokio worker:
//! a hot-path call costs no thread hop. While another process (a `keyhole` command, a
//! backup, an `sqlite3` shell) holds the write lock, a write waits for it, up to
//! [`BUSY_TIMEOUT`]. Done naively, that wait would block the worker, and every caller
//! queued on the storage mutex would block its worker too, until no request at all, not
//! even `/healthz`, is answered. So both waits step off the runtime
//! (`block_in_place`: the worker's other tasks move to another thread): SQLite's busy
//! wait through [`wait_while_busy`], and waiting for the mutex while its holder is in
//! such a wait (or past an ordinary hold) through [`lock_contended`]. Neither costs
//! anything when nobody else holds the lock.
//!
//! Each off-runtime wait takes a thread of tokio's blocking pool. So that a long lock
//! under heavy traffic cannot use up that pool (and stall the runtime after all), once a
//! wait has lasted [`LONG_WAIT`] later callers that find the storage mutex taken fail at
//! once with `Busy` (503, `Retry-After`) instead of queueing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// How long a statement waits for another process's lock before it fails with
/// `SQLITE_BUSY` (then [`super::StorageError::Busy`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pauses between retries, as SQLite's own busy timeout spaces them (ms); then 100 ms.
const DELAYS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

/// When a busy wait last paused, as ms since [`epoch`]; 0 for never. Callers that find
/// the storage mutex taken wait off the runtime if this is recent: the holder may be
/// waiting out a lock for seconds.
static LAST_BUSY_MS: AtomicU64 = AtomicU64::new(0);

/// When a busy wait that had already lasted [`LONG_WAIT`] last paused (ms since
/// [`epoch`]; 0 for never). While that is recent, callers that find the storage mutex
/// taken do not queue behind the wait: they fail at once with `Busy` (503).
static LONG_WAIT_MS: AtomicU64 = AtomicU64::new(0);

/// How long a busy wait goes on before later callers stop queueing behind it. Each
/// queued caller holds a blocking-pool thread; failing fast keeps that pool, and with it
/// the runtime, from running out under traffic while another process holds the lock.
const LONG_WAIT: Duration = Duration::from_millis(500);

/// A pause longer than the longest retry delay: a holder still in its wait has paused
/// more recently than this.
const RECENT: Duration = Duration::from_millis(250);

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 keeps meaning "never".
    epoch().elapsed().as_millis() as u64 + 1
}

/// SQLite's busy handler: pause (off the runtime) and retry until [`BUSY_TIMEOUT`].
/// `attempt` counts the calls for this statement so far.
pub(super) fn wait_while_busy(attempt: i32) -> bool {
    let attempt = usize::try_from(attempt).unwrap_or(0);
    let waited: u64 = match DELAYS_MS.get(..attempt) {
        Some(done) => done.iter().sum(),
        None => DELAYS_MS.iter().sum::<u64>() + (attempt - DELAYS_MS.len()) as u64 * 100,
    };
    let budget = BUSY_TIMEOUT.as_millis() as u64;
    if waited >= budget {
        return false;
    }
    let pause = DELAYS_MS
        .get(attempt)
        .copied()
        .unwrap_or(100)
        .min(budget - waited);
    let note = |now| {
        LAST_BUSY_MS.store(now, Ordering::Relaxed);
        if waited >= LONG_WAIT.as_millis() as u64 {
            LONG_WAIT_MS.store(now, Ordering::Relaxed);
        }
    };
    note(now_ms());
    off_the_runtime(|| std::thread::sleep(Duration::from_millis(pause)));
    note(now_ms());
    true
}

/// Lock `mutex`: at once when it is free. When it is taken, keep trying on this thread
/// (yielding) while the hold looks like an ordinary short one; as soon as the holder is
/// waiting out another process's lock, or the wait passes [`SPIN`], wait off the runtime.
/// `None` (the caller answers `Busy`) when the holder has been waiting out another
/// process's lock for longer than [`LONG_WAIT`]: queueing behind it would only pile up.
pub(super) fn lock_contended<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    let started = Instant::now();
    loop {
        // A panic while holding the lock cannot leave SQLite inconsistent (each call is
        // one statement or one transaction), so recover from poisoning.
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
        if recent(&LONG_WAIT_MS) {
            return None;
        }
        if recent(&LAST_BUSY_MS) || started.elapsed() > SPIN {
            return Some(off_the_runtime(|| {
                mutex.lock().unwrap_or_else(|p| p.into_inner())
            }));
        }
        std::thread::yield_now();
    }
}

/// Longest wait for the storage mutex on a worker thread: far beyond an ordinary hold
/// (a statement, a batch of records), and short against a busy wait's first pause.
const SPIN: Duration = Duration::from_millis(1);

/// Whether `when` (ms since [`epoch`], 0 for never) was within [`RECENT`].
fn recent(when: &AtomicU64) -> bool {
    let last = when.load(Ordering::Relaxed);
    last != 0 && now_ms().saturating_sub(last) < RECENT.as_millis() as u64
}

/// Run blocking `f` so that the tokio worker it is called on (if any) hands its other
/// tasks to another thread first. Elsewhere (a plain thread, a blocking-pool thread, a
/// current-thread runtime, where that hand-over is not possible) `f` just runs.
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waits_add_up_to_the_timeout_then_give_up() {
        // Sum the pauses the handler would take, without taking them.
        let budget = BUSY_TIMEOUT.as_millis() as u64;
        let mut waited = 0;
        let mut attempt = 0;
        while waited < budget {
            waited += DELAYS_MS
                .get(attempt)
                .copied()
                .unwrap_or(100)
                .min(budget - waited);
            attempt += 1;
        }
        assert_eq!(waited, budget);
        assert!(!wait_while_busy(attempt as i32), "gives up at the budget");
    }
}
