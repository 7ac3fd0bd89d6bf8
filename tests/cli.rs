//! The `keyhole` binary end to end: upload, run, list, show, logs, delete, the bad-upload
//! messages, exit codes, `--json`, and artifact reuse across processes.

use keyhole_tests::env::TestHost;
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
