//! A function built against the frozen `keyhole:function@0.1.0` world with raw
//! wit-bindgen, proving hosts that moved to 0.2.0 still run it. Input is a connection
//! name (plain text inside a JSON string); it logs a line and sends `GET /user`.

wit_bindgen::generate!({
    path: "../../wit/deps/function-0.1.0",
    world: "custom-function",
});

use keyhole::function::http;
use keyhole::function::log;

struct Legacy;

impl Guest for Legacy {
    fn run(input: String) -> Result<String, String> {
        let connection = input.trim().trim_matches('"').to_string();
        log::log(log::Level::Info, "legacy 0.1.0 function running");
        let request = http::Request {
            method: "GET".into(),
            target: "/user".into(),
            query: vec![],
            headers: vec![],
            body: None,
            timeout_ms: None,
        };
        let answer = match http::send(&connection, &request) {
            Ok(r) => format!("{{\"status\":{}}}", r.status),
            Err(http::Error::AccessDenied) => "{\"error\":\"access-denied\"}".to_string(),
            Err(e) => format!("{{\"error\":{:?}}}", format!("{e:?}")),
        };
        Ok(answer)
    }
}

export!(Legacy);
