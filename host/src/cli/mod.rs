//! The `keyhole` command line: argument parsing (clap) and dispatch into the library.
//! Human output by default; `--json` (on every command) prints JSON for scripts. Errors
//! go to stderr with a non-zero exit code, as `{"error": {"kind", "message"}}` under
//! `--json`.

/// A usage error: `anyhow::Error` of a [`Usage`] built like `format!`.
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::cli::Usage(format!($($arg)*)))
    };
}

mod connections;
mod functions;
mod output;
mod schedules;
mod serve;
mod services;
mod tokens;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Keyhole;
use crate::runtime::RuntimeConfig;

/// keyhole: run WebAssembly custom functions that call third-party APIs through named
/// connections. Functions never see a secret: the host injects credentials.
#[derive(Debug, Parser)]
#[command(name = "keyhole", version, propagate_version = true)]
pub struct Cli {
    /// Data directory (database, master key). Default: $KEYHOLE_HOME (an empty value
    /// counts as unset), else the platform's per-user data directory
    /// (~/.local/share/keyhole on Linux).
    // `KEYHOLE_HOME` is read by `config::default_home`, not by clap: clap would refuse an
    // empty variable, while an empty `--home` is still refused (a script's unset variable).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// Log more (info level); RUST_LOG overrides.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Print JSON on stdout instead of text, for scripts. Errors then go to stderr as
    /// {"error": {"kind": "...", "message": "..."}}, with the same kinds as the HTTP API.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload, list, inspect and delete functions; grant them connections.
    #[command(subcommand)]
    Functions(functions::FunctionsCmd),
    /// Invoke the latest version of a function and print its output.
    Run(functions::RunArgs),
    /// Show recent invocations with outcome, duration, logs and outbound calls
    /// (`keyhole serve` keeps each function's newest: `serve --keep-invocations`).
    Logs(functions::LogsArgs),
    /// The service catalog: presets ("pick your service") and custom services.
    #[command(subcommand)]
    Services(services::ServicesCmd),
    /// Connections: a service plus credentials, used by functions by name.
    #[command(subcommand)]
    Connections(connections::ConnectionsCmd),
    /// Run the HTTP API (invoke, admin, /metrics, /healthz, the OAuth callback) until
    /// SIGINT/SIGTERM; default address 127.0.0.1:8976 (loopback only).
    ///
    /// SIGINT/SIGTERM drain (in-flight invocations finish, up to --shutdown-timeout) and
    /// exit 0. When a newer keyhole migrates the database (an upgrade run while this
    /// server runs), the server notices within seconds, drains the same way and exits 1:
    /// then run the newer keyhole's `keyhole serve`.
    Serve(serve::ServeArgs),
    /// Run functions periodically (under `keyhole serve`).
    #[command(subcommand)]
    Schedules(schedules::SchedulesCmd),
    /// Bearer tokens for the HTTP API: create (shown once), list, revoke.
    #[command(subcommand)]
    Tokens(tokens::TokensCmd),
}

/// Run the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let home = cli.home.clone().unwrap_or_else(crate::config::default_home);
    let json = cli.json;
    match dispatch(cli, home).await {
        Ok(code) => code,
        Err(e) => {
            if json {
                json_error(kind(&e), &report(&e));
            } else {
                eprintln!("error: {}", report(&e));
            }
            // A command line that cannot work as given exits as clap's own errors do.
            if e.chain().any(|cause| cause.is::<Usage>()) {
                2
            } else {
                1
            }
        }
    }
}

/// Print an error as `--json` does: one `{"error": {"kind", "message"}}` line on stderr.
pub(crate) fn json_error(kind: &str, message: &str) {
    let body = serde_json::json!({ "error": { "kind": kind, "message": message } });
    eprintln!("{body}");
}

/// A command line that cannot work as given (kind `invalid-request` under `--json`,
/// exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The HTTP API's kind for the first of the library's errors in `e`'s chain
/// (`not-found`, `invalid-request`, `conflict`, …), else `error`.
fn kind(e: &anyhow::Error) -> &'static str {
    e.chain()
        .find_map(|e| {
            if e.is::<Usage>() {
                Some("invalid-request")
            } else {
                crate::server::error_kind(e)
            }
        })
        .unwrap_or("error")
}

/// An error and its causes, each cause once: many of our messages already quote their
/// cause, and printing it again would say everything twice.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn open(home: &std::path::Path, max_instances: u32) -> anyhow::Result<Keyhole> {
    Ok(Keyhole::open(
        home,
        RuntimeConfig {
            max_instances,
            ..Default::default()
        },
    )?)
}

async fn dispatch(cli: Cli, home: PathBuf) -> anyhow::Result<i32> {
    // One-shot commands need few instance slots; a server asks for more.
    let instances = match &cli.command {
        Command::Serve(args) => args.instances(),
        _ => 16,
    };
    let host = std::sync::Arc::new(open(&home, instances)?);
    let json = cli.json;
    let result = match cli.command {
        Command::Functions(cmd) => functions::functions(&host, cmd, json).await,
        Command::Run(args) => functions::run(&host, args, json).await,
        Command::Logs(args) => functions::logs(&host, args, json),
        Command::Services(cmd) => services::services(&host, cmd, json),
        Command::Connections(cmd) => connections::connections(&host, cmd, json).await,
        Command::Serve(args) => serve::serve(host.clone(), args, json).await,
        Command::Tokens(cmd) => tokens::tokens(&host, cmd, json),
        Command::Schedules(cmd) => schedules::schedules(&host, cmd, json),
    };
    // A token refresh outlives the invocation that started it (one that timed out, say);
    // exiting now would cut it off and could lose a refresh token the provider rotated.
    host.refreshes_settled().await;
    result
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Catches, among others, a `conflicts_with` naming an argument that does not exist.
        super::Cli::command().debug_assert();
    }
}
