//! airlock's durable state: the core's `Store` port implemented on SQLite (the embedded
//! default) and on PostgreSQL (for several server replicas), each with its own migrations and
//! SQL, sharing how records are stored as columns (`records`), how errors are reported
//! (`error`) and the quota's arithmetic (`quota`).

mod error;
mod postgres;
mod quota;
mod records;
mod schema;
mod schema_postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
