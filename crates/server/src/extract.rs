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

/// An authenticated caller. Absent, malformed, unknown, expired and revoked credentials all
/// end the same way: 401, audited. Tokens are accepted only in the `Authorization` header,
/// never in a query string (where logs and proxies would keep them).
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
        let result = match presented {
            Some(secret) => state.engine.authenticate(secret).await,
            None => Err(Error::Unauthenticated),
        };
        match result {
            Ok(principal) => Ok(Caller { principal, origin }),
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
        let request = Request::from_parts(parts, body);
        let error = match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => return Ok(Body(value)),
            Err(rejection) => rejection_error(&rejection),
        };
        state
            .engine
            .record_refusal(&origin, None, &action, &error.as_core())
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
