//! The embedded default store: one SQLite file in WAL mode with `synchronous=FULL`, so an
//! acknowledged write survives a crash of the process or the host.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use airlock_core::ids::{EnvironmentId, Name, TokenId, UserId};
use airlock_core::model::{
    AuditEvent, EnvState, Environment, NetworkMode, Resources, Role, Scope, TokenRecord, User,
};
use airlock_core::ports::{EnvironmentQuery, Inserted, Store, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqlitePool};

use crate::schema::MIGRATIONS;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(backend)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
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
        sqlx::query("INSERT INTO users (id, name, roles, created_at) VALUES (?, ?, ?, ?)")
            .bind(user.id.as_str())
            .bind(user.name.as_str())
            .bind(join(user.roles.iter().map(|role| role.as_str())))
            .bind(micros(user.created_at))
            .execute(&self.pool)
            .await
            .map_err(|error| duplicate_or_backend(error, "user"))?;
        Ok(())
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| user_from_row(&row))
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
            "INSERT INTO tokens (id, user_id, secret_hash, scopes, description, created_at, expires_at, revoked_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.id.as_str())
        .bind(token.user_id.as_str())
        .bind(&token.secret_hash[..])
        .bind(join(token.scopes.iter().map(|scope| scope.as_str())))
        .bind(token.description.as_deref())
        .bind(micros(token.created_at))
        .bind(token.expires_at.map(micros))
        .bind(token.revoked_at.map(micros))
        .execute(&self.pool)
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
            .map(|row| token_from_row(&row))
            .transpose()
    }

    async fn find_token(
        &self,
        secret_hash: &[u8; 32],
    ) -> Result<Option<(TokenRecord, User)>, StoreError> {
        let row = sqlx::query(
            "SELECT tokens.*, users.name AS user_name, users.roles AS user_roles, users.created_at AS user_created_at
             FROM tokens JOIN users ON users.id = tokens.user_id WHERE tokens.secret_hash = ?",
        )
        .bind(&secret_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let token = token_from_row(&row)?;
        let user = User {
            id: token.user_id.clone(),
            name: parse_name(row.get("user_name"))?,
            roles: split(row.get("user_roles"), |text| {
                Role::parse(text).map_err(corrupt)
            })?,
            created_at: from_micros(row.get("user_created_at"))?,
        };
        Ok(Some((token, user)))
    }

    async fn revoke_token(&self, id: &TokenId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let result =
            sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(micros(at))
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn insert_environment(
        &self,
        environment: &Environment,
        idempotency: Option<(&str, &str)>,
    ) -> Result<Inserted, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        if let Some((key, fingerprint)) = idempotency {
            // Writing first takes SQLite's write lock at once, so two requests with one key
            // serialize here instead of both reading "absent".
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (owner_id, key, environment_id, fingerprint, created_at)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner_id, key) DO NOTHING",
            )
            .bind(environment.owner.as_str())
            .bind(key)
            .bind(environment.id.as_str())
            .bind(fingerprint)
            .bind(micros(environment.created_at))
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected()
                == 1;
            if !claimed {
                let row = sqlx::query("SELECT environment_id, fingerprint FROM idempotency_keys WHERE owner_id = ? AND key = ?")
                    .bind(environment.owner.as_str())
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
                return Ok(Inserted::Replayed {
                    environment: EnvironmentId::parse(row.get("environment_id"))
                        .map_err(corrupt)?,
                    fingerprint: row.get("fingerprint"),
                });
            }
        }
        sqlx::query(
            "INSERT INTO environments (id, name, owner_id, image, memory_mib, millicpus, pids, disk_mib, network, state, created_at, updated_at, expires_at, failure)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .bind(environment.state.as_str())
        .bind(micros(environment.created_at))
        .bind(micros(environment.updated_at))
        .bind(micros(environment.expires_at))
        .bind(environment.failure.as_deref())
        .execute(&mut *tx)
        .await
        .map_err(|error| duplicate_or_backend(error, "environment name"))?;
        tx.commit().await.map_err(backend)?;
        Ok(Inserted::Created)
    }

    async fn get_environment(&self, id: &EnvironmentId) -> Result<Option<Environment>, StoreError> {
        sqlx::query("SELECT * FROM environments WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| environment_from_row(&row))
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
        rows.iter().map(environment_from_row).collect()
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
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.map(|row| environment_from_row(&row)).transpose()
    }

    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (time, request_id, actor, action, target, outcome, source, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(micros(event.time))
        .bind(&event.request_id)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(event.target.as_deref())
        .bind(&event.outcome)
        .bind(event.source.as_deref())
        .bind(event.detail.as_deref())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_events ORDER BY seq DESC LIMIT ?")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    time: from_micros(row.get("time"))?,
                    request_id: row.get("request_id"),
                    actor: row.get("actor"),
                    action: row.get("action"),
                    target: row.get("target"),
                    outcome: row.get("outcome"),
                    source: row.get("source"),
                    detail: row.get("detail"),
                })
            })
            .collect()
    }
}

fn environment_from_row(row: &SqliteRow) -> Result<Environment, StoreError> {
    let state: String = row.get("state");
    Ok(Environment {
        id: EnvironmentId::parse(row.get("id")).map_err(corrupt)?,
        name: parse_name(row.get("name"))?,
        owner: UserId::parse(row.get("owner_id")).map_err(corrupt)?,
        image: parse_name(row.get("image"))?,
        resources: Resources {
            memory_mib: row.get::<i64, _>("memory_mib") as u64,
            millicpus: row.get::<i64, _>("millicpus") as u64,
            pids: row.get::<i64, _>("pids") as u64,
            disk_mib: row.get::<i64, _>("disk_mib") as u64,
        },
        network: NetworkMode::parse(row.get("network")).map_err(corrupt)?,
        state: EnvState::parse(&state)
            .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
        created_at: from_micros(row.get("created_at"))?,
        updated_at: from_micros(row.get("updated_at"))?,
        expires_at: from_micros(row.get("expires_at"))?,
        failure: row.get("failure"),
    })
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId::parse(row.get("id")).map_err(corrupt)?,
        name: parse_name(row.get("name"))?,
        roles: split(row.get("roles"), |text| Role::parse(text).map_err(corrupt))?,
        created_at: from_micros(row.get("created_at"))?,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<TokenRecord, StoreError> {
    let hash: Vec<u8> = row.get("secret_hash");
    Ok(TokenRecord {
        id: TokenId::parse(row.get("id")).map_err(corrupt)?,
        user_id: UserId::parse(row.get("user_id")).map_err(corrupt)?,
        secret_hash: hash
            .try_into()
            .map_err(|_| corrupt("secret hash is not 32 bytes"))?,
        scopes: split(row.get("scopes"), |text| {
            Scope::parse(text).map_err(corrupt)
        })?,
        description: row.get("description"),
        created_at: from_micros(row.get("created_at"))?,
        expires_at: row
            .get::<Option<i64>, _>("expires_at")
            .map(from_micros)
            .transpose()?,
        revoked_at: row
            .get::<Option<i64>, _>("revoked_at")
            .map(from_micros)
            .transpose()?,
    })
}

fn parse_name(text: &str) -> Result<Name, StoreError> {
    Name::parse("name", text).map_err(corrupt)
}

fn join<'a>(words: impl Iterator<Item = &'a str>) -> String {
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

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn from_micros(value: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| corrupt(format!("timestamp {value} out of range")))
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt record: {error}"))
}

fn duplicate_or_backend(error: sqlx::Error, what: &'static str) -> StoreError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            StoreError::Duplicate(what)
        }
        _ => backend(error),
    }
}
