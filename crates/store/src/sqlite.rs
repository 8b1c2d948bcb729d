//! The embedded default store: one SQLite file in WAL mode with `synchronous=FULL`, so an
//! acknowledged write survives a crash of the process or the host.
//!
//! The write-ahead log is copied back into the database by a background task, not by
//! whichever commit happens to cross SQLite's threshold: that commit would wait for the copy
//! and its fsyncs, a stall of tens of milliseconds for one unlucky request under load.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use airlock_core::access::{AccessProfile, AccessRequest, AccessState, Approval, Approved};
use airlock_core::audit::{ChainHead, ChainedEvent};
use airlock_core::ids::{AccessRequestId, EnvironmentId, Name, SessionId, TokenId, UserId};
use airlock_core::model::{
    AuditEvent, EnvState, Environment, Quota, Resources, Team, TokenRecord, User,
};
use airlock_core::ports::{
    AccessQuery, AuditQuery, Ceilings, Claimed, EnvironmentQuery, Inserted, SessionQuery, Store,
    StoreError,
};
use airlock_core::session::Session;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use crate::error::{backend, corrupt, duplicate_or_backend};
use crate::quota::over_quota;
use crate::records::{self, join, micros};
use crate::schema::MIGRATIONS;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads: any number at once (WAL readers never wait for the writer).
    pool: SqlitePool,
    /// Writes, one connection: SQLite takes one writer at a time, and writers that find it
    /// busy sleep and retry with growing pauses; queued here, they are served in turn
    /// instead (a burst of creates had stragglers of 200 ms that way).
    writer: SqlitePool,
    /// Alive while any clone of the store is: the checkpoint task stops once it is gone.
    _alive: std::sync::Arc<()>,
}

/// How often the background task checkpoints the write-ahead log.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(backend)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = Self {
            pool,
            writer,
            _alive: Default::default(),
        };
        store.migrate().await?;
        store.start_checkpoints();
        Ok(store)
    }

    /// A write transaction holding SQLite's write lock from its start, so nothing can write
    /// between what it reads and what it writes.
    async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }

    /// Checkpoints the log in the background (PASSIVE: never waits for readers or writers),
    /// until the last clone of the store is dropped.
    fn start_checkpoints(&self) {
        let alive = std::sync::Arc::downgrade(&self._alive);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(CHECKPOINT_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if alive.strong_count() == 0 || pool.is_closed() {
                    return;
                }
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(%error, "checkpointing the database's log failed");
                }
            }
        });
    }

    /// Opens an existing database only to read it, as it is (no migration): e.g. to verify
    /// the audit trail, also while a server is using the database.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(backend)?
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Ok(Self {
            writer: pool.clone(),
            pool,
            _alive: Default::default(),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        let current = current.unwrap_or(0) as usize;
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(current) {
            sqlx::raw_sql(migration)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind((index + 1) as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, name, roles, teams, external_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.as_str())
        .bind(user.name.as_str())
        .bind(join(user.roles.iter().map(|role| role.as_str())))
        .bind(join(user.teams.iter().map(Name::as_str)))
        .bind(user.external_id.as_deref())
        .bind(micros(user.created_at))
        .execute(&self.writer)
        .await
        .map_err(|error| duplicate_or_backend(error, "user"))?;
        Ok(())
    }

    async fn find_external_user(&self, external_id: &str) -> Result<Option<User>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE external_id = ?")
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| records::user(&row))
            .transpose()
    }

    async fn list_users(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query("SELECT * FROM users WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after.map_or("", UserId::as_str))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(records::user).collect()
    }

    async fn update_user(&self, user: &User) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE users SET roles = ?, teams = ? WHERE id = ?")
            .bind(join(user.roles.iter().map(|role| role.as_str())))
            .bind(join(user.teams.iter().map(Name::as_str)))
            .bind(user.id.as_str())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn insert_team(&self, team: &Team) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO teams (name, max_environments, max_memory_mib, max_millicpus, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(team.name.as_str())
        .bind(team.quota.max_environments.map(|n| n as i64))
        .bind(team.quota.max_memory_mib.map(|n| n as i64))
        .bind(team.quota.max_millicpus.map(|n| n as i64))
        .bind(micros(team.created_at))
        .execute(&self.writer)
        .await
        .map_err(|error| duplicate_or_backend(error, "team"))?;
        Ok(())
    }

    async fn get_team(&self, name: &Name) -> Result<Option<Team>, StoreError> {
        sqlx::query("SELECT * FROM teams WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| records::team(&row))
            .transpose()
    }

    async fn list_teams(&self) -> Result<Vec<Team>, StoreError> {
        let rows = sqlx::query("SELECT * FROM teams ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(records::team).collect()
    }

    async fn set_quota(&self, name: &Name, quota: &Quota) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE teams SET max_environments = ?, max_memory_mib = ?, max_millicpus = ? WHERE name = ?",
        )
        .bind(quota.max_environments.map(|n| n as i64))
        .bind(quota.max_memory_mib.map(|n| n as i64))
        .bind(quota.max_millicpus.map(|n| n as i64))
        .bind(name.as_str())
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| records::user(&row))
            .transpose()
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(count as u64)
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, user_id, secret_hash, scopes, description, created_at, expires_at, revoked_at, rate_limit)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.id.as_str())
        .bind(token.user_id.as_str())
        .bind(&token.secret_hash[..])
        .bind(join(token.scopes.iter().map(|scope| scope.as_str())))
        .bind(token.description.as_deref())
        .bind(micros(token.created_at))
        .bind(token.expires_at.map(micros))
        .bind(token.revoked_at.map(micros))
        .bind(token.rate_limit.map(|rate| rate.to_string()))
        .execute(&self.writer)
        .await
        .map_err(|error| duplicate_or_backend(error, "token"))?;
        Ok(())
    }

    async fn get_token(&self, id: &TokenId) -> Result<Option<TokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM tokens WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| records::token(&row))
            .transpose()
    }

    async fn find_token(
        &self,
        secret_hash: &[u8; 32],
    ) -> Result<Option<(TokenRecord, User)>, StoreError> {
        let row = sqlx::query(
            "SELECT tokens.*, users.name AS user_name, users.roles AS user_roles, users.teams AS user_teams,
                    users.external_id AS user_external_id, users.created_at AS user_created_at
             FROM tokens JOIN users ON users.id = tokens.user_id WHERE tokens.secret_hash = ?",
        )
        .bind(&secret_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|row| records::token_with_user(&row)).transpose()
    }

    async fn revoke_token(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(micros(at))
                .bind(id.as_str())
                .execute(&self.writer)
                .await
                .map_err(backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn list_tokens(&self, user: &UserId) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM tokens WHERE user_id = ? ORDER BY id")
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(records::token).collect()
    }

    async fn touch_token(&self, id: &TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(micros(at))
            .bind(id.as_str())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_environment(
        &self,
        environment: &Environment,
        idempotency: Option<(&str, &str)>,
        ceilings: &Ceilings,
    ) -> Result<Inserted, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        if let Some((key, fingerprint)) = idempotency
            && let Some(replayed) = claim_key(&mut tx, environment, key, fingerprint).await?
        {
            return Ok(replayed);
        }
        if let Some(refused) = check_ceilings(&mut tx, environment, ceilings).await? {
            return Ok(refused);
        }
        sqlx::query(
            "INSERT INTO environments (id, name, owner_id, image, memory_mib, millicpus, pids, disk_mib, network, team, access_request, state, created_at, updated_at, expires_at, last_activity_at, idle_timeout_ms, failure)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(environment.id.as_str())
        .bind(environment.name.as_str())
        .bind(environment.owner.as_str())
        .bind(environment.image.as_str())
        .bind(environment.resources.memory_mib as i64)
        .bind(environment.resources.millicpus as i64)
        .bind(environment.resources.pids as i64)
        .bind(environment.resources.disk_mib as i64)
        .bind(environment.network.as_str())
        .bind(environment.team.as_ref().map(Name::as_str))
        .bind(environment.access_request.as_ref().map(AccessRequestId::as_str))
        .bind(environment.state.as_str())
        .bind(micros(environment.created_at))
        .bind(micros(environment.updated_at))
        .bind(micros(environment.expires_at))
        .bind(micros(environment.last_activity_at))
        .bind(
            environment
                .idle_timeout
                .map(|timeout| timeout.as_millis() as i64),
        )
        .bind(environment.failure.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|error| duplicate_or_backend(error, "environment name"))?;
        tx.commit().await.map_err(backend)?;
        Ok(Inserted::Created)
    }

    async fn claim_pooled(
        &self,
        pool_owner: &UserId,
        taking: &Environment,
        idempotency: Option<(&str, &str)>,
        ceilings: &Ceilings,
    ) -> Result<Claimed, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        // A write first takes SQLite's write lock: claims run one after the other.
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ('create_lock', '')
             ON CONFLICT (key) DO UPDATE SET value = ''",
        )
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let row = sqlx::query(
            "SELECT id FROM environments
             WHERE owner_id = ? AND state = 'running' AND image = ? AND memory_mib = ?
               AND millicpus = ? AND pids = ? AND disk_mib = ? AND network = ?
             ORDER BY id LIMIT 1",
        )
        .bind(pool_owner.as_str())
        .bind(taking.image.as_str())
        .bind(taking.resources.memory_mib as i64)
        .bind(taking.resources.millicpus as i64)
        .bind(taking.resources.pids as i64)
        .bind(taking.resources.disk_mib as i64)
        .bind(taking.network.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(row) = row else {
            return Ok(Claimed::Empty);
        };
        let mut taken = taking.clone();
        taken.id = EnvironmentId::parse(records::Columns::text(&row, "id")?).map_err(corrupt)?;
        if let Some((key, fingerprint)) = idempotency
            && let Some(replayed) = claim_key(&mut tx, &taken, key, fingerprint).await?
        {
            return Ok(Claimed::AsInsert(replayed));
        }
        let team_only = Ceilings {
            team: ceilings.team,
            host: None,
        };
        if let Some(refused) = check_ceilings(&mut tx, &taken, &team_only).await? {
            return Ok(Claimed::AsInsert(refused));
        }
        let row = sqlx::query(
            "UPDATE environments SET owner_id = ?, name = ?, team = ?, created_at = ?,
                    updated_at = ?, expires_at = ?, last_activity_at = ?, idle_timeout_ms = ?
             WHERE id = ? AND owner_id = ? AND state = 'running' RETURNING *",
        )
        .bind(taken.owner.as_str())
        .bind(taken.name.as_str())
        .bind(taken.team.as_ref().map(Name::as_str))
        .bind(micros(taken.created_at))
        .bind(micros(taken.updated_at))
        .bind(micros(taken.expires_at))
        .bind(micros(taken.last_activity_at))
        .bind(taken.idle_timeout.map(|timeout| timeout.as_millis() as i64))
        .bind(taken.id.as_str())
        .bind(pool_owner.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| duplicate_or_backend(error, "environment name"))?;
        let environment = records::environment(&row)?;
        tx.commit().await.map_err(backend)?;
        Ok(Claimed::Taken(Box::new(environment)))
    }

    async fn get_environment(&self, id: &EnvironmentId) -> Result<Option<Environment>, StoreError> {
        sqlx::query("SELECT * FROM environments WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| records::environment(&row))
            .transpose()
    }

    async fn list_environments(
        &self,
        query: &EnvironmentQuery,
    ) -> Result<Vec<Environment>, StoreError> {
        let mut sql = QueryBuilder::new("SELECT * FROM environments WHERE 1 = 1");
        if let Some(owner) = &query.owner {
            sql.push(" AND owner_id = ").push_bind(owner.as_str());
        }
        if let Some(name) = &query.name {
            sql.push(" AND name = ").push_bind(name.as_str());
        }
        if query.granted_only {
            sql.push(" AND access_request IS NOT NULL");
        }
        if let Some(states) = &query.states {
            sql.push(" AND state IN (");
            let mut list = sql.separated(", ");
            for state in states {
                list.push_bind(state.as_str());
            }
            sql.push(")");
        }
        if let Some(after) = &query.after {
            sql.push(" AND id > ").push_bind(after.as_str());
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(query.limit as i64);
        let rows = sql.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(records::environment).collect()
    }

    async fn transition(
        &self,
        id: &EnvironmentId,
        from: &[EnvState],
        to: EnvState,
        at: DateTime<Utc>,
        failure: Option<&str>,
    ) -> Result<Option<Environment>, StoreError> {
        let mut sql = QueryBuilder::new("UPDATE environments SET state = ");
        sql.push_bind(to.as_str())
            .push(", updated_at = ")
            .push_bind(micros(at))
            .push(", failure = ")
            .push_bind(failure)
            .push(" WHERE id = ")
            .push_bind(id.as_str())
            .push(" AND state IN (");
        let mut list = sql.separated(", ");
        for state in from {
            list.push_bind(state.as_str());
        }
        sql.push(") RETURNING *");
        let row = sql
            .build()
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        row.map(|row| records::environment(&row)).transpose()
    }

    async fn insert_profile(&self, profile: &AccessProfile) -> Result<(), StoreError> {
        let rules = records::profile_rules(profile)?;
        sqlx::query("INSERT INTO access_profiles (name, rules, created_at) VALUES (?, ?, ?)")
            .bind(profile.name.as_str())
            .bind(rules)
            .bind(micros(profile.created_at))
            .execute(&self.writer)
            .await
            .map_err(|error| duplicate_or_backend(error, "access profile"))?;
        Ok(())
    }

    async fn get_profile(&self, name: &Name) -> Result<Option<AccessProfile>, StoreError> {
        sqlx::query("SELECT * FROM access_profiles WHERE name = ?")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| records::profile(&row))
            .transpose()
    }

    async fn list_profiles(&self) -> Result<Vec<AccessProfile>, StoreError> {
        let rows = sqlx::query("SELECT * FROM access_profiles ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(records::profile).collect()
    }

    async fn insert_access_request(&self, request: &AccessRequest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_requests (id, profile, requester_id, reason, duration_ms, approvals_required, state, created_at, decide_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(request.id.as_str())
        .bind(request.profile.as_str())
        .bind(request.requester.as_str())
        .bind(&request.reason)
        .bind(request.duration.as_millis() as i64)
        .bind(request.approvals_required as i64)
        .bind(request.state.as_str())
        .bind(micros(request.created_at))
        .bind(micros(request.decide_by))
        .execute(&self.writer)
        .await
        .map_err(|error| duplicate_or_backend(error, "access request"))?;
        Ok(())
    }

    async fn get_access_request(
        &self,
        id: &AccessRequestId,
    ) -> Result<Option<AccessRequest>, StoreError> {
        let mut connection = self.pool.acquire().await.map_err(backend)?;
        read_access_request(&mut connection, id).await
    }

    async fn list_access_requests(
        &self,
        query: &AccessQuery,
    ) -> Result<Vec<AccessRequest>, StoreError> {
        let mut sql = QueryBuilder::new("SELECT * FROM access_requests WHERE 1 = 1");
        if let Some(requester) = &query.requester {
            sql.push(" AND requester_id = ")
                .push_bind(requester.as_str());
        }
        if let Some(states) = &query.states {
            sql.push(" AND state IN (");
            let mut list = sql.separated(", ");
            for state in states {
                list.push_bind(state.as_str());
            }
            sql.push(")");
        }
        if let Some(after) = &query.after {
            sql.push(" AND id > ").push_bind(after.as_str());
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(query.limit as i64);
        let mut connection = self.pool.acquire().await.map_err(backend)?;
        let rows = sql
            .build()
            .fetch_all(&mut *connection)
            .await
            .map_err(backend)?;
        let mut requests = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut request = records::access_request(row)?;
            request.approvals = read_approvals(&mut connection, &request.id).await?;
            requests.push(request);
        }
        Ok(requests)
    }

    async fn approve_access(
        &self,
        id: &AccessRequestId,
        approver: &UserId,
        at: DateTime<Utc>,
    ) -> Result<Option<Approved>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        // Write first: takes the write lock, so approvals of one request count in turn.
        sqlx::query("UPDATE access_requests SET state = state WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(request) = read_access_request(&mut tx, id).await? else {
            return Ok(None);
        };
        if request.state != AccessState::Pending {
            return Ok(Some(Approved::NotPending(request)));
        }
        let counted = sqlx::query(
            "INSERT INTO access_approvals (request_id, approver_id, at) VALUES (?, ?, ?)
             ON CONFLICT (request_id, approver_id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(approver.as_str())
        .bind(micros(at))
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        if !counted {
            return Ok(Some(Approved::AlreadyCounted(request)));
        }
        let approvals = request.approvals.len() as u32 + 1;
        if approvals >= request.approvals_required {
            let expires_at = at
                + chrono::Duration::from_std(request.duration)
                    .map_err(|e| corrupt(format!("grant duration: {e}")))?;
            sqlx::query(
                "UPDATE access_requests SET state = ?, granted_at = ?, expires_at = ? WHERE id = ?",
            )
            .bind(AccessState::Approved.as_str())
            .bind(micros(at))
            .bind(micros(expires_at))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        let updated = read_access_request(&mut tx, id)
            .await?
            .ok_or_else(|| corrupt("access request vanished"))?;
        tx.commit().await.map_err(backend)?;
        Ok(Some(if updated.state == AccessState::Approved {
            Approved::Granted(updated)
        } else {
            Approved::Counted(updated)
        }))
    }

    async fn end_access(
        &self,
        id: &AccessRequestId,
        from: AccessState,
        to: AccessState,
        at: DateTime<Utc>,
        by: &str,
        reason: &str,
    ) -> Result<Option<AccessRequest>, StoreError> {
        if !from.can_become(to) || to == AccessState::Approved {
            return Err(StoreError::Backend(format!(
                "an access request cannot go from {from} to {to} this way"
            )));
        }
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let ended = sqlx::query(
            "UPDATE access_requests SET state = ?, ended_at = ?, ended_by = ?, end_reason = ?
             WHERE id = ? AND state = ?",
        )
        .bind(to.as_str())
        .bind(micros(at))
        .bind(by)
        .bind(reason)
        .bind(id.as_str())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected()
            == 1;
        if !ended {
            return Ok(None);
        }
        let request = read_access_request(&mut tx, id).await?;
        tx.commit().await.map_err(backend)?;
        Ok(request)
    }

    async fn count_environments_by_state(&self) -> Result<Vec<(EnvState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM environments GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        records::tally(&EnvState::ALL, EnvState::parse, rows)
    }

    async fn count_access_requests_by_state(&self) -> Result<Vec<(AccessState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM access_requests GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        records::tally(&AccessState::ALL, AccessState::parse, rows)
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn touch_environment(
        &self,
        id: &EnvironmentId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE environments SET last_activity_at = ? WHERE id = ? AND last_activity_at < ?",
        )
        .bind(micros(at))
        .bind(id.as_str())
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn set_expiry(
        &self,
        id: &EnvironmentId,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Environment>, StoreError> {
        let row = sqlx::query(
            "UPDATE environments SET expires_at = ?
             WHERE id = ? AND state IN ('creating', 'running', 'stopped') RETURNING *",
        )
        .bind(micros(expires_at))
        .bind(id.as_str())
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        row.map(|row| records::environment(&row)).transpose()
    }

    async fn due_environments(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM environments
             WHERE (state IN ('running', 'stopped', 'failed') AND expires_at <= ?)
                OR (state = 'running' AND idle_timeout_ms IS NOT NULL
                    AND last_activity_at + idle_timeout_ms * 1000 <= ?)
             ORDER BY id LIMIT ?",
        )
        .bind(micros(now))
        .bind(micros(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(records::environment).collect()
    }

    async fn insert_session(&self, session: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, environment_id, user_id, kind, argv, started_at, recorded)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(session.id.as_str())
        .bind(session.environment.as_str())
        .bind(session.user.as_str())
        .bind(session.kind.as_str())
        .bind(serde_json::to_string(&session.argv).map_err(backend)?)
        .bind(micros(session.started_at))
        .bind(i64::from(session.recorded))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn end_session(&self, ended: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions SET ended_at = ?, exit_code = ?, bytes_in = ?, bytes_out = ?
             WHERE id = ? AND ended_at IS NULL",
        )
        .bind(ended.ended_at.map(micros))
        .bind(ended.exit_code.map(i64::from))
        .bind(ended.bytes_in as i64)
        .bind(ended.bytes_out as i64)
        .bind(ended.id.as_str())
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(records::session).transpose()
    }

    async fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<Session>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM sessions WHERE 1 = 1");
        if let Some(environment) = &query.environment {
            sql.push(" AND environment_id = ")
                .push_bind(environment.as_str());
        }
        if let Some(user) = &query.user {
            sql.push(" AND user_id = ").push_bind(user.as_str());
        }
        if let Some(after) = &query.after {
            sql.push(" AND id > ").push_bind(after.as_str());
        }
        sql.push(" ORDER BY id LIMIT ")
            .push_bind(query.limit as i64);
        let rows = sql.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(records::session).collect()
    }

    async fn end_open_sessions(&self, at: DateTime<Utc>) -> Result<Vec<Session>, StoreError> {
        let rows =
            sqlx::query("UPDATE sessions SET ended_at = ? WHERE ended_at IS NULL RETURNING *")
                .bind(micros(at))
                .fetch_all(&self.writer)
                .await
                .map_err(backend)?;
        let mut ended: Vec<Session> = rows
            .iter()
            .map(records::session)
            .collect::<Result<_, _>>()?;
        ended.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ended)
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<ChainHead, StoreError> {
        // The write lock before reading the head, so no other write slips between.
        let mut tx = self.begin_immediate().await?;
        let mut head = read_audit_head(&mut tx).await?;
        for event in events {
            head = head.next(event);
            sqlx::query(
                "INSERT INTO audit_events (time, request_id, actor, action, target, outcome, source, detail, chain_index, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(micros(event.time))
            .bind(&event.request_id)
            .bind(&event.actor)
            .bind(&event.action)
            .bind(event.target.as_deref())
            .bind(&event.outcome)
            .bind(event.source.as_deref())
            .bind(event.detail.as_deref())
            .bind(head.index as i64)
            .bind(&head.hash[..])
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(head)
    }

    async fn chain_unchained_audit(&self) -> Result<u64, StoreError> {
        let mut tx = self.begin_immediate().await?;
        let mut head = read_audit_head(&mut tx).await?;
        let rows = sqlx::query("SELECT * FROM audit_events WHERE chain_index IS NULL ORDER BY seq")
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
        for row in &rows {
            head = head.next(&records::audit_event(row)?);
            sqlx::query("UPDATE audit_events SET chain_index = ?, hash = ? WHERE seq = ?")
                .bind(head.index as i64)
                .bind(&head.hash[..])
                .bind(sqlx::Row::try_get::<i64, _>(row, "seq").map_err(corrupt)?)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(rows.len() as u64)
    }

    async fn count_unchained_audit(&self) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE chain_index IS NULL")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok(count as u64)
    }

    async fn audit_head(&self) -> Result<ChainHead, StoreError> {
        let mut connection = self.pool.acquire().await.map_err(backend)?;
        read_audit_head(&mut connection).await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<ChainedEvent>, StoreError> {
        let mut sql = QueryBuilder::new("SELECT * FROM audit_events WHERE chain_index > ");
        sql.push_bind(query.after.min(i64::MAX as u64) as i64);
        if let Some(actor) = &query.actor {
            sql.push(" AND actor = ").push_bind(actor.as_str());
        }
        if let Some(action) = &query.action {
            sql.push(" AND action = ").push_bind(action.as_str());
        }
        if let Some(target) = &query.target {
            sql.push(" AND target = ").push_bind(target.as_str());
        }
        if let Some(since) = query.since {
            sql.push(" AND time >= ").push_bind(micros(since));
        }
        if let Some(until) = query.until {
            sql.push(" AND time < ").push_bind(micros(until));
        }
        sql.push(" ORDER BY chain_index LIMIT ")
            .push_bind(query.limit as i64);
        let rows = sql.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(records::chained_event).collect()
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events ORDER BY seq DESC LIMIT ?")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(records::audit_event).collect()
    }
}

/// The last chained event's index and hash.
async fn read_audit_head(connection: &mut SqliteConnection) -> Result<ChainHead, StoreError> {
    let row = sqlx::query(
        "SELECT chain_index, hash FROM audit_events WHERE chain_index IS NOT NULL
         ORDER BY chain_index DESC LIMIT 1",
    )
    .fetch_optional(&mut *connection)
    .await
    .map_err(backend)?;
    records::chain_head(row.as_ref())
}

/// Claims an idempotency key for `environment`; the earlier claim when it was taken. Writing
/// first takes SQLite's write lock at once, so two requests with one key serialize here
/// instead of both reading "absent".
async fn claim_key(
    connection: &mut SqliteConnection,
    environment: &Environment,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Inserted>, StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (owner_id, key, environment_id, fingerprint, created_at)
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner_id, key) DO NOTHING",
    )
    .bind(environment.owner.as_str())
    .bind(key)
    .bind(environment.id.as_str())
    .bind(fingerprint)
    .bind(micros(environment.created_at))
    .execute(&mut *connection)
    .await
    .map_err(backend)?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT environment_id, fingerprint FROM idempotency_keys WHERE owner_id = ? AND key = ?",
    )
    .bind(environment.owner.as_str())
    .bind(key)
    .fetch_one(&mut *connection)
    .await
    .map_err(backend)?;
    records::replayed(&row).map(Some)
}

/// Counts the team's and the host's live environments; the refusal if `environment` does not
/// fit. A write first takes SQLite's write lock (the whole database) at once, so concurrent
/// creates count one after the other and never both take the last slot.
async fn check_ceilings(
    connection: &mut SqliteConnection,
    environment: &Environment,
    ceilings: &Ceilings,
) -> Result<Option<Inserted>, StoreError> {
    let team = environment.team.as_ref().zip(ceilings.team.as_ref());
    if team.is_none() && ceilings.host.is_none() {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('create_lock', '')
         ON CONFLICT (key) DO UPDATE SET value = ''",
    )
    .execute(&mut *connection)
    .await
    .map_err(backend)?;
    if let Some((team, quota)) = team {
        let (count, used) = live_usage(connection, Some(team)).await?;
        if let Some(exceeded) = over_quota(quota, count, &used, &environment.resources) {
            return Ok(Some(Inserted::OverQuota(exceeded)));
        }
    }
    if let Some(capacity) = &ceilings.host {
        let (count, used) = live_usage(connection, None).await?;
        if let Some(exceeded) = over_quota(capacity, count, &used, &environment.resources) {
            return Ok(Some(Inserted::OverCapacity(exceeded)));
        }
    }
    Ok(None)
}

/// How many live environments (not deleted or failed) there are, of one team or all, and
/// their memory and CPU limits added up.
async fn live_usage(
    connection: &mut SqliteConnection,
    team: Option<&Name>,
) -> Result<(u64, Resources), StoreError> {
    const LIVE: &str =
        "SELECT COUNT(*) AS environments, COALESCE(SUM(memory_mib), 0) AS memory_mib,
                COALESCE(SUM(millicpus), 0) AS millicpus
         FROM environments WHERE state NOT IN ('deleted', 'failed')";
    let row = match team {
        Some(team) => {
            sqlx::query(&format!("{LIVE} AND team = ?"))
                .bind(team.as_str())
                .fetch_one(&mut *connection)
                .await
        }
        None => sqlx::query(LIVE).fetch_one(&mut *connection).await,
    }
    .map_err(backend)?;
    records::usage(&row)
}

async fn read_access_request(
    connection: &mut sqlx::SqliteConnection,
    id: &AccessRequestId,
) -> Result<Option<AccessRequest>, StoreError> {
    let row = sqlx::query("SELECT * FROM access_requests WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(&mut *connection)
        .await
        .map_err(backend)?;
    let Some(row) = row else { return Ok(None) };
    let mut request = records::access_request(&row)?;
    request.approvals = read_approvals(connection, id).await?;
    Ok(Some(request))
}

async fn read_approvals(
    connection: &mut sqlx::SqliteConnection,
    id: &AccessRequestId,
) -> Result<Vec<Approval>, StoreError> {
    let rows = sqlx::query(
        "SELECT approver_id, at FROM access_approvals WHERE request_id = ? ORDER BY at, approver_id",
    )
    .bind(id.as_str())
    .fetch_all(&mut *connection)
    .await
    .map_err(backend)?;
    rows.iter().map(records::approval).collect()
}
