//! The built-in service presets, compiled in from `host/presets/*.toml`.
//!
//! Each preset was written from the provider's public API documentation (linked by its
//! `docs_url`). Adding one: drop `NAME.toml` in `host/presets/` and list it in [`SOURCES`];
//! the tests check that every file is listed and every preset is valid.

use std::sync::{Arc, OnceLock};

use super::schema::ServiceDef;

/// Preset file names and their text, sorted by name.
const SOURCES: &[(&str, &str)] = &[
    ("dropbox", include_str!("../../presets/dropbox.toml")),
    ("github", include_str!("../../presets/github.toml")),
    ("gitlab", include_str!("../../presets/gitlab.toml")),
    ("google", include_str!("../../presets/google.toml")),
    ("hubspot", include_str!("../../presets/hubspot.toml")),
    ("jira", include_str!("../../presets/jira.toml")),
    ("microsoft", include_str!("../../presets/microsoft.toml")),
    ("notion", include_str!("../../presets/notion.toml")),
    ("openai", include_str!("../../presets/openai.toml")),
    ("salesforce", include_str!("../../presets/salesforce.toml")),
    ("slack", include_str!("../../presets/slack.toml")),
    (
        "slack-webhook",
        include_str!("../../presets/slack-webhook.toml"),
    ),
    ("stripe", include_str!("../../presets/stripe.toml")),
    ("twilio", include_str!("../../presets/twilio.toml")),
    ("webhook", include_str!("../../presets/webhook.toml")),
    (
        "youtube-api-key",
        include_str!("../../presets/youtube-api-key.toml"),
    ),
    ("zoho", include_str!("../../presets/zoho.toml")),
    ("zoom", include_str!("../../presets/zoom.toml")),
];

/// Every built-in preset, parsed and validated on first use, sorted by name.
///
/// # Panics
/// If a preset file is invalid; `every_preset_is_valid` below makes that a test failure
/// rather than a runtime surprise.
pub fn presets() -> &'static [Arc<ServiceDef>] {
    static PRESETS: OnceLock<Vec<Arc<ServiceDef>>> = OnceLock::new();
    PRESETS.get_or_init(|| {
        SOURCES
            .iter()
            .map(|(file, text)| {
                Arc::new(
                    ServiceDef::from_toml(text)
                        .unwrap_or_else(|e| panic!("built-in preset {file}.toml is invalid: {e}")),
                )
            })
            .collect()
    })
}

/// The preset called `name`, if there is one (shared: clone the `Arc`, not the definition).
pub fn find_preset(name: &str) -> Option<&'static Arc<ServiceDef>> {
    presets().iter().find(|def| def.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::services::{AuthKind, ParamLocation, template};

    /// Services that authenticate a user but cannot sensibly be probed.
    const NO_VERIFY: &[&str] = &["webhook", "slack-webhook"];

    /// OAuth services without scopes: Notion grants access per page instead.
    const NO_SCOPES: &[&str] = &["notion"];

    #[test]
    fn every_preset_is_valid() {
        for (file, text) in SOURCES {
            let def = ServiceDef::from_toml(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(def.name, *file, "file name and service name differ");
            assert!(!def.description.is_empty(), "{file}: no description");
            assert!(def.docs_url.is_some(), "{file}: no docs_url");
        }
        assert!(presets().len() >= 17);
    }

    #[test]
    fn every_preset_file_is_listed_once_and_sorted() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/presets");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|f| f.strip_suffix(".toml").map(str::to_owned))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = SOURCES.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(listed, on_disk);
    }

    #[test]
    fn every_preset_url_is_https() {
        for def in presets() {
            for (field, text) in def
                .url_templates()
                .into_iter()
                .chain(def.docs_url.as_deref().map(|d| ("docs_url".to_owned(), d)))
            {
                let whole = template::whole_param(&template::parse(text).unwrap()).is_some();
                assert!(
                    whole || text.starts_with("https://"),
                    "{}: {field} is not https: {text}",
                    def.name
                );
            }
        }
    }

    #[test]
    fn oauth_presets_have_scopes_and_defaults() {
        for def in presets().iter().filter(|d| d.auth == AuthKind::Oauth2) {
            let o = def.oauth2.as_ref().unwrap();
            if NO_SCOPES.contains(&def.name.as_str()) {
                assert!(o.scopes.is_empty(), "{}: now has scopes", def.name);
                continue;
            }
            assert!(!o.scopes.is_empty(), "{}: no scopes", def.name);
            assert!(
                !o.default_scopes.is_empty(),
                "{}: no default_scopes",
                def.name
            );
        }
    }

    #[test]
    fn presets_have_verify_requests_where_sensible() {
        for def in presets() {
            let expected = !NO_VERIFY.contains(&def.name.as_str());
            assert_eq!(def.verify.is_some(), expected, "{}", def.name);
        }
    }

    /// Presets whose verification request answers with who the credentials belong to
    /// name that account; the others' (a model list, a balance, a region list) do not.
    #[test]
    fn identity_verifications_name_the_account() {
        const NO_ACCOUNT: [&str; 3] = ["openai", "stripe", "youtube-api-key"];
        for def in presets() {
            let Some(verify) = &def.verify else { continue };
            let expected = !NO_ACCOUNT.contains(&def.name.as_str());
            assert_eq!(!verify.account.is_empty(), expected, "{}", def.name);
        }
        let github = crate::services::find_preset("github")
            .unwrap()
            .verify
            .clone()
            .unwrap();
        assert_eq!(
            github.account(br#"{"login":"octocat","id":1}"#),
            Some(("/login", "octocat".to_string()))
        );
    }

    /// Every preset resolves with example values for its required `url` params, and its
    /// OAuth URLs resolve too.
    #[test]
    fn every_preset_resolves() {
        for def in presets() {
            let params: BTreeMap<String, String> = def
                .params
                .iter()
                .filter(|p| p.location == ParamLocation::Url && p.default.is_none())
                .map(|p| {
                    let value = if def.base_url == format!("{{{}}}", p.name) {
                        "https://hooks.slack.com/services/T0/B0/x".to_owned()
                    } else {
                        "acme".to_owned()
                    };
                    (p.name.clone(), value)
                })
                .collect();
            let endpoint = def
                .resolve(&params, None)
                .unwrap_or_else(|e| panic!("{}: {e}", def.name));
            assert_eq!(endpoint.base_url.scheme(), "https", "{}", def.name);
            if let Some(o) = &def.oauth2 {
                for url in [
                    &o.authorize_url,
                    &Some(o.token_url.clone()),
                    &o.revocation_url,
                ]
                .into_iter()
                .flatten()
                {
                    def.resolve_url(url, &params)
                        .unwrap_or_else(|e| panic!("{}: {e}", def.name));
                }
            }
        }
    }

    #[test]
    fn find_preset_by_name() {
        assert_eq!(find_preset("github").unwrap().display_name, "GitHub");
        assert!(find_preset("nope").is_none());
    }
}
