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
    r#"
-- Identity: teams with quotas, users' teams and OIDC subjects, tokens' last use.
ALTER TABLE users ADD COLUMN teams TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN external_id TEXT;
CREATE UNIQUE INDEX users_by_external_id ON users (external_id) WHERE external_id IS NOT NULL;
ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
CREATE INDEX tokens_by_user ON tokens (user_id, id);
CREATE TABLE teams (
    name TEXT PRIMARY KEY,
    max_environments INTEGER,
    max_memory_mib INTEGER,
    max_millicpus INTEGER,
    created_at INTEGER NOT NULL
);
ALTER TABLE environments ADD COLUMN team TEXT;
ALTER TABLE environments ADD COLUMN access_request TEXT;
CREATE INDEX environments_by_team ON environments (team, state);
CREATE INDEX environments_by_grant ON environments (access_request) WHERE access_request IS NOT NULL;
-- Temporary production access. A profile's rules are one JSON document (`rules`).
CREATE TABLE access_profiles (
    name TEXT PRIMARY KEY,
    rules TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    profile TEXT NOT NULL REFERENCES access_profiles (name),
    requester_id TEXT NOT NULL REFERENCES users (id),
    reason TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    approvals_required INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    decide_by INTEGER NOT NULL,
    granted_at INTEGER,
    expires_at INTEGER,
    ended_at INTEGER,
    ended_by TEXT,
    end_reason TEXT
);
CREATE INDEX access_requests_by_state ON access_requests (state, id);
CREATE INDEX access_requests_by_requester ON access_requests (requester_id, id);
CREATE TABLE access_approvals (
    request_id TEXT NOT NULL REFERENCES access_requests (id),
    approver_id TEXT NOT NULL REFERENCES users (id),
    at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver_id)
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
-- Lifecycle: the last activity and the idle timeout.
ALTER TABLE environments ADD COLUMN last_activity_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN idle_timeout_ms INTEGER;
UPDATE environments SET last_activity_at = updated_at;
CREATE INDEX environments_by_expiry ON environments (expires_at)
    WHERE state IN ('running', 'stopped', 'failed');
"#,
    r#"
-- Sessions: shells, streamed commands and port forwards.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    argv TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    exit_code INTEGER,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    recorded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_environment ON sessions (environment_id, id);
CREATE INDEX sessions_by_user ON sessions (user_id, id);
CREATE INDEX sessions_open ON sessions (id) WHERE ended_at IS NULL;
"#,
    r#"
-- The audit trail's hash chain: each event's place in it (from 1) and the chain's hash up to
-- and including it. Events written before have neither until the server chains them at start.
ALTER TABLE audit_events ADD COLUMN chain_index INTEGER;
ALTER TABLE audit_events ADD COLUMN hash BLOB;
CREATE UNIQUE INDEX audit_events_by_index ON audit_events (chain_index);
CREATE INDEX audit_events_by_actor ON audit_events (actor, chain_index);
CREATE INDEX audit_events_by_target ON audit_events (target, chain_index);
"#,
    r#"
-- A token's own rate limit (`N/s:BURST`), on top of its user's.
ALTER TABLE tokens ADD COLUMN rate_limit TEXT;
"#,
];
