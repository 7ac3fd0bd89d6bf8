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
//! wait has lasted [`LONG_WAIT`] callers that find the storage mutex taken fail with
//! `Busy` (503, `Retry-After`) instead of queueing: later ones at once, ones already
//! queued as soon as they see it (they park on the mutex with a timeout and look up).
//! The wait ends with the hold it was made under; from then on nobody treats it as going
//! on.
//!
//! Reads do not queue behind such a wait at all: [`lock_unless_waiting`] hands them to
//! the storage's second connection instead (WAL readers never wait for a writer).
//!
//! What the waits have seen is kept per database ([`BusyState`], one per `Storage`): a
//! lock on one database says nothing about another's. SQLite's busy handler is a plain
//! function, so it learns whose wait it is from the thread: [`Held`], the storage
//! mutex's guard, names its `BusyState` for as long as it is held.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

/// How long a statement waits for another process's lock before it fails with
/// `SQLITE_BUSY` (then [`super::StorageError::Busy`]).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pauses between retries, as SQLite's own busy timeout spaces them (ms); then 100 ms.
const DELAYS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

/// One database's busy waits, shared by the callers of its storage mutex.
#[derive(Debug, Default)]
pub(super) struct BusyState {
    /// When a busy wait last paused, as ms since [`epoch`]; 0 for never. Callers that
    /// find the storage mutex taken wait off the runtime if this is recent: the holder
    /// may be waiting out a lock for seconds.
    last_busy_ms: AtomicU64,
    /// When a busy wait that had already lasted [`LONG_WAIT`] last paused (ms since
    /// [`epoch`]; 0 for never). While that is recent, callers that find the storage
    /// mutex taken do not queue behind the wait: they fail at once with `Busy` (503).
    long_wait_ms: AtomicU64,
}

thread_local! {
    /// The `BusyState`s of the storage mutexes this thread holds, newest last (the
    /// newest is the one whose statement runs), each with whether a busy wait was noted
    /// for it during this hold.
    static HOLDING: RefCell<Vec<(Arc<BusyState>, bool)>> = const { RefCell::new(Vec::new()) };
}

/// The storage mutex's guard: the connection, and for as long as it is held, this
/// thread's note of whose busy waits it would be.
pub(super) struct Held<'a, T> {
    guard: MutexGuard<'a, T>,
    state: Arc<BusyState>,
}

impl<'a, T> Held<'a, T> {
    fn new(guard: MutexGuard<'a, T>, state: &Arc<BusyState>) -> Self {
        HOLDING.with(|h| h.borrow_mut().push((state.clone(), false)));
        Self {
            guard,
            state: state.clone(),
        }
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        // Its own note, wherever it is: guards need not be released in the reverse
        // order they were taken.
        let noted = HOLDING.with(|h| {
            let mut holding = h.borrow_mut();
            let i = holding
                .iter()
                .rposition(|(s, _)| Arc::ptr_eq(s, &self.state))?;
            Some(holding.remove(i).1)
        });
        // A busy wait made under this hold is over with it (done or given up): callers
        // queued for the mutex stop treating it as going on.
        if noted == Some(true) {
            self.state.last_busy_ms.store(0, Ordering::Relaxed);
            self.state.long_wait_ms.store(0, Ordering::Relaxed);
        }
    }
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Held<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

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
    // A connection outside the storage mutex (the WAL keeper's) has no one queueing
    // behind it to tell.
    let state = HOLDING.with(|h| {
        h.borrow_mut().last_mut().map(|(state, noted)| {
            *noted = true;
            state.clone()
        })
    });
    let note = |now| {
        if let Some(state) = &state {
            state.last_busy_ms.store(now, Ordering::Relaxed);
            if waited >= LONG_WAIT.as_millis() as u64 {
                state.long_wait_ms.store(now, Ordering::Relaxed);
            }
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
/// `None` (the caller answers `Busy`) once a holder has been waiting out another
/// process's lock for longer than [`LONG_WAIT`], including while this caller waits:
/// queueing behind such a wait would only pile up.
pub(super) fn lock_contended<'a, T>(
    mutex: &'a Mutex<T>,
    state: &Arc<BusyState>,
) -> Option<Held<'a, T>> {
    lock_unless(mutex, state, |s| recent(&s.long_wait_ms))
}

/// Lock `mutex` for a read: like [`lock_contended`], but `None` as soon as its holder is
/// waiting out another process's lock, so that the caller reads on another connection
/// instead of queueing behind the wait.
pub(super) fn lock_unless_waiting<'a, T>(
    mutex: &'a Mutex<T>,
    state: &Arc<BusyState>,
) -> Option<Held<'a, T>> {
    lock_unless(mutex, state, |s| recent(&s.last_busy_ms))
}

/// Lock `mutex`, or `None` as soon as `give_up` says so while it is taken. Past a short
/// spin the wait goes off the runtime and parks on the mutex (woken when it is released),
/// looking up every [`CHECK_EVERY`] to notice `give_up` becoming true (a lock wait
/// starting or growing long) instead of waiting behind it.
fn lock_unless<'a, T>(
    mutex: &'a Mutex<T>,
    state: &Arc<BusyState>,
    give_up: impl Fn(&BusyState) -> bool,
) -> Option<Held<'a, T>> {
    let started = Instant::now();
    loop {
        if let Some(guard) = mutex.try_lock() {
            return Some(Held::new(guard, state));
        }
        if give_up(state) {
            return None;
        }
        if recent(&state.last_busy_ms) || started.elapsed() > SPIN {
            break;
        }
        std::thread::yield_now();
    }
    off_the_runtime(|| {
        loop {
            if let Some(guard) = mutex.try_lock_for(CHECK_EVERY) {
                return Some(Held::new(guard, state));
            }
            if give_up(state) {
                return None;
            }
        }
    })
}

/// How often a caller parked on the storage mutex looks up to check whether to give up.
const CHECK_EVERY: Duration = Duration::from_millis(10);

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

    #[test]
    fn a_long_wait_on_one_database_fails_fast_only_its_own_callers() {
        let (a, b) = (
            Arc::new(BusyState::default()),
            Arc::new(BusyState::default()),
        );
        let (db_a, db_b) = (Mutex::new("a"), Mutex::new("b"));
        {
            // A statement on database A, 528 ms into waiting out another process's lock
            // (its 15th pause): a long wait, noted for A, whose mutex this thread holds.
            let held = lock_contended(&db_a, &a).unwrap();
            assert_eq!(*held, "a");
            assert!(wait_while_busy(14));
            assert!(recent(&a.long_wait_ms));
            assert_eq!(b.long_wait_ms.load(Ordering::Relaxed), 0, "B saw no wait");
        }
        assert!(
            HOLDING.with(|h| h.borrow().is_empty()),
            "released with the guard"
        );
        // The wait ended with the hold: nobody goes on treating it as going on.
        assert_eq!(a.long_wait_ms.load(Ordering::Relaxed), 0);
        assert_eq!(a.last_busy_ms.load(Ordering::Relaxed), 0);

        // While A's holder (another thread) is in a long wait, A's callers fail fast,
        // those already queued included; B's callers queue as usual.
        std::thread::scope(|scope| {
            let a_taken = db_a.lock();
            let a_queued = scope.spawn(|| lock_contended(&db_a, &a).is_none());
            std::thread::sleep(Duration::from_millis(50));
            a.long_wait_ms.store(now_ms(), Ordering::Relaxed);
            a.last_busy_ms.store(now_ms(), Ordering::Relaxed);
            assert!(a_queued.join().unwrap(), "A: a queued caller gives up");
            let b_taken = db_b.lock();
            let b_caller = scope.spawn(|| lock_contended(&db_b, &b).map(|held| *held));
            assert!(lock_contended(&db_a, &a).is_none(), "A: fails fast");
            drop(b_taken);
            assert_eq!(b_caller.join().unwrap(), Some("b"), "B: waits its turn");
            drop(a_taken);
        });
    }

    #[test]
    fn guards_released_out_of_order_leave_the_right_database_noted() {
        let (a, b) = (
            Arc::new(BusyState::default()),
            Arc::new(BusyState::default()),
        );
        let (db_a, db_b) = (Mutex::new("a"), Mutex::new("b"));
        let held_a = lock_contended(&db_a, &a).unwrap();
        let held_b = lock_contended(&db_b, &b).unwrap();
        // A goes first: the thread still holds B, and B's waits are B's.
        drop(held_a);
        assert!(wait_while_busy(0));
        assert_ne!(b.last_busy_ms.load(Ordering::Relaxed), 0, "noted for B");
        assert_eq!(a.last_busy_ms.load(Ordering::Relaxed), 0, "not for A");
        drop(held_b);
        assert!(HOLDING.with(|h| h.borrow().is_empty()));
    }
}
