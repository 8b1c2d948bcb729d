//! The engine: authorizes, executes and audits every [`Action`], and reconciles records with
//! the sandboxes that really exist. Nothing changes state on a path that skips it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::action::{Action, Reply};
use crate::admission::{Admission, AdmissionSnapshot};
use crate::authz::{Authorizer, Resource, Subject};
use crate::error::Error;
use crate::ids::{EnvironmentId, Name, TokenId, UserId};
use crate::model::{AuditEvent, Principal, Role, Scope, TokenRecord, User};
use crate::policy::{self, Limits};
use crate::ports::{AuditObserver, Clock, Runtime, Secrets, Store};
use crate::rate_limit::RateLimiter;
use crate::secret::Secret;

/// Where a request came from, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: String,
    pub source: Option<String>,
}

const LOCK_STRIPES: usize = 4096;

/// The store setting that keeps the latest time the engine has seen, across restarts.
const HIGH_WATER_SETTING: &str = "clock_high_water";

mod access;
mod audit;
mod environments;
mod identity;
mod pool;
mod reconcile;
mod sessions;

pub use access::SweepReport;
pub use pool::PoolReport;

/// What one pass of [`Engine::reap`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReapReport {
    /// Deleted: their TTL ended.
    pub expired: Vec<EnvironmentId>,
    /// Stopped, files kept: idle past their timeout.
    pub stopped: Vec<EnvironmentId>,
    pub failures: Vec<(EnvironmentId, String)>,
}
pub use identity::ExternalIdentity;
pub use reconcile::ReconcileReport;
pub use sessions::SessionEnd;

pub struct Engine {
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    clock: Arc<dyn Clock>,
    secrets: Arc<dyn Secrets>,
    limits: Limits,
    /// The one policy decision point: every action is allowed or refused here.
    authorizer: Authorizer,
    /// The latest time seen (µs since the epoch): [`Engine::now`] never goes below it, so a
    /// clock set back never extends a grant or a token.
    high_water: AtomicI64,
    /// Serializes lifecycle changes of one environment (striped: bounded memory).
    lifecycle_locks: Vec<Arc<Mutex<()>>>,
    /// Serializes decisions on access requests and the sweep that ends them.
    access_lock: Mutex<()>,
    rate_limiter: RateLimiter,
    /// Creates wait here for a turn: bounded concurrency, fair across teams, by priority.
    admission: Admission,
    /// The owner of the warm pool's sandboxes, once known (`prepare_pool`).
    pool_owner: std::sync::OnceLock<UserId>,
    /// Woken when a claim took a warm sandbox, so the pool is refilled at once.
    pool_refill: tokio::sync::Notify,
    /// When a claim last took a warm sandbox: refills wait while claims keep coming.
    pool_last_claim: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Told of every audit event once it is appended.
    observers: Vec<Arc<dyn AuditObserver>>,
    /// Appends audit events to the chain, in batches.
    audit_writer: audit::AuditWriter,
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
            secrets: Arc::new(NoSecrets),
            admission: Admission::new(limits.admission.clone()),
            limits,
            authorizer: Authorizer::new(None, false).expect("the built-in policies are valid"),
            high_water: AtomicI64::new(i64::MIN),
            lifecycle_locks: (0..LOCK_STRIPES)
                .map(|_| Arc::new(Mutex::new(())))
                .collect(),
            access_lock: Mutex::new(()),
            rate_limiter: RateLimiter::default(),
            pool_owner: std::sync::OnceLock::new(),
            pool_refill: tokio::sync::Notify::new(),
            pool_last_claim: std::sync::Mutex::new(None),
            observers: Vec::new(),
            audit_writer: audit::AuditWriter::default(),
        }
    }

    /// Tells `observer` of every audit event from now on.
    pub fn with_observer(mut self, observer: Arc<dyn AuditObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Uses these policies instead of the built-in ones alone.
    pub fn with_authorizer(mut self, authorizer: Authorizer) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Reads access profiles' secrets through `secrets` (by default none can be read).
    pub fn with_secrets(mut self, secrets: Arc<dyn Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Creates running and waiting now.
    pub fn admission(&self) -> AdmissionSnapshot {
        self.admission.snapshot()
    }

    /// The time, never earlier than any time seen before, in this process or (after
    /// [`Engine::restore_time`]) an earlier one.
    pub fn now(&self) -> DateTime<Utc> {
        let reading = self.clock.now().timestamp_micros();
        let seen = self.high_water.fetch_max(reading, Ordering::AcqRel);
        DateTime::from_timestamp_micros(seen.max(reading)).unwrap_or_else(|| self.clock.now())
    }

    /// Loads the latest time an earlier server saw, so that a clock set back while airlock
    /// was down cannot extend anything either. Run at start, before serving.
    pub async fn restore_time(&self) -> Result<(), Error> {
        if let Some(text) = self.store.get_setting(HIGH_WATER_SETTING).await?
            && let Ok(micros) = text.parse::<i64>()
        {
            self.high_water.fetch_max(micros, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Keeps the latest time seen (run by the sweeper each tick, and at grant decisions).
    pub(super) async fn persist_time(&self) -> Result<(), Error> {
        let now = self.now().timestamp_micros();
        self.store
            .put_setting(HIGH_WATER_SETTING, &now.to_string())
            .await?;
        Ok(())
    }

    /// Turns a presented API token into a principal, or `Unauthenticated`.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, Error> {
        let secret = Secret::from_presented(presented).ok_or(Error::Unauthenticated)?;
        let (token, user) = self
            .store
            .find_token(&secret.hash())
            .await?
            .ok_or(Error::Unauthenticated)?;
        let now = self.now();
        if token.revoked_at.is_some() || token.expires_at.is_some_and(|expiry| expiry <= now) {
            return Err(Error::Unauthenticated);
        }
        // Kept to the minute: one write per token per minute, not one per request.
        if token
            .last_used_at
            .is_none_or(|used| now - used >= chrono::Duration::minutes(1))
        {
            self.store.touch_token(&token.id, now).await?;
        }
        Ok(Principal {
            user,
            credential: crate::model::Credential::Token(token.id),
            scopes: token.scopes,
            rate_limit: token.rate_limit,
        })
    }

    /// Creates the first admin and its token when the store has no user yet.
    pub async fn bootstrap_admin(&self) -> Result<Option<(User, Secret)>, Error> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let now = self.now();
        let user = User {
            id: UserId::generate(),
            name: Name::parse("name", "admin").expect("valid name"),
            roles: vec![Role::Admin],
            teams: Vec::new(),
            external_id: None,
            created_at: now,
        };
        // Recorded before it exists: no admin without its audit record.
        self.try_audit(
            &Origin::default(),
            "system",
            "user.bootstrap",
            Some(user.id.to_string()),
            "ok",
            None,
        )
        .await?;
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
            last_used_at: None,
            rate_limit: None,
        };
        self.store.insert_token(&token).await?;
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
        // What the trail keeps of the request itself: a buffered command, a copy's path, a
        // proxied request's method and path.
        let subject = match &action {
            Action::Exec { command, .. } => Some(shorten(&command.argv.join(" "), 1024)),
            Action::CopyIn { path, .. } | Action::CopyOut { path, .. } => Some(shorten(path, 1024)),
            Action::Proxy { request, .. } => Some(shorten(request, 1024)),
            _ => None,
        };
        let result = match self
            .check_rate(principal, &action)
            .and_then(|()| policy::check_scope(principal, &action))
        {
            // The attempt is on record before anything can change; without it nothing does.
            Ok(()) if action.is_privileged() => match self
                .try_audit(
                    origin,
                    principal.user.id.as_str(),
                    name,
                    target.clone(),
                    "attempt",
                    None,
                )
                .await
            {
                Ok(()) => self.execute(principal, action).await,
                Err(error) => Err(error),
            },
            Ok(()) => self.execute(principal, action).await,
            Err(error) => Err(error),
        };
        let (outcome, target, detail) = match &result {
            Ok(Reply::Exec(output)) => (
                "ok",
                target,
                Some(format!(
                    "{}: exit code {}, {} B stdout, {} B stderr{}{}",
                    subject.unwrap_or_default(),
                    output.exit_code,
                    output.stdout.len(),
                    output.stderr.len(),
                    if output.truncated { ", truncated" } else { "" },
                    if output.timed_out { ", timed out" } else { "" },
                )),
            ),
            Ok(reply) => (
                "ok",
                target.or_else(|| Self::reply_target(reply)),
                match (Self::reply_detail(reply), subject) {
                    (Some(detail), Some(subject)) => Some(format!("{subject}: {detail}")),
                    (detail, subject) => detail.or(subject),
                },
            ),
            Err(error) => (
                error.outcome(),
                target,
                Some(match subject {
                    Some(subject) => format!("{subject}: {error}"),
                    None => error.to_string(),
                }),
            ),
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

    /// What the trail keeps of a reply besides its target.
    fn reply_detail(reply: &Reply) -> Option<String> {
        match reply {
            Reply::Session(live) => Some(format!(
                "session {} ({}): {}",
                live.session.id,
                live.session.kind.as_str(),
                live.session.argv.join(" ")
            )),
            Reply::Copied(bytes) => Some(format!("{bytes} B written")),
            Reply::File { size, .. } => Some(format!("{size} B read")),
            _ => None,
        }
    }

    /// Appends an event to the audit trail; a failure is logged (and seen by the observers).
    async fn audit(
        &self,
        origin: &Origin,
        actor: &str,
        action: &str,
        target: Option<String>,
        outcome: &str,
        detail: Option<String>,
    ) {
        let _ = self
            .try_audit(origin, actor, action, target, outcome, detail)
            .await;
    }

    /// Appends an event to the audit trail, or says it could not (`AuditUnavailable`).
    async fn try_audit(
        &self,
        origin: &Origin,
        actor: &str,
        action: &str,
        target: Option<String>,
        outcome: &str,
        detail: Option<String>,
    ) -> Result<(), Error> {
        let event = AuditEvent {
            time: self.now(),
            request_id: origin.request_id.clone(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            outcome: outcome.to_owned(),
            source: origin.source.clone(),
            detail,
        };
        let started = std::time::Instant::now();
        let appended = self.audit_writer.append(&*self.store, event.clone()).await;
        if let Err(error) = &appended {
            tracing::error!(%error, action, "failed to write audit event");
        }
        let took = started.elapsed();
        for observer in &self.observers {
            observer.observe(&event, took);
        }
        appended.map_err(Error::AuditUnavailable)
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
            Action::GetEnvironment(id) => self.get_environment(principal, &id).await,
            Action::StopEnvironment(id) => self.stop_environment(principal, &id).await,
            Action::StartEnvironment(id) => self.start_environment(principal, &id).await,
            Action::DeleteEnvironment(id) => self.delete_environment(principal, &id).await,
            Action::Exec {
                environment,
                command,
            } => self.exec(principal, &environment, command).await,
            Action::ExtendEnvironment {
                environment,
                ttl_seconds,
            } => {
                self.extend_environment(principal, &environment, ttl_seconds)
                    .await
            }
            Action::RenewLease(environment) => self.renew_lease(principal, &environment).await,
            Action::CreateUser(new_user) => self.create_user(principal, new_user).await,
            Action::ListUsers => self.list_users(principal).await,
            Action::UpdateUser { id, roles, teams } => {
                self.update_user(principal, &id, roles, teams).await
            }
            Action::CreateTeam { name, quota } => self.create_team(principal, name, quota).await,
            Action::ListTeams => self.list_teams(principal).await,
            Action::SetQuota { team, quota } => self.set_quota(principal, &team, quota).await,
            Action::CreateToken(new_token) => self.create_token(principal, new_token).await,
            Action::ListTokens(user) => self.list_tokens(principal, user).await,
            Action::RevokeToken(id) => self.revoke_token(principal, &id).await,
            Action::CreateProfile(profile) => self.create_profile(principal, profile).await,
            Action::ListProfiles => self.list_profiles(principal).await,
            Action::GetProfile(name) => self.get_profile(principal, &name).await,
            Action::RequestAccess(request) => self.request_access(principal, request).await,
            Action::ListAccessRequests(query) => self.list_access_requests(principal, query).await,
            Action::GetAccessRequest(id) => self.get_access_request(principal, &id).await,
            Action::ApproveAccess(id) => self.approve_access(principal, &id).await,
            Action::DenyAccess { id, reason } => self.deny_access(principal, &id, reason).await,
            Action::RevokeAccess { id, reason } => self.revoke_access(principal, &id, reason).await,
            Action::WhoAmI => {
                self.require(principal, "whoami", &Resource::Server)?;
                Ok(Reply::WhoAmI(principal.clone()))
            }
            Action::StartSession(request) => self.start_session(principal, request).await,
            Action::ListSessions(query) => self.list_sessions(principal, query).await,
            Action::GetSession(id) | Action::GetRecording(id) => {
                self.get_session(principal, &id).await
            }
            Action::CopyIn {
                environment,
                path,
                mode,
                contents,
            } => {
                self.copy_in(principal, &environment, path, mode, contents)
                    .await
            }
            Action::CopyOut { environment, path } => {
                self.copy_out(principal, &environment, path).await
            }
            Action::Proxy {
                environment, port, ..
            } => self.proxy(principal, &environment, port).await,
            Action::ReadMetrics => {
                self.require(principal, "metrics.read", &Resource::Server)?;
                Ok(Reply::Metrics(self.state_counts().await?))
            }
            Action::ListAudit(query) => self.list_audit(principal, query).await,
        }
    }

    /// Counts the request against the principal's rate (by its roles) and, for a token with
    /// a rate of its own, against the token's too: a token can narrow its user's limit, never
    /// widen it, however many tokens the user makes.
    fn check_rate(&self, principal: &Principal, action: &Action) -> Result<(), Error> {
        if policy::never_limited(action) {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let refused = |retry_after| Error::RateLimited { retry_after };
        if let (Some(rate), crate::model::Credential::Token(token)) =
            (principal.rate_limit, &principal.credential)
        {
            self.rate_limiter
                .check(token.as_str(), rate, now)
                .map_err(refused)?;
        }
        let rate = self.limits.rate_limits.for_roles(&principal.user.roles);
        self.rate_limiter
            .check(principal.user.id.as_str(), rate, now)
            .map_err(refused)
    }

    /// Whether the policies allow `principal` to do `action` to `resource`.
    pub(super) fn allows(&self, principal: &Principal, action: &str, resource: &Resource) -> bool {
        let subject = Subject {
            user: principal.user.id.as_str(),
            roles: &principal.user.roles,
            teams: &principal.user.teams,
        };
        self.authorizer.is_allowed(&subject, action, resource)
    }

    /// Refuses with 403 what the policies do not allow.
    pub(super) fn require(
        &self,
        principal: &Principal,
        action: &str,
        resource: &Resource,
    ) -> Result<(), Error> {
        if self.allows(principal, action, resource) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the policies do not allow you `{action}` here"
            )))
        }
    }

    /// Refuses what the policies do not allow on a thing the caller may or may not know
    /// exists: 403 when they may see it (`see_action`), 404 (`kind` not found) when not.
    pub(super) fn require_visible(
        &self,
        principal: &Principal,
        action: &str,
        see_action: &str,
        kind: &'static str,
        resource: &Resource,
    ) -> Result<(), Error> {
        if self.allows(principal, action, resource) {
            Ok(())
        } else if action != see_action && self.allows(principal, see_action, resource) {
            Err(Error::Forbidden(format!(
                "the policies do not allow you `{action}` here"
            )))
        } else {
            Err(Error::not_found(kind))
        }
    }

    /// Serializes lifecycle changes of one environment.
    pub(super) async fn lock(&self, id: &EnvironmentId) -> OwnedMutexGuard<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.lifecycle_locks.len();
        self.lifecycle_locks[stripe].clone().lock_owned().await
    }

    /// How many environments and access requests are in each state now. Authorized callers
    /// go through [`Action::ReadMetrics`]; this is for the operator's own unauthenticated
    /// metrics listener, which reads and changes nothing else.
    pub async fn state_counts(&self) -> Result<crate::action::StateCounts, Error> {
        Ok(crate::action::StateCounts {
            environments: self.store.count_environments_by_state().await?,
            access_requests: self.store.count_access_requests_by_state().await?,
        })
    }

    /// Recent audit events, newest first (for tests and the operator).
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, Error> {
        Ok(self.store.list_audit(limit).await?)
    }
}

/// Keeps the first `limit` of `items` (fetched as `limit + 1`) and returns the cursor of the
/// next page: the last kept item's id, when more followed.
fn cut_page<T, Id>(items: &mut Vec<T>, limit: u32, id: impl Fn(&T) -> Id) -> Option<Id> {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(id)
    } else {
        None
    }
}

/// `text`, cut to at most `limit` bytes (on a character boundary) with `…` when cut.
fn shorten(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The default secret reader: a server without one cannot deliver secrets.
struct NoSecrets;

impl Secrets for NoSecrets {
    fn read(
        &self,
        _source: &crate::access::SecretSource,
    ) -> Result<crate::access::SecretValue, String> {
        Err("this server reads no secrets".into())
    }
}
