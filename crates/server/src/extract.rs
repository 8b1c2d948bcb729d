//! Request extractors: who is calling (`Caller`), and a JSON body whose refusal is a problem
//! document and an audit record (`Body`).

use std::net::SocketAddr;

use airlock_core::model::Principal;
use airlock_core::{Error, Origin};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};

use crate::AppState;
use crate::error::ApiError;
use crate::oidc_auth::OidcAuthenticator;

/// The request id given to each request by the middleware in `lib.rs`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Where the request came from, for audit records.
pub fn origin(parts: &Parts) -> Origin {
    Origin {
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default(),
        source: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip().to_string()),
    }
}

/// An authenticated caller, by an airlock API token or (when configured) an OIDC JWT. Absent,
/// malformed, unknown, expired, revoked, forged and tampered credentials all end the same
/// way: 401 with `WWW-Authenticate`, audited. Credentials are accepted only in the
/// `Authorization` header, never in a query string (where logs and proxies would keep them).
pub struct Caller {
    pub principal: Principal,
    pub origin: Origin,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let origin = origin(parts);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let result = match (presented, &state.oidc) {
            (Some(token), Some(oidc)) if OidcAuthenticator::accepts(token) => {
                oidc.authenticate(&state.engine, token).await
            }
            (Some(secret), _) => state.engine.authenticate(secret).await,
            (None, _) => Err(Error::Unauthenticated),
        };
        match result {
            Ok(principal) => {
                // For the record of a body refused after this (see `Body`).
                parts.extensions.insert(principal.clone());
                Ok(Caller { principal, origin })
            }
            Err(error) => {
                let action = format!("{} {}", parts.method, parts.uri.path());
                state
                    .engine
                    .record_refusal(&origin, None, &action, &error)
                    .await;
                Err(error.into())
            }
        }
    }
}

/// A JSON request body; an unreadable one is refused with a problem document and audited.
pub struct Body<T>(pub T);

impl<T> FromRequest<AppState> for Body<T>
where
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let origin = origin(&parts);
        let action = format!("{} {}", parts.method, parts.uri.path());
        // The caller, when it was authenticated before the body was read.
        let actor = parts.extensions.get::<Principal>().cloned();
        let request = Request::from_parts(parts, body);
        let error = match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => return Ok(Body(value)),
            Err(rejection) => rejection_error(&rejection),
        };
        state
            .engine
            .record_refusal(&origin, actor.as_ref(), &action, &error.as_core())
            .await;
        Err(error)
    }
}

fn rejection_error(rejection: &JsonRejection) -> ApiError {
    let status = rejection.status();
    let slug = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        _ => "invalid-body",
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::Rejected {
        status,
        slug,
        detail: rejection.body_text(),
    }
}

/// A JSON request body that may be absent (an empty body); a present, unreadable one is
/// refused like [`Body`].
pub struct OptionalBody<T>(pub Option<T>);

impl<T> FromRequest<AppState> for OptionalBody<T>
where
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let empty = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length == "0")
            || (request.headers().get(header::CONTENT_LENGTH).is_none()
                && request.headers().get(header::TRANSFER_ENCODING).is_none());
        if empty {
            return Ok(OptionalBody(None));
        }
        let Body(value) = Body::<T>::from_request(request, state).await?;
        Ok(OptionalBody(Some(value)))
    }
}
