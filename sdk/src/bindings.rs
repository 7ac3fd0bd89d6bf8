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
    world: "keyhole:function/custom-function@0.2.0",
    pub_export_macro: true,
    export_macro_name: "__keyhole_export",
    default_bindings_module: "::keyhole_sdk::__private",
    runtime_path: "::keyhole_sdk::__private::wit_bindgen::rt",
});

pub use self::keyhole::function0_2_0::{http, kv, log};

/// What a plugin function may return: `Result<Out, E>` with `Out: Serialize`
/// and `E: Display`. A trait rather than a plain bound so a wrong return type
/// gets a message saying what is expected.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a keyhole function result",
    label = "return `Result<Out, E>` where `Out: Serialize` and `E: Display`"
)]
pub trait Outcome {
    /// The success value, encoded as the JSON answer.
    type Out: Serialize;
    /// The failure, shown to the caller as text.
    type Err: Display;
    /// Unpacks the value.
    fn into_result(self) -> Result<Self::Out, Self::Err>;
}

impl<O: Serialize, E: Display> Outcome for Result<O, E> {
    type Out = O;
    type Err = E;

    fn into_result(self) -> Self {
        self
    }
}

/// Checks the plugin's input type where the macro can point at it.
pub fn assert_input<I: DeserializeOwned>() {}

/// Checks the plugin's return type where the macro can point at it.
pub fn assert_outcome<R: Outcome>() {}

/// Decodes `input`, calls the plugin function and encodes its answer, so the
/// macro's expansion stays a few lines.
pub fn run_json<I, R>(input: &str, f: fn(I) -> R) -> Result<String, String>
where
    I: DeserializeOwned,
    R: Outcome,
{
    let input: I = serde_json::from_str(input).map_err(|e| format!("invalid input: {e}"))?;
    let output = f(input).into_result().map_err(|e| e.to_string())?;
    serde_json::to_string(&output).map_err(|e| format!("cannot encode output as JSON: {e}"))
}
