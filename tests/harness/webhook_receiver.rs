//! `WebhookReceiver`: a loopback endpoint that records every POST (any path) so tests can
//! check what a function or the host delivered, answering like a generic webhook or like
//! a Slack incoming webhook.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::server::TestServer;

/// How often [`WebhookReceiver::wait_for`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One POST as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    /// Path without the query, e.g. `/services/T000/B000/XXXX`.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Every header in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as received.
    pub body: Vec<u8>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The status the receiver answered.
    pub status: u16,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `text` field of a JSON body: the message of a Slack incoming webhook.
    pub fn text(&self) -> Option<&str> {
        self.json.as_ref()?.get("text")?.as_str()
    }

    /// Whether `needle` occurs in the path, query, any header or the body.
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

/// How the receiver judges and answers a POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// Any body; answers `{"ok":true}`.
    Generic,
    /// Slack's incoming webhook: the body must be JSON with `text`, `blocks` or
    /// `attachments`; answers `ok` (text/plain), 400 `invalid_payload` or `no_text`.
    Slack,
}

struct Inner {
    flavor: Flavor,
    received: Vec<Received>,
    /// Status for every accepted POST (200 unless set).
    status: u16,
    /// POSTs still to fail, and with which status.
    fail_count: usize,
    fail_status: u16,
}

/// A webhook endpoint on `127.0.0.1`; it stops when dropped.
///
/// Records every POST at any path, whatever the answer; other methods answer 405 and are
/// not recorded.
pub struct WebhookReceiver {
    server: TestServer,
    inner: Arc<Mutex<Inner>>,
}

impl WebhookReceiver {
    /// A generic receiver: any body is accepted, the answer is 200 `{"ok":true}`.
    pub fn start() -> Self {
        Self::spawn(Flavor::Generic)
    }

    /// A receiver that answers like a Slack incoming webhook: 200 `ok`, or 400
    /// `invalid_payload` (not JSON) / `no_text` (no `text`, `blocks` or `attachments`).
    pub fn start_slack() -> Self {
        Self::spawn(Flavor::Slack)
    }

    fn spawn(flavor: Flavor) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            flavor,
            received: Vec::new(),
            status: 200,
            fail_count: 0,
            fail_status: 500,
        }));
        let router = Router::new().fallback(receive).with_state(inner.clone());
        Self {
            server: TestServer::spawn(router),
            inner,
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// `base_url() + path`; `path` starts with `/`, e.g. a fake
    /// `/services/T000/B000/XXXX` Slack webhook path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Answers every accepted POST with `status` from now on (a body naming the status).
    pub fn set_status(&self, status: u16) {
        self.inner.lock().unwrap().status = status;
    }

    /// Fails the next `n` POSTs with 500 (they are still recorded).
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500);
    }

    /// Fails the next `n` POSTs with `status` (they are still recorded).
    pub fn fail_next_with(&self, n: usize, status: u16) {
        let mut inner = self.inner.lock().unwrap();
        inner.fail_count = n;
        inner.fail_status = status;
    }

    /// Every POST so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// How many POSTs arrived so far.
    pub fn count(&self) -> usize {
        self.inner.lock().unwrap().received.len()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.inner.lock().unwrap().received.clear();
    }

    /// Blocks until at least `n` POSTs arrived or `timeout` passed; returns whether they
    /// did. For deliveries that happen in the background (e.g. scheduled runs).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops the server and waits for in-flight requests (dropping it also stops it).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "webhooks take POST",
        )
            .into_response();
    }
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let mut inner = inner.lock().unwrap();
    let (status, answer): (u16, String) = if inner.fail_count > 0 {
        inner.fail_count -= 1;
        (inner.fail_status, "injected failure".to_owned())
    } else if inner.flavor == Flavor::Slack {
        match &json {
            None => (400, "invalid_payload".to_owned()),
            Some(v)
                if ["text", "blocks", "attachments"]
                    .iter()
                    .all(|k| v.get(k).is_none()) =>
            {
                (400, "no_text".to_owned())
            }
            Some(_) if inner.status != 200 => (inner.status, format!("status {}", inner.status)),
            Some(_) => (200, "ok".to_owned()),
        }
    } else if inner.status != 200 {
        (
            inner.status,
            format!("{{\"ok\":false,\"status\":{}}}", inner.status),
        )
    } else {
        (200, "{\"ok\":true}".to_owned())
    };
    inner.received.push(Received {
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        json,
        status,
    });
    let content_type = if answer.starts_with('{') {
        "application/json"
    } else {
        "text/plain"
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, content_type)], answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(url: &str, body: &str) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        })
    }

    #[test]
    fn records_generic_posts_and_injected_failures() {
        let hook = WebhookReceiver::start();
        assert_eq!(post(&hook.url("/a/b?x=1"), r#"{"n":1}"#).0, 200);
        hook.fail_next(1);
        assert_eq!(post(&hook.url("/a"), "not json").0, 500);
        assert_eq!(post(&hook.url("/a"), "{}").0, 200);
        let got = hook.received();
        assert_eq!(hook.count(), 3);
        assert_eq!(got[0].path, "/a/b");
        assert_eq!(got[0].query.as_deref(), Some("x=1"));
        assert_eq!(got[0].json.as_ref().unwrap()["n"], 1);
        assert_eq!(got[0].header("Content-Type"), Some("application/json"));
        assert_eq!((got[1].status, got[1].json.is_none()), (500, true));
        assert!(hook.wait_for(3, Duration::from_millis(1)));
    }

    #[test]
    fn answers_like_slack() {
        let hook = WebhookReceiver::start_slack();
        let url = hook.url("/services/T000/B000/XXXX");
        assert_eq!(post(&url, r#"{"text":"hi"}"#), (200, "ok".to_owned()));
        assert_eq!(
            post(&url, r#"{"channel":"x"}"#),
            (400, "no_text".to_owned())
        );
        assert_eq!(post(&url, "nope"), (400, "invalid_payload".to_owned()));
        assert_eq!(hook.received()[0].text(), Some("hi"));
        assert_eq!(hook.count(), 3);
    }
}
