//! The `youtube-comments` plugin end to end: keyhole runs it against `FakeYouTube` through
//! an API-key connection and a bearer-token connection, unchanged, and neither the key nor
//! the token ever reaches the function's output or the invocation record.

use std::collections::BTreeMap;

use keyhole::secrets::Secret;
use keyhole::services::ServiceDef;
use keyhole_tests::capture;
use keyhole_tests::env::TestHost;
use keyhole_tests::youtube_api::{COMMENT_THREADS_PATH, FakeYouTube};
use serde_json::{Value, json};

const KEY: &str = "kh-test-yt-apikey-4c8e2a6f1d";
const TOKEN: &str = "kh-test-yt-bearer-7b3d9f5e2a";
const WRONG_TOKEN: &str = "kh-test-yt-wrong-token-0a1b2c";
const WRONG_KEY: &str = "kh-test-yt-wrong-key-3d4e5f";
const VIDEO: &str = "dQw4w9WgXcQ";

/// An API-key service whose base URL is the fake's root, so the plugin's
/// `/youtube/v3/commentThreads` lands where Google serves it. (The `youtube-api-key` preset
/// cannot be used as is: its base URL already ends in `/youtube/v3`; see
/// `preset_base_path_matches_the_plugin_target`.)
fn key_service(base: &str) -> String {
    format!(
        r#"name = "yt-key"
display_name = "YouTube (API key, test)"
auth = "api_key"
base_url = "{base}"

[[params]]
name = "key"
display_name = "API key"
secret = true
location = "query"
"#
    )
}

/// A static bearer token, standing in for the OAuth access token of the `google` service.
fn bearer_service(base: &str) -> String {
    format!(
        r#"name = "yt-bearer"
display_name = "YouTube (bearer, test)"
auth = "bearer"
base_url = "{base}"

[[params]]
name = "Authorization"
display_name = "Token"
secret = true
location = "header"
format = "Bearer {{value}}"
"#
    )
}

/// Adds `service` (TOML), creates connection `name` on it (with an optional base URL
/// override) and connects it with `values`.
async fn connection(
    t: &TestHost,
    service_toml: Option<&str>,
    name: &str,
    service: &str,
    base_url: Option<String>,
    values: &[(&str, &str)],
) {
    let c = t.host.connections();
    if let Some(toml) = service_toml {
        let def = ServiceDef::from_toml(toml).expect("service parses");
        c.catalog().add(&def).expect("service added");
    }
    c.add(name, service, vec![], base_url)
        .expect("connection added");
    let values: BTreeMap<String, Secret> = values
        .iter()
        .map(|(k, v)| (k.to_string(), Secret::new(*v)))
        .collect();
    c.connect(name, values).await.expect("connected");
}

/// A host with connection `youtube` (API key) and `yt-oauth` (bearer) on `yt`, and the
/// plugin uploaded as `comments` with both granted.
async fn setup(yt: &FakeYouTube) -> TestHost {
    yt.add_api_key(KEY);
    yt.add_bearer_token(TOKEN);
    let t = TestHost::new();
    let base = yt.base_url();
    connection(
        &t,
        Some(&key_service(&base)),
        "youtube",
        "yt-key",
        None,
        &[("key", KEY)],
    )
    .await;
    connection(
        &t,
        Some(&bearer_service(&base)),
        "yt-oauth",
        "yt-bearer",
        None,
        &[("Authorization", TOKEN)],
    )
    .await;
    t.upload("youtube-comments", "comments", &["youtube", "yt-oauth"])
        .await;
    t
}

async fn run(t: &TestHost, input: Value) -> Value {
    let inv = t.host.invoke("comments", &input.to_string()).await.unwrap();
    let out = inv.result.unwrap_or_else(|e| panic!("{input}: {e}"));
    serde_json::from_str(&out).unwrap()
}

async fn run_err(t: &TestHost, input: Value) -> String {
    let inv = t.host.invoke("comments", &input.to_string()).await.unwrap();
    match inv.result {
        Ok(out) => panic!("{input} succeeded: {out}"),
        Err(e) => e.to_string(),
    }
}

fn texts(out: &Value) -> Vec<&str> {
    out["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect()
}

/// Neither secret in any invocation record (outbound paths included), the database or the
/// captured logs.
fn assert_no_secret_anywhere(t: &TestHost) {
    let records = serde_json::to_string(&t.host.logs(Some("comments"), 100).unwrap()).unwrap();
    let raw = String::from_utf8_lossy(&t.raw_database()).into_owned();
    for secret in [KEY, TOKEN, WRONG_KEY, WRONG_TOKEN] {
        assert!(
            !records.contains(secret),
            "invocation record holds {secret}"
        );
        assert!(!raw.contains(secret), "database holds {secret}");
    }
    capture::assert_no_secrets(&[KEY, TOKEN, WRONG_KEY, WRONG_TOKEN]);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_connection_pages_until_max_newest_first() {
    let yt = FakeYouTube::start();
    let ids = yt.add_comments(VIDEO, 250);
    let t = setup(&yt).await;

    // No "connection": the default, `youtube`, is the API-key one.
    let out = run(&t, json!({"video_id": VIDEO, "max": 230})).await;
    assert_eq!(out["video_id"], VIDEO);
    assert_eq!(out["count"], 230);
    let comments = out["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 230);
    let expected: Vec<String> = (21..=250).rev().map(|i| format!("comment {i}")).collect();
    assert_eq!(texts(&out), expected);
    let first = &comments[0];
    assert_eq!(first["id"], ids[249].as_str());
    assert_eq!(first["author"], "user-250");
    assert_eq!(first["like_count"], 250 % 7);
    assert_eq!(first["reply_count"], 250 % 3);
    assert_eq!(first["published_at"], "2026-11-28T14:09:00Z");

    let sent = yt.requests();
    assert_eq!(sent.len(), 3, "one request per page");
    let sizes: Vec<_> = sent.iter().map(|r| r.query_param("maxResults")).collect();
    assert_eq!(
        sizes,
        [Some("100".into()), Some("100".into()), Some("30".into())]
    );
    assert_eq!(sent[0].query_param("pageToken"), None);
    for r in &sent {
        assert_eq!(r.path, COMMENT_THREADS_PATH);
        assert_eq!(r.query_param("key").as_deref(), Some(KEY));
        assert_eq!(r.query_param("videoId").as_deref(), Some(VIDEO));
        assert_eq!(r.query_param("part").as_deref(), Some("snippet"));
        assert_eq!(r.query_param("order").as_deref(), Some("time"));
        assert_eq!(r.header("authorization"), None);
    }
    assert!(sent[1].query_param("pageToken").is_some());
    assert_ne!(
        sent[1].query_param("pageToken"),
        sent[2].query_param("pageToken")
    );

    assert!(!out.to_string().contains(KEY));
    assert_no_secret_anywhere(&t);
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_connection_runs_the_same_plugin_unchanged() {
    let yt = FakeYouTube::start();
    yt.add_comments(VIDEO, 30);
    yt.add_comment(VIDEO, "Ann", "a <b> & \"c\"\nline two", 9, 1);
    let t = setup(&yt).await;

    let out = run(
        &t,
        json!({"video_id": VIDEO, "max": 5, "connection": "yt-oauth"}),
    )
    .await;
    assert_eq!(out["count"], 5);
    assert_eq!(
        texts(&out),
        [
            "a <b> & \"c\"\nline two",
            "comment 30",
            "comment 29",
            "comment 28",
            "comment 27"
        ]
    );
    let sent = yt.requests();
    assert_eq!(sent.len(), 1, "max smaller than a page is one request");
    assert_eq!(sent[0].query_param("maxResults").as_deref(), Some("5"));
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(sent[0].query_param("key"), None);

    // Without `textOriginal` the plain-text `textDisplay` is used.
    yt.set_hide_text_original(true);
    let out = run(
        &t,
        json!({"video_id": VIDEO, "max": 1, "connection": "yt-oauth"}),
    )
    .await;
    assert_eq!(texts(&out), ["a <b> & \"c\"\nline two"]);

    // Default max is 20; fewer comments than asked for ends at the last page.
    let out = run(&t, json!({"video_id": VIDEO, "connection": "yt-oauth"})).await;
    assert_eq!(out["count"], 20);
    let out = run(&t, json!({"video_id": VIDEO, "max": 400})).await;
    assert_eq!(out["count"], 31);
    assert!(!out.to_string().contains(TOKEN));
    assert_no_secret_anywhere(&t);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_is_capped_at_500() {
    let yt = FakeYouTube::start();
    yt.add_comments(VIDEO, 620);
    let t = setup(&yt).await;
    let out = run(&t, json!({"video_id": VIDEO, "max": 10_000})).await;
    assert_eq!(out["count"], 500);
    assert_eq!(texts(&out)[499], "comment 121");
    assert_eq!(yt.hits(), 5);
    let out = run(&t, json!({"video_id": VIDEO, "max": 0})).await;
    assert_eq!(out["count"], 0);
    assert_eq!(yt.hits(), 5, "max 0 sends nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn youtube_errors_name_their_reason() {
    let yt = FakeYouTube::start();
    yt.add_comments(VIDEO, 150);
    yt.set_comments_disabled("quiet");
    let t = setup(&yt).await;
    let base = yt.base_url();
    connection(
        &t,
        None,
        "yt-wrong-token",
        "yt-bearer",
        None,
        &[("Authorization", WRONG_TOKEN)],
    )
    .await;
    connection(
        &t,
        None,
        "yt-wrong-key",
        "yt-key",
        Some(base),
        &[("key", WRONG_KEY)],
    )
    .await;
    t.host
        .connections()
        .grant("comments", "yt-wrong-token")
        .unwrap();
    t.host
        .connections()
        .grant("comments", "yt-wrong-key")
        .unwrap();

    let cases = [
        (
            json!({"video_id": "quiet"}),
            "youtube: comments are disabled for video quiet (commentsDisabled)",
        ),
        (
            json!({"video_id": "gone"}),
            "youtube: video gone not found (videoNotFound)",
        ),
        (
            json!({"video_id": VIDEO, "connection": "yt-wrong-token"}),
            "youtube: not authorized (401 authError): Request had invalid authentication",
        ),
        (
            json!({"video_id": VIDEO, "connection": "yt-wrong-key"}),
            "youtube: HTTP 400 (keyInvalid): API key not valid",
        ),
    ];
    for (input, expected) in cases {
        let err = run_err(&t, input.clone()).await;
        assert!(err.contains(expected), "{input}: {err}");
    }

    yt.set_quota_exceeded(true);
    let err = run_err(&t, json!({"video_id": VIDEO})).await;
    assert!(
        err.contains("youtube: daily quota exceeded (quotaExceeded)"),
        "{err}"
    );
    yt.set_quota_exceeded(false);

    // A transient failure on the second page fails the run, naming status and reason.
    yt.clear_requests();
    yt.fail_after(1, 1, 503);
    let err = run_err(&t, json!({"video_id": VIDEO, "max": 150})).await;
    assert!(err.contains("youtube: HTTP 503 (backendError)"), "{err}");
    assert_eq!(yt.hits(), 2);
    assert_eq!(
        run(&t, json!({"video_id": VIDEO, "max": 150})).await["count"],
        150
    );

    assert_no_secret_anywhere(&t);
}

/// What the SDK reports (the host refusing the call, an upstream it cannot reach) comes
/// back worded as the SDK words it, with no `youtube: ` of the plugin's own in front: the
/// plugin passes those errors through, so its callers still see their `kind()`.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_errors_come_back_as_the_sdk_reports_them() {
    let yt = FakeYouTube::start();
    yt.add_comments(VIDEO, 3);
    let t = setup(&yt).await;
    let down = format!("http://127.0.0.1:{}", keyhole_tests::free_port());
    connection(&t, None, "yt-down", "yt-key", Some(down), &[("key", KEY)]).await;
    t.host.connections().grant("comments", "yt-down").unwrap();
    t.host.connections().revoke("yt-oauth").await.unwrap();
    let failed = "the function returned an error: ";

    // access-denied
    let err = run_err(&t, json!({"video_id": VIDEO, "connection": "not-granted"})).await;
    assert_eq!(
        err,
        format!(
            "{failed}access denied: the connection does not exist or is not granted to this \
             function; check the name or ask an admin to grant it"
        )
    );
    // not-connected
    let err = run_err(&t, json!({"video_id": VIDEO, "connection": "yt-oauth"})).await;
    assert_eq!(
        err,
        format!(
            "{failed}connection has no usable credentials (pending, revoked or expired); \
             ask an admin to reconnect it"
        )
    );
    // upstream-unreachable
    let err = run_err(&t, json!({"video_id": VIDEO, "connection": "yt-down"})).await;
    assert!(
        err.starts_with(&format!("{failed}upstream unreachable: ")),
        "{err}"
    );
    assert_eq!(yt.hits(), 0, "a refused call reached the API");
    assert_no_secret_anywhere(&t);
}

/// The `youtube-api-key` preset, connected through an override that keeps the preset's
/// own base *path* on the fake's origin, must reach Google's documented path, as the
/// `google` preset (base `https://www.googleapis.com`) does. Today its base URL is
/// `https://www.googleapis.com/youtube/v3`, so the plugin's `/youtube/v3/commentThreads`
/// (the path the SDK's own `Connection` example uses) goes to
/// `/youtube/v3/youtube/v3/commentThreads`.
#[tokio::test(flavor = "multi_thread")]
async fn preset_base_path_matches_the_plugin_target() {
    let yt = FakeYouTube::start();
    yt.add_api_key(KEY);
    yt.add_comments(VIDEO, 3);
    let t = TestHost::new();
    let preset = t
        .host
        .connections()
        .catalog()
        .require("youtube-api-key")
        .unwrap();
    let preset_base = url::Url::parse(&preset.def.base_url).expect("preset base URL");
    let base = format!(
        "{}{}",
        yt.base_url(),
        preset_base.path().trim_end_matches('/')
    );
    connection(
        &t,
        None,
        "youtube",
        "youtube-api-key",
        Some(base),
        &[("key", KEY)],
    )
    .await;
    let view = t.host.connections().show("youtube").unwrap();
    assert_eq!(
        view.status,
        keyhole::connections::Status::Connected,
        "{view:?}"
    );
    t.upload("youtube-comments", "comments", &["youtube"]).await;
    let inv = t
        .host
        .invoke("comments", &json!({"video_id": VIDEO}).to_string())
        .await
        .unwrap();
    let paths: Vec<_> = yt.requests().into_iter().map(|r| r.path).collect();
    assert!(
        inv.result.is_ok(),
        "{:?}; paths requested: {paths:?}",
        inv.result
    );
}
