//! Turns a service's URL templates and a connection's `url` param values into concrete
//! URLs and the set of origins the outbound client may reach.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use url::Url;

use super::ServiceError;
use super::schema::ServiceDef;
use super::template;

/// A web origin, `scheme://host:port`, with the scheme's default port filled in, so
/// `https://a.test` and `https://a.test:443` are equal. Hosts compare as the URL parser
/// normalised them (lowercase domains, canonical IP addresses).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of `url`. A URL without a host or a known default port (`mailto:`,
    /// `data:`, `foo://host`) gets an opaque origin with an empty host and port 0, which
    /// equals no origin a service allows (those always have a host).
    pub fn of(url: &Url) -> Origin {
        Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default().unwrap_or(0),
        }
    }

    /// Whether `url` is on this origin.
    pub fn contains(&self, url: &Url) -> bool {
        Origin::of(url) == *self
    }

    /// The scheme, e.g. `https`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host as the URL parser normalised it; IPv6 addresses are in brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses a bare origin, `scheme://host[:port]` with no path, query, fragment or
    /// userinfo, applying the https-or-loopback rule.
    pub(super) fn parse_bare(text: &str) -> Result<Origin, String> {
        const SHAPE: &str =
            "is not a bare origin; write scheme://host[:port] with nothing after it";
        let url = template::checked_url(text)?;
        let after_scheme = text.split_once("://").map_or("", |(_, rest)| rest);
        if url.path() != "/" || url.query().is_some() || after_scheme.contains(['/', '?', '#', '@'])
        {
            return Err(SHAPE.to_owned());
        }
        Ok(Origin::of(&url))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl FromStr for Origin {
    type Err = String;

    /// Parses `scheme://host[:port]`; https, or http to a loopback host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Origin::parse_bare(s)
    }
}

/// Where a connection's requests go: the base URL and every origin they may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL that request paths are appended to.
    pub base_url: Url,
    /// Origins requests may reach; the first is always the origin of `base_url`.
    pub allowed_origins: Vec<Origin>,
}

impl Endpoint {
    /// Whether `url` is on one of the allowed origins.
    pub fn allows(&self, url: &Url) -> bool {
        self.allowed_origins.iter().any(|o| o.contains(url))
    }
}

impl ServiceDef {
    /// Resolves the base URL and allowed origins for a connection.
    ///
    /// `url_params` holds the connection's values for params of location `url`; other
    /// keys are ignored, and a param without a value takes its `default`.
    ///
    /// `base_url_override` (for local testing or an enterprise host) replaces the base
    /// URL. On another origin it replaces the service's origins too: only the override's
    /// origin is allowed, so credentials for the other host never reach the public
    /// service. The override obeys the same https-or-loopback rule.
    pub fn resolve(
        &self,
        url_params: &BTreeMap<String, String>,
        base_url_override: Option<&str>,
    ) -> Result<Endpoint, ServiceError> {
        // The override first, so a bad one is reported even when params are incomplete.
        let override_url = base_url_override
            .map(|text| {
                template::checked_url(text).map_err(|message| ServiceError::InvalidUrl {
                    service: self.name.clone(),
                    field: format!("base URL override \"{text}\""),
                    message,
                })
            })
            .transpose()?;
        let service_base = self.resolve_field("base_url", &self.base_url, url_params)?;
        let base_origin = Origin::of(&service_base);
        let mut origins = Vec::new();
        for (i, text) in self.allowed_origins.iter().enumerate() {
            let field = format!("allowed_origins[{i}]");
            let segments = template::parse(text).map_err(|e| self.invalid(&field, e))?;
            let filled = self.fill(&field, &segments, url_params)?;
            let origin =
                Origin::parse_bare(&filled).map_err(|message| ServiceError::InvalidUrl {
                    service: self.name.clone(),
                    field: field.clone(),
                    message,
                })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        if !origins.is_empty() && !origins.contains(&base_origin) {
            return Err(ServiceError::InvalidUrl {
                service: self.name.clone(),
                field: "base_url".to_owned(),
                message: "resolves to an origin outside allowed_origins; use a URL on one of them"
                    .to_owned(),
            });
        }
        // The effective base URL's origin comes first, as documented on `Endpoint`.
        let base_url = override_url.unwrap_or(service_base);
        let first = Origin::of(&base_url);
        let origins = if first == base_origin {
            origins.retain(|o| *o != first);
            origins.insert(0, first);
            origins
        } else {
            // An override on another host replaces the service's hosts: credentials meant
            // for an enterprise host or a stand-in must never reach the public service.
            vec![first]
        };
        Ok(Endpoint {
            base_url,
            allowed_origins: origins,
        })
    }

    /// Fills one of the service's URL templates (e.g. `oauth2.token_url`) from
    /// `url_params` and checks the result like any service URL.
    pub fn resolve_url(
        &self,
        template: &str,
        url_params: &BTreeMap<String, String>,
    ) -> Result<Url, ServiceError> {
        self.resolve_field("url", template, url_params)
    }

    /// The part of one of the service's URL templates that decides its origin (scheme,
    /// host and port), and the params used in that part, each once.
    ///
    /// A value inside a URL holds only letters, digits, '.', '_' and '-', so no value can
    /// end the host early or add one: the origin is decided by the text before the first
    /// '/', '?' or '#' after "://". A template that is one placeholder is a whole URL,
    /// decided by that param.
    pub fn origin_template<'a>(
        &self,
        template: &'a str,
    ) -> Result<(&'a str, Vec<&'a str>), ServiceError> {
        let part = match template.find("://") {
            Some(at) => {
                let authority = at + "://".len();
                let end = template[authority..]
                    .find(['/', '?', '#'])
                    .map_or(template.len(), |i| authority + i);
                &template[..end]
            }
            None => template,
        };
        let segments = template::parse(part).map_err(|e| self.invalid("url", e))?;
        let mut names: Vec<&str> = Vec::new();
        for name in template::params(&segments) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Ok((part, names))
    }

    fn resolve_field(
        &self,
        field: &str,
        text: &str,
        url_params: &BTreeMap<String, String>,
    ) -> Result<Url, ServiceError> {
        let segments = template::parse(text).map_err(|e| self.invalid(field, e))?;
        let filled = self.fill(field, &segments, url_params)?;
        template::checked_url(&filled).map_err(|message| ServiceError::InvalidUrl {
            service: self.name.clone(),
            // The filled URL may embed a secret param, so name the template instead.
            field: format!("{field} \"{text}\""),
            message: format!("after filling its placeholders {message}"),
        })
    }

    /// Fills placeholders with the param values, checking each value for its position.
    fn fill(
        &self,
        field: &str,
        segments: &[template::Segment<'_>],
        url_params: &BTreeMap<String, String>,
    ) -> Result<String, ServiceError> {
        let whole = template::whole_param(segments).is_some();
        template::fill(segments, |name| {
            let param = self
                .params
                .iter()
                .find(|p| p.name == name && p.location == super::ParamLocation::Url)
                .ok_or_else(|| {
                    self.invalid(
                        field,
                        format!(
                            "uses {{{name}}} but no param with location url is called \"{name}\""
                        ),
                    )
                })?;
            let value = url_params
                .get(name)
                .or(param.default.as_ref())
                .ok_or_else(|| ServiceError::MissingParam {
                    service: self.name.clone(),
                    param: name.to_owned(),
                })?;
            let bad = |message: String| ServiceError::InvalidParamValue {
                service: self.name.clone(),
                param: name.to_owned(),
                message,
            };
            if !param.choices.is_empty() && !param.choices.contains(value) {
                return Err(bad(format!(
                    "is not one of {}; pick one",
                    param.choices.join(", ")
                )));
            }
            if whole {
                if value.len() > template::MAX_WHOLE_URL_LEN {
                    return Err(bad(format!(
                        "is longer than {} bytes",
                        template::MAX_WHOLE_URL_LEN
                    )));
                }
                template::checked_url(value).map_err(bad)?;
            } else if !template::is_part_value(value) {
                return Err(bad(format!(
                    "is empty, longer than {} bytes or has characters other than letters, \
                     digits, '.', '_' and '-'; enter just the name, not a URL",
                    template::MAX_PART_VALUE_LEN
                )));
            }
            Ok(value.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::find_preset;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn origins(e: &Endpoint) -> Vec<String> {
        e.allowed_origins.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn origin_fills_default_ports_and_compares() {
        let a = Origin::of(&Url::parse("https://API.Example.com/x?y").unwrap());
        let b: Origin = "https://api.example.com:443".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "https://api.example.com:443");
        assert_eq!(
            (a.scheme(), a.host(), a.port()),
            ("https", "api.example.com", 443)
        );
        let v6 = Origin::of(&Url::parse("http://[::1]/").unwrap());
        assert_eq!(v6.to_string(), "http://[::1]:80");
        assert_ne!(a, "https://api.example.com:8443".parse().unwrap());
        let opaque = Origin::of(&Url::parse("mailto:a@b.test").unwrap());
        assert_eq!((opaque.host(), opaque.port()), ("", 0));
        assert_ne!(opaque, a);
        assert!("https://a.test/path".parse::<Origin>().is_err());
        assert!("http://a.test".parse::<Origin>().is_err());
    }

    #[test]
    fn fills_placeholders_from_params() {
        let jira = find_preset("jira").unwrap();
        let e = jira
            .resolve(&params(&[("site", "acme"), ("email", "ignored")]), None)
            .unwrap();
        assert_eq!(e.base_url.as_str(), "https://acme.atlassian.net/");
        assert_eq!(origins(&e), ["https://acme.atlassian.net:443"]);
        assert!(e.allows(&Url::parse("https://acme.atlassian.net/rest/api/3/myself").unwrap()));
        assert!(!e.allows(&Url::parse("https://other.atlassian.net/").unwrap()));
        assert!(!e.allows(&Url::parse("http://acme.atlassian.net/").unwrap()));
    }

    #[test]
    fn defaults_and_choices() {
        let zoho = find_preset("zoho").unwrap();
        let e = zoho.resolve(&BTreeMap::new(), None).unwrap();
        assert_eq!(e.base_url.as_str(), "https://www.zohoapis.com/");
        assert_eq!(
            origins(&e),
            ["https://www.zohoapis.com:443", "https://desk.zoho.com:443"]
        );
        let eu = params(&[("dc", "eu")]);
        let token = &zoho.oauth2.as_ref().unwrap().token_url;
        assert_eq!(
            zoho.resolve_url(token, &eu).unwrap().as_str(),
            "https://accounts.zoho.eu/oauth/v2/token"
        );
        let err = zoho.resolve(&params(&[("dc", "xx")]), None).unwrap_err();
        assert!(
            matches!(err, ServiceError::InvalidParamValue { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("is not one of com, eu"), "{err}");
        // Canada's accounts server is not accounts.zoho.ca, so the preset does not offer it.
        let err = zoho.resolve(&params(&[("dc", "ca")]), None).unwrap_err();
        assert!(
            matches!(err, ServiceError::InvalidParamValue { .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_required_param() {
        let err = find_preset("jira")
            .unwrap()
            .resolve(&BTreeMap::new(), None)
            .unwrap_err();
        assert!(
            matches!(err, ServiceError::MissingParam { ref param, .. } if param == "site"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "service \"jira\": url param \"site\" has no value; supply it when connecting"
        );
    }

    #[test]
    fn part_values_cannot_move_the_host() {
        let jira = find_preset("jira").unwrap();
        for evil in [
            "evil.test/",
            "evil.test?",
            "evil.test#",
            "u@evil.test",
            "evil.test:1",
            "",
        ] {
            let err = jira.resolve(&params(&[("site", evil)]), None).unwrap_err();
            assert!(
                matches!(err, ServiceError::InvalidParamValue { .. }),
                "{evil}: {err}"
            );
        }
    }

    #[test]
    fn an_override_on_another_host_replaces_the_services_origins() {
        let github = find_preset("github").unwrap();
        let e = github
            .resolve(&BTreeMap::new(), Some("http://127.0.0.1:8080/mock"))
            .unwrap();
        assert_eq!(e.base_url.as_str(), "http://127.0.0.1:8080/mock");
        assert_eq!(origins(&e), ["http://127.0.0.1:8080"]);
        // Credentials for an enterprise host must not reach the public service.
        let e = github
            .resolve(&BTreeMap::new(), Some("https://github.example.com/api/v3"))
            .unwrap();
        assert_eq!(origins(&e), ["https://github.example.com:443"]);
        assert!(!e.allows(&Url::parse("https://api.github.com/user").unwrap()));
        let jira = find_preset("jira").unwrap();
        let e = jira
            .resolve(
                &params(&[("site", "x")]),
                Some("https://jira.corp.example/"),
            )
            .unwrap();
        assert_eq!(origins(&e), ["https://jira.corp.example:443"]);
        assert!(!e.allows(&Url::parse("https://x.atlassian.net/rest/api/3/myself").unwrap()));
        // Overriding with the service's own origin (another path) keeps its origins.
        let e = github
            .resolve(&BTreeMap::new(), Some("https://api.github.com/"))
            .unwrap();
        assert_eq!(origins(&e), ["https://api.github.com:443"]);
        let google = find_preset("google").unwrap();
        let own = google.resolve(&BTreeMap::new(), None).unwrap();
        let e = google
            .resolve(&BTreeMap::new(), Some(own.base_url.as_str()))
            .unwrap();
        assert_eq!(origins(&e), origins(&own));
        assert!(origins(&own).len() > 1, "{:?}", origins(&own));
    }

    #[test]
    fn override_obeys_https_or_loopback() {
        let github = find_preset("github").unwrap();
        for ok in ["http://localhost:1", "http://[::1]:2", "http://127.9.9.9"] {
            github
                .resolve(&BTreeMap::new(), Some(ok))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://10.1.2.3",
            "http://example.com",
            "file:///etc/passwd",
            "https://u:p@x.test",
        ] {
            let err = github.resolve(&BTreeMap::new(), Some(bad)).unwrap_err();
            assert!(
                matches!(err, ServiceError::InvalidUrl { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("base URL override"), "{err}");
        }
    }

    #[test]
    fn bad_override_is_reported_before_missing_params() {
        let jira = find_preset("jira").unwrap();
        let err = jira
            .resolve(&BTreeMap::new(), Some("http://10.0.0.1"))
            .unwrap_err();
        assert!(matches!(err, ServiceError::InvalidUrl { .. }), "{err}");
        let e = jira
            .resolve(&params(&[("site", "acme")]), Some("http://localhost:9"))
            .unwrap();
        assert_eq!(origins(&e), ["http://localhost:9"]);
    }

    #[test]
    fn whole_url_params() {
        let hook = find_preset("webhook").unwrap();
        let url = "https://hooks.example.com/in/SECRET123";
        let e = hook.resolve(&params(&[("url", url)]), None).unwrap();
        assert_eq!(e.base_url.as_str(), url);
        assert_eq!(origins(&e), ["https://hooks.example.com:443"]);
        for bad in [
            "http://hooks.example.com/SECRET123",
            "not a url SECRET123",
            "https://x.test/#SECRET123",
        ] {
            let err = hook.resolve(&params(&[("url", bad)]), None).unwrap_err();
            assert!(
                matches!(err, ServiceError::InvalidParamValue { .. }),
                "{bad}: {err}"
            );
            assert!(
                !err.to_string().contains("SECRET123"),
                "secret leaked: {err}"
            );
        }
        hook.resolve(&params(&[("url", "http://127.0.0.1:9/hook")]), None)
            .unwrap();
    }

    #[test]
    fn whole_url_must_stay_within_allowed_origins() {
        let slack = find_preset("slack-webhook").unwrap();
        let ok = slack
            .resolve(
                &params(&[("url", "https://hooks.slack.com/services/T/B/X")]),
                None,
            )
            .unwrap();
        assert_eq!(origins(&ok), ["https://hooks.slack.com:443"]);
        let err = slack
            .resolve(
                &params(&[("url", "https://evil.test/services/SECRET")]),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains("outside allowed_origins"), "{err}");
        assert!(!err.to_string().contains("SECRET"), "secret leaked: {err}");
    }

    #[test]
    fn the_origin_of_a_template_is_decided_by_its_authority() {
        let gitlab = find_preset("gitlab").unwrap();
        let ms = find_preset("microsoft").unwrap();
        for (def, template, part, names) in [
            (
                &gitlab,
                "https://{host}/oauth/token",
                "https://{host}",
                vec!["host"],
            ),
            (
                &ms,
                "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
                "https://login.microsoftonline.com",
                vec![],
            ),
            (
                &gitlab,
                "https://{host}.{host}:8443?x={host}",
                "https://{host}.{host}:8443",
                vec!["host"],
            ),
            (&gitlab, "{host}", "{host}", vec!["host"]),
        ] {
            assert_eq!(
                def.origin_template(template).unwrap(),
                (part, names),
                "{template}"
            );
        }
    }
}
