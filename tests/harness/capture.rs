//! Captures everything the suite could leak a secret through: the host library's
//! trace-level logs (in this process) and every CLI run's stdout and stderr.
//! Tests grep the capture for the real secret values they used.

use std::io::Write;
use std::sync::{Mutex, Once};

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Every level of everything that could see a secret (keyhole, HTTP clients and servers);
/// the compiler crates stay at warn because their trace output is huge and secret-free.
pub const FILTER: &str =
    "trace,cranelift=warn,regalloc2=warn,wasmtime=info,wasmparser=warn,wit_parser=warn";

/// Install a trace-level subscriber (once per process) that writes into the capture.
/// `RUST_LOG` is ignored on purpose: the point is to see every level.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(FILTER))
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .try_init();
    });
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Append a CLI run's output to the capture.
pub fn record(text: &str) {
    CAPTURED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend_from_slice(text.as_bytes());
}

/// Everything captured so far in this process.
pub fn text() -> String {
    String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// Panic if any of `secrets` appears in the capture.
pub fn assert_no_secrets(secrets: &[&str]) {
    let all = text();
    assert!(
        !all.is_empty(),
        "nothing was captured: the capture is not wired up"
    );
    for s in secrets {
        assert!(
            !all.contains(s),
            "secret value {s:?} leaked into logs or CLI output"
        );
    }
}
