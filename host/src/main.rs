//! `keyhole` command-line entry point: parses arguments, sets up logging, and hands
//! over to the library's CLI module.

use clap::Parser;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log targets that see outbound URLs or host names (see `main`); rustls names the
/// server at debug level.
const HTTP_CLIENT_TARGETS: [&str; 7] = [
    "reqwest",
    "hyper_util",
    "hyper",
    "h2",
    "hyper_rustls",
    "tokio_rustls",
    "rustls",
];

/// Whether `target` is one of [`HTTP_CLIENT_TARGETS`] or inside one.
fn http_client(target: &str) -> bool {
    HTTP_CLIENT_TARGETS.iter().any(|crate_name| {
        target
            .strip_prefix(crate_name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The log subscriber: `filter` (from `RUST_LOG` or `--verbose`) decides, except that
/// the HTTP client crates stay at info whatever it says: their debug and trace events
/// name the hosts they connect to, and a capability URL (a webhook) may carry its secret
/// in the host name. With `json`, each event is a JSON object on its own line, so that
/// under `--json` all of stderr is JSON lines.
fn logging(filter: EnvFilter, json: bool) -> impl tracing::Subscriber + Send + Sync {
    // The cap passes on `filter`'s level hint. Without one, the global maximum level would
    // be TRACE, and every disabled `log` record (wasmtime, reqwest) would be filtered
    // one by one on the hot path instead of skipped at the call.
    let mut cap =
        filter_fn(|meta| *meta.level() <= tracing::Level::INFO || !http_client(meta.target()));
    if let Some(hint) = filter.max_level_hint() {
        cap = cap.with_max_level_hint(hint);
    }
    let events: Box<dyn Layer<_> + Send + Sync> = if json {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr),
        )
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
    };
    tracing_subscriber::registry().with(events.with_filter(filter).with_filter(cap))
}

/// Parse the command line. A malformed one under `--json` is a JSON error on stderr
/// (exit 2, as clap's own); `--help` and `--version` print as usual.
fn parse() -> keyhole::cli::Cli {
    use clap::error::ErrorKind;
    keyhole::cli::Cli::try_parse().unwrap_or_else(|e| {
        let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
        if help || !std::env::args_os().any(|a| a == "--json") {
            e.exit();
        }
        let message = e.render().to_string();
        let message = message.trim().trim_start_matches("error: ");
        let body =
            serde_json::json!({ "error": { "kind": "invalid-request", "message": message } });
        eprintln!("{body}");
        std::process::exit(2);
    })
}

fn main() {
    let cli = parse();
    // A one-shot command piped into `head` should stop quietly when the pipe closes, as
    // Unix tools do, not panic on the failed print. `serve` keeps ignoring SIGPIPE: a
    // closed log pipe must not take the server down.
    #[cfg(unix)]
    if !matches!(cli.command, keyhole::cli::Command::Serve(_)) {
        // SAFETY: called before any other thread exists; restores the default action.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let default = if cli.verbose { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    logging(filter, cli.json).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(keyhole::cli::run(cli));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Subscriber;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn the_log_cap_keeps_the_filters_level_hint() {
        for (directives, hint) in [
            ("warn", LevelFilter::WARN),
            ("info", LevelFilter::INFO),
            ("keyhole=debug,warn", LevelFilter::DEBUG),
        ] {
            let subscriber = logging(EnvFilter::new(directives), false);
            assert_eq!(subscriber.max_level_hint(), Some(hint), "{directives}");
        }
    }

    #[test]
    fn http_client_targets_match_whole_crate_names() {
        assert!(http_client("hyper"));
        assert!(http_client("hyper_util::client::legacy"));
        assert!(http_client("reqwest::connect"));
        assert!(http_client("rustls::client::hs"));
        assert!(!http_client("rustlsx"));
        assert!(!http_client("hyperx"));
        assert!(!http_client("keyhole::gateway"));
    }
}
