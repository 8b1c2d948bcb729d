//! Environment handlers: create, list, get, stop, start, delete, exec.

use airlock_api as api;
use airlock_core::action::ListEnvironments;
use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::{Action, Invalid, Reply};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Result, environment_id, environment_reply, perform, refuse, unexpected};
use crate::AppState;
use crate::convert;
use crate::extract::{Body, Caller};

/// Creates and starts an environment. With an `Idempotency-Key` header, repeating the request
/// returns the environment the first one made instead of making another.
#[utoipa::path(post, path = "/v1/environments", tag = "environments",
    request_body = api::CreateEnvironment,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key, same environment")),
    responses(
        (status = 201, body = api::Environment, description = "Created (or replayed, with `Idempotency-Replayed: true`)"),
        (status = 400, body = api::Problem), (status = 401, body = api::Problem), (status = 409, body = api::Problem),
    ),
    security(("bearer" = [])))]
pub async fn create_environment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(request): Body<api::CreateEnvironment>,
) -> Result<Response> {
    let request = match convert::new_environment(request) {
        Ok(request) => request,
        Err(invalid) => return Err(refuse(&state, &caller, "environment.create", invalid).await),
    };
    let idempotency_key = match headers.get("idempotency-key").map(|value| value.to_str()) {
        None => None,
        Some(Ok(key)) => Some(key.to_owned()),
        Some(Err(_)) => {
            return Err(refuse(
                &state,
                &caller,
                "environment.create",
                Invalid::new("Idempotency-Key", "must be visible ASCII"),
            )
            .await);
        }
    };
    let reply = perform(
        &state,
        &caller,
        Action::CreateEnvironment {
            request,
            idempotency_key,
        },
    )
    .await?;
    let Reply::Environment {
        environment,
        replayed,
        ..
    } = reply
    else {
        return Err(unexpected(reply));
    };
    let location = format!("/v1/environments/{}", environment.id);
    let mut response = (
        StatusCode::CREATED,
        Json(convert::environment(environment, None)),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 200 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only the environment with this name.
    name: Option<String>,
    /// Admins: every owner's environments.
    all: Option<bool>,
}

/// Lists the caller's environments (every owner's for an admin with `all=true`), oldest first.
#[utoipa::path(get, path = "/v1/environments", tag = "environments", params(ListParams),
    responses((status = 200, body = api::EnvironmentList), (status = 400, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_environments(
    State(state): State<AppState>,
    caller: Caller,
    query: std::result::Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::EnvironmentList>> {
    let action = "environment.list";
    let Query(params) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return Err(refuse(
                &state,
                &caller,
                action,
                Invalid::new("query", rejection.body_text()),
            )
            .await);
        }
    };
    let after = match params
        .cursor
        .as_deref()
        .map(EnvironmentId::parse)
        .transpose()
    {
        Ok(after) => after,
        Err(_) => {
            return Err(refuse(
                &state,
                &caller,
                action,
                Invalid::new("cursor", "is not a cursor from a previous page"),
            )
            .await);
        }
    };
    let name = match params
        .name
        .as_deref()
        .map(|name| Name::parse("name", name))
        .transpose()
    {
        Ok(name) => name,
        Err(invalid) => return Err(refuse(&state, &caller, action, invalid).await),
    };
    let query = ListEnvironments {
        name,
        all_owners: params.all.unwrap_or(false),
        after,
        limit: params.limit,
    };
    let reply = perform(&state, &caller, Action::ListEnvironments(query)).await?;
    let Reply::Environments { items, next } = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::EnvironmentList {
        items: items
            .into_iter()
            .map(|environment| convert::environment(environment, None))
            .collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

#[utoipa::path(get, path = "/v1/environments/{id}", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses((status = 200, body = api::Environment), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn get_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Environment>> {
    let id = environment_id(&state, &caller, "environment.get", &id).await?;
    Ok(Json(environment_reply(
        perform(&state, &caller, Action::GetEnvironment(id)).await?,
    )?))
}

/// Destroys the environment: its processes, its writable layer, its limits. Nothing is left.
#[utoipa::path(delete, path = "/v1/environments/{id}", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses((status = 204, description = "Deleted"), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn delete_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let id = environment_id(&state, &caller, "environment.delete", &id).await?;
    perform(&state, &caller, Action::DeleteEnvironment(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Kills every process of the environment and keeps its files.
#[utoipa::path(post, path = "/v1/environments/{id}/stop", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses((status = 200, body = api::Environment), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn stop_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Environment>> {
    let id = environment_id(&state, &caller, "environment.stop", &id).await?;
    Ok(Json(environment_reply(
        perform(&state, &caller, Action::StopEnvironment(id)).await?,
    )?))
}

/// Starts a stopped environment again on the files it kept.
#[utoipa::path(post, path = "/v1/environments/{id}/start", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses((status = 200, body = api::Environment), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn start_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Environment>> {
    let id = environment_id(&state, &caller, "environment.start", &id).await?;
    Ok(Json(environment_reply(
        perform(&state, &caller, Action::StartEnvironment(id)).await?,
    )?))
}

/// Runs a command to completion and returns its exit code and output (each stream capped;
/// past the timeout the command's whole process tree is killed).
#[utoipa::path(post, path = "/v1/environments/{id}/exec", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    request_body = api::ExecRequest,
    responses((status = 200, body = api::ExecResult), (status = 400, body = api::Problem), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<api::ExecRequest>,
) -> Result<Json<api::ExecResult>> {
    let id = environment_id(&state, &caller, "environment.exec", &id).await?;
    let reply = perform(
        &state,
        &caller,
        Action::Exec {
            environment: id,
            command: convert::command(request),
        },
    )
    .await?;
    let Reply::Exec(output) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(convert::exec_result(output)))
}

/// Pushes the environment's expiry to now + `ttl_seconds`, within the hard maximum.
#[utoipa::path(post, path = "/v1/environments/{id}/extend", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    request_body = api::ExtendEnvironment,
    responses((status = 200, body = api::Environment), (status = 400, body = api::Problem), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn extend_environment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<api::ExtendEnvironment>,
) -> Result<Json<api::Environment>> {
    let id = environment_id(&state, &caller, "environment.extend", &id).await?;
    Ok(Json(environment_reply(
        perform(
            &state,
            &caller,
            Action::ExtendEnvironment {
                environment: id,
                ttl_seconds: request.ttl_seconds,
            },
        )
        .await?,
    )?))
}

/// Renews an agent's lease: counts as activity, so the idle timeout starts again.
#[utoipa::path(post, path = "/v1/environments/{id}/lease", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses((status = 200, body = api::Environment), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn renew_lease(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Environment>> {
    let id = environment_id(&state, &caller, "environment.lease", &id).await?;
    Ok(Json(environment_reply(
        perform(&state, &caller, Action::RenewLease(id)).await?,
    )?))
}
