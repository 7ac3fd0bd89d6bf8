//! The local API the authenticated-call benchmarks call: `GET /` answers a small JSON list
//! when the request carries the right `X-API-Key` and 401 otherwise, the way an API-key
//! service checks its callers. Used in process by `benches/gateway.rs` and as a process of
//! its own (`examples/bench-upstream.rs`) by `bench/http.sh`.

use axum::http::{HeaderMap, StatusCode};

/// What `GET /` answers with the right key.
pub const BODY: &str = r#"{"items":[{"id":"1","text":"hi"}]}"#;

/// The API: `GET /` with `X-API-Key: key` gets 200 and [`BODY`], anything else 401.
pub fn router(key: String) -> axum::Router {
    axum::Router::new().route(
        "/",
        axum::routing::get(move |headers: HeaderMap| async move {
            match headers.get("x-api-key") {
                Some(v) if v.as_bytes() == key.as_bytes() => (StatusCode::OK, BODY),
                _ => (StatusCode::UNAUTHORIZED, r#"{"error":"bad key"}"#),
            }
        }),
    )
}

/// Serve [`router`] on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, key: &str) -> std::io::Result<()> {
    axum::serve(listener, router(key.to_string())).await
}
