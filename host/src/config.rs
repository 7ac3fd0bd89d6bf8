//! Where keyhole keeps its data and the documented default limits for an invocation.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable that overrides the data directory.
pub const HOME_ENV: &str = "KEYHOLE_HOME";
/// File name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "keyhole.db";

/// The data directory: `$KEYHOLE_HOME`, else the platform's per-user data dir
/// (`~/.local/share/keyhole` on Linux), else `./.keyhole`.
pub fn default_home() -> PathBuf {
    if let Some(dir) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::data_dir()
        .map(|d| d.join("keyhole"))
        .unwrap_or_else(|| PathBuf::from(".keyhole"))
}

/// Default wall-clock limit for one invocation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on a guest's linear memory (all memories of the instance together).
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
/// Default cap on the input JSON text.
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 1 << 20;
/// Default cap on the output JSON text.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// Default cap on captured output: stdout, stderr and log lines each get this much.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 64 << 10;
/// Default cap on outbound requests one invocation may make.
pub const DEFAULT_MAX_OUTBOUND_REQUESTS: u32 = 50;
/// Default cap on one outbound response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 << 20;
/// Default cap on one outbound request body.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 8 << 20;
/// Default timeout for one outbound request (also capped by the invocation's remaining time).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard ceilings an admin cannot raise a function's limits past.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Hard ceiling on guest memory: the pooling allocator reserves slots of this size.
pub const MAX_MEMORY_BYTES: u64 = 4 << 30;

/// Per-invocation limits, stored with each function version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Wall-clock limit for the whole invocation, in milliseconds.
    pub timeout_ms: u64,
    /// Linear memory cap in bytes.
    pub memory_bytes: u64,
    /// Input size cap in bytes.
    pub max_input_bytes: u64,
    /// Output size cap in bytes.
    pub max_output_bytes: u64,
    /// Captured stdout / stderr / log cap in bytes (each).
    pub max_log_bytes: u64,
    /// Outbound requests per invocation.
    pub max_outbound_requests: u32,
    /// Outbound response body cap in bytes.
    pub max_response_bytes: u64,
    /// Outbound request body cap in bytes.
    pub max_request_bytes: u64,
    /// Default per-request timeout in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            max_outbound_requests: DEFAULT_MAX_OUTBOUND_REQUESTS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        }
    }
}

impl Limits {
    /// The invocation timeout as a `Duration`.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Check the limits are within the host's hard ceilings.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT.as_millis() as u64 {
            return Err(format!(
                "timeout must be between 1ms and {}s",
                MAX_TIMEOUT.as_secs()
            ));
        }
        if self.memory_bytes < (1 << 20) || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "memory limit must be between 1 MiB and {} MiB",
                MAX_MEMORY_BYTES >> 20
            ));
        }
        if self.max_input_bytes == 0 || self.max_output_bytes == 0 {
            return Err("input and output caps must be at least 1 byte".into());
        }
        Ok(())
    }
}
