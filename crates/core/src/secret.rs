//! API token secrets: 256 random bits behind a recognisable prefix, kept only as SHA-256.
//!
//! A plain hash suffices (no password-hashing function): the secret has 256 bits of entropy,
//! so the stored hash cannot be guessed back, and lookups stay one indexed equality match.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix secret scanners and humans recognise an airlock token by.
pub const TOKEN_PREFIX: &str = "alk_";

/// A bearer secret in memory. It never prints: `Debug` and `Display` show only the prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        Self(format!("{TOKEN_PREFIX}{hex}"))
    }

    /// Wraps a presented secret; `None` if it cannot be one of ours.
    pub fn from_presented(text: &str) -> Option<Self> {
        let hex = text.strip_prefix(TOKEN_PREFIX)?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| Self(text.to_owned()))
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The secret itself, for the one place that shows it: the response that issues it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({TOKEN_PREFIX}…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_back_and_differ() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a, b);
        assert_eq!(Secret::from_presented(a.expose()), Some(a.clone()));
        assert_ne!(a.hash(), b.hash());
        assert!(!format!("{a:?}").contains(&a.expose()[4..]));
    }

    #[test]
    fn presented_garbage_is_refused() {
        for bad in [
            "",
            "alk_",
            "alk_xyz",
            "Bearer alk_00",
            &format!("alk_{}", "A".repeat(64)),
        ] {
            assert!(Secret::from_presented(bad).is_none(), "{bad:?}");
        }
    }
}
