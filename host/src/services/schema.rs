//! The TOML schema of a service definition, shared by the built-in presets and by the
//! custom services an admin adds with `keyhole services add --file service.toml`.
//!
//! Every table rejects unknown keys, so a typo (`scope = [...]` for `scopes`) is an error
//! rather than a silently ignored setting. Keys are `snake_case`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ServiceError;

/// One third-party service a connection can be made to: where its API lives, which
/// origins a function may reach through it, and how credentials are attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDef {
    /// Identifier used by admins and in connection records; see
    /// [`validate_name`](super::validate_name) for the alphabet.
    pub name: String,
    /// Human-readable name, e.g. "Google".
    pub display_name: String,
    /// One or two sentences for the admin: what the service is and any quirks.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// How credentials are attached to requests.
    pub auth: AuthKind,
    /// Base URL of the API. May contain `{param}` placeholders naming params of location
    /// `url` (e.g. `https://{site}.atlassian.net`); a template that is exactly one
    /// placeholder (`{url}`) takes a whole URL from that param. Request paths and
    /// [`VerifyDef::path`] are appended to this URL's path.
    pub base_url: String,
    /// Bare origins (`scheme://host[:port]`, placeholders allowed) a function may reach
    /// through this service. Empty means just the origin of `base_url`; when given, it
    /// must include the origin of `base_url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// What the admin supplies when connecting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamDef>,
    /// OAuth 2.0 endpoints and settings; present if and only if `auth = "oauth2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Def>,
    /// A cheap request that succeeds only with working credentials ("test connection").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyDef>,
    /// Where the provider documents its API or authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs_url: Option<String>,
}

/// How a service authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// OAuth 2.0; the access token is placed as [`OAuth2Def::token_placement`] says.
    Oauth2,
    /// HTTP Basic: one `basic_user` param and at most one `basic_password` param.
    Basic,
    /// One or more API keys, at least one secret, in a header, query or Basic user.
    ApiKey,
    /// A secret header param such as `Authorization: Bearer {value}`.
    Bearer,
    /// Any combination of header and query params.
    Custom,
    /// No credentials; a capability URL (webhook) may still be a secret `url` param.
    None,
}

impl AuthKind {
    /// The TOML spelling, e.g. `api_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Oauth2 => "oauth2",
            AuthKind::Basic => "basic",
            AuthKind::ApiKey => "api_key",
            AuthKind::Bearer => "bearer",
            AuthKind::Custom => "custom",
            AuthKind::None => "none",
        }
    }
}

impl std::fmt::Display for AuthKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value the admin supplies when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamDef {
    /// The actual parameter: the header name, query key or placeholder name.
    pub name: String,
    /// What the admin is asked for, e.g. "API key".
    pub display_name: String,
    /// Secret values are sealed at rest and never shown again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
    /// Where the value goes.
    pub location: ParamLocation,
    /// Header value template containing `{value}`, e.g. `Bearer {value}`; only for
    /// `location = "header"`. Absent means the value as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Whether the admin must supply a value (or accept `default`).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub required: bool,
    /// Value used when the admin supplies none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Help text shown when asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Allowed values; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

impl ParamDef {
    /// The header value template, `{value}` when `format` is absent.
    pub fn format(&self) -> &str {
        self.format.as_deref().unwrap_or("{value}")
    }
}

/// Where a param's value is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamLocation {
    /// A request header named after the param, formatted with [`ParamDef::format`].
    Header,
    /// A query parameter named after the param.
    Query,
    /// The user half of HTTP Basic credentials.
    BasicUser,
    /// The password half of HTTP Basic credentials.
    BasicPassword,
    /// Fills `{name}` placeholders in the service's URLs.
    Url,
    /// Stored with the connection but never sent.
    None,
}

/// OAuth 2.0 settings of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Def {
    /// Grant used to obtain tokens.
    #[serde(default)]
    pub grant: GrantType,
    /// Authorization endpoint; required for `authorization_code`, unused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// Token endpoint.
    pub token_url: String,
    /// RFC 7009 revocation endpoint, if the provider has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    /// The authorization server's issuer identifier (RFC 8414), for providers that send
    /// it back as `iss` in every authorization response (RFC 9207). When set, a response
    /// without it, or from another issuer (a mix-up attack), is refused and its code is
    /// never sent anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Scopes an admin may choose from (a representative subset for large providers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Scopes requested when the admin chooses none; each must be listed in `scopes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_scopes: Vec<String>,
    /// Joins scopes in the `scope` parameter: `" "` per RFC 6749, `","` for some.
    #[serde(default = "space", skip_serializing_if = "is_space")]
    pub scope_separator: String,
    /// Extra authorization request parameters, e.g. Google's `access_type = "offline"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub auth_params: BTreeMap<String, String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub token_auth_method: TokenAuthMethod,
    /// Send a PKCE S256 challenge (RFC 7636); on unless the provider rejects it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub pkce: bool,
    /// Token-endpoint error codes that, answering a refresh, mean the grant is gone (the
    /// connection needs re-authorizing), besides RFC 6749's `invalid_grant`: GitHub's
    /// `bad_refresh_token`, Slack's `invalid_refresh_token`, Zoho's `invalid_code`.
    /// Any other error is taken as passing, and retried after a backoff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reauth_errors: Vec<String>,
    /// Where the access token goes on API requests.
    #[serde(default, skip_serializing_if = "TokenPlacement::is_default")]
    pub token_placement: TokenPlacement,
}

/// The OAuth 2.0 grant a service uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// Browser consent, then code exchange (RFC 6749 §4.1).
    #[default]
    AuthorizationCode,
    /// Machine-to-machine with the client's own credentials (RFC 6749 §4.4).
    ClientCredentials,
}

/// How the client id and secret are sent to the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenAuthMethod {
    /// HTTP Basic header (`client_secret_basic`).
    #[default]
    Basic,
    /// Form body fields (`client_secret_post`).
    Body,
}

/// Where an OAuth access token is placed on API requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPlacement {
    /// Header (default) or query parameter.
    #[serde(default)]
    pub location: TokenLocation,
    /// Header name or query key; see [`TokenPlacement::name`] for the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Value template containing `{token}`; see [`TokenPlacement::format`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

impl TokenPlacement {
    /// Header name or query key: `Authorization` for a header, `access_token` for a query.
    pub fn name(&self) -> &str {
        match (&self.name, self.location) {
            (Some(name), _) => name,
            (None, TokenLocation::Header) => "Authorization",
            (None, TokenLocation::Query) => "access_token",
        }
    }

    /// Value template: `Bearer {token}` for a header, `{token}` for a query.
    pub fn format(&self) -> &str {
        match (&self.format, self.location) {
            (Some(format), _) => format,
            (None, TokenLocation::Header) => "Bearer {token}",
            (None, TokenLocation::Query) => "{token}",
        }
    }

    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Where an OAuth access token goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLocation {
    /// A request header.
    #[default]
    Header,
    /// A query parameter.
    Query,
}

/// A request that succeeds only when the connection's credentials work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyDef {
    /// HTTP method, `GET` by default.
    #[serde(default = "get", skip_serializing_if = "is_get")]
    pub method: String,
    /// Path (and optional query) appended to the base URL's path; starts with `/`.
    pub path: String,
    /// Statuses that mean success; empty means any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
    /// Top-level fields the JSON response body must have, with these values, for APIs
    /// that answer 200 to bad credentials (Slack: `ok = true`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expect_json: BTreeMap<String, serde_json::Value>,
    /// Where a successful response names the account the credentials belong to: JSON
    /// pointers (RFC 6901) into its body, tried in order; the first that leads to a
    /// string or a number wins (GitHub: `["/login"]`). keyhole shows it as "connected
    /// as", and warns when a re-authorization lands on another account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub account: Vec<String>,
}

/// Longest account name kept; the upstream chose it.
pub const MAX_ACCOUNT_CHARS: usize = 200;

/// Unicode format characters that change how text around them is shown without showing
/// themselves: bidirectional overrides and isolates, zero-width characters, line and
/// paragraph separators, the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

impl VerifyDef {
    /// Whether `status` counts as a successful verification.
    pub fn is_success(&self, status: u16) -> bool {
        if self.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect_status.contains(&status)
        }
    }

    /// The account a successful response with `body` names (see [`Self::account`]), and
    /// the pointer it was read from: on one line, without invisible or bidirectional
    /// formatting characters, at most [`MAX_ACCOUNT_CHARS`] characters; `None` when no
    /// pointer leads to a non-empty string or number.
    pub fn account(&self, body: &[u8]) -> Option<(&str, String)> {
        if self.account.is_empty() {
            return None;
        }
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        self.account.iter().find_map(|pointer| {
            let raw = match doc.pointer(pointer)? {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return None,
            };
            // The upstream chose it, and a terminal shows it: nothing may reorder or hide
            // what is printed around it.
            let flat: String = raw
                .chars()
                .filter(|c| !is_invisible_format(*c))
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_ACCOUNT_CHARS)
                .collect();
            let flat = flat.trim();
            (!flat.is_empty()).then(|| (pointer.as_str(), flat.to_string()))
        })
    }

    /// Why a response with `status` and `body` is not a successful verification, or
    /// `None` when it is.
    pub fn failure(&self, status: u16, body: &[u8]) -> Option<String> {
        if !self.is_success(status) {
            return Some(format!("answered {status}"));
        }
        if self.expect_json.is_empty() {
            return None;
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
            return Some(format!(
                "answered {status} without the JSON object it should"
            ));
        };
        self.expect_json.iter().find_map(|(name, want)| {
            let got = fields.get(name).unwrap_or(&serde_json::Value::Null);
            // The upstream chose the value: keep the reason short whatever it sent.
            let shown: String = got.to_string().chars().take(80).collect();
            (got != want).then(|| format!("answered {status} with {name:?} = {shown}, not {want}"))
        })
    }
}

impl ServiceDef {
    /// Parses a TOML service definition and [validates](Self::validate) it.
    pub fn from_toml(text: &str) -> Result<Self, ServiceError> {
        let def: Self = toml::from_str(text).map_err(|e| ServiceError::Parse(Box::new(e)))?;
        def.validate()?;
        Ok(def)
    }

    /// Renders the definition as TOML that [`from_toml`](Self::from_toml) reads back.
    pub fn to_toml(&self) -> Result<String, ServiceError> {
        toml::to_string(self).map_err(|source| ServiceError::Serialize {
            service: self.name.clone(),
            source,
        })
    }

    /// The param called `name`, compared case-insensitively as header names are.
    pub fn param(&self, name: &str) -> Option<&ParamDef> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn space() -> String {
    " ".to_owned()
}

fn is_space(s: &str) -> bool {
    s == " "
}

fn get() -> String {
    "GET".to_owned()
}

fn is_get(s: &str) -> bool {
    s == "GET"
}

/// The smallest valid custom service (an API key in a header), for tests.
#[cfg(test)]
pub(crate) const MINIMAL: &str = r#"
name = "acme"
display_name = "Acme"
auth = "api_key"
base_url = "https://api.acme.test"

[[params]]
name = "X-Api-Key"
display_name = "API key"
secret = true
location = "header"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_definition_gets_defaults() {
        let def = ServiceDef::from_toml(MINIMAL).unwrap();
        assert_eq!(def.description, "");
        assert!(def.allowed_origins.is_empty());
        assert!(def.oauth2.is_none() && def.verify.is_none() && def.docs_url.is_none());
        let p = &def.params[0];
        assert!(p.secret && p.required);
        assert_eq!(p.location, ParamLocation::Header);
        assert_eq!(p.format(), "{value}");
        assert!(p.choices.is_empty());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = format!("{MINIMAL}\nscope = \"x\"\n");
        let err = ServiceDef::from_toml(&text).unwrap_err();
        assert!(matches!(err, ServiceError::Parse(_)), "{err}");
        assert!(err.to_string().contains("scope"), "{err}");
    }

    #[test]
    fn unknown_auth_kind_is_rejected() {
        let text = MINIMAL.replace("\"api_key\"", "\"digest\"");
        assert!(matches!(
            ServiceDef::from_toml(&text),
            Err(ServiceError::Parse(_))
        ));
    }

    #[test]
    fn oauth2_defaults() {
        let def = ServiceDef::from_toml(
            r#"
name = "acme"
display_name = "Acme"
auth = "oauth2"
base_url = "https://api.acme.test"
[oauth2]
authorize_url = "https://acme.test/authorize"
token_url = "https://acme.test/token"
"#,
        )
        .unwrap();
        let o = def.oauth2.unwrap();
        assert_eq!(o.grant, GrantType::AuthorizationCode);
        assert_eq!(o.scope_separator, " ");
        assert_eq!(o.token_auth_method, TokenAuthMethod::Basic);
        assert!(o.pkce);
        assert_eq!(o.token_placement.name(), "Authorization");
        assert_eq!(o.token_placement.format(), "Bearer {token}");
        let query = TokenPlacement {
            location: TokenLocation::Query,
            ..TokenPlacement::default()
        };
        assert_eq!((query.name(), query.format()), ("access_token", "{token}"));
    }

    #[test]
    fn to_toml_round_trips() {
        for def in super::super::presets() {
            let text = def.to_toml().unwrap();
            let back = ServiceDef::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(&back, &**def, "{text}");
        }
    }

    #[test]
    fn auth_kind_display_matches_toml() {
        for auth in [
            AuthKind::Oauth2,
            AuthKind::Basic,
            AuthKind::ApiKey,
            AuthKind::Bearer,
            AuthKind::Custom,
            AuthKind::None,
        ] {
            let json = serde_json::to_string(&auth).unwrap();
            assert_eq!(json, format!("\"{auth}\""));
        }
    }

    #[test]
    fn verify_success_statuses() {
        let any = VerifyDef {
            method: get(),
            path: "/me".into(),
            expect_status: vec![],
            expect_json: BTreeMap::new(),
            account: vec![],
        };
        assert!(any.is_success(200) && any.is_success(204) && !any.is_success(401));
        let only = VerifyDef {
            expect_status: vec![404],
            ..any
        };
        assert!(only.is_success(404) && !only.is_success(200));
    }

    #[test]
    fn verify_checks_json_fields_for_apis_that_answer_200_to_bad_credentials() {
        let slack = super::super::find_preset("slack")
            .unwrap()
            .verify
            .clone()
            .unwrap();
        assert_eq!(slack.failure(200, br#"{"ok":true,"user":"u"}"#), None);
        let bad = slack
            .failure(200, br#"{"ok":false,"error":"invalid_auth"}"#)
            .unwrap();
        assert!(bad.contains(r#""ok" = false, not true"#), "{bad}");
        assert!(
            slack
                .failure(200, b"<html>")
                .unwrap()
                .contains("without the JSON")
        );
        assert!(slack.failure(200, b"{}").unwrap().contains("null"));
        assert_eq!(
            slack.failure(500, br#"{"ok":true}"#).unwrap(),
            "answered 500"
        );
    }

    #[test]
    fn the_account_is_the_first_pointer_that_names_one() {
        let v = VerifyDef {
            method: "GET".into(),
            path: "/me".into(),
            expect_status: vec![],
            expect_json: BTreeMap::new(),
            account: vec!["/email".into(), "/user/id".into()],
        };
        let account = |body: &str| v.account(body.as_bytes()).map(|(_, a)| a);
        assert_eq!(
            account(r#"{"email":"a@example.com","user":{"id":7}}"#).as_deref(),
            Some("a@example.com")
        );
        // Missing, null, empty or not a scalar: the next pointer.
        assert_eq!(account(r#"{"user":{"id":7}}"#).as_deref(), Some("7"));
        assert_eq!(
            account(r#"{"email":null,"user":{"id":"u7"}}"#).as_deref(),
            Some("u7")
        );
        assert_eq!(
            account(r#"{"email":"  ","user":{"id":"u7"}}"#).as_deref(),
            Some("u7")
        );
        assert_eq!(account(r#"{"email":["x"]}"#), None);
        assert_eq!(account("<html>"), None);
        // One line, bounded.
        assert_eq!(
            account(r#"{"email":"a\nb\u0007c"}"#).as_deref(),
            Some("a b c")
        );
        let long = format!(r#"{{"email":"{}"}}"#, "x".repeat(500));
        assert_eq!(account(&long).unwrap().chars().count(), MAX_ACCOUNT_CHARS);
        let none = VerifyDef {
            account: vec![],
            ..v.clone()
        };
        assert_eq!(none.account(br#"{"email":"a@example.com"}"#), None);
        // Which pointer named it, and nothing that would reorder or hide text.
        assert_eq!(
            v.account(br#"{"user":{"id":7}}"#),
            Some(("/user/id", "7".to_string()))
        );
        assert_eq!(
            account(r#"{"email":"evil\u202egnp.exe\u200b@x"}"#).as_deref(),
            Some("evilgnp.exe@x")
        );
    }
}
