//! The rules a [`ServiceDef`] must satisfy before keyhole stores or uses it.

use std::collections::{BTreeMap, BTreeSet};

use super::resolve::Origin;
use super::schema::{AuthKind, GrantType, OAuth2Def, ParamLocation, ServiceDef, TokenLocation};
use super::template;
use super::{ServiceError, validate_name};

/// Headers a param or token placement may not set: the HTTP client owns framing and
/// routing, and cookies or proxy credentials would reach places the service should not.
/// Compared case-insensitively.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "proxy-authorization",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

/// Longest param name, in bytes.
const MAX_PARAM_NAME_LEN: usize = 100;

/// Authorization request parameters keyhole sets itself; `auth_params` may not override them.
const RESERVED_AUTH_PARAMS: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// How a `url` param is used by the service's templates.
#[derive(Default)]
struct Usage {
    whole: bool,
    part: bool,
}

impl ServiceDef {
    /// Checks every rule of the schema; [`from_toml`](Self::from_toml) calls this.
    ///
    /// Rules: the name follows [`validate_name`]; `display_name` is not blank; `oauth2`
    /// is present exactly when `auth = "oauth2"`; param names are unique
    /// (case-insensitively) and fit their location; header params are valid header
    /// names outside [`FORBIDDEN_HEADERS`]; the params fit the auth kind; every
    /// `{placeholder}` names a `url` param and every `url` param is used; URLs are
    /// https (or http to loopback); `allowed_origins` are bare origins that include the
    /// base URL's; the verify request is well formed.
    pub fn validate(&self) -> Result<(), ServiceError> {
        validate_name("service", &self.name)?;
        if self.display_name.trim().is_empty() {
            return Err(self.invalid(
                "display_name",
                "is empty; give the service a human-readable name",
            ));
        }
        self.check_params()?;
        self.check_auth()?;
        if let Some(oauth2) = &self.oauth2 {
            self.check_oauth2(oauth2)?;
        }
        self.check_urls()?;
        self.check_verify()
    }

    pub(super) fn invalid(
        &self,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ServiceError {
        ServiceError::Invalid {
            service: self.name.clone(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn check_params(&self) -> Result<(), ServiceError> {
        let mut seen = BTreeSet::new();
        for p in &self.params {
            let field = format!("param \"{}\"", p.name);
            if p.name.is_empty()
                || p.name.len() > MAX_PARAM_NAME_LEN
                || p.name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(self.invalid(
                    field,
                    format!(
                        "has an invalid name; use 1-{MAX_PARAM_NAME_LEN} characters without spaces"
                    ),
                ));
            }
            if !seen.insert(p.name.to_ascii_lowercase()) {
                return Err(self.invalid(
                    field,
                    "is defined twice (names compare case-insensitively); remove one",
                ));
            }
            if p.display_name.trim().is_empty() {
                return Err(self.invalid(
                    field,
                    "has an empty display_name; say what the admin should enter",
                ));
            }
            match p.location {
                ParamLocation::Header => self.check_header_name(&field, "param", &p.name)?,
                ParamLocation::Url if !template::is_placeholder_name(&p.name) => {
                    return Err(self.invalid(
                        field,
                        "has location url but is not a valid placeholder name: start with a \
                         letter or '_', then use letters, digits, '_' or '-'",
                    ));
                }
                _ => {}
            }
            if let Some(format) = &p.format {
                if p.location != ParamLocation::Header {
                    return Err(self.invalid(
                        field,
                        "has a format but format applies only to location header; remove it",
                    ));
                }
                let segments = template::parse(format)
                    .map_err(|e| self.invalid(&field, format!("format {e}")))?;
                let names: Vec<_> = template::params(&segments).collect();
                if names != ["value"] {
                    return Err(self.invalid(
                        field,
                        "has a format without exactly one {value} placeholder; write e.g. \
                         \"Bearer {value}\"",
                    ));
                }
            }
            if p.secret && p.default.is_some() {
                return Err(self.invalid(
                    field,
                    "is secret but has a default, which anyone can read in the definition; remove \
                     the default",
                ));
            }
            let mut choices = BTreeSet::new();
            if let Some(dup) = p.choices.iter().find(|c| !choices.insert(c.as_str())) {
                return Err(
                    self.invalid(field, format!("lists choice \"{dup}\" twice; remove one"))
                );
            }
            if let Some(default) = &p.default
                && !p.choices.is_empty()
                && !p.choices.contains(default)
            {
                return Err(self.invalid(
                    field,
                    format!(
                        "has default \"{default}\" which is not among its choices; add it to \
                         choices or change the default"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_header_name(&self, field: &str, what: &str, name: &str) -> Result<(), ServiceError> {
        if !is_header_name(name) {
            return Err(self.invalid(
                field,
                format!(
                    "has location header but no valid header name: \"{name}\" must be letters, \
                     digits or !#$%&'*+-.^_`|~; rename the {what}"
                ),
            ));
        }
        if FORBIDDEN_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
        {
            return Err(self.invalid(
                field,
                format!(
                    "sets header {name}, which the HTTP client manages and services may not set; \
                     use another header"
                ),
            ));
        }
        Ok(())
    }

    fn check_auth(&self) -> Result<(), ServiceError> {
        match (self.auth, &self.oauth2) {
            (AuthKind::Oauth2, None) => {
                return Err(self.invalid(
                    "oauth2",
                    "is missing; auth = \"oauth2\" needs an [oauth2] table with token_url",
                ));
            }
            (auth, Some(_)) if auth != AuthKind::Oauth2 => {
                return Err(self.invalid(
                    "oauth2",
                    format!(
                        "is set but auth is \"{}\"; remove the [oauth2] table or set auth = \
                         \"oauth2\"",
                        auth.as_str()
                    ),
                ));
            }
            _ => {}
        }
        let count = |loc| self.params.iter().filter(|p| p.location == loc).count();
        let users = count(ParamLocation::BasicUser);
        let passwords = count(ParamLocation::BasicPassword);
        let auth = self.auth.as_str();
        let secret_in = |locs: &[ParamLocation]| {
            self.params
                .iter()
                .any(|p| p.secret && locs.contains(&p.location))
        };
        match self.auth {
            AuthKind::Basic => {
                if users != 1 {
                    return Err(self.invalid(
                        "params",
                        format!(
                            "have {users} params with location basic_user; auth = \"basic\" needs \
                             exactly one"
                        ),
                    ));
                }
                if passwords > 1 {
                    return Err(self.invalid(
                        "params",
                        format!(
                            "have {passwords} params with location basic_password; auth = \
                             \"basic\" allows at most one"
                        ),
                    ));
                }
            }
            AuthKind::ApiKey => {
                if users > 1 || passwords > 0 {
                    return Err(self.invalid(
                        "params",
                        "use basic_user more than once or basic_password; auth = \"api_key\" \
                         allows one basic_user (the key) and no password, use auth = \"basic\" \
                         otherwise",
                    ));
                }
                if !secret_in(&[
                    ParamLocation::Header,
                    ParamLocation::Query,
                    ParamLocation::BasicUser,
                ]) {
                    return Err(self.invalid(
                        "params",
                        "have no secret key; auth = \"api_key\" needs a param with secret = true \
                         and location header, query or basic_user",
                    ));
                }
            }
            _ if users + passwords > 0 => {
                return Err(self.invalid(
                    "params",
                    format!(
                        "use location basic_user or basic_password, which auth = \"{auth}\" does \
                         not send; use auth = \"basic\" or \"api_key\""
                    ),
                ));
            }
            AuthKind::Bearer => {
                if !secret_in(&[ParamLocation::Header]) {
                    return Err(self.invalid(
                        "params",
                        "have no secret header; auth = \"bearer\" needs a param with secret = \
                         true, location header and a format such as \"Bearer {value}\"",
                    ));
                }
            }
            AuthKind::None => {
                if let Some(p) = self.params.iter().find(|p| {
                    p.secret && matches!(p.location, ParamLocation::Header | ParamLocation::Query)
                }) {
                    return Err(self.invalid(
                        format!("param \"{}\"", p.name),
                        "is a secret header or query value but auth = \"none\" sends no \
                         credentials; use auth = \"api_key\" or \"custom\"",
                    ));
                }
            }
            AuthKind::Oauth2 | AuthKind::Custom => {}
        }
        Ok(())
    }

    fn check_oauth2(&self, o: &OAuth2Def) -> Result<(), ServiceError> {
        match (o.grant, &o.authorize_url) {
            (GrantType::AuthorizationCode, None) => {
                return Err(self.invalid(
                    "oauth2.authorize_url",
                    "is missing; the authorization_code grant needs it",
                ));
            }
            (GrantType::ClientCredentials, Some(_)) => {
                return Err(self.invalid(
                    "oauth2.authorize_url",
                    "is set but the client_credentials grant has no authorization step; remove it",
                ));
            }
            _ => {}
        }
        if let Some(issuer) = &o.issuer {
            if issuer.contains('{') {
                return Err(self.invalid(
                    "oauth2.issuer",
                    "may not use placeholders; write the issuer identifier exactly as the provider's metadata gives it",
                ));
            }
            let url =
                template::checked_url(issuer).map_err(|e| self.invalid("oauth2.issuer", e))?;
            if url.query().is_some() {
                return Err(self.invalid(
                    "oauth2.issuer",
                    "has a query; an issuer identifier has none (RFC 8414 §2)",
                ));
            }
            if o.grant != GrantType::AuthorizationCode {
                return Err(self.invalid(
                    "oauth2.issuer",
                    "is checked on authorization responses, and the client_credentials grant has none; remove it",
                ));
            }
        }
        let sep = o.scope_separator.as_str();
        if sep.is_empty() {
            return Err(self.invalid(
                "oauth2.scope_separator",
                "is empty; use \" \" (the standard) or \",\"",
            ));
        }
        let mut seen = BTreeSet::new();
        for scope in &o.scopes {
            if scope.is_empty()
                || scope.contains(sep)
                || scope.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(self.invalid(
                    "oauth2.scopes",
                    format!(
                        "contains \"{scope}\", which is empty or contains whitespace or the scope \
                         separator; split it"
                    ),
                ));
            }
            if !seen.insert(scope) {
                return Err(self.invalid(
                    "oauth2.scopes",
                    format!("lists \"{scope}\" twice; remove one"),
                ));
            }
        }
        if let Some(scope) = o.default_scopes.iter().find(|s| !o.scopes.contains(s)) {
            return Err(self.invalid(
                "oauth2.default_scopes",
                format!("contains \"{scope}\", which is not in scopes; add it to scopes"),
            ));
        }
        if let Some(key) = o
            .auth_params
            .keys()
            .find(|k| RESERVED_AUTH_PARAMS.contains(&k.as_str()) || k.is_empty())
        {
            return Err(self.invalid(
                "oauth2.auth_params",
                format!("sets \"{key}\", which keyhole sets itself; remove it"),
            ));
        }
        let placement = &o.token_placement;
        let name = placement.name();
        let field = "oauth2.token_placement";
        match placement.location {
            TokenLocation::Header => self.check_header_name(field, "token placement", name)?,
            TokenLocation::Query => {
                if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(self.invalid(
                        field,
                        "has an empty or blank query name; set name, e.g. \"access_token\"",
                    ));
                }
            }
        }
        let segments = template::parse(placement.format())
            .map_err(|e| self.invalid(field, format!("format {e}")))?;
        if template::params(&segments).collect::<Vec<_>>() != ["token"] {
            return Err(self.invalid(
                field,
                "has a format without exactly one {token} placeholder; write e.g. \"Bearer \
                 {token}\"",
            ));
        }
        let clash_loc = match placement.location {
            TokenLocation::Header => ParamLocation::Header,
            TokenLocation::Query => ParamLocation::Query,
        };
        if let Some(p) = self
            .params
            .iter()
            .find(|p| p.location == clash_loc && p.name.eq_ignore_ascii_case(name))
        {
            return Err(self.invalid(
                format!("param \"{}\"", p.name),
                "uses the name the OAuth access token is placed in; rename the param or change \
                 oauth2.token_placement",
            ));
        }
        Ok(())
    }

    /// The URL templates of the service with their field names, in a fixed order.
    pub(super) fn url_templates(&self) -> Vec<(String, &str)> {
        let mut out = vec![("base_url".to_owned(), self.base_url.as_str())];
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            out.push((format!("allowed_origins[{i}]"), origin.as_str()));
        }
        if let Some(o) = &self.oauth2 {
            if let Some(url) = &o.authorize_url {
                out.push(("oauth2.authorize_url".to_owned(), url.as_str()));
            }
            out.push(("oauth2.token_url".to_owned(), o.token_url.as_str()));
            if let Some(url) = &o.revocation_url {
                out.push(("oauth2.revocation_url".to_owned(), url.as_str()));
            }
        }
        out
    }

    fn check_urls(&self) -> Result<(), ServiceError> {
        let mut usage: BTreeMap<&str, Usage> = self
            .params
            .iter()
            .filter(|p| p.location == ParamLocation::Url)
            .map(|p| (p.name.as_str(), Usage::default()))
            .collect();
        let mut base_origin = None;
        let mut origins = Vec::new();
        for (field, text) in self.url_templates() {
            let segments = template::parse(text).map_err(|e| self.invalid(&field, e))?;
            let whole = template::whole_param(&segments);
            for name in template::params(&segments) {
                let Some(u) = usage.get_mut(name) else {
                    return Err(self.invalid(
                        &field,
                        format!(
                            "uses {{{name}}} but no param with location url is called \"{name}\"; \
                             add one or fix the placeholder"
                        ),
                    ));
                };
                if whole.is_some() {
                    u.whole = true
                } else {
                    u.part = true
                }
            }
            if whole.is_some() {
                // Only the value can be checked; `resolve` does it.
                continue;
            }
            let filled =
                template::fill(&segments, |_| Ok::<_, ()>(template::DUMMY_VALUE.to_owned()))
                    .unwrap_or_default();
            let url = template::checked_url(&filled).map_err(|e| self.invalid(&field, e))?;
            if field == "base_url" {
                base_origin = Some(Origin::of(&url));
            } else if field.starts_with("allowed_origins") {
                origins.push(Origin::parse_bare(&filled).map_err(|e| self.invalid(&field, e))?);
            }
        }
        if let Some(base) = base_origin
            && !origins.is_empty()
            && !origins.contains(&base)
        {
            return Err(self.invalid(
                "allowed_origins",
                format!(
                    "do not include {base}, the origin of base_url; add \"{base}\" or leave \
                     allowed_origins empty"
                ),
            ));
        }
        for (name, u) in &usage {
            let field = format!("param \"{name}\"");
            if !u.whole && !u.part {
                return Err(self.invalid(
                    field,
                    format!(
                        "has location url but no URL uses {{{name}}}; use it or change its location"
                    ),
                ));
            }
            if u.whole && u.part {
                return Err(self.invalid(
                    field,
                    "is used both as a whole URL and inside a URL; use two params",
                ));
            }
            let p = self.param(name).expect("usage keys come from params");
            for value in p.default.iter().chain(&p.choices) {
                let ok = if u.whole {
                    template::checked_url(value).is_ok()
                } else {
                    template::is_part_value(value)
                };
                if !ok {
                    return Err(self.invalid(
                        field,
                        format!(
                            "has default or choice \"{value}\" that cannot go into a URL; use \
                             letters, digits, '.', '_' or '-'"
                        ),
                    ));
                }
            }
        }
        if let Some(docs) = &self.docs_url {
            template::checked_url(docs).map_err(|e| self.invalid("docs_url", e))?;
        }
        Ok(())
    }

    fn check_verify(&self) -> Result<(), ServiceError> {
        let Some(v) = &self.verify else { return Ok(()) };
        if v.method.is_empty()
            || v.method.len() > 16
            || !v.method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(self.invalid(
                "verify.method",
                format!(
                    "\"{}\" is not an HTTP method; use e.g. \"GET\" or \"POST\"",
                    v.method
                ),
            ));
        }
        if !v.path.starts_with('/')
            || v.path.starts_with("//")
            || v.path.contains('#')
            || v.path.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(self.invalid(
                "verify.path",
                format!(
                    "\"{}\" is not a path; write a path relative to base_url starting with '/', \
                     e.g. \"/me\"",
                    v.path
                ),
            ));
        }
        if let Some(status) = v.expect_status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(self.invalid(
                "verify.expect_status",
                format!("contains {status}, which is not an HTTP status; use 100-599"),
            ));
        }
        if v.account.len() > 8 {
            return Err(self.invalid(
                "verify.account",
                "has more than 8 pointers; keep the few that name an account",
            ));
        }
        for pointer in &v.account {
            let problem = if !pointer.starts_with('/') {
                "is not a JSON pointer into the response; write e.g. \"/login\" or \"/user/email\""
            } else if pointer.len() > 200 {
                "is longer than 200 bytes; point at the field that names the account"
            } else if pointer.chars().any(|c| c.is_control()) {
                "contains a control character; write the pointer on one line"
            } else {
                continue;
            };
            let shown: String = pointer.chars().take(60).collect();
            return Err(self.invalid("verify.account", format!("{shown:?} {problem}")));
        }
        Ok(())
    }
}

/// Whether `name` is an HTTP field name (RFC 9110 `token`).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
