//! The service catalog: what a third-party API looks like to keyhole (its URLs, the
//! origins a function may reach through it, how credentials are attached), as pure data.
//!
//! A [`ServiceDef`] is read from TOML, either one of the built-in [`presets`] written from
//! each provider's public API documentation, or a custom service added by an admin with
//! `keyhole services add --file service.toml`. Both use the same schema and the same
//! [`ServiceDef::validate`] rules. A connection pairs a service with the values of its
//! [`ParamDef`]s; [`ServiceDef::resolve`] turns those values into the concrete
//! [`Endpoint`] (base URL and allowed [`Origin`]s) the outbound client enforces.
//!
//! Invariants enforced here:
//! - every URL is `https`, except `http` to a loopback host (127.0.0.0/8, `::1`,
//!   `localhost`) for local testing, and carries no userinfo;
//! - every `{placeholder}` names a param of location `url`, and a value filled into part
//!   of a URL is limited to `[A-Za-z0-9._-]` so it cannot change the URL's host boundary,
//!   path or query;
//! - the base URL's origin is always among the allowed origins.
//!
//! This module does no I/O beyond parsing; the presets are compiled in.

mod presets;
mod resolve;
mod schema;
mod template;
mod validate;

pub use presets::{find_preset, presets};
pub use resolve::{Endpoint, Origin};
#[cfg(test)]
pub(crate) use schema::MINIMAL;
pub use schema::{
    AuthKind, GrantType, OAuth2Def, ParamDef, ParamLocation, ServiceDef, TokenAuthMethod,
    TokenLocation, TokenPlacement, VerifyDef,
};
pub use validate::FORBIDDEN_HEADERS;

/// Longest service or connection name, in characters.
pub const MAX_NAME_LEN: usize = 50;

/// Errors from parsing, validating and resolving service definitions.
///
/// Messages name the service and the field at fault and say what to change. They never
/// contain a param's value, since a `url` param may be a secret capability URL.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A service or connection name is outside the allowed alphabet.
    #[error(
        "invalid {kind} name \"{name}\": use 1-50 characters, a lowercase letter first, \
         then lowercase letters, digits or hyphens"
    )]
    InvalidName {
        /// What was being named, e.g. "service" or "connection".
        kind: String,
        /// The rejected name.
        name: String,
    },
    /// The text is not TOML or does not match the schema.
    #[error("invalid service definition: {0}")]
    Parse(#[source] Box<toml::de::Error>),
    /// The definition could not be rendered as TOML.
    #[error("service \"{service}\": could not render as toml: {source}")]
    Serialize {
        /// Service name.
        service: String,
        /// Underlying serializer error.
        #[source]
        source: toml::ser::Error,
    },
    /// The definition parsed but breaks a rule.
    #[error("service \"{service}\": {field} {message}")]
    Invalid {
        /// Service name.
        service: String,
        /// The offending field, e.g. `base_url` or `param "api_key"`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A URL template needs a `url` param that has neither a value nor a default.
    #[error("service \"{service}\": url param \"{param}\" has no value; supply it when connecting")]
    MissingParam {
        /// Service name.
        service: String,
        /// The param without a value.
        param: String,
    },
    /// A `url` param's value is not acceptable.
    #[error("service \"{service}\": value of param \"{param}\" {message}")]
    InvalidParamValue {
        /// Service name.
        service: String,
        /// The param whose value was rejected.
        param: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A resolved or overriding URL is malformed or not allowed.
    #[error("service \"{service}\": {field} {message}")]
    InvalidUrl {
        /// Service name.
        service: String,
        /// Which URL, e.g. `base_url` or `base URL override "http://10.0.0.1"`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Checks a service or connection name against the name alphabet, `^[a-z][a-z0-9-]{0,49}$`:
/// 1 to 50 characters, a lowercase ASCII letter first, then lowercase ASCII letters,
/// digits or hyphens. `kind` names what is being named in the error ("service",
/// "connection").
pub fn validate_name(kind: &str, name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= MAX_NAME_LEN;
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidName {
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_alphabet() {
        for good in ["a", "github", "slack-webhook", "a1-2", &"a".repeat(50)] {
            validate_name("service", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "1abc",
            "-abc",
            "Abc",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(51),
        ] {
            assert!(validate_name("service", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn name_error_says_what_to_do() {
        let err = validate_name("connection", "My_Conn").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid connection name \"My_Conn\": use 1-50 characters, a lowercase letter \
             first, then lowercase letters, digits or hyphens"
        );
    }
}
