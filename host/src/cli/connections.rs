//! `keyhole connections …`: create, connect, inspect, edit, test, revoke, delete.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand};

use super::output;
use crate::Keyhole;
use crate::connections::{ConnectionView, Status, VerifyOutcome};
use crate::oauth::RevocationOutcome;
use crate::secrets::Secret;
use crate::services::ParamDef;

/// `keyhole connections` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConnectionsCmd {
    /// Create a connection to a service (status `pending` until connected).
    ///
    /// Names: 1-50 characters, a lowercase letter first, then lowercase letters, digits
    /// or hyphens. Functions use the connection by this name.
    Add {
        /// Connection name.
        name: String,
        /// Service (preset or custom; see `keyhole services list`).
        #[arg(long)]
        service: String,
        /// Scope to request (repeatable; default: the service's default scopes).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Override the service's base URL (enterprise hosts, local testing).
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Supply credentials: asks for each param by its display name (secrets hidden),
    /// then runs the service's verification request.
    Connect(ConnectArgs),
    /// List connections.
    List,
    /// Show a connection's summary (secrets masked).
    Show {
        /// Connection name.
        name: String,
    },
    /// Change scopes, base URL override or non-secret params.
    Edit {
        /// Connection name.
        name: String,
        /// Replace the scopes (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// New base URL override.
        #[arg(long, conflicts_with = "clear_base_url")]
        base_url: Option<String>,
        /// Remove the base URL override.
        #[arg(long)]
        clear_base_url: bool,
        /// Set a non-secret param (NAME=VALUE, repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = KvParser)]
        params: Vec<(String, String)>,
        /// Confirm that the stored credentials may go to the new origins (without it, a
        /// change of where a connected connection points is refused).
        #[arg(long)]
        move_credentials: bool,
    },
    /// Run the service's verification request with the stored credentials.
    Test {
        /// Connection name.
        name: String,
    },
    /// Wipe the credentials (status `revoked`); `connect` works again with the same name.
    ///
    /// For OAuth connections the tokens are first revoked at the provider (RFC 7009).
    /// The credentials are wiped locally whatever the provider answers; if it did not
    /// confirm every revocation, the command says so and exits 1: the grant may still be
    /// live there, so remove keyhole's access in the provider's account settings.
    Revoke {
        /// Connection name.
        name: String,
    },
    /// Delete a connection. OAuth tokens are revoked at the provider first (exit 1 if it
    /// does not confirm); refused while functions hold grants on it, unless --with-grants.
    Delete {
        /// Connection name.
        name: String,
        /// Also take back the grants functions hold on it (they lose access).
        #[arg(long)]
        with_grants: bool,
    },
}

/// Arguments of `connections connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Connection name.
    pub name: String,
    /// A param value as NAME=VALUE, by wire name or display name (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = KvParser)]
    pub params: Vec<(String, String)>,
    /// Read NAME=VALUE lines from stdin (for scripts; keeps secrets out of the process list).
    #[arg(long)]
    pub params_stdin: bool,
    /// OAuth: print the authorization URL and exit; `keyhole serve` receives the callback.
    #[arg(long)]
    pub no_listen: bool,
    /// OAuth: don't try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
}

/// `NAME=VALUE` for `--param`. Unlike clap's own error, a malformed one is not echoed
/// back: it may be a secret typed without its name.
#[derive(Clone)]
pub(super) struct KvParser;

impl clap::builder::TypedValueParser for KvParser {
    type Value = (String, String);

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        value
            .to_str()
            .and_then(|s| parse_kv(s).ok())
            .ok_or_else(|| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    "--param expects NAME=VALUE (the value given is not shown, in case it is a secret)\n",
                )
                .with_cmd(cmd)
            })
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| "expected NAME=VALUE".to_string())
}

/// `keyhole connections …`; `json`: print JSON.
pub async fn connections(host: &Keyhole, cmd: ConnectionsCmd, json: bool) -> anyhow::Result<i32> {
    let c = host.connections();
    match cmd {
        ConnectionsCmd::Add {
            name,
            service,
            scopes,
            base_url,
        } => {
            let view = c.add(&name, &service, scopes, base_url)?;
            if json {
                output::json(&view)?;
            } else {
                println!(
                    "created connection {name} ({}), status pending",
                    view.service_display_name
                );
                println!("next: keyhole connections connect {name}");
            }
            Ok(0)
        }
        ConnectionsCmd::Connect(args) => connect(host, args, json).await,
        ConnectionsCmd::List => {
            output::listing(
                json,
                &c.list()?,
                "no connections yet; create one with `keyhole connections add NAME --service SERVICE`",
                &[
                    "NAME",
                    "SERVICE",
                    "STATUS",
                    "ACCOUNT",
                    "BASE URL",
                    "LAST USED",
                    "FUNCTIONS",
                ],
                |v| {
                    vec![
                        v.name.clone(),
                        v.service.clone(),
                        status_name(v),
                        output::one_line(
                            v.account
                                .as_deref()
                                .filter(|_| holds_credentials(v))
                                .unwrap_or("-"),
                            40,
                        ),
                        v.base_url.clone().unwrap_or_else(|| "-".into()),
                        output::time(v.last_used_at),
                        v.granted_functions.join(","),
                    ]
                },
            )?;
            Ok(0)
        }
        ConnectionsCmd::Show { name } => {
            let v = c.show(&name)?;
            if json {
                output::json(&v)?;
            } else {
                show(&v);
            }
            Ok(0)
        }
        ConnectionsCmd::Edit {
            name,
            scopes,
            base_url,
            clear_base_url,
            params,
            move_credentials,
        } => {
            if scopes.is_empty() && base_url.is_none() && !clear_base_url && params.is_empty() {
                return Err(usage!(
                    "nothing to change: give --scope, --base-url, --clear-base-url or --param"
                ));
            }
            let scopes = (!scopes.is_empty()).then_some(scopes);
            let base = if clear_base_url {
                Some(None)
            } else {
                base_url.map(Some)
            };
            let params = params.into_iter().collect();
            let before = serde_json::to_value(c.show(&name)?)?;
            let v = c.edit(&name, scopes, base, params, move_credentials)?;
            let changed = serde_json::to_value(&v)? != before;
            if json {
                let mut out = serde_json::to_value(&v)?;
                out["changed"] = changed.into();
                output::json(&out)?;
                return Ok(0);
            }
            if !changed {
                println!("connection {name} already had those settings; nothing changed");
            } else {
                println!("updated connection {name}");
            }
            show(&v);
            Ok(0)
        }
        ConnectionsCmd::Test { name } => {
            let outcome = c.test(&name).await?;
            if json {
                output::json(&outcome)?;
                if !outcome.ok {
                    super::json_error("verification-failed", &failed_verification(&outcome));
                }
            } else {
                print_verify(&outcome);
                // The credentials turned out to be another account's than last time.
                if let Some(note) = &outcome.account_change {
                    eprintln!("warning: {note}");
                }
            }
            Ok(if outcome.ok { 0 } else { 1 })
        }
        ConnectionsCmd::Revoke { name } => {
            let revocation = c.revoke(&name).await?;
            let failed = revocation
                .provider
                .iter()
                .any(|p| p.outcome == RevocationOutcome::Failed);
            if json {
                output::json(&revocation)?;
            } else if !revocation.wiped {
                println!(
                    "connection {name} holds no credentials (status {}); nothing to revoke",
                    status_name(&revocation.connection)
                );
            } else {
                println!(
                    "revoked connection {name}: credentials wiped; reconnect with `keyhole connections connect {name}`"
                );
                for p in &revocation.provider {
                    println!("  provider: {}", p.detail);
                }
            }
            if failed {
                unconfirmed(json);
                return Ok(1);
            }
            Ok(0)
        }
        ConnectionsCmd::Delete { name, with_grants } => {
            let provider = c.delete(&name, with_grants).await?;
            if json {
                output::json(&serde_json::json!({ "deleted": name, "provider": provider }))?;
            } else {
                println!("deleted connection {name}");
                for p in &provider {
                    println!("  provider: {}", p.detail);
                }
            }
            if provider
                .iter()
                .any(|p| p.outcome == RevocationOutcome::Failed)
            {
                unconfirmed(json);
                return Ok(1);
            }
            Ok(0)
        }
    }
}

/// Say on stderr that the provider did not confirm every revocation (as a `--json` error
/// with `json`).
fn unconfirmed(json: bool) {
    const MESSAGE: &str = "the provider did not confirm every revocation, so the grant may still be live there; remove keyhole's access in the provider's account settings";
    if json {
        super::json_error("revocation-unconfirmed", MESSAGE);
    } else {
        eprintln!("error: {MESSAGE}");
    }
}

fn status_name(v: &ConnectionView) -> String {
    serde_json::to_value(v.status)
        .ok()
        .and_then(|s| s.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn show(v: &ConnectionView) {
    let mut pairs = vec![
        ("name", v.name.clone()),
        (
            "service",
            format!("{} ({})", v.service, v.service_display_name),
        ),
        (
            "auth",
            serde_json::to_value(v.auth)
                .ok()
                .and_then(|s| s.as_str().map(str::to_string))
                .unwrap_or_default(),
        ),
        ("status", status_name(v)),
    ];
    if let Some(r) = &v.status_reason {
        pairs.push(("status reason", r.clone()));
    }
    if let Some(a) = &v.account {
        // Kept after a revocation, to compare with whoever connects it next.
        let label = if holds_credentials(v) {
            "account"
        } else {
            "last account"
        };
        pairs.push((label, a.clone()));
    }
    pairs.extend([
        (
            "scopes",
            if v.scopes.is_empty() {
                "-".into()
            } else {
                v.scopes.join(" ")
            },
        ),
        (
            "base url",
            format!(
                "{}{}",
                v.base_url.clone().unwrap_or_else(|| "-".into()),
                if v.base_url_overridden {
                    " (override)"
                } else {
                    ""
                }
            ),
        ),
        ("allowed origins", v.allowed_origins.join(", ")),
        ("created", output::time(Some(v.created_at))),
        ("connected", output::time(v.connected_at)),
        ("last used", output::time(v.last_used_at)),
        (
            "functions",
            if v.granted_functions.is_empty() {
                "(none)".into()
            } else {
                v.granted_functions.join(", ")
            },
        ),
    ]);
    for p in &v.params {
        pairs.push((
            "param",
            format!(
                "{} ({}): {}",
                p.display_name,
                p.name,
                p.value.clone().unwrap_or_else(|| "(not set)".into())
            ),
        ));
    }
    if let Some(obj) = v.token.as_object()
        && !obj.is_empty()
    {
        for (k, val) in obj {
            pairs.push(("token", format!("{k}: {val}")));
        }
    }
    output::fields(&pairs);
}

fn print_verify(v: &VerifyOutcome) {
    if v.ok {
        println!(
            "verification {} succeeded ({}){}",
            v.request,
            v.status.map(|s| s.to_string()).unwrap_or_default(),
            v.account
                .as_ref()
                .map(|a| format!("; the credentials belong to {a:?}"))
                .unwrap_or_default()
        );
    } else {
        println!(
            "verification failed: {}",
            v.reason.clone().unwrap_or_default()
        );
    }
}

/// Whether a connection's account is the account of credentials it holds now.
fn holds_credentials(v: &ConnectionView) -> bool {
    matches!(v.status, Status::Connected | Status::NeedsReauth)
}

/// `connection NAME is STATUS`, and whose the credentials are when known.
fn state_line(v: &ConnectionView) -> String {
    let mut line = format!("connection {} is {}", v.name, status_name(v));
    if let (Status::Connected, Some(a)) = (v.status, &v.account) {
        line.push_str(&format!(" as {a:?}"));
    }
    line
}

/// A connection just connected keeps a status reason only to say that its credentials
/// now belong to another account than before.
fn warn_if_account_changed(v: &ConnectionView) {
    if v.status == Status::Connected
        && let Some(note) = &v.status_reason
    {
        eprintln!("warning: {note}");
    }
}

fn find_param<'a>(params: &'a [ParamDef], key: &str) -> Option<&'a ParamDef> {
    params.iter().find(|p| p.name == key).or_else(|| {
        params
            .iter()
            .find(|p| p.display_name.eq_ignore_ascii_case(key))
    })
}

async fn connect(host: &Keyhole, args: ConnectArgs, json: bool) -> anyhow::Result<i32> {
    let c = host.connections();
    let (service, params) = c.params_to_ask(&args.name)?;
    if service
        .oauth2
        .as_ref()
        .is_some_and(|o| o.grant == crate::services::GrantType::AuthorizationCode)
    {
        if !args.params.is_empty() || args.params_stdin {
            return Err(usage!(
                "connection {:?} signs in with OAuth, so --param and --params-stdin do not \
                 apply to `connect`; set its non-secret params with `keyhole connections edit \
                 {} --param NAME=VALUE`, then connect without them",
                args.name,
                args.name
            ));
        }
        return connect_oauth(host, &args, json).await;
    }
    let mut given: Vec<(String, String)> = args.params;
    if args.params_stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            given.push(parse_kv(&line).map_err(|e| anyhow::anyhow!("stdin line: {e}"))?);
        }
    }
    let mut values: BTreeMap<String, Secret> = BTreeMap::new();
    for (k, v) in given {
        let p =
            find_param(&params, &k).ok_or_else(|| crate::connections::unknown_param(&service))?;
        values.insert(p.name.clone(), Secret::new(v));
    }
    let interactive = std::io::stdin().is_terminal() && !args.params_stdin;
    for p in &params {
        if values.contains_key(&p.name) {
            continue;
        }
        if !interactive {
            continue; // `connect` reports what is missing by display name
        }
        let prompt = match (&p.default, &p.description) {
            (Some(d), _) => format!("{} [{}]: ", p.display_name, d),
            (None, Some(desc)) => format!("{} ({desc}): ", p.display_name),
            (None, None) => format!("{}: ", p.display_name),
        };
        let value = if p.secret {
            rpassword::prompt_password(&prompt)?
        } else {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        };
        if !value.is_empty() {
            values.insert(p.name.clone(), Secret::new(value));
        }
    }
    let outcome = c.connect(&args.name, values).await?;
    let connected = status_name(&outcome.connection) == "connected" && outcome.stored;
    if json {
        output::json(&outcome)?;
        if !connected {
            let why = match &outcome.verification {
                Some(v) if !v.ok => failed_verification(v),
                _ => format!("connection {} is not connected", args.name),
            };
            super::json_error("verification-failed", &why);
        }
    } else {
        if let Some(v) = &outcome.verification {
            print_verify(v);
        }
        let status = status_name(&outcome.connection);
        if outcome.stored {
            println!("{}", state_line(&outcome.connection));
            warn_if_account_changed(&outcome.connection);
        } else {
            println!(
                "the new credentials were not stored; connection {} keeps its previous credentials ({status})",
                args.name
            );
        }
    }
    Ok(if connected { 0 } else { 1 })
}

/// What a failed verification says, in one line (its reason already names the request).
fn failed_verification(v: &VerifyOutcome) -> String {
    let reason = v
        .reason
        .clone()
        .unwrap_or_else(|| format!("{} failed", v.request));
    format!("{reason}; the credentials did not work")
}

async fn connect_oauth(host: &Keyhole, args: &ConnectArgs, json: bool) -> anyhow::Result<i32> {
    let c = host.connections();
    let pending = c.begin_authorization(&args.name)?;
    let listener = if args.no_listen {
        None
    } else {
        Some(crate::oauth::bind_callback(&pending.redirect_url).await?)
    };
    if json {
        // One line a script can read before the wait; the result follows when it ends.
        let line = serde_json::json!({
            "authorize_url": pending.authorize_url,
            "redirect_url": pending.redirect_url,
            "valid_for_s": crate::oauth::STATE_TTL.as_secs(),
        });
        println!("{line}");
        std::io::stdout().flush()?;
    } else {
        println!("Open this URL in a browser to authorize keyhole (valid for 10 minutes):");
        println!("{}", pending.authorize_url);
        println!(
            "waiting for the provider to redirect to {}",
            pending.redirect_url
        );
    }
    if !args.no_browser && !args.no_listen {
        open_browser(&pending.authorize_url);
    }
    if args.no_listen && !json {
        println!(
            "`keyhole serve` must be running where {} reaches it to complete the authorization",
            pending.redirect_url
        );
        return Ok(0);
    }
    let Some(listener) = listener else {
        return Ok(0);
    };
    let state = url::Url::parse(&pending.authorize_url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let outcome = listener
        .wait(crate::oauth::STATE_TTL, &state, |params| async move {
            c.complete_authorization(&params, Some(&args.name)).await
        })
        .await?;
    match outcome {
        Ok(view) => {
            if json {
                output::json(&view)?;
            } else {
                println!("{}", state_line(&view));
                if let Some(exp) = view.token.get("expires_at").and_then(|v| v.as_i64()) {
                    println!("access token expires {}", crate::util::format_ms(exp));
                }
                warn_if_account_changed(&view);
            }
            Ok(0)
        }
        Err(e) if json => {
            let message = format!("{e}; connection {} was not changed", args.name);
            let kind = crate::server::error_kind(&e).unwrap_or("oauth-error");
            super::json_error(kind, &message);
            Ok(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("connection {} was not changed", args.name);
            Ok(1)
        }
    }
}

/// Best effort: open the URL in the desktop's browser when there is a display.
fn open_browser(url: &str) {
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let opener = std::env::var("BROWSER")
        .ok()
        .or_else(|| has_display.then(|| "xdg-open".to_string()));
    if let Some(cmd) = opener {
        // The browser outlives this command: it must not inherit the master key.
        let _ = std::process::Command::new(cmd)
            .env_remove(crate::secrets::MASTER_KEY_ENV)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}
