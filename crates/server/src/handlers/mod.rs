//! HTTP handlers: each turns a request into one core [`Action`], hands it to the engine, and
//! turns the reply into a response. No handler changes state itself. One file per area:
//! `environments`, `identity` (users, teams, tokens), `access` (profiles and requests),
//! `sessions` (shells, streamed commands, port forwards, files, the proxy, recordings).
//! `audit` (the audit trail).

mod access;
mod audit;
mod environments;
mod identity;
mod sessions;

pub use access::*;
pub use audit::*;
pub use environments::*;
pub use identity::*;
pub use sessions::*;

use airlock_api as api;
use airlock_core::ids::EnvironmentId;
use airlock_core::{Action, Invalid, Reply};
use axum::Json;

use crate::AppState;
use crate::convert;
use crate::error::ApiError;
use crate::extract::Caller;

pub(super) type Result<T> = std::result::Result<T, ApiError>;

/// Runs an action for the caller.
pub(super) async fn perform(state: &AppState, caller: &Caller, action: Action) -> Result<Reply> {
    Ok(state
        .engine
        .perform(&caller.principal, &caller.origin, action)
        .await?)
}

/// Refuses input that did not parse, with an audit record.
pub(super) async fn refuse(
    state: &AppState,
    caller: &Caller,
    action: &str,
    invalid: Invalid,
) -> ApiError {
    let error = airlock_core::Error::Invalid(invalid);
    state
        .engine
        .record_refusal(&caller.origin, Some(&caller.principal), action, &error)
        .await;
    error.into()
}

pub(super) async fn environment_id(
    state: &AppState,
    caller: &Caller,
    action: &str,
    text: &str,
) -> Result<EnvironmentId> {
    match EnvironmentId::parse(text) {
        Ok(id) => Ok(id),
        Err(_) => Err(refuse(
            state,
            caller,
            action,
            Invalid::new("id", format!("{text:?} is not an environment id")),
        )
        .await),
    }
}

pub(super) fn environment_reply(reply: Reply) -> Result<api::Environment> {
    match reply {
        Reply::Environment {
            environment, usage, ..
        } => Ok(convert::environment(environment, usage)),
        other => Err(unexpected(other)),
    }
}

pub(super) fn unexpected(reply: Reply) -> ApiError {
    airlock_core::Error::Internal(format!("unexpected reply {reply:?}")).into()
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = api::Health)))]
pub async fn healthz() -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
    })
}

/// The metrics page for a principal that may `metrics.read` (auditors, admins).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, body = api::Problem),
        (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Caller,
) -> Result<axum::response::Response> {
    let reply = perform(&state, &caller, Action::ReadMetrics).await?;
    let Reply::Metrics(counts) = reply else {
        return Err(unexpected(reply));
    };
    let text = state.metrics.render(&counts, &state.engine.admission());
    Ok(crate::metrics::page(text))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = api::Health)))]
pub async fn readyz() -> Json<api::Health> {
    Json(api::Health {
        status: "ready".into(),
    })
}
