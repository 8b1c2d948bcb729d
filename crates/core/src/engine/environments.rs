//! Environments: create (with idempotency), list, get, stop, start, delete, exec.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Engine, Origin};
use crate::action::{Command, ListEnvironments, NewEnvironment, Reply};
use crate::error::{Error, Invalid};
use crate::ids::{EnvironmentId, Name};
use crate::model::{EnvState, Environment, ExecSpec, Principal};
use crate::policy;
use crate::ports::{EnvironmentQuery, Inserted, SandboxSpec, StoreError};

impl Engine {
    pub(super) async fn create_environment(
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

    pub(super) async fn stop_environment(
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

    pub(super) async fn start_environment(
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

    pub(super) async fn delete_environment(
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

    pub(super) async fn exec(
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

    /// Loads an environment the principal may see; anything else, including a deleted one,
    /// is `NotFound`, indistinguishable from a missing one.
    pub(super) async fn load_visible(
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

    pub(super) async fn settle(
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
}

pub(super) fn sandbox_spec(environment: &Environment) -> SandboxSpec {
    SandboxSpec {
        id: environment.id.clone(),
        hostname: environment.name.clone(),
        image: environment.image.clone(),
        resources: environment.resources,
        network: environment.network,
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
