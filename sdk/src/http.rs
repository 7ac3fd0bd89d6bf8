//! Outbound HTTP through named connections: [`Connection`], its request
//! builder and the [`Response`].

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::http as wit;
use crate::Error;

/// A connection an administrator created and granted to this function, named
/// as in `keyhole connections`.
///
/// The host resolves each request's path against the connection's base URL,
/// checks the destination and adds the credentials, so a function never sees
/// them. Creating a `Connection` is free; the name is checked on each request.
///
/// ```no_run
/// use keyhole_sdk::Connection;
///
/// let youtube = Connection::new("youtube");
/// let threads: serde_json::Value = youtube
///     .get("/youtube/v3/commentThreads")
///     .query("videoId", "dQw4w9WgXcQ")
///     .header("accept", "application/json")
///     .send()?
///     .json()?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    name: String,
}

impl Connection {
    /// Names the connection to send requests through.
    ///
    /// ```
    /// let github = keyhole_sdk::Connection::new("github");
    /// ```
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            name: name.as_ref().to_owned(),
        }
    }

    /// The connection's name.
    ///
    /// ```
    /// assert_eq!(keyhole_sdk::Connection::new("github").name(), "github");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a request with any method. `target` is a path relative to the
    /// connection's base URL, or an absolute URL on one of its allowed origins.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("api").request("OPTIONS", "/items").send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn request(&self, method: impl AsRef<str>, target: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder {
            connection: self.name.clone(),
            request: wit::Request {
                method: method.as_ref().to_owned(),
                target: target.as_ref().to_owned(),
                query: Vec::new(),
                headers: Vec::new(),
                body: None,
                timeout_ms: None,
            },
            deferred_error: None,
        }
    }

    /// Starts a `GET` request.
    ///
    /// ```no_run
    /// let me = keyhole_sdk::Connection::new("github").get("/user").send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn get(&self, target: impl AsRef<str>) -> RequestBuilder {
        self.request("GET", target)
    }

    /// Starts a `POST` request.
    ///
    /// ```no_run
    /// let created = keyhole_sdk::Connection::new("api")
    ///     .post("/items")
    ///     .json_body(&serde_json::json!({ "name": "widget" }))
    ///     .send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn post(&self, target: impl AsRef<str>) -> RequestBuilder {
        self.request("POST", target)
    }

    /// Starts a `PUT` request.
    ///
    /// ```no_run
    /// let replaced = keyhole_sdk::Connection::new("api").put("/items/1").body("widget").send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn put(&self, target: impl AsRef<str>) -> RequestBuilder {
        self.request("PUT", target)
    }

    /// Starts a `PATCH` request.
    ///
    /// ```no_run
    /// let patched = keyhole_sdk::Connection::new("api")
    ///     .patch("/items/1")
    ///     .json_body(&serde_json::json!({ "name": "gadget" }))
    ///     .send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn patch(&self, target: impl AsRef<str>) -> RequestBuilder {
        self.request("PATCH", target)
    }

    /// Starts a `DELETE` request.
    ///
    /// ```no_run
    /// keyhole_sdk::Connection::new("api").delete("/items/1").send()?.error_for_status()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn delete(&self, target: impl AsRef<str>) -> RequestBuilder {
        self.request("DELETE", target)
    }
}

/// A request being built; [`send`](RequestBuilder::send) it when complete.
///
/// Cloning a builder is the way to send the same request more than once.
///
/// ```no_run
/// use std::time::Duration;
///
/// let response = keyhole_sdk::Connection::new("api")
///     .get("/search")
///     .query("q", "rust")
///     .header("accept", "application/json")
///     .timeout(Duration::from_secs(5))
///     .send()?;
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    connection: String,
    request: wit::Request,
    /// A failure from a builder step (e.g. `json_body`), reported by `send` so
    /// that the chain stays free of `?`.
    deferred_error: Option<Error>,
}

impl RequestBuilder {
    /// Appends a query parameter; the host encodes it. Parameters keep their order.
    ///
    /// ```no_run
    /// let page = keyhole_sdk::Connection::new("api").get("/items").query("page", "2").send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn query(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.request
            .query
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Appends a request header. `authorization`, `proxy-authorization`,
    /// `cookie`, `host` and any header the connection's credentials go in are
    /// refused with [`Error::InvalidRequest`]: the connection decides those. So
    /// are `accept-encoding` (the host asks for plain bodies, to scrub them), `te`,
    /// `range` and `if-range`.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("api")
    ///     .get("/items")
    ///     .header("accept", "application/json")
    ///     .send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.request
            .headers
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets the request body, replacing any earlier one.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("api")
    ///     .post("/notes")
    ///     .header("content-type", "text/plain")
    ///     .body("remember the milk")
    ///     .send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.request.body = Some(body.into());
        self
    }

    /// Sets the body to `value` as JSON and the `content-type` header to
    /// `application/json`. An encoding failure is returned by `send`.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("api")
    ///     .post("/items")
    ///     .json_body(&serde_json::json!({ "name": "widget" }))
    ///     .send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn json_body<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.request
                    .headers
                    .retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
                self.request
                    .headers
                    .push(("content-type".to_owned(), "application/json".to_owned()));
                self.request.body = Some(body);
            }
            Err(err) => self.deferred_error = Some(err.into()),
        }
        self
    }

    /// Sets how long to wait for the upstream. The host caps it at its own
    /// limit and at the invocation's remaining time.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let response = keyhole_sdk::Connection::new("api")
    ///     .get("/slow")
    ///     .timeout(Duration::from_secs(2))
    ///     .send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        // The host caps the timeout anyway, so saturating a huge one loses nothing.
        self.request.timeout_ms = Some(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
        self
    }

    /// Sends the request and waits for the answer. Any upstream status,
    /// including 4xx and 5xx, is an `Ok` response; chain
    /// [`Response::error_for_status`] to turn those into errors.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("github").get("/user").send()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn send(self) -> Result<Response, Error> {
        if let Some(err) = self.deferred_error {
            return Err(err);
        }
        let response = wit::send(&self.connection, &self.request)?;
        Ok(Response {
            status: response.status,
            headers: response.headers,
            body: response.body,
        })
    }
}

/// An upstream's answer. Redirects are not followed, and any secret value in
/// the headers or body has been replaced by `[redacted]`.
///
/// ```no_run
/// let response = keyhole_sdk::Connection::new("github").get("/user").send()?;
/// if response.is_success() {
///     let user: serde_json::Value = response.json()?;
/// }
/// # Ok::<(), keyhole_sdk::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// The HTTP status code.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("github").get("/user").send()?;
    /// assert_eq!(response.status(), 200);
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("github").get("/user").send()?;
    /// if !response.is_success() {
    ///     keyhole_sdk::warn!("github answered {}", response.status());
    /// }
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// All headers as `(name, value)` pairs, in the order received.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("github").get("/user").send()?;
    /// for (name, value) in response.headers() {
    ///     keyhole_sdk::debug!("{name}: {value}");
    /// }
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header called `name`, compared case-insensitively.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("github").get("/user").send()?;
    /// let remaining = response.header("x-ratelimit-remaining");
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn header(&self, name: impl AsRef<str>) -> Option<&str> {
        find_header(&self.headers, name.as_ref())
    }

    /// The raw body.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("files").get("/logo.png").send()?;
    /// let bytes: &[u8] = response.body();
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text; bytes that are not UTF-8 become `U+FFFD`.
    ///
    /// ```no_run
    /// let response = keyhole_sdk::Connection::new("api").get("/readme").send()?;
    /// keyhole_sdk::info!("{}", response.text());
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Decodes the body as JSON into `T`.
    ///
    /// ```no_run
    /// #[derive(serde::Deserialize)]
    /// struct User { login: String }
    ///
    /// let user: User = keyhole_sdk::Connection::new("github").get("/user").send()?.json()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// Passes a 2xx response through and turns any other status into
    /// [`Error::Status`], carrying the body for the error message and the headers
    /// for [`Error::header`] and [`Error::retry_after`].
    ///
    /// ```no_run
    /// let user: serde_json::Value = keyhole_sdk::Connection::new("github")
    ///     .get("/user")
    ///     .send()?
    ///     .error_for_status()?
    ///     .json()?;
    /// # Ok::<(), keyhole_sdk::Error>(())
    /// ```
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Error::Status {
                status: self.status,
                body: self.text(),
                headers: self.headers,
            })
        }
    }
}

/// The first header in `headers` called `name`, compared case-insensitively: the one
/// lookup behind [`Response::header`] and [`Error::header`].
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn header_lookup_ignores_case() {
        assert_eq!(
            response(200, "").header("content-type"),
            Some("application/json")
        );
        assert_eq!(response(200, "").header("x-missing"), None);
    }

    #[test]
    fn error_for_status_keeps_success_and_rejects_others() {
        assert!(response(204, "").error_for_status().is_ok());
        let err = response(404, "not here").error_for_status().unwrap_err();
        assert_eq!(
            err,
            Error::Status {
                status: 404,
                headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
                body: "not here".to_owned()
            }
        );
    }

    #[test]
    fn error_for_status_keeps_retry_after() {
        let mut busy = response(429, "slow down");
        busy.headers
            .push(("retry-after".to_owned(), "30".to_owned()));
        let err = busy.error_for_status().unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(err.header("Content-Type"), Some("application/json"));
        assert_eq!(err.to_string(), "upstream answered HTTP 429: slow down");
    }

    #[test]
    fn json_body_replaces_content_type() {
        let builder = Connection::new("api")
            .post("/x")
            .header("Content-Type", "text/plain")
            .json_body(&serde_json::json!({ "a": 1 }));
        assert_eq!(
            builder.request.headers,
            vec![("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(builder.request.body.as_deref(), Some(&br#"{"a":1}"#[..]));
    }

    #[test]
    fn timeout_saturates() {
        let builder = Connection::new("api").get("/").timeout(Duration::MAX);
        assert_eq!(builder.request.timeout_ms, Some(u32::MAX));
    }
}
