//! Schedules: administration through the CLI, runs on time under `keyhole serve`, never
//! overlapping itself (in one process or across two), slots missed during a run or while
//! down skipped or collapsed into one, and each slot run once, only by the process that
//! claimed it; `show`, `list` and the HTTP API telling whether a claim holds a schedule
//! (and which process made it), and releasing a crashed run's claim by hand, but not a
//! live process's without `--force`; editing a schedule (CLI and HTTP), which applies from
//! the next run, also in a server already running.

use std::sync::Arc;
use std::time::Duration;

use keyhole::Keyhole;
use keyhole::runtime::RuntimeConfig;
use keyhole::schedules::{Cadence, ScheduleEdit, Scheduler};
use keyhole::server::{Scope, create_token};
use keyhole::storage::ScheduleRow;
use keyhole_tests::env::{TestHost, stop_serve};
use keyhole_tests::plugins::plugin_path;
use keyhole_tests::{Credential, FakeApi};

fn upload(t: &TestHost, plugin: &str, name: &str) {
    let p = plugin_path(plugin);
    t.cli(&["functions", "upload", p.to_str().unwrap(), "--name", name])
        .ok();
}

/// Upload `misbehave` as `function`, granted connection `connection` (a service of that
/// name, without credentials, at `api`).
fn misbehave_calling(t: &TestHost, api: &FakeApi, connection: &str, function: &str) {
    let service = t.home().join("svc.toml");
    std::fs::write(
        &service,
        format!(
            "name = \"{connection}\"\ndisplay_name = \"{connection}\"\nauth = \"none\"\nbase_url = \"{}\"\n",
            api.base_url()
        ),
    )
    .unwrap();
    t.cli(&["services", "add", "--file", service.to_str().unwrap()])
        .ok();
    t.cli(&["connections", "add", connection, "--service", connection])
        .ok();
    t.cli(&["connections", "connect", connection]).ok();
    let p = plugin_path("misbehave");
    t.cli(&[
        "functions",
        "upload",
        p.to_str().unwrap(),
        "--name",
        function,
        "--grant",
        connection,
    ])
    .ok();
}

/// A host with `poster` (`misbehave`, granted connection `open` at `api`) and schedule
/// `post` running it every second; each run's call to `/slow` takes `ms`.
fn posting_every_second(api: &FakeApi, ms: u64) -> TestHost {
    let t = TestHost::new();
    misbehave_calling(&t, api, "open", "poster");
    let input = format!(r#"{{"mode":"sleep-http","connection":"open","target":"/slow?ms={ms}"}}"#);
    t.cli(&[
        "schedules",
        "add",
        "post",
        "--function",
        "poster",
        "--every",
        "1s",
        "--input",
        &input,
    ])
    .ok();
    t
}

/// Wait up to `secs` until `api` has had `n` calls to `/slow`; fail with `what` if not.
fn wait_for_slow_calls(api: &FakeApi, n: usize, secs: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while api.hits("/slow") < n {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A host with `counter` uploaded and schedule `tick` running it every `every`.
async fn counter_ticking(every: Duration) -> (TestHost, ScheduleRow) {
    let t = TestHost::new();
    t.upload("counter", "counter", &[]).await;
    let added = t
        .host
        .schedules()
        .add("tick", "counter", &Cadence::Every(every), "{}")
        .unwrap();
    (t, added)
}

/// The data directory opened again, as another `keyhole serve` process opens it.
fn server(t: &TestHost) -> Arc<Keyhole> {
    Arc::new(
        Keyhole::open(
            t.home(),
            RuntimeConfig {
                max_instances: 8,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

/// Run `host`'s scheduler for `ms` milliseconds (the host is opened before the clock
/// starts, so opening it takes none of that time).
async fn schedule_for(host: Arc<Keyhole>, ms: u64) {
    let stop = tokio::time::sleep(Duration::from_millis(ms));
    Scheduler::run(host, stop, Duration::from_secs(5)).await;
}

#[test]
fn schedules_are_administered_from_the_cli() {
    let t = TestHost::new();
    upload(&t, "counter", "counter");
    let out = t.cli(&[
        "schedules",
        "add",
        "tick",
        "--function",
        "counter",
        "--every",
        "5m",
        "--input",
        "{}",
    ]);
    assert!(out.ok().contains("added schedule tick"), "{}", out.stdout);
    for (args, message) in [
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "nope",
                "--every",
                "5m",
            ],
            "no function named \"nope\"",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--every",
                "soon",
            ],
            "invalid value",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--every",
                "100ms",
            ],
            "at least 1s",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--every",
                "100000d",
            ],
            "at most 366 days",
        ),
        (
            vec!["schedules", "add", "x", "--function", "counter"],
            "--every DURATION (e.g. 5m) or --cron EXPR",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--every",
                "1m",
                "--input",
                "{",
            ],
            "not valid JSON",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--cron",
                "every day",
            ],
            "seconds first",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--cron",
                "0 0 0 1 1 * 2020",
            ],
            "never fires",
        ),
        (
            vec![
                "schedules",
                "add",
                "x",
                "--function",
                "counter",
                "--cron",
                "0 0 0 31 2 *",
            ],
            "never fires",
        ),
        (
            vec![
                "schedules",
                "add",
                "tick",
                "--function",
                "counter",
                "--every",
                "1m",
            ],
            "already exists",
        ),
        (
            vec!["schedules", "add", "x", "--function", "counter"],
            "--every",
        ),
        (
            vec!["schedules", "release", "nope"],
            "no schedule named \"nope\"; `keyhole schedules list` shows them",
        ),
    ] {
        let out = t.cli(&args);
        assert!(out.err().contains(message), "{args:?}: {}", out.stderr);
    }
    t.cli(&[
        "schedules",
        "add",
        "nightly",
        "--function",
        "counter",
        "--cron",
        "0 0 3 * * *",
    ])
    .ok();
    let list = t.cli(&["schedules", "list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["every_ms"], 300_000);
    assert!(
        t.cli(&["schedules", "show", "nightly"])
            .ok()
            .contains("cron 0 0 3 * * *")
    );
    // Resuming a running schedule changes nothing, its next run included.
    let next = t.cli(&["schedules", "show", "tick", "--json"]).json()["next_run_at"].clone();
    let out = t.cli(&["schedules", "resume", "tick"]);
    assert!(
        out.ok().contains("is not paused; nothing changed"),
        "{}",
        out.stdout
    );
    assert_eq!(
        t.cli(&["schedules", "show", "tick", "--json"]).json()["next_run_at"],
        next
    );
    assert!(
        t.cli(&["schedules", "pause", "tick"])
            .ok()
            .contains("paused schedule tick")
    );
    assert_eq!(
        t.cli(&["schedules", "show", "tick", "--json"]).json()["paused"],
        true
    );
    let out = t.cli(&["schedules", "pause", "tick"]);
    assert!(out.ok().contains("already paused"), "{}", out.stdout);
    assert!(
        t.cli(&["schedules", "resume", "tick"])
            .ok()
            .contains("resumed schedule tick")
    );
    assert_eq!(
        t.cli(&["schedules", "show", "tick", "--json"]).json()["paused"],
        false
    );
    t.cli(&["schedules", "delete", "tick"]).ok();
    assert!(
        t.cli(&["schedules", "show", "tick"])
            .err()
            .contains("no schedule named")
    );

    // A function a schedule runs is not deleted from under it, unless the schedule goes too.
    let refused = t.cli(&["functions", "delete", "counter"]);
    assert!(
        refused.err().contains("run by schedule nightly")
            && refused.stderr.contains("--with-schedules"),
        "{}",
        refused.stderr
    );
    assert!(
        t.cli(&["functions", "show", "counter"])
            .ok()
            .contains("counter")
    );
    t.cli(&["functions", "delete", "counter", "--with-schedules"])
        .ok();
    assert_eq!(
        t.cli(&["schedules", "list", "--json"]).json(),
        serde_json::json!([])
    );
}

#[test]
fn a_schedule_is_edited_from_the_cli_and_a_refused_edit_changes_nothing() {
    let t = TestHost::new();
    upload(&t, "counter", "counter");
    upload(&t, "echo", "echo");
    t.cli(&[
        "schedules",
        "add",
        "tick",
        "--function",
        "counter",
        "--every",
        "1h",
        "--input",
        r#"{"a":1}"#,
    ])
    .ok();
    let show = |t: &TestHost| t.cli(&["schedules", "show", "tick", "--json"]).json();
    let before = show(&t);
    for (args, message) in [
        (
            vec!["schedules", "edit", "tick"],
            "say what to change: --function F, --every DURATION, --cron EXPR or --input JSON",
        ),
        (
            vec!["schedules", "edit", "nope", "--input", "{}"],
            "no schedule named \"nope\"",
        ),
        (
            vec!["schedules", "edit", "tick", "--function", "nope"],
            "no function named \"nope\"",
        ),
        (
            vec!["schedules", "edit", "tick", "--input", "{"],
            "not valid JSON",
        ),
        (
            vec!["schedules", "edit", "tick", "--every", "100ms"],
            "at least 1s",
        ),
        (
            vec!["schedules", "edit", "tick", "--cron", "0 0 0 31 2 *"],
            "never fires",
        ),
        (
            vec![
                "schedules",
                "edit",
                "tick",
                "--every",
                "1m",
                "--cron",
                "0 * * * * *",
            ],
            "cannot be used with",
        ),
        // Checked before anything is written: the valid part of an edit does not land.
        (
            vec![
                "schedules",
                "edit",
                "tick",
                "--every",
                "1m",
                "--function",
                "nope",
            ],
            "no function named \"nope\"",
        ),
    ] {
        let out = t.cli(&args);
        assert!(out.err().contains(message), "{args:?}: {}", out.stderr);
    }
    assert_eq!(show(&t), before, "a refused edit changed the schedule");

    // The input alone: the next run stays where it was.
    let out = t.cli(&["schedules", "edit", "tick", "--input", r#"{"b":2}"#]);
    assert!(
        out.ok()
            .contains(r#"edited schedule tick: counter runs every 1h with input {"b":2}"#),
        "{}",
        out.stdout
    );
    let after = show(&t);
    assert_eq!(after["input"], serde_json::json!({"b": 2}));
    for same in [
        "next_run_at",
        "created_at",
        "every_ms",
        "function",
        "paused",
    ] {
        assert_eq!(after[same], before[same], "{same} changed");
    }

    // Another function and cadence: the next run is the new cadence's first from now.
    let start = keyhole::storage::now_ms();
    let edited = t
        .cli(&[
            "schedules",
            "edit",
            "tick",
            "--function",
            "echo",
            "--every",
            "10m",
            "--json",
        ])
        .json();
    let end = keyhole::storage::now_ms();
    assert_eq!(edited["function"], "echo", "{edited}");
    assert_eq!(edited["every_ms"], 600_000, "{edited}");
    assert_eq!(edited["input"], serde_json::json!({"b": 2}), "{edited}");
    let next = edited["next_run_at"].as_i64().unwrap();
    assert!(
        (start + 600_000..=end + 600_000).contains(&next),
        "next run {next} is not 10 minutes from the edit ({start}..{end})"
    );
    assert_eq!(show(&t), edited);

    // A cron expression replaces the interval.
    let edited = t
        .cli(&[
            "schedules",
            "edit",
            "tick",
            "--cron",
            "0 0 3 * * *",
            "--json",
        ])
        .json();
    assert_eq!(edited["every_ms"], serde_json::Value::Null, "{edited}");
    assert_eq!(edited["cron"], "0 0 3 * * *", "{edited}");
    assert!(
        t.cli(&["schedules", "show", "tick"])
            .ok()
            .contains("cron 0 0 3 * * *")
    );

    // A paused schedule stays paused, and says how to resume it.
    t.cli(&["schedules", "pause", "tick"]).ok();
    let out = t.cli(&["schedules", "edit", "tick", "--every", "5m"]);
    assert!(
        out.ok()
            .contains("it is paused; `keyhole schedules resume tick` runs it again"),
        "{}",
        out.stdout
    );
    assert_eq!(show(&t)["paused"], true);
    assert_eq!(show(&t)["every_ms"], 300_000);
}

#[tokio::test]
async fn a_slot_read_before_an_edit_is_not_claimed_to_run_what_was_read() {
    let (t, added) = counter_ticking(Duration::from_secs(3600)).await;
    let schedules = t.host.schedules();
    schedules
        .edit(
            "tick",
            &ScheduleEdit {
                input: Some(r#"{"fail_after_write":true}"#.into()),
                ..Default::default()
            },
        )
        .unwrap();
    // The scheduler read the slot before the edit (same slot: an input edit keeps it),
    // and claims it after: refused, so no run starts with the old input.
    let storage = t.host.storage();
    let now = keyhole::storage::now_ms();
    assert!(
        !storage
            .claim_schedule_run(&added, now, now + 3_600_000, now + 60_000)
            .unwrap(),
        "a slot was claimed to run the schedule as it was before the edit"
    );
    let read = schedules.show("tick").unwrap();
    assert_eq!(read.last_run_at, None);
    assert_eq!(read.next_run_at, added.next_run_at);
    // Read afresh (the next tick), it is claimed.
    assert!(
        storage
            .claim_schedule_run(&read, now, now + 3_600_000, now + 60_000)
            .unwrap()
    );
}

#[test]
fn an_edit_applies_from_the_next_run_of_a_server_already_running() {
    let t = TestHost::new();
    upload(&t, "counter", "counter");
    t.cli(&[
        "schedules",
        "add",
        "tick",
        "--function",
        "counter",
        "--every",
        "1s",
    ])
    .ok();
    let (child, _) = t.spawn_serve(&[]);
    let runs = || t.host.logs(Some("counter"), 100).unwrap();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the schedule did not run", &|| !runs().is_empty());

    // A new input: the runs after the edit fail after writing, as the input asks.
    let editing = keyhole::storage::now_ms();
    t.cli(&[
        "schedules",
        "edit",
        "tick",
        "--input",
        r#"{"fail_after_write":true}"#,
    ])
    .ok();
    let edited = keyhole::storage::now_ms();
    wait_for("no run after the edit", &|| {
        runs().iter().any(|r| r.started_at > edited + 100)
    });

    // A new cadence: the next run is an hour away, so the runs stop.
    t.cli(&["schedules", "edit", "tick", "--every", "1h"]).ok();
    let slowed = keyhole::storage::now_ms();
    std::thread::sleep(Duration::from_millis(2500));
    stop_serve(child);
    let runs = runs();
    for run in &runs {
        if run.started_at < editing {
            assert_eq!(run.outcome, "ok", "a run before the edit: {run:?}");
        } else if run.started_at > edited + 100 {
            assert_ne!(run.outcome, "ok", "a run after the edit: {run:?}");
        }
    }
    assert!(
        runs.iter().all(|r| r.started_at < slowed + 100),
        "a run started after the cadence became hourly: {runs:?}"
    );
    let show = t.cli(&["schedules", "show", "tick", "--json"]).json();
    assert!(
        show["next_run_at"].as_i64().unwrap() > slowed + 3_500_000,
        "{show}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_edits_a_schedule_for_an_admin_token_and_a_refused_edit_changes_nothing() {
    let (t, _) = counter_ticking(Duration::from_secs(3600)).await;
    let storage = t.host.storage();
    let admin = create_token(storage, Scope::Admin, None, Some("tests")).unwrap();
    let admin = admin.token.expose().to_string();
    let invoke = create_token(storage, Scope::Invoke, None, Some("tests")).unwrap();
    let invoke = invoke.token.expose().to_string();
    let (child, base) = t.spawn_serve(&[]);
    let http = reqwest::Client::new();
    let before = serde_json::to_value(t.host.schedules().show("tick").unwrap()).unwrap();
    // `PATCH /v1/schedules/{name}` with `body`.
    let patch = |name: &str, body: serde_json::Value, token: Option<&str>| {
        let request = http
            .patch(format!("{base}/v1/schedules/{name}"))
            .json(&body);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    for (name, body, token, status, message) in [
        ("tick", serde_json::json!({"every": "5m"}), None, 401, ""),
        (
            "tick",
            serde_json::json!({"every": "5m"}),
            Some(invoke.as_str()),
            403,
            "",
        ),
        (
            "tick",
            serde_json::json!({}),
            Some(admin.as_str()),
            400,
            "nothing to change",
        ),
        (
            "tick",
            serde_json::json!({"every": "5m", "cron": "0 * * * * *"}),
            Some(admin.as_str()),
            400,
            "give only one of",
        ),
        (
            "tick",
            serde_json::json!({"every": "soon"}),
            Some(admin.as_str()),
            400,
            "is not a duration",
        ),
        (
            "tick",
            serde_json::json!({"colour": "red"}),
            Some(admin.as_str()),
            400,
            "unknown field `colour`",
        ),
        (
            "tick",
            serde_json::json!({"function": "nope", "every": "5m"}),
            Some(admin.as_str()),
            400,
            "no function named \"nope\"",
        ),
        (
            "nope",
            serde_json::json!({"every": "5m"}),
            Some(admin.as_str()),
            404,
            "no schedule named \"nope\"",
        ),
    ] {
        let r = patch(name, body.clone(), token).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let err: serde_json::Value = r.json().await.unwrap();
        assert!(
            err["error"]["message"].as_str().unwrap().contains(message),
            "{body}: {err}"
        );
        assert_eq!(
            serde_json::to_value(t.host.schedules().show("tick").unwrap()).unwrap(),
            before,
            "a refused edit ({body}) changed the schedule"
        );
    }
    let start = keyhole::storage::now_ms();
    let r = patch(
        "tick",
        serde_json::json!({"input": {"x": [1, 2]}, "every": "10m"}),
        Some(&admin),
    )
    .await
    .unwrap();
    let end = keyhole::storage::now_ms();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let edited: serde_json::Value = r.json().await.unwrap();
    stop_serve(child);
    assert_eq!(
        edited["input"],
        serde_json::json!({"x": [1, 2]}),
        "{edited}"
    );
    assert_eq!(edited["every_ms"], 600_000, "{edited}");
    assert_eq!(edited["function"], "counter", "{edited}");
    let next = edited["next_run_at"].as_i64().unwrap();
    assert!(
        (start + 600_000..=end + 600_000).contains(&next),
        "next run {next} is not 10 minutes from the edit ({start}..{end})"
    );
    assert_eq!(
        serde_json::to_value(t.host.schedules().show("tick").unwrap()).unwrap(),
        edited
    );
}

#[test]
fn a_schedule_runs_on_time_under_serve() {
    let t = TestHost::new();
    upload(&t, "counter", "counter");
    t.cli(&[
        "schedules",
        "add",
        "tick",
        "--function",
        "counter",
        "--every",
        "1s",
    ])
    .ok();
    let (child, _) = t.spawn_serve(&[]);
    std::thread::sleep(Duration::from_millis(3600));
    stop_serve(child);
    let runs = t.host.logs(Some("counter"), 50).unwrap();
    // The first slot may fall before the server is up and run late (missed slots collapse
    // into one run); the runs after it keep the cadence.
    assert!(
        (2..=5).contains(&runs.len()),
        "expected 2 to 5 runs in 3.6s at 1/s, got {}",
        runs.len()
    );
    assert!(runs.iter().all(|r| r.outcome == "ok"));
    let mut starts: Vec<i64> = runs.iter().map(|r| r.started_at).collect();
    starts.sort();
    for pair in starts[1..].windows(2) {
        let gap = pair[1] - pair[0];
        assert!((500..=1600).contains(&gap), "runs {gap} ms apart, not ~1s");
    }
    let show = t.cli(&["schedules", "show", "tick", "--json"]).json();
    assert_eq!(show["last_outcome"], "ok");
    // The function's own state saw every run.
    let out = t.cli(&["run", "counter"]).json();
    assert_eq!(out["count"], runs.len() as u64 + 1);
}

#[test]
fn a_slow_schedule_never_overlaps_itself() {
    let api = FakeApi::start_blocking(vec![Credential::api_key_header("X-API-Key", "k-123456789")]);
    let t = TestHost::new();
    misbehave_calling(&t, &api, "slow", "sleepy");
    let input = r#"{"mode":"sleep-http","connection":"slow","target":"/slow?ms=2500"}"#;
    t.cli(&[
        "schedules",
        "add",
        "sleepy",
        "--function",
        "sleepy",
        "--every",
        "2s",
        "--input",
        input,
    ])
    .ok();
    let (child, _) = t.spawn_serve(&[]);
    std::thread::sleep(Duration::from_millis(14_000));
    stop_serve(child);
    let mut runs = t.host.logs(Some("sleepy"), 50).unwrap();
    runs.sort_by_key(|r| r.started_at);
    assert!(
        runs.len() >= 3,
        "expected at least three runs, got {}",
        runs.len()
    );
    for pair in runs.windows(2) {
        let end = pair[0].started_at + pair[0].duration_us / 1000;
        assert!(
            pair[1].started_at >= end,
            "run {} started before run {} ended",
            pair[1].id,
            pair[0].id
        );
    }
    // The slot that fell due during each 2.5 s run was skipped: the next run came at the
    // slot after it (4 s on), not straight after the run (about 2.6 s on). The first run
    // is left out: it may start late, with the server, and so end nearer its next slot.
    for pair in runs[1..].windows(2) {
        let apart = pair[1].started_at - pair[0].started_at;
        assert!(
            apart >= 3200,
            "runs {apart} ms apart: a missed slot ran late"
        );
    }
    assert!(
        runs.iter().all(|r| r.outcome == "ok"),
        "{:?}",
        runs.iter().map(|r| &r.error).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_missed_while_down_happen_once_at_start() {
    let (t, _) = counter_ticking(Duration::from_secs(3)).await;
    // The host is "down" across two slots.
    tokio::time::sleep(Duration::from_millis(7000)).await;
    schedule_for(server(&t), 1000).await;
    assert_eq!(
        t.host.logs(Some("counter"), 10).unwrap().len(),
        1,
        "missed slots were each run"
    );
    let show = t.host.schedules().show("tick").unwrap();
    assert!(
        show.next_run_at > show.last_run_at.unwrap(),
        "next run not moved past now"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_on_one_data_directory_run_a_slot_once() {
    let (t, added) = counter_ticking(Duration::from_secs(2)).await;
    let due = added.next_run_at;
    // A claim of a slot someone else already moved on runs nothing.
    let storage = t.host.storage();
    assert!(
        !storage
            .claim_schedule_run(
                &ScheduleRow {
                    next_run_at: due - 1,
                    ..added.clone()
                },
                due,
                due + 2000,
                due + 60_000
            )
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Both schedulers start together, so their ticks read the due slot together.
    let (a, b) = (server(&t), server(&t));
    tokio::join!(schedule_for(a, 1200), schedule_for(b, 1200));
    assert_eq!(
        t.host.logs(Some("counter"), 10).unwrap().len(),
        1,
        "both servers ran the slot"
    );
    let show = t.host.schedules().show("tick").unwrap();
    assert!(show.next_run_at > due, "the slot was not moved on");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_another_server_is_running_does_not_run_again_meanwhile() {
    let (t, added) = counter_ticking(Duration::from_secs(1)).await;
    let due = added.next_run_at;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Another server claimed the slot and is still running it (a slow run: its claim
    // holds the schedule for a minute).
    let storage = t.host.storage();
    let now = keyhole::storage::now_ms();
    assert!(
        storage
            .claim_schedule_run(&added, now, due + 1000, now + 60_000)
            .unwrap()
    );
    // Two more slots fall due while it runs: this server runs neither.
    schedule_for(server(&t), 2500).await;
    assert_eq!(t.host.logs(Some("counter"), 10).unwrap().len(), 0);
    // The other server's run ends: the schedule runs on its cadence again.
    storage
        .schedule_finished("tick", added.created_at, "ok", None, None, now + 60_000)
        .unwrap();
    schedule_for(server(&t), 2000).await;
    assert!(!t.host.logs(Some("counter"), 10).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_next_run_left_far_ahead_by_a_clock_change_is_pulled_back() {
    let (t, _) = counter_ticking(Duration::from_secs(1)).await;
    // Computed while the clock was a day ahead.
    let db = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    db.execute(
        "UPDATE schedules SET next_run_at = next_run_at + 86400000 WHERE name = 'tick'",
        [],
    )
    .unwrap();
    schedule_for(server(&t), 3000).await;
    assert!(
        !t.host.logs(Some("counter"), 10).unwrap().is_empty(),
        "the schedule stayed quiet"
    );
    let show = t.host.schedules().show("tick").unwrap();
    assert!(show.next_run_at < keyhole::storage::now_ms() + 2000);
}

#[test]
fn a_slot_whose_claim_cannot_be_written_does_not_run() {
    let api = FakeApi::start_blocking(vec![]);
    let t = posting_every_second(&api, 1);
    let (child, _) = t.spawn_serve(&[]);
    wait_for_slow_calls(&api, 1, 10, "the schedule never ran");
    std::thread::sleep(Duration::from_millis(300)); // its record commits
    // Another process (a backup, an sqlite3 shell) holds the write lock past the busy
    // timeout: the next slots cannot be claimed, so they must not run (each run would
    // post again, and could not move the slot on).
    let other = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let before = api.hits("/slow");
    std::thread::sleep(Duration::from_millis(11_500));
    let during = api.hits("/slow") - before;
    other.execute_batch("ROLLBACK").unwrap();
    // Once the lock is gone the schedule runs again.
    wait_for_slow_calls(
        &api,
        before + during + 1,
        15,
        "the schedule did not run again",
    );
    stop_serve(child);
    assert_eq!(
        during, 0,
        "slots ran while their claim could not be written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn show_and_the_api_tell_whether_a_claim_holds_the_schedule() {
    let (t, added) = counter_ticking(Duration::from_secs(3600)).await;
    let storage = t.host.storage();
    let running_line = |t: &TestHost| {
        let out = t.cli(&["schedules", "show", "tick"]);
        out.ok()
            .lines()
            .find(|l| l.starts_with("running "))
            .unwrap_or_else(|| panic!("no running line: {}", out.stdout))
            .to_string()
    };
    let show_json = |t: &TestHost| t.cli(&["schedules", "show", "tick", "--json"]).json();
    // Nothing holds it: the field is there, null.
    assert_eq!(
        show_json(&t).get("running_until"),
        Some(&serde_json::Value::Null)
    );
    assert!(running_line(&t).ends_with(" no"), "{}", running_line(&t));

    // A server claims the slot and dies mid-run: its claim holds the schedule until the
    // lease runs out, and show says so.
    let now = keyhole::storage::now_ms();
    let lease = now + 3_600_000;
    assert!(
        storage
            .claim_schedule_run(&added, now, now + 3_600_000, lease)
            .unwrap()
    );
    assert_eq!(show_json(&t)["running_until"], lease);
    let line = running_line(&t);
    assert!(
        line.contains(&format!(
            "yes, claimed until {}",
            keyhole::util::format_ms(lease)
        )),
        "{line}"
    );
    let list = t.cli(&["schedules", "list"]);
    assert!(
        list.ok()
            .lines()
            .any(|l| l.starts_with("tick ") && l.contains(" running ")),
        "{}",
        list.stdout
    );
    assert_eq!(
        t.cli(&["schedules", "list", "--json"]).json()[0]["running_until"],
        lease
    );

    // The HTTP API answers the same row.
    let admin = create_token(storage, Scope::Admin, None, Some("tests")).unwrap();
    let admin = admin.token.expose().to_string();
    let (child, base) = t.spawn_serve(&[]);
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).bearer_auth(&admin).send();
    let one: serde_json::Value = get("/v1/schedules/tick")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: serde_json::Value = get("/v1/schedules").await.unwrap().json().await.unwrap();
    stop_serve(child);
    assert_eq!(one["running_until"], lease, "{one}");
    assert_eq!(all[0]["running_until"], lease, "{all}");

    // The run finishes: its claim goes, and show says nothing holds the schedule.
    storage
        .schedule_finished("tick", added.created_at, "ok", None, None, lease)
        .unwrap();
    assert_eq!(
        show_json(&t).get("running_until"),
        Some(&serde_json::Value::Null)
    );
    assert!(running_line(&t).ends_with(" no"), "{}", running_line(&t));

    // A lease that has run out holds nothing, though it stays stored: the scheduler would
    // claim the schedule again, so show says it is not running.
    let now = keyhole::storage::now_ms();
    let read = t.host.schedules().show("tick").unwrap();
    assert!(
        storage
            .claim_schedule_run(&read, now, now + 3_600_000, now - 1)
            .unwrap()
    );
    assert_eq!(
        show_json(&t).get("running_until"),
        Some(&serde_json::Value::Null)
    );
    assert!(running_line(&t).ends_with(" no"), "{}", running_line(&t));
}

#[test]
fn a_crashed_runs_claim_is_released_by_hand_and_the_schedule_runs_again_at_once() {
    let api = FakeApi::start_blocking(vec![]);
    let t = posting_every_second(&api, 3000);
    // Nothing holds it yet: releasing changes nothing, and says so.
    let out = t.cli(&["schedules", "release", "post"]);
    assert_eq!(
        out.ok().trim(),
        "no run holds schedule post; nothing changed"
    );
    let none = t.cli(&["schedules", "release", "post", "--json"]).json();
    assert_eq!(none["released"], serde_json::Value::Null, "{none}");
    assert_eq!(none["name"], "post", "{none}");

    // A server claims a slot, and is killed (SIGKILL) mid-run: its claim stays behind,
    // holding the schedule for the function's timeout (10 s) and a minute.
    let (mut child, _) = t.spawn_serve(&[]);
    let pid = child.id();
    wait_for_slow_calls(&api, 1, 15, "the schedule never ran");
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = t.cli(&["schedules", "show", "post"]);
    assert!(
        shown.ok().contains(&format!("by process {pid} (")),
        "{}",
        shown.stdout
    );
    assert!(
        shown
            .ok()
            .contains("`keyhole schedules release post` releases its claim"),
        "{}",
        shown.stdout
    );
    let held = t.cli(&["schedules", "show", "post", "--json"]).json();
    let until = held["running_until"]
        .as_i64()
        .unwrap_or_else(|| panic!("no claim left behind: {held}"));
    assert!(until > keyhole::storage::now_ms() + 55_000, "{held}");
    assert_eq!(held["claimed_by"], pid, "{held}");

    // A claim that is not the one read (a newer run's) is left alone.
    let created_at = held["created_at"].as_i64().unwrap();
    assert!(
        !t.host
            .storage()
            .release_schedule("post", created_at, until - 1)
            .unwrap()
    );
    assert_eq!(
        t.cli(&["schedules", "show", "post", "--json"]).json()["running_until"],
        until
    );

    // The admin releases it: show says nothing holds it, and a server started now runs
    // the schedule at once instead of a minute on.
    let out = t.cli(&["schedules", "release", "post"]);
    let text = out.ok();
    assert!(
        text.starts_with(&format!(
            "released schedule post: the claim that held it until {} is gone",
            keyhole::util::format_ms(until)
        )),
        "{text}"
    );
    assert!(text.contains("next run at "), "{text}");
    assert_eq!(
        t.cli(&["schedules", "show", "post", "--json"]).json()["running_until"],
        serde_json::Value::Null
    );
    let (child, _) = t.spawn_serve(&[]);
    wait_for_slow_calls(&api, 2, 15, "the released schedule did not run again");
    stop_serve(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_releases_a_claim_an_admin_token_asks_it_to_once_its_process_is_gone_or_with_force()
{
    let (t, added) = counter_ticking(Duration::from_secs(3600)).await;
    let storage = t.host.storage();
    let now = keyhole::storage::now_ms();
    let lease = now + 3_600_000;
    assert!(
        storage
            .claim_schedule_run(&added, now, now + 3_600_000, lease)
            .unwrap()
    );
    let admin = create_token(storage, Scope::Admin, None, Some("tests")).unwrap();
    let admin = admin.token.expose().to_string();
    let invoke = create_token(storage, Scope::Invoke, None, Some("tests")).unwrap();
    let invoke = invoke.token.expose().to_string();
    let (child, base) = t.spawn_serve(&[]);
    let http = reqwest::Client::new();
    // `POST /v1/schedules/{name}/release{query}`
    let release = |name: &str, query: &str, token: &str| {
        http.post(format!("{base}/v1/schedules/{name}/release{query}"))
            .bearer_auth(token)
            .send()
    };
    // An invoke token may not; the claim stays.
    let refused = release("tick", "", &invoke).await.unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    assert_eq!(
        t.host.schedules().show("tick").unwrap().running_until,
        Some(lease)
    );
    // The claim names its process (this test's), which still runs: refused, 409.
    let me = std::process::id();
    assert_eq!(
        t.host.schedules().show("tick").unwrap().claimed_by,
        Some(i64::from(me))
    );
    let live = release("tick", "", &admin).await.unwrap();
    assert_eq!(live.status(), reqwest::StatusCode::CONFLICT);
    let live: serde_json::Value = live.json().await.unwrap();
    assert_eq!(live["error"]["kind"], "conflict", "{live}");
    assert!(
        live["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "process {me} claimed schedule \"tick\" and is still running"
            )),
        "{live}"
    );
    assert_eq!(
        t.host.schedules().show("tick").unwrap().running_until,
        Some(lease)
    );
    // With force, an admin token releases it, and is told which claim went.
    let r = release("tick", "?force=true", &admin).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["released"], lease, "{body}");
    assert_eq!(body["running_until"], serde_json::Value::Null, "{body}");
    assert_eq!(body["claimed_by"], serde_json::Value::Null, "{body}");
    assert_eq!(body["name"], "tick", "{body}");
    // Again: nothing holds it, nothing changes.
    let again: serde_json::Value = release("tick", "", &admin)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["released"], serde_json::Value::Null, "{again}");
    // An unknown schedule is a 404 with the usual error body.
    let unknown = release("nope", "", &admin).await.unwrap();
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    let err: serde_json::Value = unknown.json().await.unwrap();
    stop_serve(child);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no schedule named \"nope\""),
        "{err}"
    );
    assert_eq!(t.host.schedules().show("tick").unwrap().running_until, None);
}

#[test]
fn a_live_servers_claim_is_not_released_without_force() {
    let api = FakeApi::start_blocking(vec![]);
    let t = posting_every_second(&api, 6000);
    let admin = create_token(t.host.storage(), Scope::Admin, None, Some("tests")).unwrap();
    let admin = admin.token.expose().to_string();
    let (child, base) = t.spawn_serve(&[]);
    let pid = child.id();
    wait_for_slow_calls(&api, 1, 15, "the schedule never ran");
    std::thread::sleep(Duration::from_millis(200));
    let claim = t.cli(&["schedules", "show", "post", "--json"]).json();
    assert_eq!(claim["claimed_by"], pid, "{claim}");
    let until = claim["running_until"].as_i64().unwrap();

    // The server that claimed it runs: the CLI refuses, says why, and changes nothing.
    let refused = t.cli(&["schedules", "release", "post"]);
    assert!(
        refused.err().starts_with(&format!(
            "error: process {pid} claimed schedule \"post\" and is still running"
        )) && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    let json = t.cli(&["schedules", "release", "post", "--json"]);
    let error: serde_json::Value = serde_json::from_str(json.err().trim()).unwrap();
    assert_eq!(error["error"]["kind"], "conflict", "{error}");
    // The server itself refuses too, naming itself.
    let (status, body) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/schedules/post/release"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<serde_json::Value>().await.unwrap())
    });
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("this server (process {pid}) claimed schedule")),
        "{body}"
    );
    assert_eq!(
        t.cli(&["schedules", "show", "post", "--json"]).json()["running_until"],
        until
    );

    // --force releases it all the same.
    let forced = t
        .cli(&["schedules", "release", "post", "--force", "--json"])
        .json();
    assert_eq!(forced["released"], until, "{forced}");
    assert_eq!(forced["claimed_by"], serde_json::Value::Null, "{forced}");
    stop_serve(child);
}
