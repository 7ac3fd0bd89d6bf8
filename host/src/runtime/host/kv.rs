//! `keyhole:function/kv`: per-function state. Reads see this invocation's own writes;
//! writes are buffered and committed by the host only when the invocation succeeds.
//! Runs of one function take turns on its state: the first state access waits for the
//! turn, which lasts until the run's writes are committed or dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::runtime::bindings::kv::{Error, Host};
use crate::runtime::state::InvocationState;
use crate::storage::locks::Turn;
use crate::storage::{ENTRY_OVERHEAD_BYTES, Storage};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 256 << 10;
/// Most bytes one function may store: keys plus values, plus [`ENTRY_OVERHEAD_BYTES`]
/// for each entry.
pub const MAX_FUNCTION_BYTES: u64 = 4 << 20;
/// Most keys one run may set or delete (pending writes live in host memory).
pub const MAX_PENDING_WRITES: usize = 10_000;

/// This invocation's view of its function's state.
pub struct KvState {
    function: String,
    storage: Option<Arc<Storage>>,
    /// Pending writes (`None` = delete), committed on success.
    pub(crate) writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Stored bytes before this invocation, read on first write.
    base_total: Option<u64>,
    /// What the pending writes add to (or take from) `base_total`.
    delta: i128,
    /// This run's turn on the function's state, taken at its first state access and
    /// handed on with the writes, so no other run of the function reads between this
    /// run's reads and its commit.
    pub(crate) turn: Option<Turn>,
}

impl KvState {
    pub(crate) fn new(function: &str, storage: Option<Arc<Storage>>) -> Self {
        Self {
            function: function.to_string(),
            storage,
            writes: BTreeMap::new(),
            base_total: None,
            delta: 0,
            turn: None,
        }
    }

    /// Wait for this function's turn on its state, once per run.
    async fn take_turn(&mut self) {
        if self.turn.is_none()
            && let Some(storage) = &self.storage
        {
            self.turn = Some(storage.turn(&format!("state-{}", self.function)).await);
        }
    }

    fn check_key(key: &str) -> Result<(), Error> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidKey(format!(
                "keys must be 1 to {MAX_KEY_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn stored(&self, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        match &self.storage {
            Some(s) => Ok(s.kv_get(&self.function, key)?),
            None => Ok(None),
        }
    }

    fn stored_size(&self, key: &str) -> wasmtime::Result<u64> {
        match &self.storage {
            Some(s) => Ok(s.kv_entry_size(&self.function, key)?),
            None => Ok(0),
        }
    }

    /// Bytes the function stores now, read once per run.
    fn base_total(&mut self) -> wasmtime::Result<u64> {
        if let Some(b) = self.base_total {
            return Ok(b);
        }
        let b = match &self.storage {
            Some(s) => s.kv_total(&self.function)?,
            None => 0,
        };
        self.base_total = Some(b);
        Ok(b)
    }

    /// Bytes `key` takes as this run sees it (its pending write, else what is stored).
    fn size_of(&self, key: &str) -> wasmtime::Result<u64> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.as_ref().map_or(0, |v| entry_size(key, v) as u64)),
            None => self.stored_size(key),
        }
    }

    /// Record a pending write of `key` (`None` deletes it), unless it would take the run
    /// over [`MAX_PENDING_WRITES`] or the function over [`MAX_FUNCTION_BYTES`]. The
    /// projected total is kept as a running difference, so each write costs at most one
    /// read of the stored entry.
    fn write(
        &mut self,
        key: String,
        value: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<(), Error>> {
        if !self.writes.contains_key(&key) && self.writes.len() >= MAX_PENDING_WRITES {
            return Ok(Err(Error::QuotaExceeded(format!(
                "a run may set or delete at most {MAX_PENDING_WRITES} keys; spread the \
                 changes over several runs"
            ))));
        }
        let old = self.size_of(&key)? as i128;
        let new = value.as_ref().map_or(0, |v| entry_size(&key, v));
        let total = self.base_total()? as i128 + self.delta + new - old;
        if new > old && total > MAX_FUNCTION_BYTES as i128 {
            return Ok(Err(Error::QuotaExceeded(format!(
                "a function may store at most {MAX_FUNCTION_BYTES} bytes; delete keys you no \
                 longer need"
            ))));
        }
        self.delta += new - old;
        self.writes.insert(key, value);
        Ok(Ok(()))
    }
}

/// What an entry counts toward [`MAX_FUNCTION_BYTES`] (as [`Storage::kv_total`] counts).
fn entry_size(key: &str, value: &[u8]) -> i128 {
    (key.len() + value.len()) as i128 + i128::from(ENTRY_OVERHEAD_BYTES)
}

impl Host for InvocationState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        if let Err(e) = KvState::check_key(&key) {
            return Ok(Err(e));
        }
        self.kv.take_turn().await;
        if let Some(pending) = self.kv.writes.get(&key) {
            return Ok(Ok(pending.clone()));
        }
        Ok(Ok(self.kv.stored(&key)?))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if let Err(e) = KvState::check_key(&key) {
            return Ok(Err(e));
        }
        self.kv.take_turn().await;
        if value.len() > MAX_VALUE_BYTES {
            return Ok(Err(Error::ValueTooLarge(format!(
                "values are limited to {MAX_VALUE_BYTES} bytes"
            ))));
        }
        self.kv.write(key, Some(value))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), Error>> {
        if let Err(e) = KvState::check_key(&key) {
            return Ok(Err(e));
        }
        self.kv.take_turn().await;
        self.kv.write(key, None)
    }

    async fn list_keys(&mut self, prefix: String) -> wasmtime::Result<Result<Vec<String>, Error>> {
        self.kv.take_turn().await;
        let mut keys: std::collections::BTreeSet<String> = match &self.kv.storage {
            Some(s) => s.kv_keys(&self.kv.function, &prefix)?.into_iter().collect(),
            None => Default::default(),
        };
        for (key, value) in &self.kv.writes {
            if key.starts_with(&prefix) {
                if value.is_some() {
                    keys.insert(key.clone());
                } else {
                    keys.remove(key);
                }
            }
        }
        Ok(Ok(keys.into_iter().collect()))
    }
}
