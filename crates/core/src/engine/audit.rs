//! The audit trail's writer and its readers. Appends are batched (group commit): whoever
//! finds the writer free takes every event waiting and appends them in one store transaction,
//! so a burst of requests costs a few disk syncs, not one each. The store chains each batch
//! under the database's write lock (`Store::append_audit`), so the chain is one sequence
//! whatever writes it.

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{Engine, cut_page};
use crate::action::{ListAudit, Reply};
use crate::audit::ChainHead;
use crate::authz::Resource;
use crate::error::Error;
use crate::model::{AuditEvent, Principal};
use crate::ports::{AuditQuery, Store};

struct Waiting {
    event: AuditEvent,
    appended: oneshot::Sender<Result<(), String>>,
}

#[derive(Default)]
pub(super) struct AuditWriter {
    /// Events waiting for the next batch, in the order they came.
    waiting: Mutex<Vec<Waiting>>,
    /// Held by the one task appending a batch.
    turn: tokio::sync::Mutex<()>,
}

impl AuditWriter {
    /// Appends `event` with the next batch; the store's error when that batch failed.
    /// Cancelling the caller does not take its event back: the next batch writes it.
    pub(super) async fn append(&self, store: &dyn Store, event: AuditEvent) -> Result<(), String> {
        let (appended, mut outcome) = oneshot::channel();
        self.waiting
            .lock()
            .expect("audit queue lock")
            .push(Waiting { event, appended });
        let interrupted = |_| Err("the batch with this event was interrupted".to_owned());
        tokio::select! {
            biased;
            // Taken and written by another task's turn: done, without waiting for a turn.
            result = &mut outcome => result.unwrap_or_else(interrupted),
            _turn = self.turn.lock() => {
                let batch = std::mem::take(&mut *self.waiting.lock().expect("audit queue lock"));
                // Empty when an earlier turn took this event with its own; then its outcome
                // was sent before that turn ended.
                if !batch.is_empty() {
                    let (events, senders): (Vec<_>, Vec<_>) = batch
                        .into_iter()
                        .map(|waiting| (waiting.event, waiting.appended))
                        .unzip();
                    let result = store
                        .append_audit(&events)
                        .await
                        .map(|_| ())
                        .map_err(|error| error.to_string());
                    for sender in senders {
                        let _ = sender.send(result.clone());
                    }
                }
                outcome.await.unwrap_or_else(interrupted)
            }
        }
    }
}

impl Engine {
    /// Gives events an older airlock wrote a place in the chain, in the order they were
    /// written; the chain's head. Run at start, before serving.
    pub async fn prepare_audit(&self) -> Result<ChainHead, Error> {
        let chained = self.store.chain_unchained_audit().await?;
        if chained > 0 {
            tracing::warn!(
                chained,
                "chained audit events written before the chain existed"
            );
        }
        Ok(self.store.audit_head().await?)
    }

    /// Where the audit chain ends now (for checkpoints).
    pub async fn audit_head(&self) -> Result<ChainHead, Error> {
        Ok(self.store.audit_head().await?)
    }

    pub(super) async fn list_audit(
        &self,
        principal: &Principal,
        query: ListAudit,
    ) -> Result<Reply, Error> {
        self.require(principal, "audit.read", &Resource::Server)?;
        let limit = self.limits.page_size(query.limit)?;
        let mut items = self
            .store
            .query_audit(&AuditQuery {
                actor: query.actor,
                action: query.action,
                target: query.target,
                since: query.since,
                until: query.until,
                after: query.after.unwrap_or(0),
                limit: limit + 1,
            })
            .await?;
        let next = cut_page(&mut items, limit, |item| item.index);
        Ok(Reply::Audit { items, next })
    }
}
