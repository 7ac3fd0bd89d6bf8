//! Group commit for invocation records: concurrent invocations hand their records to
//! one writer task, which stores everything waiting in a single transaction.
//!
//! Under load this turns N commits into one (the commit, not the insert, is what costs);
//! with one invocation at a time it is one insert as before, plus a task hop. A caller
//! still waits until its record is committed and gets its id, so nothing changes for it:
//! when `record` returns, the row is in the database.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use super::{InvocationRow, Storage, StorageError};

/// Most records in one transaction.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<i64, String>>;

/// Hands invocation records to the writer task (started on first use, on the runtime of
/// the first caller).
#[derive(Debug)]
pub struct Recorder {
    storage: Arc<Storage>,
    writer: OnceLock<mpsc::UnboundedSender<(InvocationRow, Reply)>>,
}

impl Recorder {
    /// A recorder writing to `storage`.
    pub fn new(storage: Arc<Storage>) -> Self {
        Self {
            storage,
            writer: OnceLock::new(),
        }
    }

    /// Store `row`; returns its id once it is committed.
    pub async fn record(&self, row: InvocationRow) -> Result<i64, StorageError> {
        let Some(writer) = self.writer() else {
            return self.storage.insert_invocation(&row);
        };
        let (reply, answer) = oneshot::channel();
        // The channel holds at most one record per invocation waiting here, so the
        // number of in-flight invocations (bounded by the caller) bounds it.
        if let Err(mpsc::error::SendError((row, _))) = writer.send((row, reply)) {
            // The writer's runtime is gone (a test's runtime ended): write directly.
            return self.storage.insert_invocation(&row);
        }
        match answer.await {
            Ok(result) => result.map_err(StorageError::Background),
            Err(_) => Err(StorageError::Background(
                "the invocation writer stopped before storing the record".into(),
            )),
        }
    }

    fn writer(&self) -> Option<&mpsc::UnboundedSender<(InvocationRow, Reply)>> {
        if let Some(w) = self.writer.get() {
            return Some(w);
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            handle.spawn(write(self.storage.clone(), rx));
            tx
        }))
    }
}

/// The writer task: take everything waiting, store it in one transaction, answer each.
async fn write(storage: Arc<Storage>, mut rx: mpsc::UnboundedReceiver<(InvocationRow, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Woken by the first record, this task would run right away (tokio runs a task
        // just woken next) and commit one record at a time. Rescheduling itself once puts
        // it behind every invocation that is ready to finish, so their records join this
        // batch. (`tokio::task::yield_now` instead defers the task until the worker is
        // about to park, which cost a lone invocation about a millisecond.)
        requeue_once().await;
        while batch.len() < MAX_BATCH
            && let Ok(job) = rx.try_recv()
        {
            batch.push(job);
        }
        let rows: Vec<&InvocationRow> = batch.iter().map(|(row, _)| row).collect();
        match storage.insert_invocations(&rows) {
            Ok(ids) => {
                for ((_, reply), id) in batch.drain(..).zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
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
    use super::*;

    fn row(function: &str) -> InvocationRow {
        InvocationRow {
            id: 0,
            function: function.into(),
            version: 1,
            started_at: 1,
            duration_us: 2,
            outcome: "ok".into(),
            error: None,
            output_bytes: 0,
            logs: vec![],
            stdout: String::new(),
            stderr: String::new(),
            outbound: vec![],
        }
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
