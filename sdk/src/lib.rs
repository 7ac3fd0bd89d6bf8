//! Write keyhole custom functions in Rust: call APIs through named connections,
//! never touch a secret.
//!
//! A function is a WebAssembly component built for `wasm32-wasip2`. It takes
//! JSON in and gives JSON out; outbound HTTP goes through a [`Connection`] that
//! an administrator created and granted, and the host adds the credentials.
//!
//! The smallest complete plugin (`crate-type = ["cdylib"]`, depending on
//! `keyhole-sdk` and `serde`):
//!
//! ```no_run
//! use keyhole_sdk::{Connection, Error};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input { user: String }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Output { login: String }
//!
//! #[keyhole_sdk::function]
//! fn run(input: Input) -> Result<Output, Error> {
//!     keyhole_sdk::info!("looking up {}", input.user);
//!     let path = format!("/users/{}", input.user);
//!     Connection::new("github").get(path).send()?.error_for_status()?.json()
//! }
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`.
#![deny(missing_docs)]

// The generated bindings name their runtime by the path a plugin sees
// (`::keyhole_sdk::...`); this makes the same path resolve inside the SDK.
extern crate self as keyhole_sdk;

mod error;
mod http;
pub mod kv;
pub mod log;

#[doc(hidden)]
#[path = "bindings.rs"]
pub mod __private;

pub use error::Error;
pub use http::{Connection, RequestBuilder, Response};

/// Marks the function a plugin exports.
///
/// The function takes exactly one argument, the decoded JSON input (any
/// [`serde::de::DeserializeOwned`] type), and returns `Result<Out, E>` where
/// `Out` is [`serde::Serialize`] and `E` is anything [`std::fmt::Display`]
/// (usually [`Error`]). Input that does not decode answers
/// `Err("invalid input: ...")` without calling the function. Use it once per
/// plugin.
///
/// ```no_run
/// #[keyhole_sdk::function]
/// fn run(name: String) -> Result<String, keyhole_sdk::Error> {
///     Ok(format!("hello, {name}"))
/// }
/// # fn main() {}
/// ```
///
/// A wrong signature does not compile:
///
/// ```compile_fail
/// #[keyhole_sdk::function]
/// fn run(a: String, b: String) -> Result<String, keyhole_sdk::Error> {
///     Ok(a + &b)
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[keyhole_sdk::function]
/// fn run(name: String) {}
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[keyhole_sdk::function]
/// async fn run(name: String) -> Result<String, keyhole_sdk::Error> {
///     Ok(name)
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[keyhole_sdk::function]
/// fn run<T: serde::de::DeserializeOwned>(input: T) -> Result<String, keyhole_sdk::Error> {
///     Ok(String::new())
/// }
/// # fn main() {}
/// ```
pub use keyhole_sdk_macros::function;
