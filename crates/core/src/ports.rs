//! The narrow traits through which the core reaches the world: the store, the sandbox runtime
//! and the clock. Each has a real implementation elsewhere and a faithful fake for unit tests.

use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::access::{
    AccessProfile, AccessRequest, AccessState, Approved, SandboxFile, SecretSource, SecretValue,
};
use crate::audit::{ChainHead, ChainedEvent};
use crate::ids::{AccessRequestId, EnvironmentId, Name, SessionId, TokenId, UserId};
use crate::model::{
    AuditEvent, EnvState, Environment, ExecOutput, ExecSpec, NetworkMode, Quota, Resources, Team,
    TokenRecord, Usage, User,
};
use crate::session::{Session, Signal, TerminalSize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit; the string names it (e.g. `environment name`).
    #[error("{0} already exists")]
    Duplicate(&'static str),
    #[error("{0}")]
    Backend(String),
}

/// Which sessions to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionQuery {
    pub environment: Option<EnvironmentId>,
    pub user: Option<UserId>,
    pub after: Option<SessionId>,
    pub limit: u32,
}

/// The outcome of recording a new environment under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    Created,
    /// The key was used before by the same owner, for this environment, with this fingerprint.
    Replayed {
        environment: EnvironmentId,
        fingerprint: String,
    },
    /// The team's quota would be exceeded; the string says which limit. Nothing was written.
    OverQuota(String),
    /// The host's capacity would be exceeded; the string says which limit. Nothing was written.
    OverCapacity(String),
}

/// The outcome of taking a warm sandbox from a pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// The pooled environment is now this one.
    Taken(Box<Environment>),
    /// No warm sandbox of that shape is ready.
    Empty,
    /// What an insert would have answered instead: a replay or a refusal; nothing changed.
    AsInsert(Inserted),
}

/// What a new environment must fit in, counted over live environments (not deleted or
/// failed) in the same transaction as the insert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ceilings {
    /// Its team's quota.
    pub team: Option<Quota>,
    /// What the host may give, over every environment.
    pub host: Option<Quota>,
}

/// Durable state. Every method is atomic on its own.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    async fn find_external_user(&self, external_id: &str) -> Result<Option<User>, StoreError>;
    /// Users in id order after `after`.
    async fn list_users(&self, after: Option<&UserId>, limit: u32)
    -> Result<Vec<User>, StoreError>;
    /// Replaces a user's roles and teams; false if there is no such user.
    async fn update_user(&self, user: &User) -> Result<bool, StoreError>;
    async fn count_users(&self) -> Result<u64, StoreError>;

    async fn insert_team(&self, team: &Team) -> Result<(), StoreError>;
    async fn get_team(&self, name: &Name) -> Result<Option<Team>, StoreError>;
    async fn list_teams(&self) -> Result<Vec<Team>, StoreError>;
    /// Sets a team's quota; false if there is no such team.
    async fn set_quota(&self, name: &Name, quota: &Quota) -> Result<bool, StoreError>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    async fn get_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError>;
    /// The token with this secret hash and its user, whatever the token's expiry or revocation.
    async fn find_token(
        &self,
        secret_hash: &[u8; 32],
    ) -> Result<Option<(TokenRecord, User)>, StoreError>;
    /// Marks the token revoked; false if it was unknown or already revoked.
    async fn revoke_token(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError>;
    async fn list_tokens(&self, user: &UserId) -> Result<Vec<TokenRecord>, StoreError>;
    async fn touch_token(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a new environment. With an idempotency key, either the key is claimed with the
    /// environment in one transaction, or the earlier claim is returned and nothing is written.
    /// A replay wins over the ceilings. Then the environment's team's live environments (not
    /// deleted or failed) are counted against its quota, and all live environments against
    /// the host's capacity, in the same transaction: nothing is written if this one would
    /// exceed either.
    async fn insert_environment(
        &self,
        environment: &Environment,
        idempotency: Option<(&str, &str)>,
        ceilings: &Ceilings,
    ) -> Result<Inserted, StoreError>;
    /// Hands a warm sandbox over: the oldest running environment of `pool_owner` with the
    /// image, resources and network of `taking` becomes `taking` (keeping its id; owner, name,
    /// team, times from `taking`), under the idempotency and team-quota rules of an insert, in
    /// one transaction. A pooled sandbox counts against the host already.
    async fn claim_pooled(
        &self,
        pool_owner: &UserId,
        taking: &Environment,
        idempotency: Option<(&str, &str)>,
        ceilings: &Ceilings,
    ) -> Result<Claimed, StoreError>;
    async fn get_environment(&self, id: &EnvironmentId) -> Result<Option<Environment>, StoreError>;
    /// Environments in id (creation) order after `after`, optionally only one owner's, one
    /// name's, and only in some states.
    async fn list_environments(
        &self,
        query: &EnvironmentQuery,
    ) -> Result<Vec<Environment>, StoreError>;
    /// Moves an environment to `to` if it is in one of `from`; returns the new record, or
    /// `None` when it was not in one of those states.
    async fn transition(
        &self,
        id: &EnvironmentId,
        from: &[EnvState],
        to: EnvState,
        at: DateTime<Utc>,
        failure: Option<&str>,
    ) -> Result<Option<Environment>, StoreError>;

    async fn insert_profile(&self, profile: &AccessProfile) -> Result<(), StoreError>;
    async fn get_profile(&self, name: &Name) -> Result<Option<AccessProfile>, StoreError>;
    async fn list_profiles(&self) -> Result<Vec<AccessProfile>, StoreError>;

    async fn insert_access_request(&self, request: &AccessRequest) -> Result<(), StoreError>;
    async fn get_access_request(
        &self,
        id: &AccessRequestId,
    ) -> Result<Option<AccessRequest>, StoreError>;
    /// Requests in id (creation) order after `after`.
    async fn list_access_requests(
        &self,
        query: &AccessQuery,
    ) -> Result<Vec<AccessRequest>, StoreError>;
    /// Counts `approver`'s approval of a pending request, in one transaction: a second
    /// approval by the same person changes nothing; the one that reaches the required number
    /// makes the request `approved`, from `at` for its duration.
    async fn approve_access(
        &self,
        id: &AccessRequestId,
        approver: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Option<Approved>, StoreError>;
    /// Ends a request that is in `from`: denied, lapsed, expired or revoked, by whom and why.
    /// `None` when it was not in one of those states.
    async fn end_access(
        &self,
        id: &AccessRequestId,
        from: AccessState,
        to: AccessState,
        at: DateTime<Utc>,
        by: &str,
        reason: &str,
    ) -> Result<Option<AccessRequest>, StoreError>;

    /// How many environments are in each state, every state listed (zero included), in
    /// [`EnvState::ALL`] order. For metrics.
    async fn count_environments_by_state(&self) -> Result<Vec<(EnvState, u64)>, StoreError>;
    /// How many access requests are in each state, every state listed (zero included), in
    /// [`AccessState::ALL`] order. For metrics: `approved` ones are the active grants.
    async fn count_access_requests_by_state(&self) -> Result<Vec<(AccessState, u64)>, StoreError>;

    /// A small durable value by name (e.g. the latest time the engine has seen).
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;

    /// Records activity in an environment at `at` (never moving it back).
    async fn touch_environment(
        &self,
        id: &EnvironmentId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Sets a live environment's expiry; the new record, or `None` if it is not live.
    async fn set_expiry(
        &self,
        id: &EnvironmentId,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Environment>, StoreError>;
    /// Environments due at `now`, in id order: live ones (running, stopped, failed) past their
    /// expiry, and running ones idle past their timeout.
    async fn due_environments(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Environment>, StoreError>;

    // ---- sessions ----
    async fn insert_session(&self, session: &Session) -> Result<(), StoreError>;
    /// Records how a session ended (once: a session already ended is left as it is).
    async fn end_session(&self, ended: &Session) -> Result<(), StoreError>;
    async fn get_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;
    /// Sessions in id (start) order after `after`, of one environment and/or one user.
    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<Session>, StoreError>;
    /// Ends, at `at`, every session still open (at start: those of a server that died); the
    /// sessions so ended.
    async fn end_open_sessions(&self, at: DateTime<Utc>) -> Result<Vec<Session>, StoreError>;
    /// Appends `events` to the audit trail's hash chain, in order, in one transaction: each
    /// gets the next index and the chain's hash there ([`ChainHead::next`]), continuing from
    /// the last chained event as read under the database's write lock, so that appends from
    /// several servers sharing a database still form one chain. The new head; nothing is
    /// written when it fails.
    async fn append_audit(&self, events: &[AuditEvent]) -> Result<ChainHead, StoreError>;
    /// Chains the events that have no place in the chain yet (written by an airlock from
    /// before the chain), in the order they were written, after the head; how many.
    async fn chain_unchained_audit(&self) -> Result<u64, StoreError>;
    /// How many events have no place in the chain.
    async fn count_unchained_audit(&self) -> Result<u64, StoreError>;
    /// The last chained event's index and hash; the genesis head when there is none.
    async fn audit_head(&self) -> Result<ChainHead, StoreError>;
    /// Chained events matching `query`, in index order, as stored.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<ChainedEvent>, StoreError>;
    /// The latest events, newest first.
    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
}

/// Which audit events to read: all of them match the given filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only events after this index.
    pub after: u64,
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct AccessQuery {
    pub requester: Option<UserId>,
    pub states: Option<Vec<AccessState>>,
    pub after: Option<AccessRequestId>,
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct EnvironmentQuery {
    pub owner: Option<UserId>,
    pub name: Option<Name>,
    /// Only environments opened under an access grant.
    pub granted_only: bool,
    pub states: Option<Vec<EnvState>>,
    pub after: Option<EnvironmentId>,
    pub limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the sandbox is not running")]
    NotRunning,
    #[error("no such sandbox")]
    Missing,
    #[error("{0}")]
    Failed(String),
    /// A path inside the sandbox could not be used (missing, a directory, refused); the
    /// string says why in words fit for the caller.
    #[error("{0}")]
    Path(String),
    /// More bytes than allowed were offered; nothing was kept.
    #[error("larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// Nothing listens on that port inside the sandbox.
    #[error("nothing accepts connections on port {0} in the environment")]
    PortClosed(u16),
}

/// A command started in a sandbox whose streams the caller drives (a session).
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Run it on a terminal of this size: then stdout carries stdout and stderr both, and the
    /// terminal's line discipline turns ^C into SIGINT.
    pub tty: Option<TerminalSize>,
}

/// A byte stream in or out of a sandbox.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A two-way byte stream: a TCP connection into a sandbox.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Connection for T {}

/// A running command of a session.
pub struct Process {
    pub stdin: Writer,
    pub stdout: Reader,
    /// `None` on a terminal (stderr goes to stdout).
    pub stderr: Option<Reader>,
    pub control: std::sync::Arc<dyn ProcessControl>,
}

/// How a session's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Its exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// The kernel killed a process of the sandbox for memory while it ran.
    pub oom_killed: bool,
}

#[async_trait]
pub trait ProcessControl: Send + Sync {
    /// Tells the terminal its new size (the command gets SIGWINCH); no-op without one.
    fn resize(&self, size: TerminalSize) -> Result<(), RuntimeError>;
    /// Sends `signal` to the command.
    fn signal(&self, signal: Signal) -> Result<(), RuntimeError>;
    /// Waits until the command has ended. Cancel-safe; may be called again (the same answer).
    async fn wait(&self) -> Result<ProcessExit, RuntimeError>;
}

/// What the runtime sees of a sandbox on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Running,
    /// Its writable layer exists but no process runs.
    Stopped,
    Missing,
}

/// A kind of thing a sandbox holds on the host. The runtime reports them so that the
/// reconciler can tell a clean stopped sandbox (its directory only) from one a crash left half
/// up, and say in the audit trail what it removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remnant {
    /// A helper process still making (or starting) the sandbox, e.g. after its server died.
    Helper,
    /// The container runtime's state of the sandbox.
    State,
    /// Its control groups, with any process still in them.
    Cgroup,
    /// The mounts of its root filesystem.
    Mounts,
    /// Its directory: bundle and writable layer.
    Directory,
    /// Network devices on the host.
    Network,
}

impl Remnant {
    pub fn as_str(self) -> &'static str {
        match self {
            Remnant::Helper => "helper process",
            Remnant::State => "runtime state",
            Remnant::Cgroup => "cgroup",
            Remnant::Mounts => "mounts",
            Remnant::Directory => "directory",
            Remnant::Network => "network device",
        }
    }
}

/// What a sandbox is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    pub id: EnvironmentId,
    pub hostname: Name,
    pub image: Name,
    pub resources: Resources,
    pub network: NetworkMode,
    /// Written into the sandbox's filesystem before it starts.
    pub files: Vec<SandboxFile>,
}

/// Creates, runs and destroys sandboxes. Implementations must be safe to call concurrently
/// for different sandboxes; the engine never calls lifecycle methods concurrently for one.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Whether `image` can be used.
    fn has_image(&self, image: &Name) -> bool;
    /// Whether sandboxes can be given this network mode on this host.
    fn supports_network(&self, mode: NetworkMode) -> bool;
    /// Memory the host can still give (MiB), if the runtime knows.
    fn available_memory_mib(&self) -> Option<u64>;
    /// Creates and starts a sandbox. On error nothing of it is left on the host.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;
    /// Starts a stopped sandbox again on its kept writable layer.
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;
    /// Kills every process of the sandbox and keeps its writable layer.
    async fn stop(&self, id: &EnvironmentId) -> Result<(), RuntimeError>;
    /// Removes everything of the sandbox; succeeds if there is nothing to remove.
    async fn destroy(&self, id: &EnvironmentId) -> Result<(), RuntimeError>;
    async fn exec(&self, id: &EnvironmentId, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError>;
    /// Gives a running sandbox another hostname (a warm sandbox taken by a create): at once
    /// for the sandbox, and in `HOSTNAME` of its later commands.
    async fn rename(&self, id: &EnvironmentId, hostname: &Name) -> Result<(), RuntimeError>;
    /// Starts a command whose streams the caller drives; it runs until it ends, is killed
    /// by a signal, or the sandbox stops.
    async fn spawn(&self, id: &EnvironmentId, spec: &ProcessSpec) -> Result<Process, RuntimeError>;
    /// Opens a TCP connection to `port` on the sandbox's own loopback.
    async fn connect(
        &self,
        id: &EnvironmentId,
        port: u16,
    ) -> Result<Box<dyn Connection>, RuntimeError>;
    /// Opens a regular file of the running sandbox for reading, `path` resolved inside its
    /// root as the sandbox sees it (symbolic links included, never leading out): its size
    /// and its bytes.
    async fn read_file(
        &self,
        id: &EnvironmentId,
        path: &str,
    ) -> Result<(u64, Reader), RuntimeError>;
    /// Writes `contents` to a file of the running sandbox (resolved like `read_file`), with
    /// `mode`. Nothing is left at `path` unless all of it, at most `limit` bytes, arrived:
    /// it is written beside it and renamed into place. Returns the bytes written.
    async fn write_file(
        &self,
        id: &EnvironmentId,
        path: &str,
        mode: u32,
        contents: Reader,
        limit: u64,
    ) -> Result<u64, RuntimeError>;
    async fn inspect(&self, id: &EnvironmentId) -> Result<SandboxState, RuntimeError>;
    /// What a running sandbox uses now; `NotRunning` when it is not running.
    async fn usage(&self, id: &EnvironmentId) -> Result<Usage, RuntimeError>;
    /// Every sandbox this runtime has anything of on the host (any [`Remnant`]), whether or
    /// not a record knows it.
    async fn list(&self) -> Result<Vec<EnvironmentId>, RuntimeError>;
    /// What the host holds of this sandbox now, in [`Remnant`] order; empty when nothing.
    /// `destroy` removes all of it; `stop` all but the directory.
    async fn remnants(&self, id: &EnvironmentId) -> Result<Vec<Remnant>, RuntimeError>;
}

/// Sees every audit event once it is appended (metrics, alerts), with how long the append
/// took. Called on the request path: implementations must not block (hand slow work to a
/// queue of their own).
pub trait AuditObserver: Send + Sync + 'static {
    fn observe(&self, event: &AuditEvent, append_took: std::time::Duration);
}

/// Reads the values of access profiles' secrets on the server, at the moment they are needed.
pub trait Secrets: Send + Sync + 'static {
    fn read(&self, source: &SecretSource) -> Result<SecretValue, String>;
}

/// The time, injectable so tests control it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().expect("clock lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}
