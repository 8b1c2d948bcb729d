//! Reconciliation: records and the sandboxes on the host brought into agreement.

use std::collections::BTreeSet;

use super::{Engine, Origin};
use crate::error::Error;
use crate::ids::EnvironmentId;
use crate::model::EnvState;
use crate::ports::{EnvironmentQuery, Remnant, SandboxState};

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
    pub(super) fn new(kind: Repaired, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            error: None,
        }
    }
}

impl Engine {
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
}

/// `runtime state, cgroup, mounts`.
fn describe(remnants: &[Remnant]) -> String {
    remnants
        .iter()
        .map(|remnant| remnant.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
