//! airlock's durable state: the core's `Store` port implemented on SQLite (the embedded
//! default) and on PostgreSQL (for several server replicas), each with its own migrations.

mod postgres;
mod schema;
mod schema_postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
