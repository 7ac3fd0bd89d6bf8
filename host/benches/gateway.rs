//! The latency keyhole adds to an authenticated call, measured in one process so that
//! scheduling noise between processes does not drown it: run with `cargo bench -p
//! keyhole-host --bench gateway`; see BENCHMARKS.md.
//!
//! A local upstream (axum, on 127.0.0.1, answering 401 without the right `X-API-Key`)
//! and three cases, all on one current-thread tokio runtime:
//!
//! - `direct`: a GET to the upstream with the key, from the same process and on the
//!   pooled client keyhole's gateway uses: the call itself, nothing of keyhole's.
//! - `refused`: invoking `fetch` (the `hello-http` plugin) on a connection it was not
//!   granted: the whole invocation (instance, input, output, record) without the call.
//! - `fetch`: invoking `fetch` to make the GET through connection `upstream` (grant
//!   check, connection load, egress check, key injection, send, scrub, call record).
//!
//! The added latency is `fetch − refused − direct` at p50, from every call of an
//! interleaved measurement (rounds of the three cases in turn, each call timed).
//!
//! With `GATEWAY_UPSTREAM=ADDR` and `GATEWAY_UPSTREAM_KEY=KEY` the three cases call an
//! upstream in another process instead (`examples/bench-upstream.rs` serving that key):
//! each call then switches processes, as it does in `keyhole serve`. With
//! `GATEWAY_LOOP=CASE` it makes only that case's calls, for a profiler (see `run_loop`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use criterion::Criterion;
use keyhole::runtime::RuntimeConfig;
use keyhole::secrets::Secret;
use keyhole::services::ServiceDef;
use keyhole::{Keyhole, UploadOptions};
use tokio::runtime::Runtime as Tokio;

mod common;

/// The in-process upstream's API key.
const KEY: &str = "bench-gateway-key-0123456789";

/// Where the upstream is and its key: another process's, from `GATEWAY_UPSTREAM` and
/// `GATEWAY_UPSTREAM_KEY`, else one served on a task of the bench's runtime.
async fn upstream() -> (std::net::SocketAddr, String) {
    if let Ok(addr) = std::env::var("GATEWAY_UPSTREAM") {
        let addr = addr
            .parse()
            .expect("GATEWAY_UPSTREAM is an address such as 127.0.0.1:18978");
        let key = std::env::var("GATEWAY_UPSTREAM_KEY")
            .expect("GATEWAY_UPSTREAM_KEY: the key the upstream at GATEWAY_UPSTREAM accepts");
        return (addr, key);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move { common::upstream::serve(listener, KEY).await });
    (addr, KEY.to_string())
}

struct Fixture {
    rt: Tokio,
    _home: tempfile::TempDir,
    host: Keyhole,
    client: keyhole::connections::outbound::Client,
    url: String,
    key: String,
}

const FETCH: &str = r#"{"connection":"upstream","target":"/"}"#;
const REFUSED: &str = r#"{"connection":"not-granted","target":"/"}"#;

impl Fixture {
    fn new() -> Self {
        // One thread for everything (client, keyhole, upstream): no cross-thread wake-ups,
        // whose cost on a small VM is large and erratic and would drown what is measured.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let wasm = common::plugin("hello-http");
        let home = tempfile::tempdir().expect("tempdir");
        let host = Keyhole::open(home.path(), RuntimeConfig::default()).expect("open");
        let (addr, key) = rt.block_on(upstream());
        let url = format!("http://{addr}/");
        rt.block_on(async {
            let service = ServiceDef::from_toml(&format!(
                r#"
name = "bench-upstream"
display_name = "Bench upstream"
auth = "api_key"
base_url = "http://{addr}"

[[params]]
name = "X-API-Key"
display_name = "API key"
secret = true
location = "header"
"#
            ))
            .expect("service definition");
            let c = host.connections();
            c.catalog().add(&service).expect("add service");
            c.add("upstream", "bench-upstream", vec![], None)
                .expect("add connection");
            c.connect(
                "upstream",
                [("X-API-Key".to_string(), Secret::new(key.clone()))].into(),
            )
            .await
            .expect("connect");
            host.upload(
                "fetch",
                wasm,
                UploadOptions {
                    grants: vec!["upstream".into()],
                    ..UploadOptions::default()
                },
            )
            .await
            .expect("upload fetch");
        });
        let f = Self {
            rt,
            _home: home,
            host,
            client: keyhole::connections::build_client(),
            url,
            key,
        };
        // Each case must do what it claims before it is timed.
        let out: serde_json::Value =
            serde_json::from_str(&f.rt.block_on(f.invoke(FETCH))).expect("fetch output is JSON");
        assert_eq!(
            out["status"], 200,
            "fetch reached the upstream with the key: {out}"
        );
        let refused: serde_json::Value =
            serde_json::from_str(&f.rt.block_on(f.invoke(REFUSED))).expect("JSON");
        assert_eq!(refused["error"], "access-denied", "{refused}");
        assert_eq!(f.rt.block_on(f.direct()), StatusCode::OK.as_u16());
        assert_eq!(
            f.rt.block_on(f.get(None)),
            StatusCode::UNAUTHORIZED,
            "the upstream checks the key, so a 200 from fetch means keyhole injected it"
        );
        f
    }

    async fn invoke(&self, input: &str) -> String {
        let inv = self.host.invoke("fetch", input).await.expect("invoke");
        inv.result.expect("fetch succeeds")
    }

    async fn direct(&self) -> u16 {
        self.get(Some(&self.key)).await
    }

    /// A GET to the upstream with `key` (if any) on the client keyhole's gateway uses.
    async fn get(&self, key: Option<&str>) -> u16 {
        use http_body_util::BodyExt as _;
        let mut request = axum::http::Request::get(&self.url);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        let request = request.body(Default::default()).expect("a valid request");
        let response = self.client.request(request).await.expect("direct GET");
        let status = response.status().as_u16();
        black_box(response.into_body().collect().await.expect("body"));
        status
    }
}

fn bench(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("authenticated_get");
    group
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    group.bench_function("direct", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.direct().await) })
    });
    group.bench_function("refused", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.invoke(REFUSED).await) })
    });
    group.bench_function("fetch", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.invoke(FETCH).await) })
    });
    group.finish();
}

/// Rounds of (direct, refused, fetch), each a batch of sequential calls timed one by
/// one; the p50 and p99 of every case's calls, and the added latency at p50.
fn print_added(f: &Fixture) {
    const ROUNDS: usize = 21;
    const BATCH: usize = 100;
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for _ in 0..ROUNDS {
        for (case, out) in samples.iter_mut().enumerate() {
            for _ in 0..BATCH {
                let started = Instant::now();
                f.rt.block_on(async {
                    match case {
                        0 => drop(black_box(f.direct().await)),
                        1 => drop(black_box(f.invoke(REFUSED).await)),
                        _ => drop(black_box(f.invoke(FETCH).await)),
                    }
                });
                out.push(started.elapsed());
            }
        }
    }
    let pct = |v: &Vec<Duration>, p: f64| v[((v.len() - 1) as f64 * p) as usize];
    for v in &mut samples {
        v.sort();
    }
    let [direct, refused, fetch] = &samples;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let added = us(pct(fetch, 0.5)) - us(pct(refused, 0.5)) - us(pct(direct, 0.5));
    println!();
    println!(
        "authenticated call added latency p50 = {added:.1}µs  (fetch − refused − direct GET at p50, {} calls each in {ROUNDS} interleaved rounds)",
        ROUNDS * BATCH
    );
    for (name, v) in [
        ("direct GET", direct),
        ("refused", refused),
        ("fetch", fetch),
    ] {
        println!(
            "  {name:<10} p50 {:>7.1}µs  p99 {:>7.1}µs",
            us(pct(v, 0.5)),
            us(pct(v, 0.99))
        );
    }
}

/// `GATEWAY_LOOP=direct|refused|fetch` (with `GATEWAY_CALLS`, default 100000): make only
/// those calls, back to back, and print their mean, p50, p90 and p99; no criterion. For
/// a profiler (`perf record`) to see one case alone.
fn run_loop(f: &Fixture, case: &str) {
    let calls: u32 = std::env::var("GATEWAY_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
        .max(1);
    let mut took = Vec::with_capacity(calls as usize);
    let started = Instant::now();
    f.rt.block_on(async {
        for _ in 0..calls {
            let call = Instant::now();
            match case {
                "direct" => drop(black_box(f.direct().await)),
                "refused" => drop(black_box(f.invoke(REFUSED).await)),
                "fetch" => drop(black_box(f.invoke(FETCH).await)),
                other => panic!("GATEWAY_LOOP={other:?}: use direct, refused or fetch"),
            }
            took.push(call.elapsed());
        }
    });
    let mean = started.elapsed().as_secs_f64() * 1e6 / f64::from(calls.max(1));
    took.sort();
    let pct = |p: f64| took[((took.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "{case}: {calls} calls, mean {mean:.1}µs, p50 {:.1}µs, p90 {:.1}µs, p99 {:.1}µs",
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
}

fn main() {
    let fixture = Fixture::new();
    if let Ok(case) = std::env::var("GATEWAY_LOOP") {
        run_loop(&fixture, &case);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &fixture);
    c.final_summary();
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if !quick {
        print_added(&fixture);
    }
}
