//! Connections end to end: custom services, sealed credentials, verification, grants,
//! and every rule of the authenticated request path, against real loopback servers.

use std::collections::BTreeMap;

use keyhole::UploadOptions;
use keyhole::config::Limits;
use keyhole::secrets::Secret;
use keyhole::services::ServiceDef;
use keyhole_tests::env::TestHost;
use keyhole_tests::fake_api::raw::{self, RawApi};
use keyhole_tests::plugins::{plugin, plugin_path};
use keyhole_tests::{Credential, FakeApi, capture};
use serde_json::{Value, json};

const KEY: &str = "kh-test-apikey-7f3a9c1e5b";
const USER: &str = "kh-test-user";
const PASSWORD: &str = "kh-test-password-2b8d4e6f";
const TOKEN: &str = "kh-test-bearer-9e1c3a5f7d";

/// Define a custom service from TOML text.
fn add_service(t: &TestHost, toml: &str) {
    let def = ServiceDef::from_toml(toml).expect("service parses");
    t.host
        .connections()
        .catalog()
        .add(&def)
        .expect("service added");
}

fn api_key_header_service(name: &str, base: &str) -> String {
    format!(
        r#"name = "{name}"
display_name = "Acme API"
auth = "api_key"
base_url = "{base}"

[verify]
path = "/user"

[[params]]
name = "X-API-Key"
display_name = "Acme API key"
secret = true
location = "header"
"#
    )
}

async fn connect(
    t: &TestHost,
    name: &str,
    service: &str,
    values: &[(&str, &str)],
) -> keyhole::connections::ConnectOutcome {
    let c = t.host.connections();
    if c.show(name).is_err() {
        c.add(name, service, vec![], None).unwrap();
    }
    let values: BTreeMap<String, Secret> = values
        .iter()
        .map(|(k, v)| (k.to_string(), Secret::new(*v)))
        .collect();
    c.connect(name, values).await.unwrap()
}

async fn call(t: &TestHost, function: &str, input: Value) -> Value {
    let inv = t.host.invoke(function, &input.to_string()).await.unwrap();
    serde_json::from_str(&inv.result.unwrap_or_else(|e| panic!("{e}"))).unwrap()
}

/// A host with an API-key service `acme` on a fake API, connection `acme` connected, and
/// `hello-http` uploaded with a grant for it.
async fn acme() -> (TestHost, FakeApi) {
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let t = TestHost::new();
    add_service(&t, &api_key_header_service("acme", &api.base_url()));
    let out = connect(&t, "acme", "acme", &[("X-API-Key", KEY)]).await;
    assert!(
        out.verification.as_ref().unwrap().ok,
        "{:?}",
        out.verification
    );
    t.upload("hello-http", "hello", &["acme"]).await;
    api.clear_requests();
    (t, api)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_whose_grants_fail_changes_neither_version_nor_grants() {
    let (t, _api) = acme().await;
    t.host
        .connections()
        .add("other", "acme", vec![], None)
        .unwrap();
    // The grant write fails (as a full disk or a broken database would), after the new
    // version and the reset would have been written.
    let db = rusqlite::Connection::open(t.home().join("keyhole.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_grant BEFORE INSERT ON grants WHEN NEW.connection = 'other' \
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
    )
    .unwrap();
    let err = t
        .host
        .upload(
            "hello",
            plugin("echo"),
            UploadOptions {
                grants: vec!["other".into()],
                reset_grants: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused for the test"), "{err}");
    let show = t.host.show_function("hello").unwrap();
    assert_eq!(show.versions.len(), 1, "the new version stayed");
    assert_eq!(
        t.host.storage().grants_of_function("hello").unwrap(),
        ["acme"],
        "the grants were half changed"
    );
    db.execute_batch("DROP TRIGGER refuse_grant").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_flow_through_the_cli() {
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let t = TestHost::new();
    let base = api.base_url();
    let out = t.cli(&[
        "services",
        "add",
        "--name",
        "acme",
        "--auth",
        "api-key",
        "--base-url",
        &base,
        "--key-header",
        "X-API-Key",
        "--param-display-name",
        "Acme API key",
        "--verify",
        "GET /user",
    ]);
    assert!(out.ok().contains("added custom service acme"));
    let show = t.cli(&["services", "show", "acme"]);
    assert!(
        show.ok().contains("Acme API key") && show.stdout.contains("X-API-Key"),
        "{}",
        show.stdout
    );

    // Flags that would mean nothing are refused, naming the flag.
    for (args, says) in [
        (
            vec!["--auth", "bearer", "--key-header", "X-Foo"],
            "--key-header applies only to --auth api-key",
        ),
        (
            vec![
                "--auth",
                "api-key",
                "--key-header",
                "X-Foo",
                "--origin",
                "uploads.example",
            ],
            "--origin \"uploads.example\" is not a valid URL",
        ),
    ] {
        let mut all = vec!["services", "add", "--name", "other", "--base-url", &base];
        all.extend(args);
        let out = t.cli(&all);
        assert!(out.err().contains(says), "{all:?}: {}", out.stderr);
    }
    let out = t.cli(&[
        "connections",
        "add",
        "acme",
        "--service",
        "acme",
        "--scope",
        "repo",
    ]);
    assert!(
        out.err().contains("does not use OAuth 2.0"),
        "{}",
        out.stderr
    );
    t.cli(&["connections", "add", "acme", "--service", "acme"])
        .ok();
    // A key typed without its name is refused without being echoed.
    let typo = t.cli(&["connections", "connect", "acme", "--param", KEY]);
    assert!(typo.err().contains("NAME=VALUE"), "{}", typo.stderr);
    assert!(!typo.stderr.contains(KEY), "{}", typo.stderr);
    // So is one that ends in base64 padding, which splits at its own `=`, on the command
    // line, on stdin, and in JSON errors.
    let padded = "dG9rZW4tc2VjcmV0LXZhbHVl";
    for (args, stdin) in [
        (vec!["connections", "connect", "acme", "--param"], None),
        (
            vec!["connections", "connect", "acme", "--params-stdin", "--json"],
            Some(()),
        ),
    ] {
        let mut args = args;
        let arg = format!("{padded}==");
        if stdin.is_none() {
            args.push(&arg);
        }
        let out = t.cli_with(
            &args,
            stdin.map(|()| format!("{padded}==\n")).as_deref(),
            &[],
        );
        assert!(out.err().contains("has no param"), "{}", out.stderr);
        assert!(out.stderr.contains("X-API-Key"), "{}", out.stderr);
        assert!(
            !out.stderr.contains(padded) && !out.stdout.contains(padded),
            "{}{}",
            out.stdout,
            out.stderr
        );
    }
    // Wrong key: verification fails, the upstream's reason is shown, status stays pending.
    let bad = t.cli_with(
        &["connections", "connect", "acme", "--params-stdin"],
        Some("Acme API key=wrong-key-123\n"),
        &[],
    );
    assert_eq!(bad.code, 1);
    assert!(
        bad.stdout.contains("verification failed") && bad.stdout.contains("401"),
        "{}",
        bad.stdout
    );
    assert_eq!(
        t.cli(&["connections", "show", "acme", "--json"]).json()["status"],
        "pending"
    );

    let good = t.cli_with(
        &["connections", "connect", "acme", "--params-stdin"],
        Some(&format!("X-API-Key={KEY}\n")),
        &[],
    );
    assert!(
        good.ok().contains("connection acme is connected"),
        "{}",
        good.stdout
    );

    let hello = plugin_path("hello-http");
    t.cli(&[
        "functions",
        "upload",
        hello.to_str().unwrap(),
        "--name",
        "hello",
        "--grant",
        "acme",
    ])
    .ok();
    let run = t
        .cli(&[
            "run",
            "hello",
            "--input",
            r#"{"connection":"acme","target":"/user"}"#,
        ])
        .json();
    assert_eq!(run["status"], 200, "{run}");
    assert!(run["body"].as_str().unwrap().contains("keyhole-test"));
    let sent = api.requests_to("/user");
    assert_eq!(sent.last().unwrap().header("x-api-key"), Some(KEY));
    // CONNECT and TRACE are refused however they are spelled, and nothing is sent.
    for method in ["TRACE", "trace", "Connect"] {
        let input = format!(r#"{{"connection":"acme","target":"/user","method":"{method}"}}"#);
        let out = t.cli(&["run", "hello", "--input", &input]).json();
        assert_eq!(out["error"], "invalid-request", "{method}: {out}");
        assert!(
            out["detail"].as_str().unwrap().contains("is not allowed"),
            "{method}: {out}"
        );
    }
    assert_eq!(api.requests_to("/user").len(), sent.len());

    let show = t.cli(&["connections", "show", "acme"]);
    assert!(
        show.ok().contains("connected") && show.stdout.contains("hello"),
        "{}",
        show.stdout
    );
    let view = t.cli(&["connections", "show", "acme", "--json"]).json();
    assert_eq!(view["granted_functions"], json!(["hello"]));
    assert_eq!(view["params"][0]["value"], "••••••••");
    assert!(view["last_used_at"].is_i64());
    assert!(
        t.cli(&["connections", "test", "acme"])
            .ok()
            .contains("succeeded")
    );
    let logs = t.cli(&["logs", "hello", "--details"]);
    assert!(
        logs.ok().contains("acme GET") && logs.stdout.contains("/user -> 200"),
        "{}",
        logs.stdout
    );
    // Grants through the CLI say when nothing changed, and name a missing function.
    let again = t.cli(&["functions", "grant", "hello", "acme"]);
    assert!(
        again.ok().contains("already holds a grant"),
        "{}",
        again.stdout
    );
    let nosuch = t.cli(&["functions", "revoke-grant", "nosuch", "acme"]);
    assert!(
        nosuch.err().contains("no function named \"nosuch\""),
        "{}",
        nosuch.stderr
    );
    t.cli(&["functions", "revoke-grant", "hello", "acme"]).ok();
    let granted = t.cli(&["functions", "grant", "hello", "acme"]);
    assert!(
        granted.ok().contains("granted connection acme"),
        "{}",
        granted.stdout
    );

    assert!(!String::from_utf8_lossy(&t.raw_database()).contains(KEY));
    capture::assert_no_secrets(&[KEY, "wrong-key-123"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_query_basic_user_and_bearer_credentials_are_injected() {
    let t = TestHost::new();
    // Basic user + password.
    let basic = FakeApi::start(Credential::basic(USER, PASSWORD)).await;
    let out = t.cli(&[
        "services",
        "add",
        "--name",
        "basic-svc",
        "--auth",
        "basic",
        "--base-url",
        &basic.base_url(),
        "--verify",
        "GET /user",
    ]);
    out.ok();
    t.cli(&["connections", "add", "basic", "--service", "basic-svc"])
        .ok();
    t.cli_with(
        &["connections", "connect", "basic", "--params-stdin"],
        Some(&format!("username={USER}\npassword={PASSWORD}\n")),
        &[],
    )
    .ok();
    // API key in the query.
    let query = FakeApi::start(Credential::api_key_query("key", KEY)).await;
    t.cli(&[
        "services",
        "add",
        "--name",
        "query-svc",
        "--auth",
        "api-key",
        "--base-url",
        &query.base_url(),
        "--key-query",
        "key",
        "--verify",
        "GET /user",
    ])
    .ok();
    t.cli(&["connections", "add", "query", "--service", "query-svc"])
        .ok();
    t.cli_with(
        &["connections", "connect", "query", "--params-stdin"],
        Some(&format!("key={KEY}\n")),
        &[],
    )
    .ok();
    // API key as the Basic user.
    let as_user = FakeApi::start(Credential::basic(KEY, "")).await;
    t.cli(&[
        "services",
        "add",
        "--name",
        "user-svc",
        "--auth",
        "api-key",
        "--base-url",
        &as_user.base_url(),
        "--key-as-basic-user",
    ])
    .ok();
    t.cli(&["connections", "add", "as-user", "--service", "user-svc"])
        .ok();
    t.cli_with(
        &["connections", "connect", "as-user", "--params-stdin"],
        Some(&format!("api_key={KEY}\n")),
        &[],
    )
    .ok();
    // Static bearer token.
    let bearer = FakeApi::start(Credential::bearer(TOKEN)).await;
    t.cli(&[
        "services",
        "add",
        "--name",
        "bearer-svc",
        "--auth",
        "bearer",
        "--base-url",
        &bearer.base_url(),
    ])
    .ok();
    t.cli(&["connections", "add", "bearer", "--service", "bearer-svc"])
        .ok();
    t.cli_with(
        &["connections", "connect", "bearer", "--params-stdin"],
        Some(&format!("Token={TOKEN}\n")),
        &[],
    )
    .ok();

    t.upload(
        "hello-http",
        "hello",
        &["basic", "query", "as-user", "bearer"],
    )
    .await;
    // Every form a secret travels in: Basic sends base64 of `user:password` (and of
    // `key:` for a key as the Basic user), which the plain values do not match.
    let secrets = [
        KEY.to_owned(),
        PASSWORD.to_owned(),
        TOKEN.to_owned(),
        keyhole_tests::basic_blob(USER, PASSWORD),
        keyhole_tests::basic_blob(KEY, ""),
    ];
    for conn in ["basic", "query", "as-user", "bearer"] {
        let out = call(&t, "hello", json!({"connection": conn, "target": "/user"})).await;
        assert_eq!(out["status"], 200, "{conn}: {out}");
        // The echo endpoint reflects the request: the credential comes back scrubbed.
        let echo = call(&t, "hello", json!({"connection": conn, "target": "/echo"})).await;
        let body = echo["body"].as_str().unwrap();
        assert_eq!(echo["status"], 200, "{conn}: {echo}");
        assert!(body.contains("[redacted]"), "{conn}: {body}");
        for s in &secrets {
            assert!(
                !body.contains(s.as_str()),
                "{conn} leaked a secret to the guest: {body}"
            );
        }
    }
    assert_eq!(
        query
            .requests_to("/user")
            .last()
            .unwrap()
            .query_param("key")
            .as_deref(),
        Some(KEY)
    );
    // The outbound record keeps the path, never the query with the key.
    let rec = t.host.logs(Some("hello"), 50).unwrap();
    assert!(
        rec.iter()
            .flat_map(|r| &r.outbound)
            .all(|c| !c.path.contains(KEY) && !c.path.contains('?'))
    );
    let raw = String::from_utf8_lossy(&t.raw_database()).into_owned();
    for s in &secrets {
        assert!(!raw.contains(s.as_str()), "raw database contains a secret");
    }
    capture::assert_no_secrets(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_ungranted_connections_are_both_access_denied() {
    let (t, api) = acme().await;
    add_service(&t, &api_key_header_service("other-svc", &api.base_url()));
    connect(&t, "other", "other-svc", &[("X-API-Key", KEY)]).await;
    api.clear_requests();
    let ungranted = call(
        &t,
        "hello",
        json!({"connection": "other", "target": "/user"}),
    )
    .await;
    let unknown = call(
        &t,
        "hello",
        json!({"connection": "does-not-exist", "target": "/user"}),
    )
    .await;
    assert_eq!(ungranted["error"], "access-denied");
    assert_eq!(
        unknown, ungranted,
        "unknown and ungranted must answer the same"
    );
    assert!(api.requests().is_empty());

    // Granting makes it work; taking the grant back denies again.
    t.host.connections().grant("hello", "other").unwrap();
    assert_eq!(
        call(
            &t,
            "hello",
            json!({"connection": "other", "target": "/user"})
        )
        .await["status"],
        200
    );
    t.host.connections().revoke_grant("hello", "other").unwrap();
    assert_eq!(
        call(
            &t,
            "hello",
            json!({"connection": "other", "target": "/user"})
        )
        .await["error"],
        "access-denied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_then_reconnect_in_place_keeps_name_and_grants() {
    let (t, api) = acme().await;
    let c = t.host.connections();
    let revocation = c.revoke("acme").await.unwrap();
    assert!(revocation.wiped);
    assert!(
        revocation.provider.is_empty(),
        "an API-key connection has nothing to revoke at a provider"
    );
    let view = revocation.connection;
    assert_eq!(view.status, keyhole::connections::Status::Revoked);
    assert!(view.params[0].value.is_none(), "credentials not wiped");
    assert_eq!(
        call(
            &t,
            "hello",
            json!({"connection": "acme", "target": "/user"})
        )
        .await["error"],
        "not-connected"
    );
    assert!(api.requests().is_empty());
    // Revoking again, or revoking a connection that never held credentials, changes
    // nothing and says so.
    let again = c.revoke("acme").await.unwrap();
    assert!(!again.wiped);
    assert_eq!(again.connection.status_reason, view.status_reason);
    // Pending (never connected) is not-connected too.
    c.add("fresh", "acme", vec![], None).unwrap();
    c.grant("hello", "fresh").unwrap();
    let out = t.cli(&["connections", "revoke", "fresh"]);
    assert!(
        out.ok().contains("holds no credentials (status pending)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        c.show("fresh").unwrap().status,
        keyhole::connections::Status::Pending
    );
    assert_eq!(
        call(
            &t,
            "hello",
            json!({"connection": "fresh", "target": "/user"})
        )
        .await["error"],
        "not-connected"
    );

    connect(&t, "acme", "acme", &[("X-API-Key", KEY)]).await;
    assert_eq!(
        call(
            &t,
            "hello",
            json!({"connection": "acme", "target": "/user"})
        )
        .await["status"],
        200
    );
    assert_eq!(
        c.show("acme").unwrap().granted_functions,
        vec!["hello".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_reads_the_body_of_an_api_that_answers_200_to_bad_credentials() {
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let t = TestHost::new();
    // Slack's shape: `auth.test` is 200 either way; `"ok"` tells.
    let toml = api_key_header_service("chat", &api.base_url()).replace(
        "[verify]\npath = \"/user\"\n",
        "[verify]\nmethod = \"POST\"\npath = \"/auth.test\"\n\n[verify.expect_json]\nok = true\n",
    );
    assert!(toml.contains("expect_json"), "{toml}");
    add_service(&t, &toml);
    let bad = connect(&t, "chat", "chat", &[("X-API-Key", "wrong-key-789")]).await;
    let v = bad.verification.unwrap();
    assert!(!v.ok, "a 200 with ok=false is a failed verification");
    assert_eq!(v.status, Some(200));
    let reason = v.reason.unwrap();
    assert!(reason.contains(r#""ok" = false, not true"#), "{reason}");
    assert!(reason.contains("invalid_auth"), "{reason}");
    assert_ne!(
        t.host.connections().show("chat").unwrap().status,
        keyhole::connections::Status::Connected
    );

    let good = connect(&t, "chat", "chat", &[("X-API-Key", KEY)]).await;
    assert!(good.verification.unwrap().ok);
    assert_eq!(
        t.host.connections().show("chat").unwrap().status,
        keyhole::connections::Status::Connected
    );
    assert_eq!(api.hits("/auth.test"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reconnect_keeps_the_working_credentials() {
    let (t, _api) = acme().await;
    let out = connect(&t, "acme", "acme", &[("X-API-Key", "wrong-key-456")]).await;
    assert!(!out.stored);
    assert!(out.verification.unwrap().reason.unwrap().contains("401"));
    assert_eq!(
        call(
            &t,
            "hello",
            json!({"connection": "acme", "target": "/user"})
        )
        .await["status"],
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destinations_outside_the_connection_are_refused_and_nothing_is_sent() {
    let (t, api) = acme().await;
    let other = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let https_same = api.base_url().replace("http://", "https://");
    let cases = [
        "//evil.example/user".to_string(),
        "https://evil.example/user".to_string(),
        format!("{}/user", other.base_url()),
        https_same + "/user",
        format!("http://user:pw@{}/user", api.addr()),
        "/../user".to_string(),
        "/%2e%2e/user".to_string(),
        "/a%2fb".to_string(),
        "/a\\b".to_string(),
    ];
    for target in &cases {
        let out = call(&t, "hello", json!({"connection": "acme", "target": target})).await;
        assert_eq!(out["error"], "forbidden-destination", "{target}: {out}");
    }
    // The records say where each refused call wanted to go (without userinfo).
    let refused: Vec<(String, String)> = t
        .host
        .logs(Some("hello"), cases.len())
        .unwrap()
        .iter()
        .flat_map(|r| &r.outbound)
        .inspect(|c| assert_eq!(c.error.as_deref(), Some("forbidden-destination")))
        .map(|c| (c.origin.clone(), c.path.clone()))
        .collect();
    assert!(
        refused.contains(&("https://evil.example:443".into(), "/user".into())),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|(o, p)| o.contains(&other.addr().to_string()) && p == "/user"),
        "{refused:?}"
    );
    assert!(refused.iter().any(|(_, p)| p == "/../user"), "{refused:?}");
    assert!(!format!("{refused:?}").contains("pw"), "{refused:?}");
    for (headers, why) in [
        (json!([["Authorization", "Bearer guest"]]), "authorization"),
        (json!([["Proxy-Authorization", "x"]]), "proxy-authorization"),
        (json!([["Cookie", "a=b"]]), "cookie"),
        (
            json!([["X-API-Key", "guest-key"]]),
            "the connection's own header",
        ),
        (json!([["X-Ok", "a\r\nX-Injected: 1"]]), "CR/LF"),
        (json!([["Bad\nName", "v"]]), "bad name"),
    ] {
        let out = call(
            &t,
            "hello",
            json!({"connection": "acme", "target": "/echo", "headers": headers}),
        )
        .await;
        assert_eq!(out["error"], "invalid-request", "{why}: {out}");
    }
    assert!(
        api.requests().is_empty(),
        "a refused request reached the API: {:?}",
        api.requests()
    );
    assert!(other.requests().is_empty());

    // An absolute URL on the connection's own origin is fine.
    let out = call(
        &t,
        "hello",
        json!({"connection": "acme", "target": format!("{}/user", api.base_url())}),
    )
    .await;
    assert_eq!(out["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn relative_targets_stay_under_the_base_path() {
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let t = TestHost::new();
    add_service(
        &t,
        &api_key_header_service("v1", &format!("{}/v1", api.base_url())),
    );
    connect(&t, "v1", "v1", &[("X-API-Key", KEY)]).await;
    t.upload("hello-http", "hello", &["v1"]).await;
    let out = call(
        &t,
        "hello",
        json!({"connection": "v1", "target": "/echo/a/b", "query": [["q", "1 2"]]}),
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    let echo: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["path"], "/v1/echo/a/b");
    assert_eq!(echo["query_pairs"], json!([["q", "1 2"]]));
    let out = call(
        &t,
        "hello",
        json!({"connection": "v1", "target": "/../leak"}),
    )
    .await;
    assert_eq!(out["error"], "forbidden-destination");
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed_and_secrets_are_scrubbed() {
    let (t, api) = acme().await;
    let elsewhere = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let to = format!("{}/user", elsewhere.base_url());
    let out = call(
        &t,
        "hello",
        json!({"connection": "acme", "target": "/redirect", "query": [["to", to]]}),
    )
    .await;
    assert_eq!(out["status"], 302, "{out}");
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was followed with credentials"
    );

    let leak = call(
        &t,
        "hello",
        json!({"connection": "acme", "target": "/leak"}),
    )
    .await;
    assert_eq!(leak["status"], 200);
    let text = leak.to_string();
    assert!(!text.contains(KEY), "secret reached the guest: {text}");
    assert!(text.contains("[redacted]"));
    assert!(api.requests_to("/leak").len() == 1);
    // Its length is the scrubbed body's, not the upstream's, which would tell how long
    // the secret was.
    let length = leak["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "content-length")
        .map(|h| h[1].as_str().unwrap().to_owned());
    let body = leak["body"].as_str().unwrap();
    assert_eq!(length, Some(body.len().to_string()), "{leak}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_echoed_secret_cannot_pass_the_scrubber_compressed_or_in_slices() {
    let (t, api) = acme().await;
    // keyhole asks for the plain answer (the echo compresses when asked to), and scrubs it.
    let echo = call(
        &t,
        "hello",
        json!({"connection": "acme", "target": "/echo"}),
    )
    .await;
    assert_eq!(echo["status"], 200, "{echo}");
    let body = echo["body"].as_str().unwrap();
    assert!(body.contains("[redacted]") && !body.contains(KEY), "{body}");
    let sent = api.requests_to("/echo");
    assert_eq!(
        sent.last().unwrap().header("accept-encoding"),
        Some("identity")
    );

    // A compressed or partial answer would carry an echoed secret past the scrubber, so a
    // guest may not ask for one; nothing is sent.
    for (name, value) in [
        ("Accept-Encoding", "gzip"),
        ("accept-encoding", "identity;q=0.1, gzip"),
        ("TE", "gzip"),
        ("Range", "bytes=0-9"),
        ("If-Range", "\"etag\""),
    ] {
        let out = call(
            &t,
            "hello",
            json!({"connection": "acme", "target": "/echo", "headers": [[name, value]]}),
        )
        .await;
        assert_eq!(out["error"], "invalid-request", "{name}: {out}");
        assert!(out["detail"].as_str().unwrap().contains(name), "{out}");
    }
    assert_eq!(
        api.requests_to("/echo").len(),
        sent.len(),
        "a refused request was sent"
    );

    // An upstream that compresses unasked: its body does not reach the guest.
    let out = call(
        &t,
        "hello",
        json!({"connection": "acme", "target": "/gzip-echo"}),
    )
    .await;
    assert_eq!(out["error"], "upstream-unreachable", "{out}");
    assert!(
        out["detail"]
            .as_str()
            .unwrap()
            .contains("Content-Encoding: gzip"),
        "{out}"
    );
    assert_eq!(api.hits("/gzip-echo"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_size_caps_and_request_caps_are_typed_errors() {
    let (t, _api) = acme().await;
    let limits = Limits {
        max_response_bytes: 64 << 10,
        max_outbound_requests: 3,
        ..Default::default()
    };
    t.host
        .upload(
            "capped",
            plugin("hello-http"),
            UploadOptions {
                limits: Some(limits),
                grants: vec!["acme".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let slow = call(&t, "capped", json!({"connection": "acme", "target": "/slow", "query": [["ms", "3000"]], "timeout_ms": 200})).await;
    assert_eq!(slow["error"], "timeout", "{slow}");
    let big = call(
        &t,
        "capped",
        json!({"connection": "acme", "target": "/big", "query": [["bytes", "200000"]]}),
    )
    .await;
    assert_eq!(big["error"], "too-large", "{big}");
    let many = call(
        &t,
        "capped",
        json!({"connection": "acme", "target": "/user", "repeat": 5}),
    )
    .await;
    assert_eq!(many["error"], "too-many-requests", "{many}");
    let rec = &t.host.logs(Some("capped"), 1).unwrap()[0];
    // The three sent are recorded; the fourth, refused at the cap, is not (past the cap
    // nothing is, so a guest cannot grow its record without bound).
    assert_eq!(rec.outbound.len(), 3, "the three sent");
    let first = &rec.outbound[0];
    assert_eq!(
        (
            first.connection.as_str(),
            first.method.as_str(),
            first.path.as_str(),
            first.status
        ),
        ("acme", "GET", "/user", Some(200))
    );
    assert!(first.bytes > 0);

    // A record keeps at most 200 characters of the path a guest chose, sent or not.
    let long = format!("/user/{}", "x".repeat(20_000));
    for target in [long.clone(), format!("https://elsewhere.example{long}")] {
        call(
            &t,
            "capped",
            json!({"connection": "acme", "target": target}),
        )
        .await;
        let rec = &t.host.logs(Some("capped"), 1).unwrap()[0];
        let path = &rec.outbound[0].path;
        assert!(path.starts_with("/user/xxx"), "{path}");
        assert_eq!(path.chars().count(), 201, "cut, with an ellipsis: {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_rules_names_duplicates_service_deletion_and_grants_on_new_versions() {
    let (t, api) = acme().await;
    let c = t.host.connections();
    for bad in [
        "",
        "Upper",
        "1st",
        "has space",
        "under_score",
        &"a".repeat(51),
    ] {
        let e = c.add(bad, "acme", vec![], None).unwrap_err().to_string();
        assert!(e.contains("invalid connection name"), "{bad:?}: {e}");
    }
    let dup = c.add("acme", "acme", vec![], None).unwrap_err().to_string();
    assert!(dup.contains("already exists"), "{dup}");
    assert!(
        c.add("x", "no-such-service", vec![], None)
            .unwrap_err()
            .to_string()
            .contains("no service named")
    );
    let e = c
        .add("remote", "acme", vec![], Some("http://example.com".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("https"), "{e}");

    let del = t.cli(&["services", "delete", "acme"]);
    assert!(
        del.err().contains("used by connection(s) acme"),
        "{}",
        del.stderr
    );

    // A new version keeps its grants unless told otherwise.
    t.upload("echo", "hello", &[]).await;
    assert_eq!(t.host.show_function("hello").unwrap().versions.len(), 2);
    assert_eq!(
        t.host.show_function("hello").unwrap().grants,
        vec!["acme".to_string()]
    );
    let options = UploadOptions {
        reset_grants: true,
        ..Default::default()
    };
    t.host
        .upload("hello", plugin("hello-http"), options)
        .await
        .unwrap();
    assert!(t.host.show_function("hello").unwrap().grants.is_empty());

    // Base URL override via edit, taking effect on the next call (the endpoint kept with
    // the opened credentials is not reused); delete removes the connection and its grants.
    c.grant("hello", "acme").unwrap();
    let user = json!({"connection": "acme", "target": "/user"});
    assert_eq!(call(&t, "hello", user.clone()).await["status"], 200);
    assert_eq!(api.hits("/user"), 1);
    let moved = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    // Sending the stored key to another origin needs confirming; unconfirmed, nothing
    // changes.
    let moving = Some(Some(moved.base_url()));
    let err = c
        .edit("acme", None, moving.clone(), BTreeMap::new(), false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--move-credentials") && err.contains(&moved.base_url()),
        "{err}"
    );
    assert_eq!(call(&t, "hello", user.clone()).await["status"], 200);
    assert_eq!((api.hits("/user"), moved.hits("/user")), (2, 0));
    c.edit("acme", None, moving, BTreeMap::new(), true).unwrap();
    assert_eq!(call(&t, "hello", user).await["status"], 200);
    assert_eq!(moved.hits("/user"), 1);
    assert_eq!(
        api.hits("/user"),
        2,
        "nothing more went to the old base URL"
    );
    // Deleting a connection functions rely on needs saying so.
    let refused = c.delete("acme", false).await.unwrap_err().to_string();
    assert!(
        refused.contains("granted to function hello") && refused.contains("--with-grants"),
        "{refused}"
    );
    assert_eq!(c.show("acme").unwrap().granted_functions, vec!["hello"]);
    assert!(c.delete("acme", true).await.unwrap().is_empty());
    assert!(t.host.show_function("hello").unwrap().grants.is_empty());
    t.cli(&["services", "delete", "acme"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_a_service_so_credentials_would_go_elsewhere_needs_confirming() {
    let (t, api) = acme().await;
    let moved = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let file = t.home().join("acme.toml");
    std::fs::write(&file, api_key_header_service("acme", &moved.base_url())).unwrap();
    let file = file.to_str().unwrap();
    let refused = t.cli(&["services", "edit", "acme", "--file", file]);
    assert!(
        refused.err().contains("--move-credentials") && refused.stderr.contains("\"acme\""),
        "{}",
        refused.stderr
    );
    let user = json!({"connection": "acme", "target": "/user"});
    assert_eq!(call(&t, "hello", user.clone()).await["status"], 200);
    assert_eq!((api.hits("/user"), moved.hits("/user")), (1, 0));

    t.cli(&[
        "services",
        "edit",
        "acme",
        "--file",
        file,
        "--move-credentials",
    ])
    .ok();
    assert_eq!(call(&t, "hello", user).await["status"], 200);
    assert_eq!((api.hits("/user"), moved.hits("/user")), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn presets_are_listed_and_shown() {
    let t = TestHost::new();
    let list = t.cli(&["services", "list", "--json"]).json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "google",
        "github",
        "gitlab",
        "slack",
        "microsoft",
        "dropbox",
        "zoom",
        "salesforce",
        "hubspot",
        "notion",
        "stripe",
        "openai",
        "twilio",
        "jira",
        "zoho",
        "webhook",
    ] {
        assert!(
            names.contains(&want),
            "preset {want} missing from {names:?}"
        );
    }
    let gh = t.cli(&["services", "show", "github"]);
    assert!(
        gh.ok().contains("https://github.com/login/oauth/authorize"),
        "{}",
        gh.stdout
    );
    let jira = t.cli(&["services", "show", "jira", "--json"]).json();
    assert_eq!(jira["auth"], "basic");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_missing_master_key_is_a_clear_error_and_loses_nothing() {
    let (t, _api) = acme().await;
    let home = t.home().to_path_buf();
    let wrong = "00".repeat(32);
    let out = t.cli_with(
        &["connections", "list"],
        None,
        &[("KEYHOLE_MASTER_KEY", &wrong)],
    );
    assert!(
        out.err().contains("master key does not match"),
        "{}",
        out.stderr
    );
    let out = t.cli_with(
        &["connections", "list"],
        None,
        &[("KEYHOLE_MASTER_KEY", "not-a-key")],
    );
    assert!(
        out.err().contains("KEYHOLE_MASTER_KEY is not a valid key"),
        "{}",
        out.stderr
    );

    let key = std::fs::read(home.join("master.key")).unwrap();
    std::fs::rename(home.join("master.key"), home.join("master.key.bak")).unwrap();
    let out = t.cli(&["connections", "list"]);
    assert!(out.err().contains("no master key found"), "{}", out.stderr);
    assert!(
        !home.join("master.key").exists(),
        "a new key was made over sealed data"
    );
    std::fs::rename(home.join("master.key.bak"), home.join("master.key")).unwrap();

    // The right key (from the file, or the same key in the environment) still works.
    let out = t
        .cli(&[
            "run",
            "hello",
            "--input",
            r#"{"connection":"acme","target":"/user"}"#,
        ])
        .json();
    assert_eq!(out["status"], 200);
    let hex_key = String::from_utf8(key).unwrap();
    let out = t.cli_with(
        &[
            "run",
            "hello",
            "--input",
            r#"{"connection":"acme","target":"/user"}"#,
        ],
        None,
        &[("KEYHOLE_MASTER_KEY", hex_key.trim())],
    );
    assert_eq!(out.json()["status"], 200);
    capture::assert_no_secrets(&[KEY, hex_key.trim()]);
}

#[test]
fn a_secret_in_a_capability_urls_host_name_stays_out_of_views_and_records() {
    // Some webhook URLs carry their secret in the host name. `.invalid` never resolves,
    // so the call fails before anything leaves the machine.
    let secret_id = "eo7q3xk9secretwebhookid";
    let t = TestHost::new();
    t.cli(&["connections", "add", "hook", "--service", "webhook"])
        .ok();
    t.cli_with(
        &["connections", "connect", "hook", "--params-stdin"],
        Some(&format!(
            "url=https://{secret_id}.m.invalid/hooks/abcdefghijklmnopq\n"
        )),
        &[],
    )
    .ok();
    let view = t.cli(&["connections", "show", "hook", "--json"]).json();
    assert_eq!(
        view["allowed_origins"],
        json!(["https://[redacted].m.invalid:443"])
    );
    let hello = plugin_path("hello-http");
    let hello = hello.to_str().unwrap();
    t.cli(&[
        "functions",
        "upload",
        hello,
        "--name",
        "hello",
        "--grant",
        "hook",
    ])
    .ok();
    // Even a RUST_LOG aimed straight at the HTTP client's connection logs gets nothing
    // that names the host.
    let out = t.cli_with(
        &[
            "run",
            "hello",
            "--input",
            r#"{"connection":"hook","target":"/"}"#,
        ],
        None,
        &[(
            "RUST_LOG",
            "trace,hyper_util::client=trace,reqwest::connect=trace",
        )],
    );
    assert!(out.ok().contains("upstream-unreachable"), "{}", out.stdout);
    assert!(
        out.stderr.contains("TRACE"),
        "the run logged at trace: {}",
        out.stderr
    );
    let logs = t.cli(&["logs", "hello", "--json"]).json();
    assert_eq!(
        logs[0]["outbound"][0]["origin"],
        "https://[redacted].m.invalid:443"
    );
    let everything = format!(
        "{}{}",
        t.cli(&["logs", "hello", "--details"]).ok(),
        t.cli(&["connections", "show", "hook"]).ok()
    );
    assert!(!everything.contains(secret_id), "{everything}");
    // Nor does the refusal to move the credentials elsewhere name it.
    let refused = t.cli(&[
        "connections",
        "edit",
        "hook",
        "--base-url",
        "https://elsewhere.invalid/x",
    ]);
    assert!(
        refused.err().contains("--move-credentials")
            && refused.stderr.contains("[redacted].m.invalid"),
        "{}",
        refused.stderr
    );
    assert!(!String::from_utf8_lossy(&t.raw_database()).contains(secret_id));
    capture::assert_no_secrets(&[secret_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_the_url_do_not_move_unconfirmed_either() {
    // The token is part of the URL itself, so where it goes is known only once it is
    // opened: the move check must open it.
    let t = TestHost::new();
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let other = FakeApi::start(Credential::api_key_header("X-API-Key", KEY)).await;
    let service = |base: &str| {
        format!(
            "name = \"tokurl\"\ndisplay_name = \"Token in URL\"\nauth = \"none\"\n\
             base_url = \"{base}/t/{{tok}}\"\n\n[[params]]\nname = \"tok\"\n\
             display_name = \"Token\"\nsecret = true\nlocation = \"url\"\n"
        )
    };
    let file = t.home().join("tokurl.toml");
    std::fs::write(&file, service(&api.base_url())).unwrap();
    let file = file.to_str().unwrap();
    t.cli(&["services", "add", "--file", file]).ok();
    t.cli(&["connections", "add", "tu", "--service", "tokurl"])
        .ok();
    t.cli_with(
        &["connections", "connect", "tu", "--params-stdin"],
        Some("tok=secret-path-token-123\n"),
        &[],
    )
    .ok();

    // Edits that change nothing say so.
    let same = t.cli(&["connections", "edit", "tu", "--clear-base-url"]);
    assert!(same.ok().contains("nothing changed"), "{}", same.stdout);
    let same = t.cli(&["services", "edit", "tokurl", "--file", file]);
    assert!(same.ok().contains("nothing changed"), "{}", same.stdout);

    let moved = format!("{}/t/{{tok}}", other.base_url());
    let refused = t.cli(&["connections", "edit", "tu", "--base-url", &moved]);
    assert!(
        refused.err().contains("--move-credentials"),
        "{}",
        refused.stderr
    );
    std::fs::write(file, service(&other.base_url())).unwrap();
    let refused = t.cli(&["services", "edit", "tokurl", "--file", file]);
    assert!(
        refused.err().contains("--move-credentials"),
        "{}",
        refused.stderr
    );
    let shown = t.cli(&["connections", "show", "tu", "--json"]).json();
    assert!(
        shown["allowed_origins"][0]
            .as_str()
            .unwrap()
            .contains(&api.addr().to_string()),
        "{shown}"
    );
    t.cli(&[
        "connections",
        "edit",
        "tu",
        "--base-url",
        &moved,
        "--move-credentials",
    ])
    .ok();
    capture::assert_no_secrets(&["secret-path-token-123"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn connecting_with_another_accounts_credentials_is_said_and_recorded() {
    const ALICE: &str = "kh-test-token-alice-4d2a";
    const BOB: &str = "kh-test-token-bob-8c1e";
    let api = FakeApi::start_with(vec![Credential::bearer(ALICE), Credential::bearer(BOB)]).await;
    api.set_account(ALICE, "alice");
    api.set_account(BOB, "bob");
    let t = TestHost::new();
    t.cli(&[
        "services",
        "add",
        "--name",
        "hub",
        "--auth",
        "bearer",
        "--base-url",
        &api.base_url(),
        "--verify",
        "GET /user",
        "--account",
        "/login",
    ])
    .ok();
    let show = t.cli(&["services", "show", "hub"]);
    assert!(show.ok().contains("/login"), "{}", show.stdout);
    t.cli(&["connections", "add", "hub", "--service", "hub"])
        .ok();
    let connect = |token: &str| {
        t.cli_with(
            &["connections", "connect", "hub", "--params-stdin"],
            Some(&format!("Authorization={token}\n")),
            &[],
        )
    };

    let first = connect(ALICE);
    assert!(
        first
            .ok()
            .contains(r#"connection hub is connected as "alice""#),
        "{}",
        first.stdout
    );
    assert!(!first.stderr.contains("warning"), "{}", first.stderr);
    let view = t.host.connections().show("hub").unwrap();
    assert_eq!(view.account.as_deref(), Some("alice"));
    assert_eq!(view.status_reason, None);

    // Bob's token: stored (it works), and the admin is told whose it is.
    let second = connect(BOB);
    assert!(
        second.ok().contains(r#"connected as "bob""#),
        "{}",
        second.stdout
    );
    assert!(
        second
            .stderr
            .contains(r#"warning: now connected as "bob", not "alice" as before"#),
        "{}",
        second.stderr
    );
    let view = t.cli(&["connections", "show", "hub", "--json"]).json();
    assert_eq!(view["account"], "bob");
    let list = t.cli(&["connections", "list"]);
    assert!(
        list.ok().contains("ACCOUNT") && list.stdout.contains("bob"),
        "{}",
        list.stdout
    );
    assert!(view["status_reason"].as_str().unwrap().contains("alice"));

    // A token that fails verification changes neither the credentials nor the account.
    let bad = connect("kh-test-token-nobody");
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert_eq!(
        t.host.connections().show("hub").unwrap().account.as_deref(),
        Some("bob")
    );
    // Bob again: nothing to warn about, and the note is gone.
    let again = connect(BOB);
    assert!(!again.stderr.contains("warning"), "{}", again.stderr);
    assert_eq!(
        t.host.connections().show("hub").unwrap().status_reason,
        None
    );
    let test = t.cli(&["connections", "test", "hub"]);
    assert!(
        test.ok().contains(r#"the credentials belong to "bob""#),
        "{}",
        test.stdout
    );
    assert!(!test.stderr.contains("warning"), "{}", test.stderr);
    // The same token now acts for another account (it was reassigned at the API): a test
    // says so, once, and `--json` carries the note.
    api.set_account(BOB, "carol");
    let test = t.cli(&["connections", "test", "hub", "--json"]).json();
    assert_eq!(test["account"], "carol");
    assert!(
        test["account_change"].as_str().unwrap().contains("\"bob\""),
        "{test}"
    );
    let test = t.cli(&["connections", "test", "hub"]);
    assert!(
        !test.ok().is_empty() && !test.stderr.contains("warning"),
        "{}",
        test.stderr
    );
    api.set_account(BOB, "dave");
    let test = t.cli(&["connections", "test", "hub"]);
    assert!(
        test.ok().contains(r#""dave""#)
            && test
                .stderr
                .contains(r#"warning: now connected as "dave", not "carol""#),
        "{}\n{}",
        test.stdout,
        test.stderr
    );
    capture::assert_no_secrets(&[ALICE, BOB]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_cookie_the_upstream_sets_never_reaches_the_guest() {
    let (t, api) = acme().await;
    let out = call(
        &t,
        "hello",
        json!({"connection": "acme", "target": "/session"}),
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"], r#"{"session":"open"}"#, "{out}");
    let sessions = api.sessions();
    assert_eq!(sessions.len(), 1, "the upstream opened one session");
    let session = &sessions[0];

    // The cookie is a credential: it alone gets past the API's authentication.
    let direct = reqwest::Client::new()
        .get(api.url("/user"))
        .header(
            "cookie",
            format!("{}={session}", keyhole_tests::SESSION_COOKIE),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200, "the session cookie authenticates");
    assert_eq!(
        direct.json::<Value>().await.unwrap()["login"],
        keyhole_tests::fake_api::DEFAULT_LOGIN,
        "as the key's account"
    );

    // So the guest gets the answer without it, and without any other Set-Cookie.
    let headers = out["headers"].to_string().to_ascii_lowercase();
    assert!(!headers.contains("set-cookie"), "{headers}");
    assert!(!out.to_string().contains(session.as_str()), "{out}");
    for record in t.host.logs(Some("hello"), 10).unwrap() {
        let text = serde_json::to_string(&record).unwrap();
        assert!(!text.contains(session.as_str()), "{text}");
    }
    capture::assert_no_secrets(&[KEY, session]);
}

/// A host with the API-key header service `raw` on `api`, connection `raw` connected with
/// [`KEY`], and `hello-http` uploaded as `hello` with a grant for it.
async fn raw_host(api: &RawApi) -> TestHost {
    let t = TestHost::new();
    add_service(&t, &api_key_header_service("raw", &api.base_url()));
    let out = connect(&t, "raw", "raw", &[("X-API-Key", KEY)]).await;
    assert!(
        out.verification.as_ref().unwrap().ok,
        "{:?}",
        out.verification
    );
    t.upload("hello-http", "hello", &["raw"]).await;
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_encoded_on_any_header_line_or_in_its_transfer_never_reaches_the_guest() {
    // An upstream that echoes the key it was sent, compressed in ways no server library
    // writes: a second `Content-Encoding` line after `identity`, or a transfer coding
    // under the chunked framing. Hand-written bytes.
    let api = RawApi::start(|req| {
        let key = req.header("x-api-key").unwrap_or_default();
        if key != KEY {
            return raw::answer("401 Unauthorized", &[("content-length", "0")], b"");
        }
        // Long and repetitive enough that gzip compresses it: no byte of the key shows.
        let echo = format!(r#"{{"echo":"{key}","again":"{key}","and again":"{key}"}}"#);
        let gz = raw::gzipped(echo.as_bytes());
        let json = ("content-type", "application/json");
        match req.path() {
            "/user" => raw::answer(
                "200 OK",
                &[json, ("content-length", "15")],
                br#"{"login":"raw"}"#,
            ),
            "/chunked" => raw::answer(
                "200 OK",
                &[json, ("transfer-encoding", "chunked")],
                &raw::chunked(echo.as_bytes()),
            ),
            "/encodings-on-two-lines" => raw::answer(
                "200 OK",
                &[
                    json,
                    ("content-encoding", "identity"),
                    ("content-encoding", "gzip"),
                    ("content-length", &gz.len().to_string()),
                ],
                &gz,
            ),
            "/encodings-in-a-list" => raw::answer(
                "200 OK",
                &[
                    json,
                    ("content-encoding", "identity, gzip"),
                    ("content-length", &gz.len().to_string()),
                ],
                &gz,
            ),
            "/gzip-transfer" => raw::answer(
                "200 OK",
                &[json, ("transfer-encoding", "gzip, chunked")],
                &raw::chunked(&gz),
            ),
            "/gzip-transfer-on-two-lines" => raw::answer(
                "200 OK",
                &[
                    json,
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                &raw::chunked(&gz),
            ),
            "/gzip-transfer-to-the-close" => {
                raw::answer("200 OK", &[json, ("transfer-encoding", "gzip")], &gz)
            }
            _ => raw::answer("404 Not Found", &[("content-length", "0")], b""),
        }
    });
    let t = raw_host(&api).await;

    // hyper takes a transfer coding under the chunked framing and removes only the
    // framing: what it hands on is still gzip, which no scrubber can read, and which
    // holds the key.
    let direct = reqwest::Client::new()
        .get(api.url("/gzip-transfer"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let body = direct.bytes().await.unwrap();
    assert!(body.starts_with(&[0x1f, 0x8b]), "the body is still gzip");
    assert!(!String::from_utf8_lossy(&body).contains(KEY));
    let mut plain = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
        .unwrap();
    assert!(
        plain.contains(KEY),
        "gzip hides the key from the scrubber only"
    );

    // Plain chunked framing is no encoding: scrubbed and passed on.
    let out = call(
        &t,
        "hello",
        json!({"connection": "raw", "target": "/chunked"}),
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(
        out["body"], r#"{"echo":"[redacted]","again":"[redacted]","and again":"[redacted]"}"#,
        "{out}"
    );

    for (target, said) in [
        (
            "/encodings-on-two-lines",
            "Content-Encoding: identity, gzip",
        ),
        ("/encodings-in-a-list", "Content-Encoding: identity, gzip"),
        ("/gzip-transfer", "Transfer-Encoding: gzip, chunked"),
        (
            "/gzip-transfer-on-two-lines",
            "Transfer-Encoding: gzip, chunked",
        ),
        ("/gzip-transfer-to-the-close", "Transfer-Encoding: gzip"),
    ] {
        let out = call(&t, "hello", json!({"connection": "raw", "target": target})).await;
        assert_eq!(out["error"], "upstream-unreachable", "{target}: {out}");
        assert!(
            out["detail"].as_str().unwrap().contains(said),
            "{target}: {out}"
        );
    }
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.path() != "/user")
            .count(),
        7,
        "each sent once"
    );
    capture::assert_no_secrets(&[KEY]);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_and_304_answers_carry_no_digest_of_a_body_that_held_the_secret() {
    let (t, api) = acme().await;
    // `/leak`'s body holds the key, and its `ETag` and `Digest` hash that body: a guest
    // holding them could test guesses at the key offline.
    let direct = reqwest::Client::new()
        .head(api.url("/leak"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert!(
        direct.headers().contains_key("etag") && direct.headers().contains_key("digest"),
        "{:?}",
        direct.headers().keys()
    );

    for (method, headers, status) in [
        ("HEAD", json!([]), 200),
        // `*` matches whatever the body is: the 304 carries the real tag.
        ("GET", json!([["If-None-Match", "*"]]), 304),
        // A GET gets the scrubbed body, whose digests go (as they always did).
        ("GET", json!([]), 200),
    ] {
        let out = call(
            &t,
            "hello",
            json!({"connection": "acme", "method": method, "target": "/leak", "headers": headers}),
        )
        .await;
        assert_eq!(out["status"], status, "{method} {headers}: {out}");
        let names: Vec<String> = out["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
            .collect();
        for digest in ["etag", "digest"] {
            assert!(
                !names.iter().any(|n| n == digest),
                "{method} {headers}: {out}"
            );
        }
        assert!(!out.to_string().contains(KEY), "{out}");
    }
    assert_eq!(
        api.hits("/leak"),
        4,
        "the direct HEAD and the guest's three"
    );
    capture::assert_no_secrets(&[KEY]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_java_session_id_leaves_a_location() {
    let (t, _api) = acme().await;
    let out = call(
        &t,
        "hello",
        json!({
            "connection": "acme",
            "target": "/redirect",
            "query": [["to", "/a;jsessionid=kh-sess-1;JSESSIONID=kh-sess-2/b;jsessionid=kh-sess-3?q=1"]],
        }),
    )
    .await;
    assert_eq!(out["status"], 302, "{out}");
    let location = out["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "location")
        .map(|h| h[1].clone());
    assert_eq!(location, Some(json!("/a/b?q=1")), "{out}");
    assert!(!out.to_string().contains("kh-sess-"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_echoed_percent_encoded_any_common_way_is_scrubbed() {
    // `~` is kept by RFC 3986 encoders, `/`, `+` and `=` are not.
    const ODD_KEY: &str = "kh~test/apikey+4f9a=";
    let api = FakeApi::start(Credential::api_key_header("X-API-Key", ODD_KEY)).await;
    let t = TestHost::new();
    add_service(&t, &api_key_header_service("odd", &api.base_url()));
    let out = connect(&t, "odd", "odd", &[("X-API-Key", ODD_KEY)]).await;
    assert!(out.verification.as_ref().unwrap().ok);
    t.upload("hello-http", "hello", &["odd"]).await;

    let out = call(
        &t,
        "hello",
        json!({"connection": "odd", "target": "/leak-escaped"}),
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    // `kh~test%2Fapikey%2B4f9a%3D`, `kh~test%2fapikey%2b4f9a%3d`, `kh%7etest%2fapikey%2b4f9a%3d`.
    assert_eq!(out["body"], "[redacted]\n[redacted]\n[redacted]", "{out}");
    assert!(!out.to_string().contains("4f9a"), "{out}");
    capture::assert_no_secrets(&[ODD_KEY]);
}
