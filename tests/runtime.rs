//! The sandboxed runtime through the library: uploads (good and bad), invocation,
//! limits and failure isolation, concurrency, and the compiled-artifact cache.

use std::time::{Duration, Instant};

use keyhole::config::Limits;
use keyhole::runtime::{InvokeError, UploadError};
use keyhole::{HostError, UploadOptions};
use keyhole_tests::env::TestHost;
use keyhole_tests::plugins::plugin;
use serde_json::{Value, json};

async fn run_ok(t: &TestHost, name: &str, input: Value) -> Value {
    let inv = t
        .host
        .invoke(name, &input.to_string())
        .await
        .expect("function exists");
    let out = inv.result.unwrap_or_else(|e| panic!("{name} failed: {e}"));
    serde_json::from_str(&out).expect("output is JSON")
}

async fn run_err(t: &TestHost, name: &str, input: Value) -> InvokeError {
    let inv = t
        .host
        .invoke(name, &input.to_string())
        .await
        .expect("function exists");
    match inv.result {
        Ok(out) => panic!("{name} unexpectedly succeeded: {out}"),
        Err(e) => e,
    }
}

async fn echo_still_works(t: &TestHost) {
    let input = json!({"still": "alive", "n": 7});
    assert_eq!(run_ok(t, "echo", input.clone()).await, input);
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_and_run_echo() {
    let t = TestHost::new();
    let up = t
        .host
        .upload("echo", plugin("echo"), UploadOptions::default())
        .await
        .unwrap();
    assert!(up.new_version && up.row.version == 1, "{up:?}");
    let input = json!({"hello": "world", "list": [1, 2, 3]});
    let inv = t.host.invoke("echo", &input.to_string()).await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(inv.result.as_ref().unwrap()).unwrap(),
        input
    );
    assert!(
        inv.logs.iter().any(|l| l.starts_with("INFO echo")),
        "logs: {:?}",
        inv.logs
    );

    let logs = t.host.logs(Some("echo"), 10).unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].outcome, "ok");
    assert_eq!(logs[0].id, inv.id);
    assert!(logs[0].logs.iter().any(|l| l.contains("echo")));

    // The same component again is the same version: a retried deploy stores nothing.
    let again = t
        .host
        .upload("echo", plugin("echo"), UploadOptions::default())
        .await
        .unwrap();
    assert!(!again.new_version, "{again:?}");
    assert_eq!(again.row.version, 1);
    // Its grant flags still apply.
    t.host
        .connections()
        .add("gh", "github", vec![], None)
        .unwrap();
    let options = UploadOptions {
        grants: vec!["gh".into()],
        ..Default::default()
    };
    let granted = t
        .host
        .upload("echo", plugin("echo"), options)
        .await
        .unwrap();
    assert!(!granted.new_version, "{granted:?}");
    assert_eq!(
        t.host.show_function("echo").unwrap().grants,
        vec!["gh".to_string()]
    );
    let options = UploadOptions {
        reset_grants: true,
        ..Default::default()
    };
    t.host
        .upload("echo", plugin("echo"), options)
        .await
        .unwrap();
    assert!(t.host.show_function("echo").unwrap().grants.is_empty());
    assert_eq!(t.host.show_function("echo").unwrap().versions.len(), 1);
    // Other limits, or another component, make a new version.
    let up = t.upload_with_timeout("echo", "echo", 5_000).await;
    assert!(up.new_version && up.row.version == 2, "{up:?}");
    let up = t
        .host
        .upload("echo", plugin("counter"), UploadOptions::default())
        .await
        .unwrap();
    assert!(up.new_version && up.row.version == 3, "{up:?}");
    assert_eq!(t.host.show_function("echo").unwrap().versions.len(), 3);

    // Two identical uploads racing both compile; the second to store finds the first's
    // version in its transaction and stores nothing.
    let storage = t.host.storage();
    let latest = storage.latest_function("echo").unwrap().unwrap();
    let counter = plugin("counter");
    let same = keyhole::storage::NewFunction {
        name: "echo",
        content_hash: &latest.content_hash,
        wasm: &counter,
        limits: latest.limits,
    };
    let (row, stored) = storage.insert_function(&same).unwrap();
    assert!(!stored && row.version == 3, "{row:?}");
    assert_eq!(t.host.show_function("echo").unwrap().versions.len(), 3);

    // After an upgrade (no artifact for this engine), the same upload compiles again,
    // which checks the new host can run it, and still makes no new version.
    let engine = t.host.runtime().engine_hash().to_string();
    rusqlite::Connection::open(t.home().join("keyhole.db"))
        .unwrap()
        .execute("DELETE FROM artifacts", [])
        .unwrap();
    assert!(!storage.has_artifact(&latest.content_hash, &engine).unwrap());
    let again = t
        .host
        .upload("echo", counter, UploadOptions::default())
        .await
        .unwrap();
    assert!(!again.new_version && again.row.version == 3, "{again:?}");
    assert!(storage.has_artifact(&latest.content_hash, &engine).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_uploads_are_refused_with_a_clear_error_and_store_nothing() {
    let t = TestHost::new();
    let echo = plugin("echo");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not wasm", b"#!/bin/sh\necho hi\n".to_vec()),
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        ("truncated", echo[..echo.len() / 2].to_vec()),
        ("other world", plugin("not-a-function")),
    ];
    for (what, bytes) in cases {
        let err = t
            .host
            .upload("bad", bytes, UploadOptions::default())
            .await
            .expect_err(what);
        let msg = err.to_string();
        match (what, &err) {
            ("not wasm", HostError::Upload(UploadError::NotWasm)) => {
                assert!(msg.contains("not a WebAssembly file"))
            }
            ("core module", HostError::Upload(UploadError::CoreModule)) => {
                assert!(msg.contains("core WebAssembly module, not a component"))
            }
            ("truncated", HostError::Upload(UploadError::Malformed(_))) => {
                assert!(msg.contains("malformed or truncated"))
            }
            ("other world", HostError::Upload(UploadError::WrongWorld(_))) => {
                assert!(msg.contains("not a keyhole custom function"), "{msg}")
            }
            _ => panic!("{what}: unexpected error {err:?}"),
        }
    }
    assert!(
        t.host.list_functions().unwrap().is_empty(),
        "a refused upload stored something"
    );
    assert!(matches!(
        t.host.upload("Bad_Name", echo, UploadOptions::default()).await,
        Err(HostError::Invalid(m)) if m.contains("invalid function name")
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn misbehaving_guests_get_typed_errors_and_the_host_keeps_serving() {
    let t = TestHost::new();
    t.upload("echo", "echo", &[]).await;
    let limits = keyhole::config::Limits {
        timeout_ms: 500,
        memory_bytes: 32 << 20,
        ..Default::default()
    };
    let options = UploadOptions {
        limits: Some(limits),
        ..Default::default()
    };
    t.host
        .upload("misbehave", plugin("misbehave"), options)
        .await
        .unwrap();

    let started = Instant::now();
    let err = run_err(&t, "misbehave", json!({"mode": "loop"})).await;
    let took = started.elapsed();
    assert!(
        matches!(err, InvokeError::Timeout { limit } if limit == Duration::from_millis(500)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(500),
        "stopped before the limit: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "stopped far past the limit: {took:?}"
    );
    echo_still_works(&t).await;

    let err = run_err(&t, "misbehave", json!({"mode": "memory"})).await;
    assert!(
        matches!(err, InvokeError::OutOfMemory { limit } if limit == 32 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("memory limit"));
    echo_still_works(&t).await;

    let err = run_err(&t, "misbehave", json!({"mode": "panic"})).await;
    assert!(
        matches!(&err, InvokeError::Panic(m) if m.contains("misbehave: deliberate panic")),
        "{err:?}"
    );
    echo_still_works(&t).await;

    let err = run_err(&t, "misbehave", json!({"mode": "stack"})).await;
    assert!(matches!(err, InvokeError::StackOverflow), "{err:?}");
    echo_still_works(&t).await;

    let err = run_err(&t, "misbehave", json!({"mode": "error"})).await;
    assert!(
        matches!(&err, InvokeError::Guest(m) if m.contains("deliberate error")),
        "{err:?}"
    );

    let err = run_err(
        &t,
        "misbehave",
        json!({"mode": "big-output", "bytes": 2 << 20}),
    )
    .await;
    assert!(matches!(err, InvokeError::OutputTooLarge { .. }), "{err:?}");

    let err = run_err(&t, "echo", json!("x".repeat(2 << 20))).await;
    assert!(matches!(err, InvokeError::InputTooLarge { .. }), "{err:?}");

    let inv = t.host.invoke("echo", "{not json").await.unwrap();
    assert!(matches!(inv.result, Err(InvokeError::InvalidInput(_))));

    assert!(matches!(
        t.host.invoke("nope", "{}").await,
        Err(InvokeError::NotFound(_))
    ));

    // Every failure was recorded with its kind.
    let outcomes: Vec<String> = t
        .host
        .logs(Some("misbehave"), 50)
        .unwrap()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    for kind in [
        "timeout",
        "out-of-memory",
        "panic",
        "stack-overflow",
        "guest-error",
        "output-too-large",
    ] {
        assert!(
            outcomes.iter().any(|o| o == kind),
            "no {kind} record in {outcomes:?}"
        );
    }
    echo_still_works(&t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_reaches_no_file_environment_argument_or_socket() {
    let t = TestHost::new();
    t.host
        .upload("misbehave", plugin("misbehave"), UploadOptions::default())
        .await
        .unwrap();
    // A listener the guest is told about: it must never see a connection or a datagram.
    // (A TCP port whose UDP twin is taken is passed over.)
    let (tcp, udp) = std::iter::repeat_with(|| {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        std::net::UdpSocket::bind(("127.0.0.1", port)).map(|udp| (tcp, udp))
    })
    .find_map(Result::ok)
    .unwrap();
    let port = tcp.local_addr().unwrap().port();
    tcp.set_nonblocking(true).unwrap();
    udp.set_nonblocking(true).unwrap();
    // The host process has an environment and arguments; the guest must see neither.
    assert!(std::env::vars().next().is_some());

    let inv = t
        .host
        .invoke(
            "misbehave",
            &json!({"mode": "escape", "port": port}).to_string(),
        )
        .await
        .unwrap();
    let out: Value = serde_json::from_str(&inv.result.unwrap()).unwrap();
    for (what, got) in [
        ("read_dir", json!(null)),
        ("read_file", json!(null)),
        ("write_file", json!(false)),
        ("env", json!([])),
        ("args", json!([])),
    ] {
        assert_eq!(out[what], got, "{what}: {out}");
    }
    // Each network attempt failed (`{"Err": message}`), none went through (`{"Ok": null}`).
    for what in ["lookup", "tcp", "udp"] {
        assert!(out[what]["Err"].is_string(), "{what}: {out}");
    }
    assert_eq!(
        tcp.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    assert_eq!(
        udp.recv(&mut [0; 8]).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cannot_make_the_host_hold_unbounded_random_bytes_or_handles() {
    let t = TestHost::new();
    for name in ["misbehave", "echo"] {
        t.host
            .upload(name, plugin(name), UploadOptions::default())
            .await
            .unwrap();
    }
    let ok = |input: Value| {
        let t = &t;
        async move {
            let inv = t
                .host
                .invoke("misbehave", &input.to_string())
                .await
                .unwrap();
            inv.result
        }
    };

    // Up to 1 MiB in one call is served; one byte more traps (wasmtime-wasi's own
    // default would hand out 64 MiB).
    assert_eq!(
        ok(json!({"mode": "random", "bytes": 1 << 20}))
            .await
            .unwrap(),
        (1u64 << 20).to_string()
    );
    let err = run_err(
        &t,
        "misbehave",
        json!({"mode": "random", "bytes": (1 << 20) + 1}),
    )
    .await;
    assert!(matches!(err, InvokeError::Trap(_)), "{err:?}");
    echo_still_works(&t).await;

    // A few thousand handles are fine; past 10,000 the host refuses to make more.
    assert_eq!(
        ok(json!({"mode": "handles", "count": 5_000}))
            .await
            .unwrap(),
        "5000"
    );
    let err = run_err(&t, "misbehave", json!({"mode": "handles", "count": 20_000})).await;
    assert!(matches!(err, InvokeError::Trap(_)), "{err:?}");
    echo_still_works(&t).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_output_is_captured_and_bounded() {
    let t = TestHost::new();
    let limits = keyhole::config::Limits {
        max_log_bytes: 1024,
        max_output_bytes: 1000,
        max_outbound_requests: 3,
        ..Default::default()
    };
    t.host
        .upload(
            "misbehave",
            plugin("misbehave"),
            UploadOptions {
                limits: Some(limits),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let inv = t
        .host
        .invoke("misbehave", &json!({"mode": "stdout"}).to_string())
        .await
        .unwrap();
    inv.result.as_ref().unwrap();
    assert!(inv.stdout.contains("to-stdout"), "{:?}", inv.stdout);
    assert!(inv.stderr.contains("to-stderr"), "{:?}", inv.stderr);

    let inv = t
        .host
        .invoke(
            "misbehave",
            &json!({"mode": "logs", "count": 1000}).to_string(),
        )
        .await
        .unwrap();
    inv.result.as_ref().unwrap();
    assert!(inv.logs.len() < 1000);
    assert!(
        inv.logs.last().unwrap().contains("more log lines dropped"),
        "{:?}",
        inv.logs.last()
    );

    // A failed run's message is held to the output cap too.
    let err = run_err(
        &t,
        "misbehave",
        json!({"mode": "big-error", "bytes": 100_000}),
    )
    .await;
    let message = err.to_string();
    assert!(message.len() < 1300, "{} bytes", message.len());
    assert!(
        message.contains("cut at the 1000-byte output cap"),
        "{message}"
    );

    // Calls past the cap are refused and not recorded, and a name of any length is
    // recorded cut to the longest valid one: a guest cannot grow its record without bound.
    let long_name = "x".repeat(10_000);
    let input = json!({"mode": "http-flood", "connection": long_name, "times": 1000});
    let inv = t
        .host
        .invoke("misbehave", &input.to_string())
        .await
        .unwrap();
    let kinds: Value = serde_json::from_str(inv.result.as_ref().unwrap()).unwrap();
    assert_eq!(
        kinds,
        json!({"access-denied": 3, "too-many-requests": 997}),
        "refused calls count toward the cap"
    );
    assert_eq!(inv.outbound.len(), 3);
    let stored = t.host.logs(Some("misbehave"), 1).unwrap();
    assert_eq!(stored[0].outbound.len(), 3);
    assert!(stored[0].outbound.iter().all(|c| c.connection.len() == 50));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_never_reads_what_an_earlier_guest_left_in_memory() {
    // Memory slots are reused (and reset in place) between invocations of a function:
    // whatever one invocation leaves behind must be gone for the next.
    let t = TestHost::new();
    t.upload("misbehave", "misbehave", &[]).await;
    let marker = format!("leftover-{}", std::process::id() ^ 0x6b65_7968);
    let masked: Vec<u8> = marker.bytes().map(|b| b ^ 0x5a).collect();

    // The scan sees the marker when it is there...
    let found = run_ok(
        &t,
        "misbehave",
        json!({"mode": "scan", "masked": masked, "scribble_first": true}),
    )
    .await;
    assert!(found.as_u64().unwrap() >= 8, "scan found {found}");

    for _ in 0..3 {
        let left = json!({"mode": "scribble", "marker": marker, "copies": 1000});
        assert_eq!(run_ok(&t, "misbehave", left).await, json!(1000));
        // ...and not after another invocation filled the heap with it.
        let found = run_ok(
            &t,
            "misbehave",
            json!({"mode": "scan", "masked": masked, "scribble_first": false}),
        )
        .await;
        assert_eq!(found, json!(0), "a guest read an earlier guest's memory");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_invocations_all_succeed() {
    let t = std::sync::Arc::new(TestHost::new());
    t.upload("echo", "echo", &[]).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let input = json!({ "i": i });
            let inv = t.host.invoke("echo", &input.to_string()).await.unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&inv.result.unwrap()).unwrap(),
                input
            );
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(t.host.logs(Some("echo"), 500).unwrap().len(), 200);
    permits_all_back(&t);
}

/// Every capacity permit is back.
fn permits_all_back(t: &TestHost) {
    assert_eq!(
        t.host.runtime().available_permits(),
        t.host.runtime().max_instances() as usize
    );
}

/// On a runtime with one slot, invocations back to back (through `Runtime::invoke`, with
/// nothing in between that yields, on one thread) all run: each finds the slot free. It
/// fails with "at capacity" if a change frees the slot after `invoke` returns (on a task
/// of its own) without holding the capacity permit until then.
#[tokio::test(flavor = "current_thread")]
async fn back_to_back_invocations_on_a_one_slot_runtime_all_run() {
    let t = TestHost::with_max_instances(1);
    let runtime = t.host.runtime();
    let (_artifact, prepared) = runtime.compile(&plugin("echo")).expect("echo compiles");
    for i in 0..20 {
        let input = json!({ "i": i }).to_string();
        let outcome = runtime
            .invoke(&prepared, "echo", &input, Limits::default(), None)
            .await;
        match outcome.result {
            Ok(output) => assert_eq!(output, input, "call {i}"),
            Err(e) => panic!("call {i} failed: {e}"),
        }
    }
    permits_all_back(&t);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_host_reuses_the_stored_artifact() {
    let mut t = TestHost::new();
    t.upload("echo", "echo", &[]).await;
    assert_eq!(
        t.host
            .runtime()
            .stats()
            .compiles
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    t.reopen();
    echo_still_works(&t).await;
    let stats = t.host.runtime().stats();
    assert_eq!(
        stats.compiles.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "restart recompiled"
    );
    assert_eq!(
        stats
            .artifact_loads
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Warm: the second call uses the in-memory pre-instance.
    echo_still_works(&t).await;
    assert_eq!(
        stats
            .artifact_loads
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_invocations_compile_once() {
    let mut t = TestHost::new();
    t.upload("echo", "echo", &[]).await;
    // As after an upgrade: no artifact for this engine, nothing in memory.
    rusqlite::Connection::open(t.home().join("keyhole.db"))
        .unwrap()
        .execute_batch("DELETE FROM artifacts")
        .unwrap();
    t.reopen();
    let outcomes =
        futures::future::join_all((0..16).map(|_| t.host.invoke("echo", r#"{"n":1}"#))).await;
    for outcome in outcomes {
        assert_eq!(outcome.unwrap().result.unwrap(), r#"{"n":1}"#);
    }
    let stats = t.host.runtime().stats();
    assert_eq!(
        stats.compiles.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "each first invocation compiled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_send_without_a_grant_is_access_denied() {
    let t = TestHost::new();
    t.upload("hello-http", "hello-http", &[]).await;
    let out = run_ok(&t, "hello-http", json!({"connection": "github"})).await;
    assert_eq!(out["error"], "access-denied", "{out}");
    let out = run_ok(&t, "hello-http", json!({"connection": "Not A Name!"})).await;
    assert_eq!(out["error"], "access-denied", "{out}");
    let rec = &t.host.logs(Some("hello-http"), 1).unwrap()[0];
    assert_eq!(rec.outbound.len(), 1);
    assert_eq!(rec.outbound[0].error.as_deref(), Some("access-denied"));
}
