//! `keyhole` command-line entry point: parses arguments, sets up logging, and hands
//! over to the library's CLI module.

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Log targets that see outbound URLs (see `main`).
const HTTP_CLIENT_TARGETS: [&str; 4] = ["reqwest", "hyper_util", "hyper", "h2"];

fn main() {
    let cli = keyhole::cli::Cli::parse();
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
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Whatever RUST_LOG says, the HTTP client crates stay at info: their debug and trace
    // events name the hosts they connect to, and a capability URL (a webhook) may carry
    // its secret in the host name.
    for capped in HTTP_CLIENT_TARGETS {
        if let Ok(directive) = format!("{capped}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
