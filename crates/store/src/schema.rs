//! The schema, as an ordered list of migrations; the store applies the ones it has not yet.
//! Times are microseconds since the Unix epoch; lists are comma-separated words.

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id),
    secret_hash BLOB NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    description TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
);
CREATE TABLE environments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner_id TEXT NOT NULL REFERENCES users (id),
    image TEXT NOT NULL,
    memory_mib INTEGER NOT NULL,
    millicpus INTEGER NOT NULL,
    pids INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    failure TEXT
);
-- A name is unique among one owner's live environments; deleted and failed ones free it.
CREATE UNIQUE INDEX environments_live_name ON environments (owner_id, name)
    WHERE state NOT IN ('deleted', 'failed');
CREATE INDEX environments_by_owner ON environments (owner_id, id);
CREATE INDEX environments_by_state ON environments (state, id);
CREATE TABLE idempotency_keys (
    owner_id TEXT NOT NULL,
    key TEXT NOT NULL,
    environment_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (owner_id, key)
);
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    source TEXT,
    detail TEXT
);
"#,
    r#"
-- The writable layer's size and the network mode.
ALTER TABLE environments ADD COLUMN disk_mib INTEGER NOT NULL DEFAULT 4096;
ALTER TABLE environments ADD COLUMN network TEXT NOT NULL DEFAULT 'none';
"#,
];
