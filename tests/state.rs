//! Per-function state (`keyhole:function/kv`) and WIT versioning: state persists across
//! runs and restarts, is private to each function, is rolled back when a run fails, is
//! bounded by typed quotas, and concurrent runs (in one process or several) take turns on
//! it; components built against 0.1.0 still run on a 0.2.0 host.

use keyhole_tests::env::TestHost;
use keyhole_tests::{Credential, FakeApi};
use serde_json::{Value, json};

async fn run(t: &TestHost, name: &str, input: Value) -> Result<Value, String> {
    let inv = t.host.invoke(name, &input.to_string()).await.unwrap();
    inv.result
        .map(|o| serde_json::from_str(&o).unwrap())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn state_persists_is_private_and_survives_restarts() {
    let mut t = TestHost::new();
    t.upload("counter", "a", &[]).await;
    t.upload("counter", "b", &[]).await;
    assert_eq!(run(&t, "a", json!({})).await.unwrap()["count"], 1);
    assert_eq!(run(&t, "a", json!({})).await.unwrap()["count"], 2);
    // Another function has its own namespace.
    assert_eq!(run(&t, "b", json!({})).await.unwrap()["count"], 1);
    t.reopen();
    assert_eq!(run(&t, "a", json!({})).await.unwrap()["count"], 3);
    // A new version (other limits) keeps the function's state.
    let up = t.upload_with_timeout("counter", "a", 5_000).await;
    assert!(up.new_version && up.row.version == 2, "{up:?}");
    assert_eq!(run(&t, "a", json!({})).await.unwrap()["count"], 4);
    // Deleting the function deletes its state.
    t.host.delete_function("a", false).unwrap();
    t.upload("counter", "a", &[]).await;
    assert_eq!(run(&t, "a", json!({})).await.unwrap()["count"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_runs_take_turns_on_state_so_no_update_is_lost() {
    let t = std::sync::Arc::new(TestHost::new());
    t.upload("counter", "c", &[]).await;
    const IN_PROCESS: u64 = 48;
    const PROCESSES: u64 = 3;
    // Other processes on the same data directory (`keyhole run` beside `keyhole serve`).
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| t.spawn_cli(&["run", "c", "--input", "{}"]))
        .collect();
    let tasks: Vec<_> = (0..IN_PROCESS)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { run(&t, "c", json!({})).await })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await.unwrap().unwrap()["count"].as_u64().unwrap());
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
        counts.push(answer["count"].as_u64().unwrap());
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=IN_PROCESS + PROCESSES).collect::<Vec<_>>(),
        "a run read state another run was about to change: updates lost or repeated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_state_cannot_be_saved_fails_and_says_so() {
    let t = TestHost::new();
    t.upload("counter", "c", &[]).await;
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 1);
    // The disk refuses the state write (a trigger stands in for a full disk).
    let db = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_kv BEFORE INSERT ON kv BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    let err = run(&t, "c", json!({})).await.unwrap_err();
    assert!(err.contains("state could not be saved"), "{err}");
    assert_eq!(t.host.logs(Some("c"), 1).unwrap()[0].outcome, "host-error");
    db.execute_batch("DROP TRIGGER refuse_kv").unwrap();
    // Nothing was half-stored: the count goes on from 1.
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_state_cannot_be_read_is_a_host_error_not_a_trap() {
    let t = TestHost::new();
    t.upload("counter", "c", &[]).await;
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 1);
    // The state cannot be read (its table is out of reach for a moment).
    let db = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    db.execute_batch("ALTER TABLE kv RENAME TO kv_away")
        .unwrap();
    let err = run(&t, "c", json!({})).await.unwrap_err();
    assert!(err.contains("state could not be read"), "{err}");
    assert_eq!(t.host.logs(Some("c"), 1).unwrap()[0].outcome, "host-error");
    db.execute_batch("ALTER TABLE kv_away RENAME TO kv")
        .unwrap();
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_outlives_its_functions_deletion_brings_no_state_back() {
    let t = TestHost::new();
    t.upload("counter", "c", &[]).await;
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 1);
    assert!(
        t.cli(&["functions", "delete", "c"])
            .ok()
            .contains("deleted")
    );
    // The commit of a run of version 1 that was still going when the function was
    // deleted: before and after a new function is uploaded under the name.
    let writes = [("count".to_string(), Some(b"7".to_vec()))].into();
    t.host.storage().kv_commit("c", 1, &writes).unwrap();
    assert!(t.host.storage().kv_keys("c", "").unwrap().is_empty());
    t.upload("counter", "c", &[]).await;
    t.host.storage().kv_commit("c", 1, &writes).unwrap();
    assert!(t.host.storage().kv_keys("c", "").unwrap().is_empty());
    // The new function starts from nothing.
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_entries_count_toward_the_quota_too() {
    let t = TestHost::new();
    t.upload("misbehave", "m", &[]).await;
    // Empty values under short keys, 10,000 a run, until the quota refuses one.
    let mut stored = 0u64;
    for run_no in 0..20u32 {
        let out = run(
            &t,
            "m",
            json!({"mode": "kv-fill", "keys": 10_000, "from": run_no * 10_000}),
        )
        .await
        .unwrap();
        stored += out["set"].as_u64().unwrap();
        if let Some(refused) = out["refused"].as_str() {
            assert!(refused.contains("state quota exceeded"), "{out}");
            break;
        }
    }
    // Each entry counts its key (2 to 6 bytes here) and 64 bytes besides: about 60,000
    // fit in 4 MiB (without the 64, some 700,000 would).
    let per_entry = keyhole::storage::ENTRY_OVERHEAD_BYTES + 6;
    assert!(
        (keyhole::runtime::MAX_FUNCTION_BYTES / per_entry..70_000).contains(&stored),
        "{stored} entries stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_may_change_only_so_many_keys() {
    let t = TestHost::new();
    t.upload("misbehave", "m", &[]).await;
    let out = run(&t, "m", json!({"mode": "kv-churn", "keys": 10_001}))
        .await
        .unwrap();
    assert_eq!(out["deleted"], 10_000, "{out}");
    // The advice fits the limit: deleting more keys would not help here.
    let refused = out["refused"].as_str().unwrap();
    assert!(
        refused.contains("at most 10000 keys") && refused.contains("several runs"),
        "{out}"
    );
    assert!(!refused.contains("delete keys"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_leaves_state_as_it_was() {
    let t = TestHost::new();
    t.upload("counter", "c", &[]).await;
    assert_eq!(run(&t, "c", json!({})).await.unwrap()["count"], 1);
    let err = run(&t, "c", json!({"fail_after_write": true}))
        .await
        .unwrap_err();
    assert!(err.contains("failing after writing count 2"), "{err}");
    assert_eq!(
        run(&t, "c", json!({})).await.unwrap()["count"],
        2,
        "the failed run's write was committed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_limits_are_typed_errors() {
    let t = TestHost::new();
    t.upload("counter", "q", &[]).await;
    let err = run(
        &t,
        "q",
        json!({"blob_bytes": keyhole::runtime::MAX_VALUE_BYTES + 1}),
    )
    .await
    .unwrap_err();
    assert!(err.contains("state value too large"), "{err}");
    // Fill the quota with values at the size limit; the write that would cross it fails.
    let mut last = Ok(Value::Null);
    for _ in 0..20 {
        last = run(
            &t,
            "q",
            json!({"blob_bytes": keyhole::runtime::MAX_VALUE_BYTES}),
        )
        .await;
        if last.is_err() {
            break;
        }
    }
    let err = last.unwrap_err();
    assert!(err.contains("state quota exceeded"), "{err}");
    // The refused run committed nothing; the function still works within its quota.
    let out = run(&t, "q", json!({})).await.unwrap();
    let keys = out["keys"].as_array().unwrap().len() as u64;
    assert!(
        keys * keyhole::runtime::MAX_VALUE_BYTES as u64
            <= keyhole::runtime::MAX_FUNCTION_BYTES + 1024
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn components_built_against_0_1_0_keep_working() {
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", "legacy-key-123456")).await;
    let t = TestHost::new();
    let def = keyhole::services::ServiceDef::from_toml(&format!(
        "name = \"acme\"\ndisplay_name = \"Acme\"\nauth = \"api_key\"\nbase_url = \"{}\"\n\n[[params]]\nname = \"X-API-Key\"\ndisplay_name = \"Key\"\nsecret = true\nlocation = \"header\"\n",
        api.base_url()
    ))
    .unwrap();
    t.host.connections().catalog().add(&def).unwrap();
    t.host
        .connections()
        .add("acme", "acme", vec![], None)
        .unwrap();
    let values = [(
        "X-API-Key".to_string(),
        keyhole::secrets::Secret::new("legacy-key-123456"),
    )]
    .into_iter()
    .collect();
    t.host.connections().connect("acme", values).await.unwrap();
    t.upload("legacy-v0-1", "legacy", &["acme"]).await;
    let inv = t.host.invoke("legacy", "\"acme\"").await.unwrap();
    let out: Value = serde_json::from_str(&inv.result.unwrap()).unwrap();
    assert_eq!(out["status"], 200, "{out}");
    assert!(
        inv.logs
            .iter()
            .any(|l| l.contains("legacy 0.1.0 function running"))
    );
    let inv = t.host.invoke("legacy", "\"nope\"").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&inv.result.unwrap()).unwrap()["error"],
        "access-denied"
    );
}
