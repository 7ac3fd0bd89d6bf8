//! What of an upstream's answer a guest gets: the response headers, scrubbed and without
//! the ones that carry or betray a credential, and the check that a body reaches the
//! scrubber in a form it can read.

use super::redact::Redactor;

/// Response headers a guest never gets. A cookie an upstream sets on an authenticated
/// request opens a session: it authenticates on its own, so it is a credential derived
/// from the connection's, and would outlive a revocation. keyhole keeps no cookie jar and
/// a guest may not send `Cookie`, so the guest has no use for it either. (Headers named
/// like one the connection's credentials go in are withheld too: a rotated credential
/// would come back under that name, not as the value the scrubber knows.)
const WITHHELD_RESPONSE_HEADERS: &[&str] = &["set-cookie", "set-cookie2"];

/// Headers computed over the body as the upstream sent it. Once the scrubber has changed
/// the body, or when the answer has none the scrubber could check (HEAD, 304), they would
/// let a guest test guesses at what was, or would have been, scrubbed out.
const BODY_DIGEST_HEADERS: &[&str] = &[
    "etag",
    "content-md5",
    "digest",
    "content-digest",
    "repr-digest",
];

/// Longest list of codings an error quotes, in characters (the upstream chose them; it
/// may send many lines of them).
pub(super) const MAX_SHOWN_CODINGS: usize = 200;

/// What of an answer's codings would hand the guest a body the scrubber cannot read, as
/// `Content-Encoding: …` or `Transfer-Encoding: …` with every value of every line of that
/// header, or `None`. Every value counts, not just the first line's: an upstream may send
/// `identity` on one `Content-Encoding` line and `gzip` on the next. And hyper removes
/// only the chunked framing, so any other transfer coding (`gzip, chunked`) would reach
/// the guest still applied. (The obsolete `Transfer-Encoding: identity` is refused too:
/// no server needs it.)
pub(super) fn unscrubbable_coding(headers: &reqwest::header::HeaderMap) -> Option<String> {
    use reqwest::header::{CONTENT_ENCODING, TRANSFER_ENCODING};
    [
        (CONTENT_ENCODING, "Content-Encoding", "identity"),
        (TRANSFER_ENCODING, "Transfer-Encoding", "chunked"),
    ]
    .into_iter()
    .find_map(|(name, shown, plain)| {
        // The common answer has neither header, or `chunked` alone: checked without
        // allocating anything.
        let codings = || {
            headers
                .get_all(&name)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|c| !c.is_empty())
        };
        codings()
            .any(|c| !c.eq_ignore_ascii_case(plain.as_bytes()))
            .then(|| {
                let listed: Vec<String> = codings()
                    .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
                    .collect();
                format!("{shown}: {}", listed.join(", "))
            })
    })
}

/// `text` cut to `max` characters.
pub(super) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The response headers a guest gets: scrubbed, without the ones that carry or betray a
/// credential ([`WITHHELD_RESPONSE_HEADERS`], the connection's `credential_headers`, a
/// Java session id in `Location`), and with a `Content-Length` that is the body's the
/// guest gets. `no_body`: an answer to HEAD, or a 304, whose `Content-Length` describes
/// a body the guest never sees (dropped). `rescrubbed`: the body's length when the
/// scrubber changed it (then headers computed over the original body go too).
///
/// A HEAD or 304 answer's body digests go as well whenever the connection has a secret
/// the body could have held: they describe a body the scrubber never saw, so a guest
/// could ask with HEAD (or `If-None-Match: *`) for the digest of a body that echoes the
/// credential and test guesses at it offline (a Basic password is no long random key).
/// keyhole cannot tell whether that body held a secret, so it assumes it did. A guest
/// loses little: a 304 answers a tag it sent (or `*`), and a GET brings the tag of any
/// body the scrubber left as it was. (A connection without secrets has nothing to guess
/// at; its digests stay.)
pub(super) fn guest_headers(
    upstream: &reqwest::header::HeaderMap,
    redactor: &Redactor,
    credential_headers: &[String],
    no_body: bool,
    rescrubbed: Option<usize>,
) -> Vec<(String, String)> {
    let digests_go = rescrubbed.is_some() || (no_body && !redactor.is_empty());
    let mut headers = Vec::with_capacity(upstream.len());
    for (name, value) in upstream {
        let name = name.as_str();
        if WITHHELD_RESPONSE_HEADERS.contains(&name)
            || credential_headers.iter().any(|c| c == name)
            || (digests_go && BODY_DIGEST_HEADERS.contains(&name))
            || (no_body && name == "content-length")
        {
            continue;
        }
        let value = match (name, rescrubbed) {
            ("content-length", Some(len)) => len.to_string(),
            ("location", _) => {
                without_session_id(&redactor.scrub(&String::from_utf8_lossy(value.as_bytes())))
            }
            _ => redactor.scrub(&String::from_utf8_lossy(value.as_bytes())),
        };
        headers.push((name.to_string(), value));
    }
    headers
}

/// `url` without any `;jsessionid=…` path parameter (in any case, however many): Java
/// servers put the session in the URL when the client sent no cookie back, and that id
/// authenticates on its own.
pub(super) fn without_session_id(url: &str) -> String {
    const PARAM: &str = ";jsessionid=";
    // ASCII lower-casing keeps every byte where it was, so offsets carry over.
    let lower = url.to_ascii_lowercase();
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(PARAM) {
        let start = at + found;
        out.push_str(&url[at..start]);
        let value = start + PARAM.len();
        // What follows starts with one of these or is empty, so no new parameter can form
        // across the cut.
        at = url[value..]
            .find(['?', '#', '/', ';'])
            .map_or(url.len(), |end| value + end);
    }
    out.push_str(&url[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn upstream(pairs: &[(&str, &str)]) -> reqwest::header::HeaderMap {
        let mut map = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn guest_headers_leave_out_what_carries_or_betrays_a_credential() {
        let mut redactor = Redactor::default();
        redactor.add("k-123");
        let raw = upstream(&[
            ("content-type", "application/json"),
            ("content-length", "40"),
            ("etag", "\"abc\""),
            ("digest", "sha-256=xyz"),
            ("set-cookie", "JSESSIONID=s1; Path=/"),
            ("x-api-key", "rotated-key-456"),
            ("x-echo", "key k-123"),
            ("location", "https://api.example/a;jsessionid=S3SS10N?x=1"),
        ]);
        let names = |h: &[(String, String)]| h.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let credential = ["authorization".to_string(), "x-api-key".to_string()];

        // Body unchanged by the scrubber: its digests stay, its length is the upstream's.
        let h = guest_headers(&raw, &redactor, &credential, false, None);
        assert_eq!(
            names(&h),
            [
                "content-type",
                "content-length",
                "etag",
                "digest",
                "x-echo",
                "location"
            ]
        );
        assert!(h.contains(&("content-length".into(), "40".into())));
        assert!(h.contains(&("x-echo".into(), "key [redacted]".into())));
        assert!(h.contains(&("location".into(), "https://api.example/a?x=1".into())));

        // Body scrubbed: the length is the new body's, the digests go.
        let h = guest_headers(&raw, &redactor, &credential, false, Some(25));
        assert!(h.contains(&("content-length".into(), "25".into())));
        assert!(!names(&h).iter().any(|n| n == "etag" || n == "digest"));

        // HEAD or 304: no body, so no length that would describe the unscrubbed one, and
        // no digests of a body that may have held a secret.
        let h = guest_headers(&raw, &redactor, &credential, true, None);
        assert_eq!(names(&h), ["content-type", "x-echo", "location"]);

        // Unless the connection has no secret a body could hold.
        let none = Redactor::default();
        let h = guest_headers(&raw, &none, &credential, true, None);
        assert_eq!(
            names(&h),
            ["content-type", "etag", "digest", "x-echo", "location"]
        );
    }

    #[test]
    fn every_coding_but_identity_and_chunked_is_found_on_every_line() {
        for (pairs, want) in [
            (&[][..], None),
            (&[("content-encoding", "identity")][..], None),
            (&[("content-encoding", " Identity ,")][..], None),
            (&[("transfer-encoding", "chunked")][..], None),
            (
                &[("transfer-encoding", "chunked"), ("content-encoding", "")][..],
                None,
            ),
            (
                &[("content-encoding", "gzip")][..],
                Some("Content-Encoding: gzip"),
            ),
            (
                &[
                    ("content-encoding", "identity"),
                    ("content-encoding", "GZIP"),
                ][..],
                Some("Content-Encoding: identity, gzip"),
            ),
            (
                &[("content-encoding", "identity, br")][..],
                Some("Content-Encoding: identity, br"),
            ),
            (
                &[("transfer-encoding", "gzip, chunked")][..],
                Some("Transfer-Encoding: gzip, chunked"),
            ),
            (
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ][..],
                Some("Transfer-Encoding: gzip, chunked"),
            ),
            (
                &[("transfer-encoding", "identity")][..],
                Some("Transfer-Encoding: identity"),
            ),
        ] {
            assert_eq!(
                unscrubbable_coding(&upstream(pairs)).as_deref(),
                want,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn a_java_session_id_leaves_a_url() {
        for (url, want) in [
            ("/a;jsessionid=X1?q=1", "/a?q=1"),
            ("/a;JSESSIONID=X1/b", "/a/b"),
            ("/a;jsessionid=X1;v=2#f", "/a;v=2#f"),
            ("/a;jsessionid=X1", "/a"),
            ("/a;jsessionid=X1;jsessionid=X2", "/a"),
            (
                "/a;jsessionid=X1;JSessionId=X2/b;jsessionid=X3?q=1",
                "/a/b?q=1",
            ),
            ("/a;jsessionid=;jsessionid=X2", "/a"),
            ("/a;jsess;jsessionid=X1;ionid=X2", "/a;jsess;ionid=X2"),
            ("/a?q=1", "/a?q=1"),
        ] {
            assert_eq!(without_session_id(url), want, "{url}");
        }
    }
}
