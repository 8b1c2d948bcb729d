//! airlock's durable state: the core's `Store` port implemented on SQLite (embedded default).

mod schema;
mod sqlite;

pub use sqlite::SqliteStore;
