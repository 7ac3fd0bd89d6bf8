//! The `youtube-watch` plugin end to end: keyhole runs it against `FakeYouTube` (through
//! the `youtube-api-key` preset) and posts to a `WebhookReceiver` (through the `webhook`
//! and `slack-webhook` presets). Each new comment is notified exactly once: across runs,
//! across a host restart, after an upstream error, after a revoked connection and after a
//! failed webhook POST.

use std::collections::{BTreeMap, HashSet};

use keyhole::UploadOptions;
use keyhole::config::Limits;
use keyhole::secrets::Secret;
use keyhole_tests::capture;
use keyhole_tests::env::TestHost;
use keyhole_tests::plugins::plugin;
use keyhole_tests::webhook_receiver::{Received, WebhookReceiver};
use keyhole_tests::youtube_api::FakeYouTube;
use serde_json::{Value, json};

const KEY: &str = "kh-test-watch-apikey-5e1f0c7a";
/// The webhook URL's path is its secret; the function must never see it.
const HOOK_PATH: &str = "/hook/kh-test-watch-hook-2b9d4e81";
const VIDEO: &str = "dQw4w9WgXcQ";
const SEEN_KEY: &str = "seen/dQw4w9WgXcQ";

/// A host with `youtube` (the `youtube-api-key` preset on the fake) and `notify` (the
/// `webhook` preset on `hook`), and the plugin uploaded as `watch` with both granted.
/// The video starts with three comments, whose ids are returned oldest first.
async fn setup(yt: &FakeYouTube, hook: &WebhookReceiver, limits: Option<Limits>) -> TestHost {
    yt.add_api_key(KEY);
    yt.add_comments(VIDEO, 3);
    let t = TestHost::new();
    connect(
        &t,
        "youtube",
        "youtube-api-key",
        Some(yt.base_url()),
        "key",
        KEY,
    )
    .await;
    connect(&t, "notify", "webhook", None, "url", &hook.url(HOOK_PATH)).await;
    let options = UploadOptions {
        limits,
        grants: vec!["youtube".into(), "notify".into()],
        ..Default::default()
    };
    t.host
        .upload("watch", plugin("youtube-watch"), options)
        .await
        .expect("upload");
    t
}

async fn connect(
    t: &TestHost,
    name: &str,
    service: &str,
    base_url: Option<String>,
    param: &str,
    value: &str,
) {
    let c = t.host.connections();
    c.add(name, service, vec![], base_url)
        .expect("connection added");
    let values = BTreeMap::from([(param.to_owned(), Secret::new(value))]);
    c.connect(name, values).await.expect("connected");
}

async fn run(t: &TestHost, input: Value) -> Value {
    let inv = t.host.invoke("watch", &input.to_string()).await.unwrap();
    let out = inv.result.unwrap_or_else(|e| panic!("{input}: {e}"));
    serde_json::from_str(&out).unwrap()
}

/// Runs with the usual input (`notify`, default baseline and format).
async fn watch(t: &TestHost) -> Value {
    run(t, json!({"video_id": VIDEO, "notify": "notify"})).await
}

/// `(notified, new, baseline)` of an output, for compact assertions.
fn counts(out: &Value) -> (u64, u64, bool) {
    (
        out["notified"].as_u64().unwrap(),
        out["new"].as_u64().unwrap(),
        out["baseline"].as_bool().unwrap(),
    )
}

/// The comment ids of the POSTs the receiver accepted (2xx), in arrival order.
fn delivered(hook: &WebhookReceiver) -> Vec<String> {
    hook.received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            r.json.as_ref().unwrap()["comment"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The seen ids as stored in the function's state.
fn seen(t: &TestHost) -> Option<Vec<String>> {
    let raw = t.host.storage().kv_get("watch", SEEN_KEY).unwrap()?;
    Some(serde_json::from_slice(&raw).unwrap())
}

fn assert_no_duplicates(ids: &[String]) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a comment was notified twice: {ids:?}"
    );
}

/// The webhook's path is the bare base path, or with the `/` a `""` target appends.
fn assert_hook_path(r: &Received, path: &str) {
    assert_eq!(r.path.trim_end_matches('/'), path, "{r:?}");
}

/// Neither the API key nor the webhook URL in any invocation record, the database or the
/// captured logs.
fn assert_no_secret_anywhere(t: &TestHost) {
    let records = serde_json::to_string(&t.host.logs(Some("watch"), 100).unwrap()).unwrap();
    let raw = String::from_utf8_lossy(&t.raw_database()).into_owned();
    for secret in [KEY, HOOK_PATH] {
        assert!(
            !records.contains(secret),
            "invocation record holds {secret}"
        );
        assert!(!raw.contains(secret), "database holds {secret}");
    }
    capture::assert_no_secrets(&[KEY, HOOK_PATH]);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_run_remembers_then_a_new_comment_is_notified_once() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    let t = setup(&yt, &hook, None).await;

    // Baseline: nothing notified, every current comment remembered.
    let out = watch(&t).await;
    assert_eq!(out["video_id"], VIDEO);
    assert_eq!(counts(&out), (0, 3, true), "{out}");
    assert!(out.get("failed").is_none(), "{out}");
    assert_eq!(hook.count(), 0);
    assert_eq!(seen(&t).unwrap().len(), 3);

    let id = yt.add_comment(VIDEO, "Ann", "great <video> & more", 4, 2);
    assert_eq!(counts(&watch(&t).await), (1, 1, false));
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_hook_path(&got[0], HOOK_PATH);
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body = got[0].json.as_ref().unwrap();
    assert_eq!(
        body["text"],
        format!("New comment on https://youtu.be/{VIDEO} by Ann: great <video> & more")
    );
    assert_eq!(body["video_id"], VIDEO);
    let comment = &body["comment"];
    assert_eq!(comment["id"], id.as_str());
    assert_eq!(comment["author"], "Ann");
    assert_eq!(comment["text"], "great <video> & more");
    assert_eq!(comment["like_count"], 4);
    assert_eq!(comment["reply_count"], 2);
    assert_eq!(comment["published_at"], "2026-11-28T10:03:00Z");

    assert_eq!(counts(&watch(&t).await), (0, 0, false));
    assert_eq!(hook.count(), 1);
    assert_no_secret_anywhere(&t);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_duplicates_across_repeated_runs_and_a_host_restart() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    let mut t = setup(&yt, &hook, None).await;
    watch(&t).await;
    let first = [
        yt.add_comment(VIDEO, "Bo", "one", 0, 0),
        yt.add_comment(VIDEO, "Cy", "two", 0, 0),
    ];
    assert_eq!(counts(&watch(&t).await), (2, 2, false));
    assert_eq!(delivered(&hook), first, "oldest first");
    for _ in 0..3 {
        assert_eq!(counts(&watch(&t).await), (0, 0, false));
    }

    t.reopen();
    assert_eq!(
        counts(&watch(&t).await),
        (0, 0, false),
        "state survives a restart"
    );
    let third = yt.add_comment(VIDEO, "Di", "three", 0, 0);
    assert_eq!(counts(&watch(&t).await), (1, 1, false));
    assert_eq!(counts(&watch(&t).await), (0, 0, false));
    let ids = delivered(&hook);
    assert_eq!(ids, [first[0].clone(), first[1].clone(), third]);
    assert_no_duplicates(&ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_error_mid_run_notifies_nothing_and_keeps_the_state() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    yt.add_comments(VIDEO, 150);
    let t = setup(&yt, &hook, None).await;
    // 153 comments with `max: 200`: two pages per run.
    let input = json!({"video_id": VIDEO, "notify": "notify", "max": 200});
    assert_eq!(counts(&run(&t, input.clone()).await), (0, 153, true));
    let new = [
        yt.add_comment(VIDEO, "Ed", "first new", 0, 0),
        yt.add_comment(VIDEO, "Flo", "second new", 0, 0),
    ];
    let before = seen(&t).unwrap();

    // The second page fails after the first (holding both new comments) arrived.
    yt.clear_requests();
    yt.fail_after(1, 1, 503);
    let inv = t.host.invoke("watch", &input.to_string()).await.unwrap();
    let err = inv.result.unwrap_err().to_string();
    assert!(err.contains("youtube: HTTP 503 (backendError)"), "{err}");
    assert_eq!(yt.hits(), 2);
    assert_eq!(
        hook.count(),
        0,
        "nothing notified before every page was read"
    );
    assert_eq!(
        seen(&t).unwrap(),
        before,
        "the failed run changed the state"
    );

    assert_eq!(counts(&run(&t, input.clone()).await), (2, 2, false));
    assert_eq!(counts(&run(&t, input).await), (0, 0, false));
    assert_eq!(delivered(&hook), new);
}

/// A revoked `youtube` connection fails the run with the SDK's own not-connected message
/// (the plugin passes SDK errors through), notifying nothing; once reconnected, the next
/// run posts what was missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_youtube_connection_fails_as_not_connected() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    let t = setup(&yt, &hook, None).await;
    watch(&t).await;
    let new = yt.add_comment(VIDEO, "Gus", "while revoked", 0, 0);
    let before = seen(&t).unwrap();
    t.host.connections().revoke("youtube").await.unwrap();

    let input = json!({"video_id": VIDEO, "notify": "notify"});
    let inv = t.host.invoke("watch", &input.to_string()).await.unwrap();
    assert_eq!(
        inv.result.unwrap_err().to_string(),
        "the function returned an error: connection has no usable credentials (pending, \
         revoked or expired); ask an admin to reconnect it"
    );
    assert_eq!(hook.count(), 0);
    assert_eq!(seen(&t).unwrap(), before);

    let values = BTreeMap::from([("key".to_owned(), Secret::new(KEY))]);
    t.host
        .connections()
        .connect("youtube", values)
        .await
        .unwrap();
    assert_eq!(counts(&watch(&t).await), (1, 1, false));
    assert_eq!(delivered(&hook), [new]);
    assert_no_secret_anywhere(&t);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_webhook_post_stops_and_the_next_run_sends_only_the_rest() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    // Three outbound requests per run: one page of comments, then two POSTs.
    let limits = Limits {
        max_outbound_requests: 3,
        ..Limits::default()
    };
    let t = setup(&yt, &hook, Some(limits)).await;
    watch(&t).await;
    let new: Vec<String> = (1..=4)
        .map(|i| yt.add_comment(VIDEO, "Gus", &format!("new {i}"), 0, 0))
        .collect();

    // The third POST is refused by the request budget (an SDK error) mid-run; the run
    // still succeeds, so the two delivered comments are committed as seen.
    let out = watch(&t).await;
    assert_eq!(counts(&out), (2, 4, false), "{out}");
    let failed = out["failed"].as_str().unwrap();
    assert!(failed.starts_with("notify: "), "{failed}");
    assert!(failed.contains("limit of outbound requests"), "{failed}");
    assert_eq!(delivered(&hook), new[..2]);

    let out = watch(&t).await;
    assert_eq!(counts(&out), (2, 2, false), "{out}");
    assert!(out.get("failed").is_none(), "{out}");
    assert_eq!(delivered(&hook), new);

    // A non-2xx answer stops the run the same way; the comment is retried next run.
    let last = yt.add_comment(VIDEO, "Hal", "retry me", 0, 0);
    hook.fail_next(1);
    let out = watch(&t).await;
    assert_eq!(counts(&out), (0, 1, false), "{out}");
    assert!(
        out["failed"]
            .as_str()
            .unwrap()
            .contains("upstream answered HTTP 500"),
        "{out}"
    );
    assert_eq!(counts(&watch(&t).await), (1, 1, false));
    assert_eq!(counts(&watch(&t).await), (0, 0, false));
    let ids = delivered(&hook);
    assert_eq!(ids.last(), Some(&last));
    assert_eq!(ids.len(), 5);
    assert_no_duplicates(&ids);
    assert_no_secret_anywhere(&t);
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_all_baseline_notifies_every_existing_comment_once() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    let t = setup(&yt, &hook, None).await;
    let input = json!({"video_id": VIDEO, "notify": "notify", "baseline": "notify-all"});
    assert_eq!(counts(&run(&t, input.clone()).await), (3, 3, true));
    let texts: Vec<_> = hook
        .received()
        .iter()
        .map(|r| r.json.as_ref().unwrap()["comment"]["text"].clone())
        .collect();
    assert_eq!(
        texts,
        ["comment 1", "comment 2", "comment 3"],
        "oldest first"
    );
    // After the first run the baseline option no longer matters.
    assert_eq!(counts(&run(&t, input).await), (0, 0, false));
    assert_eq!(hook.count(), 3);

    // Unknown options are refused before anything is fetched.
    let bad = json!({"video_id": VIDEO, "notify": "notify", "baseline": "everything"});
    let inv = t.host.invoke("watch", &bad.to_string()).await.unwrap();
    let err = inv.result.unwrap_err().to_string();
    assert!(err.contains("invalid input"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_posts_at_most_notify_max_and_the_next_runs_post_the_rest() {
    let (yt, hook) = (FakeYouTube::start(), WebhookReceiver::start());
    let t = setup(&yt, &hook, None).await;
    assert_eq!(counts(&watch(&t).await), (0, 3, true));
    yt.add_comments(VIDEO, 25);
    let capped = json!({"video_id": VIDEO, "notify": "notify", "notify_max": 10});
    let first = run(&t, capped.clone()).await;
    assert_eq!(counts(&first), (10, 25, false));
    assert_eq!(first["pending"], 15);
    assert_eq!(hook.count(), 10);
    let second = run(&t, capped.clone()).await;
    assert_eq!(
        (counts(&second), &second["pending"]),
        ((10, 15, false), &json!(5))
    );
    // The default cap (20) takes the rest.
    let third = watch(&t).await;
    assert_eq!(
        (counts(&third), &third["pending"]),
        ((5, 5, false), &json!(0))
    );
    let ids = delivered(&hook);
    assert_eq!(ids.len(), 25);
    assert_no_duplicates(&ids);
    // A cap of 0 would never post anything: it is refused, not taken.
    let zero = json!({"video_id": VIDEO, "notify": "notify", "notify_max": 0});
    let inv = t.host.invoke("watch", &zero.to_string()).await.unwrap();
    let err = inv.result.unwrap_err().to_string();
    assert!(err.contains("notify_max must be at least 1"), "{err}");
}

/// Slack's format through the `slack-webhook` preset: the connection keeps a
/// `https://hooks.slack.com` URL (the only origin the preset accepts) and a loopback base
/// URL override sends the requests to a receiver that answers like Slack.
#[tokio::test(flavor = "multi_thread")]
async fn slack_format_through_the_slack_webhook_preset() {
    let (yt, slack) = (FakeYouTube::start(), WebhookReceiver::start_slack());
    let hook = WebhookReceiver::start();
    let t = setup(&yt, &hook, None).await;
    let path = "/services/T0KH/B0KH/kh-test-slack-7c2e";
    connect(
        &t,
        "slack",
        "slack-webhook",
        Some(slack.url(path)),
        "url",
        &format!("https://hooks.slack.com{path}"),
    )
    .await;
    t.host.connections().grant("watch", "slack").unwrap();

    let input = json!({"video_id": VIDEO, "notify": "slack", "format": "slack"});
    assert_eq!(counts(&run(&t, input.clone()).await), (0, 3, true));
    yt.add_comment(VIDEO, "Ann <admin>", "a <b> & c", 0, 0);
    assert_eq!(counts(&run(&t, input).await), (1, 1, false));
    let got = slack.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].status, 200, "Slack refused it: {got:?}");
    assert_hook_path(&got[0], path);
    assert_eq!(
        got[0].json.as_ref().unwrap(),
        &json!({"text": format!(
            "New comment on https://youtu.be/{VIDEO} by Ann &lt;admin&gt;: a &lt;b&gt; &amp; c"
        )})
    );
    assert_eq!(hook.count(), 0);
}
