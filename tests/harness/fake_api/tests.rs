//! Checks that `FakeApi` accepts exactly the configured credentials and that its utility
//! routes and request log behave as the end-to-end suite relies on.

use super::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn basic_auth_is_checked() {
    let api = FakeApi::start(Credential::basic("alice", "s3cret")).await;
    let http = client();

    let none = http.get(api.url("/user")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let challenge = none.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let wrong = http.get(api.url("/user")).basic_auth("alice", Some("nope"));
    assert_eq!(wrong.send().await.unwrap().status(), 401);

    let ok = http
        .get(api.url("/v1/user"))
        .basic_auth("alice", Some("s3cret"));
    let ok = ok.send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "login": "keyhole-test" }));
}

#[tokio::test]
async fn api_key_header_must_appear_exactly_once() {
    let api = FakeApi::start(Credential::api_key_header("X-Api-Key", "k-123")).await;
    let http = client();
    let get = |v: &[&str]| {
        let mut req = http.get(api.url("/user"));
        for value in v {
            req = req.header("x-api-key", *value);
        }
        req.send()
    };
    assert_eq!(get(&["k-123"]).await.unwrap().status(), 200);
    assert_eq!(get(&["k-124"]).await.unwrap().status(), 401);
    assert_eq!(get(&[]).await.unwrap().status(), 401);
    assert_eq!(get(&["k-123", "k-123"]).await.unwrap().status(), 401);
}

#[tokio::test]
async fn api_key_query_is_checked() {
    let api = FakeApi::start(Credential::api_key_query("api_key", "q&v=1")).await;
    let http = client();
    let ok = http.get(api.url("/user")).query(&[("api_key", "q&v=1")]);
    assert_eq!(ok.send().await.unwrap().status(), 200);
    let twice = http
        .get(api.url("/user"))
        .query(&[("api_key", "q&v=1"), ("api_key", "q&v=1")]);
    assert_eq!(twice.send().await.unwrap().status(), 401);
    let wrong = http.get(api.url("/user")).query(&[("api_key", "q")]);
    assert_eq!(wrong.send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn bearer_tokens_are_replaceable() {
    let api = FakeApi::start(Credential::bearer("t1")).await;
    let http = client();
    let user = |t: &str| http.get(api.url("/user")).bearer_auth(t).send();

    assert_eq!(user("t1").await.unwrap().status(), 200);
    api.add_bearer_token("t2");
    assert_eq!(user("t2").await.unwrap().status(), 200);
    api.set_bearer_tokens(["t3"]);
    let stale = user("t1").await.unwrap();
    assert_eq!(stale.status(), 401);
    let challenge = stale.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(user("t3").await.unwrap().status(), 200);

    let lower = http
        .get(api.url("/user"))
        .header("authorization", "bearer t3");
    assert_eq!(lower.send().await.unwrap().status(), 200);
    let missing = http.get(api.url("/user")).send().await.unwrap();
    let challenge = missing.headers()["www-authenticate"].to_str().unwrap();
    assert!(!challenge.contains("error="), "{challenge}");
}

#[tokio::test]
async fn echo_reports_the_request_only_when_authenticated() {
    let api = FakeApi::start(Credential::api_key_header("x-key", "v")).await;
    let http = client();

    let denied = http.post(api.url("/echo")).body("hi").send().await.unwrap();
    assert_eq!(denied.status(), 401);

    let echo: Echo = http
        .put(api.url("/v1/echo/a/b?x=1&y=two%20words"))
        .header("x-key", "v")
        .header("X-Custom", "one")
        .header("x-custom", "two")
        .body("payload")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo.method, "PUT");
    assert_eq!(echo.path, "/v1/echo/a/b");
    assert_eq!(echo.query.as_deref(), Some("x=1&y=two%20words"));
    assert_eq!(echo.query_param("y"), Some("two words"));
    assert_eq!(echo.header("X-KEY"), Some("v"));
    assert_eq!(echo.header("x-custom"), Some("one, two"));
    assert_eq!(echo.body, "payload");

    let open: Echo = http
        .get(api.url("/open/echo/deep?z=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(open.path, "/open/echo/deep");
    assert!(open.header("x-key").is_none());
}

#[tokio::test]
async fn leak_returns_the_presented_secret() {
    let api = FakeApi::start(Credential::basic("u", "pw-leaky")).await;
    let resp = client()
        .get(api.url("/leak"))
        .basic_auth("u", Some("pw-leaky"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-leak"], "pw-leaky");
    let body = resp.text().await.unwrap();
    assert!(body.contains("pw-leaky"));
    assert!(body.contains(&basic_blob("u", "pw-leaky")));

    let denied = client().get(api.url("/leak")).send().await.unwrap();
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().get("x-leak").is_none());
}

#[tokio::test]
async fn open_utility_routes() {
    let api = FakeApi::start(Credential::bearer("t")).await;
    let http = client();

    let redirect = http
        .get(api.url("/redirect"))
        .query(&[("to", "http://example.invalid/x")])
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["location"], "http://example.invalid/x");

    let teapot = http.delete(api.url("/status/418")).send().await.unwrap();
    assert_eq!(teapot.status(), 418);
    let bad = http.get(api.url("/status/42")).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let big = http.get(api.url("/big?bytes=200000")).send().await.unwrap();
    assert_eq!(big.headers()["content-length"], "200000");
    assert_eq!(big.bytes().await.unwrap().len(), 200_000);
    let chunked = http.get(api.url("/big?bytes=70000&chunked=true")).send();
    let chunked = chunked.await.unwrap();
    assert!(chunked.headers().get("content-length").is_none());
    assert_eq!(chunked.bytes().await.unwrap().len(), 70_000);

    let started = std::time::Instant::now();
    let slow = http.get(api.url("/slow?ms=150")).send().await.unwrap();
    assert_eq!(slow.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn request_log_records_everything() {
    let api = FakeApi::start(Credential::bearer("tok")).await;
    let http = client();
    assert!(api.requests().is_empty());

    http.get(api.url("/user")).send().await.unwrap();
    http.post(api.url("/echo?q=1"))
        .bearer_auth("tok")
        .body("b")
        .send()
        .await
        .unwrap();
    http.get(api.url("/nowhere")).send().await.unwrap();
    http.get(api.url("/user"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();

    let log = api.requests();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].header("authorization"), None);
    assert_eq!(log[1].method, "POST");
    assert_eq!(log[1].query_param("q").as_deref(), Some("1"));
    assert_eq!(log[1].header("Authorization"), Some("Bearer tok"));
    assert_eq!(log[1].body_text(), "b");
    assert!(log[1].contains("tok"));
    assert_eq!(log[2].path, "/nowhere");
    assert_eq!(api.hits("/user"), 2);
    assert_eq!(api.requests_to("/echo").len(), 1);
    assert_eq!(api.hits_by_path().get("/nowhere"), Some(&1));

    api.clear_requests();
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn several_credentials_are_all_required() {
    let api = FakeApi::start_with(vec![
        Credential::api_key_header("x-a", "1"),
        Credential::api_key_query("b", "2"),
    ])
    .await;
    let http = client();
    let both = http.get(api.url("/user?b=2")).header("x-a", "1");
    assert_eq!(both.send().await.unwrap().status(), 200);
    let one = http.get(api.url("/user")).header("x-a", "1");
    assert_eq!(one.send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn dropping_stops_the_server() {
    let api = FakeApi::start(Credential::bearer("t")).await;
    let addr = api.addr();
    api.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let api = FakeApi::start(Credential::bearer("t")).await;
    let url = api.url("/open/echo");
    drop(api);
    // Shutdown is asynchronous after a drop; give the task a moment to close the listener.
    let mut refused = false;
    for _ in 0..50 {
        if client().get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still answering after drop");
}

#[test]
fn serves_a_blocked_synchronous_caller() {
    use std::io::{Read, Write};
    let api = FakeApi::start_blocking(vec![]);
    let mut stream = std::net::TcpStream::connect(api.addr()).unwrap();
    stream
        .write_all(b"GET /user HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("keyhole-test"));
}
