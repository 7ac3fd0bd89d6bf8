//! Plumbing shared by the loopback test servers: serving an axum router on `127.0.0.1:0`
//! until the handle drops, the request log every server keeps, and the echo document.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Request bodies larger than this are not recorded whole; the servers answer 413 instead.
pub const MAX_RECORDED_BODY: usize = 64 * 1024 * 1024;

/// A router served on an ephemeral loopback port by a thread of its own. Dropping it
/// starts a graceful shutdown.
///
/// The server owns its runtime (one current-thread runtime on a dedicated OS thread) so
/// that it keeps answering while a test blocks its own thread, e.g. waiting on a child
/// `keyhole` process, and so that it works from plain `#[test]`s and any runtime flavour.
pub(crate) struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and serves `router` until the handle drops.
    ///
    /// Panics when no loopback port or thread can be had: a test cannot go on without one.
    pub(crate) fn spawn(router: Router) -> Self {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a test server");
        listener
            .set_nonblocking(true)
            .expect("make the test server's listener non-blocking");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let (tx, rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("test-server-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a runtime for a test server");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)
                        .expect("register the test server's listener with tokio");
                    let shutdown = async {
                        // Either an explicit signal or the handle being dropped ends it.
                        let _ = rx.await;
                    };
                    if let Err(err) = axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                    {
                        tracing::warn!(%addr, %err, "test server stopped with an error");
                    }
                });
                let _ = stopped_tx.send(());
            })
            .expect("spawn a test server thread");
        Self {
            addr,
            shutdown: Some(tx),
            stopped: Some(stopped_rx),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits until in-flight requests have finished.
    pub(crate) async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// One request as a test server received it, before any handler ran.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    /// Path without the query, e.g. `/v1/echo/a/b`.
    pub path: String,
    /// The raw query string (without `?`), if the URL had one.
    pub query: Option<String>,
    /// Every header in arrival order, names lower-cased; repeated headers appear repeatedly.
    pub headers: Vec<(String, String)>,
    /// The body as received.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in arrival order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The decoded query pairs, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        decode_pairs(self.query.as_deref().unwrap_or("").as_bytes())
    }

    /// The first decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body decoded as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        decode_pairs(&self.body)
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Everything recorded, as one string: handy for "this secret never reached the server".
    pub fn contains(&self, needle: &str) -> bool {
        self.path.contains(needle)
            || self.query.as_deref().is_some_and(|q| q.contains(needle))
            || self
                .headers
                .iter()
                .any(|(n, v)| n.contains(needle) || v.contains(needle))
            || self.body_text().contains(needle)
    }
}

/// The log a server appends every request to, with per-path counts.
#[derive(Default)]
pub(crate) struct RequestLog {
    entries: Mutex<Vec<RecordedRequest>>,
}

impl RequestLog {
    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        self.entries.lock().unwrap().clone()
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        let entries = self.entries.lock().unwrap();
        entries.iter().filter(|r| r.path == path).count()
    }

    pub(crate) fn hits_by_path(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.entries.lock().unwrap().iter() {
            *counts.entry(r.path.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// Middleware recording each request (body included) before handing it on unchanged.
pub(crate) async fn record(
    State(log): State<Arc<RequestLog>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_RECORDED_BODY).await else {
        return Response::builder()
            .status(axum::http::StatusCode::PAYLOAD_TOO_LARGE)
            .body(Body::from("request body too large for the test server"))
            .expect("static response");
    };
    let entry = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: header_list(&parts.headers),
        body: bytes.to_vec(),
    };
    tracing::debug!(method = %entry.method, path = %entry.path, "test server request");
    log.entries.lock().unwrap().push(entry);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// What the echo routes answer: the request as the server saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Echo {
    /// Upper-case method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Decoded query pairs, in order.
    pub query_pairs: Vec<(String, String)>,
    /// Headers by lower-case name; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// Headers in arrival order, repeated ones repeated.
    pub header_list: Vec<(String, String)>,
    /// The body as (lossy) UTF-8 text.
    pub body: String,
}

impl Echo {
    pub(crate) fn of(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Self {
        let header_list = header_list(headers);
        let mut joined: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &header_list {
            joined
                .entry(name.clone())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(value);
                })
                .or_insert_with(|| value.clone());
        }
        Self {
            method: method.as_str().to_owned(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            query_pairs: decode_pairs(uri.query().unwrap_or("").as_bytes()),
            headers: joined,
            header_list,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    /// Header `name` (case-insensitive), repeated values joined with `", "`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The first decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query_pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Decodes `a=1&b=2` (query or form body) into owned pairs.
pub(crate) fn decode_pairs(input: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(input)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
