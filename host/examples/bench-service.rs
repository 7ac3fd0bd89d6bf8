//! The hand-written service `bench/http.sh` compares keyhole with: what a team would write
//! instead of a keyhole function, a small axum server that makes the same authenticated
//! GET itself, with no wasm and no keyhole. `bench-service ADDR UPSTREAM_URL KEY` serves
//! `POST /fetch` (reads the JSON input, sends `GET UPSTREAM_URL` with `X-API-Key: KEY`
//! through one pooled reqwest client, answers `{"status", "body"}`) and `POST /refused`
//! (reads the input, answers an error without calling anything). `/fetch` − `/refused`
//! is what one outbound call costs a server on this machine; keyhole's own difference
//! between `fetch` and its refused invocation, minus that, is what keyhole adds.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Clone)]
struct Upstream {
    client: reqwest::Client,
    url: String,
    key: String,
}

/// Parses the input as keyhole does, then makes the call.
async fn fetch(
    State(up): State<Upstream>,
    Json(_input): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let sent = up
        .client
        .get(&up.url)
        .header("x-api-key", &up.key)
        .send()
        .await;
    let answer = match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.text().await {
                Ok(body) => json!({ "status": status, "body": body }),
                Err(e) => json!({ "error": "upstream-unreachable", "detail": e.to_string() }),
            }
        }
        Err(e) => json!({ "error": "upstream-unreachable", "detail": e.to_string() }),
    };
    // A failed call is not a 2xx, so the script's success check sees it.
    let status = if answer.get("error").is_some() {
        axum::http::StatusCode::BAD_GATEWAY
    } else {
        axum::http::StatusCode::OK
    };
    (status, Json(answer))
}

async fn refused(Json(input): Json<Value>) -> Json<Value> {
    let connection = input["connection"].as_str().unwrap_or_default().to_owned();
    Json(json!({ "error": "access-denied", "detail": format!("no connection {connection:?}") }))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(url), Some(key), None) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        eprintln!(
            "usage: bench-service ADDR UPSTREAM_URL KEY   (e.g. bench-service 127.0.0.1:18979 http://127.0.0.1:18978/ some-key)"
        );
        std::process::exit(2);
    };
    // The same runtime `keyhole serve` runs on: tokio's multi-thread default.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let served = rt.block_on(async {
        let upstream = Upstream {
            client: reqwest::Client::new(),
            url,
            key,
        };
        let app = axum::Router::new()
            .route("/fetch", post(fetch))
            .route("/refused", post(refused))
            .with_state(upstream);
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await
    });
    if let Err(e) = served {
        eprintln!("error: bench-service on {addr}: {e}");
        std::process::exit(1);
    }
}
