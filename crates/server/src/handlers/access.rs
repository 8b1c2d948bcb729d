//! Access handlers: profiles (admin) and requests — request, list, get, approve, deny, revoke.

use airlock_api as api;
use airlock_core::access::AccessState;
use airlock_core::action::ListAccessRequests;
use airlock_core::ids::{AccessRequestId, Name};
use airlock_core::{Action, Invalid, Reply};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::{Result, perform, refuse, unexpected};
use crate::AppState;
use crate::convert;
use crate::extract::{Body, Caller, OptionalBody};

/// Defines what an environment opened under a grant of this profile receives (admin).
#[utoipa::path(post, path = "/v1/access-profiles", tag = "access",
    request_body = api::CreateAccessProfile,
    responses((status = 201, body = api::AccessProfile), (status = 400, body = api::Problem), (status = 403, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn create_profile(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<api::CreateAccessProfile>,
) -> Result<(StatusCode, Json<api::AccessProfile>)> {
    let profile = match convert::new_profile(request) {
        Ok(profile) => profile,
        Err(invalid) => return Err(refuse(&state, &caller, "profile.create", invalid).await),
    };
    let reply = perform(&state, &caller, Action::CreateProfile(profile)).await?;
    let Reply::Profile(profile) = reply else {
        return Err(unexpected(reply));
    };
    Ok((StatusCode::CREATED, Json(convert::profile(profile))))
}

#[utoipa::path(get, path = "/v1/access-profiles", tag = "access",
    responses((status = 200, body = api::AccessProfileList), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_profiles(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<api::AccessProfileList>> {
    let reply = perform(&state, &caller, Action::ListProfiles).await?;
    let Reply::Profiles(profiles) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::AccessProfileList {
        items: profiles.into_iter().map(convert::profile).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/access-profiles/{name}", tag = "access",
    params(("name" = String, Path, description = "Profile name")),
    responses((status = 200, body = api::AccessProfile), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn get_profile(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<api::AccessProfile>> {
    let name = match Name::parse("name", &name) {
        Ok(name) => name,
        Err(invalid) => return Err(refuse(&state, &caller, "profile.get", invalid).await),
    };
    let reply = perform(&state, &caller, Action::GetProfile(name)).await?;
    let Reply::Profile(profile) = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(convert::profile(profile)))
}

/// Asks for access under a profile, with a reason; it waits for approval, and lapses if
/// nobody decides in time.
#[utoipa::path(post, path = "/v1/access-requests", tag = "access",
    request_body = api::CreateAccessRequest,
    responses((status = 201, body = api::AccessRequest), (status = 400, body = api::Problem), (status = 403, body = api::Problem), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn request_access(
    State(state): State<AppState>,
    caller: Caller,
    Body(request): Body<api::CreateAccessRequest>,
) -> Result<(StatusCode, Json<api::AccessRequest>)> {
    let request = match convert::new_access_request(request) {
        Ok(request) => request,
        Err(invalid) => return Err(refuse(&state, &caller, "access.request", invalid).await),
    };
    let reply = perform(&state, &caller, Action::RequestAccess(request)).await?;
    Ok((StatusCode::CREATED, Json(access_reply(reply)?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AccessListParams {
    /// Page size, 1 to 200 (default 50).
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only requests in this state.
    state: Option<String>,
    /// Everyone's requests (approvers, auditors, admins) instead of the caller's own.
    all: Option<bool>,
}

/// Lists access requests, oldest first: the caller's own, or everyone's with `all=true`.
/// Ended requests stay listed: who asked, why, who approved, when and how it ended.
#[utoipa::path(get, path = "/v1/access-requests", tag = "access", params(AccessListParams),
    responses((status = 200, body = api::AccessRequestList), (status = 400, body = api::Problem), (status = 403, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn list_access_requests(
    State(state): State<AppState>,
    caller: Caller,
    query: std::result::Result<Query<AccessListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::AccessRequestList>> {
    let action = "access.list";
    let parsed = match query {
        Err(rejection) => Err(Invalid::new("query", rejection.body_text())),
        Ok(Query(params)) => (|| {
            let after = params
                .cursor
                .as_deref()
                .map(|cursor| {
                    AccessRequestId::parse(cursor)
                        .map_err(|_| Invalid::new("cursor", "is not a cursor from a previous page"))
                })
                .transpose()?;
            let state = params
                .state
                .as_deref()
                .map(|state| {
                    AccessState::parse(state)
                        .ok_or_else(|| Invalid::new("state", format!("{state:?} is not a state")))
                })
                .transpose()?;
            Ok(ListAccessRequests {
                all: params.all.unwrap_or(false),
                state,
                after,
                limit: params.limit,
            })
        })(),
    };
    let query = match parsed {
        Ok(query) => query,
        Err(invalid) => return Err(refuse(&state, &caller, action, invalid).await),
    };
    let reply = perform(&state, &caller, Action::ListAccessRequests(query)).await?;
    let Reply::AccessRequests { items, next } = reply else {
        return Err(unexpected(reply));
    };
    Ok(Json(api::AccessRequestList {
        items: items.into_iter().map(convert::access_request).collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

#[utoipa::path(get, path = "/v1/access-requests/{id}", tag = "access",
    params(("id" = String, Path, description = "Access request id")),
    responses((status = 200, body = api::AccessRequest), (status = 404, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn get_access_request(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::AccessRequest>> {
    let id = request_id(&state, &caller, "access.get", &id).await?;
    let reply = perform(&state, &caller, Action::GetAccessRequest(id)).await?;
    Ok(Json(access_reply(reply)?))
}

/// Approves a pending request. A second approval by the same person counts once; the
/// approval that reaches the profile's number starts the grant. Never the requester's own.
#[utoipa::path(post, path = "/v1/access-requests/{id}/approve", tag = "access",
    params(("id" = String, Path, description = "Access request id")),
    responses((status = 200, body = api::AccessRequest), (status = 403, body = api::Problem), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn approve_access(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::AccessRequest>> {
    let id = request_id(&state, &caller, "access.approve", &id).await?;
    let reply = perform(&state, &caller, Action::ApproveAccess(id)).await?;
    Ok(Json(access_reply(reply)?))
}

#[utoipa::path(post, path = "/v1/access-requests/{id}/deny", tag = "access",
    params(("id" = String, Path, description = "Access request id")),
    request_body = Option<api::EndAccess>,
    responses((status = 200, body = api::AccessRequest), (status = 403, body = api::Problem), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn deny_access(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<api::EndAccess>,
) -> Result<Json<api::AccessRequest>> {
    let id = request_id(&state, &caller, "access.deny", &id).await?;
    let reason = body.and_then(|end| end.reason);
    let reply = perform(&state, &caller, Action::DenyAccess { id, reason }).await?;
    Ok(Json(access_reply(reply)?))
}

/// Ends an active grant now: every environment opened under it is destroyed, its sessions
/// killed and its secrets removed, before this answers.
#[utoipa::path(post, path = "/v1/access-requests/{id}/revoke", tag = "access",
    params(("id" = String, Path, description = "Access request id")),
    request_body = Option<api::EndAccess>,
    responses((status = 200, body = api::AccessRequest), (status = 403, body = api::Problem), (status = 404, body = api::Problem), (status = 409, body = api::Problem)),
    security(("bearer" = [])))]
pub async fn revoke_access(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalBody(body): OptionalBody<api::EndAccess>,
) -> Result<Json<api::AccessRequest>> {
    let id = request_id(&state, &caller, "access.revoke", &id).await?;
    let reason = body.and_then(|end| end.reason);
    let reply = perform(&state, &caller, Action::RevokeAccess { id, reason }).await?;
    Ok(Json(access_reply(reply)?))
}

async fn request_id(
    state: &AppState,
    caller: &Caller,
    action: &str,
    text: &str,
) -> Result<AccessRequestId> {
    match AccessRequestId::parse(text) {
        Ok(id) => Ok(id),
        Err(_) => Err(refuse(
            state,
            caller,
            action,
            Invalid::new("id", format!("{text:?} is not an access request id")),
        )
        .await),
    }
}

fn access_reply(reply: Reply) -> Result<api::AccessRequest> {
    match reply {
        Reply::AccessRequest(request) => Ok(convert::access_request(request)),
        other => Err(unexpected(other)),
    }
}
