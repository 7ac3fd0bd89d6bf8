//! The one place credentials are attached to an outbound request.
//!
//! Called last, after the destination and the guest's headers were checked, on a
//! request the guest can no longer touch. Every value attached here is also handed to
//! the [`Redactor`] so an upstream echoing it back never reaches the guest.

use std::collections::BTreeMap;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};

use super::SendError;
use super::credentials::Credentials;
use super::redact::Redactor;
use crate::services::{ParamLocation, ServiceDef, TokenLocation};

/// Header names and query keys the credentials occupy: a guest may not set these.
pub fn reserved_names(service: &ServiceDef) -> (Vec<String>, Vec<String>) {
    let mut headers = vec!["authorization".to_string()];
    let mut query = Vec::new();
    for p in &service.params {
        match p.location {
            ParamLocation::Header => headers.push(p.name.to_ascii_lowercase()),
            ParamLocation::Query => query.push(p.name.clone()),
            _ => {}
        }
    }
    if let Some(o) = &service.oauth2 {
        match o.token_placement.location {
            TokenLocation::Header => headers.push(o.token_placement.name().to_ascii_lowercase()),
            TokenLocation::Query => query.push(o.token_placement.name().to_string()),
        }
    }
    (headers, query)
}

/// Every secret value of a connection, for scrubbing responses and records.
pub fn redactor_for(service: &ServiceDef, creds: &Credentials) -> Redactor {
    let mut r = Redactor::default();
    for (name, value) in &creds.params {
        r.add(value.expose());
        if let Some(p) = service.param(name)
            && p.location == ParamLocation::Url
            && let Ok(url) = url::Url::parse(value.expose())
            && url.path().len() > 1
        {
            // A capability URL's path is itself the secret (webhooks).
            r.add(url.path());
        }
    }
    if let Some(t) = &creds.tokens {
        r.add(t.access.expose());
        if let Some(rt) = &t.refresh {
            r.add(rt.expose());
        }
    }
    r
}

/// Attach `creds` to `request` as `service` says. `plain` holds the connection's
/// non-secret param values (a non-secret header param, e.g. an account id, is sent too).
pub fn apply(
    request: &mut reqwest::Request,
    service: &ServiceDef,
    creds: &Credentials,
    plain: &BTreeMap<String, String>,
    redactor: &mut Redactor,
) -> Result<(), SendError> {
    let mut basic_user: Option<String> = None;
    let mut basic_password: Option<String> = None;
    let mut query: Vec<(String, String)> = Vec::new();

    for p in &service.params {
        let value = match creds.params.get(&p.name) {
            Some(s) => s.expose().to_string(),
            None => match plain.get(&p.name).or(p.default.as_ref()) {
                Some(v) => v.clone(),
                None => continue,
            },
        };
        match p.location {
            ParamLocation::Header => {
                let rendered = p.format().replace("{value}", &value);
                redactor.add_exact(&rendered);
                set_header(request, &p.name, &rendered, p.secret)?;
            }
            ParamLocation::Query => query.push((p.name.clone(), value)),
            ParamLocation::BasicUser => basic_user = Some(value),
            ParamLocation::BasicPassword => basic_password = Some(value),
            ParamLocation::Url | ParamLocation::None => {}
        }
    }

    if let Some(user) = basic_user {
        let pair = format!("{user}:{}", basic_password.unwrap_or_default());
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
        redactor.add_exact(&encoded);
        set_header(
            request,
            AUTHORIZATION.as_str(),
            &format!("Basic {encoded}"),
            true,
        )?;
    }

    if let (Some(o), Some(t)) = (&service.oauth2, &creds.tokens) {
        let rendered = o
            .token_placement
            .format()
            .replace("{token}", t.access.expose());
        match o.token_placement.location {
            TokenLocation::Header => {
                redactor.add_exact(&rendered);
                set_header(request, o.token_placement.name(), &rendered, true)?;
            }
            TokenLocation::Query => query.push((o.token_placement.name().to_string(), rendered)),
        }
    }

    if !query.is_empty() {
        let mut pairs = request.url_mut().query_pairs_mut();
        for (k, v) in &query {
            pairs.append_pair(k, v);
        }
    }
    Ok(())
}

fn set_header(
    request: &mut reqwest::Request,
    name: &str,
    value: &str,
    sensitive: bool,
) -> Result<(), SendError> {
    // Values come from the admin; a bad one is a configuration problem, reported
    // without echoing the value.
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        SendError::InvalidRequest(format!(
            "connection header name {name:?} is invalid; fix the service definition"
        ))
    })?;
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        SendError::InvalidRequest(format!("the connection's value for header {name} is not a valid header value; reconnect with a valid credential"))
    })?;
    value.set_sensitive(sensitive);
    request.headers_mut().insert(name, value);
    Ok(())
}
