//! Builds the example plugins from `plugins/` source (never checked-in `.wasm`) once
//! per test process and hands out their component bytes. Only `std`: the host's benches
//! include this file by path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root: the parent of the including crate's directory (`tests/`, or
/// `host/` for the benches).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate directory has a parent")
        .to_path_buf()
}

fn plugins_target() -> PathBuf {
    repo_root().join("plugins").join("target")
}

/// Build every plugin for wasm32-wasip2 in release mode (once per process; cargo's own
/// lock serialises concurrent test binaries). Panics with cargo's output on failure.
pub fn build_plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--target", "wasm32-wasip2", "--release", "--quiet", "--target-dir"])
            .arg(plugins_target())
            .current_dir(root.join("plugins"))
            // Don't let the host build's flags (e.g. coverage) leak into the guest build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("run cargo to build the plugins");
        assert!(
            out.status.success(),
            "building plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        plugins_target().join("wasm32-wasip2").join("release")
    })
}

/// Path of a built plugin, e.g. `plugin_path("echo")`, `plugin_path("hello-http")`.
pub fn plugin_path(name: &str) -> PathBuf {
    // Library crates get `-` replaced by `_`; binaries (like `not-a-function`) keep it.
    let dir = build_plugins();
    let lib = dir.join(format!("{}.wasm", name.replace('-', "_")));
    if lib.exists() {
        lib
    } else {
        dir.join(format!("{name}.wasm"))
    }
}

/// Bytes of a built plugin.
pub fn plugin(name: &str) -> Vec<u8> {
    let path = plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
