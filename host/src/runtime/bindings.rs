//! The one `bindgen!` site: host-side bindings for every supported version of the
//! `keyhole:function` WIT package, side by side (a released version is frozen; a new one
//! lives beside it).
//!
//! Imports are async (a slow upstream must never block a tokio worker) and trappable
//! (host faults become traps, guest-actionable failures travel in the WIT `error`).

/// `keyhole:function@0.2.0`: http, log and kv. The host's own implementation targets it.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keyhole:function/custom-function@0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// `keyhole:function@0.1.0` (frozen): http and log. Implemented by adapting to 0.2.0.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keyhole:function/custom-function@0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub use v0_2::keyhole::function0_2_0::{http, kv, log};
pub use v0_2::{CustomFunction, CustomFunctionPre};
