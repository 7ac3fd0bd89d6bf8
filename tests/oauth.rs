//! OAuth 2.0 connections end to end against a strict RFC 6749/7636/7009 server on
//! 127.0.0.1: the code flow through `keyhole`, PKCE and state defences, refresh on expiry
//! and on 401, single-flight refresh under load and across processes, rotation across
//! restarts, invalid_grant, revocation, re-authorization in place, client credentials,
//! and no leaked secrets.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::time::Duration;

use keyhole::connections::Status;
use keyhole::oauth::{CallbackParams, ClientConfig};
use keyhole::secrets::Secret;
use keyhole::services::ServiceDef;
use keyhole_tests::env::TestHost;
use keyhole_tests::{AnswerStyle, ClientAuth, OAuthServer, capture, free_port, query_param};
use serde_json::{Value, json};

const CLIENT_ID: &str = "keyhole-test-client";
const CLIENT_SECRET: &str = "kh-oauth-client-secret-5c2e8a1f";

struct Setup {
    t: TestHost,
    server: OAuthServer,
    redirect: String,
}

fn service_toml(server: &OAuthServer, grant: &str, auth_method: &str) -> String {
    let authorize = if grant == "authorization_code" {
        format!("authorize_url = \"{}\"\n", server.authorize_url())
    } else {
        String::new()
    };
    format!(
        r#"name = "prov"
display_name = "Test Provider"
auth = "oauth2"
base_url = "{base}/api"

[verify]
path = "/user"

[oauth2]
grant = "{grant}"
{authorize}token_url = "{token}"
revocation_url = "{revoke}"
scopes = ["read", "write"]
default_scopes = ["read"]
token_auth_method = "{auth_method}"
"#,
        base = server.base_url(),
        token = server.token_url(),
        revoke = server.revoke_url(),
    )
}

async fn setup(grant: &str) -> Setup {
    setup_with(grant, |toml| toml).await
}

/// [`setup`] with the service definition passed through `edit` first.
async fn setup_with(grant: &str, edit: impl FnOnce(String) -> String) -> Setup {
    let server = OAuthServer::start().await;
    let redirect = format!("http://127.0.0.1:{}/oauth/callback", free_port());
    let (auth, method) = if grant == "client_credentials" {
        (ClientAuth::Body, "body")
    } else {
        (ClientAuth::Basic, "basic")
    };
    server.register_client(CLIENT_ID, CLIENT_SECRET, [redirect.clone()], auth);
    let t = TestHost::new();
    let def = ServiceDef::from_toml(&edit(service_toml(&server, grant, method))).unwrap();
    t.host.connections().catalog().add(&def).unwrap();
    let config = ClientConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        redirect_url: Some(redirect.clone()),
    };
    t.host
        .connections()
        .set_oauth_client("prov", &config)
        .unwrap();
    t.host
        .connections()
        .add("prov", "prov", vec![], None)
        .unwrap();
    Setup {
        t,
        server,
        redirect,
    }
}

fn callback(location: &str) -> CallbackParams {
    CallbackParams {
        code: query_param(location, "code"),
        state: query_param(location, "state"),
        error: query_param(location, "error"),
        error_description: query_param(location, "error_description"),
        iss: query_param(location, "iss"),
    }
}

/// Authorize through the library: begin, approve at the provider, complete.
async fn authorize(s: &Setup) {
    let pending = s.t.host.connections().begin_authorization("prov").unwrap();
    authorize_with(s, pending).await;
}

/// Approve `pending` at the provider and complete it through the library.
async fn authorize_with(s: &Setup, pending: keyhole::oauth::PendingAuthorization) {
    assert_eq!(pending.redirect_url, s.redirect);
    let location = s.server.approve(&pending.authorize_url).await.unwrap();
    assert!(location.starts_with(&s.redirect), "{location}");
    let view =
        s.t.host
            .connections()
            .complete_authorization(&callback(&location), Some("prov"))
            .await
            .unwrap();
    assert_eq!(view.status, Status::Connected);
}

/// Complete an authorization from `params` through the library, which must fail: the
/// error's text.
async fn refused_completion(s: &Setup, params: &CallbackParams) -> String {
    s.t.host
        .connections()
        .complete_authorization(params, Some("prov"))
        .await
        .unwrap_err()
        .to_string()
}

/// The test provider's service, with its verification request naming the account.
fn naming_the_account(toml: String) -> String {
    toml.replace(
        "path = \"/user\"\n",
        "path = \"/user\"\naccount = [\"/login\"]\n",
    )
}

/// Authorize as `user` (signed in at the provider) through the library.
async fn authorize_as(s: &Setup, user: &str) -> keyhole::connections::ConnectionView {
    let c = s.t.host.connections();
    let pending = c.begin_authorization("prov").unwrap();
    let location = s
        .server
        .approve_as(&pending.authorize_url, user)
        .await
        .unwrap();
    c.complete_authorization(&callback(&location), Some("prov"))
        .await
        .unwrap()
}

async fn call(t: &TestHost, input: Value) -> Value {
    let inv = t.host.invoke("hello", &input.to_string()).await.unwrap();
    serde_json::from_str(&inv.result.unwrap_or_else(|e| panic!("{e}"))).unwrap()
}

fn user() -> Value {
    json!({"connection": "prov", "target": "/user"})
}

#[tokio::test(flavor = "multi_thread")]
async fn full_code_flow_through_the_cli() {
    let s = setup("authorization_code").await;
    let show = s.t.cli(&["services", "show", "prov"]);
    assert!(
        show.ok().contains(&s.redirect),
        "services show must print the callback URL:\n{}",
        show.stdout
    );

    let mut child =
        s.t.spawn_cli(&["connections", "connect", "prov", "--no-browser"]);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    for line in stdout.by_ref().lines() {
        let line = line.unwrap();
        if line.starts_with("http") {
            url = line;
            break;
        }
    }
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("state="),
        "{url}"
    );
    assert!(
        url.contains("access_type") || !url.contains("client_secret"),
        "the client secret must not be in the URL"
    );
    let location = s.server.approve(&url).await.unwrap();
    // A stray redirect (a stale tab, another flow) is refused and does not end the wait.
    let stray = reqwest::get(format!("{}?code=x&state=not-the-one", s.redirect))
        .await
        .unwrap();
    assert_eq!(stray.status(), 400);
    // The browser follows the redirect to keyhole's one-shot listener, and is told the
    // outcome.
    let page = reqwest::get(&location).await.unwrap();
    assert!(page.status().is_success());
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("authorization complete")
    );
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    capture::record(&format!("{url}\n{rest}\n{err}"));
    assert!(status.success(), "connect failed:\n{rest}\n{err}");
    assert!(rest.contains("connection prov is connected"), "{rest}");

    s.t.upload("hello-http", "hello", &["prov"]).await;
    let out = call(&s.t, user()).await;
    assert_eq!(out["status"], 200, "{out}");
    let view = s.t.cli(&["connections", "show", "prov", "--json"]).json();
    assert_eq!(view["status"], "connected");
    assert!(view["token"]["expires_at"].is_i64());
    assert_eq!(view["token"]["granted_scopes"], json!(["read"]));

    let mut secrets: Vec<String> = s.server.issued_access_tokens();
    secrets.extend(s.server.issued_refresh_tokens());
    secrets.push(CLIENT_SECRET.into());
    let raw = String::from_utf8_lossy(&s.t.raw_database()).into_owned();
    for secret in &secrets {
        assert!(
            !raw.contains(secret.as_str()),
            "raw database holds a token or the client secret"
        );
    }
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    capture::assert_no_secrets(&refs);
}

#[tokio::test(flavor = "multi_thread")]
async fn pkce_mismatch_state_tampering_reuse_and_denial_store_nothing() {
    let s = setup("authorization_code").await;
    let c = s.t.host.connections();

    // Code injection: a code issued for someone else's PKCE challenge, delivered with
    // keyhole's own valid state, fails at the token endpoint (verifier mismatch).
    let pending = c.begin_authorization("prov").unwrap();
    let state = query_param(&pending.authorize_url, "state").unwrap();
    let attacker_verifier = "attacker-verifier-0123456789-0123456789-0123456789";
    let foreign = s.server.authorization_request(
        CLIENT_ID,
        &s.redirect,
        "read",
        "attacker-state",
        attacker_verifier,
    );
    let foreign_code = query_param(&s.server.approve(&foreign).await.unwrap(), "code").unwrap();
    let params = CallbackParams {
        code: Some(foreign_code),
        state: Some(state.clone()),
        ..Default::default()
    };
    let err = refused_completion(&s, &params).await;
    assert!(err.contains("invalid_grant"), "{err}");
    let view = c.show("prov").unwrap();
    assert_eq!(view.status, Status::Pending);
    assert!(view.status_reason.unwrap().contains("invalid_grant"));
    // ...and the state was used up.
    let err = refused_completion(&s, &params).await;
    assert!(err.contains("unknown or was already used"), "{err}");

    // A tampered state is refused before any token request.
    let pending = c.begin_authorization("prov").unwrap();
    let location = s.server.approve(&pending.authorize_url).await.unwrap();
    let mut tampered = callback(&location);
    tampered.state = Some(format!("{}x", tampered.state.unwrap()));
    let before = s.server.token_requests();
    let err = refused_completion(&s, &tampered).await;
    assert!(err.contains("state"), "{err}");
    assert_eq!(
        s.server.token_requests(),
        before,
        "a tampered state reached the token endpoint"
    );

    // The provider's error redirect.
    let pending = c.begin_authorization("prov").unwrap();
    let location = s.server.deny(&pending.authorize_url).await.unwrap();
    let err = refused_completion(&s, &callback(&location)).await;
    assert!(err.contains("access_denied"), "{err}");
    let view = c.show("prov").unwrap();
    assert_eq!(view.status, Status::Pending);
    assert!(view.status_reason.unwrap().contains("access_denied"));
    assert!(view.token.get("expires_at").is_none(), "tokens were stored");

    // A good flow still works afterwards.
    authorize(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_and_401_each_trigger_exactly_one_refresh() {
    let s = setup("authorization_code").await;
    s.server.set_access_ttl(30); // inside the 60 s skew: refreshed before use
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    s.server.set_access_ttl(3600);
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(
        s.server.token_requests_for("refresh_token"),
        1,
        "expiry within the skew did not refresh exactly once"
    );
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(
        s.server.token_requests_for("refresh_token"),
        1,
        "a fresh token was refreshed again"
    );

    // The provider invalidates the access token: 401 → one refresh → one retry.
    s.server.expire_all_access_tokens();
    let hits = s.server.hits("/api/user");
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("refresh_token"), 2);
    assert_eq!(
        s.server.hits("/api/user"),
        hits + 2,
        "expected the 401 and exactly one retry"
    );
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.token["last_refresh_outcome"], "ok");

    // The tokens each refresh brought (three of each: the code exchange's and two
    // refreshes') are in neither the database file nor any log.
    let mut secrets = s.server.issued_access_tokens();
    let refresh = s.server.issued_refresh_tokens();
    assert_eq!((secrets.len(), refresh.len()), (3, 3));
    secrets.extend(refresh);
    let raw = s.t.raw_database();
    assert!(!raw.is_empty());
    for secret in &secrets {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the raw database holds a token issued by a refresh"
        );
    }
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    capture::assert_no_secrets(&refs);
}

/// How long from now (ms) the stored access token of `prov` expires.
fn expires_in_ms(s: &Setup) -> i64 {
    let view = s.t.host.connections().show("prov").unwrap();
    let at = view.token["expires_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("no expiry stored: {}", view.token));
    at - keyhole::storage::now_ms()
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_answering_off_spec_connect_refresh_and_fail_as_they_mean() {
    for style in [
        AnswerStyle::OffSpec,
        AnswerStyle::Form,
        AnswerStyle::JsonAsText,
        AnswerStyle::Chunked,
    ] {
        let s = setup("authorization_code").await;
        s.server.set_token_answer_style(style);
        s.server.set_access_ttl(30); // inside the 60 s skew: refreshed before use
        authorize(&s).await;
        let left = expires_in_ms(&s);
        assert!(
            (25_000..=30_000).contains(&left),
            "{style:?}: the lifetime was not read: {left} ms"
        );

        s.t.upload("hello-http", "hello", &["prov"]).await;
        s.server.set_access_ttl(3600);
        assert_eq!(call(&s.t, user()).await["status"], 200, "{style:?}");
        assert_eq!(s.server.token_requests_for("refresh_token"), 1, "{style:?}");
        let view = s.t.host.connections().show("prov").unwrap();
        assert_eq!(
            view.token["last_refresh_outcome"], "ok",
            "{style:?}: {}",
            view.token
        );
        let left = expires_in_ms(&s);
        assert!(
            (3_590_000..=3_600_000).contains(&left),
            "{style:?}: the refreshed lifetime was not read: {left} ms"
        );
        // Fresh now: the next call sends no refresh.
        assert_eq!(call(&s.t, user()).await["status"], 200, "{style:?}");
        assert_eq!(s.server.token_requests_for("refresh_token"), 1, "{style:?}");

        // A refusal in the same form still means what it says: re-authorize.
        s.server.expire_all_access_tokens();
        s.server.reject_next_refreshes(1);
        assert_eq!(
            call(&s.t, user()).await["error"],
            "not-connected",
            "{style:?}"
        );
        let view = s.t.host.connections().show("prov").unwrap();
        assert_eq!(view.status, Status::NeedsReauth, "{style:?}");
        let reason = view.status_reason.unwrap_or_default();
        assert!(reason.contains("invalid_grant"), "{style:?}: {reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endless_token_answer_is_refused_unread_and_nothing_is_stored() {
    // Announced by its `Content-Length`, or found out while reading it (chunked).
    for style in [AnswerStyle::Json, AnswerStyle::Chunked] {
        let s = setup("authorization_code").await;
        s.server.set_token_answer_style(style);
        s.server.set_token_answer_padding(300 * 1024);
        let c = s.t.host.connections();
        let pending = c.begin_authorization("prov").unwrap();
        let location = s.server.approve(&pending.authorize_url).await.unwrap();
        let err = refused_completion(&s, &callback(&location)).await;
        assert!(err.contains("longer than 262144 bytes"), "{style:?}: {err}");
        let view = c.show("prov").unwrap();
        assert_ne!(view.status, Status::Connected, "{style:?}");
        assert!(
            view.token.get("expires_at").is_none(),
            "{style:?}: tokens were stored"
        );
        let issued = s.server.issued_access_tokens();
        let refs: Vec<&str> = issued.iter().map(String::as_str).collect();
        assert!(!refs.iter().any(|t| err.contains(t)), "{style:?}: {err}");

        // The same provider with a sane answer connects at once.
        s.server.set_token_answer_padding(0);
        authorize(&s).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_grant_is_kept_alive_and_a_dead_one_found_before_any_call() {
    use keyhole::connections::KeepAlive;
    let s = setup("authorization_code").await;
    authorize(&s).await;
    let c = s.t.host.connections();
    // Just connected: not idle for an hour, so nothing is asked.
    assert_eq!(c.keep_alive(Duration::from_secs(3600)).await.unwrap(), []);
    assert_eq!(s.server.token_requests_for("refresh_token"), 0);

    // Idle for any time at all: refreshed once, and the rotated token stored.
    let report = c.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(report, [("prov".to_string(), KeepAlive::Refreshed)]);
    assert_eq!(s.server.token_requests_for("refresh_token"), 1);
    let rotated = s.server.issued_refresh_tokens().last().unwrap().clone();
    assert!(s.server.is_refresh_token_active(&rotated));
    let view = c.show("prov").unwrap();
    assert_eq!(view.token["last_refresh_outcome"], "ok", "{}", view.token);
    // Refreshed just now: no longer idle.
    assert_eq!(c.keep_alive(Duration::from_secs(3600)).await.unwrap(), []);
    assert_eq!(s.server.token_requests_for("refresh_token"), 1);
    // Again: the server rotates refresh tokens and refuses a used one, so this works
    // only if keyhole stored the one the last refresh brought.
    let report = c.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(report, [("prov".to_string(), KeepAlive::Refreshed)]);
    assert!(!s.server.is_refresh_token_active(&rotated), "not rotated");

    // The provider ends the grant: the keep-alive finds it, no function has to.
    s.server.revoke_all();
    let report = c.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(report, [("prov".to_string(), KeepAlive::NeedsReauth)]);
    assert_eq!(c.show("prov").unwrap().status, Status::NeedsReauth);
    // A connection that needs re-authorization is left alone.
    assert_eq!(c.keep_alive(Duration::ZERO).await.unwrap(), []);
    assert_eq!(s.server.token_requests_for("refresh_token"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn keyhole_serve_refreshes_grants_idle_past_refresh_idle_after() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    let (child, _) = s.t.spawn_serve(&["--refresh-idle-after", "2s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.server.token_requests_for("refresh_token") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not refresh the idle grant within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keyhole_tests::env::stop_serve(child);
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Connected);
    assert_eq!(view.token["last_refresh_outcome"], "ok", "{}", view.token);

    // Off with 0s: nothing is refreshed however idle.
    let asked = s.server.token_requests_for("refresh_token");
    let (child, _) = s.t.spawn_serve(&["--refresh-idle-after", "0s"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    keyhole_tests::env::stop_serve(child);
    assert_eq!(s.server.token_requests_for("refresh_token"), asked);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_invocations_on_an_expired_token_cause_one_token_request() {
    let s = setup("authorization_code").await;
    // A token that lives two seconds, then is dead for keyhole and for the provider: a
    // call that went out with it would be answered 401.
    s.server.set_access_ttl(2);
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    s.server.set_access_ttl(3600);
    let old = s.server.issued_access_tokens()[0].clone();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    s.server.expire_all_access_tokens();
    assert!(!s.server.is_access_token_active(&old));
    s.server.set_token_delay(300);
    let hits = s.server.hits("/api/user");
    let t = Arc::new(s.t);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { call(&t, user()).await }));
    }
    for task in tasks {
        let out = task.await.unwrap();
        assert_eq!(out["status"], 200, "{out}");
    }
    assert_eq!(
        s.server.token_requests_for("refresh_token"),
        1,
        "refresh was not single-flight"
    );
    // Every call waited for the new token: none went out with the dead one (a 401 and a
    // retry would make two requests).
    assert_eq!(
        s.server.hits("/api/user"),
        hits + 100,
        "calls went out with the expired token"
    );
    let new = s.server.issued_access_tokens().last().unwrap().clone();
    let sent = s.server.requests_to("/api/user");
    let expected = format!("Bearer {new}");
    assert!(
        sent[sent.len() - 100..]
            .iter()
            .all(|r| r.header("authorization") == Some(expected.as_str())),
        "a call carried another token than the refreshed one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_answer_without_scope_keeps_the_granted_scopes() {
    let s = setup("authorization_code").await;
    // Asked for read and write; the user granted read only.
    s.t.host
        .connections()
        .edit(
            "prov",
            Some(vec!["read".into(), "write".into()]),
            None,
            Default::default(),
            false,
        )
        .unwrap();
    let c = s.t.host.connections();
    let pending = c.begin_authorization("prov").unwrap();
    let location = s
        .server
        .approve_with_scope(&pending.authorize_url, "read")
        .await
        .unwrap();
    c.complete_authorization(&callback(&location), Some("prov"))
        .await
        .unwrap();
    let granted = |c: &keyhole::connections::Connections| {
        c.show("prov").unwrap().token["granted_scopes"].clone()
    };
    assert_eq!(granted(c), serde_json::json!(["read"]));
    s.t.upload("hello-http", "hello", &["prov"]).await;
    s.server.set_omit_scope_on_refresh(true);
    s.server.expire_all_access_tokens();
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("refresh_token"), 1);
    assert_eq!(granted(c), serde_json::json!(["read"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_queued_behind_a_failing_refresh_do_not_each_ask_again() {
    let s = setup("authorization_code").await;
    s.server.set_access_ttl(30); // inside the skew: due for a refresh, still usable
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    s.server.fail_next_token_requests(100, 503);
    s.server.set_token_delay(200);
    let t = Arc::new(s.t);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { call(&t, user()).await }));
    }
    for task in tasks {
        // The token has not expired: each call goes on with it.
        assert_eq!(task.await.unwrap()["status"], 200);
    }
    assert_eq!(
        s.server.token_requests_for("refresh_token"),
        1,
        "the callers queued behind the failed refresh asked the provider again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_on_an_expired_token_send_one_refresh() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    // Both processes get a 401 and want to refresh; the provider is slow to answer, so
    // without a lock across processes both would present the same (rotating) token.
    s.server.set_token_delay(600);
    s.server.expire_all_access_tokens();
    let input = user().to_string();
    let children: Vec<_> = (0..2)
        .map(|_| s.t.spawn_cli(&["run", "hello", "--input", &input]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(answer["status"], 200, "{answer}");
    }
    assert_eq!(
        s.server.token_requests_for("refresh_token"),
        1,
        "both processes refreshed"
    );
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Connected);
    assert!(
        s.server
            .is_refresh_token_active(s.server.issued_refresh_tokens().last().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_refresh_token_survives_a_restart() {
    let mut s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    s.server.expire_all_access_tokens();
    assert_eq!(call(&s.t, user()).await["status"], 200); // rotates the refresh token
    let latest = s.server.issued_refresh_tokens().last().unwrap().clone();
    s.t.reopen();
    s.server.expire_all_access_tokens();
    // Presenting the pre-rotation token would be reuse and kill the grant.
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert!(
        !s.server.is_refresh_token_active(&latest),
        "the rotated token was not the one used"
    );
    assert!(
        s.server
            .is_refresh_token_active(s.server.issued_refresh_tokens().last().unwrap())
    );

    // A response without a refresh token keeps the old one: the second call refreshes
    // (its token is inside the skew) with the kept token. (A new process: within one, a
    // 401 forces a refresh at most once per cooldown.)
    s.server.set_omit_refresh_token_on_refresh(true);
    s.server.set_rotate_refresh(false);
    s.server.set_access_ttl(30);
    s.t.reopen();
    s.server.expire_all_access_tokens();
    let before = s.server.token_requests_for("refresh_token");
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("refresh_token"), before + 2);
}

/// Upload `hello-http` as `hello`, granted `prov`, with an invocation timeout of `ms`.
async fn upload_hello_with_timeout(t: &TestHost, ms: u64) {
    let options = keyhole::UploadOptions {
        grants: vec!["prov".into()],
        limits: Some(keyhole::config::Limits {
            timeout_ms: ms,
            ..Default::default()
        }),
        ..Default::default()
    };
    t.host
        .upload(
            "hello",
            keyhole_tests::plugins::plugin("hello-http"),
            options,
        )
        .await
        .expect("upload");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_that_outlasts_its_invocation_still_stores_the_rotated_token() {
    let s = setup("authorization_code").await;
    s.server.set_access_ttl(30); // inside the skew: every call refreshes first
    authorize(&s).await;
    // Long enough for the guest to reach its call on a busy machine; the provider takes
    // longer still.
    upload_hello_with_timeout(&s.t, 4000).await;
    // The provider rotates the refresh token at once but answers after the invocation
    // has timed out.
    s.server.set_token_answer_delay(7000);

    // A one-shot command: the invocation times out, and the process must not exit (and
    // cut the refresh off) before the provider's answer is stored.
    let input = user().to_string();
    let out = s.t.cli(&["run", "hello", "--input", &input, "--json"]);
    let answer: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", out.stdout, out.stderr);
    });
    assert_eq!(answer["outcome"], "timeout", "{answer}");
    assert_eq!(s.server.token_requests_for("refresh_token"), 1);
    let rotated = s.server.issued_refresh_tokens().last().unwrap().clone();
    assert!(s.server.is_refresh_token_active(&rotated));

    // In one process: the invocation is cut off by its timeout; the refresh goes on.
    let inv = s.t.host.invoke("hello", &input).await.unwrap();
    assert_eq!(inv.result.unwrap_err().kind(), "timeout");
    s.t.host.refreshes_settled().await;
    assert_eq!(s.server.token_requests_for("refresh_token"), 2);
    assert!(
        !s.server.is_refresh_token_active(&rotated),
        "the second refresh did not present the token the first one brought"
    );

    // Each refresh presented the token the one before it brought: presenting one the
    // provider had already rotated away would read as reuse and end the grant.
    s.server.set_token_answer_delay(0);
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("refresh_token"), 3);
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Connected, "{:?}", view.status_reason);
    assert!(
        s.server
            .is_refresh_token_active(s.server.issued_refresh_tokens().last().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_whose_answer_cannot_be_stored_at_once_keeps_trying() {
    let s = setup("authorization_code").await;
    s.server.set_access_ttl(30); // inside the skew: every call refreshes first
    authorize(&s).await;
    upload_hello_with_timeout(&s.t, 30_000).await;
    // Another process holds the database's write lock past the busy timeout (10 s) while
    // the provider's answer comes back; it lets go once storing has failed once.
    let other = rusqlite::Connection::open(s.t.home().join("keyhole.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    const FAILED_ONCE: &str = "could not store the refreshed tokens yet";
    let before = capture::text().matches(FAILED_ONCE).count();
    let release = std::thread::spawn(move || {
        let waited = std::time::Instant::now();
        while capture::text().matches(FAILED_ONCE).count() == before
            && waited.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        other.execute_batch("COMMIT").unwrap();
    });
    let inv = s.t.host.invoke("hello", &user().to_string()).await.unwrap();
    release.join().unwrap();
    assert!(
        capture::text().matches(FAILED_ONCE).count() > before,
        "storing the refreshed tokens never had to be tried again"
    );
    let output: Value = serde_json::from_str(&inv.result.unwrap()).unwrap();
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(s.server.token_requests_for("refresh_token"), 1);

    // The rotated token was stored: the next refresh presents it, not the old one.
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("refresh_token"), 2);
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Connected, "{:?}", view.status_reason);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_needs_reauth_and_transient_failures_do_not() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;

    // Transient: the provider is down. Status unchanged, error typed, no storm.
    s.server.expire_all_access_tokens();
    s.server.fail_next_token_requests(5, 503);
    let out = call(&s.t, user()).await;
    assert_eq!(out["error"], "upstream-unreachable", "{out}");
    let before = s.server.token_requests();
    let out = call(&s.t, user()).await;
    assert_eq!(out["error"], "upstream-unreachable", "{out}");
    assert_eq!(
        s.server.token_requests(),
        before,
        "refresh retried without backoff"
    );
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Connected);
    assert!(
        view.token["last_refresh_outcome"]
            .as_str()
            .unwrap()
            .starts_with("transient")
    );

    // Terminal: invalid_grant, also when sent with status 200 (GitHub, Slack, Zoho).
    for errors_with_200 in [true, false] {
        let s = setup("authorization_code").await;
        authorize(&s).await;
        s.t.upload("hello-http", "hello", &["prov"]).await;
        s.server.set_errors_with_200(errors_with_200);
        s.server.expire_all_access_tokens();
        s.server.reject_next_refreshes(1);
        assert_eq!(call(&s.t, user()).await["error"], "not-connected");
        let view = s.t.host.connections().show("prov").unwrap();
        assert_eq!(view.status, Status::NeedsReauth);
        assert!(view.status_reason.unwrap().contains("invalid_grant"));
        assert_eq!(call(&s.t, user()).await["error"], "not-connected");

        // A denied re-authorization leaves it needing one.
        let c = s.t.host.connections();
        let pending = c.begin_authorization("prov").unwrap();
        let location = s.server.deny(&pending.authorize_url).await.unwrap();
        assert!(
            c.complete_authorization(&callback(&location), Some("prov"))
                .await
                .is_err()
        );
        let view = c.show("prov").unwrap();
        assert_eq!(view.status, Status::NeedsReauth);
        assert!(view.status_reason.unwrap().contains("access_denied"));

        // Re-authorize in place: same name, same grants.
        authorize(&s).await;
        assert_eq!(call(&s.t, user()).await["status"], 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_providers_own_dead_refresh_token_code_needs_reauth_when_the_service_names_it() {
    // GitHub answers a dead refresh token with `bad_refresh_token`, status 200.
    for (named, status) in [(true, Status::NeedsReauth), (false, Status::Connected)] {
        let s = setup_with("authorization_code", |toml| {
            if named {
                toml.replace(
                    "token_auth_method",
                    "reauth_errors = [\"bad_refresh_token\"]\ntoken_auth_method",
                )
            } else {
                toml
            }
        })
        .await;
        authorize(&s).await;
        s.t.upload("hello-http", "hello", &["prov"]).await;
        s.server.set_errors_with_200(true);
        s.server.set_refresh_refusal_code("bad_refresh_token");
        s.server.expire_all_access_tokens();
        s.server.reject_next_refreshes(1);
        let out = call(&s.t, user()).await;
        let view = s.t.host.connections().show("prov").unwrap();
        assert_eq!(view.status, status, "named: {named}; {out}");
        if named {
            assert_eq!(out["error"], "not-connected");
            assert!(view.status_reason.unwrap().contains("bad_refresh_token"));
        } else {
            // Not named: taken as passing (retried after a backoff).
            assert_eq!(out["error"], "upstream-unreachable");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_error_text_is_scrubbed_and_never_reaches_a_guest() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    let refresh = s.server.issued_refresh_tokens().last().unwrap().clone();
    // The provider's error text quotes the refresh token and the client's Basic header.
    s.server.set_quote_in_errors(true);
    s.server.expire_all_access_tokens();
    s.server.fail_next_token_requests(1, 503);
    let out = call(&s.t, user()).await;
    assert_eq!(out["error"], "upstream-unreachable", "{out}");
    let text = out.to_string();
    assert!(
        !text.contains(&refresh) && !text.contains("cannot refresh"),
        "the provider's text reached the guest: {text}"
    );
    let view = s.t.cli(&["connections", "show", "prov", "--json"]).json();
    let outcome = view["token"]["last_refresh_outcome"].as_str().unwrap();
    assert!(
        outcome.contains("cannot refresh [redacted] now (client Basic [redacted])"),
        "{outcome}"
    );
    let basic = keyhole_tests::fake_api::basic_blob(CLIENT_ID, CLIENT_SECRET);
    let raw = String::from_utf8_lossy(&s.t.raw_database()).into_owned();
    assert!(!raw.contains(&refresh) && !raw.contains(&basic));
    capture::assert_no_secrets(&[&refresh, CLIENT_SECRET, &basic]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_request_repeats_the_authorization_requests_redirect_uri() {
    let s = setup("authorization_code").await;
    let other = format!("http://127.0.0.1:{}/oauth/callback", free_port());
    s.server.register_client(
        CLIENT_ID,
        CLIENT_SECRET,
        [s.redirect.clone(), other.clone()],
        ClientAuth::Basic,
    );
    let c = s.t.host.connections();
    let pending = c.begin_authorization("prov").unwrap();
    // The admin points the service at another callback URL while the browser is out.
    let config = ClientConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        redirect_url: Some(other),
    };
    c.set_oauth_client("prov", &config).unwrap();
    let location = s.server.approve(&pending.authorize_url).await.unwrap();
    assert!(location.starts_with(&s.redirect), "{location}");
    let view = c
        .complete_authorization(&callback(&location), Some("prov"))
        .await
        .unwrap();
    assert_eq!(view.status, Status::Connected);
    let token = s.server.requests_to("/token");
    let form = token.last().unwrap().form();
    let sent = form
        .iter()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v);
    assert_eq!(sent, Some(&s.redirect));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_with_pkce_off_connects_to_a_provider_without_pkce() {
    // Slack, Zoho, HubSpot and Notion's presets say `pkce = false`: their providers do
    // not take the PKCE parameters. Such a provider refuses them as unknown.
    let s = setup_with("authorization_code", |toml| {
        toml.replace("token_auth_method", "pkce = false\ntoken_auth_method")
    })
    .await;
    s.server.set_pkce_supported(false);
    let pending = s.t.host.connections().begin_authorization("prov").unwrap();
    assert!(
        !pending.authorize_url.contains("code_challenge"),
        "{}",
        pending.authorize_url
    );
    authorize_with(&s, pending).await;
    let token = s.server.requests_to("/token");
    let form = token.last().unwrap().form();
    assert!(form.iter().all(|(k, _)| k != "code_verifier"), "{form:?}");
    s.t.upload("hello-http", "hello", &["prov"]).await;
    assert_eq!(call(&s.t, user()).await["status"], 200);

    // By default PKCE goes along, and such a provider refuses the authorization.
    let s = setup("authorization_code").await;
    s.server.set_pkce_supported(false);
    let pending = s.t.host.connections().begin_authorization("prov").unwrap();
    assert!(pending.authorize_url.contains("code_challenge_method=S256"));
    let location = s.server.approve(&pending.authorize_url).await.unwrap();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cannot_make_keyhole_hammer_the_token_endpoint_or_end_a_connection() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    let always_401 = json!({"connection": "prov", "target": "/always-401", "repeat": 5});
    let before = s.server.token_requests_for("refresh_token");
    let out = call(&s.t, always_401.clone()).await;
    assert_eq!(out["status"], 401, "{out}");
    assert_eq!(out["sent"], 5, "{out}");
    let out = call(&s.t, always_401.clone()).await;
    assert_eq!(out["status"], 401, "{out}");
    assert_eq!(
        s.server.token_requests_for("refresh_token"),
        before + 1,
        "a 401 forced more than one refresh within the cooldown"
    );
    assert_eq!(call(&s.t, user()).await["status"], 200);

    // Without a refresh token, a 401 on a token that has not expired is the guest's
    // answer; the connection stays connected until the token really expires.
    s.server.set_refresh_token_on_code(false);
    s.server.set_access_ttl(3);
    authorize(&s).await;
    let out = call(&s.t, json!({"connection": "prov", "target": "/always-401"})).await;
    assert_eq!(out["status"], 401, "{out}");
    assert_eq!(call(&s.t, user()).await["status"], 200);
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Connected);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(call(&s.t, user()).await["error"], "not-connected");
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::NeedsReauth);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_calls_the_provider_and_reconnect_works_in_place() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    assert_eq!(call(&s.t, user()).await["status"], 200);
    let access = s.server.issued_access_tokens().last().unwrap().clone();
    let refresh = s.server.issued_refresh_tokens().last().unwrap().clone();

    let out = s.t.cli(&["connections", "revoke", "prov"]);
    out.ok();
    assert_eq!(s.server.revocations(), 2);
    assert!(!s.server.is_access_token_active(&access));
    assert!(!s.server.is_refresh_token_active(&refresh));
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.status, Status::Revoked);
    assert!(
        view.status_reason
            .unwrap()
            .contains("revoked at the provider")
    );
    assert_eq!(call(&s.t, user()).await["error"], "not-connected");

    authorize(&s).await;
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(
        s.t.host
            .connections()
            .show("prov")
            .unwrap()
            .granted_functions,
        vec!["hello".to_string()]
    );

    // The provider fails to revoke: wiped locally all the same, but the command says the
    // grant may still be live there, and exits 1.
    let live = s.server.issued_refresh_tokens().last().unwrap().clone();
    s.server.fail_next_revocations(2);
    let out = s.t.cli(&["connections", "revoke", "prov", "--json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("did not confirm every revocation"),
        "{}",
        out.stderr
    );
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["connection"]["status"], "revoked");
    assert_eq!(answer["provider"][0]["outcome"], "failed", "{answer}");
    assert!(s.server.is_refresh_token_active(&live));

    // The same over HTTP: the answer carries the provider's outcomes, and an unconfirmed
    // revocation is a 502 an API client cannot mistake for success.
    authorize(&s).await;
    let admin =
        s.t.cli(&["tokens", "create", "--scope", "admin"])
            .ok()
            .trim()
            .to_string();
    let (mut child, base) = s.t.spawn_serve(&[]);
    let http = reqwest::Client::new();
    let revoke = || {
        http.post(format!("{base}/v1/connections/prov/revoke"))
            .bearer_auth(&admin)
            .send()
    };
    let live_over_http = s.server.issued_refresh_tokens().last().unwrap().clone();
    s.server.fail_next_revocations(2);
    let r = revoke().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::BAD_GATEWAY);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        answer["error"]["kind"], "revocation-unconfirmed",
        "{answer}"
    );
    assert_eq!(answer["connection"]["status"], "revoked", "{answer}");
    assert_eq!(answer["provider"][0]["outcome"], "failed", "{answer}");
    assert!(s.server.is_refresh_token_active(&live_over_http));
    authorize(&s).await;
    let revoked = s.server.issued_refresh_tokens().last().unwrap().clone();
    let r = revoke().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["provider"][0]["outcome"], "revoked", "{answer}");
    assert!(!s.server.is_refresh_token_active(&revoked));
    keyhole_tests::env::signal(&child, "-INT");
    assert!(child.wait().unwrap().success());

    // Deleting the connection revokes at the provider too: keyhole never forgets tokens
    // that are still live there. While a function holds a grant, it asks first.
    authorize(&s).await;
    let deleted = s.server.issued_refresh_tokens().last().unwrap().clone();
    let refused = s.t.cli(&["connections", "delete", "prov"]);
    assert!(
        refused.err().contains("--with-grants"),
        "{}",
        refused.stderr
    );
    assert!(s.server.is_refresh_token_active(&deleted));
    let out = s.t.cli(&["connections", "delete", "prov", "--with-grants"]);
    assert!(
        out.ok().contains("revoked at the provider"),
        "{}",
        out.stdout
    );
    assert!(!s.server.is_refresh_token_active(&deleted));
    assert!(
        s.t.cli(&["connections", "show", "prov"])
            .err()
            .contains("no connection named")
    );
    capture::assert_no_secrets(&[
        &deleted,
        CLIENT_SECRET,
        &access,
        &refresh,
        &live,
        &live_over_http,
        &revoked,
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_refusing_to_revoke_a_dead_token_is_not_a_failed_revocation() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    let access = s.server.issued_access_tokens().last().unwrap().clone();
    let refresh = s.server.issued_refresh_tokens().last().unwrap().clone();
    // Like Google: 400 `invalid_token` for a token that is no longer active. Revoking the
    // refresh token ends its access token, so the second request gets that answer.
    s.server.set_invalid_token_on_dead_revocation(true);
    let out = s.t.cli(&["connections", "revoke", "prov", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["provider"][0]["outcome"], "revoked", "{answer}");
    assert_eq!(
        answer["provider"][1]["outcome"], "already-invalid",
        "{answer}"
    );
    assert!(!s.server.is_access_token_active(&access));
    assert!(!s.server.is_refresh_token_active(&refresh));
    assert_eq!(s.server.revocations(), 1);

    // Plain output says so, and a refusal for another reason still fails the command.
    authorize(&s).await;
    s.server.expire_all_access_tokens();
    let out = s.t.cli(&["connections", "revoke", "prov"]);
    let stdout = out.ok();
    assert!(
        stdout.contains("access token: already expired or revoked at the provider"),
        "{stdout}"
    );
    authorize(&s).await;
    s.server.fail_next_revocations(1);
    let out = s.t.cli(&["connections", "revoke", "prov", "--json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["provider"][0]["outcome"], "failed", "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_while_a_revocation_is_on_its_way_leaves_nothing_live() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    s.t.upload("hello-http", "hello", &["prov"]).await;
    s.server.set_revoke_delay(600);
    // The provider drops the access token: the next call gets 401 and refreshes.
    s.server.expire_all_access_tokens();
    let c = s.t.host.connections();
    let revoking = tokio::spawn({
        let c = c.clone();
        async move { c.revoke("prov").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let out = call(&s.t, user()).await;
    assert_ne!(out["status"], 200, "{out}");
    let revocation = revoking.await.unwrap().unwrap();
    assert!(revocation.wiped);
    assert_eq!(c.show("prov").unwrap().status, Status::Revoked);
    for token in s.server.issued_refresh_tokens() {
        assert!(
            !s.server.is_refresh_token_active(&token),
            "a refresh token is live"
        );
    }
    for token in s.server.issued_access_tokens() {
        assert!(
            !s.server.is_access_token_active(&token),
            "an access token is live"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_end_to_end() {
    let s = setup("client_credentials").await;
    let out = s.t.cli(&["connections", "connect", "prov"]);
    assert!(
        out.ok().contains("connection prov is connected"),
        "{}",
        out.stdout
    );
    assert_eq!(s.server.token_requests_for("client_credentials"), 1);
    s.t.upload("hello-http", "hello", &["prov"]).await;
    assert_eq!(call(&s.t, user()).await["status"], 200);
    // No refresh token: on expiry the grant is simply run again.
    s.server.expire_all_access_tokens();
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("client_credentials"), 2);
    assert!(!String::from_utf8_lossy(&s.t.raw_database()).contains(CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_connections_record_whose_they_are() {
    let s = setup_with("client_credentials", naming_the_account).await;
    let out = s.t.cli(&["connections", "connect", "prov"]);
    // With client credentials the client itself is the resource owner.
    let want = format!("connection prov is connected as {CLIENT_ID:?}");
    assert!(out.ok().contains(&want), "{}", out.stdout);
    let view = s.t.host.connections().show("prov").unwrap();
    assert_eq!(view.account.as_deref(), Some(CLIENT_ID));
    assert_eq!(view.status_reason, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_client_id_or_secret_is_refused_and_the_saved_client_stays() {
    let s = setup("authorization_code").await;
    let c = s.t.host.connections();
    for (id, secret) in [
        ("", CLIENT_SECRET),
        ("  ", CLIENT_SECRET),
        (CLIENT_ID, ""),
        (CLIENT_ID, " \t"),
    ] {
        let config = ClientConfig {
            client_id: id.into(),
            client_secret: Some(Secret::new(secret)),
            redirect_url: None,
        };
        let e = c.set_oauth_client("prov", &config).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{id:?}/{secret:?}: {e}");
    }
    // The client saved before is untouched: authorizing still works.
    authorize(&s).await;
    assert_eq!(c.show("prov").unwrap().status, Status::Connected);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_its_issuer_declared_a_response_from_another_issuer_is_refused_unused() {
    let s = setup("authorization_code").await;
    let declared = format!(
        "{}issuer = \"{}\"\n",
        service_toml(&s.server, "authorization_code", "basic"),
        s.server.issuer()
    );
    let file = s.t.home().join("prov.toml");
    std::fs::write(&file, &declared).unwrap();
    s.t.cli(&["services", "edit", "prov", "--file", file.to_str().unwrap()])
        .ok();
    // The provider names itself as declared: connected.
    authorize(&s).await;

    let c = s.t.host.connections();
    let exchanges = s.server.token_requests_for("authorization_code");
    for (sent, says) in [
        (
            Some("https://attacker.example"),
            "came from issuer \"https://attacker.example\"",
        ),
        (None, "names no issuer"),
    ] {
        s.server.set_issuer_in_responses(sent);
        let pending = c.begin_authorization("prov").unwrap();
        let location = s.server.approve(&pending.authorize_url).await.unwrap();
        let err = refused_completion(&s, &callback(&location)).await;
        assert!(err.contains(says) && err.contains("RFC 9207"), "{err}");
        // Refused before the code went anywhere; the working tokens stay.
        assert_eq!(s.server.token_requests_for("authorization_code"), exchanges);
        let view = c.show("prov").unwrap();
        assert_eq!(view.status, Status::Connected);
        assert!(view.status_reason.unwrap().contains("RFC 9207"));
    }

    // An issuer must be a plain https URL, and only where there is an authorization step.
    for (bad, says) in [
        ("issuer = \"https://{tenant}.example\"", "placeholders"),
        ("issuer = \"http://idp.example\"", "uses http"),
        ("issuer = \"https://idp.example/?x=1\"", "has a query"),
    ] {
        let def = format!(
            "{}{bad}\n",
            service_toml(&s.server, "authorization_code", "basic")
        );
        let e = ServiceDef::from_toml(&def).unwrap_err().to_string();
        assert!(
            e.contains("oauth2.issuer") && e.contains(says),
            "{bad}: {e}"
        );
    }
    let def = format!(
        "{}issuer = \"https://idp.example\"\n",
        service_toml(&s.server, "client_credentials", "body")
    );
    let e = ServiceDef::from_toml(&def).unwrap_err().to_string();
    assert!(e.contains("client_credentials grant has none"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_without_a_revocation_endpoint_says_the_grant_stays_live_there() {
    let s = setup("authorization_code").await;
    authorize(&s).await;
    let without = service_toml(&s.server, "authorization_code", "basic")
        .lines()
        .filter(|l| !l.starts_with("revocation_url"))
        .collect::<Vec<_>>()
        .join("\n");
    let file = s.t.home().join("prov.toml");
    std::fs::write(&file, without).unwrap();
    s.t.cli(&["services", "edit", "prov", "--file", file.to_str().unwrap()])
        .ok();
    let out = s.t.cli(&["connections", "revoke", "prov"]);
    assert!(
        out.ok().contains("stays live at the provider")
            && out.stdout.contains("remove keyhole's access"),
        "{}",
        out.stdout
    );
    assert_eq!(s.server.revocations(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_the_token_endpoint_needs_confirming() {
    // The refresh token and the client secret go to the token endpoint: a service edit
    // that points it elsewhere moves them, as a new API base URL would move an API key.
    let s = setup("authorization_code").await;
    authorize(&s).await;
    let elsewhere = OAuthServer::start().await;
    let moved = service_toml(&s.server, "authorization_code", "basic")
        .replace(&s.server.token_url(), &elsewhere.token_url());
    let file = s.t.home().join("prov.toml");
    std::fs::write(&file, moved).unwrap();
    let file = file.to_str().unwrap();
    let refused = s.t.cli(&["services", "edit", "prov", "--file", file]);
    assert!(
        refused.err().contains("--move-credentials")
            && refused
                .stderr
                .contains(&elsewhere.base_url().replace("http://", "")),
        "{}",
        refused.stderr
    );
    s.t.cli(&[
        "services",
        "edit",
        "prov",
        "--file",
        file,
        "--move-credentials",
    ])
    .ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn re_authorizing_as_another_account_is_recorded_and_said() {
    let s = setup_with("authorization_code", naming_the_account).await;
    let view = authorize_as(&s, "alice").await;
    assert_eq!(view.status, Status::Connected);
    assert_eq!(view.account.as_deref(), Some("alice"));
    assert_eq!(view.status_reason, None);

    // The same account again: nothing to say.
    let view = authorize_as(&s, "alice").await;
    assert_eq!(view.account.as_deref(), Some("alice"));
    assert_eq!(view.status_reason, None);

    // Another account: the authorization stands, and the connection says whose it is now.
    let view = authorize_as(&s, "bob").await;
    assert_eq!(view.status, Status::Connected);
    assert_eq!(view.account.as_deref(), Some("bob"));
    let note = view.status_reason.expect("a note on the change");
    assert!(
        note.contains(r#"now connected as "bob", not "alice""#),
        "{note}"
    );
    s.t.upload("hello-http", "hello", &["prov"]).await;
    let answer = call(&s.t, user()).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .contains(r#""login":"bob""#),
        "{answer}"
    );

    // A refresh keeps the grant, and with it the note.
    let refreshes = s.server.token_requests_for("refresh_token");
    s.server.expire_all_access_tokens();
    assert_eq!(call(&s.t, user()).await["status"], 200);
    assert_eq!(s.server.token_requests_for("refresh_token"), refreshes + 1);
    let view = s.t.host.connections().show("prov").unwrap();
    assert!(
        view.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("bob")),
        "{:?}",
        view.status_reason
    );

    // `connections show` has it too; the note goes once the account is the same again.
    let out = s.t.cli(&["connections", "show", "prov"]);
    let account_line = out.ok().lines().find(|l| l.starts_with("account"));
    assert_eq!(
        account_line.map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["account", "bob"]),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(r#"not "alice" as before"#),
        "{}",
        out.stdout
    );
    let view = authorize_as(&s, "bob").await;
    assert_eq!(view.status_reason, None);
}

/// A provider whose token and revocation endpoints are where the connection's params put
/// them, like GitLab's `https://{host}/oauth/token`. The test servers differ by port,
/// which a host param cannot spell, so these params are whole URLs; with `choices`, the
/// definition lists the servers it allows.
fn hosted_service(api: &OAuthServer, grant: &str, choices: &[&OAuthServer]) -> String {
    let authorize = if grant == "authorization_code" {
        format!("authorize_url = \"{}\"\n", api.authorize_url())
    } else {
        String::new()
    };
    let choices = |url: fn(&OAuthServer) -> String| {
        if choices.is_empty() {
            return String::new();
        }
        let list: Vec<String> = choices.iter().map(|s| format!("\"{}\"", url(s))).collect();
        format!("choices = [{}]\n", list.join(", "))
    };
    format!(
        r#"name = "hosted"
display_name = "Self-hosted provider"
auth = "oauth2"
base_url = "{base}/api"

[[params]]
name = "token_endpoint"
display_name = "Token endpoint"
location = "url"
{token_choices}
[[params]]
name = "revocation_endpoint"
display_name = "Revocation endpoint"
location = "url"
{revoke_choices}
[verify]
path = "/user"

[oauth2]
grant = "{grant}"
{authorize}token_url = "{{token_endpoint}}"
revocation_url = "{{revocation_endpoint}}"
scopes = ["read"]
default_scopes = ["read"]
token_auth_method = "body"
"#,
        base = api.base_url(),
        token_choices = choices(OAuthServer::token_url),
        revoke_choices = choices(OAuthServer::revoke_url),
    )
}

/// Two providers that both know the test client: `registered`, where the client was
/// registered, and `other`, a host a connection may point at by mistake (or on purpose),
/// which would take whatever it is sent.
async fn two_hosts(redirect: &str) -> (OAuthServer, OAuthServer) {
    let registered = OAuthServer::start().await;
    let other = OAuthServer::start().await;
    for s in [&registered, &other] {
        s.register_client(CLIENT_ID, CLIENT_SECRET, [redirect], ClientAuth::Body);
    }
    (registered, other)
}

/// `token_endpoint=…` and `revocation_endpoint=…` for `server`.
fn endpoints_at(server: &OAuthServer) -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("token_endpoint".to_string(), server.token_url()),
        ("revocation_endpoint".to_string(), server.revoke_url()),
    ])
}

fn endpoint_flags(server: &OAuthServer) -> Vec<String> {
    endpoints_at(server)
        .into_iter()
        .flat_map(|(k, v)| ["--param".to_string(), format!("{k}={v}")])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_secret_goes_only_to_the_host_the_client_is_registered_at() {
    let redirect = format!("http://127.0.0.1:{}/oauth/callback", free_port());
    let (registered, other) = two_hosts(&redirect).await;
    let t = TestHost::new();
    let file = t.home().join("hosted.toml");
    std::fs::write(
        &file,
        hosted_service(&registered, "authorization_code", &[]),
    )
    .unwrap();
    t.cli(&["services", "add", "--file", file.to_str().unwrap()])
        .ok();

    // Where the app is registered cannot be guessed: `set-client` asks for it.
    let set_client = |extra: &[String]| {
        let mut args = vec![
            "services",
            "set-client",
            "hosted",
            "--client-id",
            CLIENT_ID,
            "--client-secret-stdin",
            "--redirect-url",
            &redirect,
        ];
        args.extend(extra.iter().map(String::as_str));
        t.cli_with(&args, Some(&format!("{CLIENT_SECRET}\n")), &[])
    };
    let refused = set_client(&[]);
    assert!(
        refused.err().contains("add --param token_endpoint=VALUE"),
        "{}",
        refused.stderr
    );
    let mut flags = endpoint_flags(&registered);
    flags.push("--json".into());
    let saved = set_client(&flags).json();
    assert_eq!(
        saved["oauth_client_origins"],
        json!([registered.base_url()])
    );
    let shown = t.cli(&["services", "show", "hosted", "--json"]).json();
    assert_eq!(
        shown["oauth_client_origins"],
        json!([registered.base_url()])
    );
    let shown = t.cli(&["services", "show", "hosted"]);
    assert!(
        shown
            .ok()
            .lines()
            .any(|l| l.starts_with("client sent to") && l.contains(&registered.base_url())),
        "{}",
        shown.stdout
    );

    // A connection pointed at the other host (a new one moves freely: it holds nothing)
    // does not get to start an authorization, whose code would take the secret there.
    t.cli(&["connections", "add", "gl", "--service", "hosted"])
        .ok();
    let mut edit = vec!["connections", "edit", "gl"];
    let to_other = endpoint_flags(&other);
    edit.extend(to_other.iter().map(String::as_str));
    t.cli(&edit).ok();
    let out = t.cli(&["connections", "connect", "gl", "--no-listen", "--json"]);
    assert_eq!(out.code, 1, "{}", out.all());
    let error: Value = serde_json::from_str(out.stderr.lines().last().unwrap()).unwrap();
    assert_eq!(error["error"]["kind"], "oauth-error", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "registered for {}, not for {}",
            registered.base_url(),
            other.base_url()
        )) && message.contains("set-client hosted --param token_endpoint="),
        "{message}"
    );

    // Pointed at the registered host, it connects.
    let c = t.host.connections();
    c.edit("gl", None, None, endpoints_at(&registered), false)
        .unwrap();
    let pending = c.begin_authorization("gl").unwrap();
    let location = registered.approve(&pending.authorize_url).await.unwrap();
    let view = c
        .complete_authorization(&callback(&location), Some("gl"))
        .await
        .unwrap();
    assert_eq!(view.status, Status::Connected);

    // Moved to the other host, confirmed: the tokens may go there, the client does not.
    // A refresh is refused...
    let mut edit = vec!["connections", "edit", "gl", "--move-credentials"];
    edit.extend(to_other.iter().map(String::as_str));
    t.cli(&edit).ok();
    t.upload("hello-http", "hello", &["gl"]).await;
    registered.expire_all_access_tokens();
    let input = json!({"connection": "gl", "target": "/user"}).to_string();
    let _ = t.host.invoke("hello", &input).await.unwrap();
    // ...and so is the revocation, which says so and exits 1 (the grant may be live).
    let revoked = t.cli(&["connections", "revoke", "gl"]);
    assert_eq!(revoked.code, 1, "{}", revoked.all());
    assert!(
        revoked
            .stdout
            .contains("so its id and secret were not sent there"),
        "{}",
        revoked.all()
    );
    assert_eq!(registered.token_requests_for("refresh_token"), 0);
    assert!(
        other.requests().is_empty(),
        "the other host was sent {:?}",
        other.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    capture::assert_no_secrets(&[CLIENT_SECRET]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_are_not_sent_to_a_host_the_client_is_not_registered_at() {
    let redirect = format!("http://127.0.0.1:{}/oauth/callback", free_port());
    let (registered, other) = two_hosts(&redirect).await;
    let t = TestHost::new();
    let c = t.host.connections();
    let def = ServiceDef::from_toml(&hosted_service(&registered, "client_credentials", &[]));
    c.catalog().add(&def.unwrap()).unwrap();
    let config = ClientConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        redirect_url: None,
    };
    let origins = c
        .set_oauth_client_at("hosted", &config, &endpoints_at(&registered))
        .unwrap();
    assert_eq!(origins, [registered.base_url()]);
    c.add("cc", "hosted", vec![], None).unwrap();
    c.edit("cc", None, None, endpoints_at(&other), false)
        .unwrap();

    let out = t.cli(&["connections", "connect", "cc"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("were not sent there"), "{}", out.stderr);
    assert!(other.requests().is_empty(), "{:?}", other.requests());
    assert_eq!(c.show("cc").unwrap().status, Status::Pending);

    c.edit("cc", None, None, endpoints_at(&registered), false)
        .unwrap();
    t.cli(&["connections", "connect", "cc"]).ok();
    assert_eq!(registered.token_requests_for("client_credentials"), 1);
    assert!(other.requests().is_empty(), "{:?}", other.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gitlab_client_is_sent_only_to_the_instance_it_is_registered_at() {
    const SECRET: &str = "kh-gitlab-client-secret-71c3";
    let t = TestHost::new();
    let set_client = |service: &str, extra: &[&str]| {
        let mut args = vec![
            "services",
            "set-client",
            service,
            "--client-id",
            "gl-app",
            "--client-secret-stdin",
        ];
        args.extend(extra);
        t.cli_with(&args, Some(&format!("{SECRET}\n")), &[])
    };
    // Without --param, the default host: gitlab.com.
    let saved = set_client("gitlab", &["--json"]).json();
    assert_eq!(saved["oauth_client_origins"], json!(["https://gitlab.com"]));
    t.cli(&["connections", "add", "gl", "--service", "gitlab"])
        .ok();
    t.cli(&[
        "connections",
        "edit",
        "gl",
        "--param",
        "host=gitlab.example.com",
    ])
    .ok();
    let out = t.cli(&["connections", "connect", "gl", "--no-listen"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains(
            "registered for https://gitlab.com, not for https://gitlab.example.com, where this connection's token endpoint is"
        ) && out
            .stderr
            .contains("`keyhole services set-client gitlab --param host=gitlab.example.com --client-id ID --client-secret-stdin`"),
        "{}",
        out.stderr
    );

    // Registered at that instance: the authorization starts there.
    let saved = set_client("gitlab", &["--param", "host=gitlab.example.com", "--json"]).json();
    assert_eq!(
        saved["oauth_client_origins"],
        json!(["https://gitlab.example.com"])
    );
    let out = t.cli(&["connections", "connect", "gl", "--no-listen", "--json"]);
    let first: Value = serde_json::from_str(out.ok().lines().next().unwrap()).unwrap();
    assert!(
        first["authorize_url"]
            .as_str()
            .unwrap()
            .starts_with("https://gitlab.example.com/oauth/authorize?"),
        "{first}"
    );

    // --param names the host, on services that have one.
    let refused = set_client("github", &["--param", "X-GitHub-Api-Version=2022-11-28"]);
    assert!(refused.err().contains("fixed URLs"), "{}", refused.stderr);
    let refused = set_client("gitlab", &["--param", "nope=1"]);
    assert_eq!(refused.code, 1, "{}", refused.all());
    capture::assert_no_secrets(&[SECRET]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_completes_only_at_the_token_endpoint_it_was_started_for() {
    let redirect = format!("http://127.0.0.1:{}/oauth/callback", free_port());
    let (first, second) = two_hosts(&redirect).await;
    let t = TestHost::new();
    let c = t.host.connections();
    // Both token endpoints are the definition's own choices, and the client is
    // registered at both: what changes under the authorization is only where it goes.
    let def = hosted_service(&first, "authorization_code", &[&first, &second]);
    c.catalog()
        .add(&ServiceDef::from_toml(&def).unwrap())
        .unwrap();
    let config = ClientConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        redirect_url: Some(redirect.clone()),
    };
    c.set_oauth_client("hosted", &config).unwrap();
    c.add("pc", "hosted", vec![], None).unwrap();
    c.edit("pc", None, None, endpoints_at(&first), false)
        .unwrap();

    let pending = c.begin_authorization("pc").unwrap();
    let location = first.approve(&pending.authorize_url).await.unwrap();
    // While the browser is out, an admin points the connection elsewhere.
    let mut edit = vec!["connections", "edit", "pc"];
    let to_second = endpoint_flags(&second);
    edit.extend(to_second.iter().map(String::as_str));
    t.cli(&edit).ok();
    let err = c
        .complete_authorization(&callback(&location), Some("pc"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("changed after this authorization started")
            && err.contains(&second.token_url())
            && err.contains("start again"),
        "{err}"
    );
    assert!(second.requests().is_empty(), "{:?}", second.requests());
    assert_eq!(first.token_requests(), 0, "the code was not used");
    let view = c.show("pc").unwrap();
    assert_eq!(view.status, Status::Pending);
    assert!(
        view.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("changed after this authorization started")),
        "{view:?}"
    );

    // Started again where it points, it completes.
    c.edit("pc", None, None, endpoints_at(&first), false)
        .unwrap();
    let pending = c.begin_authorization("pc").unwrap();
    let location = first.approve(&pending.authorize_url).await.unwrap();
    let view = c
        .complete_authorization(&callback(&location), Some("pc"))
        .await
        .unwrap();
    assert_eq!(view.status, Status::Connected);
    capture::assert_no_secrets(&[CLIENT_SECRET]);
}
