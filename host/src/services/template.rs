//! URL templates with `{param}` placeholders, and the URL rules every service URL obeys
//! (https, or http to a loopback host; no userinfo; no fragment).

use url::{Host, Url};

/// Longest value accepted for a placeholder inside a URL (a DNS name is at most 253).
pub(super) const MAX_PART_VALUE_LEN: usize = 253;

/// Longest value accepted for a placeholder that is the whole URL.
pub(super) const MAX_WHOLE_URL_LEN: usize = 2048;

/// Stands in for every placeholder when checking a template's shape.
pub(super) const DUMMY_VALUE: &str = "x";

/// A piece of a parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    /// Text copied as is.
    Lit(&'a str),
    /// A `{name}` placeholder.
    Param(&'a str),
}

/// Splits `template` into literal text and `{name}` placeholders. Names start with an
/// ASCII letter or `_`, then letters, digits, `_` or `-`. Braces have no escape.
pub(super) fn parse(template: &str) -> Result<Vec<Segment<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("has a '}' without a matching '{'".to_owned());
        }
        if open > 0 {
            out.push(Segment::Lit(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "has a '{' without a matching '}'".to_owned())?;
        let name = &after[..close];
        if !is_placeholder_name(name) {
            return Err(format!(
                "has placeholder {{{name}}}, which is not a valid name: start with a letter \
                 or '_', then use letters, digits, '_' or '-'"
            ));
        }
        out.push(Segment::Param(name));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Segment::Lit(rest));
    }
    Ok(out)
}

/// The placeholder names in a parsed template, in order.
pub(super) fn params<'a>(segments: &[Segment<'a>]) -> impl Iterator<Item = &'a str> {
    segments.iter().filter_map(|s| match s {
        Segment::Param(name) => Some(*name),
        Segment::Lit(_) => None,
    })
}

/// The param name if the template is exactly one placeholder, standing for a whole URL.
pub(super) fn whole_param<'a>(segments: &[Segment<'a>]) -> Option<&'a str> {
    match segments {
        [Segment::Param(name)] => Some(name),
        _ => None,
    }
}

/// Joins a parsed template, asking `value` for each placeholder.
pub(super) fn fill<E>(
    segments: &[Segment<'_>],
    mut value: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Lit(text) => out.push_str(text),
            Segment::Param(name) => out.push_str(&value(name)?),
        }
    }
    Ok(out)
}

/// Whether `name` may be used as a placeholder (and so as a `url` param's name).
pub(super) fn is_placeholder_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `value` may fill a placeholder inside a URL: unreserved characters without
/// `~`, so it can extend a host name or path segment but never end one.
pub(super) fn is_part_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_PART_VALUE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether the URL's host is loopback: 127.0.0.0/8, `::1` or `localhost`.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses `text` and applies the rules every service URL obeys: `https`, or `http` to a
/// loopback host; a host; no userinfo; no fragment.
pub(super) fn checked_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("is not a valid URL ({e})"))?;
    check_url(&url)?;
    Ok(url)
}

/// The rules of [`checked_url`] for an already parsed URL.
pub(super) fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => {
            return Err(
                "uses http; use https (http is allowed only to 127.0.0.1, ::1 or localhost)"
                    .to_owned(),
            );
        }
        other => return Err(format!("has scheme {other}; use https")),
    }
    if url.host().is_none() {
        return Err("has no host; write scheme://host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("contains user info; remove the 'user:password@' part".to_owned());
    }
    if url.fragment().is_some() {
        return Err("contains a fragment; remove the '#...' part".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_placeholders() {
        assert_eq!(
            parse("https://{site}.atlassian.net/{v}").unwrap(),
            vec![
                Segment::Lit("https://"),
                Segment::Param("site"),
                Segment::Lit(".atlassian.net/"),
                Segment::Param("v"),
            ]
        );
        assert_eq!(parse("{url}").unwrap(), vec![Segment::Param("url")]);
        assert_eq!(whole_param(&parse("{url}").unwrap()), Some("url"));
        assert_eq!(whole_param(&parse("{url}/x").unwrap()), None);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn rejects_broken_templates() {
        for bad in [
            "https://{site.x",
            "https://x}",
            "https://{}",
            "https://{1a}",
            "{a b}",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn fills_placeholders() {
        let segments = parse("https://www.zohoapis.{dc}/{dc}").unwrap();
        let filled: Result<_, ()> = fill(&segments, |n| Ok(format!("<{n}>")));
        assert_eq!(filled.unwrap(), "https://www.zohoapis.<dc>/<dc>");
    }

    #[test]
    fn part_values_cannot_escape_their_place() {
        for good in ["acme", "com.au", "acme--dev.sandbox", "a_b-c"] {
            assert!(is_part_value(good), "{good}");
        }
        for bad in [
            "",
            "evil.com/",
            "a@b",
            "a:1",
            "a?b",
            "a#b",
            "a b",
            "a%2f",
            "~a",
        ] {
            assert!(!is_part_value(bad), "{bad}");
        }
        assert!(!is_part_value(&"a".repeat(MAX_PART_VALUE_LEN + 1)));
    }

    #[test]
    fn https_or_loopback_http() {
        for good in [
            "https://api.example.com/v1",
            "http://127.0.0.1:8080",
            "http://127.5.6.7",
            "http://[::1]:9000/x",
            "http://localhost:3000",
            "http://LOCALHOST",
        ] {
            checked_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "http://api.example.com",
            "http://10.0.0.1",
            "http://localhost.evil.com",
            "http://[::2]",
            "ftp://example.com",
            "https://user:pw@example.com",
            "https://example.com/#frag",
            "not a url",
        ] {
            assert!(checked_url(bad).is_err(), "{bad} accepted");
        }
    }
}
