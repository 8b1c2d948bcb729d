//! The OpenAPI 3.1 document, generated from the handlers' annotations and the wire types.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(title = "airlock", description = "Isolated development environments and time-boxed production access."),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::metrics,
        handlers::create_environment,
        handlers::list_environments,
        handlers::get_environment,
        handlers::delete_environment,
        handlers::stop_environment,
        handlers::start_environment,
        handlers::exec,
        handlers::extend_environment,
        handlers::renew_lease,
        handlers::create_user,
        handlers::list_users,
        handlers::update_user,
        handlers::create_team,
        handlers::list_teams,
        handlers::set_quota,
        handlers::create_token,
        handlers::list_tokens,
        handlers::revoke_token,
        handlers::whoami,
        handlers::create_profile,
        handlers::list_profiles,
        handlers::get_profile,
        handlers::request_access,
        handlers::list_access_requests,
        handlers::get_access_request,
        handlers::approve_access,
        handlers::deny_access,
        handlers::revoke_access,
        handlers::exec_stream,
        handlers::port_forward,
        handlers::copy_out,
        handlers::copy_in,
        handlers::proxy,
        handlers::list_sessions,
        handlers::get_session,
        handlers::get_recording,
        handlers::list_audit,
    ),
    components(schemas(airlock_api::SessionMessage)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_and_names_every_route() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
        for path in [
            "/v1/environments",
            "/v1/environments/{id}/exec",
            "/v1/tokens/{id}",
            "/v1/teams/{name}/quota",
            "/v1/access-requests/{id}/approve",
            "/v1/environments/{id}/exec/stream",
            "/v1/environments/{id}/files",
            "/v1/sessions/{id}/recording",
            "/v1/audit",
            "/healthz",
        ] {
            assert!(document["paths"].get(path).is_some(), "{path} missing");
        }
        assert!(document["components"]["schemas"].get("Problem").is_some());
    }
}
