//! The one `bindgen!` site: host-side bindings for the `keyhole:function` WIT package.
//!
//! Imports are async (a slow upstream must never block a tokio worker) and trappable
//! (host faults become traps, guest-actionable failures travel in the WIT `error`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "keyhole:function/custom-function",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use keyhole::function::{http, log};
