//! The one `wit_bindgen::generate!` site: raw bindings for the `custom-function` world.
//!
//! Everything here is `#[doc(hidden)]` plumbing for the SDK and the
//! `#[keyhole_sdk::function]` macro; plugins use the friendly wrappers instead.

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

// Plugins depend on the SDK only, so the generated export macro must reach the
// runtime and the bindings through paths that resolve from a plugin crate.
pub use wit_bindgen;

wit_bindgen::generate!({
    path: "../wit",
    world: "custom-function",
    pub_export_macro: true,
    export_macro_name: "__keyhole_export",
    default_bindings_module: "::keyhole_sdk::__private",
    runtime_path: "::keyhole_sdk::__private::wit_bindgen::rt",
});

pub use self::keyhole::function::{http, log};

/// Decodes `input`, calls the plugin function and encodes its answer, so the
/// macro's expansion stays a one-liner that the type checker can point at.
pub fn run_json<I, O, E>(input: &str, f: fn(I) -> Result<O, E>) -> Result<String, String>
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
{
    let input: I = serde_json::from_str(input).map_err(|e| format!("invalid input: {e}"))?;
    let output = f(input).map_err(|e| e.to_string())?;
    serde_json::to_string(&output).map_err(|e| format!("cannot encode output as JSON: {e}"))
}
