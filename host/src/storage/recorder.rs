//! Group commit for invocation records: the first caller to arrive while no commit runs
//! leads. It lets every invocation that is ready to finish run first (their records join
//! the queue), then stores the whole queue in one transaction and answers each caller.
//! Whatever arrives during that commit is stored by a drain task, batched the same way.
//!
//! Under load this turns N commits into one (the commit, not the insert, is what costs).
//! With one invocation at a time, the caller commits its own record: no task hop and no
//! cross-thread wake-up on the path to its answer. Either way a caller waits until its
//! record is committed and gets its id: when `record` returns, the row is in the
//! database.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::{InvocationRow, Storage, StorageError};

/// Most records in one transaction.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<i64, String>>;

/// Commits invocation records, batching those that arrive together.
#[derive(Debug)]
pub struct Recorder {
    storage: Arc<Storage>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Someone (a leading caller or the drain task) will commit what is waiting.
    committing: bool,
    /// Records to commit, oldest first, with where to send each one's id. At most one
    /// per in-flight invocation (bounded by the caller), so this is bounded too.
    waiting: Vec<(InvocationRow, Reply)>,
}

impl Recorder {
    /// A recorder writing to `storage`.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            state: Arc::default(),
        }
    }

    /// Store `row`; returns its id once it is committed.
    pub async fn record(&self, row: InvocationRow) -> Result<i64, StorageError> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut state = lock(&self.state);
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
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A leading caller's duty on the way out: stop committing if nothing waits, otherwise
/// start the drain task (or, with no runtime to spawn on, drain right here).
struct HandOff<'a> {
    storage: &'a Arc<Storage>,
    state: &'a Arc<Mutex<State>>,
}

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        {
            let mut state = lock(self.state);
            if state.waiting.is_empty() {
                state.committing = false;
                return;
            }
        }
        let (storage, state) = (self.storage.clone(), self.state.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(drain(storage, state))),
            Err(_) => while commit_waiting(&storage, &state) {},
        }
    }
}

/// Commit what is waiting, in batches, until nothing is; then stop committing.
async fn drain(storage: Arc<Storage>, state: Arc<Mutex<State>>) {
    // If this task is dropped unfinished (its runtime shut down), stop committing and
    // drop the waiting replies, so their callers get an error instead of waiting forever.
    struct Abandon<'a>(&'a Mutex<State>);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            let mut state = lock(self.0);
            state.committing = false;
            state.waiting.clear();
        }
    }
    let abandon = Abandon(&state);
    loop {
        requeue_once().await;
        if !commit_waiting(&storage, &state) {
            std::mem::forget(abandon);
            return;
        }
    }
}

/// Commit one batch of waiting records and answer each; `false` (and no longer
/// committing) when nothing was waiting.
fn commit_waiting(storage: &Storage, state: &Mutex<State>) -> bool {
    let batch: Vec<(InvocationRow, Reply)> = {
        let mut state = lock(state);
        if state.waiting.is_empty() {
            state.committing = false;
            return false;
        }
        let n = state.waiting.len().min(MAX_BATCH);
        state.waiting.drain(..n).collect()
    };
    let rows: Vec<&InvocationRow> = batch.iter().map(|(row, _)| row).collect();
    match storage.insert_invocations(&rows) {
        Ok(ids) => {
            for ((_, reply), id) in batch.into_iter().zip(ids) {
                let _ = reply.send(Ok(id));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in batch {
                let _ = reply.send(Err(message.clone()));
            }
        }
    }
    true
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_all_land_with_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        let recorder = Arc::new(Recorder::new(storage.clone()));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let r = recorder.clone();
                tokio::spawn(async move { (i, r.record(row(&format!("f{i}"))).await.unwrap()) })
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
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        let recorder = Recorder::new(storage.clone());
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
            .unwrap();
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

    #[test]
    fn a_record_lands_after_the_writers_runtime_ended() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(&dir.path().join("t.db")).unwrap());
        let recorder = Recorder::new(storage.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt.block_on(recorder.record(row("a"))).unwrap();
        drop(rt);
        // The writer task died with its runtime; the next record still lands.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let second = rt.block_on(recorder.record(row("b"))).unwrap();
        assert!(second > first);
        assert_eq!(storage.recent_invocations(None, 10).unwrap().len(), 2);
    }
}
