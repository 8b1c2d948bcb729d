//! The closed set of things a caller can ask airlock to do, and what each gives back.
//!
//! Handlers translate requests into an [`Action`]; [`crate::Engine::perform`] authorizes,
//! executes and audits it in one place. Inputs here are parsed (ids, names) but not yet checked
//! against the operator's limits; the engine does that.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::{AccessProfile, AccessRequest, AccessState, SecretMount};
use crate::audit::ChainedEvent;
use crate::ids::{AccessRequestId, EnvironmentId, Name, SessionId, TokenId, UserId};
use crate::model::{
    Environment, ExecOutput, NetworkMode, Party, Principal, Quota, Role, Scope, Team, TokenRecord,
    Usage, User,
};
use crate::ports::{Connection, Reader};
use crate::secret::Secret;
use crate::session::{LiveSession, Session, SessionKind, TerminalSize};

#[derive(Debug)]
pub enum Action {
    CreateEnvironment {
        request: NewEnvironment,
        idempotency_key: Option<String>,
    },
    ListEnvironments(ListEnvironments),
    GetEnvironment(EnvironmentId),
    StopEnvironment(EnvironmentId),
    StartEnvironment(EnvironmentId),
    DeleteEnvironment(EnvironmentId),
    Exec {
        environment: EnvironmentId,
        command: Command,
    },
    /// Pushes the expiry to now + `ttl_seconds`, within the hard maximum.
    ExtendEnvironment {
        environment: EnvironmentId,
        ttl_seconds: u64,
    },
    /// Renews the lease of an agent at work: counts as activity, so the idle timeout restarts.
    RenewLease(EnvironmentId),
    CreateUser(NewUser),
    ListUsers,
    UpdateUser {
        id: UserId,
        roles: Option<Vec<Role>>,
        teams: Option<Vec<Name>>,
    },
    CreateTeam {
        name: Name,
        quota: Quota,
    },
    ListTeams,
    SetQuota {
        team: Name,
        quota: Quota,
    },
    CreateToken(NewToken),
    /// The tokens of one user (the caller's own when `None`).
    ListTokens(Option<UserId>),
    RevokeToken(TokenId),
    CreateProfile(NewProfile),
    ListProfiles,
    GetProfile(Name),
    RequestAccess(NewAccessRequest),
    ListAccessRequests(ListAccessRequests),
    GetAccessRequest(AccessRequestId),
    ApproveAccess(AccessRequestId),
    DenyAccess {
        id: AccessRequestId,
        reason: Option<String>,
    },
    RevokeAccess {
        id: AccessRequestId,
        reason: Option<String>,
    },
    WhoAmI,
    /// Opens a shell, a streamed command or a port forward in an environment.
    StartSession(NewSession),
    ListSessions(ListSessions),
    GetSession(SessionId),
    /// A terminal session's recording (the server reads the file).
    GetRecording(SessionId),
    /// Writes a file into a running environment.
    CopyIn {
        environment: EnvironmentId,
        path: String,
        mode: u32,
        contents: Contents,
    },
    /// Reads a file out of a running environment.
    CopyOut {
        environment: EnvironmentId,
        path: String,
    },
    /// One HTTP request through the API to a port inside an environment.
    Proxy {
        environment: EnvironmentId,
        port: u16,
        /// Its method and path, for the trail.
        request: String,
    },
    /// How many environments and access requests are in each state, for `/metrics`.
    ReadMetrics,
    /// Read the audit trail (auditors and admins).
    ListAudit(ListAudit),
}

impl Action {
    /// The stable name used in audit records and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::CreateEnvironment { .. } => "environment.create",
            Action::ListEnvironments(_) => "environment.list",
            Action::GetEnvironment(_) => "environment.get",
            Action::StopEnvironment(_) => "environment.stop",
            Action::StartEnvironment(_) => "environment.start",
            Action::DeleteEnvironment(_) => "environment.delete",
            Action::Exec { .. } => "environment.exec",
            Action::ExtendEnvironment { .. } => "environment.extend",
            Action::RenewLease(_) => "environment.lease",
            Action::CreateUser(_) => "user.create",
            Action::ListUsers => "user.list",
            Action::UpdateUser { .. } => "user.update",
            Action::CreateTeam { .. } => "team.create",
            Action::ListTeams => "team.list",
            Action::SetQuota { .. } => "team.update",
            Action::CreateToken(_) => "token.create",
            Action::ListTokens(_) => "token.list",
            Action::RevokeToken(_) => "token.revoke",
            Action::CreateProfile(_) => "profile.create",
            Action::ListProfiles => "profile.list",
            Action::GetProfile(_) => "profile.get",
            Action::RequestAccess(_) => "access.request",
            Action::ListAccessRequests(_) => "access.list",
            Action::GetAccessRequest(_) => "access.get",
            Action::ApproveAccess(_) => "access.approve",
            Action::DenyAccess { .. } => "access.deny",
            Action::RevokeAccess { .. } => "access.revoke",
            Action::WhoAmI => "whoami",
            Action::StartSession(_) => "session.start",
            Action::ListSessions(_) => "session.list",
            Action::GetSession(_) => "session.get",
            Action::GetRecording(_) => "session.recording",
            Action::CopyIn { .. } => "environment.copy_in",
            Action::CopyOut { .. } => "environment.copy_out",
            Action::Proxy { .. } => "environment.proxy",
            Action::ReadMetrics => "metrics.read",
            Action::ListAudit(_) => "audit.list",
        }
    }

    /// Whether the action changes who may do what (approvals and revocations, tokens, users
    /// and their roles, teams and quotas, access profiles): its audit record is written
    /// before anything changes, and without it nothing does.
    pub fn is_privileged(&self) -> bool {
        matches!(
            self,
            Action::ApproveAccess(_)
                | Action::DenyAccess { .. }
                | Action::RevokeAccess { .. }
                | Action::CreateToken(_)
                | Action::RevokeToken(_)
                | Action::CreateUser(_)
                | Action::UpdateUser { .. }
                | Action::CreateTeam { .. }
                | Action::SetQuota { .. }
                | Action::CreateProfile(_)
        )
    }

    /// The id of what the action is about, when it names one.
    pub fn target(&self) -> Option<String> {
        match self {
            Action::GetEnvironment(id)
            | Action::StopEnvironment(id)
            | Action::StartEnvironment(id)
            | Action::DeleteEnvironment(id)
            | Action::RenewLease(id)
            | Action::ExtendEnvironment {
                environment: id, ..
            }
            | Action::Exec {
                environment: id, ..
            }
            | Action::StartSession(NewSession {
                environment: id, ..
            })
            | Action::CopyIn {
                environment: id, ..
            }
            | Action::CopyOut {
                environment: id, ..
            }
            | Action::Proxy {
                environment: id, ..
            } => Some(id.to_string()),
            Action::GetSession(id) | Action::GetRecording(id) => Some(id.to_string()),
            Action::RevokeToken(id) => Some(id.to_string()),
            Action::CreateToken(NewToken {
                user: Some(user), ..
            })
            | Action::ListTokens(Some(user))
            | Action::UpdateUser { id: user, .. } => Some(user.to_string()),
            Action::CreateTeam { name, .. } | Action::SetQuota { team: name, .. } => {
                Some(name.to_string())
            }
            Action::GetProfile(name) => Some(name.to_string()),
            Action::RequestAccess(request) => Some(request.profile.to_string()),
            Action::GetAccessRequest(id)
            | Action::ApproveAccess(id)
            | Action::DenyAccess { id, .. }
            | Action::RevokeAccess { id, .. } => Some(id.to_string()),
            _ => None,
        }
    }
}

/// A create request; its serialized form is the idempotency fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewEnvironment {
    pub name: Option<Name>,
    pub image: Option<Name>,
    pub memory_mib: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub disk_mib: Option<u64>,
    pub network: Option<NetworkMode>,
    pub ttl_seconds: Option<u64>,
    /// Stopped after this long without activity; `Some(0)` never; the server's default when
    /// absent.
    pub idle_timeout_seconds: Option<u64>,
    /// The team to count it against; the caller's only team when absent.
    pub team: Option<Name>,
    /// Open it under this access grant (the caller's own, active).
    pub access_request: Option<AccessRequestId>,
}

#[derive(Debug, Clone, Default)]
pub struct ListEnvironments {
    /// Only this name (a name is unique per owner among live environments).
    pub name: Option<Name>,
    /// Admins only: every owner's environments instead of their own.
    pub all_owners: bool,
    pub after: Option<EnvironmentId>,
    pub limit: Option<u32>,
}

/// A command as asked for; checked by the engine into an [`crate::model::ExecSpec`].
#[derive(Debug, Clone, Default)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub stdin: Vec<u8>,
    pub timeout_seconds: Option<u64>,
}

/// A session to open.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub environment: EnvironmentId,
    pub kind: SessionKind,
    /// The command; empty on a terminal for a login shell.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// The terminal's first size (terminal sessions).
    pub size: Option<TerminalSize>,
    /// The port to reach (port forwards).
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct ListSessions {
    pub environment: Option<EnvironmentId>,
    /// Everyone's sessions (auditors, admins) instead of the caller's own.
    pub all: bool,
    pub after: Option<SessionId>,
    pub limit: Option<u32>,
}

/// Bytes streamed in or out; opaque in debug output.
pub struct Contents(pub Reader);

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Contents(..)")
    }
}

/// A connection into an environment; opaque in debug output.
pub struct Conn(pub Box<dyn Connection>);

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Conn(..)")
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: Name,
    pub roles: Vec<Role>,
    pub teams: Vec<Name>,
}

#[derive(Debug, Clone)]
pub struct NewProfile {
    pub name: Name,
    pub description: Option<String>,
    pub max_duration_seconds: u64,
    pub approvals_required: u32,
    pub secrets: Vec<SecretMount>,
    pub network: Option<NetworkMode>,
    pub requesters: Option<Vec<Party>>,
    pub approvers: Option<Vec<Party>>,
}

#[derive(Debug, Clone)]
pub struct NewAccessRequest {
    pub profile: Name,
    pub reason: String,
    pub duration_seconds: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ListAccessRequests {
    /// Everyone's requests (approvers, auditors, admins) instead of the caller's own.
    pub all: bool,
    pub state: Option<AccessState>,
    pub after: Option<AccessRequestId>,
    pub limit: Option<u32>,
}

/// Audit events in chain order, filtered; every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct ListAudit {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only events after this index (the cursor).
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub user: Option<UserId>,
    pub scopes: Option<Vec<Scope>>,
    pub expires_in_seconds: Option<u64>,
    pub description: Option<String>,
    /// A rate limit of its own, on top of its user's.
    pub rate_limit: Option<crate::rate_limit::Rate>,
}

/// What an action gives back.
#[derive(Debug)]
pub enum Reply {
    Environment {
        environment: Environment,
        replayed: bool,
        /// What the sandbox uses now; only when one environment is read and it runs.
        usage: Option<Usage>,
    },
    Environments {
        items: Vec<Environment>,
        next: Option<EnvironmentId>,
    },
    Exec(ExecOutput),
    User(User),
    Users(Vec<User>),
    Team(Team),
    Teams(Vec<Team>),
    Tokens(Vec<TokenRecord>),
    Profile(AccessProfile),
    Profiles(Vec<AccessProfile>),
    AccessRequest(AccessRequest),
    AccessRequests {
        items: Vec<AccessRequest>,
        next: Option<AccessRequestId>,
    },
    Token {
        record: TokenRecord,
        secret: Secret,
    },
    WhoAmI(Principal),
    /// A session just opened: its record and its streams.
    Session(LiveSession),
    Sessions {
        items: Vec<Session>,
        next: Option<SessionId>,
    },
    SessionRecord(Session),
    /// A file written into an environment: its size.
    Copied(u64),
    /// A file read out of an environment: its size and bytes.
    File {
        size: u64,
        contents: Contents,
    },
    /// A connection to a port inside an environment.
    Connection(Conn),
    Metrics(StateCounts),
    Audit {
        items: Vec<ChainedEvent>,
        /// The index to continue after, when more may follow.
        next: Option<u64>,
    },
    Done,
}

/// How many environments and access requests are in each state now (every state listed,
/// zero included): the gauges of `/metrics`. Approved requests are the active grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub environments: Vec<(crate::model::EnvState, u64)>,
    pub access_requests: Vec<(AccessState, u64)>,
}
