//! `keyhole tokens …`: create, list and revoke the bearer tokens of `keyhole serve`.

use clap::{Subcommand, ValueEnum};

use super::output;
use crate::Keyhole;
use crate::server::{Scope, create_token, list_tokens, revoke_token};

/// Token scopes as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    /// Invoke functions only (`POST /v1/functions/{name}/invoke`).
    Invoke,
    /// Every endpoint: invoke and administer.
    Admin,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Invoke => Scope::Invoke,
            ScopeArg::Admin => Scope::Admin,
        }
    }
}

/// `keyhole tokens` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a token and print it once (only its hash is stored; it cannot be shown again).
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        scope: ScopeArg,
        /// Restrict an invoke token to this one function.
        #[arg(long, value_name = "FUNCTION")]
        function: Option<String>,
        /// A note to recognise the token by in `tokens list`.
        #[arg(long)]
        label: Option<String>,
    },
    /// List tokens (never their values).
    List,
    /// Revoke a token by id; requests carrying it get 401 from then on.
    Revoke {
        /// Token id (from `tokens list`).
        id: i64,
    },
}

/// `keyhole tokens …`; `json`: print JSON (`create` puts the token in field `token`).
pub fn tokens(host: &Keyhole, cmd: TokensCmd, json: bool) -> anyhow::Result<i32> {
    let storage = host.storage();
    match cmd {
        TokensCmd::Create {
            scope,
            function,
            label,
        } => {
            let created =
                create_token(storage, scope.into(), function.as_deref(), label.as_deref())?;
            if json {
                let mut v = serde_json::to_value(&created.row)?;
                v["token"] = serde_json::json!(created.token.expose());
                output::json(&v)?;
            } else {
                // The one place a token is printed: the admin asked for it just now.
                println!("{}", created.token.expose());
                eprintln!(
                    "token {} ({}{}) created; it is shown only this once. Use it as `Authorization: Bearer <token>`.",
                    created.row.id,
                    created.row.scope,
                    created
                        .row
                        .function
                        .as_deref()
                        .map(|f| format!(", function {f}"))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        TokensCmd::List => {
            output::listing(
                json,
                &list_tokens(storage)?,
                "no API tokens; create one with `keyhole tokens create --scope invoke|admin`",
                &[
                    "ID",
                    "SCOPE",
                    "FUNCTION",
                    "LABEL",
                    "CREATED",
                    "LAST USED",
                    "STATUS",
                ],
                |t| {
                    vec![
                        t.id.to_string(),
                        t.scope.clone(),
                        t.function.clone().unwrap_or_else(|| "*".into()),
                        t.label.clone().unwrap_or_default(),
                        crate::util::format_ms(t.created_at),
                        output::time(t.last_used_at),
                        t.revoked_at
                            .map(|at| format!("revoked {}", crate::util::format_ms(at)))
                            .unwrap_or_else(|| "active".into()),
                    ]
                },
            )?;
            Ok(0)
        }
        TokensCmd::Revoke { id } => {
            match revoke_token(storage, id)? {
                (at, changed) if json => output::json(&serde_json::json!({
                    "id": id, "revoked_at": at, "changed": changed,
                }))?,
                (_, true) => println!("revoked API token {id}"),
                (at, false) => println!(
                    "API token {id} was already revoked (at {}); nothing changed",
                    crate::util::format_ms(at)
                ),
            }
            Ok(0)
        }
    }
}
