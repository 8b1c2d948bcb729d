//! Warm pools: sandboxes of configured shapes (the default image with given resources and
//! network; the default shape with `--warm-pool N`) made ahead of demand, owned by a system user
//! (`warm-pool`, who cannot sign in), handed over whole to a create of that shape, and made
//! again in the background, in the admission queue's lowest class so they never delay a
//! create someone waits for — and not while claims keep coming: making a sandbox takes tens
//! of milliseconds of CPU, which a burst being served from the pool needs more.

use super::{Engine, Origin, environments::generated_name, environments::sandbox_spec};
use crate::admission::Priority;
use crate::error::Error;
use crate::ids::{EnvironmentId, Name, UserId};
use crate::model::{EnvState, Environment, ExecSpec, User};
use crate::policy::WarmPool;
use crate::ports::{Ceilings, EnvironmentQuery, Inserted, StoreError};

/// The command a warm sandbox runs once before it can be claimed.
fn warm_up() -> ExecSpec {
    ExecSpec {
        argv: vec!["true".into()],
        env: Default::default(),
        cwd: None,
        stdin: Vec::new(),
        timeout: std::time::Duration::from_secs(10),
        output_limit: 4096,
    }
}

/// How long no claim must have come before the pool makes its next sandbox.
const QUIET_BEFORE_REFILL: std::time::Duration = std::time::Duration::from_millis(100);

/// How the pool's owner is found again at each start.
const POOL_OWNER: &str = "airlock warm-pool";

/// What one refill did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PoolReport {
    pub made: Vec<EnvironmentId>,
    /// Warm sandboxes beyond the pool's size (it was made smaller), deleted.
    pub removed: Vec<EnvironmentId>,
    /// Why the refill stopped early, if it did.
    pub stopped: Option<String>,
}

impl Engine {
    /// Finds the pool's owner, making it when a pool is configured. Run at start.
    pub async fn prepare_pool(&self) -> Result<(), Error> {
        let owner = match self.store.find_external_user(POOL_OWNER).await? {
            Some(owner) => owner,
            None if self.limits.warm_pools.is_empty() => return Ok(()),
            None => {
                let owner = User {
                    id: UserId::generate(),
                    name: Name::parse("name", "warm-pool").expect("valid name"),
                    roles: Vec::new(),
                    teams: Vec::new(),
                    external_id: Some(POOL_OWNER.into()),
                    created_at: self.now(),
                };
                match self.store.insert_user(&owner).await {
                    Ok(()) => owner,
                    Err(StoreError::Duplicate(_)) => {
                        return Err(Error::Conflict(
                            "a user named `warm-pool` exists: the warm pool needs that name".into(),
                        ));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        let _ = self.pool_owner.set(owner.id);
        Ok(())
    }

    /// The pools' owner, when a pool holds sandboxes of this environment's shape.
    pub(super) fn pool_for(&self, environment: &Environment) -> Option<&UserId> {
        let pooled = environment.image.as_str() == "default"
            && self.limits.warm_pools.iter().any(|pool| {
                pool.size > 0 && pool.holds(&environment.resources, environment.network)
            });
        pooled.then(|| self.pool_owner.get()).flatten()
    }

    /// Notes that a claim took a warm sandbox, and wakes the refill loop.
    pub(super) fn pool_claimed(&self) {
        *self.pool_last_claim.lock().expect("pool lock") = Some(tokio::time::Instant::now());
        self.pool_refill.notify_one();
    }

    /// Waits until no claim has come for [`QUIET_BEFORE_REFILL`]. A burst that empties the
    /// pool ends its claims, so this never waits for long once nothing is left to claim.
    async fn until_claims_pause(&self) {
        loop {
            let last = *self.pool_last_claim.lock().expect("pool lock");
            let Some(quiet_at) = last.map(|last| last + QUIET_BEFORE_REFILL) else {
                return;
            };
            if tokio::time::Instant::now() >= quiet_at {
                return;
            }
            tokio::time::sleep_until(quiet_at).await;
        }
    }

    /// Waits until a claim took a warm sandbox (or `timeout` passes): the refill loop's tick.
    pub async fn pool_drained(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.pool_refill.notified()).await;
    }

    /// Brings each pool to its size: makes what is missing, one at a time, each waiting for
    /// a turn in the lowest class; deletes what is beyond it (and every warm sandbox of a
    /// shape no pool holds any more).
    pub async fn refill_pool(&self) -> Result<PoolReport, Error> {
        let mut report = PoolReport::default();
        let Some(owner) = self.pool_owner.get() else {
            return Ok(report);
        };
        // Counted once a burst of claims is over, not at its first claim.
        self.until_claims_pause().await;
        let total: usize = self
            .limits
            .warm_pools
            .iter()
            .map(|pool| pool.size as usize)
            .sum();
        let warm = self
            .store
            .list_environments(&EnvironmentQuery {
                owner: Some(owner.clone()),
                states: Some(vec![EnvState::Creating, EnvState::Running]),
                limit: (total + 1000) as u32,
                ..Default::default()
            })
            .await?;
        let mut kept = vec![0usize; self.limits.warm_pools.len()];
        for sandbox in &warm {
            let pool = self
                .limits
                .warm_pools
                .iter()
                .position(|pool| pool.holds(&sandbox.resources, sandbox.network));
            match pool {
                Some(index) if kept[index] < self.limits.warm_pools[index].size as usize => {
                    kept[index] += 1;
                }
                _ => {
                    if sandbox.state == EnvState::Running && self.tear_down(&sandbox.id).await? {
                        report.removed.push(sandbox.id.clone());
                    }
                }
            }
        }
        let missing = self
            .limits
            .warm_pools
            .iter()
            .zip(&kept)
            .flat_map(|(pool, kept)| {
                std::iter::repeat_n(*pool, (pool.size as usize).saturating_sub(*kept))
            });
        for pool in missing {
            self.until_claims_pause().await;
            let Ok(_turn) = self.admission.admit("warm-pool", Priority::Batch).await else {
                report.stopped = Some("the create queue is full".into());
                break;
            };
            if let Err(error) = self.check_memory() {
                report.stopped = Some(error.to_string());
                break;
            }
            match self.make_warm(owner, &pool).await {
                Ok(Some(id)) => report.made.push(id),
                Ok(None) => {
                    report.stopped = Some("the host is at its capacity".into());
                    break;
                }
                Err(error) => {
                    report.stopped = Some(error.to_string());
                    break;
                }
            }
        }
        if !report.made.is_empty() || !report.removed.is_empty() {
            self.audit(
                &Origin::default(),
                "system",
                "pool.refill",
                None,
                "ok",
                Some(format!(
                    "{} made, {} removed",
                    report.made.len(),
                    report.removed.len()
                )),
            )
            .await;
        }
        Ok(report)
    }

    /// Makes one warm sandbox of `pool`'s shape; `None` when the host has no room for it.
    async fn make_warm(
        &self,
        owner: &UserId,
        pool: &WarmPool,
    ) -> Result<Option<EnvironmentId>, Error> {
        let id = EnvironmentId::generate();
        let now = self.now();
        let environment = Environment {
            id: id.clone(),
            name: generated_name(&id),
            owner: owner.clone(),
            image: Name::parse("image", "default").expect("valid name"),
            resources: pool.resources,
            network: pool.network,
            team: None,
            access_request: None,
            state: EnvState::Creating,
            created_at: now,
            updated_at: now,
            expires_at: now
                + chrono::Duration::from_std(self.limits.max_ttl)
                    .map_err(|e| Error::internal("ttl", e))?,
            last_activity_at: now,
            idle_timeout: None,
            failure: None,
        };
        let ceilings = Ceilings {
            team: None,
            host: Some(self.limits.host_capacity),
        };
        let _lock = self.lock(&id).await;
        match self
            .store
            .insert_environment(&environment, None, &ceilings)
            .await?
        {
            Inserted::Created => {}
            _ => return Ok(None),
        }
        if let Err(error) = self.runtime.create(&sandbox_spec(&environment)).await {
            self.store
                .transition(
                    &id,
                    &[EnvState::Creating],
                    EnvState::Failed,
                    self.now(),
                    Some("the warm sandbox could not be created"),
                )
                .await?;
            return Err(Error::internal("warm sandbox creation", error));
        }
        // One command before it can be claimed: the lookups through its fresh overlay (the
        // `PATH` directories, the loader, the C library) are then cached, and the first
        // command of whoever takes it does not pay for them.
        if let Err(error) = self.runtime.exec(&id, &warm_up()).await {
            tracing::warn!(environment = %id, %error, "a warm sandbox's first command failed");
        }
        self.settle(&id, EnvState::Creating, EnvState::Running)
            .await?;
        Ok(Some(id))
    }
}
