//! The engine: authorizes, executes and audits every [`Action`], and reconciles records with
//! the sandboxes that really exist. Nothing changes state on a path that skips it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::action::{Action, Reply};
use crate::error::Error;
use crate::ids::{EnvironmentId, Name, TokenId, UserId};
use crate::model::{AuditEvent, EnvState, Principal, Role, Scope, TokenRecord, User};
use crate::policy::{self, Limits};
use crate::ports::{Clock, Runtime, Store};
use crate::secret::Secret;

/// Where a request came from, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: String,
    pub source: Option<String>,
}

const LOCK_STRIPES: usize = 4096;

mod environments;
mod identity;
mod reconcile;

pub use reconcile::ReconcileReport;

pub struct Engine {
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// Serializes lifecycle changes of one environment (striped: bounded memory).
    lifecycle_locks: Vec<Arc<Mutex<()>>>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            runtime,
            clock,
            limits,
            lifecycle_locks: (0..LOCK_STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Turns a presented bearer secret into a principal, or `Unauthenticated`.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, Error> {
        let secret = Secret::from_presented(presented).ok_or(Error::Unauthenticated)?;
        let (token, user) = self
            .store
            .find_token(&secret.hash())
            .await?
            .ok_or(Error::Unauthenticated)?;
        let now = self.clock.now();
        if token.revoked_at.is_some() || token.expires_at.is_some_and(|expiry| expiry <= now) {
            return Err(Error::Unauthenticated);
        }
        Ok(Principal {
            user,
            token_id: token.id,
            scopes: token.scopes,
        })
    }

    /// Creates the first admin and its token when the store has no user yet.
    pub async fn bootstrap_admin(&self) -> Result<Option<(User, Secret)>, Error> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let now = self.clock.now();
        let user = User {
            id: UserId::generate(),
            name: Name::parse("name", "admin").expect("valid name"),
            roles: vec![Role::Admin],
            created_at: now,
        };
        self.store.insert_user(&user).await?;
        let secret = Secret::generate();
        let token = TokenRecord {
            id: TokenId::generate(),
            user_id: user.id.clone(),
            secret_hash: secret.hash(),
            scopes: Scope::ALL.to_vec(),
            description: Some("initial admin token".into()),
            created_at: now,
            expires_at: None,
            revoked_at: None,
        };
        self.store.insert_token(&token).await?;
        self.audit(
            &Origin::default(),
            "system",
            "user.bootstrap",
            Some(user.id.to_string()),
            "ok",
            None,
        )
        .await;
        Ok(Some((user, secret)))
    }

    /// Records a request refused before it became an action (bad credential, unparsable
    /// input, overload), so every refusal leaves a trace.
    pub async fn record_refusal(
        &self,
        origin: &Origin,
        actor: Option<&Principal>,
        action: &str,
        error: &Error,
    ) {
        let actor = actor.map_or_else(
            || "anonymous".to_owned(),
            |principal| principal.user.id.to_string(),
        );
        self.audit(
            origin,
            &actor,
            action,
            None,
            error.outcome(),
            Some(error.to_string()),
        )
        .await;
    }

    /// Authorizes, executes and audits one action.
    pub async fn perform(
        &self,
        principal: &Principal,
        origin: &Origin,
        action: Action,
    ) -> Result<Reply, Error> {
        let name = action.name();
        let target = action.target();
        let result = match policy::authorize(principal, &action) {
            Ok(()) => self.execute(principal, action).await,
            Err(error) => Err(error),
        };
        let (outcome, target, detail) = match &result {
            Ok(reply) => ("ok", target.or_else(|| Self::reply_target(reply)), None),
            Err(error) => (error.outcome(), target, Some(error.to_string())),
        };
        self.audit(
            origin,
            principal.user.id.as_str(),
            name,
            target,
            outcome,
            detail,
        )
        .await;
        result
    }

    fn reply_target(reply: &Reply) -> Option<String> {
        match reply {
            Reply::Environment { environment, .. } => Some(environment.id.to_string()),
            Reply::User(user) => Some(user.id.to_string()),
            Reply::Token { record, .. } => Some(record.id.to_string()),
            _ => None,
        }
    }

    async fn audit(
        &self,
        origin: &Origin,
        actor: &str,
        action: &str,
        target: Option<String>,
        outcome: &str,
        detail: Option<String>,
    ) {
        let event = AuditEvent {
            time: self.clock.now(),
            request_id: origin.request_id.clone(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            outcome: outcome.to_owned(),
            source: origin.source.clone(),
            detail,
        };
        if let Err(error) = self.store.append_audit(&event).await {
            tracing::error!(%error, action, "failed to write audit event");
        }
    }

    async fn execute(&self, principal: &Principal, action: Action) -> Result<Reply, Error> {
        match action {
            Action::CreateEnvironment {
                request,
                idempotency_key,
            } => {
                self.create_environment(principal, request, idempotency_key)
                    .await
            }
            Action::ListEnvironments(query) => self.list_environments(principal, query).await,
            Action::GetEnvironment(id) => {
                let environment = self.load_visible(principal, &id).await?;
                let usage = match environment.state {
                    EnvState::Running => self.runtime.usage(&id).await.ok(),
                    _ => None,
                };
                Ok(Reply::Environment {
                    environment,
                    replayed: false,
                    usage,
                })
            }
            Action::StopEnvironment(id) => self.stop_environment(principal, &id).await,
            Action::StartEnvironment(id) => self.start_environment(principal, &id).await,
            Action::DeleteEnvironment(id) => self.delete_environment(principal, &id).await,
            Action::Exec {
                environment,
                command,
            } => self.exec(principal, &environment, command).await,
            Action::CreateUser(new_user) => self.create_user(new_user).await,
            Action::CreateToken(new_token) => self.create_token(principal, new_token).await,
            Action::RevokeToken(id) => self.revoke_token(principal, &id).await,
            Action::WhoAmI => Ok(Reply::WhoAmI(principal.clone())),
        }
    }

    /// Serializes lifecycle changes of one environment.
    pub(super) async fn lock(&self, id: &EnvironmentId) -> OwnedMutexGuard<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.lifecycle_locks.len();
        self.lifecycle_locks[stripe].clone().lock_owned().await
    }

    /// Recent audit events, newest first (for tests and the operator).
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, Error> {
        Ok(self.store.list_audit(limit).await?)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}
