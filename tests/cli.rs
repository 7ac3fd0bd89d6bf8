//! The `keyhole` binary end to end: upload, run, list, show, logs, delete, the bad-upload
//! messages, exit codes, `--json`, artifact reuse across processes, and `serve` keeping
//! the invocation records bounded.

use keyhole_tests::env::{TestHost, stop_serve};
use keyhole_tests::plugins::{plugin, plugin_path};

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn upload_run_list_show_logs_delete() {
    let t = TestHost::new();
    let echo = plugin_path("echo");
    let out = t.cli(&["functions", "upload", path(&echo), "--name", "echo"]);
    assert!(
        out.ok().contains("uploaded echo version 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("compiling"),
        "no progress indication: {}",
        out.stderr
    );

    let out = t.cli(&["run", "echo", "--input", r#"{"a":1,"b":"two"}"#]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.ok()).unwrap(),
        serde_json::json!({"a":1,"b":"two"})
    );

    let file = t.home().join("input.json");
    std::fs::write(&file, r#"{"from":"file"}"#).unwrap();
    let out = t.cli(&["run", "echo", "--input-file", path(&file)]);
    assert!(out.ok().contains(r#""from":"file""#));

    let list = t.cli(&["functions", "list", "--json"]).json();
    assert_eq!(list[0]["name"], "echo");
    assert_eq!(list[0]["version"], 1);
    let human = t.cli(&["functions", "list"]);
    assert!(human.ok().contains("echo"));

    let show = t.cli(&["functions", "show", "echo", "--json"]).json();
    assert_eq!(show["versions"][0]["limits"]["timeout_ms"], 10_000);

    let logs = t.cli(&["logs", "echo", "--json"]).json();
    assert_eq!(logs.as_array().unwrap().len(), 2);
    assert_eq!(logs[0]["outcome"], "ok");
    let human = t.cli(&["logs", "--details"]);
    assert!(
        human.ok().contains("echo@1") && human.stdout.contains("INFO echo"),
        "{}",
        human.stdout
    );

    let out = t.cli(&["run", "echo", "--json", "--input", "[1]"]).json();
    assert_eq!(out["output"], serde_json::json!([1]));
    assert_eq!(out["outcome"], "ok", "named as `logs --json` names it");

    t.cli(&["functions", "delete", "echo"]).ok();
    assert!(
        t.cli(&["run", "echo"])
            .err()
            .contains("no function named \"echo\"")
    );
    assert!(
        t.cli(&["functions", "show", "echo"])
            .err()
            .contains("no function named")
    );
    // Its records stay, and an upload under the same name goes on numbering versions,
    // so no record is mistaken for the new code's.
    assert_eq!(
        t.cli(&["logs", "echo", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let out = t.cli(&["functions", "upload", path(&echo), "--name", "echo"]);
    assert!(
        out.ok().contains("uploaded echo version 2"),
        "{}",
        out.stdout
    );
    // A name that never had a function or a record is an error, not an empty list.
    let out = t.cli(&["logs", "nosuch"]);
    assert!(
        out.err().contains("no function named \"nosuch\""),
        "{}",
        out.stderr
    );
}

#[test]
fn logs_keep_each_record_to_one_line_and_details_give_the_whole_error() {
    let t = TestHost::new();
    let misbehave = plugin_path("misbehave");
    t.cli(&["functions", "upload", path(&misbehave), "--name", "mis"])
        .ok();
    let input = r#"{"mode":"big-error","bytes":5000}"#;
    t.cli(&["run", "mis", "--input", input]).err();
    let stored = t.cli(&["logs", "mis", "--json"]).json()[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stored.len() > 5000, "{}", stored.len());
    let table = t.cli(&["logs", "mis"]);
    let row = table.ok().lines().nth(1).unwrap();
    assert!(row.ends_with('…') && row.len() < 300, "{row}");
    let details = t.cli(&["logs", "mis", "--details"]);
    assert!(
        details.ok().contains(&stored),
        "--details has the whole error"
    );
}

#[test]
fn bad_uploads_print_what_is_wrong() {
    let t = TestHost::new();
    let dir = t.home();
    let echo = plugin("echo");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("text.wasm", b"hello".to_vec(), "not a WebAssembly file"),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module, not a component",
        ),
        (
            "cut.wasm",
            echo[..echo.len() / 3].to_vec(),
            "malformed or truncated",
        ),
        (
            "cli.wasm",
            plugin("not-a-function"),
            "not a keyhole custom function",
        ),
    ];
    for (file, bytes, message) in cases {
        let p = dir.join(file);
        std::fs::write(&p, bytes).unwrap();
        let out = t.cli(&["functions", "upload", path(&p), "--name", "bad"]);
        assert!(out.err().contains(message), "{file}: {}", out.stderr);
    }
    let missing = t.cli(&[
        "functions",
        "upload",
        "/nonexistent/x.wasm",
        "--name",
        "bad",
    ]);
    assert!(missing.err().contains("cannot read /nonexistent/x.wasm"));
    assert_eq!(
        t.cli(&["functions", "list", "--json"]).json(),
        serde_json::json!([])
    );
}

// Waits out the 10 s busy timeout once.
#[test]
fn a_failed_run_whose_record_another_process_kept_out_says_so() {
    let t = TestHost::new();
    let mis = plugin_path("misbehave");
    t.cli(&["functions", "upload", path(&mis), "--name", "mis"])
        .ok();
    // Another process (a backup, an sqlite3 shell) holds the write lock throughout.
    let other = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let out = t.cli(&["run", "mis", "--input", r#"{"mode":"panic"}"#]);
    let err = out.err();
    assert!(err.contains("misbehave: deliberate panic"), "{err}");
    assert!(err.contains("its record could not be stored"), "{err}");
    assert!(
        err.contains("still locked when this process ended"),
        "{err}"
    );
    assert!(!err.contains("invocation 0"), "{err}");
    other.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn failures_exit_non_zero_with_a_clear_message() {
    let t = TestHost::new();
    let mis = plugin_path("misbehave");
    t.cli(&[
        "functions",
        "upload",
        path(&mis),
        "--name",
        "mis",
        "--timeout",
        "300ms",
    ])
    .ok();
    let out = t.cli(&["run", "mis", "--input", r#"{"mode":"loop"}"#]);
    assert!(
        out.err().contains("ran past its 300ms time limit"),
        "{}",
        out.stderr
    );
    let out = t.cli(&["run", "mis", "--input", r#"{"mode":"panic"}"#]);
    assert!(
        out.err().contains("misbehave: deliberate panic"),
        "{}",
        out.stderr
    );
    let out = t.cli(&["run", "mis", "--input", "not json"]);
    assert!(out.err().contains("input is not valid JSON"));
    let logs = t.cli(&["logs", "mis", "--json"]).json();
    assert_eq!(logs[0]["outcome"], "invalid-input");
    assert_eq!(logs[2]["outcome"], "timeout");

    // A cause already quoted by its error is not printed a second time.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = t.cli(&["serve", "--listen", &addr]);
    let err = out.err();
    assert!(err.contains("--listen"), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "{err}");

    // Values that cannot work are refused up front, and so is an edit of nothing.
    for (args, says) in [
        (vec!["serve", "--max-in-flight", "0"], "--max-in-flight"),
        (vec!["serve", "--rate-burst", "0"], "--rate-burst"),
    ] {
        let out = t.cli(&args);
        assert!(out.err().contains(says), "{args:?}: {}", out.stderr);
    }
    t.cli(&["connections", "add", "gh", "--service", "github"])
        .ok();
    let out = t.cli(&["connections", "edit", "gh"]);
    assert!(out.err().contains("nothing to change"), "{}", out.stderr);
    // Malformed, like a command line clap refuses: exit status 2.
    assert_eq!(out.code, 2, "{}", out.stderr);

    // An empty KEYHOLE_HOME means the default data directory, as an unset one does
    // (XDG_DATA_HOME places that default on Linux only).
    #[cfg(target_os = "linux")]
    {
        let data = tempfile::tempdir().unwrap();
        let xdg = data.path().to_str().unwrap();
        let out = t.cli_with(
            &["services", "list", "--json"],
            None,
            &[("KEYHOLE_HOME", ""), ("XDG_DATA_HOME", xdg)],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert!(data.path().join("keyhole").join("keyhole.db").exists());
    }
    // An explicitly empty --home is refused: it is a script's unset variable, not a
    // request for the default data directory.
    let out = t.cli(&["services", "list", "--home", ""]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    // An OAuth connection takes no params on `connect`, rather than dropping them.
    let out = t.cli(&["connections", "connect", "gh", "--param", "x=y"]);
    assert!(
        out.err()
            .contains("--param and --params-stdin do not apply"),
        "{}",
        out.stderr
    );
    // A param named in another case is stored, and used, under the service's own name.
    t.cli(&["connections", "add", "z", "--service", "zoho"])
        .ok();
    t.cli(&["connections", "edit", "z", "--param", "DC=eu"])
        .ok();
    let z = t.cli(&["connections", "show", "z", "--json"]).json();
    let dc: Vec<_> = z["params"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap().eq_ignore_ascii_case("dc"))
        .collect();
    assert_eq!(dc.len(), 1, "{z}");
    assert_eq!(dc[0]["value"], "eu", "{z}");
    assert_eq!(z["base_url"], "https://www.zohoapis.eu/", "{z}");
    // `services add --file` is defined by the file alone: other flags are refused.
    let out = t.cli(&[
        "services",
        "add",
        "--file",
        "s.toml",
        "--base-url",
        "https://staging.example",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
}

#[cfg(unix)]
#[test]
fn the_data_directory_and_database_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestHost::new();
    let home = t.home().join("fresh");
    let out = t.cli(&["--home", path(&home), "functions", "list"]);
    out.ok();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    for entry in std::fs::read_dir(&home).unwrap() {
        let entry = entry.unwrap().path();
        if entry.is_file() {
            assert_eq!(mode(&entry), 0o600, "{}", entry.display());
        }
    }
    assert!(home.join("keyhole.db").exists());
}

#[test]
fn a_new_process_loads_the_stored_artifact_instead_of_compiling() {
    let t = TestHost::new();
    let echo = plugin_path("echo");
    t.cli(&["functions", "upload", path(&echo), "--name", "echo"])
        .ok();
    let out = t.cli_with(
        &["run", "echo", "--input", "{}"],
        None,
        &[("RUST_LOG", "keyhole=info")],
    );
    out.ok();
    assert!(
        out.stderr.contains("loaded precompiled artifact"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("compiling component"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_damaged_stored_artifact_is_compiled_again_and_replaced() {
    let t = TestHost::new();
    let echo = plugin_path("echo");
    t.cli(&["functions", "upload", path(&echo), "--name", "echo"])
        .ok();
    let db = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    let damaged = db
        .execute("UPDATE artifacts SET artifact = x'7f454c46deadbeef'", [])
        .unwrap();
    assert_eq!(damaged, 1);
    drop(db);
    let run = || {
        t.cli_with(
            &["run", "echo", "--input", r#"{"a":1}"#],
            None,
            &[("RUST_LOG", "keyhole=info")],
        )
    };
    let out = run();
    assert_eq!(out.json(), serde_json::json!({"a": 1}));
    assert!(
        out.stderr.contains("stored artifact unusable; recompiling"),
        "{}",
        out.stderr
    );
    // The fresh compile replaced the damaged artifact.
    let out = run();
    out.ok();
    assert!(
        out.stderr.contains("loaded precompiled artifact"),
        "{}",
        out.stderr
    );
}

#[test]
fn help_explains_the_commands() {
    let t = TestHost::new();
    let help = t.cli(&["--help"]);
    for word in [
        "functions",
        "run",
        "logs",
        "services",
        "connections",
        "never see a secret",
    ] {
        assert!(
            help.ok().contains(word),
            "--help lacks {word:?}:\n{}",
            help.stdout
        );
    }
    let upload = t.cli(&["functions", "upload", "--help"]);
    assert!(upload.ok().contains("custom-function"), "{}", upload.stdout);
}

#[test]
fn serve_keeps_the_newest_invocation_records_of_each_function() {
    let t = TestHost::new();
    let echo = plugin_path("echo");
    for name in ["echo", "other"] {
        t.cli(&["functions", "upload", path(&echo), "--name", name])
            .ok();
    }
    for i in 0..6 {
        t.cli(&["run", "echo", "--input", &format!(r#"{{"n":{i}}}"#)])
            .ok();
    }
    for _ in 0..2 {
        t.cli(&["run", "other", "--input", "{}"]).ok();
    }
    let ids = |name: &str| -> Vec<i64> {
        let logs = t.cli(&["logs", name, "--json", "--limit", "100"]).json();
        let rows = logs.as_array().unwrap().iter();
        rows.map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let before = ids("echo");
    assert_eq!(before.len(), 6);

    // Pruning runs at start, beside the API: wait for it.
    let (child, _) = t.spawn_serve(&["--keep-invocations", "3"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ids("echo").len() > 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop_serve(child);

    assert_eq!(ids("echo"), before[..3], "the newest three are kept");
    assert_eq!(
        ids("other").len(),
        2,
        "a function under the limit keeps all"
    );
    let help = t.cli(&["serve", "--help"]);
    assert!(help.ok().contains("--keep-invocations"), "{}", help.stdout);
}

#[test]
fn every_command_answers_in_json_and_errors_do_too() {
    let t = TestHost::new();
    let echo = plugin_path("echo");
    let upload = [
        "functions",
        "upload",
        path(&echo),
        "--name",
        "echo",
        "--json",
    ];
    let first = t.cli(&upload).json();
    assert_eq!(
        (first["version"].as_i64(), first["new_version"].as_bool()),
        (Some(1), Some(true))
    );
    // The same component again stores nothing, and says so.
    let again = t.cli(&upload).json();
    assert_eq!(
        (again["version"].as_i64(), again["new_version"].as_bool()),
        (Some(1), Some(false))
    );
    let human = t.cli(&upload[..5]);
    assert!(
        human.ok().contains("no new version stored"),
        "{}",
        human.stdout
    );
    assert_eq!(
        t.cli(&["functions", "show", "echo", "--json"]).json()["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The global flag goes anywhere on the line.
    assert_eq!(
        t.cli(&["--json", "functions", "list"]).json()[0]["name"],
        "echo"
    );

    t.cli(&["connections", "add", "gh", "--service", "github"])
        .ok();
    let grant = t
        .cli(&["functions", "grant", "echo", "gh", "--json"])
        .json();
    assert_eq!(
        (grant["granted"].as_bool(), grant["changed"].as_bool()),
        (Some(true), Some(true))
    );
    let grant = t
        .cli(&["functions", "grant", "echo", "gh", "--json"])
        .json();
    assert_eq!(grant["changed"], false);
    let revoked = t
        .cli(&["functions", "revoke-grant", "echo", "gh", "--json"])
        .json();
    assert_eq!(revoked["granted"], false);
    let deleted = t.cli(&["connections", "delete", "gh", "--json"]).json();
    assert_eq!(deleted["deleted"], "gh");

    let added = t
        .cli(&[
            "services",
            "add",
            "--name",
            "acme",
            "--auth",
            "api-key",
            "--base-url",
            "http://127.0.0.1:9",
            "--key-header",
            "X-API-Key",
            "--json",
        ])
        .json();
    assert_eq!(
        (added["name"].as_str(), added["source"].as_str()),
        (Some("acme"), Some("custom"))
    );
    assert_eq!(
        t.cli(&["services", "delete", "acme", "--json"]).json()["deleted"],
        "acme"
    );

    t.cli(&[
        "schedules",
        "add",
        "tick",
        "--function",
        "echo",
        "--every",
        "5m",
    ])
    .ok();
    let paused = t.cli(&["schedules", "pause", "tick", "--json"]).json();
    assert_eq!(
        (paused["paused"].as_bool(), paused["changed"].as_bool()),
        (Some(true), Some(true))
    );
    // Always there for scripts: null while no claimed run holds the schedule.
    assert_eq!(
        paused.get("running_until"),
        Some(&serde_json::Value::Null),
        "{paused}"
    );
    assert_eq!(
        t.cli(&["schedules", "pause", "tick", "--json"]).json()["changed"],
        false
    );
    let resumed = t.cli(&["schedules", "resume", "tick", "--json"]).json();
    assert_eq!(
        (resumed["paused"].as_bool(), resumed["changed"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(
        t.cli(&["schedules", "delete", "tick", "--json"]).json()["deleted"],
        "tick"
    );

    let token = t
        .cli(&["tokens", "create", "--scope", "admin", "--json"])
        .json();
    let id = token["id"].as_i64().unwrap().to_string();
    let revoked = t.cli(&["tokens", "revoke", &id, "--json"]).json();
    assert_eq!(revoked["changed"], true);
    assert_eq!(
        t.cli(&["tokens", "revoke", &id, "--json"]).json()["changed"],
        false
    );

    let deleted = t.cli(&["functions", "delete", "echo", "--json"]).json();
    assert_eq!(
        (deleted["deleted"].as_str(), deleted["versions"].as_i64()),
        (Some("echo"), Some(1))
    );

    // Errors: stderr is one JSON object with the HTTP API's kind, stdout is empty.
    let error = |args: &[&str]| {
        let out = t.cli(args);
        // Every line is JSON (log events), the last is the error.
        let lines: Vec<serde_json::Value> = out
            .err()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {l}"))
            })
            .collect();
        let err = lines
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("{args:?}: nothing on stderr"));
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        (
            err["error"]["kind"].as_str().unwrap().to_string(),
            err["error"]["message"].as_str().unwrap().to_string(),
        )
    };
    let (kind, message) = error(&["run", "echo", "--json"]);
    assert_eq!(kind, "not-found");
    assert!(message.contains("no function named \"echo\""), "{message}");
    let junk = t.home().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    assert_eq!(
        error(&[
            "functions",
            "upload",
            path(&junk),
            "--name",
            "junk",
            "--json"
        ])
        .0,
        "invalid-component"
    );
    assert_eq!(
        error(&["connections", "show", "nosuch", "--json"]).0,
        "not-found"
    );
    // Not one of keyhole's own errors: a file that is not there.
    let (kind, message) = error(&[
        "functions",
        "upload",
        "/nonexistent.wasm",
        "--name",
        "x",
        "--json",
    ]);
    assert_eq!(kind, "error");
    assert!(
        message.contains("cannot read /nonexistent.wasm"),
        "{message}"
    );
    assert_eq!(
        error(&["schedules", "show", "nosuch", "--json"]).0,
        "not-found"
    );
    assert_eq!(error(&["logs", "nosuch", "--json"]).0, "not-found");
    assert_eq!(
        error(&["connections", "edit", "nosuch", "--json"]).0,
        "invalid-request"
    );
    // A failed run: the record on stdout, the error on stderr.
    let mis = plugin_path("misbehave");
    t.cli(&["functions", "upload", path(&mis), "--name", "mis"])
        .ok();
    let out = t.cli(&["run", "mis", "--input", r#"{"mode":"panic"}"#, "--json"]);
    let last = out.err().lines().last().unwrap_or_default().to_string();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["error"]["kind"], "panic", "{last}");
    let record: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(record["outcome"], "panic", "{record}");
    // A malformed command line: exit 2, still JSON.
    let out = t.cli(&["tokens", "revoke", "not-a-number", "--json"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let err: serde_json::Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(err["error"]["kind"], "invalid-request");
}
