//! The domain's records: environments and their states, users, roles, scopes, tokens, commands.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Invalid;
use crate::ids::{AccessRequestId, EnvironmentId, Name, TokenId, UserId};

/// Limits of one sandbox, already checked against [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mib: u64,
    /// Thousandths of a CPU: 500 is half a CPU.
    pub millicpus: u64,
    pub pids: u64,
    /// Size of the writable layer; writes past it fail with ENOSPC inside the sandbox.
    pub disk_mib: u64,
}

/// How an environment reaches the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// A private link to the host, NAT to the outside; the host, other environments,
    /// link-local and private ranges stay unreachable.
    Egress,
}

impl NetworkMode {
    pub const ALL: [NetworkMode; 2] = [NetworkMode::None, NetworkMode::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Egress => "egress",
        }
    }

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| Invalid::new("network", "must be \"none\" or \"egress\""))
    }
}

/// What a running sandbox uses now, read from its cgroups and its writable layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Processes the kernel killed for exceeding the memory limit since the sandbox started.
    pub oom_kills: u64,
    pub cpu_nanoseconds: u64,
    /// Bytes used on the writable layer, when it is a filesystem of its own.
    pub disk_bytes: Option<u64>,
}

/// Where an environment is in its life. Transitions are checked by [`EnvState::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvState {
    Creating,
    Running,
    Stopped,
    Deleting,
    Deleted,
    Failed,
}

impl EnvState {
    pub const ALL: [EnvState; 6] = [
        EnvState::Creating,
        EnvState::Running,
        EnvState::Stopped,
        EnvState::Deleting,
        EnvState::Deleted,
        EnvState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvState::Creating => "creating",
            EnvState::Running => "running",
            EnvState::Stopped => "stopped",
            EnvState::Deleting => "deleting",
            EnvState::Deleted => "deleted",
            EnvState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// `creating → running ⇄ stopped → deleting → deleted`, and `failed` from any live state.
    pub fn can_become(self, next: EnvState) -> bool {
        use EnvState::*;
        matches!(
            (self, next),
            (Creating, Running)
                | (Running, Stopped)
                | (Stopped, Running)
                | (Creating | Running | Stopped | Failed, Deleting)
                | (Deleting, Deleted)
                | (Creating | Running | Stopped | Deleting, Failed)
        )
    }

    /// A state in which the environment may hold a sandbox on the host.
    pub fn holds_sandbox(self) -> bool {
        matches!(
            self,
            EnvState::Creating | EnvState::Running | EnvState::Stopped | EnvState::Deleting
        )
    }
}

impl fmt::Display for EnvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub id: EnvironmentId,
    pub name: Name,
    pub owner: UserId,
    pub image: Name,
    pub resources: Resources,
    pub network: NetworkMode,
    /// The team whose quota it counts against.
    pub team: Option<Name>,
    /// The access grant it was opened under; it is destroyed when the grant ends.
    pub access_request: Option<AccessRequestId>,
    pub state: EnvState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Deleted at this time (its TTL), unless extended within policy.
    pub expires_at: DateTime<Utc>,
    /// The last command, session, start, lease renewal or read of it.
    pub last_activity_at: DateTime<Utc>,
    /// Stopped (files kept) after this long without activity; never when `None`.
    pub idle_timeout: Option<Duration>,
    pub failure: Option<String>,
}

impl Environment {
    /// When it will be stopped for idleness if nothing happens before.
    pub fn idle_deadline(&self) -> Option<DateTime<Utc>> {
        let timeout = chrono::Duration::from_std(self.idle_timeout?).ok()?;
        Some(self.last_activity_at + timeout)
    }
}

/// What a principal is allowed to be, before scopes narrow it. What each role may do is
/// written as Cedar policies in [`crate::authz`], which an operator can extend or replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything but deciding access requests (that is for a profile's approvers).
    Admin,
    /// Decides access requests of the profiles that name it; sees all requests.
    Approver,
    /// Own environments and tokens; requests production access.
    Developer,
    /// Reads everything, changes nothing.
    Auditor,
    /// Reads own environments.
    Viewer,
    /// A CI job or agent: own environments and tokens, no production access.
    Ci,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Approver,
        Role::Developer,
        Role::Auditor,
        Role::Viewer,
        Role::Ci,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Developer => "developer",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
            Role::Ci => "ci",
        }
    }

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| Invalid::new("roles", format!("has unknown role {text:?}")))
    }
}

/// Someone an access profile names as allowed to request or to approve: everyone with a
/// role, every member of a team, or one user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Party {
    Role(Role),
    Team(Name),
    User(UserId),
}

impl Party {
    /// `role:<role>`, `team:<name>` or `user:<id>`.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, Invalid> {
        let invalid = || {
            Invalid::new(
                field,
                format!("has {text:?}; expected role:<role>, team:<name> or user:<id>"),
            )
        };
        let (kind, value) = text.split_once(':').ok_or_else(invalid)?;
        match kind {
            "role" => Role::parse(value).map(Party::Role).map_err(|_| invalid()),
            "team" => Name::parse(field, value).map(Party::Team),
            "user" => UserId::parse(value).map(Party::User).map_err(|_| invalid()),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Role(role) => write!(f, "role:{}", role.as_str()),
            Party::Team(team) => write!(f, "team:{team}"),
            Party::User(user) => write!(f, "user:{user}"),
        }
    }
}

/// How much a team's environments may hold together; `None` is unlimited. Counted over
/// live environments (not deleted or failed), checked atomically with each create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub max_environments: Option<u64>,
    pub max_memory_mib: Option<u64>,
    pub max_millicpus: Option<u64>,
}

/// A group of users that owns environments together and shares a quota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub name: Name,
    pub quota: Quota,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: Name,
    pub roles: Vec<Role>,
    pub teams: Vec<Name>,
    /// `<issuer> <subject>` for a user made from an OIDC token; its roles and teams follow
    /// the token's groups at each sign-in.
    pub external_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// What a token may be used for; a request needs the scope of its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    #[serde(rename = "access:request")]
    AccessRequest,
    #[serde(rename = "access:approve")]
    AccessApprove,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::AccessRequest,
        Scope::AccessApprove,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::AccessRequest => "access:request",
            Scope::AccessApprove => "access:approve",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| Invalid::new("scopes", format!("has unknown scope {text:?}")))
    }
}

/// A token as stored: the secret itself is never kept, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub user_id: UserId,
    pub secret_hash: [u8; 32],
    pub scopes: Vec<Scope>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the token last authenticated a request (kept to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The token's own rate limit, applied on top of its user's (it can only narrow it).
    #[serde(default)]
    pub rate_limit: Option<crate::rate_limit::Rate>,
}

/// How a principal proved who it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// One of airlock's API tokens.
    Token(TokenId),
    /// A JWT from the configured OIDC issuer.
    Oidc { subject: String },
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Token(id) => write!(f, "{id}"),
            Credential::Oidc { subject } => write!(f, "oidc:{subject}"),
        }
    }
}

/// Who is asking: a user (with its roles and teams), through one credential with its scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub user: User,
    pub credential: Credential,
    pub scopes: Vec<Scope>,
    /// The credential's own rate limit (a token's), checked besides the user's.
    pub rate_limit: Option<crate::rate_limit::Rate>,
}

impl Principal {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// A command to run in an environment, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// Bytes kept of each of stdout and stderr; the rest is read and dropped.
    pub output_limit: usize,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub timed_out: bool,
    /// The kernel killed a process of the sandbox for memory while the command ran.
    pub oom_killed: bool,
    pub duration: Duration,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub time: DateTime<Utc>,
    pub request_id: String,
    /// The user id, or `anonymous`.
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    /// `ok`, or the error's outcome word (`forbidden`, `not_found`, …).
    pub outcome: String,
    pub source: Option<String>,
    pub detail: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_follows_the_design() {
        use EnvState::*;
        let allowed = [
            (Creating, Running),
            (Running, Stopped),
            (Stopped, Running),
            (Creating, Deleting),
            (Running, Deleting),
            (Stopped, Deleting),
            (Failed, Deleting),
            (Deleting, Deleted),
            (Creating, Failed),
            (Running, Failed),
            (Stopped, Failed),
            (Deleting, Failed),
        ];
        for from in EnvState::ALL {
            for to in EnvState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn states_parse_back() {
        for state in EnvState::ALL {
            assert_eq!(EnvState::parse(state.as_str()), Some(state));
        }
        assert_eq!(EnvState::parse("Running"), None);
    }
}
