//! airlock's HTTP server, the only crate that knows HTTP: routes, the error mapping, the
//! OpenAPI document, and start-up (store, runtime, first admin, reconciliation, serving).

pub mod alerts;
pub mod checkpoints;
mod convert;
mod error;
mod extract;
mod handlers;
pub mod metrics;
mod oidc;
mod oidc_auth;
mod openapi;
mod secrets;
mod sessions;
mod startup;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use airlock_core::Engine;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post, put};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tracing::Instrument;

pub use alerts::{AlertConfig, Thresholds, WebhookSecret};
pub use metrics::{Metrics, OpenSession};
pub use oidc_auth::OidcSettings;
pub use sessions::SessionLimits;
pub use startup::{ServerConfig, Started, purge, run, start};

use crate::error::ApiError;
use crate::extract::RequestId;

/// Largest request body accepted: an exec's stdin up to the 1 MiB input limit, JSON-escaped.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Set when bearer JWTs of an OIDC issuer are accepted.
    pub oidc: Option<Arc<oidc_auth::OidcAuthenticator>>,
    /// The sessions being relayed, and where their recordings go.
    pub sessions: Arc<sessions::Sessions>,
    /// The server's metrics; interactive sessions report themselves here
    /// ([`Metrics::session_opened`]).
    pub metrics: Arc<Metrics>,
}

/// The whole HTTP surface.
pub fn build_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .route(
            "/v1/environments",
            post(handlers::create_environment).get(handlers::list_environments),
        )
        .route(
            "/v1/environments/{id}",
            get(handlers::get_environment).delete(handlers::delete_environment),
        )
        .route(
            "/v1/environments/{id}/stop",
            post(handlers::stop_environment),
        )
        .route(
            "/v1/environments/{id}/start",
            post(handlers::start_environment),
        )
        .route("/v1/environments/{id}/exec", post(handlers::exec))
        .route(
            "/v1/environments/{id}/extend",
            post(handlers::extend_environment),
        )
        .route("/v1/environments/{id}/lease", post(handlers::renew_lease))
        .route(
            "/v1/users",
            post(handlers::create_user).get(handlers::list_users),
        )
        .route("/v1/users/{id}", patch(handlers::update_user))
        .route(
            "/v1/teams",
            post(handlers::create_team).get(handlers::list_teams),
        )
        .route("/v1/teams/{name}/quota", put(handlers::set_quota))
        .route(
            "/v1/tokens",
            post(handlers::create_token).get(handlers::list_tokens),
        )
        .route("/v1/tokens/{id}", delete(handlers::revoke_token))
        .route(
            "/v1/access-profiles",
            post(handlers::create_profile).get(handlers::list_profiles),
        )
        .route("/v1/access-profiles/{name}", get(handlers::get_profile))
        .route(
            "/v1/access-requests",
            post(handlers::request_access).get(handlers::list_access_requests),
        )
        .route(
            "/v1/access-requests/{id}",
            get(handlers::get_access_request),
        )
        .route(
            "/v1/access-requests/{id}/approve",
            post(handlers::approve_access),
        )
        .route("/v1/access-requests/{id}/deny", post(handlers::deny_access))
        .route(
            "/v1/access-requests/{id}/revoke",
            post(handlers::revoke_access),
        )
        .route("/v1/whoami", get(handlers::whoami))
        .route(
            "/v1/environments/{id}/exec/stream",
            get(handlers::exec_stream),
        )
        .route(
            "/v1/environments/{id}/ports/{port}/forward",
            get(handlers::port_forward),
        )
        .route(
            "/v1/environments/{id}/files",
            get(handlers::copy_out).put(handlers::copy_in),
        )
        .route("/v1/environments/{id}/proxy/{port}", any(handlers::proxy))
        .route("/v1/environments/{id}/proxy/{port}/", any(handlers::proxy))
        .route(
            "/v1/environments/{id}/proxy/{port}/{*path}",
            any(handlers::proxy),
        )
        .route("/v1/sessions", get(handlers::list_sessions))
        .route("/v1/sessions/{id}", get(handlers::get_session))
        .route("/v1/sessions/{id}/recording", get(handlers::get_recording))
        .route("/v1/audit", get(handlers::list_audit))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// The operator's plain Prometheus target (`--metrics-listen`): `GET /metrics` without a
/// credential, and nothing else. Reads counts; changes nothing.
pub fn build_metrics_app(engine: Arc<Engine>, metrics: Arc<Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || async move {
            match engine.state_counts().await {
                Ok(counts) => metrics::page(metrics.render(&counts, &engine.admission())),
                Err(error) => {
                    tracing::error!(%error, "reading counts for /metrics");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Without TCP_NODELAY a session's second small frame waits for the client's delayed ACK
    // of the first (40 ms); every frame is flushed on purpose, so Nagle only adds latency.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Gives every request an id (in the `x-request-id` response header, the log span and the
/// audit record).
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn not_found(State(state): State<AppState>, request: Request) -> Response {
    refuse_route(
        &state,
        request,
        StatusCode::NOT_FOUND,
        "not-found",
        "no such route",
    )
    .await
}

async fn method_not_allowed(State(state): State<AppState>, request: Request) -> Response {
    refuse_route(
        &state,
        request,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this route does not take that method",
    )
    .await
}

async fn refuse_route(
    state: &AppState,
    request: Request,
    status: StatusCode,
    slug: &'static str,
    detail: &str,
) -> Response {
    let (parts, _) = request.into_parts();
    let origin = extract::origin(&parts);
    let error = ApiError::Rejected {
        status,
        slug,
        detail: detail.into(),
    };
    let action = format!("{} {}", parts.method, parts.uri.path());
    state
        .engine
        .record_refusal(&origin, None, &action, &error.as_core())
        .await;
    error.into_response()
}
