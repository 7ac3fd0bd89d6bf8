//! The route table of `keyhole serve` and its cross-cutting layers: bearer
//! authentication, the per-token rate limit, body caps and the per-pause body timeout.
//! (Invocation admission is in [`super::invoke`]: it needs the body read first.)
//!
//! An answer sent before the request body was read says `Connection: close`
//! ([`close_if_body_unread`]).
//!
//! Open (no token): `GET /healthz`, `GET /oauth/callback`. Everything else, including
//! unknown paths, answers 401 without a valid token, so a caller without one learns
//! nothing about what exists.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use hyper::body::Body as _;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::auth::{Admin, authenticate};
use super::error::ApiError;
use super::{AppState, admin, invoke, schedules};
use crate::oauth::CallbackParams;
use crate::runtime::MAX_COMPONENT_BYTES;

/// Build the router over `state`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/functions", get(admin::list_functions))
        .route(
            "/v1/functions/{name}",
            get(admin::show_function)
                .delete(admin::delete_function)
                // Components may be larger than invocation bodies.
                .post(admin::upload_function)
                .layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .route("/v1/functions/{name}/invoke", post(invoke::invoke))
        .route("/v1/functions/{name}/grants", get(admin::list_grants))
        .route(
            "/v1/functions/{name}/grants/{connection}",
            put(admin::grant).delete(admin::revoke_grant),
        )
        .route(
            "/v1/functions/{name}/invocations",
            get(admin::function_invocations),
        )
        .route("/v1/invocations", get(admin::invocations))
        .route("/v1/connections", get(admin::list_connections))
        .route("/v1/connections/{name}", get(admin::show_connection))
        .route("/v1/connections/{name}/test", post(admin::test_connection))
        .route(
            "/v1/connections/{name}/revoke",
            post(admin::revoke_connection),
        )
        .route("/v1/services", get(admin::list_services))
        .route("/v1/services/{name}", get(admin::show_service))
        .route("/v1/schedules", get(schedules::list))
        .route(
            "/v1/schedules/{name}",
            get(schedules::show)
                .put(schedules::create)
                .patch(schedules::edit)
                .delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/v1/schedules/{name}/release", post(schedules::release))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/oauth/callback", get(oauth_callback))
        .merge(api)
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // A client that stalls mid-body would otherwise hold its connection for ever.
        .layer(RequestBodyTimeoutLayer::new(state.config.body_timeout))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::HeaderName::from_static("keep-alive"),
            keep_alive_hint(state.config.header_timeout),
        ))
        .layer(middleware::from_fn(close_if_body_unread))
        .with_state(state)
}

/// An answer sent before the request body was read to its end (a 401, 403, 429 or 503
/// refused up front, a 413 over the cap, a 408 on a stalled body) leaves the rest of the
/// body on the connection, so the connection cannot carry another request. Such an
/// answer says `Connection: close`, or a client reusing the connection loses its next
/// request. Answers to requests whose body was read, or that had none, keep it open.
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    if request.version() > axum::http::Version::HTTP_11 || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let read = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        axum::body::Body::new(TrackedBody {
            inner: body,
            read: read.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !read.load(Ordering::Relaxed) {
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.remove(header::HeaderName::from_static("keep-alive"));
    }
    response
}

/// A request body that records when it has been read to its end.
struct TrackedBody {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl hyper::body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `Keep-Alive: timeout=N`, N the whole seconds an idle connection is kept (the header
/// timeout). A client that reuses a connection just as the server closes it sees the
/// request fail (hyper: `IncompleteMessage`); clients that read this hint (Node's
/// undici, among others) stop reusing a connection before then. `None` (no header)
/// under a second.
fn keep_alive_hint(idle: std::time::Duration) -> Option<HeaderValue> {
    let secs = idle.as_secs();
    (secs > 0).then(|| HeaderValue::from_str(&format!("timeout={secs}")).expect("ASCII digits"))
}

/// Authenticate the bearer token, apply its rate limit and hand the [`Caller`] on.
///
/// [`Caller`]: super::auth::Caller
async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(state.host.storage(), request.headers()) {
        Ok(c) => c,
        Err(e) => {
            crate::metrics::http_rejection("unauthorized");
            return e.into_response();
        }
    };
    if let Err(e) = state.rate.check(caller.token_id) {
        return e.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Every error answer has the JSON error body, including those axum makes itself (a
/// malformed query string or path, a method the endpoint does not take). The OAuth
/// callback's HTML pages are left as they are: a browser reads them.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(status.is_client_error() || status.is_server_error())
        || content_type.starts_with("application/json")
        || content_type.starts_with("text/html")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (kind, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            format!("this endpoint does not take {method}; the Allow header lists what it takes"),
        ),
        StatusCode::BAD_REQUEST => ("bad-request", text),
        StatusCode::NOT_FOUND => ("not-found", text),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-large", text),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", text),
        _ => ("error", text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let mut answer = ApiError::new(status, kind, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    answer
}

async fn no_route() -> ApiError {
    ApiError::no_route()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn metrics(_: Admin) -> Response {
    let mut response = crate::metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

use crate::oauth::page;

/// The provider's redirect after an OAuth authorization (`keyhole connections connect
/// NAME --no-listen` sent the admin there): complete the connection.
async fn oauth_callback(
    State(state): State<AppState>,
    Query(params): Query<CallbackParams>,
) -> (StatusCode, Html<String>) {
    match state
        .host
        .connections()
        .complete_authorization(&params, None)
        .await
    {
        Ok(view) => {
            let mut text = match &view.account {
                Some(a) => format!("Connection {} is connected as {a:?}.", view.name),
                None => format!("Connection {} is connected.", view.name),
            };
            // Kept only to say the tokens belong to another account than before.
            if let Some(note) = &view.status_reason {
                text.push_str(&format!(" Note: {note}."));
            }
            (StatusCode::OK, page("connected", &text))
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            page("authorization failed", &e.to_string()),
        ),
    }
}
