//! The one mapping from errors to HTTP: every error leaves as an RFC 9457 problem document with
//! a stable `type`. Client errors say what was wrong; internal errors say nothing more than
//! that, and are logged (with the request id of the surrounding span).

use airlock_api::Problem;
use airlock_core::Error;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a privileged action was refused when its audit record could not be written.
const UNRECORDED: &str =
    "the audit trail cannot be written now, so nothing was changed; try again later";

#[derive(Debug)]
pub enum ApiError {
    /// An error of the core, from an action or from authentication.
    Core(Error),
    /// A request refused before it could become an action (unreadable body, wrong media type,
    /// unknown route), with the status the refusal calls for.
    Rejected {
        status: StatusCode,
        slug: &'static str,
        detail: String,
    },
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::Core(error)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Core(error) => match error {
                Error::Invalid(_) => StatusCode::BAD_REQUEST,
                Error::Unauthenticated => StatusCode::UNAUTHORIZED,
                Error::Forbidden(_) | Error::QuotaExceeded(_) => StatusCode::FORBIDDEN,
                Error::NotFound { .. } => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::Overloaded { .. } | Error::Unavailable(_) | Error::AuditUnavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Rejected { status, .. } => *status,
        }
    }

    /// How long a refused client should wait (429 and 503).
    fn retry_after(&self) -> std::time::Duration {
        match self {
            ApiError::Core(
                Error::RateLimited { retry_after } | Error::Overloaded { retry_after, .. },
            ) => *retry_after,
            _ => std::time::Duration::from_secs(1),
        }
    }

    /// The core error this stands for, for the audit trail.
    pub fn as_core(&self) -> Error {
        match self {
            ApiError::Core(error) => error.clone(),
            ApiError::Rejected { status, .. } if *status == StatusCode::NOT_FOUND => {
                Error::NotFound { kind: "route" }
            }
            ApiError::Rejected { detail, .. } => {
                Error::Invalid(airlock_core::Invalid::new("request", detail.clone()))
            }
        }
    }

    fn problem(&self) -> (&'static str, &'static str, Option<String>) {
        match self {
            ApiError::Core(error) => match error {
                Error::Invalid(invalid) => (
                    "invalid-request",
                    "The request is invalid",
                    Some(invalid.to_string()),
                ),
                Error::Unauthenticated => (
                    "unauthenticated",
                    "Authentication required",
                    Some("send a valid token as `Authorization: Bearer <token>`".into()),
                ),
                Error::Forbidden(text) => ("forbidden", "Not allowed", Some(text.clone())),
                Error::QuotaExceeded(text) => (
                    "quota-exceeded",
                    "The team's quota is used up",
                    Some(text.clone()),
                ),
                Error::NotFound { kind } => {
                    ("not-found", "Not found", Some(format!("{kind} not found")))
                }
                Error::Conflict(text) => (
                    "conflict",
                    "Conflict with the current state",
                    Some(text.clone()),
                ),
                Error::RateLimited { .. } => {
                    ("rate-limited", "Too many requests", Some(error.to_string()))
                }
                Error::Overloaded { reason, .. } => (
                    "overloaded",
                    "The server is at capacity",
                    Some(reason.clone()),
                ),
                Error::Unavailable(text) => {
                    ("unavailable", "Temporarily unavailable", Some(text.clone()))
                }
                Error::AuditUnavailable(text) => {
                    tracing::error!(error = %text, "the audit trail cannot be written");
                    (
                        "audit-unavailable",
                        "Not on record, not done",
                        Some(UNRECORDED.into()),
                    )
                }
                Error::Internal(text) => {
                    tracing::error!(error = %text, "internal error");
                    ("internal", "Internal error", None)
                }
            },
            ApiError::Rejected { slug, detail, .. } => {
                (slug, "The request was refused", Some(detail.clone()))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let outcome = crate::metrics::Outcome(self.as_core().outcome());
        let (slug, title, detail) = self.problem();
        let retry_after_seconds = self.retry_after().as_secs_f64().ceil().max(1.0) as u64;
        let body = Problem {
            kind: format!("urn:airlock:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            instance: None,
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(outcome);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"airlock\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            }
            _ => {}
        }
        response
    }
}
