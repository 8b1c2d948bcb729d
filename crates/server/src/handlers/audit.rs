//! The audit trail: events in chain order, filtered (auditors and admins).

use airlock_api as api;
use airlock_core::action::ListAudit;
use airlock_core::{Action, Invalid, Reply};
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};

use super::{Result, perform, refuse, unexpected};
use crate::AppState;
use crate::convert;
use crate::extract::Caller;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only events of this actor (a user id, `anonymous` or `system`).
    actor: Option<String>,
    /// Only events of this action, e.g. `access.approve`.
    action: Option<String>,
    /// Only events about this target, e.g. an environment or access request id.
    target: Option<String>,
    /// Only events at or after this time (RFC 3339).
    since: Option<String>,
    /// Only events before this time (RFC 3339).
    until: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    limit: Option<u32>,
}

/// Audit events in chain order (oldest first), each with its index and the chain's hash
/// there. Every filter given must match. Reading the trail is itself audited.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = api::AuditEventList), (status = 400, body = api::Problem), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    query: std::result::Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::AuditEventList>> {
    let parsed = match query {
        Err(rejection) => Err(Invalid::new("query", rejection.body_text())),
        Ok(Query(params)) => (|| {
            let time = |field: &'static str, text: Option<String>| {
                text.map(|text| {
                    DateTime::parse_from_rfc3339(&text)
                        .map(|time| time.with_timezone(&Utc))
                        .map_err(|_| {
                            Invalid::new(field, format!("{text:?} is not an RFC 3339 time"))
                        })
                })
                .transpose()
            };
            let after = params
                .cursor
                .map(|cursor| {
                    cursor
                        .parse::<u64>()
                        .map_err(|_| Invalid::new("cursor", "is not a cursor from a previous page"))
                })
                .transpose()?;
            Ok(ListAudit {
                actor: params.actor,
                action: params.action,
                target: params.target,
                since: time("since", params.since)?,
                until: time("until", params.until)?,
                after,
                limit: params.limit,
            })
        })(),
    };
    let query = match parsed {
        Ok(query) => query,
        Err(invalid) => return Err(refuse(&state, &caller, "audit.list", invalid).await),
    };
    let reply = perform(&state, &caller, Action::ListAudit(query)).await?;
    let Reply::Audit { items, next } = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::AuditEventList {
        items: items.into_iter().map(convert::audit_event).collect(),
        next_cursor: next.map(|index| index.to_string()),
    }))
}
