//! Where a guest's request may go: resolving a target against a connection's base URL
//! and allowed origins, before any byte is sent.
//!
//! A relative target is appended to the base URL's path and may not climb out of it:
//! `.`/`..` segments (raw or percent-encoded), encoded slashes and backslashes are
//! refused. The base URL's own query is kept, before the target's. An absolute target
//! must have an allowed origin and no userinfo. Scheme-relative targets (`//host`) are
//! refused outright.

use url::Url;

use super::SendError;
use crate::services::{Endpoint, Origin};

/// Resolve `target` plus `query` pairs into the URL to request.
pub fn resolve_target(
    endpoint: &Endpoint,
    target: &str,
    query: &[(String, String)],
) -> Result<Url, SendError> {
    if target.chars().any(|c| c.is_control()) {
        return Err(SendError::InvalidRequest(
            "target contains control characters".into(),
        ));
    }
    if target.contains('\\') {
        return Err(SendError::ForbiddenDestination(
            "target contains a backslash".into(),
        ));
    }
    if target.starts_with("//") {
        return Err(SendError::ForbiddenDestination(
            "scheme-relative targets (//host) are not allowed; use a path or an allowed absolute URL".into(),
        ));
    }
    let mut url = if has_scheme(target) {
        absolute(endpoint, target)?
    } else {
        relative(&endpoint.base_url, target)?
    };
    url.set_fragment(None);
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    // Defence in depth: whatever the branch, the final origin must be allowed.
    let origin = Origin::of(&url);
    if !endpoint.allowed_origins.contains(&origin) {
        return Err(SendError::ForbiddenDestination(format!(
            "{origin} is not an allowed origin of this connection"
        )));
    }
    Ok(url)
}

fn has_scheme(target: &str) -> bool {
    match target.find(':') {
        Some(i) => {
            let scheme = &target[..i];
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !target[..i].contains('/')
        }
        None => false,
    }
}

fn absolute(endpoint: &Endpoint, target: &str) -> Result<Url, SendError> {
    let url = Url::parse(target)
        .map_err(|e| SendError::InvalidRequest(format!("target is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SendError::ForbiddenDestination(format!(
            "scheme {:?} is not allowed",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SendError::ForbiddenDestination(
            "URLs with userinfo are not allowed".into(),
        ));
    }
    let origin = Origin::of(&url);
    if !endpoint.allowed_origins.contains(&origin) {
        return Err(SendError::ForbiddenDestination(format!(
            "{origin} is not an allowed origin of this connection"
        )));
    }
    Ok(url)
}

fn relative(base: &Url, target: &str) -> Result<Url, SendError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path.split('#').next().unwrap_or_default();
    for segment in path.split('/') {
        let decoded = percent_decode(segment);
        if decoded == "." || decoded == ".." {
            return Err(SendError::ForbiddenDestination(
                "dot segments (. and ..) are not allowed in targets".into(),
            ));
        }
        if segment.contains('%') && (decoded.contains('/') || decoded.contains('\\')) {
            return Err(SendError::ForbiddenDestination(
                "encoded slashes are not allowed in targets".into(),
            ));
        }
    }
    let mut url = base.clone();
    let base_path = base.path().trim_end_matches('/');
    let rel = path.trim_start_matches('/');
    // An empty target is the base URL itself (a webhook's exact URL); "/" adds the slash.
    let joined = if path.is_empty() {
        base.path().to_string()
    } else if rel.is_empty() {
        format!("{base_path}/")
    } else {
        format!("{base_path}/{rel}")
    };
    url.set_path(&joined);
    // The base URL's own query stays, first (a capability URL may hold its signature
    // there, `?sig=…`, or an API version); the target's comes after it.
    let merged = match (
        base.query().filter(|q| !q.is_empty()),
        query.filter(|q| !q.is_empty()),
    ) {
        (Some(base_query), Some(target_query)) => Some(format!("{base_query}&{target_query}")),
        (base_query, target_query) => base_query.or(target_query).map(str::to_string),
    };
    url.set_query(merged.as_deref());
    if !url.path().starts_with(base_path) {
        return Err(SendError::ForbiddenDestination(
            "target escapes the connection's base path".into(),
        ));
    }
    Ok(url)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let base = Url::parse("https://api.example.com/v1").unwrap();
        let other = Url::parse("https://uploads.example.com").unwrap();
        Endpoint {
            allowed_origins: vec![Origin::of(&base), Origin::of(&other)],
            base_url: base,
        }
    }

    fn ok(target: &str) -> String {
        resolve_target(&endpoint(), target, &[])
            .unwrap()
            .to_string()
    }

    fn forbidden(target: &str) {
        match resolve_target(&endpoint(), target, &[]) {
            Err(SendError::ForbiddenDestination(_)) => {}
            other => panic!("{target:?} gave {other:?}"),
        }
    }

    #[test]
    fn relative_targets_stay_under_the_base_path() {
        assert_eq!(ok("/users"), "https://api.example.com/v1/users");
        assert_eq!(ok("users/1?x=y"), "https://api.example.com/v1/users/1?x=y");
        assert_eq!(ok(""), "https://api.example.com/v1");
        assert_eq!(ok("/"), "https://api.example.com/v1/");
        assert_eq!(ok("/a%20b"), "https://api.example.com/v1/a%20b");
        let with_query =
            resolve_target(&endpoint(), "/s", &[("q".into(), "a b&c".into())]).unwrap();
        assert_eq!(
            with_query.as_str(),
            "https://api.example.com/v1/s?q=a+b%26c"
        );
    }

    #[test]
    fn a_base_urls_own_query_is_kept_before_the_targets() {
        let base = Url::parse("https://hooks.example.com/in/X?api-version=1&sig=S").unwrap();
        let endpoint = Endpoint {
            allowed_origins: vec![Origin::of(&base)],
            base_url: base,
        };
        let resolve = |target: &str, query: &[(String, String)]| {
            resolve_target(&endpoint, target, query)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            resolve("", &[]),
            "https://hooks.example.com/in/X?api-version=1&sig=S"
        );
        assert_eq!(
            resolve("?a=1", &[]),
            "https://hooks.example.com/in/X?api-version=1&sig=S&a=1"
        );
        assert_eq!(
            resolve("/m", &[("b".into(), "2".into())]),
            "https://hooks.example.com/in/X/m?api-version=1&sig=S&b=2"
        );
    }

    #[test]
    fn escapes_are_refused() {
        for t in [
            "/../admin",
            "/a/../../x",
            "/%2e%2e/admin",
            "/%2E./x",
            "/.",
            "/a/%2fetc",
            "/a%5cb",
            "/a\\b",
            "//evil.example/x",
        ] {
            forbidden(t);
        }
    }

    #[test]
    fn absolute_urls_need_an_allowed_origin() {
        assert_eq!(
            ok("https://uploads.example.com/f"),
            "https://uploads.example.com/f"
        );
        forbidden("https://evil.example/x");
        forbidden("http://api.example.com/v1/users");
        forbidden("https://api.example.com:8443/v1");
        forbidden("https://user:pw@api.example.com/v1");
        forbidden("ftp://api.example.com/v1");
        forbidden("file:///etc/passwd");
    }

    #[test]
    fn control_characters_are_invalid() {
        assert!(matches!(
            resolve_target(&endpoint(), "/a\r\nHost: x", &[]),
            Err(SendError::InvalidRequest(_))
        ));
        assert!(matches!(
            resolve_target(&endpoint(), "/a\0", &[]),
            Err(SendError::InvalidRequest(_))
        ));
    }
}
