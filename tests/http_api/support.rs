//! Helpers of the `http_api` suite: an in-process `keyhole serve` on 127.0.0.1:0 with an
//! HTTP client that records every response body, and signalling the real binary (started
//! with `TestHost::spawn_serve`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyhole::Keyhole;
use keyhole::runtime::RuntimeConfig;
use keyhole::server::{
    CancellationToken, Scope, ServeConfig, Server, ShutdownReport, create_token,
};
use keyhole::services::ServiceDef;
use keyhole_tests::FakeApi;
use keyhole_tests::env::TestHost;
pub use keyhole_tests::env::signal;
use keyhole_tests::plugins::plugin;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;

pub const KEY: &str = "kh-http-apikey-5d2e8a1c9b";

/// A server started in-process on `127.0.0.1:0` over a fresh host.
pub struct Api {
    pub t: TestHost,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
    pub stop: CancellationToken,
    pub task: JoinHandle<ShutdownReport>,
    /// Every response body seen, for the secret grep.
    pub bodies: Mutex<Vec<String>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn kind(&self) -> String {
        self.json()["error"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn test_config() -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        rate_limit: 0,
        ..Default::default()
    }
}

pub async fn start(config: ServeConfig) -> Api {
    let t = TestHost::new();
    let host = Keyhole::open(
        t.home(),
        RuntimeConfig {
            max_instances: config.max_in_flight as u32,
            ..Default::default()
        },
    )
    .expect("open server host");
    let admin = create_token(host.storage(), Scope::Admin, None, Some("tests")).unwrap();
    // Idle connections are dropped well before the server's idle timeout (its header
    // timeout), as its `Keep-Alive` hint asks: reusing one just as the server closes it
    // fails the request (`IncompleteMessage`), which a long test run under load once hit.
    let http = reqwest::Client::builder()
        .pool_idle_timeout((config.header_timeout / 2).min(Duration::from_secs(5)))
        .build()
        .unwrap();
    let server = Server::bind(Arc::new(host), config).await.expect("bind");
    let base = format!("http://{}", server.local_addr());
    let stop = server.shutdown_token();
    let task = tokio::spawn(async move { server.run().await });
    Api {
        t,
        base,
        admin: admin.token.expose().to_string(),
        http,
        stop,
        task,
        bodies: Mutex::new(Vec::new()),
    }
}

impl Api {
    pub fn token(&self, scope: Scope, function: Option<&str>) -> String {
        let created = create_token(self.t.host.storage(), scope, function, None).unwrap();
        created.token.expose().to_string()
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let reply = Reply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        };
        self.bodies.lock().unwrap().push(reply.body.clone());
        reply
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, Some(&self.admin.clone()), vec![])
            .await
    }

    pub async fn invoke(&self, function: &str, input: &str) -> Reply {
        let path = format!("/v1/functions/{function}/invoke");
        self.send(
            "POST",
            &path,
            Some(&self.admin.clone()),
            input.as_bytes().to_vec(),
        )
        .await
    }

    pub async fn upload(&self, plugin_name: &str, name: &str, query: &str) -> Reply {
        let path = format!("/v1/functions/{name}?{query}");
        let r = self
            .send(
                "POST",
                &path,
                Some(&self.admin.clone()),
                plugin(plugin_name),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r
    }

    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }

    pub async fn shutdown(self) -> ShutdownReport {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// The value of one sample line `name{labels} value` in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An API-key service `name` on `api`, connected with `KEY`.
pub async fn connect_acme(t: &TestHost, api: &FakeApi, name: &str) {
    let toml = format!(
        "name = \"{name}\"\ndisplay_name = \"Acme\"\nauth = \"api_key\"\nbase_url = \"{}\"\n\n[verify]\npath = \"/user\"\n\n[[params]]\nname = \"X-API-Key\"\ndisplay_name = \"Acme API key\"\nsecret = true\nlocation = \"header\"\n",
        api.base_url()
    );
    let c = t.host.connections();
    c.catalog()
        .add(&ServiceDef::from_toml(&toml).unwrap())
        .unwrap();
    c.add(name, name, vec![], None).unwrap();
    let values = [("X-API-Key".to_string(), keyhole::secrets::Secret::new(KEY))].into();
    let out = c.connect(name, values).await.unwrap();
    assert!(out.verification.unwrap().ok);
}

pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "keyhole serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
