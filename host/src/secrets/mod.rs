//! Secret values and the AEAD that seals them before they touch disk.
//!
//! Every credential keyhole holds (passwords, API keys, tokens, client secrets) lives
//! in a [`Secret`] while in memory and in a sealed blob (XChaCha20-Poly1305 under the
//! master key) while on disk. `Secret` has no `Display` of its value, no `PartialEq`
//! and no `Serialize`: the value only comes out through [`Secret::expose`], whose few
//! call sites are the places credentials are injected or sealed.

mod seal;

pub use seal::{KeySource, MASTER_KEY_ENV, MasterKey, SealError, Sealer};

use std::fmt;

/// A secret string. `Debug` prints `Secret([redacted])` and `Display` prints `[redacted]`.
///
/// There is deliberately no `PartialEq` (timing side channels) and no `Serialize`
/// (a secret must be sealed, never serialised by accident).
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext value. Be careful: call this only to inject the credential into an
    /// outbound request, to seal it, or to scrub it from a response — never to log,
    /// print or hand it to a guest.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A masked rendering safe to show an admin: length only, never characters.
    pub fn masked(&self) -> String {
        if self.0.is_empty() {
            "(empty)".to_string()
        } else {
            format!("•••••••• ({} chars)", self.0.chars().count())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Wipe so the value does not linger in freed heap memory.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret([redacted]))");
        assert!(!s.masked().contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
