//! The sandboxed wasm runtime: one shared engine with the pooling allocator, an epoch
//! ticker, a cache of pre-instantiated components and a fresh store per invocation.
//!
//! Path of one call: [`Runtime::load`] finds the `CustomFunctionPre` for a content hash
//! (memory cache → stored artifact → compile), then [`Runtime::invoke`] takes a
//! concurrency permit, builds an [`InvocationState`] store, runs `run` under the time and
//! memory limits and classifies whatever happened into an [`Outcome`].

pub mod bindings;
mod error;
mod host;
mod output;
mod state;
mod validate;

pub use error::{InvokeError, UploadError};
pub use host::kv::{MAX_FUNCTION_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use state::HttpState;
pub use validate::{MAX_COMPONENT_BYTES, check_component_binary};

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use self::bindings::{CustomFunction, CustomFunctionPre};
use self::state::InvocationState;
use crate::config::{Limits, MAX_MEMORY_BYTES};
use crate::connections::Gateway;
use crate::storage::OutboundCall;

/// How often the epoch ticker advances the engine's epoch.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default number of instances that may run at once (pool slots and semaphore permits).
pub const DEFAULT_MAX_INSTANCES: u32 = 128;
/// Wasm stack limit per invocation.
pub const MAX_WASM_STACK: usize = 1 << 20;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances that may run at once.
    pub max_instances: u32,
    /// Use the pooling allocator (falls back to on-demand if the address space is too small).
    pub pooling: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: DEFAULT_MAX_INSTANCES,
            pooling: true,
        }
    }
}

/// Counters that make caching observable without timing.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Components compiled by this process.
    pub compiles: AtomicU64,
    /// Stored artifacts deserialized by this process.
    pub artifact_loads: AtomicU64,
}

/// Where a loaded function came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Already in this process's memory.
    Memory,
    /// Deserialized from a stored artifact.
    Artifact,
    /// Compiled now.
    Compiled,
}

/// A compiled component ready to instantiate (cheap to clone).
#[derive(Clone)]
pub struct Prepared {
    pre: CustomFunctionPre<InvocationState>,
}

/// What one invocation produced, success or not, plus what it recorded.
#[derive(Debug)]
pub struct Outcome {
    /// The output JSON text, or why there is none.
    pub result: Result<String, InvokeError>,
    /// Guest log lines.
    pub logs: Vec<String>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Outbound calls made.
    pub outbound: Vec<OutboundCall>,
    /// Wall time.
    pub duration: Duration,
    /// State writes to commit if (and only if) the invocation succeeded.
    pub kv_writes: std::collections::BTreeMap<String, Option<Vec<u8>>>,
    /// The run's turn on the function's state, if it touched state: hold it until the
    /// writes are committed (or dropped), then drop it.
    pub state_turn: Option<crate::storage::locks::Turn>,
}

/// The shared runtime. One per process.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    engine_hash: String,
    cache: Mutex<HashMap<String, Prepared>>,
    /// One lock per content hash being loaded: concurrent first invocations of a function
    /// wait for one compile (or artifact load) instead of each doing their own.
    loading: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    permits: Arc<Semaphore>,
    max_instances: u32,
    stats: RuntimeStats,
    ticker_stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine_hash", &self.engine_hash)
            .field("max_instances", &self.max_instances)
            .finish()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The engine configuration keyhole runs with (public so benchmarks measure a bare
/// wasmtime baseline with exactly the same settings).
#[doc(hidden)]
pub fn engine_config(pooling: Option<u32>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    // Pooled fiber stacks are reused across guests: zero them so no guest sees another's data.
    config.async_stack_zeroing(true);
    // p2 guests don't use component-model concurrency; skip its per-store bookkeeping.
    config.concurrency_support(false);
    if let Some(n) = pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(n)));
    }
    config
}

/// The pooling allocator settings for `n` concurrent instances.
#[doc(hidden)]
pub fn pooling_config(n: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n * 8)
        .total_memories(n * 2)
        .total_tables(n * 8)
        .total_stacks(n)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .table_elements(100_000)
        .max_memory_size(MAX_MEMORY_BYTES as usize)
        .table_keep_resident(64 << 10)
        // Fiber stacks are zeroed between guests; `memset` the hot top instead of
        // handing the pages to the kernel and faulting them back in.
        .async_stack_keep_resident(128 << 10);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        // With PAGEMAP_SCAN (Linux 6.7+) a freed memory slot is reset in place: only the
        // pages the guest touched are re-zeroed, so the next guest takes no page faults
        // and no `madvise` (BENCHMARKS.md: 7 faults and about a quarter of a lone echo
        // call's CPU before this). The price is memory: a used slot keeps up to 2 MiB of
        // zeroed pages resident (echo's server RSS at concurrency 64 did not change).
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(2 << 20);
    } else {
        // Without it, keeping pages means a blind `memset` of the whole window on every
        // free; a small window keeps the hot first pages without paying ~35 µs a call
        // to wipe a Rust guest's initial megabyte.
        pool.linear_memory_keep_resident(64 << 10);
    }
    pool
}
/// A stable hex digest of the engine's compatibility hash: artifacts made under another
/// wasmtime version or configuration are never offered to this engine.
fn engine_hash(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(h.0.finalize())
}

/// SHA-256 of wasm bytes, hex: the function's content hash.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Runtime {
    /// Build the engine, the linker and the epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = if config.pooling {
            match Engine::new(&engine_config(Some(config.max_instances))) {
                Ok(engine) => engine,
                Err(e) => {
                    tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand allocation");
                    Engine::new(&engine_config(None)).map_err(|e| anyhow::anyhow!("{e}"))?
                }
            }
        } else {
            Engine::new(&engine_config(None)).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        CustomFunction::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Components built against the frozen 0.1.0 package link against the adapter.
        bindings::v0_1::CustomFunction::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        // One ticker thread per engine, never per call (wasmtime #11814). It holds only a
        // weak reference so it ends when the runtime is dropped.
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("keyhole-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;

        Ok(Self {
            engine_hash: engine_hash(&engine),
            engine,
            linker,
            cache: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(config.max_instances as usize)),
            max_instances: config.max_instances,
            stats: RuntimeStats::default(),
            ticker_stop,
        })
    }

    /// The engine's compatibility hash (hex), the second half of an artifact's key.
    pub fn engine_hash(&self) -> &str {
        &self.engine_hash
    }

    /// Caching counters.
    pub fn stats(&self) -> &RuntimeStats {
        &self.stats
    }

    /// Instances that may run at once.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// Permits currently free (in-flight = max - available).
    pub fn available_permits(&self) -> usize {
        self.permits.available_permits()
    }

    /// Validate and compile an uploaded component, checking it targets the
    /// `custom-function` world. Returns the artifact to store. CPU-heavy: call from a
    /// blocking thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Vec<u8>, Prepared), UploadError> {
        check_component_binary(bytes)?;
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| UploadError::Compile(format!("{e:#}")))?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        let prepared = self.prepare_artifact(&artifact)?;
        Ok((artifact, prepared))
    }

    fn prepare_artifact(&self, artifact: &[u8]) -> Result<Prepared, UploadError> {
        // SAFETY: `artifact` was produced by `Engine::precompile_component` of an engine
        // with this engine's compatibility hash — either just now or read back from the
        // host's own database under (content hash, engine hash). Guests and uploaders
        // never supply artifacts; wasmtime also rejects artifacts of another version or
        // configuration with an error.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(|e| UploadError::Compile(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| UploadError::WrongWorld(format!("{e:#}")))?;
        let pre =
            CustomFunctionPre::new(pre).map_err(|e| UploadError::WrongWorld(format!("{e:#}")))?;
        Ok(Prepared { pre })
    }

    /// Find the prepared component for `content_hash`: memory cache, then the stored
    /// artifact, then compile `wasm()` and hand back the new artifact for storing. One
    /// load per content hash at a time (it blocks: call it off the async runtime): the
    /// others wait for it and take its result from memory.
    pub fn load(
        &self,
        content_hash: &str,
        stored_artifact: impl FnOnce() -> Option<Vec<u8>>,
        wasm: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<(Prepared, LoadSource, Option<Vec<u8>>), UploadError> {
        let turn = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(content_hash.to_string())
            .or_default()
            .clone();
        let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = self.load_alone(content_hash, stored_artifact, wasm);
        // The last one through leaves no entry behind.
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&turn) == 2 {
            loading.remove(content_hash);
        }
        loaded
    }

    /// [`Self::load`], holding the content hash's turn.
    fn load_alone(
        &self,
        content_hash: &str,
        stored_artifact: impl FnOnce() -> Option<Vec<u8>>,
        wasm: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Result<(Prepared, LoadSource, Option<Vec<u8>>), UploadError> {
        // In memory already, perhaps loaded by the one that held the turn before.
        if let Some(p) = self.cached(content_hash) {
            return Ok((p, LoadSource::Memory, None));
        }
        let (prepared, source, new_artifact) = match stored_artifact() {
            Some(artifact) => match self.prepare_artifact(&artifact) {
                Ok(p) => {
                    self.stats.artifact_loads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        content_hash,
                        "loaded precompiled artifact from the store (no compile)"
                    );
                    (p, LoadSource::Artifact, None)
                }
                Err(e) => {
                    tracing::warn!(content_hash, error = %e, "stored artifact unusable; recompiling");
                    let bytes = wasm().ok_or_else(|| {
                        UploadError::Compile("function bytes missing from the store".into())
                    })?;
                    let (artifact, p) = self.compile(&bytes)?;
                    (p, LoadSource::Compiled, Some(artifact))
                }
            },
            None => {
                let bytes = wasm().ok_or_else(|| {
                    UploadError::Compile("function bytes missing from the store".into())
                })?;
                tracing::info!(
                    content_hash,
                    "compiling component (no artifact for this engine yet)"
                );
                let (artifact, p) = self.compile(&bytes)?;
                (p, LoadSource::Compiled, Some(artifact))
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(content_hash.to_string(), prepared.clone());
        Ok((prepared, source, new_artifact))
    }

    /// The prepared component for `content_hash` if it is already in memory.
    pub fn cached(&self, content_hash: &str) -> Option<Prepared> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(content_hash)
            .cloned()
    }

    /// Put a prepared component in the memory cache.
    pub fn remember(&self, content_hash: &str, prepared: Prepared) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(content_hash.to_string(), prepared);
    }

    /// Run `run(input)` once in a fresh store under `limits`. Never panics on guest
    /// misbehaviour: every failure is an `InvokeError` in the outcome.
    pub async fn invoke(
        &self,
        prepared: &Prepared,
        function: &str,
        input: &str,
        limits: Limits,
        gateway: Option<Arc<Gateway>>,
    ) -> Outcome {
        let started = Instant::now();
        let fail = |e: InvokeError| Outcome {
            result: Err(e),
            logs: vec![],
            stdout: String::new(),
            stderr: String::new(),
            outbound: vec![],
            duration: started.elapsed(),
            kv_writes: Default::default(),
            state_turn: None,
        };
        if input.len() as u64 > limits.max_input_bytes {
            return fail(InvokeError::InputTooLarge {
                size: input.len() as u64,
                limit: limits.max_input_bytes,
            });
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(input) {
            return fail(InvokeError::InvalidInput(e.to_string()));
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return fail(InvokeError::AtCapacity);
        };
        // From here it runs: the in-flight gauge and the duration leave out the wait for a
        // slot.
        let _running = crate::metrics::in_flight(function);
        let started = Instant::now();

        let timeout = limits.timeout();
        let deadline = Instant::now() + timeout;
        let mut store = Store::new(
            &self.engine,
            InvocationState::new(limits, function, gateway, deadline),
        );
        store.limiter(|s| &mut s.limiter);
        // Trap once the wall-clock deadline passes; until then yield to tokio every tick
        // so a busy guest never starves other tasks on this worker.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);

        let call = async {
            let instance = prepared.pre.instantiate_async(&mut store).await?;
            instance.call_run(&mut store, input).await
        };
        // The epoch trap stops CPU-bound guests; this outer timeout stops a guest waiting
        // in a host call. A little slack lets the epoch path report first.
        let result = tokio::time::timeout(timeout + EPOCH_TICK * 3, call).await;

        let state = store.data();
        let stderr = state.stderr.text();
        let result = match result {
            Err(_elapsed) => Err(InvokeError::Timeout { limit: timeout }),
            Ok(Ok(Ok(output))) => check_output(output, &limits),
            Ok(Ok(Err(message))) => Err(InvokeError::Guest(clip_message(
                message,
                limits.max_output_bytes,
            ))),
            Ok(Err(e)) => Err(classify_trap(&e, state.limiter.exceeded, &limits, &stderr)),
        };
        let state = store.into_data();
        Outcome {
            result,
            logs: state.logs.into_lines(),
            stdout: state.stdout.text(),
            stderr,
            outbound: state.http.calls,
            duration: started.elapsed(),
            kv_writes: state.kv.writes,
            state_turn: state.kv.turn,
        }
    }
}

/// A guest's error message, cut to `limit` bytes (on a character boundary) with a note:
/// the output cap applies to what a failed run says, too.
fn clip_message(mut message: String, limit: u64) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if message.len() > limit {
        let total = message.len();
        let mut cut = limit;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(&format!(
            " [keyhole: error message cut at the {limit}-byte output cap; it had {total} bytes]"
        ));
    }
    message
}

fn check_output(output: String, limits: &Limits) -> Result<String, InvokeError> {
    if output.len() as u64 > limits.max_output_bytes {
        return Err(InvokeError::OutputTooLarge {
            size: output.len() as u64,
            limit: limits.max_output_bytes,
        });
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&output)
        .map_err(|e| InvokeError::InvalidOutput(e.to_string()))?;
    Ok(output)
}

fn classify_trap(
    e: &wasmtime::Error,
    memory_exceeded: bool,
    limits: &Limits,
    stderr: &str,
) -> InvokeError {
    if memory_exceeded {
        return InvokeError::OutOfMemory {
            limit: limits.memory_bytes,
        };
    }
    // The host could not read the function's state: not the function's fault, and worth
    // running again, so not a trap.
    if let Some(e) = e.downcast_ref::<crate::storage::StorageError>() {
        return if e.is_busy() {
            InvokeError::Busy(
                "the function's state could not be read: another process held the database's lock; run it again".into(),
            )
        } else {
            InvokeError::Host(format!(
                "the function's state could not be read ({e}); nothing was saved, so run it again"
            ))
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            return InvokeError::Timeout {
                limit: limits.timeout(),
            };
        }
        Some(Trap::StackOverflow) => return InvokeError::StackOverflow,
        Some(Trap::MemoryOutOfBounds) if panic_message(stderr).is_none() => {
            // Rust guests keep a shadow stack in linear memory; overflowing it shows up
            // as an out-of-bounds access rather than a wasm stack overflow.
            return InvokeError::Trap(
                "out of bounds memory access (a bug in the function, or its shadow stack overflowed)".into(),
            );
        }
        _ => {}
    }
    if let Some(message) = panic_message(stderr) {
        return InvokeError::Panic(message);
    }
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return InvokeError::AtCapacity;
    }
    let trap = e
        .downcast_ref::<Trap>()
        .map(|t| t.to_string())
        .unwrap_or_else(|| format!("{e:#}"));
    InvokeError::Trap(trap)
}

/// Rust guests print `thread '...' panicked at file:line:col:\nMESSAGE` to stderr
/// before trapping; pull out the message so the caller sees why.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at")?;
    let rest = &stderr[start..];
    let mut lines = rest.lines();
    let location = lines
        .next()?
        .trim_start_matches("panicked at ")
        .trim_end_matches(':');
    let message: Vec<&str> = lines.take_while(|l| !l.starts_with("note:")).collect();
    let message = message.join("\n").trim().to_string();
    Some(if message.is_empty() {
        location.to_string()
    } else {
        format!("{message} (at {location})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_panic_messages() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nmisbehave: deliberate panic\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "misbehave: deliberate panic (at src/lib.rs:10:5)"
        );
        assert!(panic_message("plain output").is_none());
    }
}
