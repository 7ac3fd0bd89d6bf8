//! Invocation benchmarks: warm calls of the `echo` plugin through keyhole's runtime
//! against a bare-wasmtime baseline, and cold start (upload + first call) against
//! restart (stored artifact + first call). Run with `cargo bench -p keyhole-host --bench
//! invoke`; see BENCHMARKS.md.
//!
//! Criterion measures each case on its own. Because the machine this runs on is small
//! and shared, the ratios printed at the end come from a second, interleaved
//! measurement (rounds of A, B, A, B, …, median per case), which cancels out most of
//! the drift between cases measured minutes apart.
//!
//! `KEYHOLE_BENCH_SWEEP=1 cargo bench -p keyhole-host --bench invoke` skips criterion
//! and instead times the bare baseline under keyhole's engine settings with one setting
//! changed at a time, to show which setting costs what per call.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use keyhole::config::Limits;
use keyhole::runtime::{DEFAULT_MAX_INSTANCES, EPOCH_TICK, Prepared, Runtime, RuntimeConfig};
use keyhole::{Keyhole, UploadOptions};
use tokio::runtime::Runtime as Tokio;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The input every warm call sends.
const INPUT: &str = r#"{"hello":"world"}"#;
/// Name the function is uploaded under.
const FUNCTION: &str = "echo";

mod common;

/// The echo component, built from `plugins/` source.
fn echo_wasm() -> Vec<u8> {
    common::plugin("echo")
}

// ---------------------------------------------------------------------------------------
// The bare-wasmtime baseline: the same component and world, nothing of keyhole's.

/// Store data for the baseline: a default (deny-all) WASI context and nothing else.
struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Link the component's `keyhole:function` imports minimally, whatever WIT version it
/// was built against: `log` does nothing, every other keyhole import (`http`, `kv`)
/// traps if called — echo never calls them.
fn link_keyhole_stubs(
    linker: &mut Linker<BareState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let names: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| name.starts_with("keyhole:function/log@"))
        .collect();
    for name in names {
        linker
            .instance(&name)?
            .func_new_async("log", |_store, _ty, _params, _results| {
                Box::new(async { Ok(()) })
            })?;
    }
    linker.define_unknown_imports_as_traps(component)
}

/// A bare embedding: engine, pre-instantiated component, the `run` export's index and
/// an epoch ticker like keyhole's.
struct Bare {
    engine: Engine,
    pre: InstancePre<BareState>,
    run: ComponentExportIndex,
    deadline_ticks: u64,
    stop: Arc<AtomicBool>,
}

impl Drop for Bare {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// keyhole's engine settings (`runtime::engine_config` is private, so this mirrors it):
/// pooling sized for `DEFAULT_MAX_INSTANCES`, epochs, 1 MiB wasm stack, zeroed async
/// stacks, no component-model concurrency. Keep in step with `runtime/mod.rs`.
fn keyhole_like_config() -> Config {
    keyhole::runtime::engine_config(Some(DEFAULT_MAX_INSTANCES))
}

fn keyhole_like_pool() -> PoolingAllocationConfig {
    keyhole::runtime::pooling_config(DEFAULT_MAX_INSTANCES)
}

/// wasmtime's defaults plus what any sandbox needs: the default pooling allocator and
/// epoch interruption. Shows what keyhole's engine settings cost on their own.
fn wasmtime_default_config() -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
    config
}

impl Bare {
    fn new(config: &Config, wasm: &[u8]) -> Self {
        let engine = Engine::new(config).expect("engine");
        let mut linker = Linker::<BareState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("link wasi");
        let component = Component::new(&engine, wasm).expect("compile echo");
        link_keyhole_stubs(&mut linker, &engine, &component).expect("link keyhole imports");
        let run = component
            .get_export_index(None, "run")
            .expect("echo exports run");
        let pre = linker.instantiate_pre(&component).expect("instantiate_pre");

        let stop = Arc::new(AtomicBool::new(false));
        let (weak, flag) = (engine.weak(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
        let ticks = Limits::default().timeout().as_millis() / EPOCH_TICK.as_millis();
        Self {
            engine,
            pre,
            run,
            deadline_ticks: ticks as u64,
            stop,
        }
    }

    /// One call: fresh store, `instantiate_async`, `call_async` of `run`.
    async fn call(&self, input: &str) -> String {
        let state = BareState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.set_epoch_deadline(self.deadline_ticks);
        let instance = self.pre.instantiate_async(&mut store).await.expect("inst");
        let run = instance
            .get_typed_func::<(&str,), (Result<String, String>,)>(&mut store, &self.run)
            .expect("typed run");
        let (out,) = run.call_async(&mut store, (input,)).await.expect("call");
        out.expect("echo succeeds")
    }
}

// ---------------------------------------------------------------------------------------
// keyhole cases.

/// keyhole's runtime with echo compiled once.
struct Warm {
    runtime: Runtime,
    prepared: Prepared,
}

impl Warm {
    fn new(wasm: &[u8]) -> Self {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let (_artifact, prepared) = runtime.compile(wasm).expect("compile echo");
        Self { runtime, prepared }
    }

    async fn call(&self, input: &str) -> String {
        let outcome = self
            .runtime
            .invoke(&self.prepared, FUNCTION, input, Limits::default(), None)
            .await;
        outcome.result.expect("echo succeeds")
    }
}

/// Cold start: on an opened, empty data directory, upload echo and call it once.
/// Returns the time of upload + first call (opening the directory is not timed).
fn cold_once(rt: &Tokio, wasm: &[u8]) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Keyhole::open(dir.path(), RuntimeConfig::default()).expect("open");
    let wasm = wasm.to_vec();
    let elapsed = rt.block_on(async {
        let started = Instant::now();
        host.upload(FUNCTION, wasm, UploadOptions::default())
            .await
            .expect("upload");
        let inv = host.invoke(FUNCTION, INPUT).await.expect("invoke");
        let elapsed = started.elapsed();
        inv.result.expect("echo succeeds");
        elapsed
    });
    drop(host);
    elapsed
}

/// A data directory holding echo and its stored artifact.
fn stored_dir(rt: &Tokio, wasm: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Keyhole::open(dir.path(), RuntimeConfig::default()).expect("open");
    rt.block_on(host.upload(FUNCTION, wasm.to_vec(), UploadOptions::default()))
        .expect("upload");
    dir
}

/// Restart: a new `Keyhole` on `dir` (which holds the artifact), then the first call
/// (stored artifact → deserialize → instantiate). Returns (open, first call).
fn restart_once(rt: &Tokio, dir: &Path) -> (Duration, Duration) {
    let started = Instant::now();
    let host = Keyhole::open(dir, RuntimeConfig::default()).expect("open");
    let open = started.elapsed();
    let first = rt.block_on(async {
        let started = Instant::now();
        let inv = host.invoke(FUNCTION, INPUT).await.expect("invoke");
        let elapsed = started.elapsed();
        inv.result.expect("echo succeeds");
        elapsed
    });
    drop(host);
    (open, first)
}

// ---------------------------------------------------------------------------------------
// Criterion groups.

struct Fixture {
    rt: Tokio,
    wasm: Vec<u8>,
    warm: Warm,
    bare: Bare,
    bare_defaults: Bare,
    stored: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let wasm = echo_wasm();
        let warm = Warm::new(&wasm);
        let bare = Bare::new(&keyhole_like_config(), &wasm);
        let bare_defaults = Bare::new(&wasmtime_default_config(), &wasm);
        // All three must do the same work.
        let expected = rt.block_on(warm.call(INPUT));
        assert_eq!(rt.block_on(bare.call(INPUT)), expected);
        assert_eq!(rt.block_on(bare_defaults.call(INPUT)), expected);
        let stored = stored_dir(&rt, &wasm);
        Self {
            rt,
            wasm,
            warm,
            bare,
            bare_defaults,
            stored,
        }
    }

    fn stored_path(&self) -> PathBuf {
        self.stored.path().to_path_buf()
    }
}

fn bench_warm(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("warm_echo");
    group
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .sample_size(50);
    group.bench_function("keyhole", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.warm.call(INPUT).await) })
    });
    group.bench_function("bare", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.bare.call(INPUT).await) })
    });
    group.bench_function("bare_wasmtime_defaults", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.bare_defaults.call(INPUT).await) })
    });
    group.finish();
}

fn bench_startup(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("startup_echo");
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .sample_size(10);
    group.bench_function("cold_upload_first_call", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold_once(&f.rt, &f.wasm)).sum())
    });
    let dir = f.stored_path();
    group.bench_function("restart_first_call", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| restart_once(&f.rt, &dir).1).sum())
    });
    group.bench_function("restart_open_and_first_call", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (open, first) = restart_once(&f.rt, &dir);
                    open + first
                })
                .sum()
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// Ratios from one interleaved measurement.

/// Run each case's batch once per round, round after round, and return each case's
/// median per-call time.
fn interleaved(rounds: usize, cases: &mut [&mut dyn FnMut() -> Duration]) -> Vec<Duration> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (case, out) in cases.iter_mut().zip(samples.iter_mut()) {
            out.push(case());
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect()
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn print_ratios(f: &Fixture) {
    const ROUNDS: usize = 21;
    const BATCH: u32 = 200;
    // One `block_on` per batch, as criterion's async bencher does per sample.
    macro_rules! batch {
        ($case:expr) => {
            &mut || {
                f.rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..BATCH {
                        black_box($case.call(INPUT).await);
                    }
                    started.elapsed() / BATCH
                })
            }
        };
    }
    let warm = interleaved(
        ROUNDS,
        &mut [batch!(f.warm), batch!(f.bare), batch!(f.bare_defaults)],
    );
    println!();
    println!(
        "warm ratio keyhole/bare = {:.2}  (keyhole {:.1?}, bare {:.1?} per call; median of {ROUNDS} interleaved rounds of {BATCH} calls)",
        ratio(warm[0], warm[1]),
        warm[0],
        warm[1],
    );
    println!(
        "warm ratio keyhole/bare-wasmtime-defaults = {:.2}  (bare with wasmtime's default pooling config, no stack zeroing: {:.1?})",
        ratio(warm[0], warm[2]),
        warm[2],
    );

    const START_ROUNDS: usize = 7;
    let dir = f.stored_path();
    let mut open = Vec::new();
    let start = interleaved(
        START_ROUNDS,
        &mut [&mut || cold_once(&f.rt, &f.wasm), &mut || {
            let (o, first) = restart_once(&f.rt, &dir);
            open.push(o);
            first
        }],
    );
    open.sort();
    println!(
        "startup ratio cold/restart = {:.1}  (upload + first call {:.1?}; restart first call {:.1?}, plus {:.1?} to open the data dir; median of {START_ROUNDS} interleaved rounds)",
        ratio(start[0], start[1]),
        start[0],
        start[1],
        open[open.len() / 2],
    );
}

/// Opt-in (`KEYHOLE_BENCH_SWEEP=1`): which of keyhole's engine settings cost time per
/// call. Each variant is keyhole's config with one setting changed.
fn sweep_engine_settings(f: &Fixture) {
    type Tweak = fn(&mut Config, &mut PoolingAllocationConfig);
    let variants: [(&str, Tweak); 7] = [
        ("keyhole settings", |_, _| {}),
        ("async_stack_zeroing(false)", |c, _| {
            c.async_stack_zeroing(false);
        }),
        ("pool.async_stack_keep_resident(0), the default", |_, p| {
            p.async_stack_keep_resident(0);
        }),
        ("linear_memory_keep_resident(0)", |_, p| {
            p.linear_memory_keep_resident(0);
        }),
        ("no pagemap_scan, memory keep_resident 64 KiB", |_, p| {
            p.pagemap_scan(wasmtime::Enabled::No)
                .linear_memory_keep_resident(64 << 10);
        }),
        ("max_wasm_stack(512 KiB), the default", |c, _| {
            c.max_wasm_stack(512 << 10);
        }),
        (
            "the previous settings: no pagemap, 64 KiB, stack 0",
            |_, p| {
                p.pagemap_scan(wasmtime::Enabled::No)
                    .linear_memory_keep_resident(64 << 10)
                    .async_stack_keep_resident(0);
            },
        ),
    ];
    let wasm = &f.wasm;
    let bares: Vec<Bare> = variants
        .iter()
        .map(|(_, tweak)| {
            let mut config = keyhole_like_config();
            let mut pool = keyhole_like_pool();
            tweak(&mut config, &mut pool);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            Bare::new(&config, wasm)
        })
        .collect();
    let mut cases: Vec<Box<dyn FnMut() -> Duration + '_>> = bares
        .iter()
        .map(|bare| {
            Box::new(move || {
                f.rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..200 {
                        black_box(bare.call(INPUT).await);
                    }
                    started.elapsed() / 200
                })
            }) as Box<dyn FnMut() -> Duration>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut() -> Duration> =
        cases.iter_mut().map(|c| c.as_mut() as _).collect();
    let times = interleaved(15, &mut refs);
    for ((name, _), t) in variants.iter().zip(times) {
        println!("sweep: {name:<45} {t:>10.1?}");
    }
}

fn main() {
    if std::env::var_os("KEYHOLE_BENCH_SWEEP").is_some() {
        let fixture = Fixture::new();
        sweep_engine_settings(&fixture);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let fixture = Fixture::new();
    bench_warm(&mut c, &fixture);
    bench_startup(&mut c, &fixture);
    c.final_summary();
    // `cargo test --benches` and `--list` run the binary too; the ratios take ~10 s.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if !quick {
        print_ratios(&fixture);
    }
}
