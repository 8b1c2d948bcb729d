//! The errors an action can end in. The server maps each variant to one HTTP status, once.

use std::fmt;

/// A value from outside that failed to parse: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request was malformed or out of bounds; nothing changed.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// No credential, or one that is unknown, expired or revoked.
    #[error("authentication required")]
    Unauthenticated,
    /// The caller may know the target exists but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Missing, or belonging to someone the caller may not see: the two are indistinguishable.
    #[error("{kind} not found")]
    NotFound { kind: &'static str },
    /// The target's state forbids this now (e.g. exec in a stopped environment, a taken name).
    #[error("{0}")]
    Conflict(String),
    /// The team's quota would be exceeded; deleting environments makes room.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The principal is over its rate limit; it may try again after `retry_after`.
    #[error("too many requests: try again in {} s", retry_after.as_secs_f64().ceil())]
    RateLimited { retry_after: std::time::Duration },
    /// The server is at a limit (its capacity, its queue of creates); the request was refused
    /// whole and may be retried after `retry_after`.
    #[error("{reason}")]
    Overloaded {
        reason: String,
        retry_after: std::time::Duration,
    },
    /// Something the server cannot do now.
    #[error("{0}")]
    Unavailable(String),
    /// The audit record of a privileged action could not be written, so the action was not
    /// done. The string (the store's error) goes to the log, never to the caller.
    #[error("the audit trail cannot be written: {0}")]
    AuditUnavailable(String),
    /// Something failed inside airlock; details go to the log, never to the caller.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn not_found(kind: &'static str) -> Self {
        Self::NotFound { kind }
    }

    pub fn internal(context: &str, error: impl fmt::Display) -> Self {
        Self::Internal(format!("{context}: {error}"))
    }

    /// Short, stable word for audit records and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Unauthenticated => "unauthenticated",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::Conflict(_) => "conflict",
            Error::QuotaExceeded(_) => "quota_exceeded",
            Error::RateLimited { .. } => "rate_limited",
            Error::Overloaded { .. } => "overloaded",
            Error::Unavailable(_) => "unavailable",
            Error::AuditUnavailable(_) => "audit_unavailable",
            Error::Internal(_) => "error",
        }
    }
}

impl From<crate::ports::StoreError> for Error {
    fn from(error: crate::ports::StoreError) -> Self {
        Error::internal("store", error)
    }
}

impl From<crate::ports::RuntimeError> for Error {
    fn from(error: crate::ports::RuntimeError) -> Self {
        match error {
            crate::ports::RuntimeError::NotRunning => {
                Error::Conflict("the environment is not running".into())
            }
            other => Error::internal("runtime", other),
        }
    }
}
