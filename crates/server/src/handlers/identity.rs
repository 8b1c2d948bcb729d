//! Identity handlers: users, teams, tokens, whoami.

use airlock_api as api;
use airlock_core::ids::{Name, TokenId, UserId};
use airlock_core::{Action, Invalid, Reply};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{Result, perform, refuse, unexpected};
use crate::AppState;
use crate::convert;
use crate::extract::{Body, Caller};

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

/// Every user, oldest first (admins and auditors).
#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = api::UserList), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<api::UserList>> {
    let reply = perform(&state, &caller, Action::ListUsers).await?;
    let Reply::Users(users) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::UserList {
        items: users.into_iter().map(convert::user).collect(),
    }))
}

/// Replaces a user's roles and/or teams (admin).
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", request_body = api::UpdateUser,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = api::User), (status = 403, body = api::Problem), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(request): Body<api::UpdateUser>,
) -> Result<Json<api::User>> {
    let action = "user.update";
    let parsed = (|| {
        let id = UserId::parse(&id).map_err(|_| Invalid::new("id", "is not a user id"))?;
        let roles = request.roles.map(convert::roles).transpose()?;
        let teams = request.teams.map(convert::team_names).transpose()?;
        Ok::<_, Invalid>(Action::UpdateUser { id, roles, teams })
    })();
    let action = match parsed {
        Ok(action) => action,
        Err(invalid) => return Err(refuse(&state, &caller, action, invalid).await),
    };
    let reply = perform(&state, &caller, action).await?;
    let Reply::User(user) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(convert::user(user)))
}

#[utoipa::path(post, path = "/v1/teams", tag = "teams", request_body = api::CreateTeam,
    responses((status = 201, body = api::Team), (status = 403, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn create_team(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<api::CreateTeam>,
) -> Result<(StatusCode, Json<api::Team>)> {
    let parsed = Name::parse("name", &request.name)
        .and_then(|name| Ok((name, convert::quota(request.quota)?)));
    let (name, quota) = match parsed {
        Ok(parsed) => parsed,
        Err(invalid) => return Err(refuse(&state, &caller, "team.create", invalid).await),
    };
    let reply = perform(&state, &caller, Action::CreateTeam { name, quota }).await?;
    let Reply::Team(team) = reply else {
        return Err(unexpected(reply));
    };
    Ok((StatusCode::CREATED, Json(convert::team(team))))
}

#[utoipa::path(get, path = "/v1/teams", tag = "teams",
    responses((status = 200, body = api::TeamList), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_teams(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<api::TeamList>> {
    let reply = perform(&state, &caller, Action::ListTeams).await?;
    let Reply::Teams(teams) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::TeamList {
        items: teams.into_iter().map(convert::team).collect(),
    }))
}

/// Replaces a team's quota (admin); it applies to the next create.
#[utoipa::path(put, path = "/v1/teams/{name}/quota", tag = "teams", request_body = api::Quota,
    params(("name" = String, Path, description = "Team name")),
    responses((status = 200, body = api::Team), (status = 403, body = api::Problem), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn set_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(request): Body<api::Quota>,
) -> Result<Json<api::Team>> {
    let parsed =
        Name::parse("name", &name).and_then(|team| Ok((team, convert::quota(Some(request))?)));
    let (team, quota) = match parsed {
        Ok(parsed) => parsed,
        Err(invalid) => return Err(refuse(&state, &caller, "team.update", invalid).await),
    };
    let reply = perform(&state, &caller, Action::SetQuota { team, quota }).await?;
    let Reply::Team(team) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(convert::team(team)))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenListParams {
    /// Whose tokens (admins); the caller's when absent.
    user_id: Option<String>,
}

/// Lists tokens (never their secrets), with expiry, revocation and last use.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(TokenListParams),
    responses((status = 200, body = api::TokenList), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    query: std::result::Result<
        axum::extract::Query<TokenListParams>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Json<api::TokenList>> {
    // An unreadable query is refused like any bad input: a problem document and a record.
    let parsed = match query {
        Err(rejection) => Err(Invalid::new("query", rejection.body_text())),
        Ok(axum::extract::Query(params)) => params
            .user_id
            .as_deref()
            .map(UserId::parse)
            .transpose()
            .map_err(|_| Invalid::new("user_id", "is not a user id")),
    };
    let user = match parsed {
        Ok(user) => user,
        Err(invalid) => return Err(refuse(&state, &caller, "token.list", invalid).await),
    };
    let reply = perform(&state, &caller, Action::ListTokens(user)).await?;
    let Reply::Tokens(tokens) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::TokenList {
        items: tokens.into_iter().map(convert::token).collect(),
    }))
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
        credential: principal.credential.to_string(),
        scopes: principal
            .scopes
            .iter()
            .map(|scope| scope.as_str().to_owned())
            .collect(),
        user: convert::user(principal.user),
    }))
}
