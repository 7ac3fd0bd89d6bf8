//! What one invocation's `Store` holds: the denied-by-default WASI context, the memory
//! limiter, captured output and the per-invocation HTTP and log state.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::output::CapturedOutput;
use crate::config::Limits;
use crate::connections::Gateway;
use crate::storage::OutboundCall;

/// Data of one invocation's store; dropped with the store when the call ends.
pub struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
    pub(crate) logs: LogBuffer,
    pub(crate) http: HttpState,
    pub(crate) kv: super::host::kv::KvState,
}

/// Per-invocation context for `http.send`.
pub struct HttpState {
    /// The calling function (grants are checked against it).
    pub function: String,
    /// The connection gateway; `None` means no connections exist for this host.
    pub gateway: Option<Arc<Gateway>>,
    /// Outbound calls made so far, for the invocation record.
    pub calls: Vec<OutboundCall>,
    /// Limits of this invocation.
    pub limits: Limits,
    /// When the invocation must end.
    pub deadline: Instant,
}

/// Most bytes one `get-random-bytes` call may ask for (wasmtime-wasi's default, 64 MiB,
/// is host memory and CPU the epoch deadline cannot interrupt).
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Most resource handles (streams, pollables, requests) a guest may hold at once; each is
/// host memory.
const MAX_HANDLES: usize = 10_000;

impl InvocationState {
    pub(crate) fn new(
        limits: Limits,
        function: &str,
        gateway: Option<Arc<Gateway>>,
        deadline: Instant,
    ) -> Self {
        let cap = limits.max_log_bytes as usize;
        let stdout = CapturedOutput::new(cap);
        let stderr = CapturedOutput::new(cap);
        // Deny by default: `WasiCtxBuilder::new()` gives no preopened directories, no
        // environment, no arguments, closed stdin and no TCP/UDP or name lookup. We only
        // redirect stdout/stderr into bounded buffers. Clocks and randomness stay real.
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        Self {
            wasi,
            table,
            limiter: MemoryLimiter::new(limits.memory_bytes as usize),
            stdout,
            stderr,
            logs: LogBuffer::new(cap),
            kv: super::host::kv::KvState::new(
                function,
                gateway.as_ref().map(|g| g.storage.clone()),
            ),
            http: HttpState {
                function: function.to_string(),
                gateway,
                calls: Vec::new(),
                limits,
                deadline,
            },
        }
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps the instance's linear memories, all of them together (a component may hold
/// several), at the function's limit, and remembers when it was hit, so the trap that
/// follows is reported as out-of-memory rather than a generic trap.
pub struct MemoryLimiter {
    limit: usize,
    /// Bytes granted to all memories so far (a failed growth stays counted: erring on
    /// the safe side).
    used: usize,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    /// A limiter granting at most `limit` bytes in total.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            exceeded: false,
        }
    }
}

/// Most table elements a guest may grow to (function tables of big Rust guests fit easily).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // `current` (this memory's size) is already counted in `used`.
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit of {} bytes exceeded (all memories together would take {total})",
                self.limit
            );
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Log lines from the guest, capped in total bytes.
pub struct LogBuffer {
    lines: Vec<String>,
    bytes: usize,
    cap: usize,
    dropped: usize,
}

impl LogBuffer {
    fn new(cap: usize) -> Self {
        Self {
            lines: Vec::new(),
            bytes: 0,
            cap,
            dropped: 0,
        }
    }

    /// Append a line unless the cap is reached.
    pub fn push(&mut self, line: String) {
        if self.bytes + line.len() > self.cap {
            self.dropped += 1;
            return;
        }
        self.bytes += line.len();
        self.lines.push(line);
    }

    /// The kept lines, plus a note of how many were dropped.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines.push(format!(
                "[keyhole: {} more log lines dropped at the {}-byte cap]",
                self.dropped, self.cap
            ));
        }
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter as _;

    use super::*;

    #[test]
    fn the_memory_limit_covers_all_memories_together() {
        const MIB: usize = 1 << 20;
        let mut limiter = MemoryLimiter::new(64 * MIB);
        // Two memories of 30 MiB fit; growing the first to 34 MiB still fits (64 in all).
        assert!(limiter.memory_growing(0, 30 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 30 * MIB, None).unwrap());
        assert!(limiter.memory_growing(30 * MIB, 34 * MIB, None).unwrap());
        assert!(!limiter.exceeded);
        // A third memory would take the total over, though it is small on its own.
        assert!(limiter.memory_growing(0, MIB, None).is_err());
        assert!(limiter.exceeded);
    }
}
