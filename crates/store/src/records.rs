//! How the domain's records are stored as columns, the same on SQLite and on PostgreSQL: times
//! as microseconds since the Unix epoch, lists as comma-separated words, an access profile's
//! rules as one JSON document. Each backend keeps its own SQL and decodes its rows here, through
//! [`Columns`].

use std::time::Duration;

use airlock_core::access::{AccessProfile, AccessRequest, AccessState, Approval, SecretMount};
use airlock_core::audit::{ChainHead, ChainedEvent, Hash};
use airlock_core::ids::{AccessRequestId, EnvironmentId, Name, SessionId, TokenId, UserId};
use airlock_core::model::{
    AuditEvent, EnvState, Environment, NetworkMode, Party, Quota, Resources, Role, Scope, Team,
    TokenRecord, User,
};
use airlock_core::ports::{Inserted, StoreError};
use airlock_core::session::{Session, SessionKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::error::{backend, corrupt};

/// One result row's columns, by name, in the types both schemas use: text, 64-bit integers
/// and bytes. A column that is missing or holds another type makes the record corrupt.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<&str, StoreError>;
    fn optional_text(&self, column: &str) -> Result<Option<&str>, StoreError>;
    fn integer(&self, column: &str) -> Result<i64, StoreError>;
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, column: &str) -> Result<&[u8], StoreError>;
    fn optional_bytes(&self, column: &str) -> Result<Option<&[u8]>, StoreError>;

    /// A time, stored as microseconds since the Unix epoch.
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        from_micros(self.integer(column)?)
    }

    fn optional_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.optional_integer(column)?.map(from_micros).transpose()
    }
}

/// Any sqlx row whose database decodes text as `&str`, integers as `i64` and bytes as `&[u8]`:
/// `SqliteRow` and `PgRow`.
impl<R> Columns for R
where
    R: Row,
    for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database> + ColumnIndex<R>,
    for<'r> &'r [u8]: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<&str, StoreError> {
        self.try_get(column).map_err(corrupt)
    }

    fn optional_text(&self, column: &str) -> Result<Option<&str>, StoreError> {
        self.try_get(column).map_err(corrupt)
    }

    fn integer(&self, column: &str) -> Result<i64, StoreError> {
        self.try_get(column).map_err(corrupt)
    }

    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.try_get(column).map_err(corrupt)
    }

    fn bytes(&self, column: &str) -> Result<&[u8], StoreError> {
        self.try_get(column).map_err(corrupt)
    }

    fn optional_bytes(&self, column: &str) -> Result<Option<&[u8]>, StoreError> {
        self.try_get(column).map_err(corrupt)
    }
}

pub(crate) fn environment(row: &impl Columns) -> Result<Environment, StoreError> {
    let state = row.text("state")?;
    Ok(Environment {
        id: EnvironmentId::parse(row.text("id")?).map_err(corrupt)?,
        name: parse_name(row.text("name")?)?,
        owner: UserId::parse(row.text("owner_id")?).map_err(corrupt)?,
        image: parse_name(row.text("image")?)?,
        resources: Resources {
            memory_mib: row.integer("memory_mib")? as u64,
            millicpus: row.integer("millicpus")? as u64,
            pids: row.integer("pids")? as u64,
            disk_mib: row.integer("disk_mib")? as u64,
        },
        network: NetworkMode::parse(row.text("network")?).map_err(corrupt)?,
        team: row.optional_text("team")?.map(parse_name).transpose()?,
        access_request: row
            .optional_text("access_request")?
            .map(|id| AccessRequestId::parse(id).map_err(corrupt))
            .transpose()?,
        state: EnvState::parse(state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        expires_at: row.time("expires_at")?,
        last_activity_at: row.time("last_activity_at")?,
        idle_timeout: row
            .optional_integer("idle_timeout_ms")?
            .map(|millis| Duration::from_millis(millis as u64)),
        failure: row.optional_text("failure")?.map(str::to_owned),
    })
}

/// The environment an idempotency key was first claimed for, from `idempotency_keys`.
pub(crate) fn replayed(row: &impl Columns) -> Result<Inserted, StoreError> {
    Ok(Inserted::Replayed {
        environment: EnvironmentId::parse(row.text("environment_id")?).map_err(corrupt)?,
        fingerprint: row.text("fingerprint")?.to_owned(),
    })
}

/// How many live environments a team has and what they use, from the columns
/// `environments`, `memory_mib` and `millicpus` of the quota's count.
pub(crate) fn usage(row: &impl Columns) -> Result<(u64, Resources), StoreError> {
    let used = Resources {
        memory_mib: row.integer("memory_mib")? as u64,
        millicpus: row.integer("millicpus")? as u64,
        pids: 0,
        disk_mib: 0,
    };
    Ok((row.integer("environments")? as u64, used))
}

pub(crate) fn user(row: &impl Columns) -> Result<User, StoreError> {
    user_with_prefix(row, "")
}

/// A user from the columns `{prefix}id`, `{prefix}name` and so on.
fn user_with_prefix(row: &impl Columns, prefix: &str) -> Result<User, StoreError> {
    let column = |name: &str| format!("{prefix}{name}");
    Ok(User {
        id: UserId::parse(row.text(&column("id"))?).map_err(corrupt)?,
        name: parse_name(row.text(&column("name"))?)?,
        roles: split(row.text(&column("roles"))?, |text| {
            Role::parse(text).map_err(corrupt)
        })?,
        teams: split(row.text(&column("teams"))?, parse_name)?,
        external_id: row
            .optional_text(&column("external_id"))?
            .map(str::to_owned),
        created_at: row.time(&column("created_at"))?,
    })
}

pub(crate) fn team(row: &impl Columns) -> Result<Team, StoreError> {
    let limit = |column: &str| Ok::<_, StoreError>(row.optional_integer(column)?.map(|n| n as u64));
    Ok(Team {
        name: parse_name(row.text("name")?)?,
        quota: Quota {
            max_environments: limit("max_environments")?,
            max_memory_mib: limit("max_memory_mib")?,
            max_millicpus: limit("max_millicpus")?,
        },
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn token(row: &impl Columns) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: TokenId::parse(row.text("id")?).map_err(corrupt)?,
        user_id: UserId::parse(row.text("user_id")?).map_err(corrupt)?,
        secret_hash: row
            .bytes("secret_hash")?
            .try_into()
            .map_err(|_| corrupt("secret hash is not 32 bytes"))?,
        scopes: split(row.text("scopes")?, |text| {
            Scope::parse(text).map_err(corrupt)
        })?,
        description: row.optional_text("description")?.map(str::to_owned),
        created_at: row.time("created_at")?,
        expires_at: row.optional_time("expires_at")?,
        revoked_at: row.optional_time("revoked_at")?,
        last_used_at: row.optional_time("last_used_at")?,
        rate_limit: row
            .optional_text("rate_limit")?
            .map(|text| airlock_core::rate_limit::Rate::parse(text).map_err(corrupt))
            .transpose()?,
    })
}

/// A token and its user, from `tokens.*` joined with the user's columns named `user_…`
/// (`user_name`, `user_roles`, …); the token's `user_id` is the user's `id`.
pub(crate) fn token_with_user(row: &impl Columns) -> Result<(TokenRecord, User), StoreError> {
    Ok((token(row)?, user_with_prefix(row, "user_")?))
}

/// An access profile's rules as stored: one JSON document, so that adding a rule needs no
/// migration.
#[derive(Serialize, Deserialize)]
struct ProfileRules {
    description: Option<String>,
    max_duration_ms: u64,
    approvals_required: u32,
    secrets: Vec<SecretMount>,
    network: NetworkMode,
    requesters: Vec<Party>,
    approvers: Vec<Party>,
}

/// The document stored in an access profile's `rules` column.
pub(crate) fn profile_rules(profile: &AccessProfile) -> Result<String, StoreError> {
    let rules = ProfileRules {
        description: profile.description.clone(),
        max_duration_ms: profile.max_duration.as_millis() as u64,
        approvals_required: profile.approvals_required,
        secrets: profile.secrets.clone(),
        network: profile.network,
        requesters: profile.requesters.clone(),
        approvers: profile.approvers.clone(),
    };
    serde_json::to_string(&rules).map_err(backend)
}

pub(crate) fn profile(row: &impl Columns) -> Result<AccessProfile, StoreError> {
    let rules: ProfileRules = serde_json::from_str(row.text("rules")?).map_err(corrupt)?;
    Ok(AccessProfile {
        name: parse_name(row.text("name")?)?,
        description: rules.description,
        max_duration: Duration::from_millis(rules.max_duration_ms),
        approvals_required: rules.approvals_required,
        secrets: rules.secrets,
        network: rules.network,
        requesters: rules.requesters,
        approvers: rules.approvers,
        created_at: row.time("created_at")?,
    })
}

/// An access request without its approvals, which are rows of their own ([`approval`]).
pub(crate) fn access_request(row: &impl Columns) -> Result<AccessRequest, StoreError> {
    let state = row.text("state")?;
    Ok(AccessRequest {
        id: AccessRequestId::parse(row.text("id")?).map_err(corrupt)?,
        profile: parse_name(row.text("profile")?)?,
        requester: UserId::parse(row.text("requester_id")?).map_err(corrupt)?,
        reason: row.text("reason")?.to_owned(),
        duration: Duration::from_millis(row.integer("duration_ms")? as u64),
        approvals_required: row.integer("approvals_required")? as u32,
        state: AccessState::parse(state)
            .ok_or_else(|| corrupt(format!("unknown access state {state:?}")))?,
        created_at: row.time("created_at")?,
        decide_by: row.time("decide_by")?,
        approvals: Vec::new(),
        granted_at: row.optional_time("granted_at")?,
        expires_at: row.optional_time("expires_at")?,
        ended_at: row.optional_time("ended_at")?,
        ended_by: row.optional_text("ended_by")?.map(str::to_owned),
        end_reason: row.optional_text("end_reason")?.map(str::to_owned),
    })
}

pub(crate) fn approval(row: &impl Columns) -> Result<Approval, StoreError> {
    Ok(Approval {
        approver: UserId::parse(row.text("approver_id")?).map_err(corrupt)?,
        at: row.time("at")?,
    })
}

pub(crate) fn audit_event(row: &impl Columns) -> Result<AuditEvent, StoreError> {
    let text = |column: &str| Ok::<_, StoreError>(row.text(column)?.to_owned());
    let optional_text =
        |column: &str| Ok::<_, StoreError>(row.optional_text(column)?.map(str::to_owned));
    Ok(AuditEvent {
        time: row.time("time")?,
        request_id: text("request_id")?,
        actor: text("actor")?,
        action: text("action")?,
        target: optional_text("target")?,
        outcome: text("outcome")?,
        source: optional_text("source")?,
        detail: optional_text("detail")?,
    })
}

pub(crate) fn session(row: &impl Columns) -> Result<Session, StoreError> {
    let kind = row.text("kind")?;
    Ok(Session {
        id: SessionId::parse(row.text("id")?).map_err(corrupt)?,
        environment: EnvironmentId::parse(row.text("environment_id")?).map_err(corrupt)?,
        user: UserId::parse(row.text("user_id")?).map_err(corrupt)?,
        kind: SessionKind::parse(kind)
            .ok_or_else(|| corrupt(format!("unknown session kind {kind:?}")))?,
        argv: serde_json::from_str(row.text("argv")?).map_err(corrupt)?,
        started_at: row.time("started_at")?,
        ended_at: row.optional_time("ended_at")?,
        exit_code: row.optional_integer("exit_code")?.map(|code| code as i32),
        bytes_in: row.integer("bytes_in")? as u64,
        bytes_out: row.integer("bytes_out")? as u64,
        recorded: row.integer("recorded")? != 0,
    })
}

/// A chained audit event. A stored hash that is missing or not 32 bytes long is read as
/// zeros, which no chain hash equals: the verifier then names the event, as it would for any
/// hash that does not match.
pub(crate) fn chained_event(row: &impl Columns) -> Result<ChainedEvent, StoreError> {
    Ok(ChainedEvent {
        index: row.integer("chain_index")? as u64,
        hash: stored_hash(row.optional_bytes("hash")?),
        event: audit_event(row)?,
    })
}

/// The head of the chain from the last chained event's row, if there is one.
pub(crate) fn chain_head(row: Option<&impl Columns>) -> Result<ChainHead, StoreError> {
    match row {
        None => Ok(ChainHead::genesis()),
        Some(row) => Ok(ChainHead {
            index: row.integer("chain_index")? as u64,
            hash: stored_hash(row.optional_bytes("hash")?),
        }),
    }
}

fn stored_hash(bytes: Option<&[u8]>) -> Hash {
    bytes
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or([0; 32])
}

/// A list column: its words, comma-separated.
pub(crate) fn join<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words.collect::<Vec<_>>().join(",")
}

fn split<T>(
    text: &str,
    parse: impl Fn(&str) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    text.split(',')
        .filter(|word| !word.is_empty())
        .map(parse)
        .collect()
}

/// A time column: microseconds since the Unix epoch.
pub(crate) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn from_micros(value: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| corrupt(format!("timestamp {value} out of range")))
}

fn parse_name(text: &str) -> Result<Name, StoreError> {
    Name::parse("name", text).map_err(corrupt)
}

/// Counts per state from `SELECT state, COUNT(*) … GROUP BY state` rows, as one entry per
/// state of `all` (in its order, zero where no row), whatever the backend.
pub(crate) fn tally<State: Copy + PartialEq>(
    all: &[State],
    parse: impl Fn(&str) -> Option<State>,
    rows: Vec<(String, i64)>,
) -> Result<Vec<(State, u64)>, StoreError> {
    let mut counts: Vec<(State, u64)> = all.iter().map(|state| (*state, 0)).collect();
    for (text, count) in rows {
        let state = parse(&text).ok_or_else(|| corrupt(format!("unknown state {text:?}")))?;
        if let Some(entry) = counts.iter_mut().find(|(known, _)| *known == state) {
            entry.1 = count.max(0) as u64;
        }
    }
    Ok(counts)
}
