//! `keyhole serve` end to end over real HTTP on 127.0.0.1: status mapping, bearer auth,
//! upload → invoke, load, capacity, rate limits, metrics, graceful shutdown of the real
//! binary, and no secret in any response body.

#[path = "http_api/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keyhole::oauth::{CallbackParams, ClientConfig};
use keyhole::server::{Scope, ServeConfig, create_token};
use keyhole::services::ServiceDef;
use keyhole_tests::env::TestHost;
use keyhole_tests::plugins::{plugin, plugin_path};
use keyhole_tests::{ClientAuth, Credential, FakeApi, OAuthServer, free_port, query_param};
use reqwest::StatusCode;
use serde_json::{Value, json};

use support::{Api, KEY, connect_acme, sample, signal, start, test_config, wait_exit};

#[tokio::test(flavor = "multi_thread")]
async fn auth_missing_wrong_revoked_and_wrong_scope() {
    let api = start(test_config()).await;
    api.upload("echo", "echo", "").await;
    assert_eq!(api.send("GET", "/healthz", None, vec![]).await.body, "ok");
    // The OAuth redirect target needs no token; an unknown state is refused, not a 401.
    let r = api
        .send("GET", "/oauth/callback?state=nope&code=x", None, vec![])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("authorization failed"), "{}", r.body);

    // Missing or wrong token: the same 401 whether or not the resource exists.
    let wrong = "kh_not-a-real-token-at-all-000000000000000000";
    for token in [None, Some(wrong), Some("Basic xyz")] {
        let mut bodies = vec![];
        for (method, path) in [
            ("POST", "/v1/functions/echo/invoke"),
            ("POST", "/v1/functions/nope/invoke"),
            ("GET", "/v1/functions/echo"),
            ("GET", "/v1/functions/nope"),
            ("GET", "/v1/no-such-endpoint"),
            ("GET", "/metrics"),
        ] {
            let r = api.send(method, path, token, b"{}".to_vec()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path}: {}",
                r.body
            );
            assert!(r.headers.contains_key("www-authenticate"));
            bodies.push(r.body);
        }
        bodies.dedup();
        assert_eq!(bodies.len(), 1, "401 bodies differ: {bodies:?}");
    }

    // Revoked: 401 from the next request on.
    let created = create_token(api.t.host.storage(), Scope::Invoke, None, None).unwrap();
    let token = created.token.expose().to_string();
    let r = api
        .send(
            "POST",
            "/v1/functions/echo/invoke",
            Some(&token),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    keyhole::server::revoke_token(api.t.host.storage(), created.row.id).unwrap();
    let r = api
        .send(
            "POST",
            "/v1/functions/echo/invoke",
            Some(&token),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Wrong scope: an invoke token cannot administer; a function-bound one invokes only it.
    let invoke = api.token(Scope::Invoke, None);
    for path in ["/v1/functions", "/v1/connections", "/metrics"] {
        let r = api.send("GET", path, Some(&invoke), vec![]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert_eq!(r.kind(), "forbidden");
    }
    let bound = api.token(Scope::Invoke, Some("echo"));
    let r = api
        .send(
            "POST",
            "/v1/functions/echo/invoke",
            Some(&bound),
            b"[1]".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "[1]"));
    for other in ["other", "nope"] {
        let path = format!("/v1/functions/{other}/invoke");
        let r = api.send("POST", &path, Some(&bound), b"{}".to_vec()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_then_invoke_and_every_status_mapping() {
    let api = start(ServeConfig {
        max_body_bytes: 64 << 10,
        ..test_config()
    })
    .await;
    let up = api.upload("echo", "echo", "").await.json();
    assert_eq!(
        (up["name"].as_str(), up["version"].as_i64()),
        (Some("echo"), Some(1))
    );
    assert_eq!(up["new_version"], true);
    // The same component again: 200, the same version, nothing stored.
    let again = api
        .send(
            "POST",
            "/v1/functions/echo",
            Some(&api.admin),
            plugin("echo"),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let again = again.json();
    assert_eq!(
        (again["version"].as_i64(), again["new_version"].as_bool()),
        (Some(1), Some(false))
    );
    api.upload("echo", "tiny", "max_input=32").await;
    api.upload("misbehave", "slow", "timeout_ms=300").await;

    let r = api.invoke("echo", r#"{"hello":"world"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"hello": "world"}));
    assert_eq!(r.headers["x-keyhole-version"], "1");
    // The answer names its record's id before the record is committed; a read right
    // after it finds the record under that id.
    let id: i64 = r.headers["x-keyhole-invocation-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let latest = &api.get("/v1/invocations?limit=1").await.json()[0];
    assert_eq!(
        (latest["id"].as_i64(), latest["function"].as_str()),
        (Some(id), Some("echo")),
        "{latest}"
    );
    assert_eq!(api.invoke("echo", "").await.json(), json!({}));

    let cases: [(&str, String, StatusCode, &str); 8] = [
        ("nope", "{}".into(), StatusCode::NOT_FOUND, "not-found"),
        (
            "echo",
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid-input",
        ),
        (
            "tiny",
            json!({"x": "y".repeat(64)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "input-too-large",
        ),
        (
            "echo",
            "[\"".to_string() + &"z".repeat(70 << 10) + "\"]",
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
        ),
        (
            "slow",
            r#"{"mode":"loop"}"#.into(),
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
        ),
        (
            "slow",
            r#"{"mode":"panic"}"#.into(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "panic",
        ),
        (
            "slow",
            r#"{"mode":"stack"}"#.into(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "stack-overflow",
        ),
        (
            "slow",
            r#"{"mode":"error"}"#.into(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "guest-error",
        ),
    ];
    for (function, input, status, kind) in cases {
        let r = api.invoke(function, &input).await;
        assert_eq!(
            (r.status, r.kind().as_str()),
            (status, kind),
            "{function}: {}",
            r.body
        );
        // The unread rest of the body makes the connection unusable: the answer says so,
        // so the client does not send its next request on it and lose it.
        let close = r.headers.get("connection").map(|v| v.to_str().unwrap());
        assert_eq!(close == Some("close"), kind == "body-too-large", "{kind}");
    }
    let r = api.invoke("slow", r#"{"mode":"error"}"#).await;
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("misbehave: deliberate error"), "{message}");
    let failed = r.json()["invocation_id"].as_i64().unwrap();
    let latest = &api
        .get("/v1/functions/slow/invocations?limit=1")
        .await
        .json()[0];
    assert_eq!(
        (latest["id"].as_i64(), latest["outcome"].as_str()),
        (Some(failed), Some("guest-error")),
        "{latest}"
    );
    let r = api.invoke("slow", r#"{"mode":"panic"}"#).await;
    assert!(r.body.contains("deliberate panic"), "{}", r.body);

    // Admin views of what just happened, and deletion.
    let list = api.get("/v1/functions").await.json();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let recent = api
        .get("/v1/functions/slow/invocations?limit=3")
        .await
        .json();
    assert_eq!(recent.as_array().unwrap().len(), 3);
    assert_eq!(recent[0]["outcome"], "panic");
    assert_eq!(
        api.get("/v1/invocations?limit=1").await.json()[0]["function"],
        "slow"
    );
    let r = api
        .send(
            "DELETE",
            "/v1/functions/tiny",
            Some(&api.admin.clone()),
            vec![],
        )
        .await;
    assert_eq!(r.json()["versions"], 1);
    assert_eq!(
        api.get("/v1/functions/tiny").await.status,
        StatusCode::NOT_FOUND
    );
    let r = api
        .send(
            "POST",
            "/v1/functions/bad",
            Some(&api.admin.clone()),
            b"not wasm".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.kind().as_str()),
        (StatusCode::BAD_REQUEST, "invalid-component")
    );

    // Errors axum makes itself carry the same JSON body: a malformed query or path, a
    // method the endpoint does not take (with `Allow`), an unknown route.
    let admin = api.admin.clone();
    for (method, path, status, kind) in [
        ("GET", "/v1/invocations?limit=abc", 400, "bad-request"),
        ("GET", "/v1/invocations?limit=", 400, "bad-request"),
        ("GET", "/v1/functions/%ff", 400, "bad-request"),
        ("POST", "/v1/functions", 405, "method-not-allowed"),
        (
            "GET",
            "/v1/functions/echo/invoke",
            405,
            "method-not-allowed",
        ),
        ("POST", "/healthz", 405, "method-not-allowed"),
        ("GET", "/v1/nothing-here", 404, "not-found"),
    ] {
        let r = api.send(method, path, Some(&admin), vec![]).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
        assert_eq!(r.kind(), kind, "{method} {path}: {}", r.body);
        assert!(
            !r.json()["error"]["message"].as_str().unwrap().is_empty(),
            "{method} {path}: {}",
            r.body
        );
        if status == 405 {
            assert!(r.headers.contains_key("allow"), "{method} {path}");
            assert!(r.body.contains(method), "{}", r.body);
        }
    }
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_and_no_secret_in_any_response() {
    let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let api = start(test_config()).await;
    connect_acme(&api.t, &upstream, "acme-admin").await;
    api.upload("hello-http", "hello", "grant=acme-admin").await;
    api.upload("echo", "echo", "").await;

    let r = api
        .invoke("hello", r#"{"connection":"acme-admin","target":"/leak"}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["status"], 200);
    let r = api
        .invoke("hello", r#"{"connection":"acme-admin","target":"/user"}"#)
        .await;
    assert_eq!(r.json()["status"], 200, "{}", r.body);

    let grants = api.get("/v1/functions/hello/grants").await.json();
    assert_eq!(grants["grants"], json!(["acme-admin"]));
    let admin = api.admin.clone();
    let r = api
        .send(
            "PUT",
            "/v1/functions/echo/grants/acme-admin",
            Some(&admin),
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        api.get("/v1/functions/echo").await.json()["grants"],
        json!(["acme-admin"])
    );
    let r = api
        .send(
            "DELETE",
            "/v1/functions/echo/grants/acme-admin",
            Some(&admin),
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .send(
            "PUT",
            "/v1/functions/echo/grants/nope",
            Some(&admin),
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Taking back a grant that is not there (or of a connection that is not) is 404 too.
    for path in [
        "/v1/functions/echo/grants/acme-admin",
        "/v1/functions/echo/grants/nope",
    ] {
        let r = api.send("DELETE", path, Some(&admin), vec![]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.body);
        assert_eq!(r.kind(), "not-found");
    }

    let list = api.get("/v1/connections").await.json();
    assert_eq!(list[0]["name"], "acme-admin");
    let show = api.get("/v1/connections/acme-admin").await.json();
    assert_eq!(show["status"], "connected");
    assert_eq!(
        api.get("/v1/connections/nope").await.status,
        StatusCode::NOT_FOUND
    );
    let test = api
        .send(
            "POST",
            "/v1/connections/acme-admin/test",
            Some(&admin),
            vec![],
        )
        .await;
    assert_eq!(test.json()["ok"], true, "{}", test.body);
    assert!(
        api.get("/v1/services")
            .await
            .json()
            .as_array()
            .unwrap()
            .len()
            > 5
    );
    let svc = api.get("/v1/services/acme-admin").await.json();
    assert_eq!(svc["source"], "custom");
    assert!(
        api.get("/v1/services/github")
            .await
            .body
            .contains("api.github.com")
    );
    let inv = api.get("/v1/invocations?function=hello").await.json();
    assert_eq!(inv[0]["outbound"][0]["connection"], "acme-admin");
    api.metrics().await;

    // Schedules: create, list, pause, resume, delete.
    let put = |body: Value| {
        api.send(
            "PUT",
            "/v1/schedules/tick",
            Some(&admin),
            body.to_string().into_bytes(),
        )
    };
    let r = put(json!({"function": "echo", "every": "1h", "cron": "0 * * * * *"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = put(json!({"function": "echo", "every": "1h", "input": {"n": 1}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let listed = api.get("/v1/schedules").await.json();
    assert_eq!(listed[0]["name"], "tick");
    assert_eq!(
        listed[0]["input"],
        json!({"n": 1}),
        "input comes back as it went in"
    );
    let r = api
        .send("POST", "/v1/schedules/tick/pause", Some(&admin), vec![])
        .await;
    assert_eq!(r.json()["paused"], true, "{}", r.body);
    let r = api
        .send("POST", "/v1/schedules/tick/resume", Some(&admin), vec![])
        .await;
    assert_eq!(r.json()["paused"], false, "{}", r.body);
    let r = api
        .send("DELETE", "/v1/schedules/tick", Some(&admin), vec![])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.get("/v1/schedules/tick").await.status,
        StatusCode::NOT_FOUND
    );
    // What GET answered can be put back: `every_ms` as well as `every`.
    let again =
        json!({"function": "echo", "every_ms": listed[0]["every_ms"], "input": listed[0]["input"]});
    let r = put(again).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["every_ms"], 3_600_000);
    let r = api
        .send("DELETE", "/v1/schedules/tick", Some(&admin), vec![])
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let revoked = api
        .send(
            "POST",
            "/v1/connections/acme-admin/revoke",
            Some(&admin),
            vec![],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(
        revoked.json()["connection"]["status"],
        "revoked",
        "{}",
        revoked.body
    );
    let r = api
        .invoke("hello", r#"{"connection":"acme-admin","target":"/user"}"#)
        .await;
    assert_eq!(r.json()["error"], "not-connected", "{}", r.body);

    let bodies = api.bodies.lock().unwrap().join("\n");
    assert!(
        bodies.contains("acme-admin"),
        "sanity: bodies were recorded"
    );
    assert!(!bodies.contains(KEY), "a response body carried the API key");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_requests_at_concurrency_64_then_gauge_is_zero() {
    let api = Arc::new(
        start(ServeConfig {
            max_in_flight: 64,
            ..test_config()
        })
        .await,
    );
    api.upload("echo", "load", "").await;
    let started = Instant::now();
    let statuses: Vec<StatusCode> = futures::stream::iter(0..1000)
        .map(|i| {
            let api = api.clone();
            async move {
                let r = api.invoke("load", &format!("{{\"i\":{i}}}")).await;
                assert_eq!(r.json()["i"], i, "{}", r.body);
                r.status
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    let m = api.metrics().await;
    let ok = r#"keyhole_invocations_total{function="load",outcome="ok"}"#;
    assert_eq!(sample(&m, ok), Some(1000.0), "{m}");
    let in_flight = r#"keyhole_invocations_in_flight{function="load"}"#;
    assert_eq!(sample(&m, in_flight), Some(0.0), "{m}");
    eprintln!("1000 invocations at concurrency 64 in {elapsed:?}");
    Arc::try_unwrap(api)
        .ok()
        .expect("no other handle")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_capacity_gets_503_and_the_server_keeps_serving() {
    let api = Arc::new(
        start(ServeConfig {
            max_in_flight: 1,
            queue: 1,
            ..test_config()
        })
        .await,
    );
    api.upload("misbehave", "busy", "timeout_ms=1500").await;
    api.upload("echo", "echo", "").await;
    // One running, one queued: the third is refused at once.
    let mut slow = vec![];
    for _ in 0..2 {
        let api = api.clone();
        slow.push(tokio::spawn(async move {
            api.invoke("busy", r#"{"mode":"loop"}"#).await.status
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let refused = api.invoke("echo", "{}").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.kind(), "at-capacity");
    for s in slow {
        assert_eq!(s.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    }
    let r = api.invoke("echo", r#"{"still":"serving"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = api.metrics().await;
    assert!(sample(&m, r#"keyhole_http_rejections_total{reason="at_capacity"}"#).unwrap() >= 1.0);
    Arc::try_unwrap(api)
        .ok()
        .expect("no other handle")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_whose_client_hangs_up_runs_to_its_end_and_is_recorded() {
    use tokio::io::AsyncWriteExt;
    let api = start(test_config()).await;
    api.upload("misbehave", "busy", "timeout_ms=800").await;
    // Sends a looping invocation, then hangs up mid-run the way a client's own timeout
    // leaves: the socket reset.
    let hang_up = async |api: &Api| {
        let addr = api.base.trim_start_matches("http://").to_string();
        let body = r#"{"mode":"loop"}"#;
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!(
            "POST /v1/functions/busy/invoke HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            api.admin,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.set_zero_linger().unwrap();
        drop(stream);
    };
    hang_up(&api).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let records = api
            .get("/v1/functions/busy/invocations?limit=5")
            .await
            .json();
        if let Some(first) = records.as_array().and_then(|r| r.first()) {
            break first.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the invocation left no record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["outcome"], "timeout", "{record}");
    let m = api.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"keyhole_invocations_total{function="busy",outcome="timeout"}"#
        ),
        Some(1.0)
    );
    let in_flight = r#"keyhole_invocations_in_flight{function="busy"}"#;
    assert_eq!(sample(&m, in_flight), Some(0.0), "{m}");
    // Shutdown waits for such a run like for any other.
    hang_up(&api).await;
    let report = api.shutdown().await;
    assert!(!report.forced);
    assert!(
        report.drained_in >= Duration::from_millis(400),
        "shutdown did not wait for the run: {report:?}"
    );
}

/// A raw connection that has sent an invocation's headers (declaring `length` body
/// bytes) and the first `sent` of the body.
async fn half_sent_invocation(api: &Api, length: usize, sent: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = api.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{sent}",
        api.admin
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Read from `stream` until it holds a whole JSON error answer, within `within`.
async fn raw_answer(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).ends_with('}') {
        let n = tokio::time::timeout(within, stream.read(&mut buf))
            .await
            .expect("the server answers in time")
            .unwrap();
        assert!(
            n > 0,
            "closed without an answer: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A server with one invocation slot, no queue and `body_timeout`, serving `echo`.
async fn one_slot_echo(body_timeout: Duration) -> Api {
    let api = start(ServeConfig {
        max_in_flight: 1,
        queue: 0,
        body_timeout,
        ..test_config()
    })
    .await;
    api.upload("echo", "echo", "").await;
    api
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_request_body_gets_408_and_never_holds_a_slot() {
    let api = one_slot_echo(Duration::from_millis(800)).await;
    // Headers promise 100 bytes; 4 arrive, then nothing.
    let mut stalled = half_sent_invocation(&api, 100, "{\"a\"").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // While it stalls, the only invocation slot is still free for others.
    let r = api.invoke("echo", r#"{"during":"stall"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"during":"stall"}));

    let started = Instant::now();
    let answer = raw_answer(&mut stalled, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(answer.contains("--body-timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_body_gets_408_at_its_deadline_and_never_holds_a_slot() {
    use tokio::io::AsyncWriteExt;
    let api = one_slot_echo(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let (mut read, mut write) = half_sent_invocation(&api, 100, "{").await.into_split();
    let answer = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut answer = Vec::new();
        // Until the server has answered and closed.
        let _ = read.read_to_end(&mut answer).await;
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    });
    // A byte every 300 ms: no pause reaches the timeout, but the whole body never comes.
    while !answer.is_finished() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = write.write_all(b" ").await;
        // Meanwhile the only slot serves others.
        let r = api.invoke("echo", r#"{"during":"trickle"}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let (answer, after) = answer.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive in full"), "{answer}");
    assert!(
        after < Duration::from_secs(6),
        "answered only after {after:?}"
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_oversize_body_gets_413_before_it_is_sent() {
    let api = start(ServeConfig {
        max_body_bytes: 1024,
        ..test_config()
    })
    .await;
    api.upload("echo", "echo", "").await;
    // Only the headers are sent: the answer cannot wait for the body.
    let mut oversize = half_sent_invocation(&api, 1 << 30, "").await;
    let answer = raw_answer(&mut oversize, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--max-body"), "{answer}");
    api.shutdown().await;
}

/// An answer sent before the request body was read leaves the rest of the body on the
/// connection, so it must say `Connection: close` (and close it), or a client reusing
/// the connection loses its next request. An answer after the body was read, or to a
/// request without one, keeps the connection open.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_before_the_body_is_read_closes_the_connection() {
    let api = start(ServeConfig {
        rate_limit: 1,
        rate_burst: 1,
        ..test_config()
    })
    .await;
    api.upload("echo", "echo", "").await;
    let closes = |r: &support::Reply| r.headers.get("connection").is_some_and(|v| v == "close");
    let body = json!({"x": "y".repeat(32 << 10)}).to_string().into_bytes();
    let invoke = api.token(Scope::Invoke, None);

    // Refused up front: 401 without a token, 403 with the wrong scope, 429 over the rate.
    let r = api
        .send("POST", "/v1/functions/echo/invoke", None, body.clone())
        .await;
    assert_eq!((r.status, closes(&r)), (StatusCode::UNAUTHORIZED, true));
    // (Another token: a refused scope still spends the token's rate.)
    let other = api.token(Scope::Invoke, None);
    let r = api
        .send("POST", "/v1/connections/x/test", Some(&other), body.clone())
        .await;
    assert_eq!((r.status, closes(&r)), (StatusCode::FORBIDDEN, true));
    // Invocations read their body first: 200s keep the connection; the first 429 (one a
    // second is allowed, so it comes within a few) closes it.
    let mut answers = vec![];
    for _ in 0..20 {
        let r = api
            .send(
                "POST",
                "/v1/functions/echo/invoke",
                Some(&invoke),
                body.clone(),
            )
            .await;
        answers.push((r.status, closes(&r)));
        if r.status != StatusCode::OK {
            break;
        }
    }
    let (last, ok) = answers.split_last().unwrap();
    assert_eq!(*last, (StatusCode::TOO_MANY_REQUESTS, true), "{answers:?}");
    assert!(
        !ok.is_empty() && ok.iter().all(|a| *a == (StatusCode::OK, false)),
        "{answers:?}"
    );
    // No body to leave behind: the connection stays open.
    let r = api.send("GET", "/v1/functions", None, vec![]).await;
    assert_eq!((r.status, closes(&r)), (StatusCode::UNAUTHORIZED, false));

    // Over a raw connection with most of the body still unsent: the server answers 401,
    // says it will close, and does.
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = api.base.trim_start_matches("http://");
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Length: 100000\r\n\r\n{{\"a\""
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection after its answer")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let head = answer.to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{answer}");
    // Not also a hint to keep it.
    assert!(!head.contains("keep-alive:"), "{answer}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_being_received_share_one_memory_budget() {
    use tokio::io::AsyncWriteExt;
    // Room for two full 4 KiB inputs.
    let api = start(ServeConfig {
        max_body_bytes: 4096,
        max_body_memory: 8192,
        body_timeout: Duration::from_secs(20),
        ..test_config()
    })
    .await;
    api.upload("echo", "echo", "").await;
    let body = format!("{{\"a\":\"{}\"}}", "x".repeat(4088));
    assert_eq!(body.len(), 4096);
    // Two clients declare full-size inputs and send one byte each: the budget is taken.
    let mut first = half_sent_invocation(&api, 4096, "{").await;
    let mut second = half_sent_invocation(&api, 4096, "{").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third is refused at once (503, Retry-After), whatever its size, before its body.
    let r = api.invoke("echo", "{}").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.json()["error"]["kind"], "at-capacity", "{}", r.body);
    assert!(r.body.contains("--max-body-memory"), "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    // Once the first finishes, its memory is free again.
    first.write_all(&body.as_bytes()[1..]).await.unwrap();
    let answer = raw_answer(&mut first, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = api.invoke("echo", r#"{"after":"first"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    second.write_all(&body.as_bytes()[1..]).await.unwrap();
    let answer = raw_answer(&mut second, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    api.shutdown().await;
}

// Two workers, as on a 2-CPU machine: two waits would hold them both without the fix,
// whatever the machine running the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_holding_the_database_lock_stalls_no_one_reads_go_on_and_writes_get_503() {
    let api = Arc::new(start(test_config()).await);
    api.upload("echo", "echo", "").await;
    // A token never used yet: its first request records its use, a write.
    let fresh = create_token(api.t.host.storage(), Scope::Admin, None, Some("fresh")).unwrap();
    let fresh = fresh.token.expose().to_string();
    // Another process (a `keyhole` command, a backup, an `sqlite3` shell) takes the
    // write lock and keeps it.
    let other = rusqlite::Connection::open(api.t.home().join("keyhole.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let held = Instant::now();

    // A write waits out the lock, holding the storage's connection.
    let write = {
        let api = api.clone();
        tokio::spawn(async move {
            let body = json!({"function": "echo", "every": "1h"}).to_string();
            api.send(
                "PUT",
                "/v1/schedules/tick",
                Some(&api.admin),
                body.into_bytes(),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Reads do not queue behind it: they go on on the storage's second connection, and
    // see what was committed.
    let asked = Instant::now();
    let read = api.get("/v1/functions").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(read.json()[0]["name"], "echo");
    let read = api.get("/v1/functions/echo/grants").await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    // A never-used token's first request (which also records the token's use) reads
    // as well.
    let read = api
        .send("GET", "/v1/connections", Some(&fresh), vec![])
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    // An invocation runs and answers, naming its record's id (the server took a block
    // of ids when it started); the record cannot be stored while the lock is held, and
    // its commit stops waiting for that once the wait has gone on 0.5 s.
    let r = api.invoke("echo", r#"{"during":"lock"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json(), json!({"during":"lock"}));
    let id: i64 = r.headers["x-keyhole-invocation-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(3) && !write.is_finished(),
        "reads waited {:?}",
        asked.elapsed()
    );
    // /metrics shows the record held back (no other test here holds one back).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = api.get("/metrics").await.body;
        if metrics.contains("keyhole_invocation_records_held_back 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Meanwhile the server answers whatever does not need the database: the waits do
    // not hold its threads. (The lock is held for 10 s, so an answer within 5 s shows it.)
    for _ in 0..3 {
        let health = tokio::time::timeout(
            Duration::from_secs(5),
            api.send("GET", "/healthz", None, vec![]),
        )
        .await
        .expect("/healthz answers while another process holds the database lock");
        assert_eq!(health.status, StatusCode::OK);
    }
    // (A stalled runtime cannot even run the timeout above: this catches it instead.)
    assert!(
        held.elapsed() < Duration::from_secs(5),
        "/healthz was answered only after {:?}: the lock wait held the server",
        held.elapsed()
    );
    assert!(!write.is_finished());
    // Once the wait has gone on a while, later writes do not queue behind it (each would
    // hold a thread): they get 503 `busy` at once.
    tokio::time::sleep_until((held + Duration::from_millis(1500)).into()).await;
    let asked = Instant::now();
    let body = json!({"function": "echo", "every": "1h"}).to_string();
    let fast = api
        .send(
            "PUT",
            "/v1/schedules/tock",
            Some(&api.admin),
            body.into_bytes(),
        )
        .await;
    assert_eq!(
        fast.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        fast.body
    );
    assert_eq!(fast.kind(), "busy");
    assert!(
        asked.elapsed() < Duration::from_secs(3) && !write.is_finished(),
        "answered after {:?}, not at once",
        asked.elapsed()
    );

    // The write gives up after the busy timeout with a 503 that says why and when to
    // retry.
    let write = write.await.unwrap();
    assert_eq!(
        write.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        write.body
    );
    assert_eq!(write.kind(), "busy");
    assert!(
        write.body.contains("locked by another process"),
        "{}",
        write.body
    );
    assert_eq!(write.headers["retry-after"], "1");

    // Once the lock is released the same write succeeds.
    other.execute_batch("ROLLBACK").unwrap();
    let body = json!({"function": "echo", "every": "1h"}).to_string();
    let again = api
        .send(
            "PUT",
            "/v1/schedules/tick",
            Some(&api.admin),
            body.into_bytes(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    // The invocation's record was held back, not lost: it is stored once the lock goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = api.get("/v1/invocations?function=echo").await;
        assert_eq!(records.status, StatusCode::OK, "{}", records.body);
        if let [record] = records.json().as_array().unwrap().as_slice() {
            assert_eq!(record["outcome"], "ok", "{record}");
            assert_eq!(record["id"], id, "stored under the id it was answered with");
            let metrics = api.get("/metrics").await.body;
            if !metrics.contains("keyhole_invocation_records_held_back 0\n") {
                // (The gauge is the process's: another test may have moved it a moment.)
                assert!(Instant::now() < deadline, "{metrics}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            assert!(
                metrics.contains(
                    "keyhole_invocation_records_lost_total{reason=\"locked_at_exit\"} 0\n"
                ),
                "{metrics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the record held back by the lock was never stored: {}",
            records.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Arc::try_unwrap(api)
        .ok()
        .expect("no other handle")
        .shutdown()
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn per_token_rate_limit_gets_429() {
    let api = start(ServeConfig {
        rate_limit: 1,
        rate_burst: 3,
        ..test_config()
    })
    .await;
    let statuses: Vec<StatusCode> =
        futures::future::join_all((0..5).map(|_| api.get("/v1/functions")))
            .await
            .iter()
            .map(|r| r.status)
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        3,
        "{statuses:?}"
    );
    let r = api.get("/v1/functions").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    // Another token has a budget of its own.
    let other = api.token(Scope::Admin, None);
    assert_eq!(
        api.send("GET", "/v1/functions", Some(&other), vec![])
            .await
            .status,
        StatusCode::OK
    );
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_what_was_sent() {
    let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let api = start(test_config()).await;
    connect_acme(&api.t, &upstream, "acme-metrics").await;
    api.upload("echo", "counted", "").await;
    api.upload("hello-http", "caller", "grant=acme-metrics")
        .await;
    for i in 0..7 {
        assert_eq!(
            api.invoke("counted", &i.to_string()).await.status,
            StatusCode::OK
        );
    }
    for _ in 0..3 {
        assert_eq!(
            api.invoke("counted", "{oops").await.status,
            StatusCode::BAD_REQUEST
        );
    }
    for target in ["/user", "/user", "/status/404"] {
        let input = json!({"connection": "acme-metrics", "target": target}).to_string();
        assert_eq!(api.invoke("caller", &input).await.status, StatusCode::OK);
    }
    let m = api.metrics().await;
    let expect = [
        (
            r#"keyhole_invocations_total{function="counted",outcome="ok"}"#,
            7.0,
        ),
        (
            r#"keyhole_invocations_total{function="counted",outcome="invalid-input"}"#,
            3.0,
        ),
        (
            r#"keyhole_invocation_duration_seconds_count{function="counted"}"#,
            10.0,
        ),
        (
            r#"keyhole_invocations_total{function="caller",outcome="ok"}"#,
            3.0,
        ),
        (
            r#"keyhole_outbound_requests_total{connection="acme-metrics",status="200"}"#,
            2.0,
        ),
        (
            r#"keyhole_outbound_requests_total{connection="acme-metrics",status="404"}"#,
            1.0,
        ),
        (r#"keyhole_invocations_in_flight{function="counted"}"#, 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&m, series), Some(value), "{series} in\n{m}");
    }
    assert!(
        sample(
            &m,
            r#"keyhole_token_refreshes_total{outcome="invalid_grant"}"#
        )
        .is_some(),
        "{m}"
    );
    assert!(m.trim_end().ends_with("# EOF"));
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_sigterm_lets_a_slow_invocation_finish_and_exits_0() {
    let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let t = TestHost::new();
    connect_acme(&t, &upstream, "acme").await;
    // A token is bound only to a function that exists.
    let create = [
        "tokens",
        "create",
        "--scope",
        "invoke",
        "--function",
        "sleepy",
    ];
    let refused = t.cli(&create);
    assert!(
        refused.err().contains("no function named \"sleepy\""),
        "{}",
        refused.stderr
    );
    upload_sleepy(&t);
    // Tokens through the CLI: printed once, listed without the value.
    let token = t.cli(&create).ok().trim().to_string();
    assert!(token.starts_with("kh_"), "{token}");
    let list = t.cli(&["tokens", "list"]);
    assert!(
        list.ok().contains("sleepy") && !list.stdout.contains(&token),
        "{}",
        list.stdout
    );

    let (mut child, base) = t.spawn_serve(&["--shutdown-timeout", "10s"]);
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/functions/sleepy/invoke");
    let input = json!({"mode": "sleep-http", "connection": "acme", "target": "/slow?ms=2500"});
    let request = http
        .post(&url)
        .bearer_auth(&token)
        .body(input.to_string())
        .send();
    let in_flight = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.hits("/slow") == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow call never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&child, "-TERM");
    // While the slow call drains, a new connection is refused (the listener is closed),
    // not served and not left hanging. Until the signal is handled it is still served.
    let healthz = format!("{base}/healthz");
    loop {
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        match fresh.get(&healthz).send().await {
            Ok(r) => assert_eq!(r.status(), StatusCode::OK),
            Err(e) if e.is_connect() => break,
            // Caught as the listener closed (accepted by the kernel, then reset), or
            // left waiting by a listener that no longer accepts.
            Err(e) => eprintln!("not refused at connect: {e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "new connections were not refused during the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the slow call ended before the refusal was seen; nothing was draining"
    );
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 0);

    // Revoked through the CLI: the next server refuses it.
    let id = t.cli(&["tokens", "list", "--json"]).json()[0]["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        t.cli(&["tokens", "revoke", &id.to_string()]).ok().trim(),
        format!("revoked API token {id}")
    );
    let again = t.cli(&["tokens", "revoke", &id.to_string()]);
    assert!(again.ok().contains("already revoked"), "{}", again.stdout);
    assert!(
        t.cli(&["tokens", "list"]).ok().contains("revoked 20"),
        "the status column names the revocation"
    );
    let (mut child, base) = t.spawn_serve(&[]);
    let url = format!("{base}/v1/functions/sleepy/invoke");
    let r = http
        .post(&url)
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_sigint_past_the_deadline_still_exits_0() {
    let sleepy = Sleepy::serve("300ms").await;
    let in_flight = sleepy.call_slow();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = sleepy.child;
    let signalled = Instant::now();
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(4)), 0);
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
    assert!(
        in_flight.await.unwrap().is_err(),
        "abandoned request should fail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_a_second_signal_stops_at_once_with_status_1() {
    let sleepy = Sleepy::serve("60s").await;
    let in_flight = sleepy.call_slow();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = sleepy.child;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "-TERM");
    // The slow call would hold a drain for 5 s; the second signal does not wait for it.
    assert_eq!(wait_exit(&mut child, Duration::from_secs(4)), 1);
    assert!(in_flight.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_stops_with_status_1_when_a_newer_keyhole_migrates_its_database() {
    use std::io::{BufRead, BufReader, Read};
    let t = TestHost::new();
    let mut child = t.spawn_cli(&["serve", "--listen", "127.0.0.1:0", "--json"]);
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving: Value = serde_json::from_str(&stdout.next().unwrap().unwrap()).unwrap();
    let base = serving["serving"].as_str().unwrap().to_string();
    let health = |base: String| async move { reqwest::get(format!("{base}/healthz")).await };
    assert_eq!(health(base.clone()).await.unwrap().status(), StatusCode::OK);

    // A newer keyhole opens the data directory and applies its next migration.
    let db = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    let known: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    db.pragma_update(None, "user_version", known + 1).unwrap();
    drop(db);

    // The server notices, drains, and exits 1 with the reason.
    assert_eq!(wait_exit(&mut child, Duration::from_secs(15)), 1);
    let stopped: Value = serde_json::from_str(&stdout.next().unwrap().unwrap()).unwrap();
    assert_eq!(stopped["stopped"]["forced"], false, "{stopped}");
    let log = log.join().unwrap();
    keyhole_tests::capture::record(&log);
    let error: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON error line: {log}"));
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "keyhole serve stopped: a newer keyhole migrated the database while it ran"
        ) && message.contains(&format!(
            "has schema version {}, newer than this keyhole understands ({known})",
            known + 1
        )),
        "{error}"
    );
    assert!(health(base).await.is_err(), "still serving");
    // This keyhole refuses the database from now on, saying why.
    let refused = t.cli(&["functions", "list"]);
    assert!(
        refused.err().contains("upgrade keyhole"),
        "{}",
        refused.stderr
    );
}

/// Upload `sleepy` (the misbehave fixture) with a grant on connection `acme`.
fn upload_sleepy(t: &TestHost) {
    let wasm = plugin_path("misbehave");
    t.cli(&[
        "functions",
        "upload",
        wasm.to_str().unwrap(),
        "--name",
        "sleepy",
        "--grant",
        "acme",
    ])
    .ok();
}

/// `keyhole serve` (the binary) with `sleepy`, a function whose call to the upstream
/// takes 5 s, for the shutdown tests.
struct Sleepy {
    _upstream: FakeApi,
    _t: TestHost,
    child: std::process::Child,
    base: String,
    token: String,
}

impl Sleepy {
    async fn serve(shutdown_timeout: &str) -> Self {
        let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
        let t = TestHost::new();
        connect_acme(&t, &upstream, "acme").await;
        let token = t
            .cli(&["tokens", "create", "--scope", "admin"])
            .ok()
            .trim()
            .to_string();
        upload_sleepy(&t);
        let (child, base) = t.spawn_serve(&["--shutdown-timeout", shutdown_timeout]);
        Self {
            _upstream: upstream,
            _t: t,
            child,
            base,
            token,
        }
    }

    fn call_slow(&self) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let input = json!({"mode": "sleep-http", "connection": "acme", "target": "/slow?ms=5000"});
        let request = reqwest::Client::new()
            .post(format!("{}/v1/functions/sleepy/invoke", self.base))
            .bearer_auth(&self.token)
            .body(input.to_string())
            .send();
        tokio::spawn(request)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_cannot_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = start(ServeConfig {
        max_connections: 2,
        header_timeout: Duration::from_secs(3),
        shutdown_timeout: Duration::from_secs(20),
        ..test_config()
    })
    .await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let fresh = || {
        reqwest::Client::builder()
            .timeout(Duration::from_millis(800))
            .build()
            .unwrap()
    };
    let healthz = format!("{}/healthz", api.base);

    // A header sent a piece at a time is cut off at the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a half-sent header kept its connection open"
    );

    // Connections beyond the cap wait to be accepted: two idle clients hold both slots
    // (for up to the 3 s header timeout), and a third is served once one of them leaves.
    let idle_a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _idle_b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        fresh().get(&healthz).send().await.is_err(),
        "served past the connection cap"
    );
    drop(idle_a);
    let r = fresh().get(&healthz).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Clients are told how long an idle connection is kept: the header timeout.
    assert_eq!(r.headers()["keep-alive"], "timeout=3");

    // A connection in the middle of a header does not hold up shutdown.
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let report = api.shutdown().await;
    assert!(!report.forced, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_made_in_another_process_reaches_the_next_call() {
    // (Its own function and connection names: metrics are counted per process.)
    // A running server keeps what a guest's call found while nothing changed. Each change
    // below is made by the `keyhole` CLI, in its own process, between two calls; the very
    // next call must see it.
    let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let moved = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let api = start(test_config()).await;
    connect_acme(&api.t, &upstream, "acme-live").await;
    api.upload("hello-http", "live-caller", "grant=acme-live")
        .await;
    let input = json!({"connection": "acme-live", "target": "/user"}).to_string();
    // The upstream's status, or the host's refusal.
    let call = || async {
        let r = api.invoke("live-caller", &input).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let out = r.json();
        match out["status"].as_u64() {
            Some(status) => status.to_string(),
            None => out["error"].as_str().unwrap().to_string(),
        }
    };
    assert_eq!(call().await, "200");
    assert_eq!(call().await, "200");

    // The grant taken back, then given again.
    api.t
        .cli(&["functions", "revoke-grant", "live-caller", "acme-live"])
        .ok();
    assert_eq!(call().await, "access-denied");
    api.t
        .cli(&["functions", "grant", "live-caller", "acme-live"])
        .ok();
    assert_eq!(call().await, "200");

    // The upstream now takes another key: the stored one is refused until the
    // connection is given the new one.
    const NEW_KEY: &str = "kh-http-apikey-rotated-77c1";
    upstream.set_credentials(vec![Credential::api_key_header("X-API-Key", NEW_KEY)]);
    assert_eq!(call().await, "401");
    api.t
        .cli_with(
            &["connections", "connect", "acme-live", "--params-stdin"],
            Some(&format!("X-API-Key={NEW_KEY}\n")),
            &[],
        )
        .ok();
    assert_eq!(call().await, "200");

    // The service moved to another origin: the call goes there.
    let toml = format!(
        "name = \"acme-live\"\ndisplay_name = \"Acme\"\nauth = \"api_key\"\nbase_url = \"{}\"\n\n[verify]\npath = \"/user\"\n\n[[params]]\nname = \"X-API-Key\"\ndisplay_name = \"Acme API key\"\nsecret = true\nlocation = \"header\"\n",
        moved.base_url()
    );
    let file = api.t.home().join("acme-moved.toml");
    std::fs::write(&file, toml).unwrap();
    moved.set_credentials(vec![Credential::api_key_header("X-API-Key", NEW_KEY)]);
    api.t
        .cli(&[
            "services",
            "edit",
            "acme-live",
            "--file",
            file.to_str().unwrap(),
            "--move-credentials",
        ])
        .ok();
    let before = moved.hits("/user");
    assert_eq!(call().await, "200");
    assert_eq!(moved.hits("/user"), before + 1);

    // Credentials wiped: not connected. Then the connection deleted: unknown.
    api.t.cli(&["connections", "revoke", "acme-live"]).ok();
    assert_eq!(call().await, "not-connected");
    api.t
        .cli(&["connections", "delete", "acme-live", "--with-grants"])
        .ok();
    assert_eq!(call().await, "access-denied");
    api.shutdown().await;
}

/// Every admin route and method (the route table of `host/src/server/router.rs`), with a
/// body an admin's request would succeed with, so that a missing scope check shows.
fn admin_routes() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let schedule = json!({"function": "echo", "every": "1h"}).to_string();
    vec![
        ("GET", "/v1/functions", vec![]),
        ("GET", "/v1/functions/echo", vec![]),
        // A component header only: an early refusal of a large body can reach the client
        // as a reset connection, not as the answer (the whole component is tried below).
        (
            "POST",
            "/v1/functions/intruder",
            b"\0asm\x0d\0\x01\0".to_vec(),
        ),
        ("DELETE", "/v1/functions/echo?with_schedules=true", vec![]),
        ("GET", "/v1/functions/echo/grants", vec![]),
        ("PUT", "/v1/functions/other/grants/acme-scope", vec![]),
        ("DELETE", "/v1/functions/echo/grants/acme-scope", vec![]),
        ("GET", "/v1/functions/echo/invocations", vec![]),
        ("GET", "/v1/invocations", vec![]),
        ("GET", "/v1/connections", vec![]),
        ("GET", "/v1/connections/acme-scope", vec![]),
        ("POST", "/v1/connections/acme-scope/test", vec![]),
        ("POST", "/v1/connections/acme-scope/revoke", vec![]),
        ("GET", "/v1/services", vec![]),
        ("GET", "/v1/services/acme-scope", vec![]),
        ("GET", "/v1/schedules", vec![]),
        ("GET", "/v1/schedules/tick", vec![]),
        ("PUT", "/v1/schedules/intruder", schedule.into_bytes()),
        ("DELETE", "/v1/schedules/tick", vec![]),
        ("POST", "/v1/schedules/tick/pause", vec![]),
        ("POST", "/v1/schedules/held/resume", vec![]),
        ("GET", "/metrics", vec![]),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_route_refuses_invoke_tokens_and_changes_nothing() {
    let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let api = start(test_config()).await;
    connect_acme(&api.t, &upstream, "acme-scope").await;
    api.upload("echo", "echo", "grant=acme-scope").await;
    api.upload("echo", "other", "").await;
    assert_eq!(api.invoke("echo", "{}").await.status, StatusCode::OK);
    let admin = api.admin.clone();
    for name in ["tick", "held"] {
        let body = json!({"function": "echo", "every": "1h"}).to_string();
        let path = format!("/v1/schedules/{name}");
        let r = api
            .send("PUT", &path, Some(&admin), body.into_bytes())
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = api
        .send("POST", "/v1/schedules/held/pause", Some(&admin), vec![])
        .await;
    assert_eq!(r.json()["paused"], true, "{}", r.body);

    // What an admin sees of everything the attempts below could change.
    let snapshot = async || {
        let get = async |path: &str| {
            let r = api.get(path).await;
            (r.status, r.body)
        };
        vec![
            get("/v1/functions").await,
            get("/v1/functions/echo").await,
            get("/v1/functions/intruder").await,
            get("/v1/functions/echo/grants").await,
            get("/v1/functions/other/grants").await,
            get("/v1/connections/acme-scope").await,
            get("/v1/schedules").await,
            get("/v1/schedules/intruder").await,
        ]
    };
    let before = snapshot().await;
    let verified = upstream.hits("/user");

    let invoke = api.token(Scope::Invoke, None);
    let bound = api.token(Scope::Invoke, Some("echo"));
    for (method, path, body) in admin_routes() {
        for (who, token) in [("invoke", &invoke), ("bound to echo", &bound)] {
            let r = api.send(method, path, Some(token), body.clone()).await;
            assert_eq!(
                (r.status, r.kind().as_str()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{method} {path} with an {who} token: {}",
                r.body
            );
        }
        let r = api.send(method, path, None, body.clone()).await;
        assert_eq!(
            (r.status, r.kind().as_str()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{method} {path} without a token: {}",
            r.body
        );
    }

    // A whole component: refused (or the connection dropped before the answer arrived).
    // On a client of its own: the server closes such a connection after answering.
    for token in [&invoke, &bound] {
        let sent = reqwest::Client::new()
            .post(format!("{}/v1/functions/intruder", api.base))
            .bearer_auth(token)
            .body(plugin("echo"))
            .send()
            .await;
        if let Ok(r) = sent {
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
    }

    // Nothing changed: no upload, deletion, grant, revocation, test call or schedule
    // change went through.
    let after = snapshot().await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(b, a, "admin view {i} changed after refused requests");
    }
    assert_eq!(before[0].0, StatusCode::OK);
    assert_eq!(before[2].0, StatusCode::NOT_FOUND, "{}", before[2].1);
    assert_eq!(before[7].0, StatusCode::NOT_FOUND, "{}", before[7].1);
    let connection: Value = serde_json::from_str(&after[5].1).unwrap();
    assert_eq!(connection["status"], "connected", "{connection}");
    let grants: Value = serde_json::from_str(&after[3].1).unwrap();
    assert_eq!(grants["grants"], json!(["acme-scope"]));
    let schedules: Value = serde_json::from_str(&after[6].1).unwrap();
    let paused: Vec<(&str, bool)> = schedules
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["paused"].as_bool().unwrap()))
        .collect();
    assert_eq!(paused, [("held", true), ("tick", false)], "{schedules}");
    assert_eq!(
        upstream.hits("/user"),
        verified,
        "a refused connection test called the upstream"
    );
    // The function still runs through its connection.
    let r = api.invoke("echo", r#"{"still":"here"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_flight_gauge_counts_a_running_invocation_then_drops_to_zero() {
    // (Its own function name: metrics are counted per process.)
    let upstream = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let api = Arc::new(start(test_config()).await);
    connect_acme(&api.t, &upstream, "acme-gauge").await;
    api.upload("misbehave", "gauged", "grant=acme-gauge").await;
    let series = r#"keyhole_invocations_in_flight{function="gauged"}"#;
    // Waits on the upstream for 2 s, the guest still running.
    let running = tokio::spawn({
        let api = api.clone();
        async move {
            let input = json!({"mode": "sleep-http", "connection": "acme-gauge", "target": "/slow?ms=2000"});
            api.invoke("gauged", &input.to_string()).await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.hits("/slow") == 0 {
        assert!(
            Instant::now() < deadline,
            "the guest never called the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = api.metrics().await;
    assert!(
        !running.is_finished(),
        "the invocation ended before the check"
    );
    assert_eq!(sample(&during, series), Some(1.0), "{during}");
    let r = running.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["status"], 200, "{}", r.body);
    let after = api.metrics().await;
    assert_eq!(sample(&after, series), Some(0.0), "{after}");
    assert_eq!(
        sample(
            &after,
            r#"keyhole_invocations_total{function="gauged",outcome="ok"}"#
        ),
        Some(1.0),
        "{after}"
    );
    Arc::try_unwrap(api)
        .ok()
        .expect("no other handle")
        .shutdown()
        .await;
}

const OAUTH_CLIENT_ID: &str = "keyhole-http-client";
const OAUTH_CLIENT_SECRET: &str = "kh-http-oauth-client-secret-9d41";

/// An authorization-code OAuth service and connection, both named `name`, against
/// `server`, whose provider redirects to `redirect`.
fn add_oauth_connection(t: &TestHost, server: &OAuthServer, name: &str, redirect: &str) {
    server.register_client(
        OAUTH_CLIENT_ID,
        OAUTH_CLIENT_SECRET,
        [redirect.to_string()],
        ClientAuth::Basic,
    );
    let toml = format!(
        "name = \"{name}\"\ndisplay_name = \"OAuth test provider\"\nauth = \"oauth2\"\nbase_url = \"{base}/api\"\n\n[verify]\npath = \"/user\"\n\n[oauth2]\ngrant = \"authorization_code\"\nauthorize_url = \"{authorize}\"\ntoken_url = \"{token}\"\nrevocation_url = \"{revoke}\"\nscopes = [\"read\"]\ndefault_scopes = [\"read\"]\ntoken_auth_method = \"basic\"\n",
        base = server.base_url(),
        authorize = server.authorize_url(),
        token = server.token_url(),
        revoke = server.revoke_url(),
    );
    let c = t.host.connections();
    c.catalog()
        .add(&ServiceDef::from_toml(&toml).unwrap())
        .unwrap();
    let client = ClientConfig {
        client_id: OAUTH_CLIENT_ID.into(),
        client_secret: Some(keyhole::secrets::Secret::new(OAUTH_CLIENT_SECRET)),
        redirect_url: Some(redirect.to_string()),
    };
    c.set_oauth_client(name, &client).unwrap();
    c.add(name, name, vec![], None).unwrap();
}

/// The `keyhole_token_refreshes_total` samples: `(ok, invalid_grant, transient)`.
fn refreshes(metrics: &str) -> (f64, f64, f64) {
    let get = |outcome: &str| {
        let series = format!("keyhole_token_refreshes_total{{outcome=\"{outcome}\"}}");
        sample(metrics, &series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    (get("ok"), get("invalid_grant"), get("transient"))
}

#[tokio::test(flavor = "multi_thread")]
async fn token_refresh_metrics_count_real_refreshes_by_outcome() {
    // The only test of this suite that refreshes tokens: the process-wide counters move
    // only by what it does.
    let server = OAuthServer::start().await;
    let api = start(test_config()).await;
    let redirect = format!("http://127.0.0.1:{}/oauth/callback", free_port());
    add_oauth_connection(&api.t, &server, "prov-metrics", &redirect);
    // Tokens that live two seconds: expired (for keyhole and the provider) by the call.
    server.set_access_ttl(2);
    let c = api.t.host.connections();
    let pending = c.begin_authorization("prov-metrics").unwrap();
    let location = server.approve(&pending.authorize_url).await.unwrap();
    let params = CallbackParams {
        code: query_param(&location, "code"),
        state: query_param(&location, "state"),
        iss: query_param(&location, "iss"),
        ..Default::default()
    };
    c.complete_authorization(&params, Some("prov-metrics"))
        .await
        .unwrap();
    server.set_access_ttl(3600);
    api.upload("hello-http", "refresher", "grant=prov-metrics")
        .await;
    let first = server.issued_access_tokens()[0].clone();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!server.is_access_token_active(&first));

    let input = json!({"connection": "prov-metrics", "target": "/user"}).to_string();
    let (ok0, invalid0, transient0) = refreshes(&api.metrics().await);
    let r = api.invoke("refresher", &input).await;
    assert_eq!(r.json()["status"], 200, "{}", r.body);
    assert_eq!(server.token_requests_for("refresh_token"), 1);
    let (ok1, invalid1, transient1) = refreshes(&api.metrics().await);
    assert_eq!(
        (ok1 - ok0, invalid1 - invalid0, transient1 - transient0),
        (1.0, 0.0, 0.0),
        "one successful refresh"
    );

    // The provider drops the access token and refuses the refresh token: the 401 forces
    // a refresh, answered invalid_grant.
    server.expire_all_access_tokens();
    server.reject_next_refreshes(1);
    let r = api.invoke("refresher", &input).await;
    assert_eq!(r.json()["error"], "not-connected", "{}", r.body);
    assert_eq!(server.token_requests_for("refresh_token"), 2);
    let (ok2, invalid2, transient2) = refreshes(&api.metrics().await);
    assert_eq!(
        (ok2 - ok1, invalid2 - invalid1, transient2 - transient1),
        (0.0, 1.0, 0.0),
        "one refused refresh"
    );
    let show = api.get("/v1/connections/prov-metrics").await.json();
    assert_eq!(show["status"], "needs-reauth", "{show}");
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_completes_an_oauth_authorization_at_its_callback() {
    let server = OAuthServer::start().await;
    let t = TestHost::new();
    let admin = t
        .cli(&["tokens", "create", "--scope", "admin"])
        .ok()
        .trim()
        .to_string();
    let (child, base) = t.spawn_serve(&[]);
    // Stopped even if the test fails half-way.
    let mut child = KillOnDrop(child);
    // The provider redirects to the server's own callback.
    let redirect = format!("{base}/oauth/callback");
    add_oauth_connection(&t, &server, "prov-serve", &redirect);
    let wasm = plugin_path("hello-http");
    t.cli(&[
        "functions",
        "upload",
        wasm.to_str().unwrap(),
        "--name",
        "hello",
        "--grant",
        "prov-serve",
    ])
    .ok();

    // The admin starts it without a listener of its own, as `keyhole serve` will take the
    // redirect.
    let out = t.cli(&["connections", "connect", "prov-serve", "--no-listen"]);
    let url = out
        .ok()
        .lines()
        .find(|l| l.starts_with(&server.authorize_url()))
        .unwrap_or_else(|| panic!("no authorization URL in:\n{}", out.stdout))
        .to_string();
    assert!(out.stdout.contains(&redirect), "{}", out.stdout);
    let location = server.approve(&url).await.unwrap();
    assert!(location.starts_with(&redirect), "{location}");
    assert_eq!(server.token_requests_for("authorization_code"), 0);

    // The browser follows the redirect to the server, which completes the authorization.
    let http = reqwest::Client::new();
    let page = http.get(&location).send().await.unwrap();
    let status = page.status();
    let text = page.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        text.contains("Connection prov-serve is connected"),
        "{text}"
    );
    assert_eq!(server.token_requests_for("authorization_code"), 1);
    let exchange = server.requests_to("/token");
    let form = exchange.last().unwrap().form();
    assert!(
        form.iter()
            .any(|(k, v)| k == "redirect_uri" && *v == redirect),
        "{form:?}"
    );
    // The state was used up: the same redirect again is refused.
    let again = http.get(&location).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    let show = http
        .get(format!("{base}/v1/connections/prov-serve"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let show: Value = show.json().await.unwrap();
    assert_eq!(show["status"], "connected", "{show}");

    // A call through the connection carries the token the provider issued.
    let r = http
        .post(format!("{base}/v1/functions/hello/invoke"))
        .bearer_auth(&admin)
        .body(json!({"connection": "prov-serve", "target": "/user"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 200, "{body}");
    let issued = server.issued_access_tokens();
    assert_eq!(issued.len(), 1);
    let sent = server.requests_to("/api/user");
    assert_eq!(
        sent.last().unwrap().header("authorization"),
        Some(format!("Bearer {}", issued[0]).as_str())
    );
    let raw = String::from_utf8_lossy(&t.raw_database()).into_owned();
    let refresh = server.issued_refresh_tokens();
    assert!(!raw.contains(&issued[0]) && !raw.contains(&refresh[0]));
    assert!(!show.to_string().contains(&issued[0]));
    signal(&child.0, "-TERM");
    assert_eq!(wait_exit(&mut child.0, Duration::from_secs(10)), 0);
}

/// A child process killed (if still running) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
