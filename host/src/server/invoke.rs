//! `POST /v1/functions/{name}/invoke`: the request body is the input JSON (empty means
//! `{}`), the response body is the function's output JSON.
//!
//! Success is 200 with headers `x-keyhole-invocation-id`, `x-keyhole-version` and
//! `x-keyhole-duration-us`. Failures use [`ApiError::from_invoke`]: 404 unknown
//! function, 400 invalid input, 413 input too large, 504 timeout, 500 trap or guest
//! error (with its message), 503 at capacity (with `Retry-After`).
//!
//! The input is read whole before the invocation takes a capacity place, and it must
//! arrive within `--body-timeout`: a client trickling its body holds a connection, never
//! an invocation slot. A request that could not get a place anyway is refused before its
//! body is read, and a declared `Content-Length` over the cap is refused up front. Inputs
//! being read or run share `--max-body-memory`: each reserves its declared length (the
//! cap if it declares none, given back down to its size once it is in) before it is
//! read, and past the budget gets 503 (only token holders get this far: authentication
//! comes first).

use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;

/// Invoke the latest version of `name` with the request body as input.
pub async fn invoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !caller.may_invoke(&name) {
        crate::metrics::http_rejection("forbidden");
        return Err(ApiError::forbidden(
            "this token may only invoke the function it was created for",
        ));
    }
    // Cheap refusal first: with no place free, the body is not worth reading.
    if !state.capacity.has_room() {
        return Err(state.capacity.refuse());
    }
    let config = &state.config;
    let declared = declared_length(&headers);
    if declared.is_some_and(|n| n > config.max_body_bytes as u64) {
        return Err(ApiError::body_too_large());
    }
    let size = declared.map_or(config.max_body_bytes, |n| n as usize);
    // Held until the invocation ends: the input stays in memory that long.
    let mut memory = state.bodies.reserve(size)?;
    let body = read_body(body, size, config.body_timeout).await?;
    memory.shrink_to(body.len());
    let _ticket = state.capacity.enter()?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        "{}"
    } else {
        std::str::from_utf8(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-input",
                format!("input is not UTF-8 text: {e}"),
            )
        })?
    };
    let invocation = state
        .host
        .invoke_answer_first(&name, input)
        .await
        .map_err(|e| ApiError::from_invoke(&e))?;
    match invocation.result {
        Ok(output) => {
            let mut response = Response::new(Body::from(output));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // Id 0: the process had no id to give (the record is numbered when stored, or
            // held back, or lost: logged).
            if invocation.id != 0 {
                headers.insert("x-keyhole-invocation-id", HeaderValue::from(invocation.id));
            }
            headers.insert("x-keyhole-version", HeaderValue::from(invocation.version));
            headers.insert(
                "x-keyhole-duration-us",
                HeaderValue::from(invocation.duration_us),
            );
            Ok(response)
        }
        Err(e) => Err(ApiError::from_invoke(&e).with_invocation(invocation.id)),
    }
}

/// The `Content-Length` a request declares, if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// The whole request body, at most `limit` bytes, arrived within `deadline` (408 after
/// it; the per-pause timeout of the router's layer applies inside it too).
async fn read_body(body: Body, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ApiError::from_body_error(&e)),
        Err(_) => Err(ApiError::body_deadline()),
    }
}
