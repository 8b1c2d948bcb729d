//! The token scope each action needs, and the operator's bounds on what a request may ask for.
//!
//! Authorization has two layers, both default deny: a credential's scopes say which kinds of
//! action it may be used for (checked here, before anything is loaded), and the Cedar
//! policies of [`crate::authz`] say whether the principal may do the action to the thing
//! (checked by the engine once the thing is loaded).

use std::time::Duration;

use crate::action::Action;
use crate::admission::AdmissionConfig;
use crate::error::{Error, Invalid};
use crate::model::{Principal, Quota, Resources, Scope};
use crate::rate_limit::RateLimits;

/// The scope a credential needs for an action.
pub fn required_scope(action: &Action) -> Scope {
    match action {
        Action::ListEnvironments(_)
        | Action::GetEnvironment(_)
        | Action::WhoAmI
        | Action::ReadMetrics
        | Action::ListTokens(_)
        | Action::ListUsers
        | Action::ListTeams
        | Action::ListProfiles
        | Action::GetProfile(_)
        | Action::ListAccessRequests(_)
        | Action::GetAccessRequest(_)
        | Action::ListSessions(_)
        | Action::GetSession(_)
        | Action::GetRecording(_) => Scope::Read,
        Action::ListAudit(_) => Scope::Read,
        Action::CreateEnvironment { .. }
        | Action::StopEnvironment(_)
        | Action::StartEnvironment(_)
        | Action::DeleteEnvironment(_)
        | Action::Exec { .. }
        | Action::ExtendEnvironment { .. }
        | Action::RenewLease(_)
        | Action::StartSession(_)
        | Action::CopyIn { .. }
        | Action::CopyOut { .. }
        | Action::Proxy { .. }
        | Action::CreateToken(_)
        | Action::RevokeToken(_) => Scope::Write,
        Action::RequestAccess(_) => Scope::AccessRequest,
        Action::ApproveAccess(_) | Action::DenyAccess { .. } => Scope::AccessApprove,
        // Ending a grant early is open to the requester (access:request) and approvers.
        Action::RevokeAccess { .. } => Scope::AccessRequest,
        Action::CreateUser(_)
        | Action::UpdateUser { .. }
        | Action::CreateTeam { .. }
        | Action::SetQuota { .. }
        | Action::CreateProfile(_) => Scope::Admin,
    }
}

/// Whether an action is exempt from rate limits: ending access and administering the server
/// must always get through, also in the middle of a burst.
pub fn never_limited(action: &Action) -> bool {
    matches!(
        action,
        Action::RevokeToken(_) | Action::RevokeAccess { .. } | Action::ReadMetrics
    ) || required_scope(action) == Scope::Admin
}

/// Refuses an action the credential is not scoped for.
pub fn check_scope(principal: &Principal, action: &Action) -> Result<(), Error> {
    let scope = required_scope(action);
    let revoke_as_approver =
        matches!(action, Action::RevokeAccess { .. }) && principal.has_scope(Scope::AccessApprove);
    if principal.has_scope(scope) || revoke_as_approver {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "this credential lacks the `{}` scope",
            scope.as_str()
        )))
    }
}

/// Bounds on what a request may ask for, set by the operator.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_resources: Resources,
    pub max_resources: Resources,
    pub min_resources: Resources,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub min_ttl: Duration,
    /// Stop an environment after this long without activity, unless the create says otherwise.
    pub default_idle_timeout: Option<Duration>,
    pub max_idle_timeout: Duration,
    pub default_exec_timeout: Duration,
    pub max_exec_timeout: Duration,
    /// Bytes kept of each of stdout and stderr of a buffered exec.
    pub exec_output_limit: usize,
    /// Bytes of argv, environment and stdin together.
    pub exec_input_limit: usize,
    /// Bytes of one file copied in or out of an environment.
    pub copy_limit: u64,
    pub max_page_size: u32,
    pub max_token_lifetime: Duration,
    /// A pending access request lapses after this long undecided.
    pub access_request_ttl: Duration,
    /// The longest grant any profile may give.
    pub max_grant: Duration,
    /// Requests per principal (revocations are never limited).
    pub rate_limits: RateLimits,
    /// Creates at once, and how many may wait how long for a turn.
    pub admission: AdmissionConfig,
    /// What the host may give, over all live environments (their limits added up).
    pub host_capacity: Quota,
    /// Creates are refused while the host has less memory than this available.
    pub memory_reserve_mib: u64,
    /// Warm pools: sandboxes of a shape kept ready, each shape at most once (none: no pool).
    pub warm_pools: Vec<WarmPool>,
}

/// A warm pool: `size` sandboxes of the default image with these resources and network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmPool {
    pub resources: crate::model::Resources,
    pub network: crate::model::NetworkMode,
    pub size: u32,
}

impl WarmPool {
    /// `SIZE` (the default shape), or `SIZE:key=value,…` with keys `memory_mib`, `cpus`,
    /// `pids`, `disk_mib` and `network` (`none` or `egress`); keys left out take the
    /// defaults' values.
    pub fn parse(text: &str, defaults: crate::model::Resources) -> Result<Self, Invalid> {
        let invalid = |why: String| Invalid::new("warm pool", why);
        let (size, shape) = text.split_once(':').unwrap_or((text, ""));
        let size: u32 = size
            .trim()
            .parse()
            .map_err(|_| invalid(format!("{text:?} does not start with a size")))?;
        let mut pool = Self {
            resources: defaults,
            network: crate::model::NetworkMode::None,
            size,
        };
        for pair in shape.split(',').filter(|pair| !pair.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("{pair:?} is not key=value")))?;
            let number = || {
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| invalid(format!("{key} must be a whole number")))
            };
            match key.trim() {
                "memory_mib" => pool.resources.memory_mib = number()?,
                "pids" => pool.resources.pids = number()?,
                "disk_mib" => pool.resources.disk_mib = number()?,
                "cpus" => {
                    let cpus: f64 = value
                        .trim()
                        .parse()
                        .map_err(|_| invalid("cpus must be a number".into()))?;
                    if !(cpus.is_finite() && cpus > 0.0) {
                        return Err(invalid("cpus must be positive".into()));
                    }
                    pool.resources.millicpus = (cpus * 1000.0).round() as u64;
                }
                "network" => {
                    pool.network = match value.trim() {
                        "none" => crate::model::NetworkMode::None,
                        "egress" => crate::model::NetworkMode::Egress,
                        other => return Err(invalid(format!("unknown network {other:?}"))),
                    }
                }
                other => return Err(invalid(format!("unknown key {other:?}"))),
            }
        }
        Ok(pool)
    }

    /// Whether an environment of these resources and network belongs in this pool.
    pub fn holds(
        &self,
        resources: &crate::model::Resources,
        network: crate::model::NetworkMode,
    ) -> bool {
        self.resources == *resources && self.network == network
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_resources: Resources {
                memory_mib: 512,
                millicpus: 1000,
                pids: 512,
                disk_mib: 4 * 1024,
            },
            max_resources: Resources {
                memory_mib: 16 * 1024,
                millicpus: 16_000,
                pids: 32_768,
                disk_mib: 256 * 1024,
            },
            min_resources: Resources {
                memory_mib: 16,
                millicpus: 10,
                pids: 16,
                disk_mib: 64,
            },
            default_ttl: Duration::from_secs(8 * 3600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            min_ttl: Duration::from_secs(60),
            default_idle_timeout: None,
            max_idle_timeout: Duration::from_secs(7 * 24 * 3600),
            default_exec_timeout: Duration::from_secs(60),
            max_exec_timeout: Duration::from_secs(3600),
            exec_output_limit: 1024 * 1024,
            exec_input_limit: 1024 * 1024,
            copy_limit: 1 << 30,
            max_page_size: 200,
            max_token_lifetime: Duration::from_secs(366 * 24 * 3600),
            access_request_ttl: Duration::from_secs(3600),
            max_grant: Duration::from_secs(7 * 24 * 3600),
            rate_limits: RateLimits::default(),
            admission: AdmissionConfig {
                concurrency: 8,
                max_queue: 1000,
                max_wait: Duration::from_secs(10),
            },
            host_capacity: Quota {
                max_environments: Some(2000),
                max_memory_mib: None,
                max_millicpus: None,
            },
            memory_reserve_mib: 512,
            warm_pools: Vec::new(),
        }
    }
}

impl Limits {
    /// Fills absent fields with defaults and checks each against the bounds.
    pub fn resources(
        &self,
        memory_mib: Option<u64>,
        cpus: Option<f64>,
        pids: Option<u64>,
        disk_mib: Option<u64>,
    ) -> Result<Resources, Invalid> {
        let millicpus = match cpus {
            None => self.default_resources.millicpus,
            Some(cpus) if cpus.is_finite() && cpus > 0.0 => (cpus * 1000.0).round() as u64,
            Some(_) => return Err(Invalid::new("resources.cpus", "must be a positive number")),
        };
        let resources = Resources {
            memory_mib: memory_mib.unwrap_or(self.default_resources.memory_mib),
            millicpus,
            pids: pids.unwrap_or(self.default_resources.pids),
            disk_mib: disk_mib.unwrap_or(self.default_resources.disk_mib),
        };
        check_range(
            "resources.memory_mib",
            resources.memory_mib,
            self.min_resources.memory_mib,
            self.max_resources.memory_mib,
        )?;
        check_range(
            "resources.cpus",
            resources.millicpus,
            self.min_resources.millicpus,
            self.max_resources.millicpus,
        )
        .map_err(|_| {
            Invalid::new(
                "resources.cpus",
                format!(
                    "must be between {} and {}",
                    self.min_resources.millicpus as f64 / 1000.0,
                    self.max_resources.millicpus as f64 / 1000.0
                ),
            )
        })?;
        check_range(
            "resources.pids",
            resources.pids,
            self.min_resources.pids,
            self.max_resources.pids,
        )?;
        check_range(
            "resources.disk_mib",
            resources.disk_mib,
            self.min_resources.disk_mib,
            self.max_resources.disk_mib,
        )?;
        Ok(resources)
    }

    /// The size of a page of a listing: 50 unless asked, at most `max_page_size`.
    pub fn page_size(&self, asked: Option<u32>) -> Result<u32, Invalid> {
        let limit = asked.unwrap_or(50);
        if limit == 0 || limit > self.max_page_size {
            return Err(Invalid::new(
                "limit",
                format!("must be between 1 and {}", self.max_page_size),
            ));
        }
        Ok(limit)
    }

    /// `Some(0)` is "never"; absent is the default.
    pub fn idle_timeout(&self, seconds: Option<u64>) -> Result<Option<Duration>, Invalid> {
        match seconds {
            None => Ok(self.default_idle_timeout),
            Some(0) => Ok(None),
            Some(seconds) => {
                check_range(
                    "idle_timeout_seconds",
                    seconds,
                    self.min_ttl.as_secs(),
                    self.max_idle_timeout.as_secs(),
                )?;
                Ok(Some(Duration::from_secs(seconds)))
            }
        }
    }

    pub fn ttl(&self, seconds: Option<u64>) -> Result<Duration, Invalid> {
        let ttl = seconds.map(Duration::from_secs).unwrap_or(self.default_ttl);
        check_range(
            "ttl_seconds",
            ttl.as_secs(),
            self.min_ttl.as_secs(),
            self.max_ttl.as_secs(),
        )?;
        Ok(ttl)
    }
}

fn check_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_take_defaults_and_respect_bounds() {
        let limits = Limits::default();
        assert_eq!(
            limits.resources(None, None, None, None).unwrap(),
            limits.default_resources
        );
        assert_eq!(
            limits
                .resources(Some(64), Some(0.5), Some(100), Some(128))
                .unwrap(),
            Resources {
                memory_mib: 64,
                millicpus: 500,
                pids: 100,
                disk_mib: 128,
            }
        );
        for (memory, cpus, pids, disk, field) in [
            (Some(1), None, None, None, "resources.memory_mib"),
            (Some(1 << 40), None, None, None, "resources.memory_mib"),
            (None, Some(0.0), None, None, "resources.cpus"),
            (None, Some(-1.0), None, None, "resources.cpus"),
            (None, Some(f64::NAN), None, None, "resources.cpus"),
            (None, Some(1000.0), None, None, "resources.cpus"),
            (None, None, Some(1), None, "resources.pids"),
            (None, None, Some(u64::MAX), None, "resources.pids"),
            (None, None, None, Some(1), "resources.disk_mib"),
            (None, None, None, Some(u64::MAX), "resources.disk_mib"),
        ] {
            assert_eq!(
                limits
                    .resources(memory, cpus, pids, disk)
                    .unwrap_err()
                    .field,
                field
            );
        }
    }

    #[test]
    fn ttl_bounds() {
        let limits = Limits::default();
        assert_eq!(limits.ttl(None).unwrap(), limits.default_ttl);
        assert!(limits.ttl(Some(59)).is_err());
        assert!(limits.ttl(Some(u64::MAX)).is_err());
        assert_eq!(limits.ttl(Some(600)).unwrap(), Duration::from_secs(600));
    }
}
