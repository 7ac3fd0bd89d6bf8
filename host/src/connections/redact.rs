//! Scrubbing secret values out of anything headed for a guest or a record.
//!
//! An upstream may echo a credential back (an echo endpoint, an error page quoting the
//! request). Every form in which we sent a secret — raw, inside a formatted header,
//! Basic-encoded, percent-encoded in a query — is replaced by `[redacted]`, and so are
//! the ways common URL encoders percent-encode it (see `PERCENT_KEPT`; upper- or
//! lower-case hex, a space as `%20` or `+`) and the forms a JSON answer commonly quotes it
//! in: `"`, `\` and control characters escaped, and any mix of what encoders add by
//! default: `/` as `\/` (PHP), non-ASCII as `\uXXXX` (Python, PHP), `<`, `>`, `&` as
//! `\u003c`, `\u003e`, `\u0026` (Go), those and `=`, `'` as `\u003d`, `\u0027` (Java's
//! Gson), and `"`, `&`, `'`, `+`, `<`, `>`, `` ` `` and non-ASCII in upper-case hex,
//! `\u002B` (.NET's `System.Text.Json`). A Basic blob ends in `=` more often than not,
//! and a base64 key may hold `+`.

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// The byte strings to scrub for one connection's requests. The matcher is built on
/// first use and reused for every header and body it scrubs afterwards.
#[derive(Default, Clone)]
pub struct Redactor {
    needles: Vec<Vec<u8>>,
    matcher: std::sync::OnceLock<aho_corasick::AhoCorasick>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The needles are the secrets themselves.
        f.debug_struct("Redactor")
            .field("needles", &self.needles.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Add a secret value in every encoding we might have sent it in.
    pub fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        self.push_quoted(secret);
        // Identical forms are one needle (`push`): for a secret of letters and digits all
        // of these are the raw value, and `-`, `.`, `_` add only the strictest encoding's.
        for kept in PERCENT_KEPT {
            for space_as_plus in [false, true] {
                for lower in [false, true] {
                    self.push(percent_encoded(secret, kept, space_as_plus, lower).into_bytes());
                }
            }
        }
    }

    /// Add an exact byte string (e.g. a Basic `user:pass` base64 value), as it is and
    /// as a JSON answer quotes it.
    pub fn add_exact(&mut self, value: &str) {
        if !value.is_empty() {
            self.push_quoted(value);
        }
    }

    /// `value` as it is, and inside a JSON string: `"`, `\` and control characters
    /// escaped, with any mix of the escapes common encoders add by default (see the
    /// module doc). For a plain alphanumeric value these all coincide.
    fn push_quoted(&mut self, value: &str) {
        self.push(value.as_bytes().to_vec());
        let quoted = serde_json::to_string(value).unwrap_or_default();
        let escaped = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or_default();
        // Each escape doubles the forms: with and without it, on top of the others.
        let mut forms = vec![escaped.to_string()];
        for escape in [
            escape_slash,
            escape_html,
            escape_non_ascii,
            escape_gson,
            escape_dotnet,
        ] {
            let more: Vec<String> = forms.iter().map(|f| escape(f)).collect();
            forms.extend(more);
        }
        for form in forms {
            self.push(form.into_bytes());
        }
    }

    /// Whether there is nothing to scrub (no secret was added).
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    fn push(&mut self, needle: Vec<u8>) {
        if !self.needles.contains(&needle) {
            self.needles.push(needle);
            self.matcher = std::sync::OnceLock::new();
        }
    }

    /// The matcher over every needle; `None` when there are none.
    fn matcher(&self) -> Option<&aho_corasick::AhoCorasick> {
        if self.needles.is_empty() {
            return None;
        }
        Some(self.matcher.get_or_init(|| {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&self.needles)
                .expect("a handful of literal needles always builds")
        }))
    }

    fn replace(&self, matcher: &aho_corasick::AhoCorasick, data: &[u8]) -> Vec<u8> {
        let replacements = vec![REDACTED.as_bytes(); self.needles.len()];
        matcher.replace_all_bytes(data, &replacements)
    }

    /// `data` with every occurrence of every secret replaced, and whether there was any.
    /// Without one, `data` comes back as it was, not copied.
    pub fn scrub_vec(&self, data: Vec<u8>) -> (Vec<u8>, bool) {
        match self.matcher() {
            Some(m) if m.is_match(&data) => (self.replace(m, &data), true),
            _ => (data, false),
        }
    }

    /// Replace every occurrence of every secret in `text`.
    pub fn scrub(&self, text: &str) -> String {
        match self.matcher() {
            Some(m) if m.is_match(text) => {
                String::from_utf8_lossy(&self.replace(m, text.as_bytes())).into_owned()
            }
            _ => text.to_string(),
        }
    }
}

/// The bytes besides ASCII letters and digits that common percent-encoders leave as they
/// are. Each writes the rest as `%XX`, in upper-case hex (a few in lower), and a space as
/// `%20` or `+`: every combination is scrubbed.
const PERCENT_KEPT: &[&str] = &[
    // None: `percent-encoding`'s `NON_ALPHANUMERIC`, what keyhole itself sends in a URL.
    "",
    // RFC 3986's unreserved: Go's `url.QueryEscape` and `url.PathEscape` of a value
    // without sub-delimiters, Python's `quote`, PHP's `rawurlencode`, .NET's
    // `Uri.EscapeDataString`.
    "-._~",
    // WHATWG form encoding: Java's `URLEncoder`, `URLSearchParams`, `form_urlencoded`.
    "*-._",
    // PHP's `urlencode`.
    "-._",
    // JavaScript's `encodeURIComponent`.
    "!'()*-._~",
    // .NET's `HttpUtility.UrlEncode` (lower-case hex) and `WebUtility.UrlEncode`.
    "!()*-._",
];

/// `value` with every byte but ASCII letters, digits and `kept` as `%XX` (`lower`- or
/// upper-case hex), a space as `+` if `space_as_plus`.
fn percent_encoded(value: &str, kept: &str, space_as_plus: bool, lower: bool) -> String {
    let hex: &[u8; 16] = if lower {
        b"0123456789abcdef"
    } else {
        b"0123456789ABCDEF"
    };
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || kept.as_bytes().contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' && space_as_plus {
            out.push('+');
        } else {
            out.push('%');
            out.push(char::from(hex[usize::from(b >> 4)]));
            out.push(char::from(hex[usize::from(b & 0xf)]));
        }
    }
    out
}

/// `/` as `\/` (PHP's default).
fn escape_slash(s: &str) -> String {
    s.replace('/', "\\/")
}

/// `<`, `>`, `&` as `\u003c`, `\u003e`, `\u0026` (Go's default).
fn escape_html(s: &str) -> String {
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Non-ASCII as `\uXXXX`, beyond U+FFFF as a surrogate pair (Python's and PHP's default).
fn escape_non_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0u16; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// `<`, `>`, `&`, `=`, `'` as `\u003c`, `\u003e`, `\u0026`, `\u003d`, `\u0027` (Gson's
/// default, HTML-safe).
fn escape_gson(s: &str) -> String {
    escape_html(s)
        .replace('=', "\\u003d")
        .replace('\'', "\\u0027")
}

/// .NET `System.Text.Json`'s default encoder: `"` as `\u0022` (not `\"`), `&`, `'`, `+`,
/// `<`, `>`, `` ` `` and non-ASCII as `\uXXXX` in upper-case hex. `s` is already
/// JSON-escaped, so a `"` in it is the two characters `\"`, and a `\` there is the
/// first of `\\` or `\"`.
fn escape_dotnet(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push_str("\\u0022"),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            '&' | '\'' | '+' | '<' | '>' | '`' => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c if !c.is_ascii() => {
                for unit in c.encode_utf16(&mut [0u16; 2]) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_raw_and_encoded_forms() {
        let mut r = Redactor::default();
        r.add("s3cr et/+");
        r.add_exact("dXNlcjpwYXNz");
        let text = "a s3cr et/+ b s3cr+et%2F%2B c s3cr%20et%2F%2B d dXNlcjpwYXNz";
        let out = r.scrub(text);
        assert!(!out.contains("s3cr"), "{out}");
        assert!(!out.contains("dXNlcjpwYXNz"));
        assert_eq!(out.matches(REDACTED).count(), 4);
        assert!(!format!("{r:?}").contains("s3cr"));
    }

    #[test]
    fn scrubs_the_forms_a_json_answer_quotes_a_secret_in() {
        let mut r = Redactor::default();
        r.add("ab/c\"d\\e");
        for quoted in [r#"{"echo":"ab/c\"d\\e"}"#, r#"{"echo":"ab\/c\"d\\e"}"#] {
            let out = r.scrub(quoted);
            assert_eq!(out, r#"{"echo":"[redacted]"}"#, "{quoted}");
        }
        // The escapes encoders add by default: Python's non-ASCII (a surrogate pair
        // beyond U+FFFF), Go's `<`, `>`, `&`, PHP's `/` and non-ASCII together.
        let mut r = Redactor::default();
        r.add("pä<ss>&/😀");
        for quoted in [
            r#""p\u00e4<ss>&/\ud83d\ude00""#,
            r#""pä\u003css\u003e\u0026/😀""#,
            r#""p\u00e4<ss>&\/\ud83d\ude00""#,
        ] {
            assert_eq!(r.scrub(quoted), r#""[redacted]""#, "{quoted}");
        }
        // Gson's and .NET's defaults: a Basic blob ending in `=`, a base64 key with `+`,
        // and .NET's upper-case hex for `<` and non-ASCII, `"` as `\u0022`.
        let mut r = Redactor::default();
        r.add_exact("dXNlcjpwYXNz==");
        r.add("ab+c=d");
        r.add("x<y'ä\"z");
        for quoted in [
            r#""dXNlcjpwYXNz\u003d\u003d""#,
            r#""ab+c\u003dd""#,
            r#""ab\u002Bc=d""#,
            r#""x\u003cy\u0027ä\"z""#,
            r#""x\u003Cy\u0027\u00E4\u0022z""#,
        ] {
            assert_eq!(r.scrub(quoted), r#""[redacted]""#, "{quoted}");
        }
        // An exact value (a Basic blob, which may hold `/`) too.
        r.add_exact("dXNl/cjo=");
        assert_eq!(
            r.scrub(r#"["Basic dXNl\/cjo="]"#),
            r#"["Basic [redacted]"]"#
        );
    }

    #[test]
    fn scrubs_the_ways_encoders_percent_encode_a_secret() {
        let mut r = Redactor::default();
        r.add("ab~cd/ef g+ä");
        for echoed in [
            // RFC 3986 (Go, Python, PHP's `rawurlencode`), upper- and lower-case hex.
            "ab~cd%2Fef%20g%2B%C3%A4",
            "ab~cd%2fef%20g%2b%c3%a4",
            // Go's `url.QueryEscape`: a space as `+`.
            "ab~cd%2Fef+g%2B%C3%A4",
            // Everything encoded, in lower-case hex.
            "ab%7ecd%2fef%20g%2b%c3%a4",
            // Form encoding, and PHP's `urlencode` (`~` encoded).
            "ab%7Ecd%2Fef+g%2B%C3%A4",
            // .NET's `HttpUtility.UrlEncode`.
            "ab%7ecd%2fef+g%2b%c3%a4",
        ] {
            assert_eq!(
                r.scrub(&format!("next={echoed}&")),
                "next=[redacted]&",
                "{echoed}"
            );
        }
    }

    #[test]
    fn identical_forms_of_a_secret_are_one_needle() {
        let mut r = Redactor::default();
        r.add("abc123");
        assert_eq!(
            r.needles.len(),
            1,
            "letters and digits: the raw value alone"
        );
        let mut r = Redactor::default();
        r.add("sk_live-1.2");
        // Raw (every encoder but the strictest keeps `-._`), and the strictest in upper-
        // and lower-case hex.
        assert_eq!(r.needles.len(), 3);
    }

    #[test]
    fn a_needle_added_after_use_is_scrubbed_too() {
        let mut r = Redactor::default();
        r.add("first-secret");
        assert_eq!(r.scrub("first-secret"), REDACTED);
        r.add_exact("second-secret");
        assert_eq!(
            r.scrub("first-secret second-secret"),
            "[redacted] [redacted]"
        );
    }
}
