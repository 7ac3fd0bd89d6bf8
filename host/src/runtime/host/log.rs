//! `keyhole:function/log`: guest log lines go into the invocation record.

use crate::runtime::bindings::log::{Host, Level};
use crate::runtime::state::InvocationState;

/// Longest single log line kept; the rest is cut (a guest controls this length).
const MAX_LINE_BYTES: usize = 4096;

impl Host for InvocationState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        let mut message = message;
        if message.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        tracing::debug!(target: "keyhole::guest", function = %self.http.function, level, "{message}");
        self.logs.push(format!("{level} {message}"));
        Ok(())
    }
}
