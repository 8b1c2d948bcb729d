//! The engine: authorizes, executes and audits every [`Action`], and reconciles records with
//! the sandboxes that really exist. Nothing changes state on a path that skips it.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::action::{Action, Command, ListEnvironments, NewEnvironment, NewToken, NewUser, Reply};
use crate::error::{Error, Invalid};
use crate::ids::{EnvironmentId, Name, TokenId, UserId};
use crate::model::{
    AuditEvent, EnvState, Environment, ExecSpec, Principal, Role, Scope, TokenRecord, User,
};
use crate::policy::{self, Limits};
use crate::ports::{
    Clock, EnvironmentQuery, Inserted, Remnant, Runtime, SandboxSpec, SandboxState, Store,
    StoreError,
};
use crate::secret::Secret;

/// Where a request came from, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: String,
    pub source: Option<String>,
}

/// What one reconciliation pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Sandboxes removed because no live record claims them.
    pub orphans_removed: Vec<EnvironmentId>,
    /// Records marked failed because their sandbox was gone, dead or half-made.
    pub marked_failed: Vec<EnvironmentId>,
    /// Deletions interrupted by a crash and finished now.
    pub deletions_finished: Vec<EnvironmentId>,
    /// Stopped records whose sandbox a crash left running or half up, stopped again.
    pub stopped_again: Vec<EnvironmentId>,
    /// Environments this pass could not fully repair, with what went wrong (also listed
    /// above when their record was repaired); the next pass tries again.
    pub failures: Vec<(EnvironmentId, String)>,
}

/// Which repair the reconciler made to one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repaired {
    OrphanRemoved,
    MarkedFailed,
    DeletionFinished,
    StoppedAgain,
}

/// One repair: what was found and done, for the audit trail, and what failed, if anything.
#[derive(Debug)]
struct Repair {
    kind: Repaired,
    detail: String,
    error: Option<String>,
}

impl Repair {
    fn new(kind: Repaired, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            error: None,
        }
    }
}

const LOCK_STRIPES: usize = 4096;

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

    // ---- environments ----

    async fn create_environment(
        &self,
        principal: &Principal,
        request: NewEnvironment,
        idempotency_key: Option<String>,
    ) -> Result<Reply, Error> {
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 255 || !key.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(Invalid::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
            .into());
        }
        let image = match &request.image {
            Some(image) => image.clone(),
            None => Name::parse("image", "default").expect("valid name"),
        };
        if !self.runtime.has_image(&image) {
            return Err(
                Invalid::new("image", format!("{image:?} is not an available image")).into(),
            );
        }
        let resources = self.limits.resources(
            request.memory_mib,
            request.cpus,
            request.pids,
            request.disk_mib,
        )?;
        let network = request.network.unwrap_or_default();
        if !self.runtime.supports_network(network) {
            return Err(Invalid::new(
                "network",
                format!("{:?} is not enabled on this server", network.as_str()),
            )
            .into());
        }
        let ttl = self.limits.ttl(request.ttl_seconds)?;
        let fingerprint = fingerprint(&request);

        let id = EnvironmentId::generate();
        let name = match &request.name {
            Some(name) => name.clone(),
            None => generated_name(&id),
        };
        let now = self.clock.now();
        let environment = Environment {
            id: id.clone(),
            name,
            owner: principal.user.id.clone(),
            image,
            resources,
            network,
            state: EnvState::Creating,
            created_at: now,
            updated_at: now,
            expires_at: now
                + chrono::Duration::from_std(ttl).map_err(|e| Error::internal("ttl", e))?,
            failure: None,
        };
        let claim = idempotency_key
            .as_deref()
            .map(|key| (key, fingerprint.as_str()));
        let _lock = self.lock(&id).await;
        match self.store.insert_environment(&environment, claim).await {
            Ok(Inserted::Created) => {}
            Ok(Inserted::Replayed {
                environment: earlier,
                fingerprint: earlier_fingerprint,
            }) => {
                drop(_lock);
                if earlier_fingerprint != fingerprint {
                    return Err(Error::Conflict(
                        "this Idempotency-Key was used before with a different request".into(),
                    ));
                }
                let environment = self.await_settled(&earlier).await?;
                return Ok(Reply::Environment {
                    environment,
                    replayed: true,
                    usage: None,
                });
            }
            Err(StoreError::Duplicate(_)) => {
                return Err(Error::Conflict(format!(
                    "you already have a live environment named {:?}",
                    environment.name.as_str()
                )));
            }
            Err(error) => return Err(error.into()),
        }

        let spec = sandbox_spec(&environment);
        if let Err(error) = self.runtime.create(&spec).await {
            tracing::error!(environment = %id, %error, "sandbox creation failed");
            let reason = "the sandbox could not be created";
            self.store
                .transition(
                    &id,
                    &[EnvState::Creating],
                    EnvState::Failed,
                    self.clock.now(),
                    Some(reason),
                )
                .await?;
            return Err(Error::internal("sandbox creation", error));
        }
        let environment = self
            .store
            .transition(
                &id,
                &[EnvState::Creating],
                EnvState::Running,
                self.clock.now(),
                None,
            )
            .await?
            .ok_or_else(|| {
                Error::Internal("environment left `creating` during its creation".into())
            })?;
        Ok(Reply::Environment {
            environment,
            replayed: false,
            usage: None,
        })
    }

    /// Waits while an earlier create under the same idempotency key is still in flight.
    async fn await_settled(&self, id: &EnvironmentId) -> Result<Environment, Error> {
        for _ in 0..600 {
            let environment = self
                .store
                .get_environment(id)
                .await?
                .ok_or(Error::not_found("environment"))?;
            if environment.state != EnvState::Creating {
                return Ok(environment);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::Unavailable(
            "the earlier request with this Idempotency-Key is still in progress".into(),
        ))
    }

    async fn list_environments(
        &self,
        principal: &Principal,
        query: ListEnvironments,
    ) -> Result<Reply, Error> {
        if query.all_owners && !principal.acts_as_admin() {
            return Err(Error::Forbidden(
                "listing every owner's environments needs the admin role".into(),
            ));
        }
        let limit = query.limit.unwrap_or(50);
        if limit == 0 || limit > self.limits.max_page_size {
            return Err(Invalid::new(
                "limit",
                format!("must be between 1 and {}", self.limits.max_page_size),
            )
            .into());
        }
        let live: Vec<EnvState> = EnvState::ALL
            .into_iter()
            .filter(|state| *state != EnvState::Deleted)
            .collect();
        let mut items = self
            .store
            .list_environments(&EnvironmentQuery {
                owner: (!query.all_owners).then(|| principal.user.id.clone()),
                name: query.name,
                states: Some(live),
                after: query.after,
                limit: limit + 1,
            })
            .await?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|environment| environment.id.clone())
        } else {
            None
        };
        Ok(Reply::Environments { items, next })
    }

    async fn stop_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let _lock = self.lock(id).await;
        let environment = self.load_visible(principal, id).await?;
        match environment.state {
            EnvState::Stopped => {
                return Ok(Reply::Environment {
                    environment,
                    replayed: false,
                    usage: None,
                });
            }
            EnvState::Running => {}
            other => {
                return Err(Error::Conflict(format!(
                    "a {other} environment cannot be stopped"
                )));
            }
        }
        self.runtime.stop(id).await?;
        let environment = self
            .settle(id, EnvState::Running, EnvState::Stopped)
            .await?;
        Ok(Reply::Environment {
            environment,
            replayed: false,
            usage: None,
        })
    }

    async fn start_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let _lock = self.lock(id).await;
        let environment = self.load_visible(principal, id).await?;
        match environment.state {
            EnvState::Running => {
                return Ok(Reply::Environment {
                    environment,
                    replayed: false,
                    usage: None,
                });
            }
            EnvState::Stopped => {}
            other => {
                return Err(Error::Conflict(format!(
                    "a {other} environment cannot be started"
                )));
            }
        }
        if let Err(error) = self.runtime.start(&sandbox_spec(&environment)).await {
            tracing::error!(environment = %id, %error, "sandbox restart failed");
            self.store
                .transition(
                    id,
                    &[EnvState::Stopped],
                    EnvState::Failed,
                    self.clock.now(),
                    Some("the sandbox could not be started"),
                )
                .await?;
            return Err(Error::internal("sandbox start", error));
        }
        let environment = self
            .settle(id, EnvState::Stopped, EnvState::Running)
            .await?;
        Ok(Reply::Environment {
            environment,
            replayed: false,
            usage: None,
        })
    }

    async fn delete_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let _lock = self.lock(id).await;
        let environment = self.load_visible(principal, id).await?;
        if environment.state != EnvState::Deleting {
            let from = [
                EnvState::Creating,
                EnvState::Running,
                EnvState::Stopped,
                EnvState::Failed,
            ];
            self.store
                .transition(id, &from, EnvState::Deleting, self.clock.now(), None)
                .await?
                .ok_or_else(|| {
                    Error::Conflict(format!(
                        "a {} environment cannot be deleted",
                        environment.state
                    ))
                })?;
        }
        self.runtime.destroy(id).await?;
        self.settle(id, EnvState::Deleting, EnvState::Deleted)
            .await?;
        Ok(Reply::Done)
    }

    async fn exec(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
        command: Command,
    ) -> Result<Reply, Error> {
        let environment = self.load_visible(principal, id).await?;
        let spec = self.exec_spec(command)?;
        if environment.state != EnvState::Running {
            return Err(Error::Conflict(format!(
                "the environment is {}, not running",
                environment.state
            )));
        }
        let output = self.runtime.exec(id, &spec).await?;
        if output.oom_killed {
            tracing::warn!(environment = %id, "a process was killed for memory");
            self.audit(
                &Origin::default(),
                "system",
                "environment.oom_kill",
                Some(id.to_string()),
                "ok",
                Some(format!("while running {:?}", spec.argv[0])),
            )
            .await;
        }
        Ok(Reply::Exec(output))
    }

    fn exec_spec(&self, command: Command) -> Result<ExecSpec, Error> {
        let Command {
            argv,
            env,
            cwd,
            stdin,
            timeout_seconds,
        } = command;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(Invalid::new("command", "must name a program").into());
        }
        if argv.iter().any(|arg| arg.contains('\0')) {
            return Err(Invalid::new("command", "must not contain NUL bytes").into());
        }
        for (key, value) in &env {
            let valid_key = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key || value.contains('\0') {
                return Err(Invalid::new("env", format!("has an invalid variable {key:?}")).into());
            }
        }
        if let Some(cwd) = &cwd
            && (!cwd.starts_with('/') || cwd.contains('\0') || cwd.len() > 4096)
        {
            return Err(Invalid::new("cwd", "must be an absolute path").into());
        }
        let input_size = argv.iter().map(String::len).sum::<usize>()
            + env
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>()
            + stdin.len();
        if input_size > self.limits.exec_input_limit {
            return Err(Invalid::new(
                "command",
                format!(
                    "argv, env and stdin exceed {} bytes together",
                    self.limits.exec_input_limit
                ),
            )
            .into());
        }
        let timeout = match timeout_seconds {
            None => self.limits.default_exec_timeout,
            Some(0) => return Err(Invalid::new("timeout_seconds", "must be at least 1").into()),
            Some(seconds) if seconds > self.limits.max_exec_timeout.as_secs() => {
                return Err(Invalid::new(
                    "timeout_seconds",
                    format!("must be at most {}", self.limits.max_exec_timeout.as_secs()),
                )
                .into());
            }
            Some(seconds) => Duration::from_secs(seconds),
        };
        Ok(ExecSpec {
            argv,
            env,
            cwd,
            stdin,
            timeout,
            output_limit: self.limits.exec_output_limit,
        })
    }

    /// Loads an environment the principal may see; anything else, including a deleted one,
    /// is `NotFound`, indistinguishable from a missing one.
    async fn load_visible(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Environment, Error> {
        match self.store.get_environment(id).await? {
            Some(environment)
                if environment.state != EnvState::Deleted
                    && policy::can_see(principal, &environment) =>
            {
                Ok(environment)
            }
            _ => Err(Error::not_found("environment")),
        }
    }

    async fn settle(
        &self,
        id: &EnvironmentId,
        from: EnvState,
        to: EnvState,
    ) -> Result<Environment, Error> {
        self.store
            .transition(id, &[from], to, self.clock.now(), None)
            .await?
            .ok_or_else(|| Error::Internal(format!("environment {id} left `{from}` unexpectedly")))
    }

    async fn lock(&self, id: &EnvironmentId) -> OwnedMutexGuard<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.lifecycle_locks.len();
        self.lifecycle_locks[stripe].clone().lock_owned().await
    }

    // ---- users and tokens ----

    async fn create_user(&self, new_user: NewUser) -> Result<Reply, Error> {
        let mut roles = new_user.roles;
        if roles.is_empty() {
            roles.push(Role::Developer);
        }
        roles.sort();
        roles.dedup();
        let user = User {
            id: UserId::generate(),
            name: new_user.name,
            roles,
            created_at: self.clock.now(),
        };
        match self.store.insert_user(&user).await {
            Ok(()) => Ok(Reply::User(user)),
            Err(StoreError::Duplicate(_)) => Err(Error::Conflict(format!(
                "a user named {:?} already exists",
                user.name.as_str()
            ))),
            Err(error) => Err(error.into()),
        }
    }

    async fn create_token(
        &self,
        principal: &Principal,
        new_token: NewToken,
    ) -> Result<Reply, Error> {
        let owner = match &new_token.user {
            Some(user_id) if *user_id != principal.user.id => {
                if !principal.acts_as_admin() {
                    return Err(Error::Forbidden(
                        "only an admin may create tokens for other users".into(),
                    ));
                }
                self.store
                    .get_user(user_id)
                    .await?
                    .ok_or(Error::not_found("user"))?
            }
            _ => principal.user.clone(),
        };
        let mut scopes = new_token
            .scopes
            .unwrap_or_else(|| vec![Scope::Read, Scope::Write]);
        scopes.sort();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(Invalid::new("scopes", "must name at least one scope").into());
        }
        if let Some(scope) = scopes.iter().find(|scope| !principal.has_scope(**scope)) {
            return Err(Error::Forbidden(format!(
                "a token cannot grant the `{}` scope its creator lacks",
                scope.as_str()
            )));
        }
        if scopes.contains(&Scope::Admin) && !owner.is_admin() {
            return Err(Invalid::new("scopes", "`admin` needs a user with the admin role").into());
        }
        let now = self.clock.now();
        let expires_at = match new_token.expires_in_seconds {
            None => None,
            Some(seconds) if seconds == 0 || seconds > self.limits.max_token_lifetime.as_secs() => {
                return Err(Invalid::new(
                    "expires_in_seconds",
                    format!(
                        "must be between 1 and {}",
                        self.limits.max_token_lifetime.as_secs()
                    ),
                )
                .into());
            }
            Some(seconds) => Some(now + chrono::Duration::seconds(seconds as i64)),
        };
        if let Some(description) = &new_token.description
            && (description.len() > 200 || description.chars().any(char::is_control))
        {
            return Err(
                Invalid::new("description", "must be at most 200 printable characters").into(),
            );
        }
        let secret = Secret::generate();
        let record = TokenRecord {
            id: TokenId::generate(),
            user_id: owner.id,
            secret_hash: secret.hash(),
            scopes,
            description: new_token.description,
            created_at: now,
            expires_at,
            revoked_at: None,
        };
        self.store.insert_token(&record).await?;
        Ok(Reply::Token { record, secret })
    }

    async fn revoke_token(&self, principal: &Principal, id: &TokenId) -> Result<Reply, Error> {
        let token = self
            .store
            .get_token(id)
            .await?
            .ok_or(Error::not_found("token"))?;
        if token.user_id != principal.user.id && !principal.acts_as_admin() {
            return Err(Error::not_found("token"));
        }
        if !self.store.revoke_token(id, self.clock.now()).await? {
            return Err(Error::not_found("token"));
        }
        Ok(Reply::Done)
    }

    // ---- reconciliation ----

    /// Brings records and sandboxes into agreement, level-driven: run at start before serving
    /// and periodically after. Interrupted creates fail and interrupted deletes finish;
    /// records whose sandbox is gone or dead are marked failed; a stopped record's sandbox is
    /// stopped again if a crash left it running or half up; whatever the runtime finds of a
    /// sandbox that no live record claims (state, cgroups, mounts, directories, helper
    /// processes, network devices) is removed. Records are settled first and the host follows,
    /// so a removal that fails leaves an orphan the next pass retries. Each repair is logged
    /// and audited as one `environment.reconcile` event saying what was found; a sandbox that
    /// cannot be repaired is reported and does not stop the others.
    pub async fn reconcile(&self) -> Result<ReconcileReport, Error> {
        let mut report = ReconcileReport::default();
        let records = self.records_holding_sandboxes().await?;
        for id in &records {
            let _lock = self.lock(id).await;
            // Re-read under the lock: a request may have moved it since the listing.
            let result = self.reconcile_record(id).await;
            self.note_repair(id, result, &mut report).await;
        }
        for id in self.runtime.list().await? {
            if records.contains(&id) {
                continue;
            }
            let _lock = self.lock(&id).await;
            let result = self.reconcile_orphan(&id).await;
            self.note_repair(&id, result, &mut report).await;
        }
        Ok(report)
    }

    async fn records_holding_sandboxes(&self) -> Result<BTreeSet<EnvironmentId>, Error> {
        let held: Vec<EnvState> = EnvState::ALL
            .into_iter()
            .filter(|state| state.holds_sandbox())
            .collect();
        let mut records = BTreeSet::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_environments(&EnvironmentQuery {
                    states: Some(held.clone()),
                    after: after.clone(),
                    limit: 500,
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            records.extend(page.into_iter().map(|environment| environment.id));
        }
        Ok(records)
    }

    /// Reconciles one environment listed as holding a sandbox; the caller holds its lock.
    async fn reconcile_record(&self, id: &EnvironmentId) -> Result<Option<Repair>, Error> {
        let Some(current) = self.store.get_environment(id).await? else {
            return Ok(None);
        };
        let (from, to, failure, mut repair) = match current.state {
            // A create in flight holds this lock for its whole length, so a record still
            // `creating` here is one whose server died mid-create (its helper may live on).
            EnvState::Creating => (
                EnvState::Creating,
                EnvState::Failed,
                Some("creation was interrupted"),
                Repair::new(
                    Repaired::MarkedFailed,
                    "creation interrupted: marked failed",
                ),
            ),
            EnvState::Deleting => (
                EnvState::Deleting,
                EnvState::Deleted,
                None,
                Repair::new(Repaired::DeletionFinished, "deletion interrupted: finished"),
            ),
            EnvState::Running => match self.runtime.inspect(id).await? {
                SandboxState::Running => return Ok(None),
                SandboxState::Missing => (
                    EnvState::Running,
                    EnvState::Failed,
                    Some("the sandbox disappeared"),
                    Repair::new(Repaired::MarkedFailed, "sandbox gone: marked failed"),
                ),
                SandboxState::Stopped => (
                    EnvState::Running,
                    EnvState::Failed,
                    Some("the sandbox's processes exited"),
                    Repair::new(
                        Repaired::MarkedFailed,
                        "sandbox's processes exited: marked failed",
                    ),
                ),
            },
            EnvState::Stopped => match self.runtime.inspect(id).await? {
                SandboxState::Missing => (
                    EnvState::Stopped,
                    EnvState::Failed,
                    Some("the sandbox disappeared"),
                    Repair::new(Repaired::MarkedFailed, "sandbox gone: marked failed"),
                ),
                actual => return self.stop_again(id, actual).await,
            },
            EnvState::Deleted | EnvState::Failed => return Ok(None),
        };
        if self
            .store
            .transition(id, &[from], to, self.clock.now(), failure)
            .await?
            .is_none()
        {
            return Ok(None);
        }
        // The record is right; now the host follows it.
        self.remove_sandbox(id, &mut repair).await;
        Ok(Some(repair))
    }

    /// A stopped record's sandbox must hold its files only. A start or stop cut short by a
    /// crash can leave it running or half up: stop it again, keeping its files.
    async fn stop_again(
        &self,
        id: &EnvironmentId,
        actual: SandboxState,
    ) -> Result<Option<Repair>, Error> {
        let extra: Vec<Remnant> = self
            .runtime
            .remnants(id)
            .await?
            .into_iter()
            .filter(|remnant| *remnant != Remnant::Directory)
            .collect();
        let detail = if actual == SandboxState::Running {
            "sandbox running while its record says stopped: stopped, files kept".to_owned()
        } else if !extra.is_empty() {
            format!(
                "stopped sandbox held {}: removed, files kept",
                describe(&extra)
            )
        } else {
            return Ok(None);
        };
        let mut repair = Repair::new(Repaired::StoppedAgain, detail);
        if let Err(error) = self.runtime.stop(id).await {
            repair.error = Some(format!("stopping it failed: {error}"));
        }
        Ok(Some(repair))
    }

    /// Removes what the runtime has of a sandbox that no live record claims; the caller
    /// holds its lock.
    async fn reconcile_orphan(&self, id: &EnvironmentId) -> Result<Option<Repair>, Error> {
        let record = self.store.get_environment(id).await?;
        let whose = match &record {
            Some(environment) if environment.state.holds_sandbox() => return Ok(None),
            Some(environment) => format!("its record is {}", environment.state),
            None => "no record".to_owned(),
        };
        let mut repair = Repair::new(
            Repaired::OrphanRemoved,
            format!("orphan sandbox removed ({whose})"),
        );
        if !self.remove_sandbox(id, &mut repair).await {
            // Gone since the listing.
            return Ok(None);
        }
        Ok(Some(repair))
    }

    /// Destroys the sandbox and says in the repair what was found of it; false when nothing
    /// was there.
    async fn remove_sandbox(&self, id: &EnvironmentId, repair: &mut Repair) -> bool {
        let remnants = match self.runtime.remnants(id).await {
            Ok(remnants) => remnants,
            Err(error) => {
                repair.error = Some(format!("inspecting the host failed: {error}"));
                return true;
            }
        };
        if remnants.is_empty() {
            repair
                .detail
                .push_str("; nothing of it was left on the host");
            return false;
        }
        repair.detail.push_str("; removed ");
        repair.detail.push_str(&describe(&remnants));
        if let Err(error) = self.runtime.destroy(id).await {
            repair.error = Some(format!("removing it failed: {error}"));
        }
        true
    }

    /// Logs, audits and reports the outcome of reconciling one environment.
    async fn note_repair(
        &self,
        id: &EnvironmentId,
        result: Result<Option<Repair>, Error>,
        report: &mut ReconcileReport,
    ) {
        let (outcome, detail) = match result {
            Ok(None) => return,
            Ok(Some(repair)) => {
                let list = match repair.kind {
                    Repaired::OrphanRemoved => &mut report.orphans_removed,
                    Repaired::MarkedFailed => &mut report.marked_failed,
                    Repaired::DeletionFinished => &mut report.deletions_finished,
                    Repaired::StoppedAgain => &mut report.stopped_again,
                };
                list.push(id.clone());
                match repair.error {
                    None => {
                        tracing::warn!(environment = %id, detail = %repair.detail, "reconciled");
                        ("ok", repair.detail)
                    }
                    Some(error) => {
                        let detail = format!("{}; {error}", repair.detail);
                        tracing::error!(environment = %id, %detail, "reconciliation incomplete; the next pass retries");
                        report.failures.push((id.clone(), detail.clone()));
                        ("error", detail)
                    }
                }
            }
            Err(error) => {
                let detail = format!("reconciling failed: {error}");
                tracing::error!(environment = %id, %detail, "the next pass retries");
                report.failures.push((id.clone(), detail.clone()));
                ("error", detail)
            }
        };
        self.audit(
            &Origin::default(),
            "system",
            "environment.reconcile",
            Some(id.to_string()),
            outcome,
            Some(detail),
        )
        .await;
    }

    /// Recent audit events, newest first (for tests and the operator).
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, Error> {
        Ok(self.store.list_audit(limit).await?)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// `runtime state, cgroup, mounts`.
fn describe(remnants: &[Remnant]) -> String {
    remnants
        .iter()
        .map(|remnant| remnant.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sandbox_spec(environment: &Environment) -> SandboxSpec {
    SandboxSpec {
        id: environment.id.clone(),
        hostname: environment.name.clone(),
        image: environment.image.clone(),
        resources: environment.resources,
        network: environment.network,
    }
}

fn fingerprint(request: &NewEnvironment) -> String {
    let canonical = serde_json::to_vec(request).expect("a request serializes");
    Sha256::digest(&canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `env-` and the id's last 8 characters: the random part, so distinct in practice.
fn generated_name(id: &EnvironmentId) -> Name {
    let tail = &id.as_str()[id.as_str().len() - 8..];
    Name::parse("name", &format!("env-{tail}")).expect("valid generated name")
}
