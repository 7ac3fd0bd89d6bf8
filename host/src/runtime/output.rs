//! Bounded capture of a guest's stdout and stderr.
//!
//! wasmtime-wasi's `MemoryOutputPipe` traps the guest once its buffer is full; a chatty
//! function should lose its excess output, not its run, so this pipe keeps the first
//! `capacity` bytes, drops the rest and remembers that it did.
//!
//! It is a WASIp2 output stream of its own, written to synchronously: wasmtime-wasi's
//! default adapter over an `AsyncWrite` would spawn a tokio task for every
//! `get-stdout`/`get-stderr` a guest calls, so a guest calling them in a loop would pile
//! up host tasks.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// A capped in-memory sink. Clones share the same buffer.
#[derive(Clone, Debug)]
pub struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug, Default)]
struct Captured {
    buf: Vec<u8>,
    dropped: u64,
    capacity: usize,
}

impl CapturedOutput {
    /// A sink keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                capacity,
                ..Default::default()
            })),
        }
    }

    fn write(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = c.capacity.saturating_sub(c.buf.len());
        let keep = room.min(bytes.len());
        c.buf.extend_from_slice(&bytes[..keep]);
        c.dropped += (bytes.len() - keep) as u64;
    }

    /// The captured text (lossy UTF-8), with a note when output was dropped.
    pub fn text(&self) -> String {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&c.buf).into_owned();
        if c.dropped > 0 {
            s.push_str(&format!(
                "\n[keyhole: {} more bytes dropped at the {}-byte cap]",
                c.dropped, c.capacity
            ));
        }
        s
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        CapturedOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always room: past the cap, bytes are counted and dropped, never refused.
        Ok(WRITE_BUDGET)
    }
}

/// What one `check-write` allows (any amount would do: writes never block).
const WRITE_BUDGET: usize = 64 << 10;

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        // Report everything as written so the guest never blocks or fails on a full cap.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let out = CapturedOutput::new(5);
        out.write(b"abc");
        out.write(b"defgh");
        assert!(
            out.text()
                .starts_with("abcde\n[keyhole: 3 more bytes dropped")
        );
    }

    #[tokio::test]
    async fn the_guests_stream_writes_into_the_capture_without_a_task() {
        let out = CapturedOutput::new(5);
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let mut streams: Vec<_> = (0..100).map(|_| out.p2_stream()).collect();
        assert_eq!(tasks(), before, "a stream spawned a task");
        let stream = &mut streams[0];
        assert!(stream.check_write().unwrap() > 0);
        stream.write(Bytes::from_static(b"abcdefgh")).unwrap();
        // Past the cap it still takes everything: the excess is counted, not refused.
        assert!(stream.check_write().unwrap() > 0);
        stream.write(Bytes::from_static(b"ij")).unwrap();
        assert!(
            out.text()
                .starts_with("abcde\n[keyhole: 5 more bytes dropped")
        );
    }
}
