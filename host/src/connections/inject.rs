//! The one place credentials are attached to an outbound request.
//!
//! Called last, after the destination and the guest's headers were checked, on a
//! request the guest can no longer touch. Every value attached here is also handed to
//! the [`Redactor`] so an upstream echoing it back never reaches the guest.

use std::collections::BTreeMap;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use url::Url;

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

/// Every secret value of a connection, in every form [`apply`] sends it (raw, rendered
/// into its header, Basic-encoded), for scrubbing responses and records. `plain` holds
/// the connection's non-secret param values, as for [`apply`].
pub fn redactor_for(
    service: &ServiceDef,
    creds: &Credentials,
    plain: &BTreeMap<String, String>,
) -> Redactor {
    let mut r = Redactor::default();
    for (name, value) in &creds.params {
        r.add(value.expose());
        if let Some(p) = service.param(name)
            && p.location == ParamLocation::Url
            && let Ok(url) = url::Url::parse(value.expose())
        {
            add_capability_url(&mut r, &url);
        }
    }
    // The Basic pair is sent encoded, so its encoding is a secret form too (when either
    // half is secret).
    let (mut basic_user, mut basic_password, mut basic_secret) = (None, None, false);
    for p in &service.params {
        let (value, secret) = match creds.params.get(&p.name) {
            Some(v) => (Some(v.expose().to_string()), true),
            None => (plain.get(&p.name).or(p.default.as_ref()).cloned(), false),
        };
        match p.location {
            ParamLocation::Header if secret => {
                if let Some(v) = &value {
                    r.add_exact(&p.format().replace("{value}", v));
                }
            }
            ParamLocation::BasicUser => {
                basic_user = value;
                basic_secret |= secret;
            }
            ParamLocation::BasicPassword => {
                basic_password = value;
                basic_secret |= secret;
            }
            _ => {}
        }
    }
    if let Some(user) = basic_user
        && basic_secret
    {
        r.add_exact(&basic_encoded(&user, basic_password.as_deref()));
    }
    if let Some(t) = &creds.tokens {
        r.add(t.access.expose());
        if let Some(rt) = &t.refresh {
            r.add(rt.expose());
        }
        if let Some(o) = &service.oauth2
            && o.token_placement.location == TokenLocation::Header
        {
            r.add_exact(
                &o.token_placement
                    .format()
                    .replace("{token}", t.access.expose()),
            );
        }
    }
    r
}

/// Shortest piece of a capability URL scrubbed on its own.
const URL_PIECE_MIN: usize = 12;

/// A capability URL (a webhook) is a secret as a whole, as its path, and piece by piece:
/// services answer with the pieces on their own (Discord returns a webhook's `id` and
/// `token` as separate fields), and some put the secret in the host name. Every long path
/// segment, query value and first host label is scrubbed too; short, generic ones
/// (`api`, `webhooks`, `hooks`) are not.
fn add_capability_url(r: &mut Redactor, url: &url::Url) {
    if url.path().len() > 1 {
        r.add(url.path());
    }
    let segments = url
        .path_segments()
        .into_iter()
        .flatten()
        .map(str::to_string);
    let values = url.query_pairs().map(|(_, v)| v.into_owned());
    let label = url
        .host_str()
        .and_then(|h| h.split('.').next())
        .map(str::to_string);
    for piece in segments.chain(values).chain(label) {
        if piece.len() >= URL_PIECE_MIN {
            r.add(&piece);
        }
    }
}

/// The base64 `user:password` of a Basic `Authorization` header.
fn basic_encoded(user: &str, password: Option<&str>) -> String {
    let pair = format!("{user}:{}", password.unwrap_or_default());
    base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
}

/// Attach `creds` to a request (its `url` and `headers`) as `service` says. `plain`
/// holds the connection's non-secret param values (a non-secret header param, e.g. an
/// account id, is sent too). Every secret form attached here is in [`redactor_for`]'s set.
pub fn apply(
    url: &mut Url,
    headers: &mut HeaderMap,
    service: &ServiceDef,
    creds: &Credentials,
    plain: &BTreeMap<String, String>,
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
                set_header(headers, &p.name, &rendered, p.secret)?;
            }
            ParamLocation::Query => query.push((p.name.clone(), value)),
            ParamLocation::BasicUser => basic_user = Some(value),
            ParamLocation::BasicPassword => basic_password = Some(value),
            ParamLocation::Url | ParamLocation::None => {}
        }
    }

    if let Some(user) = basic_user {
        let encoded = basic_encoded(&user, basic_password.as_deref());
        set_header(
            headers,
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
                set_header(headers, o.token_placement.name(), &rendered, true)?;
            }
            TokenLocation::Query => query.push((o.token_placement.name().to_string(), rendered)),
        }
    }

    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &query {
            pairs.append_pair(k, v);
        }
    }
    Ok(())
}

fn set_header(
    headers: &mut HeaderMap,
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
    headers.insert(name, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::credentials::Tokens;
    use crate::secrets::Secret;
    use crate::services::find_preset;

    fn creds(params: &[(&str, &str)]) -> Credentials {
        Credentials {
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(*v)))
                .collect(),
            tokens: None,
        }
    }

    #[test]
    fn basic_pair_is_scrubbed_in_its_encoded_form_and_the_plain_user_is_not() {
        let twilio = find_preset("twilio").unwrap();
        let plain = BTreeMap::from([("account_sid".to_string(), "AC123".to_string())]);
        let r = redactor_for(twilio, &creds(&[("auth_token", "tok-secret")]), &plain);
        let encoded = basic_encoded("AC123", Some("tok-secret"));
        let echoed = format!("auth=Basic {encoded} sid=AC123 token=tok-secret");
        assert_eq!(
            r.scrub(&echoed),
            "auth=Basic [redacted] sid=AC123 token=[redacted]"
        );
    }

    #[test]
    fn a_webhook_url_is_scrubbed_whole_and_piece_by_piece() {
        let webhook = find_preset("webhook").unwrap();
        let id = "1234567890123456789";
        let token = "WHtokenAbCdEfGh-SECRET_0123456789";
        let url = format!("https://discord.com/api/webhooks/{id}/{token}?thread=9876543210987");
        let r = redactor_for(webhook, &creds(&[("url", &url)]), &BTreeMap::new());
        // Discord's answer to a GET on the webhook: the pieces, each on its own.
        let answer = format!(
            r#"{{"type":1,"id":"{id}","token":"{token}","thread":"9876543210987","url":"{url}","name":"api webhooks"}}"#
        );
        assert_eq!(
            r.scrub(&answer),
            r#"{"type":1,"id":"[redacted]","token":"[redacted]","thread":"[redacted]","url":"[redacted]","name":"api webhooks"}"#
        );
        // A secret host label (Pipedream-style), and generic pieces left alone.
        let url = "https://eo1a2b3c4d5e6f7a8b.m.pipedream.net/";
        let r = redactor_for(webhook, &creds(&[("url", url)]), &BTreeMap::new());
        assert_eq!(
            r.scrub("sent to eo1a2b3c4d5e6f7a8b via pipedream.net"),
            "sent to [redacted] via pipedream.net"
        );
    }

    #[test]
    fn a_non_secret_header_default_is_not_scrubbed_but_the_bearer_header_is() {
        let notion = find_preset("notion").unwrap();
        let mut c = creds(&[]);
        c.tokens = Some(Tokens {
            access: Secret::new("access-123"),
            refresh: Some(Secret::new("refresh-456")),
            expires_at: None,
        });
        let r = redactor_for(notion, &c, &BTreeMap::new());
        assert_eq!(
            r.scrub("version 2022-06-28, Bearer access-123, refresh-456"),
            "version 2022-06-28, [redacted], [redacted]"
        );
    }
}
