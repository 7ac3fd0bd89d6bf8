//! Group commit for invocation records: the first caller to arrive while no commit runs
//! leads. It lets every invocation that is ready to finish run first (their records join
//! the queue), then stores the whole queue in one transaction and answers each caller.
//! Whatever arrives during that commit is stored by a drain task, batched the same way.
//!
//! Under load this turns N commits into one (the commit, not the insert, is what costs).
//! With one invocation at a time, the caller commits its own record: no task hop and no
//! cross-thread wake-up on the path to its answer. (One that arrives while a drain task
//! lingers over a server's records, below, waits for that drain: at most [`LINGER`]
//! more.) Either way a caller waits until its
//! record is committed and gets its id: when `record` returns an id, the row is in the
//! database.
//!
//! `record_after` does not wait: it hands back the id the record will have, taken from
//! a block of ids this process reserved in the database, and the record joins the queue
//! for a drain task, which lets such records gather for [`LINGER`] before it commits
//! them. `keyhole serve` answers that way, so no invocation waits for a commit, and one
//! request at a time does not cost a commit each; [`Recorder::settled`] lets its readers
//! wait for the records it has answered with an id.
//!
//! When another process holds the database's write lock past the busy timeout (or, for
//! callers queued behind that wait, past the storage's give-up time), a waiting caller
//! is answered with no id (a `record_after` record keeps the id it was answered with),
//! and its record is kept in a bounded backlog (at most
//! [`MAX_BACKLOG_BYTES`], oldest first) that joins a later batch: the next commit after
//! [`RETRY_AFTER`], or a retry task's. Records are lost when the backlog overflows (the
//! oldest go), when a batch fails for another reason (a full disk, an I/O error), or when
//! the process ends with the lock still held; each is logged.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{InvocationRow, Storage, StorageError};

/// Most records in one transaction.
const MAX_BATCH: usize = 256;

/// How long the drain task lets records that nobody waits for gather before it commits
/// them. A commit costs tens of µs of CPU (the WAL frames written, their checksums), more
/// than the rest of a record; with one request at a time, each record would be a commit
/// of its own, on the core the next request needs. The records of a process that dies
/// meanwhile are lost, as any answered before their commit are.
const LINGER: Duration = Duration::from_millis(5);

/// How many record ids a process takes at a time for [`Recorder::record_after`]: more
/// than the records of several full batches, so with a spare block taken along by a
/// commit once a quarter of the current one is used, a busy process does not run out between
/// two commits.
const ID_BLOCK: u32 = 1024;

/// How long records held back by another process's lock wait before they are tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The most the records held back may take (their text, roughly); past it the oldest go.
pub const MAX_BACKLOG_BYTES: usize = 32 << 20;

/// What a caller is told: its record's id, `None` when the record was held back for a
/// retry, or why it could not be stored.
type Reply = oneshot::Sender<Result<Option<i64>, String>>;

/// Commits invocation records, batching those that arrive together.
#[derive(Debug)]
pub struct Recorder {
    storage: Arc<Storage>,
    state: Arc<Mutex<State>>,
    /// Held while taking a block of ids, so blocks are taken one at a time, in order.
    reserving: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Someone (a leading caller or the drain task) will commit what is waiting.
    committing: bool,
    /// A batch is being committed right now (`committing` is set from before: while a
    /// drain task waits for its turn, this is not).
    in_commit: bool,
    /// Records to commit, oldest first, with where to send each one's id. At most one
    /// per in-flight invocation (bounded by the caller), so this is bounded too.
    waiting: Vec<(InvocationRow, Reply)>,
    /// Records held back by another process's lock, oldest first, with their size.
    backlog: VecDeque<(InvocationRow, usize)>,
    /// The sum of those sizes (at most `MAX_BACKLOG_BYTES`).
    backlog_bytes: usize,
    /// The backlog joins no batch before this (set by each failure on a lock).
    retry_at: Option<Instant>,
    /// A retry task is sleeping until `retry_at`.
    retry_scheduled: bool,
    /// Ids taken from storage and not handed out yet.
    ids: Range<i64>,
    /// The next block, taken by a commit ahead of need (see `commit_waiting`).
    spare: Option<Range<i64>>,
    /// `record_after` is in use: commits keep a spare block ready.
    answering_first: bool,
    /// The last id handed out from a block.
    handed: i64,
    /// Ids handed out whose records are not settled yet: not committed, held back or
    /// lost. Readers in this process wait for them.
    unsettled: BTreeSet<i64>,
}

impl State {
    /// The next id of this process's block, if it has one left (the spare block
    /// follows; one taken before the ids already handed out is dropped).
    fn take_id(&mut self) -> Option<i64> {
        if self.ids.is_empty() {
            self.ids = self
                .spare
                .take()
                .filter(|block| block.start > self.handed)
                .unwrap_or(0..0);
        }
        let id = self.ids.next()?;
        self.handed = id;
        self.unsettled.insert(id);
        Some(id)
    }

    /// The spare block, if its ids are still ahead of those handed out.
    fn usable_spare(&self) -> Option<&Range<i64>> {
        self.spare.as_ref().filter(|b| b.start > self.handed)
    }

    /// Keep a newly taken block, so that block ids keep increasing: one behind the ids
    /// handed out or left is of no use (its ids are wasted, never reused); with the
    /// current block used up, the lower of it and a usable spare goes first.
    fn add_block(&mut self, block: Range<i64>) {
        if block.start <= self.handed {
            return;
        }
        if self.ids.is_empty() {
            match self.spare.take().filter(|s| s.start > self.handed) {
                Some(spare) if spare.start < block.start => {
                    self.ids = spare;
                    self.spare = Some(block);
                }
                Some(spare) => {
                    self.ids = block;
                    self.spare = Some(spare);
                }
                None => self.ids = block,
            }
        } else if block.start > self.ids.start && self.usable_spare().is_none() {
            self.spare = Some(block);
        }
    }

    /// Whether the backlog may join a batch now.
    fn backlog_due(&self) -> bool {
        !self.backlog.is_empty() && self.retry_at.is_none_or(|at| Instant::now() >= at)
    }
}

impl Recorder {
    /// A recorder writing to `storage`.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            state: Arc::default(),
            reserving: Mutex::new(()),
        }
    }

    /// Store `row` after the caller has answered: returns the id it will be stored
    /// under at once, and commits it in the background (batched like [`Recorder::record`]).
    /// `None` when this process had no id to give: its blocks were used up and another
    /// caller was taking the next one (the record is then numbered when it is committed),
    /// or taking it failed (another process holds the database's lock: the record is
    /// held back; or storage failed: it is lost, logged). [`Recorder::reserve_ahead`]
    /// and the commits' spare blocks make that rare. Ids are unique across processes;
    /// those from blocks increase within one.
    pub fn record_after(&self, mut row: InvocationRow) -> Option<i64> {
        let id = match self.next_id() {
            Ok(id) => id,
            Err(e) if e.is_busy() => {
                let (reply, _) = oneshot::channel();
                hold_back(&self.storage, &self.state, Vec::new(), vec![(row, reply)]);
                return None;
            }
            Err(e) => {
                crate::metrics::records_lost("storage_error", 1);
                tracing::error!(error = %e, "could not record the invocation");
                return None;
            }
        };
        // Nobody waits for the answer: the caller has its id (or, with 0, the commit
        // numbers the record).
        row.id = id.unwrap_or(0);
        let (reply, _) = oneshot::channel();
        let lead = {
            let mut state = lock(&self.state);
            state.waiting.push((row, reply));
            !std::mem::replace(&mut state.committing, true)
        };
        if lead {
            start_drain(&self.storage, &self.state);
        }
        id
    }

    /// Give the ids this process took and did not use back to the database, if no other
    /// process took ids since, so that ids do not jump by a block at every restart. For
    /// a process about to exit, once its records are stored; after it, a record takes a
    /// new block. Best effort: nothing goes back while records are still to be stored.
    pub fn return_unused_ids(&self) {
        let (ids, spare) = {
            let mut state = lock(&self.state);
            if state.committing || !state.waiting.is_empty() {
                return;
            }
            let handed = state.handed;
            let ids = std::mem::replace(&mut state.ids, 0..0);
            (ids, state.spare.take().filter(|s| s.start > handed))
        };
        let unused = match spare {
            Some(spare) if !ids.is_empty() && ids.end == spare.start => ids.start..spare.end,
            Some(spare) => spare,
            None if !ids.is_empty() => ids,
            None => return,
        };
        if let Err(e) = self.storage.return_invocation_ids(unused) {
            tracing::debug!(error = %e, "could not give back unused invocation record ids");
        }
    }

    /// Take a block of ids now, so that the first answers of a server need not: a
    /// server calls it before it accepts requests.
    pub fn reserve_ahead(&self) -> Result<(), StorageError> {
        let block = self.storage.reserve_invocation_ids(ID_BLOCK)?;
        let mut state = lock(&self.state);
        state.answering_first = true;
        state.add_block(block);
        Ok(())
    }

    /// The next id from this process's blocks. The server takes a block when it starts
    /// and commits keep a spare one ready, so a block is taken here only when both ran
    /// out; `Ok(None)` when another caller is taking one right now.
    fn next_id(&self) -> Result<Option<i64>, StorageError> {
        {
            let mut state = lock(&self.state);
            state.answering_first = true;
            if let Some(id) = state.take_id() {
                return Ok(Some(id));
            }
        }
        let _one_at_a_time = match self.reserving.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
        };
        let block = self.storage.reserve_invocation_ids(ID_BLOCK)?;
        let mut state = lock(&self.state);
        state.add_block(block);
        Ok(state.take_id())
    }

    /// Wait until every record whose id was handed out before this call is settled
    /// (committed and readable, held back by a lock, or lost), but no longer than half a
    /// second: a read does not queue behind another process's lock. Readers in this
    /// process call it first, so that an id from an answer can be looked up at once.
    pub async fn settled(&self) {
        let target = lock(&self.state).handed;
        let give_up = Instant::now() + Duration::from_millis(500);
        while Instant::now() < give_up {
            let pending = lock(&self.state)
                .unsettled
                .first()
                .is_some_and(|&first| first <= target);
            if !pending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Store `row`; returns its id once it is committed, or `None` when another process
    /// holds the database's lock: the record is then held back and stored later.
    pub async fn record(&self, mut row: InvocationRow) -> Result<Option<i64>, StorageError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut state = lock(&self.state);
            // With a block of ids in use (`record_after`'s), from it too, so ids keep
            // increasing within the process; otherwise the commit numbers it.
            row.id = state.take_id().unwrap_or(0);
            state.waiting.push((row, reply));
            !std::mem::replace(&mut state.committing, true)
        };
        if lead {
            // Whatever happens to this caller from here (even being dropped at the
            // `await`), the hand-off sees that what is waiting gets committed.
            let _hand_off = HandOff {
                storage: &self.storage,
                state: &self.state,
            };
            // Rescheduling once puts this caller behind every invocation that is ready
            // to finish, so their records join the batch. Alone, it is polled again at
            // once.
            requeue_once().await;
            // Nothing was waiting when this caller led, so its record is in this batch.
            commit_waiting(&self.storage, &self.state);
        }
        match answer.await {
            Ok(result) => result.map_err(StorageError::Background),
            Err(_) => Err(StorageError::Background(
                "the invocation writer stopped before storing the record".into(),
            )),
        }
    }

    /// How many records are held back, waiting for another process's lock to go.
    #[cfg(test)]
    fn held_back(&self) -> usize {
        lock(&self.state).backlog.len()
    }
}

impl Drop for Recorder {
    /// Records still held back get a last attempt, unless a write failed on the lock
    /// under a second ago: it is most likely still held, and waiting out the busy timeout
    /// again would stall whoever drops this (a `keyhole run` about to exit). A long-running
    /// process calls [`Recorder::store_held_back`] before it exits instead.
    fn drop(&mut self) {
        let recent_failure = {
            let state = lock(&self.state);
            if state.backlog.is_empty() && !state.committing {
                return;
            }
            state.retry_at.is_some_and(|at| Instant::now() < at)
        };
        if recent_failure {
            lose_backlog(&self.state);
        } else {
            self.store_held_back();
        }
    }
}

impl Recorder {
    /// The last chance for records held back (a process about to exit), on this thread:
    /// wait for a commit running elsewhere (a retry's, which may hold backlog rows) to
    /// end, then commit the backlog and anything waiting, stopping at the first failure
    /// on the lock. What is left then is logged as lost. Blocks at most about twice the
    /// busy timeout: that wait and this attempt.
    pub fn store_held_back(&self) {
        let deadline = Instant::now() + super::busy::BUSY_TIMEOUT + RETRY_AFTER;
        let entry_retry_at = lock(&self.state).retry_at;
        loop {
            {
                let mut state = lock(&self.state);
                // A drain task that has not started yet (it may never, if its runtime is
                // this thread) is not waited for: this commits what it would have.
                if !state.committing || !state.in_commit || Instant::now() >= deadline {
                    if state.backlog.is_empty() && state.waiting.is_empty() {
                        return;
                    }
                    if state.retry_at != entry_retry_at {
                        // The commit that ran meanwhile failed on the lock: it is still
                        // held, and another attempt would only wait it out again.
                        drop(state);
                        lose_backlog(&self.state);
                        return;
                    }
                    state.committing = true;
                    state.retry_at = None;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Batches until nothing is due; a failure on the lock sets a retry time again:
        // stop there.
        while commit_waiting(&self.storage, &self.state) {
            let mut state = lock(&self.state);
            if state.retry_at.is_some() {
                state.committing = false;
                // What is still waiting has no one left to commit it: lost with the
                // backlog, and counted.
                let kept = strand_waiting(&mut state);
                drop(state);
                crate::metrics::records_held_back(kept);
                break;
            }
        }
        lose_backlog(&self.state);
    }
}

/// Drop the records still held back, logging how many.
fn lose_backlog(state: &Mutex<State>) {
    let lost = {
        let mut state = lock(state);
        state.backlog_bytes = 0;
        std::mem::take(&mut state.backlog).len()
    };
    crate::metrics::records_held_back(-(lost as i64));
    crate::metrics::records_lost("locked_at_exit", lost);
    if lost > 0 {
        tracing::error!(
            records = lost,
            "invocation records held back while the database was locked are lost: it was \
             still locked when this process ended"
        );
    }
}

/// Log what became of records that were held back.
fn stored_held_back(records: usize, error: Option<&StorageError>) {
    match error {
        None => tracing::info!(
            records,
            "stored invocation records held back while the database was locked"
        ),
        Some(e) => tracing::error!(
            records,
            error = %e,
            "invocation records held back while the database was locked are lost"
        ),
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A leading caller's duty on the way out: stop committing if nothing is due, otherwise
/// start the drain task (or, with no runtime to spawn on, drain right here).
struct HandOff<'a> {
    storage: &'a Arc<Storage>,
    state: &'a Arc<Mutex<State>>,
}

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        {
            let mut state = lock(self.state);
            if state.waiting.is_empty() && !state.backlog_due() {
                state.committing = false;
                return;
            }
        }
        start_drain(self.storage, self.state);
    }
}

/// Commit what is waiting on a drain task, or, with no runtime to spawn on, right here.
fn start_drain(storage: &Arc<Storage>, state: &Arc<Mutex<State>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn(drain(storage.clone(), state.clone()))),
        Err(_) => while commit_waiting(storage, state) {},
    }
}

/// Commit what is waiting, in batches, until nothing is; then stop committing. Before
/// each batch it lets the invocations that are ready finish first, for as long as their
/// records keep arriving: most records it commits are `record_after`'s, whose callers
/// have answered already, so larger batches cost no one an answer.
fn drain(storage: Arc<Storage>, state: Arc<Mutex<State>>) -> impl Future<Output = ()> {
    // Made now, not at the first poll: if the task is dropped unfinished, even unpolled
    // (its runtime shut down), committing stops and the waiting replies are dropped, so
    // their callers get an error instead of waiting forever. Records whose caller is gone
    // (`record_after`'s, which nobody waits for) join the backlog, for the recorder's
    // last attempt.
    let mut abandon = Abandon(Some(state.clone()));
    async move {
        loop {
            let mut seen = usize::MAX;
            loop {
                let n = lock(&state).waiting.len();
                if n == seen || n >= MAX_BATCH {
                    break;
                }
                seen = n;
                requeue_once().await;
            }
            if nobody_waits(&state) {
                tokio::time::sleep(LINGER).await;
            }
            if !commit_waiting(&storage, &state) {
                abandon.disarm();
                return;
            }
        }
    }
}

/// Whether every waiting record is one nobody waits for (`record_after`'s: a server's,
/// answered already), and a batch has room for more: then the drain lingers for
/// [`LINGER`] before it commits, so that records arriving one at a time share a commit.
fn nobody_waits(state: &Mutex<State>) -> bool {
    let state = lock(state);
    let n = state.waiting.len();
    n > 0 && n < MAX_BATCH && state.waiting.iter().all(|(_, reply)| reply.is_closed())
}

/// See [`drain`]; disarmed (`None`) when the drain ends normally.
struct Abandon(Option<Arc<Mutex<State>>>);

impl Abandon {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let Some(state) = self.0.take() else {
            return;
        };
        let mut state = lock(&state);
        state.committing = false;
        let kept = strand_waiting(&mut state);
        drop(state);
        crate::metrics::records_held_back(kept);
    }
}

/// Move the waiting records whose caller is gone to the backlog and drop the others
/// (their callers get an error); returns how many moved.
fn strand_waiting(state: &mut State) -> i64 {
    let mut kept = 0;
    for (row, reply) in std::mem::take(&mut state.waiting) {
        state.unsettled.remove(&row.id);
        if reply.is_closed() {
            let size = approx_size(&row);
            state.backlog_bytes += size;
            state.backlog.push_back((row, size));
            kept += 1;
        }
    }
    kept
}

/// Commit one batch (the backlog first when it is due, then the waiting records) and
/// answer each caller; `false` (and no longer committing) when nothing was due.
fn commit_waiting(storage: &Arc<Storage>, state: &Arc<Mutex<State>>) -> bool {
    let (held, batch, refill) = {
        let mut state = lock(state);
        let n = state.waiting.len().min(MAX_BATCH);
        let m = if state.backlog_due() {
            state.backlog.len().min(MAX_BATCH - n)
        } else {
            0
        };
        if n + m == 0 {
            state.committing = false;
            return false;
        }
        let held: Vec<(InvocationRow, usize)> = state.backlog.drain(..m).collect();
        state.backlog_bytes -= held.iter().map(|(_, size)| size).sum::<usize>();
        if m > 0 && state.backlog.is_empty() {
            // Give back what a long lock made it grow to.
            state.backlog.shrink_to_fit();
        }
        let batch: Vec<(InvocationRow, Reply)> = state.waiting.drain(..n).collect();
        state.in_commit = true;
        // Take the next block of ids along with this commit once a quarter of the current
        // one is used, so `record_after` rarely has to.
        let refill = state.answering_first
            && state.usable_spare().is_none()
            && state.ids.end - state.ids.start < i64::from(ID_BLOCK / 4 * 3);
        (held, batch, refill)
    };
    if !held.is_empty() {
        crate::metrics::records_held_back(-(held.len() as i64));
    }
    let rows: Vec<&InvocationRow> = held
        .iter()
        .map(|(row, _)| row)
        .chain(batch.iter().map(|(row, _)| row))
        .collect();
    let result = storage.insert_invocations_reserving(&rows, if refill { ID_BLOCK } else { 0 });
    drop(rows);
    let settled: Vec<i64> = batch.iter().map(|(row, _)| row.id).collect();
    match result {
        Ok((ids, block)) => {
            if let Some(block) = block {
                lock(state).add_block(block);
            }
            if !held.is_empty() {
                stored_held_back(held.len(), None);
            }
            for ((_, reply), id) in batch.into_iter().zip(ids.into_iter().skip(held.len())) {
                let _ = reply.send(Ok(Some(id)));
            }
        }
        Err(e) if e.is_busy() => hold_back(storage, state, held, batch),
        Err(e) => {
            if !held.is_empty() {
                stored_held_back(held.len(), Some(&e));
            }
            crate::metrics::records_lost("storage_error", held.len() + batch.len());
            let message = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(message.clone()));
            }
        }
    }
    // Committed, held back or lost: readers need not wait for them.
    let mut state = lock(state);
    state.in_commit = false;
    for id in settled {
        state.unsettled.remove(&id);
    }
    true
}

/// Another process held the lock: put the batch's records in the backlog (after those
/// that were in it already, in order), tell their callers, and see that a retry comes.
fn hold_back(
    storage: &Arc<Storage>,
    state: &Arc<Mutex<State>>,
    held: Vec<(InvocationRow, usize)>,
    batch: Vec<(InvocationRow, Reply)>,
) {
    let added = held.len() + batch.len();
    let mut replies = Vec::with_capacity(batch.len());
    let mut fresh = Vec::with_capacity(batch.len());
    for (row, reply) in batch {
        let size = approx_size(&row);
        fresh.push((row, size));
        replies.push(reply);
    }
    let (dropped, schedule) = {
        let mut state = lock(state);
        state.retry_at = Some(Instant::now() + RETRY_AFTER);
        // The backlog's oldest rows go back in front of the rest of it; the batch's, newer
        // than anything in it, at its end.
        for (row, size) in held.into_iter().rev() {
            state.backlog_bytes += size;
            state.backlog.push_front((row, size));
        }
        for (row, size) in fresh {
            state.backlog_bytes += size;
            state.backlog.push_back((row, size));
        }
        let mut dropped = 0;
        while state.backlog_bytes > MAX_BACKLOG_BYTES {
            let Some((_, size)) = state.backlog.pop_front() else {
                break;
            };
            state.backlog_bytes -= size;
            dropped += 1;
        }
        (
            dropped,
            !std::mem::replace(&mut state.retry_scheduled, true),
        )
    };
    crate::metrics::records_held_back(added as i64 - dropped as i64);
    crate::metrics::records_lost("backlog_full", dropped);
    if dropped > 0 {
        tracing::error!(
            records = dropped,
            "invocation records lost: the records held back while the database is locked \
             passed {} MiB; the oldest went",
            MAX_BACKLOG_BYTES >> 20
        );
    }
    if !replies.is_empty() {
        tracing::warn!(
            records = replies.len(),
            "the database is locked by another process; invocation records are held back \
             and stored once it is free"
        );
    }
    for reply in replies {
        let _ = reply.send(Ok(None));
    }
    if schedule {
        schedule_retry(storage, state);
    }
}

/// A task that commits the backlog once its retry time comes (unless a commit running
/// then takes it along), looking again after each failure moves that time on, until the
/// backlog is empty. With no runtime, the backlog waits for the next record (or the end).
fn schedule_retry(storage: &Arc<Storage>, state: &Arc<Mutex<State>>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        lock(state).retry_scheduled = false;
        return;
    };
    // Whichever way the task ends, even dropped unpolled with its runtime, the next
    // failure can schedule another. (On its normal way out the task clears the flag
    // itself, under the same lock as its last look at the backlog.)
    struct Unschedule(Option<Arc<Mutex<State>>>);
    impl Drop for Unschedule {
        fn drop(&mut self) {
            if let Some(state) = self.0.take() {
                lock(&state).retry_scheduled = false;
            }
        }
    }
    let unschedule = Unschedule(Some(state.clone()));
    let (storage, state) = (storage.clone(), state.clone());
    drop(handle.spawn(async move {
        let mut unschedule = unschedule;
        // Until the backlog is empty: each failure meanwhile moves the retry time on.
        loop {
            let at = {
                let mut state = lock(&state);
                if state.backlog.is_empty() {
                    state.retry_scheduled = false;
                    unschedule.0 = None;
                    return;
                }
                state.retry_at.unwrap_or_else(Instant::now)
            };
            tokio::time::sleep_until(at.into()).await;
            let lead = {
                let mut state = lock(&state);
                state.backlog_due() && !std::mem::replace(&mut state.committing, true)
            };
            if lead {
                drain(storage.clone(), state.clone()).await;
            } else {
                // Not due after all (a failure moved the time on), or a commit running
                // now takes the backlog along: look again in a while.
                tokio::time::sleep(RETRY_AFTER / 10).await;
            }
        }
    }));
}

/// Roughly what a record held in memory takes: its text.
fn approx_size(row: &InvocationRow) -> usize {
    let text = row.function.len()
        + row.outcome.len()
        + row.error.as_ref().map_or(0, String::len)
        + row.logs.iter().map(|l| l.len() + 24).sum::<usize>()
        + row.stdout.len()
        + row.stderr.len();
    let calls = serde_json::to_string(&row.outbound).map_or(0, |s| s.len());
    std::mem::size_of::<InvocationRow>() + text + calls
}

/// Return `Pending` once after asking to be polled again: the task goes to the back of
/// its worker's run queue.
async fn requeue_once() {
    let mut requeued = false;
    std::future::poll_fn(|cx| {
        if requeued {
            std::task::Poll::Ready(())
        } else {
            requeued = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    fn row(function: &str) -> InvocationRow {
        InvocationRow::for_test(function)
    }

    /// A recorder on a new database (in the returned directory), and its storage.
    fn fresh() -> (tempfile::TempDir, Arc<Storage>, Recorder) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        let recorder = Recorder::new(storage.clone());
        (dir, storage, recorder)
    }

    /// Another process's connection to `fresh`'s database, holding its write lock.
    fn lock_from_outside(dir: &tempfile::TempDir) -> rusqlite::Connection {
        let other = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        other
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_all_land_with_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        let recorder = Arc::new(Recorder::new(storage.clone()));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let r = recorder.clone();
                tokio::spawn(async move {
                    let id = r.record(row(&format!("f{i}"))).await.unwrap();
                    (i, id.expect("stored, not held back"))
                })
            })
            .collect();
        let mut sent = std::collections::BTreeMap::new();
        for t in tasks {
            let (i, id) = t.await.unwrap();
            sent.insert(id, format!("f{i}"));
        }
        assert_eq!(sent.len(), 200, "ids are distinct");
        let stored = storage.recent_invocations(None, 500).unwrap();
        assert_eq!(stored.len(), 200);
        // Every id handed back names the row that was sent with it.
        for inv in &stored {
            assert_eq!(sent.get(&inv.id), Some(&inv.function));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_dropped_midway_still_gets_its_record_stored_and_hands_off() {
        let (_dir, storage, recorder) = fresh();
        // Polled once, the first caller leads and yields; then it is dropped (as when a
        // client hangs up), before committing anything.
        let mut leader = Box::pin(recorder.record(row("a")));
        let first = std::future::poll_fn(|cx| Poll::Ready(leader.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the leader yields before committing");
        drop(leader);
        // The next record is not stuck behind the vanished leader.
        let id = tokio::time::timeout(Duration::from_secs(5), recorder.record(row("b")))
            .await
            .expect("the next record is not stuck")
            .unwrap()
            .expect("stored, not held back");
        assert!(id > 0);
        let stored: Vec<String> = storage
            .recent_invocations(None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.function)
            .collect();
        assert_eq!(
            stored,
            ["b", "a"],
            "the dropped leader's record was stored too"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_answered_first_get_ids_no_other_process_takes_and_land_under_them() {
        let (dir, storage, recorder) = fresh();
        // Another process on the same database, its records numbered as they commit.
        let other = Recorder::new(Arc::new(Storage::open(&dir.path().join("t.db")).unwrap()));
        let mut sent = std::collections::BTreeMap::new();
        let mut ours = Vec::new();
        // More than two blocks' worth.
        for i in 0..(ID_BLOCK as usize * 2 + 20) {
            let id = recorder.record_after(row(&format!("a{i}"))).expect("an id");
            assert!(sent.insert(id, format!("a{i}")).is_none(), "{id} twice");
            ours.push(id);
            if i % 10 == 0 {
                let id = other.record(row(&format!("b{i}"))).await.unwrap().unwrap();
                assert!(sent.insert(id, format!("b{i}")).is_none(), "{id} twice");
            }
        }
        assert!(ours.is_sorted(), "within a process ids increase: {ours:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let stored = loop {
            let stored = storage.recent_invocations(None, 10_000).unwrap();
            if stored.len() >= sent.len() || Instant::now() > deadline {
                break stored;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(stored.len(), sent.len());
        for inv in &stored {
            assert_eq!(sent.get(&inv.id), Some(&inv.function), "id {}", inv.id);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_record_answered_first_is_committed_after_and_readable_once_settled() {
        let (_dir, storage, recorder) = fresh();
        let id = recorder.record_after(row("a")).unwrap();
        // Nothing has yielded yet: the record is not committed.
        assert_eq!(functions(&storage), Vec::<String>::new());
        recorder.settled().await;
        let stored = storage.recent_invocations(None, 10).unwrap();
        assert_eq!((stored.len(), stored[0].id), (1, id));
    }

    #[test]
    fn a_record_answered_first_is_stored_when_the_recorder_goes_before_its_task_runs() {
        let (_dir, storage, recorder) = fresh();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let started = Instant::now();
        // The commit task is queued on this thread, which is busy dropping the recorder:
        // the drop does not wait for it (out to its deadline), it commits the record.
        rt.block_on(async move {
            recorder.record_after(row("a")).unwrap();
            drop(recorder);
        });
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the drop waited {:?} for a task that could not run",
            started.elapsed()
        );
        assert_eq!(functions(&storage), ["a"]);
    }

    // Waits out the busy timeout (10 s) once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_answered_first_then_kept_out_by_a_lock_lands_under_its_id_later() {
        let (dir, storage, recorder) = fresh();
        recorder.record_after(row("before")).unwrap();
        recorder.settled().await;
        let other = lock_from_outside(&dir);
        // The block has ids left: the answer names one at once, lock or not.
        let id = recorder
            .record_after(row("during"))
            .expect("an id from the block");
        // Readers do not wait out the lock for it.
        let asked = Instant::now();
        recorder.settled().await;
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        // Its commit does, then holds it back.
        let deadline = Instant::now() + Duration::from_secs(30);
        while recorder.held_back() == 0 {
            assert!(Instant::now() < deadline, "never held back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        other.execute_batch("ROLLBACK").unwrap();
        // (Leaving the backlog comes before the commit: look for the row itself.)
        let deadline = Instant::now() + RETRY_AFTER * 5;
        let during = loop {
            let found = storage
                .recent_invocations(None, 10)
                .unwrap()
                .into_iter()
                .find(|r| r.function == "during");
            if let Some(row) = found {
                break row;
            }
            assert!(
                Instant::now() < deadline,
                "the held-back record was not retried"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(during.id, id, "stored under the id it was answered with");
    }

    /// The first `record_after` takes a block of ids and waits out another process's
    /// lock doing so; meanwhile others do not queue behind it: they answer at once,
    /// without an id, and their records are numbered when committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn while_one_caller_waits_out_a_lock_for_ids_the_others_answer_at_once() {
        let (dir, storage, recorder) = fresh();
        let recorder = Arc::new(recorder);
        let other = lock_from_outside(&dir);
        let first = {
            let recorder = recorder.clone();
            tokio::task::spawn_blocking(move || recorder.record_after(row("first")))
        };
        // (Probing `reserving` could take it for an instant just as the first caller
        // looks: give that caller time to take it first.)
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while recorder.reserving.try_lock().is_ok() {
            assert!(
                Instant::now() < deadline,
                "the first caller never took a block"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = Instant::now();
        assert_eq!(recorder.record_after(row("second")), None);
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        other.execute_batch("ROLLBACK").unwrap();
        let first = first.await.unwrap().expect("an id once the lock went");
        let deadline = Instant::now() + RETRY_AFTER * 5;
        while recorder.held_back() > 0 || storage.recent_invocations(None, 10).unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "{:?}", functions(&storage));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored = storage.recent_invocations(None, 10).unwrap();
        let find = |f: &str| stored.iter().find(|r| r.function == f).map(|r| r.id);
        assert_eq!(find("first"), Some(first));
        assert!(find("second").is_some_and(|id| id != first));
    }

    /// With a block taken ahead, as a server does, the commits bring the next block
    /// along before the current one runs out: answers past a whole block all get ids
    /// without taking one themselves, and nothing is held back.
    #[tokio::test(flavor = "current_thread")]
    async fn commits_bring_the_next_block_before_the_current_one_runs_out() {
        let (_dir, storage, recorder) = fresh();
        recorder.reserve_ahead().unwrap();
        let mut ids = Vec::new();
        // A quarter of the block and more, with no chance for the drain to run.
        let first = ID_BLOCK as usize / 4 + 10;
        for i in 0..first {
            ids.push(recorder.record_after(row(&format!("a{i}"))).unwrap());
        }
        assert!(lock(&recorder.state).spare.is_none());
        // The drain commits them, and takes a spare block along.
        let deadline = Instant::now() + Duration::from_secs(10);
        while storage.recent_invocations(None, 5000).unwrap().len() < first {
            assert!(Instant::now() < deadline, "not stored");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            lock(&recorder.state).spare.is_some(),
            "no block taken along"
        );
        // The rest of this block and the whole next, again with no commit between: the
        // answer path takes no block of its own (it would hold `reserving`).
        let _no_reserving = recorder.reserving.lock().unwrap();
        for i in 0..(ID_BLOCK as usize * 7 / 4 - 10) {
            ids.push(recorder.record_after(row(&format!("b{i}"))).expect("an id"));
        }
        assert!(ids.is_sorted() && ids.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(recorder.held_back(), 0);
    }

    /// Blocks can arrive out of order (a commit's and a caller's, taken at once): block
    /// ids still only go up, and a block behind them is dropped, not reused.
    #[test]
    fn blocks_are_used_in_increasing_order_and_stale_ones_dropped() {
        let mut state = State {
            handed: 10,
            spare: Some(20..30),
            ..State::default()
        };
        // The current block used up: the lower of spare and new goes first.
        state.add_block(40..50);
        assert_eq!(
            (state.ids.clone(), state.spare.clone()),
            (20..30, Some(40..50))
        );
        // Behind the ids handed out: dropped.
        state.add_block(5..15);
        assert_eq!(
            (state.ids.clone(), state.spare.clone()),
            (20..30, Some(40..50))
        );
        // Ahead, but the spare is still good: kept as it is.
        state.add_block(60..70);
        assert_eq!(state.spare, Some(40..50));
        // A stale spare is replaced; a new block below the current one is of no use.
        let mut state = State {
            handed: 25,
            ids: 26..30,
            spare: Some(12..20),
            ..State::default()
        };
        state.add_block(21..24);
        assert_eq!(state.spare, Some(12..20));
        state.add_block(40..50);
        assert_eq!(state.spare, Some(40..50));
        let taken: Vec<i64> = std::iter::from_fn(|| state.take_id()).collect();
        assert_eq!(taken, (26..30).chain(40..50).collect::<Vec<_>>());
    }

    /// A process about to exit gives back the ids it did not use, so the next one's
    /// follow on; not when another process took ids since (they would collide).
    #[tokio::test(flavor = "current_thread")]
    async fn unused_ids_go_back_only_when_no_one_took_any_since() {
        let (dir, storage, recorder) = fresh();
        let reopen = || Recorder::new(Arc::new(Storage::open(&dir.path().join("t.db")).unwrap()));
        recorder.reserve_ahead().unwrap();
        let a = recorder.record_after(row("a")).unwrap();
        recorder.settled().await;
        recorder.return_unused_ids();
        let next = reopen();
        let b = next.record(row("b")).await.unwrap().unwrap();
        assert_eq!(b, a + 1, "the ids after {a} went back");

        let server = reopen();
        server.reserve_ahead().unwrap();
        let c = server.record_after(row("c")).unwrap();
        server.settled().await;
        // Another process takes ids meanwhile: the block stays taken.
        let theirs = storage.reserve_invocation_ids(5).unwrap();
        assert!(theirs.start > c);
        server.return_unused_ids();
        let d = next.record(row("d")).await.unwrap().unwrap();
        assert_eq!(d, theirs.end);
        assert_eq!(storage.recent_invocations(None, 10).unwrap().len(), 4);
    }

    /// In a process answering first, records stored the waiting way (schedules) take
    /// their ids from the same block, so ids keep increasing there.
    #[tokio::test(flavor = "current_thread")]
    async fn a_record_stored_before_its_answer_takes_its_id_from_the_block_in_use() {
        let (dir, _storage, recorder) = fresh();
        recorder.reserve_ahead().unwrap();
        let a = recorder.record_after(row("a")).unwrap();
        // Another process's record is numbered after this process's block.
        let other = Recorder::new(Arc::new(Storage::open(&dir.path().join("t.db")).unwrap()));
        let theirs = other.record(row("x")).await.unwrap().unwrap();
        let b = recorder.record(row("b")).await.unwrap().unwrap();
        let c = recorder.record_after(row("c")).unwrap();
        assert_eq!((b, c), (a + 1, a + 2));
        assert!(theirs > c, "{theirs} is not past the block");
    }

    fn functions(storage: &Storage) -> Vec<String> {
        let rows = storage.recent_invocations(None, 10).unwrap();
        rows.into_iter().map(|r| r.function).collect()
    }

    // Each of the next two waits out the busy timeout (10 s) once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_held_back_by_another_process_lock_is_stored_once_it_goes() {
        let (dir, storage, recorder) = fresh();
        recorder.record(row("before")).await.unwrap().unwrap();
        let other = lock_from_outside(&dir);
        // The lock outlasts the busy timeout: no id, and the record is held back.
        assert_eq!(recorder.record(row("during")).await.unwrap(), None);
        assert_eq!(recorder.held_back(), 1);
        other.execute_batch("ROLLBACK").unwrap();
        // With no other record coming to take it along, the retry stores it.
        let deadline = Instant::now() + RETRY_AFTER * 5;
        while recorder.held_back() > 0 {
            assert!(
                Instant::now() < deadline,
                "the held-back record was not retried"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        recorder.record(row("after")).await.unwrap().unwrap();
        assert_eq!(functions(&storage), ["after", "during", "before"]);
    }

    #[test]
    fn records_still_held_back_are_stored_when_the_recorder_goes() {
        let (dir, storage, recorder) = fresh();
        let other = lock_from_outside(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(recorder.record(row("a"))).unwrap(), None);
        // The retry task ends with its runtime, before its time comes, and says so.
        drop(rt);
        assert!(!lock(&recorder.state).retry_scheduled);
        other.execute_batch("ROLLBACK").unwrap();
        std::thread::sleep(RETRY_AFTER);
        assert!(functions(&storage).is_empty());
        drop(recorder);
        assert_eq!(functions(&storage), ["a"]);
    }

    /// Put `functions` in `recorder`'s backlog, as a failure on the lock would.
    fn hold(recorder: &Recorder, functions: &[&str], retry_at: Option<Instant>) {
        let mut state = lock(&recorder.state);
        for f in functions {
            let r = row(f);
            let size = approx_size(&r);
            state.backlog_bytes += size;
            state.backlog.push_back((r, size));
        }
        state.retry_at = retry_at;
    }

    fn held_functions(recorder: &Recorder) -> Vec<String> {
        let state = lock(&recorder.state);
        state
            .backlog
            .iter()
            .map(|(r, _)| r.function.clone())
            .collect()
    }

    #[test]
    fn ids_answer_the_right_rows_when_held_back_records_join_the_batch() {
        let (_dir, storage, recorder) = fresh();
        hold(&recorder, &["a", "b"], None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let id = rt.block_on(recorder.record(row("c"))).unwrap().unwrap();
        assert_eq!(recorder.held_back(), 0);
        let stored = storage.recent_invocations(None, 10).unwrap();
        let names: Vec<&str> = stored.iter().map(|r| r.function.as_str()).collect();
        assert_eq!(names, ["c", "b", "a"], "the held-back ones first, in order");
        assert_eq!(stored[0].id, id, "the caller got its own row's id");
    }

    #[test]
    fn a_failed_batch_goes_behind_older_held_back_records() {
        let (_dir, _storage, recorder) = fresh();
        // Not due yet: `older` stays in the backlog while `oldest` was taken into the
        // batch that failed, with `new`.
        hold(&recorder, &["older"], Some(Instant::now() + RETRY_AFTER));
        let (reply, mut answer) = oneshot::channel();
        let oldest = row("oldest");
        let size = approx_size(&oldest);
        hold_back(
            &recorder.storage,
            &recorder.state,
            vec![(oldest, size)],
            vec![(row("new"), reply)],
        );
        assert_eq!(held_functions(&recorder), ["oldest", "older", "new"]);
        assert_eq!(answer.try_recv().unwrap(), Ok(None), "told: held back");
        let state = lock(&recorder.state);
        let sizes: usize = state.backlog.iter().map(|(_, size)| size).sum();
        assert_eq!(state.backlog_bytes, sizes);
    }

    #[test]
    fn a_drop_right_after_a_failure_on_the_lock_does_not_wait_it_out() {
        let (dir, storage, recorder) = fresh();
        let other = lock_from_outside(&dir);
        hold(&recorder, &["x"], Some(Instant::now() + RETRY_AFTER));
        let dropping = Instant::now();
        drop(recorder);
        // (Another attempt would have waited out the 10 s busy timeout.)
        assert!(dropping.elapsed() < super::super::busy::BUSY_TIMEOUT / 2);
        other.execute_batch("ROLLBACK").unwrap();
        assert!(functions(&storage).is_empty(), "given up, not stored");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_retry_waits_for_the_time_a_later_failure_set() {
        let (_dir, storage, recorder) = fresh();
        hold(&recorder, &["x"], Some(Instant::now() + RETRY_AFTER));
        lock(&recorder.state).retry_scheduled = true;
        schedule_retry(&recorder.storage, &recorder.state);
        // A second failure moves the retry time on before the first one comes.
        tokio::time::sleep(RETRY_AFTER / 2).await;
        lock(&recorder.state).retry_at = Some(Instant::now() + RETRY_AFTER * 2);
        tokio::time::sleep(RETRY_AFTER).await;
        assert_eq!(recorder.held_back(), 1, "not retried before its time");
        // The task ends once the backlog is empty.
        for _ in 0..100 {
            if !lock(&recorder.state).retry_scheduled {
                break;
            }
            tokio::time::sleep(RETRY_AFTER / 10).await;
        }
        assert!(
            !lock(&recorder.state).retry_scheduled,
            "the retry task ended"
        );
        assert_eq!(
            functions(&storage),
            ["x"],
            "the retry came at the later time"
        );
    }

    #[test]
    fn a_record_lands_after_the_writers_runtime_ended() {
        let (_dir, storage, recorder) = fresh();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt.block_on(recorder.record(row("a"))).unwrap().unwrap();
        drop(rt);
        // The writer task died with its runtime; the next record still lands.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let second = rt.block_on(recorder.record(row("b"))).unwrap().unwrap();
        assert!(second > first);
        assert_eq!(storage.recent_invocations(None, 10).unwrap().len(), 2);
    }
}
