//! How the backends' failures become the port's `StoreError`, in the same words on SQLite and
//! on PostgreSQL.

use airlock_core::ports::StoreError;

pub(crate) fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

/// A stored record that does not decode into its domain type.
pub(crate) fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt record: {error}"))
}

/// `Duplicate(what)` where the write broke a unique constraint, else a backend error.
pub(crate) fn duplicate_or_backend(error: sqlx::Error, what: &'static str) -> StoreError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            StoreError::Duplicate(what)
        }
        _ => backend(error),
    }
}
