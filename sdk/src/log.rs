//! Structured log lines recorded with the invocation (`keyhole logs`).
//!
//! Use the functions here for a fixed message, or the crate-level macros
//! ([`info!`](crate::info) and friends) to format one. Lines beyond the
//! invocation's cap are dropped and the record notes how many.
//!
//! ```no_run
//! keyhole_sdk::log::info("starting");
//! keyhole_sdk::info!("fetched {} comments", 42);
//! ```

use crate::__private::log::{Level, log};

/// Records a line at trace level: very detailed tracing output.
///
/// ```no_run
/// keyhole_sdk::log::trace("entering parse_page");
/// ```
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message.as_ref());
}

/// Records a line at debug level: debugging detail.
///
/// ```no_run
/// keyhole_sdk::log::debug("cache miss");
/// ```
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message.as_ref());
}

/// Records a line at info level: normal progress.
///
/// ```no_run
/// keyhole_sdk::log::info("fetched first page");
/// ```
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message.as_ref());
}

/// Records a line at warn level: something unexpected the function recovered from.
///
/// ```no_run
/// keyhole_sdk::log::warn("rate limit nearly exhausted");
/// ```
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message.as_ref());
}

/// Records a line at error level: a failure.
///
/// ```no_run
/// keyhole_sdk::log::error("upstream returned garbage");
/// ```
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message.as_ref());
}

/// Formats and records a line at trace level, like `format!`.
///
/// ```no_run
/// keyhole_sdk::trace!("page {} has {} items", 3, 50);
/// ```
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::trace(::std::format!($($arg)*)) };
}

/// Formats and records a line at debug level, like `format!`.
///
/// ```no_run
/// keyhole_sdk::debug!("cursor = {:?}", Some("abc"));
/// ```
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(::std::format!($($arg)*)) };
}

/// Formats and records a line at info level, like `format!`.
///
/// ```no_run
/// keyhole_sdk::info!("fetched {} comments", 42);
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(::std::format!($($arg)*)) };
}

/// Formats and records a line at warn level, like `format!`.
///
/// ```no_run
/// keyhole_sdk::warn!("{} requests left", 3);
/// ```
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(::std::format!($($arg)*)) };
}

/// Formats and records a line at error level, like `format!`.
///
/// ```no_run
/// keyhole_sdk::error!("giving up after {} tries", 3);
/// ```
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(::std::format!($($arg)*)) };
}
