//! What the benches share: building `plugins/` from source and reading a component.

use std::path::Path;
use std::process::Command;

/// Build the plugins workspace for wasm32-wasip2 (as `tests/harness/plugins.rs` does) and
/// read `<name>.wasm`.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf();
    let target = root.join("plugins").join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--release",
            "--quiet",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root.join("plugins"))
        // The bench build's flags must not leak into the guest build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo to build the plugins");
    assert!(
        out.status.success(),
        "building plugins failed (is the wasm32-wasip2 target installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
