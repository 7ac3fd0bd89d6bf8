//! A keyhole host on a fresh temporary data directory, driven through the library or
//! through the real `keyhole` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keyhole::runtime::RuntimeConfig;
use keyhole::{Keyhole, UploadOptions, Uploaded};

/// A temporary data directory plus a library handle on it.
pub struct TestHost {
    dir: tempfile::TempDir,
    /// The library host (opened lazily so CLI-only tests don't hold the DB).
    pub host: Keyhole,
}

impl TestHost {
    /// A new host on a new temp dir.
    pub fn new() -> Self {
        Self::with_max_instances(64)
    }

    /// A new host on a new temp dir that runs at most `n` instances at once (its pool
    /// has `n` slots).
    pub fn with_max_instances(n: u32) -> Self {
        crate::capture::init();
        let dir = tempfile::tempdir().expect("temp dir");
        let host = Keyhole::open(
            dir.path(),
            RuntimeConfig {
                max_instances: n,
                ..Default::default()
            },
        )
        .expect("open host");
        Self { dir, host }
    }

    /// The data directory.
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// Reopen the library host on the same directory (a "restart").
    pub fn reopen(&mut self) {
        let host = Keyhole::open(
            self.dir.path(),
            RuntimeConfig {
                max_instances: 64,
                ..Default::default()
            },
        )
        .expect("reopen host");
        self.host = host;
    }

    /// Upload a built plugin under `name` with grants.
    pub async fn upload(&self, plugin: &str, name: &str, grants: &[&str]) {
        let options = UploadOptions {
            grants: grants.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        self.host
            .upload(name, crate::plugins::plugin(plugin), options)
            .await
            .expect("upload");
    }

    /// Upload a built plugin under `name` again with another timeout (nothing else
    /// changed), which makes a new version even of the same component.
    pub async fn upload_with_timeout(&self, plugin: &str, name: &str, ms: u64) -> Uploaded {
        let options = UploadOptions {
            limits: Some(keyhole::config::Limits {
                timeout_ms: ms,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.host
            .upload(name, crate::plugins::plugin(plugin), options)
            .await
            .expect("upload")
    }

    /// Run the `keyhole` binary against this host's directory.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        run_cli(self.home(), args, None, &[])
    }

    /// Run the binary with stdin and extra environment.
    pub fn cli_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> CliOutput {
        run_cli(self.home(), args, stdin, env)
    }

    /// Start the binary in the background with stdout and stderr piped (for commands
    /// that wait, like an OAuth `connections connect`).
    pub fn spawn_cli(&self, args: &[&str]) -> std::process::Child {
        Command::new(keyhole_bin())
            .args(args)
            .env("KEYHOLE_HOME", self.home())
            .env_remove("KEYHOLE_MASTER_KEY")
            .env("RUST_LOG", crate::capture::FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyhole")
    }

    /// Start `keyhole serve` on a free port with `args` added, wait until it says it is
    /// serving, and return it with its base URL (`http://127.0.0.1:PORT`).
    /// [`stop_serve`] stops it.
    pub fn spawn_serve(&self, args: &[&str]) -> (std::process::Child, String) {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut child = self.spawn_cli(&all);
        let stdout = child.stdout.take().expect("piped stdout");
        let banner = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("keyhole serving on"));
        let addr = banner.as_deref().and_then(|line| {
            let rest = line.split("http://").nth(1)?;
            rest.split_whitespace().next()
        });
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("serve exited before serving (banner {banner:?}): {stderr}");
        };
        // Drain its log (trace level) so a full pipe never blocks the server, into the
        // capture that tests grep for secrets.
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut log = String::new();
                let _ = stderr.read_to_string(&mut log);
                crate::capture::record(&log);
            });
        }
        let url = format!("http://{addr}");
        (child, url)
    }

    /// Raw bytes of the database file and its WAL, for grepping for secrets.
    pub fn raw_database(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for name in ["keyhole.db", "keyhole.db-wal", "keyhole.db-shm"] {
            if let Ok(b) = std::fs::read(self.home().join(name)) {
                out.extend_from_slice(&b);
            }
        }
        out
    }
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

/// What a CLI run produced.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Assert exit 0 and return stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Assert a non-zero exit and return stderr.
    pub fn err(&self) -> &str {
        assert_ne!(
            self.code, 0,
            "command unexpectedly succeeded\nstdout:\n{}",
            self.stdout
        );
        &self.stderr
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    /// Both streams, for grepping.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Path of the `keyhole` binary, (re)built once per test process with the same profile
/// as the test binary, so a test never runs a stale binary.
pub fn keyhole_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> -> target/<profile>/keyhole
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => "dev".to_string(),
        };
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            // `--workspace --tests` resolves features exactly as `cargo test --workspace`
            // did, so only the binary itself is built (not a second copy of the deps).
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--tests",
                "--bin",
                "keyhole",
                "--profile",
                &profile,
            ])
            .current_dir(crate::plugins::repo_root())
            .status()
            .expect("build keyhole");
        assert!(status.success(), "building the keyhole binary failed");
        profile_dir.join("keyhole")
    })
    .clone()
}

fn run_cli(home: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = Command::new(keyhole_bin());
    cmd.args(args)
        .env("KEYHOLE_HOME", home)
        .env_remove("KEYHOLE_MASTER_KEY")
        .env(
            "RUST_LOG",
            std::env::var("KEYHOLE_TEST_CLI_LOG").unwrap_or_else(|_| crate::capture::FILTER.into()),
        )
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn keyhole");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("wait keyhole");
    let out = CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    crate::capture::record(&out.all());
    out
}

/// Send `sig` (`-TERM`, `-INT`, …) to a child process.
pub fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} failed");
}

/// Stop a `keyhole serve` started by [`TestHost::spawn_serve`] with SIGTERM, and check it
/// exits 0.
pub fn stop_serve(mut child: std::process::Child) {
    signal(&child, "-TERM");
    let status = child.wait().expect("wait for serve");
    assert!(status.success(), "serve did not exit cleanly: {status:?}");
}
