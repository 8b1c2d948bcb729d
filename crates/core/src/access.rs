//! Temporary production access: profiles (what a grant gives), requests and their life
//! (`pending → approved → expired | revoked`, or `denied`, or `lapsed`), and the secrets a
//! grant delivers into an environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Invalid;
use crate::ids::{AccessRequestId, Name, UserId};
use crate::model::{NetworkMode, Party, Role};

/// Where a secret's value is read on the server, each time an environment is opened or a
/// command runs under a grant. The value itself is never stored nor returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// A secret's value in memory. It never prints, and is wiped when dropped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({} bytes)", self.0.len())
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        for byte in self.0.iter_mut() {
            // SAFETY: a valid, aligned, exclusive reference; volatile so the wipe is kept.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// A file a sandbox receives when it is made (a grant's secrets), owned by root, mode 0400.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxFile {
    /// Absolute, normalized, checked by [`SecretMount::parse`].
    pub path: String,
    pub contents: SecretValue,
}

/// One secret of a profile and where it appears inside the environment: as a file, as an
/// environment variable of every command, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub env: Option<String>,
    pub file: Option<String>,
    pub source: SecretSource,
}

impl SecretMount {
    /// Checks the shape (names, paths); whether the source is readable is checked on the
    /// server by the engine, which can read it.
    pub fn parse(
        env: Option<String>,
        file: Option<String>,
        from_file: Option<String>,
        from_env: Option<String>,
    ) -> Result<Self, Invalid> {
        if env.is_none() && file.is_none() {
            return Err(Invalid::new(
                "secrets",
                "each secret needs `env`, `file` or both",
            ));
        }
        if let Some(name) = &env
            && !is_env_name(name)
        {
            return Err(Invalid::new(
                "secrets",
                format!("{name:?} is not an environment variable name"),
            ));
        }
        if let Some(path) = &file {
            check_inside_path(path)?;
        }
        let source = match (from_file, from_env) {
            (Some(path), None) if path.starts_with('/') && !path.contains('\0') => {
                SecretSource::File(PathBuf::from(path))
            }
            (None, Some(name)) if is_env_name(&name) => SecretSource::Env(name),
            _ => {
                return Err(Invalid::new(
                    "secrets",
                    "each secret needs exactly one of `from_file` (an absolute path on the \
                     server) or `from_env` (a variable of the server)",
                ));
            }
        };
        Ok(Self { env, file, source })
    }
}

/// An absolute, normalized path inside an environment, not under the system's own trees.
fn check_inside_path(path: &str) -> Result<(), Invalid> {
    let invalid = |why: &str| Invalid::new("secrets", format!("file {path:?} {why}"));
    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
        return Err(invalid("must be an absolute path"));
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts
        .iter()
        .any(|part| part.is_empty() || *part == "." || *part == "..")
    {
        return Err(invalid("must be normalized (no empty, `.` or `..` parts)"));
    }
    if matches!(
        parts[0],
        "proc" | "sys" | "dev" | "usr" | ".airlock" | "bin" | "sbin" | "lib" | "lib64"
    ) {
        return Err(invalid("must not be under a system directory"));
    }
    Ok(())
}

pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What an environment opened under a grant of this profile receives, for how long at most,
/// who may ask and who must agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessProfile {
    pub name: Name,
    pub description: Option<String>,
    pub max_duration: Duration,
    /// Distinct approvers needed, never counting the requester.
    pub approvals_required: u32,
    pub secrets: Vec<SecretMount>,
    /// The network mode of environments opened with the profile.
    pub network: NetworkMode,
    pub requesters: Vec<Party>,
    pub approvers: Vec<Party>,
    pub created_at: DateTime<Utc>,
}

impl AccessProfile {
    /// Approvers when a profile names none: everyone with the approver role.
    pub fn default_approvers() -> Vec<Party> {
        vec![Party::Role(Role::Approver)]
    }

    /// Requesters when a profile names none: developers.
    pub fn default_requesters() -> Vec<Party> {
        vec![Party::Role(Role::Developer)]
    }
}

/// Where a request is in its life. Only `Approved` is an active grant, and only until its
/// `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessState {
    Pending,
    Approved,
    Denied,
    /// Not decided within the request TTL.
    Lapsed,
    /// The grant ran its time.
    Expired,
    /// The grant was ended early.
    Revoked,
}

impl AccessState {
    pub const ALL: [AccessState; 6] = [
        AccessState::Pending,
        AccessState::Approved,
        AccessState::Denied,
        AccessState::Lapsed,
        AccessState::Expired,
        AccessState::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AccessState::Pending => "pending",
            AccessState::Approved => "approved",
            AccessState::Denied => "denied",
            AccessState::Lapsed => "lapsed",
            AccessState::Expired => "expired",
            AccessState::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// `pending → approved | denied | lapsed`, `approved → expired | revoked`; the rest are
    /// final.
    pub fn can_become(self, next: AccessState) -> bool {
        use AccessState::*;
        matches!(
            (self, next),
            (Pending, Approved | Denied | Lapsed) | (Approved, Expired | Revoked)
        )
    }

    pub fn is_final(self) -> bool {
        !matches!(self, AccessState::Pending | AccessState::Approved)
    }
}

impl fmt::Display for AccessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub approver: UserId,
    pub at: DateTime<Utc>,
}

/// A request for production access and, once approved, the grant. The profile's rules
/// (approvals needed, network) are copied at request time, so editing a profile never
/// changes a request already made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub id: AccessRequestId,
    pub profile: Name,
    pub requester: UserId,
    pub reason: String,
    /// How long the grant lasts from approval: min(asked, the profile's maximum).
    pub duration: Duration,
    pub approvals_required: u32,
    pub state: AccessState,
    pub created_at: DateTime<Utc>,
    /// A pending request lapses at this time.
    pub decide_by: DateTime<Utc>,
    pub approvals: Vec<Approval>,
    /// When the grant began (the deciding approval).
    pub granted_at: Option<DateTime<Utc>>,
    /// When the grant ends by itself.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was denied, lapsed, expired or revoked; by whom (a user id or `system`) and why.
    pub ended_at: Option<DateTime<Utc>>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
}

impl AccessRequest {
    /// Whether the grant is in force at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.state == AccessState::Approved && self.expires_at.is_some_and(|end| now < end)
    }
}

/// How an approval changed a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Approved {
    /// Counted; more approvals are needed.
    Counted(AccessRequest),
    /// This approver had approved already: nothing changed.
    AlreadyCounted(AccessRequest),
    /// The last approval needed: the grant began.
    Granted(AccessRequest),
    /// The request is no longer pending.
    NotPending(AccessRequest),
}

/// Reasons a request is checked for at creation.
pub fn check_reason(reason: &str) -> Result<(), Invalid> {
    let reason = reason.trim();
    if reason.len() < 3 || reason.len() > 1000 {
        return Err(Invalid::new("reason", "must be 3 to 1000 characters"));
    }
    if reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Invalid::new(
            "reason",
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_states_follow_the_design() {
        use AccessState::*;
        let allowed = [
            (Pending, Approved),
            (Pending, Denied),
            (Pending, Lapsed),
            (Approved, Expired),
            (Approved, Revoked),
        ];
        for from in AccessState::ALL {
            for to in AccessState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            assert_eq!(AccessState::parse(from.as_str()), Some(from));
        }
    }

    #[test]
    fn secret_mounts_are_checked() {
        let ok = |env: Option<&str>, file: Option<&str>, from_file: Option<&str>| {
            SecretMount::parse(
                env.map(Into::into),
                file.map(Into::into),
                from_file.map(Into::into),
                None,
            )
        };
        assert!(ok(Some("DB_PASSWORD"), None, Some("/etc/airlock/db")).is_ok());
        assert!(ok(None, Some("/run/secrets/db"), Some("/etc/airlock/db")).is_ok());
        for (env, file, from_file) in [
            (None, None, Some("/x")),
            (Some("1BAD"), None, Some("/x")),
            (Some("A-B"), None, Some("/x")),
            (None, Some("relative"), Some("/x")),
            (None, Some("/run/../etc/passwd"), Some("/x")),
            (None, Some("/run//x"), Some("/x")),
            (None, Some("/proc/self/x"), Some("/x")),
            (None, Some("/usr/bin/sh"), Some("/x")),
            (Some("A"), None, Some("relative")),
            (Some("A"), None, None),
        ] {
            assert!(
                ok(env, file, from_file).is_err(),
                "{env:?} {file:?} {from_file:?}"
            );
        }
        assert!(
            SecretMount::parse(Some("A".into()), None, Some("/x".into()), Some("B".into()))
                .is_err()
        );
    }
}
