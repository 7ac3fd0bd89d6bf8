//! What the benches share: the test harness's plugin builder, included by path, so that
//! building `plugins/` from source lives in one place (`tests/harness/plugins.rs`), and
//! the local upstream API of the authenticated-call benches.

#[allow(dead_code)] // The benches read components; they need no paths.
#[path = "../../../tests/harness/plugins.rs"]
mod plugins;

pub use plugins::plugin;

#[allow(dead_code)] // Only the gateway bench calls an upstream.
pub mod upstream;
