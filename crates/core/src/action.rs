//! The closed set of things a caller can ask airlock to do, and what each gives back.
//!
//! Handlers translate requests into an [`Action`]; [`crate::Engine::perform`] authorizes,
//! executes and audits it in one place. Inputs here are parsed (ids, names) but not yet checked
//! against the operator's limits; the engine does that.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ids::{EnvironmentId, Name, TokenId, UserId};
use crate::model::{
    Environment, ExecOutput, NetworkMode, Principal, Role, Scope, TokenRecord, Usage, User,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
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
    CreateUser(NewUser),
    CreateToken(NewToken),
    RevokeToken(TokenId),
    WhoAmI,
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
            Action::CreateUser(_) => "user.create",
            Action::CreateToken(_) => "token.create",
            Action::RevokeToken(_) => "token.revoke",
            Action::WhoAmI => "whoami",
        }
    }

    /// The id of what the action is about, when it names one.
    pub fn target(&self) -> Option<String> {
        match self {
            Action::GetEnvironment(id)
            | Action::StopEnvironment(id)
            | Action::StartEnvironment(id)
            | Action::DeleteEnvironment(id)
            | Action::Exec {
                environment: id, ..
            } => Some(id.to_string()),
            Action::RevokeToken(id) => Some(id.to_string()),
            Action::CreateToken(NewToken {
                user: Some(user), ..
            }) => Some(user.to_string()),
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

#[derive(Debug, Clone)]
pub struct NewUser {
    pub name: Name,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub user: Option<UserId>,
    pub scopes: Option<Vec<Scope>>,
    pub expires_in_seconds: Option<u64>,
    pub description: Option<String>,
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
    Token {
        record: TokenRecord,
        secret: Secret,
    },
    WhoAmI(Principal),
    Done,
}
