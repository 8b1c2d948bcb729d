//! Wire types of airlock's HTTP API (`/v1`), shared by the server and the CLI.
//!
//! These structs are the JSON contract and nothing else: the server converts them to and from
//! the core's domain types by hand, so the wire format can be versioned on its own. Request
//! bodies reject unknown fields, so a typo (or an attempt to set `owner`) is an error, not a
//! silently ignored key.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/environments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// A name unique among the caller's live environments: 1–63 of `a-z`, `0-9` and `-`,
    /// starting with a letter or digit. Generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The image the root filesystem comes from; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Limits of the sandbox; each absent field takes the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesRequest>,
    /// Lifetime from creation, in seconds; the server's default when absent. At its end the
    /// environment is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Stopped (files kept) after this many seconds without activity (commands, sessions,
    /// starts, lease renewals, reads); `0` never; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// `none` (loopback only, the default) or `egress` (outbound connections through NAT;
    /// the host, other environments, link-local and private addresses stay unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The team whose quota it counts against; the caller's only team when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Open the environment under this approved access request (the caller's own): it
    /// receives the profile's secrets and network, and is destroyed when the grant ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_request: Option<String>,
}

/// Requested limits of an environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// CPUs as a decimal, e.g. `0.5` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Size of the writable layer in MiB; a full disk is ENOSPC inside the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
}

/// Limits in force for an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resources {
    pub memory_mib: u64,
    pub cpus: f64,
    pub pids: u64,
    pub disk_mib: u64,
}

/// What a running environment uses now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Processes the kernel killed for exceeding the memory limit since the environment
    /// (re)started.
    pub oom_kills: u64,
    pub cpu_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// One environment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Environment {
    /// Opaque identifier, `env_` followed by a ULID.
    pub id: String,
    pub name: String,
    /// `creating`, `running`, `stopped`, `deleting`, `deleted` or `failed`.
    pub state: String,
    /// Id of the user who owns it.
    pub owner: String,
    pub image: String,
    pub resources: Resources,
    /// `none` or `egress`.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The access grant it was opened under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_request: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it is deleted, unless extended (`POST …/extend`).
    pub expires_at: DateTime<Utc>,
    /// The last start, lease renewal, command or read (commands and reads kept to the minute).
    pub last_activity_at: DateTime<Utc>,
    /// Stopped after this many seconds without activity (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    /// Why the environment failed, when `state` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Present when one running environment is read (`GET /v1/environments/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `POST /v1/environments/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendEnvironment {
    /// The new lifetime, from now; within the server's hard maximum from creation.
    pub ttl_seconds: u64,
}

/// A page of environments, newest last; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentList {
    pub items: Vec<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/environments/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments; the program is looked up in `PATH`.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Absolute working directory inside the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Text written to the command's standard input, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// What a finished command did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// The exit code, or 128 + the signal number when a signal ended it.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// True when stdout or stderr passed the output cap and was cut.
    pub truncated: bool,
    /// True when the timeout passed and the command's process tree was killed.
    pub timed_out: bool,
    /// True when the kernel killed a process of the environment for exceeding its memory
    /// limit while the command ran.
    #[serde(default)]
    pub oom_killed: bool,
    pub duration_ms: u64,
}

/// `POST /v1/users` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    /// Any of `admin`, `approver`, `developer` (the default), `auditor`, `viewer`, `ci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Names of existing teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<String>>,
}

/// `PATCH /v1/users/{id}` (admin): each present field replaces the user's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    /// True for a user made from an OIDC sign-in (roles and teams follow its groups).
    #[serde(default)]
    pub external: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub items: Vec<User>,
}

/// A team's limits over its live environments; an absent field is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_environments: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<f64>,
}

/// `POST /v1/teams` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Team {
    pub name: String,
    pub quota: Quota,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TeamList {
    pub items: Vec<Team>,
}

/// One secret of an access profile: where it appears inside (`env`, `file` or both) and
/// where the server reads it (`from_file` or `from_env`). Values never pass through the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileSecret {
    /// An environment variable of every command run in the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// An absolute path inside the environment, written read-only for root before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An absolute path on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_file: Option<String>,
    /// An environment variable of the server process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_env: Option<String>,
}

/// `POST /v1/access-profiles` (admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessProfile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The longest grant, counted from approval.
    pub max_duration_seconds: u64,
    /// Distinct approvers needed (1–10), never the requester.
    pub approvals_required: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ProfileSecret>,
    /// The network mode of environments opened with it: `none` (default) or `egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Who may request: `role:<role>`, `team:<name>`, `user:<id>`; `role:developer` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requesters: Option<Vec<String>>,
    /// Who may approve, same forms; `role:approver` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Vec<String>>,
}

/// An access profile as shown: where secrets appear, never their values or sources.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessProfile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub max_duration_seconds: u64,
    pub approvals_required: u32,
    /// Where each secret appears: `env:<VAR>` and/or `file:<path>`.
    pub secrets: Vec<String>,
    pub network: String,
    pub requesters: Vec<String>,
    pub approvers: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessProfileList {
    pub items: Vec<AccessProfile>,
}

/// `POST /v1/access-requests`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessRequest {
    pub profile: String,
    /// Why access is needed (3–1000 characters), kept in the record and the audit trail.
    pub reason: String,
    /// Asked length of the grant; the profile's maximum if longer.
    pub duration_seconds: u64,
}

/// `POST /v1/access-requests/{id}/deny` and `.../revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndAccess {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub approver: String,
    pub at: DateTime<Utc>,
}

/// An access request and, once approved, its grant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessRequest {
    /// `acr_` followed by a ULID.
    pub id: String,
    pub profile: String,
    pub requester: String,
    pub reason: String,
    /// `pending`, `approved` (the grant is active until `expires_at`), `denied`, `lapsed`,
    /// `expired` or `revoked`.
    pub state: String,
    /// Length of the grant from approval.
    pub duration_seconds: u64,
    pub approvals_required: u32,
    pub approvals: Vec<Approval>,
    pub created_at: DateTime<Utc>,
    /// When a pending request lapses.
    pub decide_by: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// A user id, or `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

/// A page of access requests, oldest first; pass `next_cursor` as `cursor` for the next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestList {
    pub items: Vec<AccessRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Whose token; the caller when absent. Only an admin may name another user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Subset of `read`, `write`, `access:request`, `access:approve`, `admin`; `read` and
    /// `write` when absent. A token never gets a scope the creating token lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// A label to recognise the token by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A rate limit of the token's own, `N/s`, `N/m` or `N/h` with an optional `:BURST`,
    /// applied on top of its user's (so it can only narrow it): e.g. `2/s:10` for a CI job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

/// A token as listed: never the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub user_id: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (to the minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its own rate limit (`N/s:BURST`), on top of its user's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub items: Vec<Token>,
}

/// A freshly issued token: the secret is shown here once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub info: Token,
    /// The bearer secret, `alk_…`.
    pub token: String,
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: User,
    /// The token's id, or `oidc:<subject>` for an OIDC bearer token.
    pub credential: String,
    pub scopes: Vec<String>,
}

/// An RFC 9457 problem document, the body of every error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, `urn:airlock:problem:<slug>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The request id, to find the server's log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// One session: a terminal, a streamed command or a port forward, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub id: String,
    pub environment_id: String,
    /// Who opened it.
    pub user_id: String,
    /// `terminal`, `exec` or `port_forward`.
    pub kind: String,
    /// The command; for a port forward, the port.
    pub argv: Vec<String>,
    pub started_at: DateTime<Utc>,
    /// Absent while it is open.
    pub ended_at: Option<DateTime<Utc>>,
    /// The command's exit code (128 + signal when killed); absent for port forwards and
    /// sessions whose end the server did not see.
    pub exit_code: Option<i32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whether `GET /v1/sessions/{id}/recording` has an asciicast v2 recording.
    pub recorded: bool,
}

/// A page of sessions, oldest first; pass `next_cursor` as `cursor` for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<Session>,
    pub next_cursor: Option<String>,
}

/// A file written into an environment (`PUT /v1/environments/{id}/files`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CopiedFile {
    pub path: String,
    pub size: u64,
}

/// A control message of a session's WebSocket, as JSON in a text frame. Data travels in
/// binary frames whose first byte names the stream: 0 stdin (client to server), 1 stdout,
/// 2 stderr (server to client); a port forward's frames are raw TCP bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionMessage {
    /// Server: the session is open.
    Started { session_id: String },
    /// Client: the terminal's new size.
    Resize { cols: u16, rows: u16 },
    /// Client: send a signal (`INT`, `TERM`, `KILL`, `HUP`, …) to the command.
    Signal { signal: String },
    /// Client: no more stdin.
    Eof,
    /// Server: the command ended; the socket closes after this.
    Exit { exit_code: i32, oom_killed: bool },
    /// Server: the session ended without an exit code (the environment went away, the
    /// server is shutting down); the socket closes after this.
    Closed { reason: String },
}

/// One event of the audit trail, with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Its place in the chain, from 1.
    pub index: u64,
    pub time: DateTime<Utc>,
    pub request_id: String,
    /// A user id, `anonymous` (no valid credential) or `system`.
    pub actor: String,
    /// An action name (`environment.create`) or, for a request refused before it became
    /// one, its method and path.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok`, `attempt` (a privileged action on record before it is done), or why it failed
    /// (`forbidden`, `not_found`, `unauthenticated`, `rate_limited`, …).
    pub outcome: String,
    /// The client's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The chain's hash up to and including this event (hex).
    pub hash: String,
}

/// A page of audit events in chain order; pass `next_cursor` as `cursor` for the next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventList {
    pub items: Vec<AuditEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
