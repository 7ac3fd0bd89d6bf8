//! The smallest useful plugin: answers with its input, unchanged.

use keyhole_sdk::Error;
use serde_json::Value;

#[keyhole_sdk::function]
fn run(input: Value) -> Result<Value, Error> {
    let bytes = serde_json::to_vec(&input)?.len();
    keyhole_sdk::info!("echo: {bytes} bytes");
    Ok(input)
}
