//! The schema on PostgreSQL, as an ordered list of migrations; the store applies the ones it has
//! not yet, under an advisory lock. The same logical tables and columns as SQLite's schema
//! (`schema.rs`), which changes along with this one: times are microseconds since the Unix
//! epoch (BIGINT), hashes BYTEA, lists comma-separated words. Identifiers and names compare
//! bytewise (`COLLATE "C"`), as on SQLite, so that `ORDER BY` and `id > $1` pagination do not
//! depend on the database's locale. It starts at SQLite's current schema; the version numbers
//! of the two lists are independent.

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    roles TEXT NOT NULL,
    teams TEXT NOT NULL DEFAULT '',
    external_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_by_external_id ON users (external_id) WHERE external_id IS NOT NULL;
CREATE TABLE tokens (
    id TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    secret_hash BYTEA NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    description TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE INDEX tokens_by_user ON tokens (user_id, id);
CREATE TABLE teams (
    name TEXT COLLATE "C" PRIMARY KEY,
    max_environments BIGINT,
    max_memory_mib BIGINT,
    max_millicpus BIGINT,
    created_at BIGINT NOT NULL
);
CREATE TABLE environments (
    id TEXT COLLATE "C" PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    owner_id TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    image TEXT NOT NULL,
    memory_mib BIGINT NOT NULL,
    millicpus BIGINT NOT NULL,
    pids BIGINT NOT NULL,
    disk_mib BIGINT NOT NULL DEFAULT 4096,
    network TEXT NOT NULL DEFAULT 'none',
    team TEXT COLLATE "C",
    access_request TEXT COLLATE "C",
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    failure TEXT
);
-- A name is unique among one owner's live environments; deleted and failed ones free it.
CREATE UNIQUE INDEX environments_live_name ON environments (owner_id, name)
    WHERE state NOT IN ('deleted', 'failed');
CREATE INDEX environments_by_owner ON environments (owner_id, id);
CREATE INDEX environments_by_state ON environments (state, id);
CREATE INDEX environments_by_team ON environments (team, state);
CREATE INDEX environments_by_grant ON environments (access_request) WHERE access_request IS NOT NULL;
CREATE TABLE idempotency_keys (
    owner_id TEXT COLLATE "C" NOT NULL,
    key TEXT NOT NULL,
    environment_id TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner_id, key)
);
CREATE TABLE audit_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    source TEXT,
    detail TEXT
);
-- Temporary production access. A profile's rules are one JSON document (`rules`).
CREATE TABLE access_profiles (
    name TEXT COLLATE "C" PRIMARY KEY,
    rules TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE access_requests (
    id TEXT COLLATE "C" PRIMARY KEY,
    profile TEXT COLLATE "C" NOT NULL REFERENCES access_profiles (name),
    requester_id TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    reason TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    approvals_required BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    decide_by BIGINT NOT NULL,
    granted_at BIGINT,
    expires_at BIGINT,
    ended_at BIGINT,
    ended_by TEXT,
    end_reason TEXT
);
CREATE INDEX access_requests_by_state ON access_requests (state, id);
CREATE INDEX access_requests_by_requester ON access_requests (requester_id, id);
CREATE TABLE access_approvals (
    request_id TEXT COLLATE "C" NOT NULL REFERENCES access_requests (id),
    approver_id TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    at BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver_id)
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE environments ADD COLUMN last_activity_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN idle_timeout_ms BIGINT;
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
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    exit_code BIGINT,
    bytes_in BIGINT NOT NULL DEFAULT 0,
    bytes_out BIGINT NOT NULL DEFAULT 0,
    recorded BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_by_environment ON sessions (environment_id, id);
CREATE INDEX sessions_by_user ON sessions (user_id, id);
CREATE INDEX sessions_open ON sessions (id) WHERE ended_at IS NULL;
"#,
    r#"
-- The audit trail's hash chain, as on SQLite.
ALTER TABLE audit_events ADD COLUMN chain_index BIGINT;
ALTER TABLE audit_events ADD COLUMN hash BYTEA;
CREATE UNIQUE INDEX audit_events_by_index ON audit_events (chain_index);
CREATE INDEX audit_events_by_actor ON audit_events (actor, chain_index);
CREATE INDEX audit_events_by_target ON audit_events (target, chain_index);
"#,
    r#"
-- A token's own rate limit, as on SQLite.
ALTER TABLE tokens ADD COLUMN rate_limit TEXT;
"#,
];
