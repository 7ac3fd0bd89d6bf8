//! Shared harness for keyhole's end-to-end suite: real HTTP servers on `127.0.0.1` (a fake
//! third-party API and a strict OAuth 2.0 authorization server) and small utilities.
//!
//! Every server binds an ephemeral loopback port, runs on a thread and runtime of its own
//! (so it keeps answering while a test blocks, e.g. on a child `keyhole` process) and
//! shuts down when its handle drops. Host-side helpers (a keyhole host on a temp dir,
//! building wasm fixtures) live in sibling modules of their own.

pub mod capture;
pub mod env;
pub mod fake_api;
pub mod oauth_server;
pub mod plugins;
mod server;
pub mod webhook_receiver;
pub mod youtube_api;

pub use fake_api::{Credential, FakeApi, SESSION_COOKIE, basic_blob};
pub use oauth_server::{
    AnswerStyle, ClientAuth, OAuthServer, pkce_challenge, pkce_pair, query_param,
};
pub use server::{Echo, RecordedRequest};

use std::sync::Once;

/// A TCP port on `127.0.0.1` that was free a moment ago (bound, read, released).
///
/// Racy by nature: prefer letting a server bind `127.0.0.1:0` itself when it can.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Installs a `tracing` subscriber once per process, filtered by `RUST_LOG` (default
/// `warn`) and writing through the test harness's captured output.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // Another crate may have installed a global subscriber first; that one wins.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
