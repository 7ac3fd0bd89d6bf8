//! Drives `OAuthServer` with plain reqwest through the flows the end-to-end suite relies
//! on, checking each RFC rule the server claims to enforce.

use super::*;
use serde_json::Value;

const REDIRECT: &str = "http://127.0.0.1:9/callback";

struct Fixture {
    server: OAuthServer,
    http: reqwest::Client,
}

async fn fixture(auth: ClientAuth) -> Fixture {
    let server = OAuthServer::start().await;
    server.register_client("app", "app-secret", [REDIRECT], auth);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Fixture { server, http }
}

impl Fixture {
    /// POSTs a form to `/token` authenticating with HTTP Basic as `app`.
    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(self.server.token_url())
            .basic_auth("app", Some("app-secret"))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status == 200 {
            assert_eq!(resp.headers()["cache-control"], "no-store");
        }
        (status, resp.json().await.unwrap())
    }

    /// Runs authorize + consent and returns `(code, verifier)`.
    async fn code(&self, scope: &str) -> (String, String) {
        let (verifier, _) = pkce_pair();
        let url = self
            .server
            .authorization_request("app", REDIRECT, scope, "st-1", &verifier);
        let location = self.server.approve(&url).await.unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        assert_eq!(query_param(&location, "state").as_deref(), Some("st-1"));
        (query_param(&location, "code").unwrap(), verifier)
    }

    async fn exchange(&self, code: &str, verifier: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ])
        .await
    }

    async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    async fn api_user(&self, access_token: &str) -> reqwest::Response {
        self.http
            .get(self.server.url("/api/user"))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_owned()
}

#[tokio::test]
async fn full_code_flow_with_pkce() {
    let f = fixture(ClientAuth::Basic).await;
    let (code, verifier) = f.code("read write").await;
    let (status, body) = f.exchange(&code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "read write");
    let access = s(&body["access_token"]);
    let refresh = s(&body["refresh_token"]);
    assert!(f.server.is_access_token_active(&access));
    assert!(f.server.is_refresh_token_active(&refresh));
    assert_eq!(f.server.issued_access_tokens(), vec![access.clone()]);

    let user = f.api_user(&access).await;
    assert_eq!(user.status(), 200);
    let user: Value = user.json().await.unwrap();
    assert_eq!(user["login"], "keyhole-test");

    let echo: crate::Echo = f
        .http
        .post(f.server.url("/api/echo/x?y=1"))
        .bearer_auth(&access)
        .body("b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo.path, "/api/echo/x");
    assert_eq!(echo.body, "b");

    let anonymous = f.http.get(f.server.url("/api/user")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer") && !challenge.contains("error="));
    let bogus = f.api_user("at_bogus").await;
    assert_eq!(bogus.status(), 401);
    let challenge = bogus.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(f.server.token_requests_for("authorization_code"), 1);
}

#[tokio::test]
async fn pkce_mismatch_and_missing_verifier_are_rejected() {
    let f = fixture(ClientAuth::Basic).await;
    let (code, _) = f.code("read").await;
    let (other, _) = pkce_pair();
    let (status, body) = f.exchange(&code, &other).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (code, _) = f.code("read").await;
    let (status, body) = f
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn authorize_enforces_pkce_and_exact_redirects() {
    let f = fixture(ClientAuth::Basic).await;
    let base = f.server.authorize_url();
    let challenge = pkce_challenge(&pkce_pair().0);

    let plain = format!(
        "{base}?response_type=code&client_id=app&redirect_uri={REDIRECT}&state=s\
         &code_challenge={challenge}&code_challenge_method=plain"
    );
    let location = f.server.approve(&plain).await.unwrap();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query_param(&location, "state").as_deref(), Some("s"));

    let missing = format!("{base}?response_type=code&client_id=app&state=s");
    let location = f.server.approve(&missing).await.unwrap();
    assert!(
        location.starts_with(REDIRECT),
        "single registered URI is the default"
    );
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("invalid_request")
    );

    for bad in [
        format!("{base}?response_type=code&client_id=app&redirect_uri={REDIRECT}/x"),
        format!("{base}?response_type=code&client_id=nobody&redirect_uri={REDIRECT}"),
    ] {
        let resp = f.http.get(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert!(resp.headers().get("location").is_none());
        assert!(f.server.approve(&bad).await.is_err());
    }
}

#[tokio::test]
async fn denial_redirects_with_access_denied() {
    let f = fixture(ClientAuth::Basic).await;
    let url = f
        .server
        .authorization_request("app", REDIRECT, "read", "st-9", &pkce_pair().0);
    let location = f.server.deny(&url).await.unwrap();
    assert_eq!(
        query_param(&location, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-9"));
    assert!(query_param(&location, "code").is_none());
}

#[tokio::test]
async fn code_reuse_revokes_what_it_issued() {
    let f = fixture(ClientAuth::Basic).await;
    let (code, verifier) = f.code("read").await;
    let (_, first) = f.exchange(&code, &verifier).await;
    let (status, body) = f.exchange(&code, &verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(!f.server.is_access_token_active(&s(&first["access_token"])));
    assert!(
        !f.server
            .is_refresh_token_active(&s(&first["refresh_token"]))
    );
}

#[tokio::test]
async fn expired_code_and_wrong_redirect_are_invalid_grant() {
    let f = fixture(ClientAuth::Basic).await;
    f.server.set_code_ttl(0);
    let (code, verifier) = f.code("read").await;
    let (status, body) = f.exchange(&code, &verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    f.server.set_code_ttl(60);
    let (code, verifier) = f.code("read").await;
    let (status, body) = f
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn refresh_rotates_and_detects_reuse() {
    let f = fixture(ClientAuth::Basic).await;
    let (code, verifier) = f.code("read").await;
    let (_, first) = f.exchange(&code, &verifier).await;
    let rt1 = s(&first["refresh_token"]);

    let (status, second) = f.refresh(&rt1).await;
    assert_eq!(status, 200, "{second}");
    let rt2 = s(&second["refresh_token"]);
    assert_ne!(rt1, rt2);
    assert!(!f.server.is_refresh_token_active(&rt1));
    assert!(f.server.is_refresh_token_active(&rt2));
    assert_eq!(second["scope"], "read");

    // Presenting the rotated-out token again is reuse: the whole family dies.
    let (status, body) = f.refresh(&rt1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(!f.server.is_refresh_token_active(&rt2));
    assert!(!f.server.is_access_token_active(&s(&second["access_token"])));
    let (status, _) = f.refresh(&rt2).await;
    assert_eq!(status, 400);
    assert_eq!(f.server.token_requests_for("refresh_token"), 3);
}

#[tokio::test]
async fn refresh_knobs() {
    let f = fixture(ClientAuth::Basic).await;
    let (code, verifier) = f.code("read").await;
    let (_, first) = f.exchange(&code, &verifier).await;
    let rt = s(&first["refresh_token"]);

    f.server.set_omit_refresh_token_on_refresh(true);
    let (_, body) = f.refresh(&rt).await;
    assert!(body.get("refresh_token").is_none());
    assert!(f.server.is_refresh_token_active(&rt));

    f.server.set_omit_refresh_token_on_refresh(false);
    f.server.set_rotate_refresh(false);
    let (_, body) = f.refresh(&rt).await;
    assert_eq!(s(&body["refresh_token"]), rt);

    f.server.reject_next_refreshes(1);
    let (status, body) = f.refresh(&rt).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(f.server.is_refresh_token_active(&rt));

    f.server.fail_next_token_requests(2, 503);
    assert_eq!(f.refresh(&rt).await.0, 503);
    assert_eq!(f.refresh(&rt).await.0, 503);
    assert_eq!(f.refresh(&rt).await.0, 200);

    f.server.set_access_ttl(1);
    let (_, body) = f.refresh(&rt).await;
    assert_eq!(body["expires_in"], 1);
    let access = s(&body["access_token"]);
    assert!(f.server.is_access_token_active(&access));
    f.server.expire_all_access_tokens();
    assert!(!f.server.is_access_token_active(&access));
    assert_eq!(f.api_user(&access).await.status(), 401);

    let (status, body) = f
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("scope", "read admin"),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[tokio::test]
async fn token_delay_lets_refreshers_pile_up() {
    let f = fixture(ClientAuth::Basic).await;
    let (code, verifier) = f.code("read").await;
    let (_, first) = f.exchange(&code, &verifier).await;
    let rt = s(&first["refresh_token"]);
    f.server.set_token_delay(1000);

    // One after the other they would take at least 2 s; the margin is for a busy machine.
    let started = std::time::Instant::now();
    let (a, b) = tokio::join!(f.refresh(&rt), f.refresh(&rt));
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "did not run concurrently"
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    // Naive concurrent refreshers with rotation: one wins, the other is reuse.
    assert_eq!(statuses, [200, 400]);
    assert!(
        f.server
            .issued_refresh_tokens()
            .iter()
            .all(|t| !f.server.is_refresh_token_active(t))
    );
}

#[tokio::test]
async fn revocation_per_rfc_7009() {
    let f = fixture(ClientAuth::Body).await;
    let (code, verifier) = f.code("read").await;
    let resp = f
        .http
        .post(f.server.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("client_id", "app"),
            ("client_secret", "app-secret"),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let (access, refresh) = (s(&body["access_token"]), s(&body["refresh_token"]));

    let revoke = |token: &str, hint: &str, secret: &str| {
        f.http
            .post(f.server.revoke_url())
            .form(&[
                ("token", token),
                ("token_type_hint", hint),
                ("client_id", "app"),
                ("client_secret", secret),
            ])
            .send()
    };
    let denied = revoke(&refresh, "refresh_token", "wrong").await.unwrap();
    assert_eq!(denied.status(), 401);
    assert!(f.server.is_refresh_token_active(&refresh));

    assert_eq!(
        revoke("unknown", "", "app-secret").await.unwrap().status(),
        200
    );
    let ok = revoke(&refresh, "refresh_token", "app-secret")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(!f.server.is_refresh_token_active(&refresh));
    assert!(
        !f.server.is_access_token_active(&access),
        "grant's access tokens go too"
    );
    assert_eq!(f.server.revocations(), 2);
    assert_eq!(
        f.server.revoked_tokens(),
        vec!["unknown".to_owned(), refresh]
    );
}

#[tokio::test]
async fn client_credentials_and_client_auth_rules() {
    let f = fixture(ClientAuth::Basic).await;
    let (status, body) = f
        .token(&[("grant_type", "client_credentials"), ("scope", "jobs")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    assert_eq!(f.api_user(&s(&body["access_token"])).await.status(), 200);

    // A Basic-only client may not put its secret in the body.
    let body_auth = f
        .http
        .post(f.server.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", "app-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(body_auth.status(), 401);
    assert!(body_auth.headers().contains_key("www-authenticate"));
    let err: Value = body_auth.json().await.unwrap();
    assert_eq!(err["error"], "invalid_client");

    let wrong = f
        .http
        .post(f.server.token_url())
        .basic_auth("app", Some("nope"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let (status, body) = f.token(&[("grant_type", "password")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body) = f
        .token(&[("grant_type", "client_credentials"), ("grant_type", "x")])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(f.server.token_requests(), 5);
}

#[tokio::test]
async fn revoke_all_and_the_request_log() {
    let f = fixture(ClientAuth::Both).await;
    let (code, verifier) = f.code("read").await;
    let (_, body) = f.exchange(&code, &verifier).await;
    f.server.revoke_all();
    assert!(!f.server.is_access_token_active(&s(&body["access_token"])));
    assert!(!f.server.is_refresh_token_active(&s(&body["refresh_token"])));

    let token_calls = f.server.requests_to("/token");
    assert_eq!(token_calls.len(), 1);
    assert!(
        token_calls[0]
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    let form = token_calls[0].form();
    assert!(form.contains(&("code_verifier".to_owned(), verifier)));
    assert_eq!(f.server.hits("/authorize"), 1);
}
