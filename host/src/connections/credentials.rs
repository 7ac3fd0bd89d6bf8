//! The credential material of one connection: sealed as one blob per connection,
//! opened only by the gateway (to inject; it keeps no refresh token) and the OAuth module
//! (to refresh).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::secrets::{SealError, Sealer, Secret};

/// Decrypted credentials. The gateway keeps those of each connection in use in memory,
/// without the refresh token ([`Credentials::without_refresh_token`]); the full set lives
/// only for a refresh or an admin action.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    /// Secret param values by param name.
    pub params: BTreeMap<String, Secret>,
    /// OAuth tokens, for OAuth services.
    pub tokens: Option<Tokens>,
}

impl Credentials {
    /// These credentials less the refresh token: what injecting needs, and all a
    /// long-lived copy should hold (a refresh token outlives any access token).
    pub fn without_refresh_token(&self) -> Self {
        let mut c = self.clone();
        if let Some(t) = &mut c.tokens {
            t.refresh = None;
        }
        c
    }
}

/// OAuth 2.0 tokens of a connection.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The access token.
    pub access: Secret,
    /// The refresh token, when the provider issued one.
    pub refresh: Option<Secret>,
    /// Unix ms when the access token expires, if the provider said.
    pub expires_at: Option<i64>,
}

/// The wire form inside the sealed blob. Lives only in `Zeroizing` buffers.
#[derive(Serialize, Deserialize, Default)]
struct Payload {
    params: BTreeMap<String, String>,
    access: Option<String>,
    refresh: Option<String>,
    expires_at: Option<i64>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for v in self.params.values_mut() {
            v.zeroize();
        }
        self.access.zeroize();
        self.refresh.zeroize();
    }
}

/// The associated data binding a blob to its connection row.
pub fn seal_context(connection: &str) -> String {
    format!("keyhole:connection:{connection}")
}

impl Credentials {
    /// Whether there is nothing to seal.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty() && self.tokens.is_none()
    }

    /// Seal for storage in the row of `connection`.
    pub fn seal(&self, sealer: &Sealer, connection: &str) -> Vec<u8> {
        let payload = Payload {
            params: self
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect(),
            access: self.tokens.as_ref().map(|t| t.access.expose().to_string()),
            refresh: self
                .tokens
                .as_ref()
                .and_then(|t| t.refresh.as_ref().map(|r| r.expose().to_string())),
            expires_at: self.tokens.as_ref().and_then(|t| t.expires_at),
        };
        let json =
            Zeroizing::new(serde_json::to_vec(&payload).expect("credential payload serializes"));
        sealer.seal(&json, &seal_context(connection))
    }

    /// Open a blob sealed by [`Credentials::seal`] for `connection`.
    pub fn open(sealer: &Sealer, connection: &str, blob: &[u8]) -> Result<Self, SealError> {
        let json = sealer.open(blob, &seal_context(connection))?;
        let mut payload: Payload =
            serde_json::from_slice(&json).map_err(|_| SealError::Corrupt {
                context: seal_context(connection),
            })?;
        let params = std::mem::take(&mut payload.params)
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect();
        let tokens = payload.access.take().map(|access| Tokens {
            access: Secret::new(access),
            refresh: payload.refresh.take().map(Secret::new),
            expires_at: payload.expires_at,
        });
        Ok(Self { params, tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::MasterKey;

    #[test]
    fn seal_round_trip_is_bound_to_the_connection() {
        let sealer = Sealer::new(&MasterKey::from_bytes([1; 32]));
        let mut c = Credentials::default();
        c.params
            .insert("api_key".into(), Secret::new("sk-live-123456"));
        c.tokens = Some(Tokens {
            access: Secret::new("at-1"),
            refresh: Some(Secret::new("rt-1")),
            expires_at: Some(5),
        });
        let blob = c.seal(&sealer, "a");
        let back = Credentials::open(&sealer, "a", &blob).unwrap();
        assert_eq!(back.params["api_key"].expose(), "sk-live-123456");
        // The long-lived copy keeps everything but the refresh token.
        let kept = back.without_refresh_token();
        assert_eq!(kept.params["api_key"].expose(), "sk-live-123456");
        let kept = kept.tokens.unwrap();
        assert_eq!((kept.access.expose(), kept.expires_at), ("at-1", Some(5)));
        assert!(kept.refresh.is_none());
        let t = back.tokens.unwrap();
        assert_eq!(
            (t.access.expose(), t.refresh.unwrap().expose(), t.expires_at),
            ("at-1", "rt-1", Some(5))
        );
        assert!(Credentials::open(&sealer, "b", &blob).is_err());
    }
}
