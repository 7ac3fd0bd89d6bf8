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
//!
//! An invocation runs to its end even if its client goes away: killed halfway, a function
//! that had already posted somewhere would have no record of it, and could not commit
//! the state that keeps its next run from posting again. The run then finishes on a task
//! of its own ([`RunToCompletion`]), which shutdown waits for like any invocation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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
    let ticket = state.capacity.enter()?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        "{}".to_string()
    } else {
        String::from_utf8(Vec::from(body)).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-input",
                format!("input is not UTF-8 text: {}", e.utf8_error()),
            )
        })?
    };
    let host = state.host.clone();
    let run = async move {
        // Both held until the invocation ends, wherever it ends.
        let _ticket = ticket;
        let _memory = memory;
        host.invoke_answer_first(&name, &input).await
    };
    let invocation = RunToCompletion::new(run, &state.detached)
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

/// A future that, dropped before it is done (its request went away), finishes on a task
/// of `tracker`'s instead of stopping where it was. Until then it costs nothing more than
/// the future itself.
struct RunToCompletion<T: Send + 'static> {
    run: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    tracker: tokio_util::task::TaskTracker,
}

impl<T: Send + 'static> RunToCompletion<T> {
    fn new(
        run: impl Future<Output = T> + Send + 'static,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            run: Some(Box::pin(run)),
            tracker: tracker.clone(),
        }
    }
}

impl<T: Send + 'static> Future for RunToCompletion<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let run = self
            .run
            .as_mut()
            .expect("RunToCompletion polled after it completed");
        let out = std::task::ready!(run.as_mut().poll(cx));
        self.run = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for RunToCompletion<T> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            tracing::debug!("the client went away; the invocation runs to its end");
            self.tracker.spawn(async move {
                run.await;
            });
        }
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
