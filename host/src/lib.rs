//! keyhole: a WebAssembly host for custom functions that call third-party APIs by
//! connection name, with credentials injected by the host and never seen by the guest.
//!
//! Start at [`Keyhole`]: it opens the data directory (SQLite database + master key),
//! builds the wasm [`runtime`], and exposes functions, invocations and [`connections`].
//! See `ARCHITECTURE.md` for the codemap and invariants.

pub mod app;
pub mod cli;
pub mod config;
pub mod connections;
pub mod metrics;
pub mod oauth;
pub mod runtime;
pub mod schedules;
pub mod secrets;
pub mod server;
pub mod services;
pub mod storage;
pub mod util;

pub use app::{FunctionDetail, HostError, Invocation, Keyhole, UploadOptions, Uploaded};
