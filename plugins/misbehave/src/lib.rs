//! A test fixture that misbehaves on request, so tests can check the host's
//! limits (fuel/epochs, memory, stack, output and log caps), error paths, and that no
//! guest can read what an earlier guest left in memory.

use std::hint::black_box;

use keyhole_sdk::{Connection, Error};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
enum Mode {
    Loop,
    Memory,
    Panic,
    Stack,
    Stdout,
    BigOutput {
        bytes: usize,
    },
    Logs {
        count: u32,
    },
    Error,
    SleepHttp {
        connection: String,
        target: Option<String>,
    },
    /// Call `connection` `times` times, carrying on after every refusal; answers how many
    /// calls ended in each error kind (or `ok`).
    HttpFlood {
        connection: String,
        times: u32,
    },
    /// Fail with an error message of `bytes` bytes.
    BigError {
        bytes: usize,
    },
    /// Delete `keys` distinct keys of state; answers how many went through and the
    /// first refusal.
    KvChurn {
        keys: u32,
    },
    /// Set keys `k{from}`, `k{from + 1}`, … (`keys` of them) to empty values; answers
    /// how many went through and the first refusal.
    KvFill {
        keys: u32,
        from: u32,
    },
    /// Fill `copies` heap buffers with `marker` and leave them there.
    Scribble {
        marker: String,
        copies: usize,
    },
    /// Count the places in all of linear memory that hold the marker whose bytes, each
    /// XORed with `MASK`, are `masked` (so the plain marker is never in this guest's
    /// memory unless someone else put it there). With `scribble_first`, scribble it
    /// first, to show that the scan finds what is there.
    Scan {
        masked: Vec<u8>,
        scribble_first: bool,
    },
    /// Ask WASI for `bytes` random bytes in one call; answers how many came back.
    Random {
        bytes: u64,
    },
    /// Open `count` handles on stdout and keep them all; answers `count`.
    Handles {
        count: u32,
    },
    /// Try to reach past the sandbox: files, the environment, arguments, name lookup, and
    /// TCP and UDP to 127.0.0.1:`port`; answers what each attempt got.
    Escape {
        port: u16,
    },
}

/// The byte mask of `Scan`'s marker.
const MASK: u8 = 0x5a;

const CHUNK: usize = 16 << 20;

#[keyhole_sdk::function]
fn run(mode: Mode) -> Result<Value, Error> {
    match mode {
        Mode::Loop => spin(),
        Mode::Memory => hoard(),
        Mode::Panic => panic!("misbehave: deliberate panic"),
        Mode::Stack => Ok(json!(recurse(black_box(1)))),
        Mode::Stdout => {
            println!("to-stdout");
            eprintln!("to-stderr");
            Ok(json!("ok"))
        }
        Mode::BigOutput { bytes } => Ok(json!("x".repeat(bytes))),
        Mode::Logs { count } => {
            for i in 0..count {
                keyhole_sdk::info!("line {i}");
            }
            Ok(json!(count))
        }
        Mode::Error => Err(Error::msg("misbehave: deliberate error")),
        Mode::SleepHttp { connection, target } => {
            let response = Connection::new(connection)
                .get(target.as_deref().unwrap_or("/"))
                .send()
                // Keep the stable kind in the message so tests can match on it.
                .map_err(|err| Error::msg(format!("{}: {err}", err.kind())))?;
            Ok(json!({ "status": response.status(), "body": response.text() }))
        }
        Mode::HttpFlood { connection, times } => {
            let mut kinds = std::collections::BTreeMap::<String, u32>::new();
            for _ in 0..times {
                let kind = match Connection::new(&connection).get("/").send() {
                    Ok(_) => "ok".to_owned(),
                    Err(err) => err.kind().to_owned(),
                };
                *kinds.entry(kind).or_default() += 1;
            }
            Ok(json!(kinds))
        }
        Mode::BigError { bytes } => Err(Error::msg("e".repeat(bytes))),
        Mode::KvChurn { keys } => {
            for i in 0..keys {
                if let Err(err) = keyhole_sdk::kv::delete(format!("k{i}")) {
                    return Ok(json!({ "deleted": i, "refused": err.to_string() }));
                }
            }
            Ok(json!({ "deleted": keys }))
        }
        Mode::KvFill { keys, from } => {
            for i in 0..keys {
                if let Err(err) = keyhole_sdk::kv::set(format!("k{}", from + i), Vec::new()) {
                    return Ok(json!({ "set": i, "refused": err.to_string() }));
                }
            }
            Ok(json!({ "set": keys }))
        }
        Mode::Scribble { marker, copies } => {
            let buffers: Vec<Vec<u8>> = (0..copies).map(|_| marker.clone().into_bytes()).collect();
            // Leak them: the memory is left as it is when the guest returns.
            std::mem::forget(black_box(buffers));
            Ok(json!(copies))
        }
        Mode::Scan {
            masked,
            scribble_first,
        } => {
            if scribble_first {
                let marker: Vec<u8> = masked.iter().map(|b| b ^ MASK).collect();
                std::mem::forget(black_box(vec![marker; 8]));
            }
            Ok(json!(scan(&masked)))
        }
        Mode::Random { bytes } => Ok(json!(wasip2::random::random::get_random_bytes(bytes).len())),
        Mode::Escape { port } => {
            use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
            let tcp = TcpStream::connect(("127.0.0.1", port));
            let udp =
                UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"x", ("127.0.0.1", port)));
            Ok(json!({
                "read_dir": std::fs::read_dir("/").map(|d| d.count()).map_err(|e| e.to_string()).ok(),
                "read_file": std::fs::read("/etc/hosts").map(|b| b.len()).map_err(|e| e.to_string()).ok(),
                "write_file": std::fs::write("escape.txt", b"x").is_ok(),
                "env": std::env::vars().map(|(k, _)| k).collect::<Vec<_>>(),
                "args": std::env::args().collect::<Vec<_>>(),
                "lookup": ("localhost", port).to_socket_addrs().map(|_| ()).map_err(|e| e.to_string()),
                "tcp": tcp.map(|_| ()).map_err(|e| e.to_string()),
                "udp": udp.map(|_| ()).map_err(|e| e.to_string()),
            }))
        }
        Mode::Handles { count } => {
            for _ in 0..count {
                std::mem::forget(wasip2::cli::stdout::get_stdout());
            }
            Ok(json!(count))
        }
    }
}

/// How many times the unmasked `masked` occurs anywhere in linear memory.
fn scan(masked: &[u8]) -> usize {
    if masked.is_empty() {
        return 0;
    }
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let byte = |addr: usize| {
        // SAFETY: every address below `memory_size` is mapped linear memory in wasm;
        // reading it is what this fixture is for.
        unsafe { std::ptr::read_volatile(addr as *const u8) }
    };
    // Start past address 0 (null); nothing is placed there.
    (1..end.saturating_sub(masked.len()))
        .filter(|&addr| {
            masked
                .iter()
                .enumerate()
                .all(|(i, &m)| byte(addr + i) ^ MASK == m)
        })
        .count()
}

/// Spins forever; `black_box` keeps the optimiser from proving the loop
/// side-effect free and deleting it (an infinite loop without effects is UB).
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates and touches 16 MiB chunks until the host refuses more memory.
fn hoard() -> ! {
    let mut chunks = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        // Touch every page so lazily committed memory is really used.
        for page in chunk.iter_mut().step_by(4096) {
            *page = 1;
        }
        chunks.push(black_box(chunk));
    }
}

/// Recurses without bound; the frame-local array and the use of the result
/// after the call stop the optimiser from turning it into a loop.
/// Recurses on scalars only, so every frame lives on the wasm stack (not Rust's shadow
/// stack in linear memory) and the host's stack limit is what stops it. The mixed
/// multiply-add keeps LLVM from turning the recursion into a loop.
#[allow(unconditional_recursion, reason = "exhausting the stack is the point")]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    recurse(depth.wrapping_add(1))
        .wrapping_mul(3)
        .wrapping_add(depth)
}
