//! Durable key-value state, private to the function.
//!
//! Writes made during a run are committed only if the run succeeds: return an error (or
//! panic) and the state stays as it was, so a half-finished run never leaves half its
//! bookkeeping behind. Limits: keys 1–512 bytes, values up to 256 KiB, 4 MiB per function
//! (each entry counting 64 bytes beyond its key and value).
//!
//! ```no_run
//! # fn demo() -> Result<(), keyhole_sdk::Error> {
//! use keyhole_sdk::kv;
//! let runs: u64 = kv::get_json("runs")?.unwrap_or(0);
//! kv::set_json("runs", &(runs + 1))?;
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::kv as wit;
use crate::Error;

fn convert(e: wit::Error) -> Error {
    match e {
        wit::Error::InvalidKey(d) => Error::InvalidKey(d),
        wit::Error::ValueTooLarge(d) => Error::ValueTooLarge(d),
        wit::Error::QuotaExceeded(d) => Error::QuotaExceeded(d),
    }
}

/// The bytes stored under `key`, if any.
///
/// ```no_run
/// let raw = keyhole_sdk::kv::get("cursor")?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
pub fn get(key: impl AsRef<str>) -> Result<Option<Vec<u8>>, Error> {
    wit::get(key.as_ref()).map_err(convert)
}

/// Store `value` under `key`.
///
/// ```no_run
/// keyhole_sdk::kv::set("cursor", b"page-7")?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
pub fn set(key: impl AsRef<str>, value: impl AsRef<[u8]>) -> Result<(), Error> {
    wit::set(key.as_ref(), value.as_ref()).map_err(convert)
}

/// Remove `key` (a missing key is fine).
///
/// ```no_run
/// keyhole_sdk::kv::delete("cursor")?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
pub fn delete(key: impl AsRef<str>) -> Result<(), Error> {
    wit::delete(key.as_ref()).map_err(convert)
}

/// Keys starting with `prefix` (`""` for all), ascending.
///
/// ```no_run
/// for key in keyhole_sdk::kv::list_keys("seen/")? {
///     keyhole_sdk::info!("{key}");
/// }
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
pub fn list_keys(prefix: impl AsRef<str>) -> Result<Vec<String>, Error> {
    wit::list_keys(prefix.as_ref()).map_err(convert)
}

/// The JSON value stored under `key`, decoded.
///
/// ```no_run
/// let seen: Option<Vec<String>> = keyhole_sdk::kv::get_json("seen")?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
pub fn get_json<T: DeserializeOwned>(key: impl AsRef<str>) -> Result<Option<T>, Error> {
    match get(key)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        None => Ok(None),
    }
}

/// Store `value` as JSON under `key`.
///
/// ```no_run
/// keyhole_sdk::kv::set_json("seen", &vec!["a", "b"])?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
pub fn set_json<T: Serialize + ?Sized>(key: impl AsRef<str>, value: &T) -> Result<(), Error> {
    set(key, serde_json::to_vec(value)?)
}
