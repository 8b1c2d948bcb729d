//! Temporary production access: profiles, requests, approvals, grants, and the sweep that
//! ends them on time — lapsing undecided requests, expiring grants, and destroying every
//! environment opened under a grant that is no longer active.

use std::time::Duration;

use super::{Engine, Origin};
use crate::access::{
    AccessProfile, AccessRequest, AccessState, Approved, SecretMount, check_reason,
};
use crate::action::{ListAccessRequests, NewAccessRequest, NewProfile, Reply};
use crate::authz::{ProfileRef, Resource};
use crate::error::{Error, Invalid};
use crate::ids::{AccessRequestId, EnvironmentId, Name};
use crate::model::{EnvState, Party, Principal};
use crate::ports::{AccessQuery, EnvironmentQuery, StoreError};

/// What one sweep ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub lapsed: Vec<AccessRequestId>,
    pub expired: Vec<AccessRequestId>,
    /// Environments destroyed because their grant was no longer active.
    pub destroyed: Vec<EnvironmentId>,
    /// Environments that could not be destroyed this time; the next sweep retries.
    pub failures: Vec<(EnvironmentId, String)>,
}

impl Engine {
    pub(super) async fn create_profile(
        &self,
        principal: &Principal,
        new: NewProfile,
    ) -> Result<Reply, Error> {
        self.require(principal, "profile.create", &Resource::Server)?;
        let max_duration = Duration::from_secs(new.max_duration_seconds);
        if max_duration.is_zero() || max_duration > self.limits.max_grant {
            return Err(Invalid::new(
                "max_duration_seconds",
                format!("must be between 1 and {}", self.limits.max_grant.as_secs()),
            )
            .into());
        }
        if !(1..=10).contains(&new.approvals_required) {
            return Err(Invalid::new("approvals_required", "must be between 1 and 10").into());
        }
        if let Some(description) = &new.description
            && (description.len() > 500 || description.chars().any(char::is_control))
        {
            return Err(
                Invalid::new("description", "must be at most 500 printable characters").into(),
            );
        }
        self.check_secrets(&new.secrets)?;
        let network = new.network.unwrap_or_default();
        if !self.runtime.supports_network(network) {
            return Err(Invalid::new(
                "network",
                format!("{:?} is not enabled on this server", network.as_str()),
            )
            .into());
        }
        let requesters = new
            .requesters
            .unwrap_or_else(AccessProfile::default_requesters);
        let approvers = new
            .approvers
            .unwrap_or_else(AccessProfile::default_approvers);
        self.check_parties("requesters", &requesters).await?;
        self.check_parties("approvers", &approvers).await?;
        let profile = AccessProfile {
            name: new.name,
            description: new.description,
            max_duration,
            approvals_required: new.approvals_required,
            secrets: new.secrets,
            network,
            requesters,
            approvers,
            created_at: self.now(),
        };
        match self.store.insert_profile(&profile).await {
            Ok(()) => Ok(Reply::Profile(profile)),
            Err(StoreError::Duplicate(_)) => Err(Error::Conflict(format!(
                "an access profile named {:?} already exists",
                profile.name.as_str()
            ))),
            Err(error) => Err(error.into()),
        }
    }

    /// Every secret must be readable now, so a profile never promises what it cannot give;
    /// no two may claim the same variable or file.
    fn check_secrets(&self, secrets: &[SecretMount]) -> Result<(), Error> {
        if secrets.len() > 32 {
            return Err(Invalid::new("secrets", "must be at most 32").into());
        }
        let mut claimed = std::collections::BTreeSet::new();
        for secret in secrets {
            for claim in [&secret.env, &secret.file].into_iter().flatten() {
                if !claimed.insert(claim.clone()) {
                    return Err(Invalid::new("secrets", format!("{claim:?} appears twice")).into());
                }
            }
            if let Err(error) = self.secrets.read(&secret.source) {
                return Err(Invalid::new(
                    "secrets",
                    format!("{:?} cannot be read on the server: {error}", secret.source),
                )
                .into());
            }
        }
        Ok(())
    }

    async fn check_parties(&self, field: &'static str, parties: &[Party]) -> Result<(), Error> {
        if parties.is_empty() || parties.len() > 50 {
            return Err(Invalid::new(field, "must name 1 to 50 parties").into());
        }
        for party in parties {
            let exists = match party {
                Party::Role(_) => true,
                Party::Team(team) => self.store.get_team(team).await?.is_some(),
                Party::User(user) => self.store.get_user(user).await?.is_some(),
            };
            if !exists {
                return Err(Invalid::new(field, format!("{party} does not exist")).into());
            }
        }
        Ok(())
    }

    pub(super) async fn list_profiles(&self, principal: &Principal) -> Result<Reply, Error> {
        self.require(principal, "profile.list", &Resource::Server)?;
        Ok(Reply::Profiles(self.store.list_profiles().await?))
    }

    pub(super) async fn get_profile(
        &self,
        principal: &Principal,
        name: &Name,
    ) -> Result<Reply, Error> {
        let profile = self.load_profile(name).await?;
        self.require_visible(
            principal,
            "profile.get",
            "profile.get",
            "access profile",
            &Resource::AccessProfile(profile_ref(&profile)),
        )?;
        Ok(Reply::Profile(profile))
    }

    async fn load_profile(&self, name: &Name) -> Result<AccessProfile, Error> {
        self.store
            .get_profile(name)
            .await?
            .ok_or(Error::not_found("access profile"))
    }

    pub(super) async fn request_access(
        &self,
        principal: &Principal,
        new: NewAccessRequest,
    ) -> Result<Reply, Error> {
        let profile = self.load_profile(&new.profile).await?;
        self.require_visible(
            principal,
            "access.request",
            "profile.get",
            "access profile",
            &Resource::AccessProfile(profile_ref(&profile)),
        )?;
        check_reason(&new.reason)?;
        if new.duration_seconds == 0 {
            return Err(Invalid::new("duration_seconds", "must be at least 1").into());
        }
        let duration = Duration::from_secs(new.duration_seconds).min(profile.max_duration);
        let now = self.now();
        let request = AccessRequest {
            id: AccessRequestId::generate(),
            profile: profile.name.clone(),
            requester: principal.user.id.clone(),
            reason: new.reason.trim().to_owned(),
            duration,
            approvals_required: profile.approvals_required,
            state: AccessState::Pending,
            created_at: now,
            decide_by: now + chrono_duration(self.limits.access_request_ttl),
            approvals: Vec::new(),
            granted_at: None,
            expires_at: None,
            ended_at: None,
            ended_by: None,
            end_reason: None,
        };
        self.store.insert_access_request(&request).await?;
        Ok(Reply::AccessRequest(request))
    }

    pub(super) async fn list_access_requests(
        &self,
        principal: &Principal,
        query: ListAccessRequests,
    ) -> Result<Reply, Error> {
        let action = if query.all {
            "access.list_all"
        } else {
            "access.list"
        };
        self.require(principal, action, &Resource::Server)?;
        let limit = self.limits.page_size(query.limit)?;
        let mut items = self
            .store
            .list_access_requests(&AccessQuery {
                requester: (!query.all).then(|| principal.user.id.clone()),
                states: query.state.map(|state| vec![state]),
                after: query.after,
                limit: limit + 1,
            })
            .await?;
        let next = super::cut_page(&mut items, limit, |request| request.id.clone());
        Ok(Reply::AccessRequests { items, next })
    }

    pub(super) async fn get_access_request(
        &self,
        principal: &Principal,
        id: &AccessRequestId,
    ) -> Result<Reply, Error> {
        let (request, _) = self.load_request_for(principal, id, "access.get").await?;
        Ok(Reply::AccessRequest(request))
    }

    /// Loads a request (lapsing it first if its time to be decided is over) and its profile
    /// for `action`: `NotFound` for someone who may not see it, `Forbidden` for someone who
    /// may see it but not do this (the requester approving their own request, say).
    async fn load_request_for(
        &self,
        principal: &Principal,
        id: &AccessRequestId,
        action: &str,
    ) -> Result<(AccessRequest, AccessProfile), Error> {
        let mut request = self
            .store
            .get_access_request(id)
            .await?
            .ok_or(Error::not_found("access request"))?;
        let profile = self.load_profile(&request.profile).await?;
        self.require_visible(
            principal,
            action,
            "access.get",
            "access request",
            &Resource::AccessRequest {
                id: request.id.as_str(),
                requester: request.requester.as_str(),
                profile: profile_ref(&profile),
            },
        )?;
        if request.state == AccessState::Pending
            && self.now() >= request.decide_by
            && let Some(lapsed) = self.lapse(&request).await?
        {
            request = lapsed;
        }
        Ok((request, profile))
    }

    pub(super) async fn approve_access(
        &self,
        principal: &Principal,
        id: &AccessRequestId,
    ) -> Result<Reply, Error> {
        let _decisions = self.access_lock.lock().await;
        let (request, _) = self
            .load_request_for(principal, id, "access.approve")
            .await?;
        // The policies forbid it; this holds even under an operator's replaced policies.
        if request.requester == principal.user.id {
            return Err(Error::Forbidden(
                "nobody may approve their own request".into(),
            ));
        }
        if request.state != AccessState::Pending {
            return Err(Error::Conflict(format!("the request is {}", request.state)));
        }
        let now = self.now();
        self.persist_time().await?;
        let outcome = self
            .store
            .approve_access(id, &principal.user.id, now)
            .await?
            .ok_or(Error::not_found("access request"))?;
        match outcome {
            Approved::Counted(request) | Approved::AlreadyCounted(request) => {
                Ok(Reply::AccessRequest(request))
            }
            Approved::Granted(request) => {
                let until = request
                    .expires_at
                    .map(|end| end.to_rfc3339())
                    .unwrap_or_default();
                self.audit(
                    &Origin::default(),
                    "system",
                    "access.grant",
                    Some(request.id.to_string()),
                    "ok",
                    Some(format!(
                        "granted {} to {} until {until}",
                        request.profile, request.requester
                    )),
                )
                .await;
                Ok(Reply::AccessRequest(request))
            }
            Approved::NotPending(request) => {
                Err(Error::Conflict(format!("the request is {}", request.state)))
            }
        }
    }

    pub(super) async fn deny_access(
        &self,
        principal: &Principal,
        id: &AccessRequestId,
        reason: Option<String>,
    ) -> Result<Reply, Error> {
        let _decisions = self.access_lock.lock().await;
        let (request, _) = self.load_request_for(principal, id, "access.deny").await?;
        if request.requester == principal.user.id {
            return Err(Error::Forbidden(
                "nobody may decide their own request".into(),
            ));
        }
        let reason = checked_end_reason(reason, "denied")?;
        let ended = self
            .store
            .end_access(
                id,
                AccessState::Pending,
                AccessState::Denied,
                self.now(),
                principal.user.id.as_str(),
                &reason,
            )
            .await?
            .ok_or_else(|| Error::Conflict(format!("the request is {}", request.state)))?;
        Ok(Reply::AccessRequest(ended))
    }

    /// Ends an active grant now: its environments are destroyed (every session in them
    /// killed, their secrets gone with their files) before this returns.
    pub(super) async fn revoke_access(
        &self,
        principal: &Principal,
        id: &AccessRequestId,
        reason: Option<String>,
    ) -> Result<Reply, Error> {
        let ended = {
            let _decisions = self.access_lock.lock().await;
            let (request, _) = self
                .load_request_for(principal, id, "access.revoke")
                .await?;
            let reason = checked_end_reason(reason, "revoked")?;
            self.store
                .end_access(
                    id,
                    AccessState::Approved,
                    AccessState::Revoked,
                    self.now(),
                    principal.user.id.as_str(),
                    &reason,
                )
                .await?
                .ok_or_else(|| {
                    Error::Conflict(format!(
                        "the request is {}, not an active grant",
                        request.state
                    ))
                })?
        };
        let mut report = SweepReport::default();
        self.tear_down_ended_grants(&mut report).await?;
        if let Some((environment, error)) = report.failures.first() {
            return Err(Error::Internal(format!(
                "the grant is revoked but environment {environment} could not be destroyed \
                 yet ({error}); it is retried every second"
            )));
        }
        Ok(Reply::AccessRequest(ended))
    }

    async fn lapse(&self, request: &AccessRequest) -> Result<Option<AccessRequest>, Error> {
        let lapsed = self
            .store
            .end_access(
                &request.id,
                AccessState::Pending,
                AccessState::Lapsed,
                self.now(),
                "system",
                "not decided in time",
            )
            .await?;
        if lapsed.is_some() {
            self.audit(
                &Origin::default(),
                "system",
                "access.lapse",
                Some(request.id.to_string()),
                "ok",
                Some(format!(
                    "undecided since {}",
                    request.created_at.to_rfc3339()
                )),
            )
            .await;
        }
        Ok(lapsed)
    }

    /// Ends what is due, level-driven: pending requests past their time lapse, grants past
    /// their end expire, and every live environment whose grant is not active is destroyed.
    /// Run at start before serving (so a grant that ended while the server was down is
    /// revoked before any request) and every second after.
    pub async fn sweep_access(&self) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        {
            let _decisions = self.access_lock.lock().await;
            self.persist_time().await?;
            let now = self.now();
            for request in self.requests_in(AccessState::Pending).await? {
                if now >= request.decide_by && self.lapse(&request).await?.is_some() {
                    report.lapsed.push(request.id);
                }
            }
            for request in self.requests_in(AccessState::Approved).await? {
                if request.is_active(now) {
                    continue;
                }
                let ended = self
                    .store
                    .end_access(
                        &request.id,
                        AccessState::Approved,
                        AccessState::Expired,
                        now,
                        "system",
                        "the grant ran its time",
                    )
                    .await?;
                if ended.is_some() {
                    self.audit(
                        &Origin::default(),
                        "system",
                        "access.expire",
                        Some(request.id.to_string()),
                        "ok",
                        Some(format!(
                            "grant of {} to {} ended",
                            request.profile, request.requester
                        )),
                    )
                    .await;
                    report.expired.push(request.id);
                }
            }
        }
        self.tear_down_ended_grants(&mut report).await?;
        Ok(report)
    }

    async fn requests_in(&self, state: AccessState) -> Result<Vec<AccessRequest>, Error> {
        let mut requests = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_access_requests(&AccessQuery {
                    requester: None,
                    states: Some(vec![state]),
                    after: after.clone(),
                    limit: 500,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            requests.extend(page);
        }
        Ok(requests)
    }

    /// Destroys every live environment opened under a grant that is not active now.
    async fn tear_down_ended_grants(&self, report: &mut SweepReport) -> Result<(), Error> {
        let live: Vec<EnvState> = EnvState::ALL
            .into_iter()
            .filter(|state| state.holds_sandbox() || *state == EnvState::Failed)
            .collect();
        let environments = self
            .store
            .list_environments(&EnvironmentQuery {
                granted_only: true,
                states: Some(live),
                limit: 10_000,
                ..Default::default()
            })
            .await?;
        let now = self.now();
        for environment in environments {
            let Some(grant) = &environment.access_request else {
                continue;
            };
            let active = self
                .store
                .get_access_request(grant)
                .await?
                .is_some_and(|request| request.is_active(now));
            if active {
                continue;
            }
            match self.tear_down(&environment.id).await {
                Ok(true) => {
                    tracing::info!(environment = %environment.id, %grant, "grant ended: environment destroyed");
                    self.audit(
                        &Origin::default(),
                        "system",
                        "environment.grant_ended",
                        Some(environment.id.to_string()),
                        "ok",
                        Some(format!(
                            "grant {grant} ended: sessions killed, environment and its secrets destroyed"
                        )),
                    )
                    .await;
                    report.destroyed.push(environment.id);
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(environment = %environment.id, %error, "could not destroy an environment whose grant ended");
                    report.failures.push((environment.id, error.to_string()));
                }
            }
        }
        Ok(())
    }
}

fn profile_ref(profile: &AccessProfile) -> ProfileRef<'_> {
    ProfileRef {
        name: profile.name.as_str(),
        requesters: &profile.requesters,
        approvers: &profile.approvers,
    }
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

fn checked_end_reason(reason: Option<String>, default: &str) -> Result<String, Error> {
    match reason {
        None => Ok(default.to_owned()),
        Some(reason) => {
            check_reason(&reason)?;
            Ok(reason.trim().to_owned())
        }
    }
}
