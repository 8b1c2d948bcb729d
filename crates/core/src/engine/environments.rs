//! Environments: create (with idempotency), list, get, stop, start, delete, exec.

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::OwnedMutexGuard;

use super::{Engine, Origin, ReapReport};
use crate::access::{AccessRequest, AccessState, SandboxFile};
use crate::action::{Command, ListEnvironments, NewEnvironment, Reply};
use crate::admission::Priority;
use crate::authz::Resource;
use crate::error::{Error, Invalid};
use crate::ids::{EnvironmentId, Name};
use crate::model::{EnvState, Environment, ExecSpec, NetworkMode, Principal, Quota, Role};
use crate::ports::{
    AccessQuery, Ceilings, Claimed, EnvironmentQuery, Inserted, SandboxSpec, StoreError,
};

/// What a create refused for the host's capacity suggests waiting: environments end often.
const CAPACITY_RETRY_AFTER: Duration = Duration::from_secs(10);

impl Engine {
    pub(super) async fn create_environment(
        &self,
        principal: &Principal,
        request: NewEnvironment,
        idempotency_key: Option<String>,
    ) -> Result<Reply, Error> {
        self.require(principal, "environment.create", &Resource::Server)?;
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
        let (team, quota) = self.team_for(principal, request.team.as_ref()).await?;
        let grant = match &request.access_request {
            Some(id) => Some(self.grant_for(principal, id).await?),
            None => None,
        };
        let network = match (&grant, request.network) {
            (Some((_, profile_network)), Some(asked)) if asked != *profile_network => {
                return Err(Invalid::new(
                    "network",
                    format!(
                        "must be {:?}, the access profile's, or absent",
                        profile_network.as_str()
                    ),
                )
                .into());
            }
            (Some((_, profile_network)), _) => *profile_network,
            (None, asked) => asked.unwrap_or_default(),
        };
        if !self.runtime.supports_network(network) {
            return Err(Invalid::new(
                "network",
                format!("{:?} is not enabled on this server", network.as_str()),
            )
            .into());
        }
        let ttl = self.limits.ttl(request.ttl_seconds)?;
        let idle_timeout = self.limits.idle_timeout(request.idle_timeout_seconds)?;
        let fingerprint = fingerprint(&request);
        let files = match &grant {
            Some((access, _)) => self.grant_files(access).await?,
            None => Vec::new(),
        };

        let id = EnvironmentId::generate();
        let name = match &request.name {
            Some(name) => name.clone(),
            None => generated_name(&id),
        };
        let now = self.now();
        let mut expires_at =
            now + chrono::Duration::from_std(ttl).map_err(|e| Error::internal("ttl", e))?;
        if let Some(grant_end) = grant.as_ref().and_then(|(access, _)| access.expires_at) {
            // An environment never outlives its grant.
            expires_at = expires_at.min(grant_end);
        }
        let environment = Environment {
            id: id.clone(),
            name,
            owner: principal.user.id.clone(),
            image,
            resources,
            network,
            team,
            access_request: request.access_request.clone(),
            state: EnvState::Creating,
            created_at: now,
            updated_at: now,
            expires_at,
            last_activity_at: now,
            idle_timeout,
            failure: None,
        };
        let claim = idempotency_key
            .as_deref()
            .map(|key| (key, fingerprint.as_str()));
        let ceilings = Ceilings {
            team: quota,
            host: Some(self.limits.host_capacity),
        };
        // A warm sandbox of this shape, when one is ready: no queue, nothing to make.
        if files.is_empty()
            && grant.is_none()
            && let Some(pool_owner) = self.pool_for(&environment)
        {
            match self
                .store
                .claim_pooled(pool_owner, &environment, claim, &ceilings)
                .await
            {
                Ok(Claimed::Taken(environment)) => {
                    tracing::debug!(environment = %environment.id, "served from the warm pool");
                    self.pool_claimed();
                    // The sandbox was made under the pool's name; it takes the environment's.
                    if let Err(error) = self
                        .runtime
                        .rename(&environment.id, &environment.name)
                        .await
                    {
                        tracing::warn!(%error, environment = %environment.id, "could not rename a warm sandbox");
                    }
                    return Ok(Reply::Environment {
                        environment: *environment,
                        replayed: false,
                        usage: None,
                    });
                }
                Ok(Claimed::Empty) => {}
                Ok(Claimed::AsInsert(outcome)) => {
                    return self.not_created(outcome, &environment, &fingerprint).await;
                }
                Err(StoreError::Duplicate(_)) => return Err(name_taken(&environment)),
                Err(error) => return Err(error.into()),
            }
        }
        // A turn to create: fair across teams (or users without one), production access first,
        // CI batches last. Refused here, nothing has been written.
        let priority = self.priority_of(principal, grant.is_some()).await?;
        let queue = environment
            .team
            .as_ref()
            .map_or(principal.user.id.as_str(), Name::as_str);
        let _turn = self
            .admission
            .admit(queue, priority)
            .await
            .map_err(|shed| Error::Overloaded {
                reason: format!("too many environments are being created: {}", shed.reason),
                retry_after: shed.retry_after,
            })?;
        self.check_memory()?;
        let lock = self.lock(&id).await;
        match self
            .store
            .insert_environment(&environment, claim, &ceilings)
            .await
        {
            Ok(Inserted::Created) => {}
            Ok(outcome) => {
                drop(lock);
                return self.not_created(outcome, &environment, &fingerprint).await;
            }
            Err(StoreError::Duplicate(_)) => return Err(name_taken(&environment)),
            Err(error) => return Err(error.into()),
        }

        let mut spec = sandbox_spec(&environment);
        spec.files = files;
        if let Err(error) = self.runtime.create(&spec).await {
            tracing::error!(environment = %id, %error, "sandbox creation failed");
            let reason = "the sandbox could not be created";
            self.store
                .transition(
                    &id,
                    &[EnvState::Creating],
                    EnvState::Failed,
                    self.now(),
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
                self.now(),
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

    /// The answer to a create that made nothing: a replay of the earlier one with the same
    /// key, or a refusal for the team's quota or the host's capacity.
    async fn not_created(
        &self,
        outcome: Inserted,
        environment: &Environment,
        fingerprint: &str,
    ) -> Result<Reply, Error> {
        match outcome {
            Inserted::Created => Err(Error::Internal(
                "a created environment is not a refusal".into(),
            )),
            Inserted::OverCapacity(which) => Err(Error::Overloaded {
                reason: format!("the host is at its capacity: {which}"),
                retry_after: CAPACITY_RETRY_AFTER,
            }),
            Inserted::OverQuota(which) => Err(Error::QuotaExceeded(format!(
                "team {:?} is at its quota: {which}",
                environment
                    .team
                    .as_ref()
                    .map(Name::as_str)
                    .unwrap_or_default()
            ))),
            Inserted::Replayed {
                environment: earlier,
                fingerprint: earlier_fingerprint,
            } => {
                if earlier_fingerprint != fingerprint {
                    return Err(Error::Conflict(
                        "this Idempotency-Key was used before with a different request".into(),
                    ));
                }
                let environment = self.await_settled(&earlier).await?;
                Ok(Reply::Environment {
                    environment,
                    replayed: true,
                    usage: None,
                })
            }
        }
    }

    /// Waits while an earlier create under the same idempotency key is still in flight.
    pub(super) async fn await_settled(&self, id: &EnvironmentId) -> Result<Environment, Error> {
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

    pub(super) async fn list_environments(
        &self,
        principal: &Principal,
        query: ListEnvironments,
    ) -> Result<Reply, Error> {
        let action = if query.all_owners {
            "environment.list_all"
        } else {
            "environment.list"
        };
        self.require(principal, action, &Resource::Server)?;
        let limit = self.limits.page_size(query.limit)?;
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
                ..Default::default()
            })
            .await?;
        let next = super::cut_page(&mut items, limit, |environment| environment.id.clone());
        Ok(Reply::Environments { items, next })
    }

    pub(super) async fn stop_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let _lock = self.lock(id).await;
        let environment = self.load_for(principal, id, "environment.stop").await?;
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

    pub(super) async fn start_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let _lock = self.lock(id).await;
        let environment = self.load_for(principal, id, "environment.start").await?;
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
        self.check_grant(&environment).await?;
        if let Err(error) = self.runtime.start(&sandbox_spec(&environment)).await {
            tracing::error!(environment = %id, %error, "sandbox restart failed");
            self.store
                .transition(
                    id,
                    &[EnvState::Stopped],
                    EnvState::Failed,
                    self.now(),
                    Some("the sandbox could not be started"),
                )
                .await?;
            return Err(Error::internal("sandbox start", error));
        }
        let environment = self
            .settle(id, EnvState::Stopped, EnvState::Running)
            .await?;
        self.store.touch_environment(id, self.now()).await?;
        Ok(Reply::Environment {
            environment,
            replayed: false,
            usage: None,
        })
    }

    pub(super) async fn delete_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let lock = self.lock(id).await;
        let environment = self.load_for(principal, id, "environment.delete").await?;
        self.destroy_locked(&environment, lock).await?;
        Ok(Reply::Done)
    }

    /// Destroys an environment for the system (its grant ended): every process killed, its
    /// sandbox and files removed. False if it was already deleted.
    pub(super) async fn tear_down(&self, id: &EnvironmentId) -> Result<bool, Error> {
        let lock = self.lock(id).await;
        match self.store.get_environment(id).await? {
            Some(environment) if environment.state != EnvState::Deleted => {
                self.destroy_locked(&environment, lock).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn destroy_locked(
        &self,
        environment: &Environment,
        _lock: OwnedMutexGuard<()>,
    ) -> Result<(), Error> {
        let id = &environment.id;
        if environment.state != EnvState::Deleting {
            let from = [
                EnvState::Creating,
                EnvState::Running,
                EnvState::Stopped,
                EnvState::Failed,
            ];
            self.store
                .transition(id, &from, EnvState::Deleting, self.now(), None)
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
        Ok(())
    }

    pub(super) async fn exec(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
        command: Command,
    ) -> Result<Reply, Error> {
        let environment = self.load_running(principal, id).await?;
        let mut spec = self.exec_spec(command)?;
        self.note_activity(&environment, false).await?;
        self.add_grant_env(&environment, &mut spec.env).await?;
        let output = self.runtime.exec(id, &spec).await?;
        if output.oom_killed {
            self.audit_oom_kill(id, format!("while running {:?}", spec.argv[0]))
                .await;
        }
        Ok(Reply::Exec(output))
    }

    /// The running environment `principal` may reach inside of (`environment.exec`), with
    /// an active grant if it was opened under one: for commands, sessions, copies, ports.
    pub(super) async fn load_running(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Environment, Error> {
        let environment = self.load_for(principal, id, "environment.exec").await?;
        if environment.state != EnvState::Running {
            return Err(Error::Conflict(format!(
                "the environment is {}, not running",
                environment.state
            )));
        }
        self.check_grant(&environment).await?;
        Ok(environment)
    }

    /// Records that the kernel killed a process of the environment for memory.
    pub(super) async fn audit_oom_kill(&self, id: &EnvironmentId, detail: String) {
        tracing::warn!(environment = %id, "a process was killed for memory");
        self.audit(
            &Origin::default(),
            "system",
            "environment.oom_kill",
            Some(id.to_string()),
            "ok",
            Some(detail),
        )
        .await;
    }

    pub(super) fn exec_spec(&self, command: Command) -> Result<ExecSpec, Error> {
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

    /// Loads an environment for `action`. One the principal may not even see, or a deleted
    /// one, is `NotFound`, indistinguishable from a missing one; one it may see but not act
    /// on is `Forbidden`.
    pub(super) async fn load_for(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
        action: &str,
    ) -> Result<Environment, Error> {
        let environment = self
            .store
            .get_environment(id)
            .await?
            .filter(|environment| environment.state != EnvState::Deleted)
            .ok_or(Error::not_found("environment"))?;
        self.require_visible(
            principal,
            action,
            "environment.get",
            "environment",
            &environment_resource(&environment),
        )?;
        Ok(environment)
    }

    pub(super) async fn get_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let environment = self.load_for(principal, id, "environment.get").await?;
        self.note_activity(&environment, true).await?;
        let usage = match environment.state {
            EnvState::Running => self.runtime.usage(id).await.ok(),
            _ => None,
        };
        Ok(Reply::Environment {
            environment,
            replayed: false,
            usage,
        })
    }

    pub(super) async fn renew_lease(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
    ) -> Result<Reply, Error> {
        let environment = self.load_for(principal, id, "environment.lease").await?;
        if !environment.state.holds_sandbox() {
            return Err(Error::Conflict(format!(
                "a {} environment has no lease",
                environment.state
            )));
        }
        self.store.touch_environment(id, self.now()).await?;
        self.reread(id).await
    }

    /// Sets the expiry to now + `ttl_seconds`, within the hard maximum from creation (the
    /// operator's `max_ttl`) and never past the environment's grant.
    pub(super) async fn extend_environment(
        &self,
        principal: &Principal,
        id: &EnvironmentId,
        ttl_seconds: u64,
    ) -> Result<Reply, Error> {
        let environment = self.load_for(principal, id, "environment.extend").await?;
        let ttl = self.limits.ttl(Some(ttl_seconds))?;
        let now = self.now();
        let hard_maximum = environment.created_at
            + chrono::Duration::from_std(self.limits.max_ttl)
                .map_err(|e| Error::internal("ttl", e))?;
        let asked = now + chrono::Duration::from_std(ttl).map_err(|e| Error::internal("ttl", e))?;
        if asked > hard_maximum {
            return Err(Invalid::new(
                "ttl_seconds",
                format!(
                    "would pass the environment's hard maximum, {}",
                    hard_maximum.to_rfc3339()
                ),
            )
            .into());
        }
        if let Some(grant) = &environment.access_request {
            let grant_end = self
                .store
                .get_access_request(grant)
                .await?
                .and_then(|request| request.expires_at);
            if grant_end.is_none_or(|end| asked > end) {
                return Err(Invalid::new(
                    "ttl_seconds",
                    "would outlive the environment's access grant",
                )
                .into());
            }
        }
        let extended = self.store.set_expiry(id, asked).await?.ok_or_else(|| {
            Error::Conflict(format!(
                "a {} environment cannot be extended",
                environment.state
            ))
        })?;
        self.store.touch_environment(id, now).await?;
        Ok(Reply::Environment {
            environment: extended,
            replayed: false,
            usage: None,
        })
    }

    async fn reread(&self, id: &EnvironmentId) -> Result<Reply, Error> {
        let environment = self
            .store
            .get_environment(id)
            .await?
            .ok_or(Error::not_found("environment"))?;
        Ok(Reply::Environment {
            environment,
            replayed: false,
            usage: None,
        })
    }

    /// Enforces lifetimes, level-driven: environments past their expiry are deleted,
    /// running ones idle past their timeout are stopped (their files kept). Run every second.
    pub async fn reap(&self) -> Result<ReapReport, Error> {
        let mut report = ReapReport::default();
        let now = self.now();
        for environment in self.store.due_environments(now, 500).await? {
            let id = environment.id.clone();
            let expired = environment.expires_at <= now;
            let result = if expired {
                self.tear_down(&id).await.map(|_| ())
            } else {
                self.stop_idle(&environment).await
            };
            let (action, detail) = if expired {
                (
                    "environment.expire",
                    format!("its TTL ended at {}", environment.expires_at.to_rfc3339()),
                )
            } else {
                (
                    "environment.idle_stop",
                    format!("idle since {}", environment.last_activity_at.to_rfc3339()),
                )
            };
            match result {
                Ok(()) => {
                    tracing::info!(environment = %id, action, "reaped");
                    if expired {
                        report.expired.push(id.clone());
                    } else {
                        report.stopped.push(id.clone());
                    }
                    self.audit(
                        &Origin::default(),
                        "system",
                        action,
                        Some(id.to_string()),
                        "ok",
                        Some(detail),
                    )
                    .await;
                }
                Err(error) => {
                    tracing::error!(environment = %id, %error, action, "could not reap");
                    report.failures.push((id, error.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Stops a running environment for idleness, unless it became active (or changed) since
    /// it was found due.
    async fn stop_idle(&self, found: &Environment) -> Result<(), Error> {
        let _lock = self.lock(&found.id).await;
        let Some(current) = self.store.get_environment(&found.id).await? else {
            return Ok(());
        };
        let still_idle = current.state == EnvState::Running
            && current
                .idle_deadline()
                .is_some_and(|deadline| deadline <= self.now());
        if !still_idle {
            return Ok(());
        }
        self.runtime.stop(&found.id).await?;
        self.settle(&found.id, EnvState::Running, EnvState::Stopped)
            .await?;
        Ok(())
    }

    /// Refuses a create while the host itself is short of memory, whatever the limits say.
    pub(super) fn check_memory(&self) -> Result<(), Error> {
        match self.runtime.available_memory_mib() {
            Some(available) if available < self.limits.memory_reserve_mib => {
                Err(Error::Overloaded {
                    reason: format!(
                        "the host has {available} MiB of memory available, below its reserve of {} MiB",
                        self.limits.memory_reserve_mib
                    ),
                    retry_after: CAPACITY_RETRY_AFTER,
                })
            }
            _ => Ok(()),
        }
    }

    /// Records a command (or, with `read`, a read) as activity. Both are frequent and a write
    /// is not free, so the time is kept to the minute; a command's to a quarter of the idle
    /// timeout when that is shorter. Lease renewals and starts always write.
    pub(super) async fn note_activity(
        &self,
        environment: &Environment,
        read: bool,
    ) -> Result<(), Error> {
        let mut resolution = chrono::Duration::minutes(1);
        if let (false, Some(timeout)) = (read, environment.idle_timeout) {
            let quarter = chrono::Duration::from_std(timeout / 4).unwrap_or(resolution);
            resolution = resolution.min(quarter);
        }
        let now = self.now();
        if now - environment.last_activity_at >= resolution {
            self.store.touch_environment(&environment.id, now).await?;
        }
        Ok(())
    }

    /// The class a create waits in: under a grant, production access; by someone holding an
    /// active grant, incident work; by a CI account, batch; otherwise interactive.
    async fn priority_of(
        &self,
        principal: &Principal,
        under_grant: bool,
    ) -> Result<Priority, Error> {
        if under_grant {
            return Ok(Priority::Access);
        }
        let now = self.now();
        let holds_grant = self
            .store
            .list_access_requests(&AccessQuery {
                requester: Some(principal.user.id.clone()),
                states: Some(vec![AccessState::Approved]),
                after: None,
                limit: 10,
            })
            .await?
            .iter()
            .any(|request| request.is_active(now));
        let roles = &principal.user.roles;
        Ok(if holds_grant {
            Priority::Incident
        } else if roles.contains(&Role::Ci)
            && !roles
                .iter()
                .any(|role| matches!(role, Role::Admin | Role::Developer))
        {
            Priority::Batch
        } else {
            Priority::Interactive
        })
    }

    /// The team a new environment counts against, and its quota: the one asked for (the
    /// caller must belong to it), else the caller's only team, else none.
    async fn team_for(
        &self,
        principal: &Principal,
        asked: Option<&Name>,
    ) -> Result<(Option<Name>, Option<Quota>), Error> {
        let team = match (asked, principal.user.teams.as_slice()) {
            (Some(team), teams) if teams.contains(team) => team.clone(),
            (Some(team), _) => {
                return Err(Error::Forbidden(format!(
                    "you are not a member of team {:?}",
                    team.as_str()
                )));
            }
            (None, [only]) => only.clone(),
            (None, _) => return Ok((None, None)),
        };
        let quota = self.store.get_team(&team).await?.map(|team| team.quota);
        Ok((Some(team), quota))
    }

    /// The caller's active grant `id` and its profile's network mode. Another principal's
    /// request is `NotFound`; one that is not (or no longer) active is `Forbidden`.
    async fn grant_for(
        &self,
        principal: &Principal,
        id: &crate::ids::AccessRequestId,
    ) -> Result<(AccessRequest, NetworkMode), Error> {
        let access = self
            .store
            .get_access_request(id)
            .await?
            .filter(|access| access.requester == principal.user.id)
            .ok_or(Error::not_found("access request"))?;
        if !access.is_active(self.now()) {
            return Err(Error::Forbidden(format!(
                "access request {id} is {}, not an active grant",
                access.state
            )));
        }
        let profile = self
            .store
            .get_profile(&access.profile)
            .await?
            .ok_or_else(|| Error::Internal(format!("profile {} is gone", access.profile)))?;
        Ok((access, profile.network))
    }

    /// Refuses work in an environment whose grant has ended (the sweeper destroys it soon).
    pub(super) async fn check_grant(&self, environment: &Environment) -> Result<(), Error> {
        let Some(id) = &environment.access_request else {
            return Ok(());
        };
        let active = self
            .store
            .get_access_request(id)
            .await?
            .is_some_and(|access| access.is_active(self.now()));
        if active {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the access grant {id} of this environment has ended"
            )))
        }
    }

    /// The secrets of a grant's profile that are files, read now.
    async fn grant_files(&self, access: &AccessRequest) -> Result<Vec<SandboxFile>, Error> {
        let profile = self
            .store
            .get_profile(&access.profile)
            .await?
            .ok_or_else(|| Error::Internal(format!("profile {} is gone", access.profile)))?;
        let mut files = Vec::new();
        for secret in &profile.secrets {
            if let Some(path) = &secret.file {
                files.push(SandboxFile {
                    path: path.clone(),
                    contents: self.read_secret(&profile.name, &secret.source)?,
                });
            }
        }
        Ok(files)
    }

    /// The secrets of a grant's profile that are environment variables, read now.
    /// Adds the variables of the environment's grant to a command's: read at each start,
    /// they take precedence over the caller's.
    pub(super) async fn add_grant_env(
        &self,
        environment: &Environment,
        env: &mut BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let Some(id) = &environment.access_request else {
            return Ok(());
        };
        let Some(access) = self.store.get_access_request(id).await? else {
            return Ok(());
        };
        let Some(profile) = self.store.get_profile(&access.profile).await? else {
            return Ok(());
        };
        for secret in &profile.secrets {
            if let Some(name) = &secret.env {
                let value = self.read_secret(&profile.name, &secret.source)?;
                env.insert(
                    name.clone(),
                    String::from_utf8_lossy(value.expose()).into_owned(),
                );
            }
        }
        Ok(())
    }

    fn read_secret(
        &self,
        profile: &Name,
        source: &crate::access::SecretSource,
    ) -> Result<crate::access::SecretValue, Error> {
        self.secrets.read(source).map_err(|error| {
            tracing::error!(%profile, %error, "a secret of an access profile could not be read");
            Error::Unavailable(format!(
                "a secret of access profile {profile:?} cannot be read on the server"
            ))
        })
    }

    pub(super) async fn settle(
        &self,
        id: &EnvironmentId,
        from: EnvState,
        to: EnvState,
    ) -> Result<Environment, Error> {
        self.store
            .transition(id, &[from], to, self.now(), None)
            .await?
            .ok_or_else(|| Error::Internal(format!("environment {id} left `{from}` unexpectedly")))
    }
}

pub(super) fn sandbox_spec(environment: &Environment) -> SandboxSpec {
    SandboxSpec {
        id: environment.id.clone(),
        hostname: environment.name.clone(),
        image: environment.image.clone(),
        resources: environment.resources,
        network: environment.network,
        files: Vec::new(),
    }
}

fn name_taken(environment: &Environment) -> Error {
    Error::Conflict(format!(
        "you already have a live environment named {:?}",
        environment.name.as_str()
    ))
}

/// An environment as the policies see it.
pub(super) fn environment_resource(environment: &Environment) -> Resource<'_> {
    Resource::Environment {
        id: environment.id.as_str(),
        owner: environment.owner.as_str(),
        team: environment.team.as_ref().map(Name::as_str),
    }
}

pub(super) fn fingerprint(request: &NewEnvironment) -> String {
    let canonical = serde_json::to_vec(request).expect("a request serializes");
    Sha256::digest(&canonical)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `env-` and the id's last 8 characters: the random part, so distinct in practice.
pub(super) fn generated_name(id: &EnvironmentId) -> Name {
    let tail = &id.as_str()[id.as_str().len() - 8..];
    Name::parse("name", &format!("env-{tail}")).expect("valid generated name")
}
