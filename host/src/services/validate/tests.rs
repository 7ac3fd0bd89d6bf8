//! Tests for `validate.rs`: one rejected example per rule, each checked for its message.

use crate::services::{ServiceDef, ServiceError};

const BASE: &str = r#"
name = "acme"
display_name = "Acme"
auth = "api_key"
base_url = "https://api.acme.test/v1"
"#;

const KEY: &str = r#"
[[params]]
name = "X-Api-Key"
display_name = "API key"
secret = true
location = "header"
"#;

/// A service of `auth` with `base_url`, extra top-level keys and `tables` appended.
fn def(auth: &str, base_url: &str, top: &str, tables: &str) -> String {
    let base = BASE
        .replace("\"api_key\"", &format!("\"{auth}\""))
        .replace("https://api.acme.test/v1", base_url);
    format!("{base}{top}\n{tables}")
}

fn api_key(top: &str, tables: &str) -> String {
    def(
        "api_key",
        "https://api.acme.test/v1",
        top,
        &format!("{KEY}{tables}"),
    )
}

fn ok(text: &str) -> ServiceDef {
    ServiceDef::from_toml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Asserts `text` is rejected with a message containing `needle`.
fn fails(text: &str, needle: &str) {
    match ServiceDef::from_toml(text) {
        Ok(_) => panic!("accepted, expected {needle:?}:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
            if matches!(e, ServiceError::Invalid { .. }) {
                assert!(msg.starts_with("service \"acme\": "), "{msg}");
                assert!(!msg.ends_with('.'), "{msg}");
            }
        }
    }
}

fn param(name: &str, location: &str, extra: &str) -> String {
    format!(
        "[[params]]\nname = \"{name}\"\ndisplay_name = \"P\"\nlocation = \
         \"{location}\"\n{extra}\n"
    )
}

const OAUTH: &str =
    "[oauth2]\nauthorize_url = \"https://acme.test/a\"\ntoken_url = \"https://acme.test/t\"\n";

#[test]
fn valid_definitions_pass() {
    ok(&api_key("", ""));
    ok(&def("oauth2", "https://api.acme.test", "", OAUTH));
    ok(&def("none", "http://127.0.0.1:8080", "", ""));
    ok(&def(
        "bearer",
        "https://a.test",
        "",
        &param(
            "Authorization",
            "header",
            "secret = true\nformat = \"Bearer {value}\"",
        ),
    ));
}

#[test]
fn service_name_and_display_name() {
    fails(
        &api_key("", "").replace("\"acme\"", "\"Acme\""),
        "invalid service name \"Acme\"",
    );
    fails(
        &api_key("", "").replace("\"Acme\"", "\" \""),
        "display_name is empty",
    );
}

#[test]
fn oauth2_table_matches_auth() {
    fails(
        &def("oauth2", "https://a.test", "", ""),
        "oauth2 is missing",
    );
    fails(&api_key("", OAUTH), "oauth2 is set but auth is \"api_key\"");
}

#[test]
fn placeholders_must_name_url_params() {
    fails(
        &def("none", "https://{site}.acme.test", "", ""),
        "base_url uses {site} but no param",
    );
    fails(
        &def(
            "none",
            "https://{site}.acme.test",
            "",
            &param("site", "query", ""),
        ),
        "base_url uses {site}",
    );
    fails(
        &def("none", "https://{site.acme.test", "", ""),
        "base_url has a '{' without",
    );
    fails(
        &def("none", "https://a.test", "", &param("site", "url", "")),
        "no URL uses {site}",
    );
    fails(
        &def("none", "https://a.test", "", &param("x.y", "url", "")),
        "not a valid placeholder name",
    );
    let text = def(
        "none",
        "https://a.test",
        "",
        &format!(
            "{}[oauth2]\ntoken_url = \"https://{{t}}.test/t\"\ngrant = \"client_credentials\"",
            ""
        ),
    );
    fails(
        &text.replace("\"none\"", "\"oauth2\""),
        "oauth2.token_url uses {t}",
    );
    let both = def(
        "none",
        "{u}",
        "allowed_origins = [\"https://{u}.test\"]",
        &param("u", "url", ""),
    );
    fails(&both, "used both as a whole URL and inside a URL");
    fails(
        &def(
            "none",
            "https://{s}.test",
            "",
            &param("s", "url", "default = \"a/b\""),
        ),
        "cannot go into a URL",
    );
}

#[test]
fn param_names_are_unique_and_fit_their_location() {
    fails(
        &api_key("", &param("x-api-key", "query", "")),
        "defined twice",
    );
    fails(
        &api_key("", &param("X(Api)", "header", "")),
        "param \"X(Api)\" has location header but no valid header name: \"X(Api)\" must be",
    );
    for header in ["Host", "cookie", "Proxy-Authorization", "Content-Length"] {
        fails(
            &api_key("", &param(header, "header", "")),
            "which the HTTP client manages",
        );
    }
    fails(&api_key("", &param("", "query", "")), "has an invalid name");
    fails(
        &api_key(
            "",
            "[[params]]\nname = \"q\"\ndisplay_name = \"\"\nlocation = \"query\"",
        ),
        "empty display_name",
    );
}

#[test]
fn formats_secrets_defaults_and_choices() {
    fails(
        &api_key("", &param("X-B", "header", "format = \"Bearer\"")),
        "exactly one {value}",
    );
    fails(
        &api_key("", &param("X-B", "header", "format = \"{value} {other}\"")),
        "exactly one {value}",
    );
    fails(
        &api_key("", &param("q", "query", "format = \"{value}\"")),
        "format applies only to location header",
    );
    fails(
        &api_key("", &param("q", "query", "secret = true\ndefault = \"k\"")),
        "is secret but has a default",
    );
    fails(
        &api_key(
            "",
            &param("q", "query", "default = \"c\"\nchoices = [\"a\", \"b\"]"),
        ),
        "not among its choices",
    );
    fails(
        &api_key("", &param("q", "query", "choices = [\"a\", \"a\"]")),
        "lists choice \"a\" twice",
    );
}

#[test]
fn basic_auth_params() {
    let user = param("user", "basic_user", "");
    let pass = param("pass", "basic_password", "secret = true");
    ok(&def(
        "basic",
        "https://a.test",
        "",
        &format!("{user}{pass}"),
    ));
    ok(&def("basic", "https://a.test", "", &user));
    fails(
        &def("basic", "https://a.test", "", &pass),
        "have 0 params with location basic_user",
    );
    fails(
        &def(
            "basic",
            "https://a.test",
            "",
            &format!("{user}{}", param("u2", "basic_user", "")),
        ),
        "have 2 params with location basic_user",
    );
    fails(
        &def(
            "basic",
            "https://a.test",
            "",
            &format!("{user}{pass}{}", param("p2", "basic_password", "")),
        ),
        "at most one",
    );
    fails(
        &def("bearer", "https://a.test", "", &user),
        "auth = \"bearer\" does not send",
    );
}

#[test]
fn api_key_and_bearer_need_secrets() {
    ok(&def(
        "api_key",
        "https://a.test",
        "",
        &param("key", "query", "secret = true"),
    ));
    ok(&def(
        "api_key",
        "https://a.test",
        "",
        &param("key", "basic_user", "secret = true"),
    ));
    fails(
        &def("api_key", "https://a.test", "", &param("key", "query", "")),
        "have no secret key",
    );
    fails(
        &def(
            "api_key",
            "https://a.test",
            "",
            &param("key", "none", "secret = true"),
        ),
        "have no secret key",
    );
    fails(
        &def(
            "bearer",
            "https://a.test",
            "",
            &param("Authorization", "header", "format = \"Bearer {value}\""),
        ),
        "have no secret header",
    );
    fails(
        &def(
            "bearer",
            "https://a.test",
            "",
            &param("token", "query", "secret = true"),
        ),
        "have no secret header",
    );
    fails(
        &def(
            "none",
            "https://a.test",
            "",
            &param("X-K", "header", "secret = true"),
        ),
        "auth = \"none\" sends no credentials",
    );
}

#[test]
fn urls_are_https_or_loopback() {
    fails(
        &def("none", "http://api.acme.test", "", ""),
        "base_url uses http; use https",
    );
    fails(&def("none", "http://10.0.0.1", "", ""), "uses http");
    fails(&def("none", "ftp://a.test", "", ""), "has scheme ftp");
    fails(
        &def("none", "https://u:p@a.test", "", ""),
        "contains user info",
    );
    fails(
        &def("none", "not a url", "", ""),
        "base_url is not a valid URL",
    );
    ok(&def("none", "http://localhost:9/x", "", ""));
    ok(&def("none", "http://[::1]:9", "", ""));
    fails(
        &def(
            "none",
            "https://a.test",
            "docs_url = \"http://a.test/docs\"",
            "",
        ),
        "docs_url uses http",
    );
}

#[test]
fn allowed_origins_are_bare_and_include_the_base() {
    let with = |origins: &str| {
        def(
            "none",
            "https://a.test/v1",
            &format!("allowed_origins = [{origins}]"),
            "",
        )
    };
    ok(&with("\"https://a.test\", \"https://b.test:8443\""));
    ok(&with("\"https://a.test:443\""));
    for bad in [
        "\"https://a.test/\"",
        "\"https://a.test/v1\"",
        "\"https://a.test?x=1\"",
        "\"https://u@a.test\"",
    ] {
        fails(
            &with(&format!("\"https://a.test\", {bad}")),
            "allowed_origins[1]",
        );
    }
    fails(&with("\"https://a.test/\""), "is not a bare origin");
    fails(&with("\"http://b.test\""), "uses http");
    fails(
        &with("\"https://b.test\""),
        "do not include https://a.test:443, the origin of base_url",
    );
}

#[test]
fn oauth2_rules() {
    let o = |extra: &str| def("oauth2", "https://a.test", "", &format!("{OAUTH}{extra}"));
    fails(
        &def(
            "oauth2",
            "https://a.test",
            "",
            "[oauth2]\ntoken_url = \"https://a.test/t\"",
        ),
        "oauth2.authorize_url is missing",
    );
    fails(
        &o("grant = \"client_credentials\""),
        "client_credentials grant has no authorization step",
    );
    ok(&def(
        "oauth2",
        "https://a.test",
        "",
        "[oauth2]\ngrant = \"client_credentials\"\ntoken_url = \"https://a.test/t\"",
    ));
    fails(
        &o("scopes = [\"a\"]\ndefault_scopes = [\"b\"]"),
        "contains \"b\", which is not in scopes",
    );
    fails(&o("scopes = [\"a b\"]"), "split it");
    fails(
        &o("scope_separator = \",\"\nscopes = [\"a,b\"]"),
        "split it",
    );
    fails(&o("scopes = [\"a\", \"a\"]"), "lists \"a\" twice");
    fails(
        &o("scope_separator = \"\""),
        "oauth2.scope_separator is empty",
    );
    fails(
        &o("auth_params = { state = \"x\" }"),
        "sets \"state\", which keyhole sets itself",
    );
    fails(
        &o("revocation_url = \"http://a.test/r\""),
        "oauth2.revocation_url uses http",
    );
    fails(
        &o("token_placement = { format = \"Bearer\" }"),
        "exactly one {token}",
    );
    fails(
        &o("token_placement = { name = \"Cookie\" }"),
        "which the HTTP client manages",
    );
    fails(
        &o("token_placement = { location = \"query\", name = \" \" }"),
        "blank query name",
    );
    ok(&o("token_placement = { location = \"query\" }"));
    let clash = def(
        "oauth2",
        "https://a.test",
        "",
        &format!("{}{OAUTH}", param("authorization", "header", "")),
    );
    fails(&clash, "uses the name the OAuth access token is placed in");
}

#[test]
fn verify_rules() {
    let v = |body: &str| api_key("", &format!("[verify]\n{body}"));
    ok(&v("path = \"/me?x=1\"\nexpect_status = [200, 404]"));
    fails(&v("path = \"me\""), "verify.path \"me\" is not a path");
    fails(&v("path = \"//evil.test/x\""), "is not a path");
    fails(
        &v("method = \"get\"\npath = \"/me\""),
        "verify.method \"get\" is not an HTTP method",
    );
    fails(&v("path = \"/me\"\nexpect_status = [700]"), "contains 700");
    ok(&v(
        "path = \"/me\"\naccount = [\"/login\", \"/user/email\"]",
    ));
    fails(
        &v("path = \"/me\"\naccount = [\"login\"]"),
        "verify.account \"login\" is not a JSON pointer",
    );
    fails(
        &v(&format!(
            "path = \"/me\"\naccount = [\"/{}\"]",
            "a".repeat(300)
        )),
        "is longer than 200 bytes",
    );
    fails(
        &v("path = \"/me\"\naccount = [\"/a\\tb\"]"),
        "contains a control character",
    );
}
