//! Sends one request (or several) through a named connection and reports the
//! raw answer, so tests can drive the host's HTTP capability from a guest.

use std::time::Duration;

use keyhole_sdk::{Connection, Error};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Input {
    connection: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_target")]
    target: String,
    #[serde(default)]
    query: Vec<(String, String)>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    body: Option<String>,
    timeout_ms: Option<u64>,
    repeat: Option<u32>,
}

fn default_method() -> String {
    "GET".to_owned()
}

fn default_target() -> String {
    "/".to_owned()
}

#[keyhole_sdk::function]
fn run(input: Input) -> Result<Value, Error> {
    let mut request = Connection::new(&input.connection).request(&input.method, &input.target);
    for (name, value) in &input.query {
        request = request.query(name, value);
    }
    for (name, value) in &input.headers {
        request = request.header(name, value);
    }
    if let Some(body) = input.body {
        request = request.body(body);
    }
    if let Some(ms) = input.timeout_ms {
        request = request.timeout(Duration::from_millis(ms));
    }

    let repeat = input.repeat.unwrap_or(1).max(1);
    let mut response = None;
    for sent in 0..repeat {
        // Host refusals are answers here, not failures: tests match on `error`.
        match request.clone().send() {
            Ok(answer) => response = Some(answer),
            Err(err) => {
                let mut answer = json!({ "error": err.kind(), "detail": err.to_string() });
                if repeat > 1 {
                    answer["sent"] = json!(sent);
                }
                return Ok(answer);
            }
        }
    }
    let response = response.expect("repeat is at least 1");

    let mut answer = json!({
        "status": response.status(),
        "headers": response.headers(),
        "body": response.text(),
    });
    if repeat > 1 {
        answer["sent"] = json!(repeat);
    }
    Ok(answer)
}
