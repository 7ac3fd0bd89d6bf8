//! Counts its runs in per-function state. Options exercise the state rules:
//! `fail_after_write` errors after incrementing (the increment must not stick),
//! `blob_bytes` stores a value of that size under `blob-{count}` (quota and size limits).

use keyhole_sdk::{Error, kv};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    fail_after_write: bool,
    blob_bytes: Option<usize>,
}

#[keyhole_sdk::function]
fn run(input: Input) -> Result<Value, Error> {
    let count: u64 = kv::get_json("count")?.unwrap_or(0) + 1;
    kv::set_json("count", &count)?;
    if let Some(n) = input.blob_bytes {
        kv::set(format!("blob-{count}"), vec![b'x'; n])?;
    }
    if input.fail_after_write {
        return Err(Error::msg(format!("failing after writing count {count}")));
    }
    Ok(json!({ "count": count, "keys": kv::list_keys("")? }))
}
