//! The token endpoint's answer as providers really send it: RFC 6749 §5.1, plus the
//! deviations that break strict clients.
//!
//! - [`TokenAnswer`] reads a quoted or fractional `expires_in`, no `token_type`, `scope`
//!   as a list, an empty `refresh_token`. The `oauth2` crate's `StandardTokenResponse`
//!   refuses all of these, so a provider that writes `"expires_in": "3599"` could be
//!   connected by no one, and every refresh of it failed.
//! - [`send`] is the HTTP client every token request goes through. It reads at most
//!   [`MAX_ANSWER_BYTES`] of an answer (the `oauth2` crate's own client reads any
//!   length into memory), and hands the crate a JSON answer when the provider sent
//!   a JSON body under another media type (`text/plain`), a form-encoded body
//!   (`access_token=…&token_type=bearer`, as GitHub answers without `Accept`), or a
//!   success status other than 200.
//!
//! Only the shape is relaxed: an answer without an access token (or with an empty one),
//! or with a value that is not what its field says (a negative lifetime, a token that is
//! a number), is still refused. keyhole's own messages name no value; serde's may quote
//! one, and `flow::describe` scrubs every value of the answer from the message.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use oauth2::basic::BasicTokenType;
use oauth2::{
    AccessToken, AsyncHttpClient, HttpRequest, HttpResponse, RefreshToken, Scope, TokenResponse,
};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Most bytes of a token or revocation endpoint's answer read. Real answers are a few
/// KiB (a JWT access token and an id token); an endpoint sending more is refused rather
/// than buffered without end.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why a token request got no answer to read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The request failed on the way (connect, TLS, timeout, a cut connection).
    #[error(transparent)]
    Request(#[from] reqwest::Error),
    /// The answer was longer than [`MAX_ANSWER_BYTES`].
    #[error("its answer is longer than {MAX_ANSWER_BYTES} bytes, so it was not read")]
    TooLong,
}

/// The HTTP client token requests go through ([`send`]), for `oauth2`'s
/// `request_async`.
pub(crate) struct Http<'a>(pub &'a reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http<'_> {
    type Error = AnswerError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, AnswerError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request))
    }
}

/// Send a token request with `http` and read its answer (see the module docs).
pub(crate) async fn send(
    http: &reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, AnswerError> {
    let mut response = http.execute(request.try_into()?).await?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let body = read_capped(&mut response).await?;
    let mut answer = http::Response::new(body);
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(normalize(answer))
}

/// The body of `response`, refused past [`MAX_ANSWER_BYTES`].
pub(crate) async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, AnswerError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(AnswerError::TooLong);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(AnswerError::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The answer as the `oauth2` crate reads it: a success is 200 with a JSON object, an
/// error a JSON object. What it would refuse only for its form is rewritten; anything
/// else passes as it came.
fn normalize(mut answer: HttpResponse) -> HttpResponse {
    if answer.status().is_success() {
        *answer.status_mut() = reqwest::StatusCode::OK;
    }
    let json = |h: &HeaderValue| {
        h.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().starts_with("application/json"))
    };
    if answer.headers().get(CONTENT_TYPE).is_some_and(json) {
        return answer;
    }
    let object = match serde_json::from_slice::<serde_json::Value>(answer.body()) {
        Ok(serde_json::Value::Object(_)) => None,
        _ => match from_form(answer.body()) {
            Some(object) => Some(object),
            None => return answer,
        },
    };
    if let Some(object) = object {
        *answer.body_mut() = serde_json::to_vec(&object).expect("a map of strings serializes");
        answer.headers_mut().remove(CONTENT_LENGTH);
    }
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

/// A form-encoded token or error answer as a JSON object of strings; `None` unless the
/// body is one (UTF-8, each field once, naming `access_token` or `error`).
fn from_form(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.contains(char::is_whitespace) {
        return None;
    }
    let mut object = serde_json::Map::new();
    for (name, value) in url::form_urlencoded::parse(text.as_bytes()) {
        let had = object.insert(name.into_owned(), value.into_owned().into());
        if had.is_some() {
            return None;
        }
    }
    let named = |field: &str| {
        object
            .get(field)
            .and_then(|v| v.as_str())
            .is_some_and(|v| !v.is_empty())
    };
    (named("access_token") || named("error")).then_some(object)
}

/// Longest access-token lifetime believed: a provider's `expires_in` past it (a
/// millisecond count, a typo) is read as this, so the expiry stays a sane date.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A successful token response (RFC 6749 §5.1, §6), read leniently; see the module docs.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenAnswer {
    #[serde(deserialize_with = "access_token")]
    access_token: AccessToken,
    /// Absent means `bearer`, the only type keyhole injects.
    #[serde(default = "bearer", deserialize_with = "token_type")]
    token_type: BasicTokenType,
    /// Seconds, from a JSON number or a string holding one; `null` or `""` means unsaid.
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
    /// `null` or `""` means none was sent (the stored one is then kept).
    #[serde(default, deserialize_with = "refresh_token")]
    refresh_token: Option<RefreshToken>,
    /// A space-delimited string (RFC 6749 §3.3) or a list; `null` or `""` means unsaid.
    #[serde(default, deserialize_with = "scopes")]
    scope: Option<Vec<Scope>>,
}

impl TokenResponse for TokenAnswer {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in
            .map(|s| Duration::from_secs(s).min(MAX_LIFETIME))
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scope.as_ref()
    }
}

fn access_token<'de, D: Deserializer<'de>>(d: D) -> Result<AccessToken, D::Error> {
    let token = String::deserialize(d)?;
    if token.is_empty() {
        return Err(de::Error::custom("access_token is empty"));
    }
    Ok(AccessToken::new(token))
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

/// Token types are case-insensitive (RFC 6749 §5.1): GitHub says `bearer`, Google
/// `Bearer`, Slack `bot`.
fn token_type<'de, D: Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    Ok(match Option::<String>::deserialize(d)?.as_deref() {
        None | Some("") => BasicTokenType::Bearer,
        Some(t) if t.eq_ignore_ascii_case("bearer") => BasicTokenType::Bearer,
        Some(t) if t.eq_ignore_ascii_case("mac") => BasicTokenType::Mac,
        Some(t) => BasicTokenType::Extension(t.to_string()),
    })
}

fn refresh_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RefreshToken>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|t| !t.is_empty())
        .map(RefreshToken::new))
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Seconds;

    impl Seconds {
        fn float<E: de::Error>(v: f64) -> Result<Option<u64>, E> {
            if v.is_finite() && v >= 0.0 {
                // Saturates past u64::MAX; `expires_in()` caps it anyway.
                Ok(Some(v as u64))
            } else {
                Err(E::custom(
                    "expected a lifetime in seconds, not a negative number",
                ))
            }
        }
    }

    impl<'de> Visitor<'de> for Seconds {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a lifetime in seconds (a number, or a string holding one)")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("expected a lifetime in seconds, not a negative number"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Self::float(v)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = v.trim();
            if v.is_empty() {
                return Ok(None);
            }
            if let Ok(n) = v.parse::<u64>() {
                return Ok(Some(n));
            }
            match v.parse::<f64>() {
                Ok(f) => Self::float(f),
                // Not the value: serde would print it, and it is the provider's to choose.
                Err(_) => Err(E::custom(
                    "expected a lifetime in seconds, got a string that is not a number",
                )),
            }
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Seconds)
        }
    }

    d.deserialize_option(Seconds)
}

fn scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Said {
        Joined(String),
        Listed(Vec<String>),
    }
    let listed: Vec<String> = match Option::<Said>::deserialize(d)? {
        None => return Ok(None),
        Some(Said::Joined(s)) => s.split(' ').map(str::to_string).collect(),
        Some(Said::Listed(l)) => l,
    };
    let scopes: Vec<Scope> = listed
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(Scope::new)
        .collect();
    Ok((!scopes.is_empty()).then_some(scopes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, content_type: Option<&str>, body: &str) -> HttpResponse {
        let mut a = http::Response::new(body.as_bytes().to_vec());
        *a.status_mut() = reqwest::StatusCode::from_u16(status).unwrap();
        if let Some(t) = content_type {
            a.headers_mut().insert(CONTENT_TYPE, t.parse().unwrap());
        }
        a
    }

    fn read_normalized(a: HttpResponse) -> (u16, Option<String>, serde_json::Value) {
        let a = normalize(a);
        let t = a
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = serde_json::from_slice(a.body()).unwrap_or(serde_json::Value::Null);
        (a.status().as_u16(), t, body)
    }

    #[test]
    fn a_json_answer_passes_as_it_came() {
        let body = r#"{"access_token":"at","token_type":"bearer"}"#;
        let a = normalize(answer(200, Some("application/json; charset=utf-8"), body));
        assert_eq!(a.body(), body.as_bytes());
        assert_eq!(a.headers()[CONTENT_TYPE], "application/json; charset=utf-8");
    }

    #[test]
    fn json_under_another_media_type_or_status_is_read_as_json() {
        let body = r#"{"access_token":"at","expires_in":"3599"}"#;
        for (status, t) in [
            (200, Some("text/plain;charset=UTF-8")),
            (200, None),
            (201, Some("text/javascript")),
        ] {
            let (status, t, json) = read_normalized(answer(status, t, body));
            assert_eq!((status, t.as_deref()), (200, Some("application/json")));
            assert_eq!(json["access_token"], "at");
        }
        // An error stays an error, readable as JSON.
        let (status, t, json) = read_normalized(answer(
            400,
            Some("text/plain"),
            r#"{"error":"invalid_grant"}"#,
        ));
        assert_eq!((status, t.as_deref()), (400, Some("application/json")));
        assert_eq!(json["error"], "invalid_grant");
    }

    #[test]
    fn a_form_encoded_answer_is_read_as_its_fields() {
        let (status, t, json) = read_normalized(answer(
            200,
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "access_token=gho_a%2Bb&token_type=bearer&scope=repo%2Cgist&expires_in=28800",
        ));
        assert_eq!((status, t.as_deref()), (200, Some("application/json")));
        assert_eq!(
            json,
            serde_json::json!({"access_token": "gho_a+b", "token_type": "bearer", "scope": "repo,gist", "expires_in": "28800"})
        );
        let a: TokenAnswer = serde_json::from_value(json).unwrap();
        assert_eq!(a.expires_in(), Some(Duration::from_secs(28800)));
        let (status, _, json) = read_normalized(answer(
            400,
            Some("text/plain"),
            "error=bad_verification_code&error_description=The+code+is+wrong",
        ));
        assert_eq!(status, 400);
        assert_eq!(json["error"], "bad_verification_code");
        assert_eq!(json["error_description"], "The code is wrong");
    }

    #[test]
    fn what_is_neither_json_nor_a_token_form_passes_as_it_came() {
        for body in [
            "<html>sign in</html>",
            "",
            "a=1&b=2",
            "access_token=x&access_token=y",
            "access_token=",
            "access_token",
            "not json {",
        ] {
            let a = normalize(answer(200, Some("text/html"), body));
            assert_eq!(a.body(), body.as_bytes(), "{body}");
            assert_eq!(a.headers()[CONTENT_TYPE], "text/html", "{body}");
        }
    }

    fn read(body: &str) -> Result<TokenAnswer, String> {
        serde_json::from_str::<TokenAnswer>(body).map_err(|e| e.to_string())
    }

    #[test]
    fn the_standard_answer_reads_as_the_rfc_says() {
        let a = read(
            r#"{"access_token":"at","token_type":"Bearer","expires_in":3599,
                "refresh_token":"rt","scope":"read write"}"#,
        )
        .unwrap();
        assert_eq!(a.access_token().secret(), "at");
        assert_eq!(a.token_type(), &BasicTokenType::Bearer);
        assert_eq!(a.expires_in(), Some(Duration::from_secs(3599)));
        assert_eq!(a.refresh_token().unwrap().secret(), "rt");
        let scopes: Vec<&str> = a.scopes().unwrap().iter().map(|s| s.as_str()).collect();
        assert_eq!(scopes, ["read", "write"]);
    }

    #[test]
    fn the_off_spec_forms_providers_send_are_read() {
        for (body, lifetime) in [
            (r#"{"access_token":"at","expires_in":"3599"}"#, Some(3599)),
            (r#"{"access_token":"at","expires_in":" 3600 "}"#, Some(3600)),
            (r#"{"access_token":"at","expires_in":3599.9}"#, Some(3599)),
            (r#"{"access_token":"at","expires_in":"3599.0"}"#, Some(3599)),
            (r#"{"access_token":"at","expires_in":null}"#, None),
            (r#"{"access_token":"at","expires_in":""}"#, None),
            (r#"{"access_token":"at"}"#, None),
        ] {
            let a = read(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(a.token_type(), &BasicTokenType::Bearer, "{body}");
            assert_eq!(a.expires_in(), lifetime.map(Duration::from_secs), "{body}");
        }
        let a = read(r#"{"access_token":"at","token_type":"bot","refresh_token":""}"#).unwrap();
        assert_eq!(a.token_type(), &BasicTokenType::Extension("bot".into()));
        assert!(
            a.refresh_token().is_none(),
            "an empty refresh token is none"
        );
        let a =
            read(r#"{"access_token":"at","token_type":"bearer","refresh_token":null}"#).unwrap();
        assert_eq!(a.token_type(), &BasicTokenType::Bearer);
        assert!(a.refresh_token().is_none());
    }

    #[test]
    fn scope_may_be_a_list_and_empty_means_unsaid() {
        let a = read(r#"{"access_token":"at","scope":["a","b"]}"#).unwrap();
        let scopes: Vec<&str> = a.scopes().unwrap().iter().map(|s| s.as_str()).collect();
        assert_eq!(scopes, ["a", "b"]);
        for body in [
            r#"{"access_token":"at","scope":""}"#,
            r#"{"access_token":"at","scope":null}"#,
            r#"{"access_token":"at","scope":[]}"#,
        ] {
            assert!(read(body).unwrap().scopes().is_none(), "{body}");
        }
    }

    #[test]
    fn an_absurd_lifetime_is_capped() {
        let a = read(r#"{"access_token":"at","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(a.expires_in(), Some(MAX_LIFETIME));
        let a = read(r#"{"access_token":"at","expires_in":1e300}"#).unwrap();
        assert_eq!(a.expires_in(), Some(MAX_LIFETIME));
    }

    #[test]
    fn what_is_not_a_token_answer_is_refused() {
        for (body, why) in [
            (r#"{"token_type":"bearer"}"#, "missing field `access_token`"),
            (r#"{"access_token":""}"#, "access_token is empty"),
            (r#"{"access_token":98765432123456789}"#, "expected a string"),
            (r#"{"access_token":"at","expires_in":-5}"#, "negative"),
            (r#"{"access_token":"at","expires_in":"-5"}"#, "negative"),
            (
                r#"{"access_token":"at","expires_in":"soon-7731"}"#,
                "not a number",
            ),
            (
                r#"{"access_token":"at","expires_in":true}"#,
                "lifetime in seconds",
            ),
            (r#"{"access_token":"at","scope":{"a":1}}"#, "did not match"),
        ] {
            let e = read(body).map(|_| ()).expect_err(body);
            assert!(e.contains(why), "{body}: {e}");
        }
        // A string lifetime that is not a number is not quoted back.
        let e = read(r#"{"access_token":"at","expires_in":"soon-7731"}"#).map(|_| ());
        assert!(!e.unwrap_err().contains("7731"));
    }
}
