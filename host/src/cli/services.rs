//! `keyhole services …`: browse presets, define custom services.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::connections::KvParser;
use super::output;
use crate::Keyhole;
use crate::connections::CatalogEntry;
use crate::services::ServiceDef;

/// `keyhole services` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServicesCmd {
    /// List preset and custom services.
    List,
    /// Show a service: auth type, URLs, allowed origins, params, scopes, verification.
    Show {
        /// Service name.
        name: String,
    },
    /// Define a custom service, from flags or from a TOML file in the preset schema.
    Add(Box<AddArgs>),
    /// Replace a custom service's definition with the contents of a TOML file.
    Edit {
        /// Service name.
        name: String,
        /// TOML file in the preset schema; its `name` must match.
        #[arg(long)]
        file: PathBuf,
        /// Confirm that connected connections' credentials may go to the new origins
        /// (without it, a definition that moves them is refused).
        #[arg(long)]
        move_credentials: bool,
    },
    /// Set a service's OAuth client registration (client id, secret, redirect URL).
    ///
    /// Register keyhole's callback URL (shown by `services show`) at the provider first.
    /// The secret is read from stdin with --client-secret-stdin, else asked for hidden.
    ///
    /// The client is bound to where it is registered: its id and secret are sent only to
    /// the service's token and revocation endpoints on that host, and a connection that
    /// points elsewhere is refused. Where those endpoints are on a host a param names
    /// (GitLab's `host`), say which with --param.
    SetClient {
        /// Service name.
        name: String,
        /// Where the OAuth app is registered, for a service whose OAuth endpoints are on a
        /// host a param names: NAME=VALUE, e.g. host=gitlab.example.com (repeatable). A
        /// param left out means its default (GitLab: gitlab.com), or, if it has a list of
        /// choices (Zoho's dc), any of them.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = KvParser)]
        params: Vec<(String, String)>,
        /// Client id issued by the provider.
        #[arg(long)]
        client_id: String,
        /// Read the client secret from the first line of stdin.
        #[arg(long)]
        client_secret_stdin: bool,
        /// Public client: no client secret.
        #[arg(long, conflicts_with = "client_secret_stdin")]
        public: bool,
        /// Redirect URL registered at the provider (default: $KEYHOLE_REDIRECT_URL, else
        /// http://127.0.0.1:8976/oauth/callback).
        #[arg(long)]
        redirect_url: Option<String>,
    },
    /// Delete a custom service (refused while a connection uses it).
    Delete {
        /// Service name.
        name: String,
    },
}

/// Auth types `services add` can build from flags (use --file for OAuth and custom).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlagAuth {
    /// One API key in a header, a query parameter or as the Basic user.
    #[value(alias = "api_key")]
    ApiKey,
    /// HTTP Basic user + password.
    Basic,
    /// A static bearer token.
    Bearer,
    /// No credentials.
    None,
}

/// Arguments of `services add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// TOML file in the preset schema; the service is defined by the file alone, so the
    /// other flags may not be given with it.
    #[arg(long, conflicts_with_all = [
        "name", "display_name", "auth", "base_url", "origins", "key_header", "key_format",
        "key_query", "key_as_basic_user", "param_display_name", "verify", "account",
        "description",
    ])]
    pub file: Option<PathBuf>,
    /// Service name.
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Name shown to admins (default: the name).
    #[arg(long)]
    pub display_name: Option<String>,
    /// Auth type.
    #[arg(long, value_enum, required_unless_present = "file")]
    pub auth: Option<FlagAuth>,
    /// API base URL (https, or http to a loopback address for local testing).
    #[arg(long, required_unless_present = "file")]
    pub base_url: Option<String>,
    /// Extra allowed origin (repeatable); the base URL's origin is always allowed.
    #[arg(long = "origin")]
    pub origins: Vec<String>,
    /// api-key: header that carries the key, e.g. X-API-Key.
    #[arg(long, conflicts_with_all = ["key_query", "key_as_basic_user"])]
    pub key_header: Option<String>,
    /// api-key: header value template, e.g. "Token {value}".
    #[arg(long)]
    pub key_format: Option<String>,
    /// api-key: query parameter that carries the key, e.g. api_key.
    #[arg(long, conflicts_with = "key_as_basic_user")]
    pub key_query: Option<String>,
    /// api-key: send the key as the Basic auth user name.
    #[arg(long)]
    pub key_as_basic_user: bool,
    /// Name the admin is asked for (default: "API key", "Username"/"Password", "Token").
    #[arg(long)]
    pub param_display_name: Option<String>,
    /// Verification request, e.g. "GET /user".
    #[arg(long)]
    pub verify: Option<String>,
    /// Where the verification's JSON answer names the account the credentials belong
    /// to, as a JSON pointer, e.g. "/login" (repeatable: the first that is there wins).
    #[arg(long = "account", value_name = "POINTER", requires = "verify")]
    pub account: Vec<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
}

/// `keyhole services …`; `json`: print JSON.
pub fn services(host: &Keyhole, cmd: ServicesCmd, json: bool) -> anyhow::Result<i32> {
    let catalog = host.connections().catalog();
    match cmd {
        ServicesCmd::List => {
            let list = catalog.list()?;
            if json {
                let v: Vec<_> = list.iter().map(entry_json).collect();
                output::json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|e| {
                        vec![
                            e.def.name.clone(),
                            e.def.display_name.clone(),
                            auth_name(&e.def),
                            format!("{:?}", e.source).to_lowercase(),
                            e.def.base_url.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &["NAME", "DISPLAY NAME", "AUTH", "SOURCE", "BASE URL"],
                    &rows,
                );
            }
            Ok(0)
        }
        ServicesCmd::Show { name } => {
            let entry = catalog.require(&name)?;
            let oauth = if entry.def.oauth2.is_some() {
                Some(host.connections().oauth_client_summary(&name)?)
            } else {
                None
            };
            if json {
                let mut v = entry_json(&entry);
                if let Some(summary) = &oauth {
                    v["oauth_client_id"] = serde_json::json!(summary.client_id);
                    v["callback_url"] = serde_json::json!(summary.callback_url);
                    v["oauth_client_origins"] = serde_json::json!(summary.origins);
                }
                output::json(&v)?;
            } else {
                show(&entry);
                if let Some(summary) = oauth {
                    let set = summary.client_id.is_some();
                    let mut fields = vec![
                        ("callback URL", format!("{}  (register exactly this at the provider)", summary.callback_url)),
                        ("client id", summary.client_id.unwrap_or_else(|| format!("(not set: keyhole services set-client {name} --client-id ID --client-secret-stdin)"))),
                    ];
                    if set {
                        fields.push((
                            "client sent to",
                            match summary.origins {
                                Some(origins) => format!("{}  (the token and revocation endpoints there only)", origins.join(", ")),
                                None => format!("(not recorded: saved by an older keyhole; run `keyhole services set-client {name} --param ...` again)"),
                            },
                        ));
                    }
                    println!();
                    output::fields(&fields);
                }
            }
            Ok(0)
        }
        ServicesCmd::Add(args) => {
            let def = match &args.file {
                Some(path) => parse_file(path)?,
                None => from_flags(&args)?,
            };
            catalog.add(&def)?;
            if json {
                output::json(&entry_json(&catalog.require(&def.name)?))?;
                return Ok(0);
            }
            println!("added custom service {}", def.name);
            println!("next: keyhole connections add NAME --service {}", def.name);
            Ok(0)
        }
        ServicesCmd::Edit {
            name,
            file,
            move_credentials,
        } => {
            let def = parse_file(&file)?;
            if def.name != name {
                return Err(usage!(
                    "the file defines service {:?}, not {name:?}",
                    def.name
                ));
            }
            let changed = catalog.require(&name)?.def != def;
            if changed {
                host.connections().edit_service(&def, move_credentials)?;
            }
            if json {
                let mut v = entry_json(&catalog.require(&name)?);
                v["changed"] = changed.into();
                output::json(&v)?;
            } else if changed {
                println!("updated service {name}");
            } else {
                println!("service {name} is already defined so; nothing changed");
            }
            Ok(0)
        }
        ServicesCmd::SetClient {
            name,
            params,
            client_id,
            client_secret_stdin,
            public,
            redirect_url,
        } => {
            let params: std::collections::BTreeMap<String, String> = params.into_iter().collect();
            // Before the secret is asked for: a missing or wrong --param fails first.
            host.connections()
                .client_registration_origins(&name, &params)?;
            let client_secret = if public {
                None
            } else if client_secret_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(crate::secrets::Secret::new(
                    line.trim_end_matches(['\r', '\n']),
                ))
            } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                Some(crate::secrets::Secret::new(rpassword::prompt_password(
                    "Client secret: ",
                )?))
            } else {
                return Err(usage!(
                    "no client secret given: pass --client-secret-stdin (or --public for a public client)"
                ));
            };
            let config = crate::oauth::ClientConfig {
                client_id,
                client_secret,
                redirect_url,
            };
            let origins = host
                .connections()
                .set_oauth_client_at(&name, &config, &params)?;
            if json {
                output::json(&serde_json::json!({
                    "service": name,
                    "oauth_client_id": config.client_id,
                    "public_client": config.client_secret.is_none(),
                    "callback_url": config.effective_redirect_url(),
                    "oauth_client_origins": origins,
                }))?;
                return Ok(0);
            }
            println!("OAuth client for {name} saved (secret sealed)");
            println!(
                "it is sent only to the token and revocation endpoints on {}",
                origins.join(", ")
            );
            println!(
                "callback URL to register at the provider: {}",
                config.effective_redirect_url()
            );
            Ok(0)
        }
        ServicesCmd::Delete { name } => {
            catalog.delete(&name)?;
            if json {
                output::json(&serde_json::json!({ "deleted": name }))?;
            } else {
                println!("deleted service {name}");
            }
            Ok(0)
        }
    }
}

fn parse_file(path: &PathBuf) -> anyhow::Result<ServiceDef> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(ServiceDef::from_toml(&text)?)
}

fn auth_name(def: &ServiceDef) -> String {
    serde_json::to_value(def.auth)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn entry_json(e: &CatalogEntry) -> serde_json::Value {
    let mut v = serde_json::to_value(&e.def).unwrap_or_default();
    v["source"] = serde_json::to_value(e.source).unwrap_or_default();
    v
}

fn show(e: &CatalogEntry) {
    let d = &e.def;
    let mut pairs = vec![
        ("name", d.name.clone()),
        ("display name", d.display_name.clone()),
        ("source", format!("{:?}", e.source).to_lowercase()),
        ("auth", auth_name(d)),
        ("base url", d.base_url.clone()),
        (
            "allowed origins",
            if d.allowed_origins.is_empty() {
                "(origin of the base url)".into()
            } else {
                d.allowed_origins.join(", ")
            },
        ),
    ];
    if !d.description.is_empty() {
        pairs.push(("description", d.description.clone()));
    }
    if let Some(v) = &d.verify {
        pairs.push(("verification", format!("{} {}", v.method, v.path)));
        if !v.account.is_empty() {
            pairs.push(("account from", v.account.join(", ")));
        }
    }
    if let Some(o) = &d.oauth2 {
        pairs.push((
            "authorize url",
            o.authorize_url.clone().unwrap_or_else(|| "-".into()),
        ));
        pairs.push(("token url", o.token_url.clone()));
        pairs.push((
            "revocation url",
            o.revocation_url.clone().unwrap_or_else(|| "(none)".into()),
        ));
        pairs.push(("scopes", o.scopes.join(" ")));
        pairs.push(("default scopes", o.default_scopes.join(" ")));
        pairs.push(("scope separator", format!("{:?}", o.scope_separator)));
    }
    if let Some(u) = &d.docs_url {
        pairs.push(("docs", u.clone()));
    }
    output::fields(&pairs);
    if !d.params.is_empty() {
        println!("\nparams asked for by `keyhole connections connect`:");
        let rows: Vec<Vec<String>> = d
            .params
            .iter()
            .map(|p| {
                vec![
                    p.display_name.clone(),
                    p.name.clone(),
                    serde_json::to_value(p.location)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    if p.secret { "yes".into() } else { "no".into() },
                    if p.required {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ]
            })
            .collect();
        output::table(
            &[
                "DISPLAY NAME",
                "PARAMETER",
                "LOCATION",
                "SECRET",
                "REQUIRED",
            ],
            &rows,
        );
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn from_flags(a: &AddArgs) -> anyhow::Result<ServiceDef> {
    let name = a.name.clone().unwrap_or_default();
    let auth = a.auth.unwrap_or(FlagAuth::None);
    // A flag that does not apply to the auth type would be silently dropped.
    let api_key_only = [
        ("--key-header", a.key_header.is_some()),
        ("--key-query", a.key_query.is_some()),
        ("--key-as-basic-user", a.key_as_basic_user),
    ];
    if auth != FlagAuth::ApiKey
        && let Some((flag, _)) = api_key_only.iter().find(|(_, given)| *given)
    {
        return Err(usage!("{flag} applies only to --auth api-key services"));
    }
    if a.key_format.is_some() && !matches!(auth, FlagAuth::ApiKey | FlagAuth::Bearer) {
        return Err(usage!(
            "--key-format applies only to --auth api-key and --auth bearer services"
        ));
    }
    if a.param_display_name.is_some() && auth == FlagAuth::None {
        return Err(usage!(
            "--param-display-name names a credential, and an --auth none service has none"
        ));
    }
    let base = a.base_url.as_deref().unwrap_or_default();
    url::Url::parse(base).map_err(|e| usage!("--base-url {base:?} is not a valid URL: {e}"))?;
    for origin in &a.origins {
        let url = url::Url::parse(origin).map_err(|e| {
            usage!("--origin {origin:?} is not a valid URL ({e}); give scheme and host, e.g. https://uploads.example.com")
        })?;
        if !url.has_host() {
            return Err(usage!(
                "--origin {origin:?} has no host; give scheme and host, e.g. https://uploads.example.com"
            ));
        }
    }
    let mut t = String::new();
    t.push_str(&format!("name = {}\n", toml_str(&name)));
    t.push_str(&format!(
        "display_name = {}\n",
        toml_str(a.display_name.as_deref().unwrap_or(&name))
    ));
    if let Some(d) = &a.description {
        t.push_str(&format!("description = {}\n", toml_str(d)));
    }
    let auth_kind = match auth {
        FlagAuth::ApiKey => "api_key",
        FlagAuth::Basic => "basic",
        FlagAuth::Bearer => "bearer",
        FlagAuth::None => "none",
    };
    t.push_str(&format!("auth = {}\n", toml_str(auth_kind)));
    t.push_str(&format!(
        "base_url = {}\n",
        toml_str(a.base_url.as_deref().unwrap_or_default())
    ));
    if !a.origins.is_empty() {
        let base = url::Url::parse(a.base_url.as_deref().unwrap_or_default())
            .context("--base-url is not a valid URL")?;
        let mut origins = vec![base.origin().ascii_serialization()];
        origins.extend(a.origins.iter().cloned());
        let list: Vec<String> = origins.iter().map(|o| toml_str(o)).collect();
        t.push_str(&format!("allowed_origins = [{}]\n", list.join(", ")));
    }
    let param = |name: &str, display: &str, location: &str, format: Option<&str>| {
        let mut p = format!(
            "\n[[params]]\nname = {}\ndisplay_name = {}\nsecret = true\nlocation = {}\n",
            toml_str(name),
            toml_str(display),
            toml_str(location)
        );
        if let Some(f) = format {
            p.push_str(&format!("format = {}\n", toml_str(f)));
        }
        p
    };
    let display = a.param_display_name.as_deref();
    let mut params = String::new();
    match auth {
        FlagAuth::ApiKey => {
            let d = display.unwrap_or("API key");
            if let Some(h) = &a.key_header {
                params.push_str(&param(h, d, "header", a.key_format.as_deref()));
            } else if let Some(q) = &a.key_query {
                params.push_str(&param(q, d, "query", None));
            } else if a.key_as_basic_user {
                params.push_str(&param("api_key", d, "basic_user", None));
            } else {
                return Err(usage!(
                    "an api-key service needs --key-header NAME, --key-query NAME or --key-as-basic-user"
                ));
            }
        }
        FlagAuth::Basic => {
            let mut user = param("username", "Username", "basic_user", None);
            user = user.replace("secret = true\n", "");
            params.push_str(&user);
            params.push_str(&param(
                "password",
                display.unwrap_or("Password"),
                "basic_password",
                None,
            ));
        }
        FlagAuth::Bearer => {
            params.push_str(&param(
                "Authorization",
                display.unwrap_or("Token"),
                "header",
                Some(a.key_format.as_deref().unwrap_or("Bearer {value}")),
            ));
        }
        FlagAuth::None => {}
    }
    if let Some(v) = &a.verify {
        let (method, path) = v
            .split_once(' ')
            .map(|(m, p)| (m.to_string(), p.trim().to_string()))
            .unwrap_or(("GET".into(), v.clone()));
        t.push_str(&format!(
            "\n[verify]\nmethod = {}\npath = {}\n",
            toml_str(&method),
            toml_str(&path)
        ));
        if !a.account.is_empty() {
            let list: Vec<String> = a.account.iter().map(|p| toml_str(p)).collect();
            t.push_str(&format!("account = [{}]\n", list.join(", ")));
        }
    }
    t.push_str(&params);
    Ok(ServiceDef::from_toml(&t)?)
}
