//! HTTP handlers: each turns a request into one core [`Action`], hands it to the engine, and
//! turns the reply into a response. No handler changes state itself.

use airlock_api as api;
use airlock_core::action::ListEnvironments;
use airlock_core::ids::{EnvironmentId, Name, TokenId};
use airlock_core::{Action, Invalid, Reply};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::AppState;
use crate::convert;
use crate::error::ApiError;
use crate::extract::{Body, Caller};

type Result<T> = std::result::Result<T, ApiError>;

/// Runs an action for the caller.
async fn perform(state: &AppState, caller: &Caller, action: Action) -> Result<Reply> {
    Ok(state
        .engine
        .perform(&caller.principal, &caller.origin, action)
        .await?)
}

/// Refuses input that did not parse, with an audit record.
async fn refuse(state: &AppState, caller: &Caller, action: &str, invalid: Invalid) -> ApiError {
    let error = airlock_core::Error::Invalid(invalid);
    state
        .engine
        .record_refusal(&caller.origin, Some(&caller.principal), action, &error)
        .await;
    error.into()
}

async fn environment_id(
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

fn environment_reply(reply: Reply) -> Result<api::Environment> {
    match reply {
        Reply::Environment {
            environment, usage, ..
        } => Ok(convert::environment(environment, usage)),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: Reply) -> ApiError {
    airlock_core::Error::Internal(format!("unexpected reply {reply:?}")).into()
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = api::Health)))]
pub async fn healthz() -> Json<api::Health> {
    Json(api::Health {
        status: "ok".into(),
    })
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = api::Health)))]
pub async fn readyz() -> Json<api::Health> {
    Json(api::Health {
        status: "ready".into(),
    })
}

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

#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = api::CreateUser,
    responses((status = 201, body = api::User), (status = 403, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<api::CreateUser>,
) -> Result<(StatusCode, Json<api::User>)> {
    let new_user = match convert::new_user(request) {
        Ok(new_user) => new_user,
        Err(invalid) => return Err(refuse(&state, &caller, "user.create", invalid).await),
    };
    let reply = perform(&state, &caller, Action::CreateUser(new_user)).await?;
    let Reply::User(user) = reply else {
        return Err(unexpected(reply));
    };
    Ok((StatusCode::CREATED, Json(convert::user(user))))
}

/// Issues a token. The secret is in this response only; airlock keeps just its hash.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = api::CreateToken,
    responses((status = 201, body = api::IssuedToken), (status = 400, body = api::Problem), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<api::CreateToken>,
) -> Result<(StatusCode, Json<api::IssuedToken>)> {
    let new_token = match convert::new_token(request) {
        Ok(new_token) => new_token,
        Err(invalid) => return Err(refuse(&state, &caller, "token.create", invalid).await),
    };
    let reply = perform(&state, &caller, Action::CreateToken(new_token)).await?;
    let Reply::Token { record, secret } = reply else {
        return Err(unexpected(reply));
    };
    Ok((
        StatusCode::CREATED,
        Json(api::IssuedToken {
            info: convert::token(record),
            token: secret.expose().to_owned(),
        }),
    ))
}

/// Revokes a token at once: the next request that presents it is refused.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let id = match TokenId::parse(&id) {
        Ok(id) => id,
        Err(_) => {
            return Err(refuse(
                &state,
                &caller,
                "token.revoke",
                Invalid::new("id", "is not a token id"),
            )
            .await);
        }
    };
    perform(&state, &caller, Action::RevokeToken(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who the presented token belongs to, and what it may do.
#[utoipa::path(get, path = "/v1/whoami", tag = "users",
    responses((status = 200, body = api::WhoAmI), (status = 401, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn whoami(State(state): State<AppState>, caller: Caller) -> Result<Json<api::WhoAmI>> {
    let reply = perform(&state, &caller, Action::WhoAmI).await?;
    let Reply::WhoAmI(principal) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::WhoAmI {
        token_id: principal.token_id.to_string(),
        scopes: principal
            .scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect(),
        user: convert::user(principal.user),
    }))
}
