//! Opaque identifiers (`env_…`, `usr_…`, `tok_…`, `acr_…`) and checked names.
//!
//! Every identifier is a prefix and a ULID: unguessable (80 random bits), sortable by creation
//! time, and parsed, never trusted, when it comes from outside.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Invalid;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, random identifier.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, ulid::Ulid::new().to_string().to_ascii_lowercase()))
            }

            /// Accepts `<prefix><26 Crockford base32 characters>`, case-insensitively.
            pub fn parse(text: &str) -> Result<Self, Invalid> {
                let rest = text
                    .strip_prefix($prefix)
                    .ok_or_else(|| Invalid::new("id", format!("must start with `{}`", $prefix)))?;
                let ulid = ulid::Ulid::from_string(rest)
                    .map_err(|_| Invalid::new("id", "is not a valid identifier"))?;
                Ok(Self(format!("{}{}", $prefix, ulid.to_string().to_ascii_lowercase())))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(text: String) -> Result<Self, Invalid> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

prefixed_id!(
    /// Identifies one environment.
    EnvironmentId,
    "env_"
);
prefixed_id!(
    /// Identifies one user or service account.
    UserId,
    "usr_"
);
prefixed_id!(
    /// Identifies one API token (not its secret).
    TokenId,
    "tok_"
);
prefixed_id!(
    /// Identifies one access request, and the grant it becomes when approved.
    AccessRequestId,
    "acr_"
);
prefixed_id!(
    /// Identifies one session: a shell, a streamed command, a port forward or a copy.
    SessionId,
    "ses_"
);

/// A DNS-label-like name: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
/// Used for environment names (also the sandbox's hostname), user names and image names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, Invalid> {
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if text.is_empty() || text.len() > 63 {
            return Err(Invalid::new(field, "must be 1 to 63 characters long"));
        }
        if !text.chars().all(valid_char) {
            return Err(Invalid::new(field, "may contain only a-z, 0-9 and '-'"));
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(Invalid::new(field, "must not start or end with '-'"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Name {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Self, Invalid> {
        Self::parse("name", &text)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(input: &str, valid: bool) {
        assert_eq!(Name::parse("name", input).is_ok(), valid, "{input:?}");
    }

    #[test]
    fn names() {
        check_name("a", true);
        check_name("web-1", true);
        check_name(&"a".repeat(63), true);
        check_name(&"a".repeat(64), false);
        check_name("", false);
        check_name("-a", false);
        check_name("a-", false);
        check_name("A", false);
        check_name("a_b", false);
        check_name("a/b", false);
        check_name("../x", false);
        check_name("é", false);
    }

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = EnvironmentId::generate();
        assert_eq!(EnvironmentId::parse(id.as_str()).unwrap(), id);
        assert_eq!(
            EnvironmentId::parse(&id.as_str().to_ascii_uppercase().replace("ENV_", "env_"))
                .unwrap(),
            id
        );
        for bad in [
            "",
            "env_",
            "env_123",
            "usr_01hzzzzzzzzzzzzzzzzzzzzzzz",
            "env_../../etc",
        ] {
            assert!(EnvironmentId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(UserId::parse(id.as_str()).is_err());
    }
}
