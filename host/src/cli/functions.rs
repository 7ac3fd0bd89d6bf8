//! `keyhole functions …`, `keyhole run` and `keyhole logs`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::output;
use crate::{Keyhole, UploadOptions};

/// `keyhole functions` subcommands.
#[derive(Debug, Subcommand)]
pub enum FunctionsCmd {
    /// Validate, compile and store a component as a new version of a function.
    ///
    /// The file must be a WebAssembly component for the keyhole:function/custom-function
    /// world (what the keyhole SDK builds with `cargo build --target wasm32-wasip2`). The
    /// component the latest version already runs, with the same limits, stores nothing
    /// (the grant flags still apply).
    Upload(UploadArgs),
    /// List functions with their latest version.
    List,
    /// Show a function's versions, limits and grants.
    Show {
        /// Function name.
        name: String,
    },
    /// Delete every version of a function, its grants and its stored state (`kv`).
    /// Invocation history stays; a function uploaded later under the name starts with
    /// no state. Refused while schedules run the function, unless `--with-schedules`.
    Delete {
        /// Function name.
        name: String,
        /// Also delete the schedules that run it.
        #[arg(long)]
        with_schedules: bool,
    },
    /// Let a function use a connection.
    Grant {
        /// Function name.
        function: String,
        /// Connection name.
        connection: String,
    },
    /// Take a connection grant back from a function.
    RevokeGrant {
        /// Function name.
        function: String,
        /// Connection name.
        connection: String,
    },
}

/// Arguments of `functions upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The component file (.wasm).
    pub file: PathBuf,
    /// Function name: 1-50 chars, a lowercase letter first, then lowercase letters, digits or hyphens.
    #[arg(long)]
    pub name: String,
    /// Grant a connection to the function (repeatable).
    #[arg(long = "grant", value_name = "CONNECTION")]
    pub grants: Vec<String>,
    /// Drop the grants earlier versions had (default: a new version keeps them).
    #[arg(long)]
    pub reset_grants: bool,
    /// Wall-clock limit per invocation, e.g. 500ms, 10s, 2m (default: the previous
    /// version's, else 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Memory limit in MiB (default: the previous version's, else 64).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// Largest accepted input in bytes (default: the previous version's, else 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_input: Option<u64>,
    /// Largest allowed output in bytes (default: the previous version's, else 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub max_output: Option<u64>,
    /// Most outbound requests per invocation (default: the previous version's, else 50).
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u32>,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Function name.
    pub name: String,
    /// Input JSON text (default `{}`).
    #[arg(long, conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input JSON from a file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
}

/// Arguments of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this function.
    pub name: Option<String>,
    /// How many invocations to show (newest first).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// Also print each invocation's log lines, stderr and outbound calls.
    #[arg(long, short = 'd')]
    pub details: bool,
}

/// `keyhole functions …`; `json`: print JSON.
pub async fn functions(host: &Keyhole, cmd: FunctionsCmd, json: bool) -> anyhow::Result<i32> {
    match cmd {
        FunctionsCmd::Upload(args) => upload(host, args, json).await,
        FunctionsCmd::List => {
            output::listing(
                json,
                &host.list_functions()?,
                "no functions yet; upload one with `keyhole functions upload FILE.wasm --name NAME`",
                &["NAME", "VERSION", "VERSIONS", "SIZE", "HASH", "UPLOADED"],
                |f| {
                    vec![
                        f.latest.name.clone(),
                        f.latest.version.to_string(),
                        f.versions.to_string(),
                        output::bytes(f.latest.size),
                        f.latest.content_hash[..12].to_string(),
                        crate::util::format_ms(f.latest.created_at),
                    ]
                },
            )?;
            Ok(0)
        }
        FunctionsCmd::Show { name } => {
            let detail = host.show_function(&name)?;
            if json {
                output::json(&detail)?;
                return Ok(0);
            }
            let latest = &detail.versions[0];
            output::fields(&[
                ("name", detail.name.clone()),
                ("latest version", latest.version.to_string()),
                ("content hash", latest.content_hash.clone()),
                ("size", output::bytes(latest.size)),
                ("uploaded", crate::util::format_ms(latest.created_at)),
                ("timeout", format!("{} ms", latest.limits.timeout_ms)),
                (
                    "memory",
                    format!("{} MiB", latest.limits.memory_bytes >> 20),
                ),
                (
                    "max input/output",
                    format!(
                        "{} / {} bytes",
                        latest.limits.max_input_bytes, latest.limits.max_output_bytes
                    ),
                ),
                (
                    "max requests",
                    latest.limits.max_outbound_requests.to_string(),
                ),
                (
                    "grants",
                    if detail.grants.is_empty() {
                        "(none)".into()
                    } else {
                        detail.grants.join(", ")
                    },
                ),
            ]);
            if detail.versions.len() > 1 {
                println!("\nversions:");
                let rows: Vec<Vec<String>> = detail
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            v.content_hash[..12].to_string(),
                            crate::util::format_ms(v.created_at),
                        ]
                    })
                    .collect();
                output::table(&["VERSION", "HASH", "UPLOADED"], &rows);
            }
            Ok(0)
        }
        FunctionsCmd::Delete {
            name,
            with_schedules,
        } => {
            let n = host.delete_function(&name, with_schedules)?;
            if json {
                output::json(&serde_json::json!({ "deleted": name, "versions": n }))?;
                return Ok(0);
            }
            println!(
                "deleted function {name} ({n} version{})",
                if n == 1 { "" } else { "s" }
            );
            Ok(0)
        }
        FunctionsCmd::Grant {
            function,
            connection,
        } => {
            let added = host.connections().grant(&function, &connection)?;
            if json {
                output::json(&serde_json::json!({
                    "function": function, "connection": connection, "granted": true, "changed": added,
                }))?;
            } else if added {
                println!("granted connection {connection} to function {function}");
            } else {
                println!(
                    "function {function} already holds a grant for connection {connection}; nothing changed"
                );
            }
            Ok(0)
        }
        FunctionsCmd::RevokeGrant {
            function,
            connection,
        } => {
            host.connections().revoke_grant(&function, &connection)?;
            if json {
                output::json(&serde_json::json!({
                    "function": function, "connection": connection, "granted": false,
                }))?;
            } else {
                println!("revoked function {function}'s grant for connection {connection}");
            }
            Ok(0)
        }
    }
}

async fn upload(host: &Keyhole, args: UploadArgs, json: bool) -> anyhow::Result<i32> {
    let wasm = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let previous = host.storage().latest_function(&args.name)?;
    let mut limits = previous.map(|p| p.limits).unwrap_or_default();
    let mut custom = false;
    // Out-of-range values must not wrap into small ones: saturate, and let the limit
    // check below refuse them.
    if let Some(t) = args.timeout {
        limits.timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        custom = true;
    }
    if let Some(m) = args.memory_mib {
        limits.memory_bytes = m.saturating_mul(1 << 20);
        custom = true;
    }
    if let Some(n) = args.max_input {
        limits.max_input_bytes = n;
        custom = true;
    }
    if let Some(n) = args.max_output {
        limits.max_output_bytes = n;
        custom = true;
    }
    if let Some(n) = args.max_requests {
        limits.max_outbound_requests = n;
        custom = true;
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "validating and compiling {} ({})",
        args.file.display(),
        output::bytes(wasm.len() as i64)
    ));
    if std::io::stderr().is_terminal() {
        spinner.enable_steady_tick(Duration::from_millis(100));
    } else if !json {
        // Under `--json` a script reads stderr for the error alone.
        eprintln!(
            "compiling {} ({})…",
            args.file.display(),
            output::bytes(wasm.len() as i64)
        );
    }
    let started = Instant::now();
    let options = UploadOptions {
        limits: custom.then_some(limits),
        grants: args.grants,
        reset_grants: args.reset_grants,
    };
    let result = host.upload(&args.name, wasm, options).await;
    spinner.finish_and_clear();
    let uploaded = result?;
    if json {
        output::json(&uploaded)?;
        return Ok(0);
    }
    let row = &uploaded.row;
    let grants = host.storage().grants_of_function(&row.name)?;
    if uploaded.new_version {
        println!(
            "uploaded {} version {} (compiled in {} ms)",
            row.name,
            row.version,
            started.elapsed().as_millis()
        );
    } else {
        println!(
            "{} version {} already is this component with these limits; no new version stored",
            row.name, row.version
        );
    }
    output::fields(&[
        ("content hash", row.content_hash.clone()),
        ("size", output::bytes(row.size)),
        (
            "limits",
            format!(
                "timeout {} ms, memory {} MiB",
                row.limits.timeout_ms,
                row.limits.memory_bytes >> 20
            ),
        ),
        (
            "grants",
            if grants.is_empty() {
                "(none)".into()
            } else {
                grants.join(", ")
            },
        ),
    ]);
    println!("run it with: keyhole run {} --input '{{}}'", row.name);
    Ok(0)
}

/// `keyhole run`; `json`: print the whole invocation (output, logs, outbound calls).
pub async fn run(host: &Keyhole, args: RunArgs, json: bool) -> anyhow::Result<i32> {
    let input = match (&args.input, &args.input_file) {
        (Some(i), _) => i.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => "{}".to_string(),
    };
    let inv = host.invoke(&args.name, &input).await?;
    if json {
        let mut v = serde_json::to_value(&inv)?;
        // `outcome` as `logs --json` names it; `error` with its kind and message apart.
        match &inv.result {
            Ok(out) => {
                v["outcome"] = "ok".into();
                v["output"] =
                    serde_json::from_str(out).unwrap_or(serde_json::Value::String(out.clone()))
            }
            Err(e) => {
                v["outcome"] = e.kind().into();
                v["error"] = serde_json::json!({ "kind": e.kind(), "message": e.to_string() });
            }
        }
        output::json(&v)?;
        // A failed run still prints the whole record; stderr says it failed, as for
        // every other error under `--json`.
        if let Err(e) = &inv.result {
            super::json_error(e.kind(), &e.to_string());
            return Ok(1);
        }
        return Ok(0);
    }
    match &inv.result {
        Ok(out) => {
            println!("{out}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            if !inv.stderr.trim().is_empty() {
                eprintln!("guest stderr:\n{}", inv.stderr.trim_end());
            }
            if inv.id > 0 {
                eprintln!(
                    "(invocation {} recorded; `keyhole logs {}` shows it)",
                    inv.id, inv.function
                );
            } else {
                eprintln!("(its record could not be stored; the log lines above say why)");
            }
            Ok(1)
        }
    }
}

/// Characters of an invocation's error shown in the `logs` table.
const ERROR_COLUMN: usize = 100;

/// `keyhole logs`; `json`: print the records as JSON.
pub fn logs(host: &Keyhole, args: LogsArgs, json: bool) -> anyhow::Result<i32> {
    let rows = host.logs(args.name.as_deref(), args.limit as usize)?;
    // Records outlive their function, so only "no records and no function" is an error.
    if rows.is_empty()
        && let Some(name) = &args.name
        && host.storage().latest_function(name)?.is_none()
    {
        return Err(crate::HostError::UnknownFunction(name.clone()).into());
    }
    if json {
        output::json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        println!("no invocations yet");
        return Ok(0);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                crate::util::format_ms(r.started_at),
                format!("{}@{}", r.function, r.version),
                r.outcome.clone(),
                format!("{:.1} ms", r.duration_us as f64 / 1000.0),
                r.outbound.len().to_string(),
                // One line per record: `--details` and `--json` give the whole message.
                output::one_line(r.error.as_deref().unwrap_or_default(), ERROR_COLUMN),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "STARTED", "FUNCTION", "OUTCOME", "DURATION", "CALLS", "ERROR",
        ],
        &table,
    );
    if args.details {
        for r in &rows {
            println!("\n#{} {}@{} {}", r.id, r.function, r.version, r.outcome);
            if let Some(e) = &r.error {
                println!("  error  {e}");
            }
            for l in &r.logs {
                println!("  log    {l}");
            }
            for c in &r.outbound {
                println!(
                    "  call   {} {} {}{} -> {} ({} ms, {} bytes)",
                    c.connection,
                    c.method,
                    c.origin,
                    c.path,
                    c.status
                        .map(|s| s.to_string())
                        .or(c.error.clone())
                        .unwrap_or_default(),
                    c.latency_ms,
                    c.bytes
                );
            }
            for l in r.stdout.lines() {
                println!("  stdout {l}");
            }
            for l in r.stderr.lines() {
                println!("  stderr {l}");
            }
        }
    }
    Ok(0)
}
