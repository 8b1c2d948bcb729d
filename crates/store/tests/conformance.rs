//! The storage conformance suite: one set of behaviour tests of the `Store` port, written once
//! and run against SQLite (a temporary file) and PostgreSQL (a fresh schema per test in the
//! database of `AIRLOCK_TEST_POSTGRES_URL`; `scripts/postgres` starts one), with the same
//! expected results on both.
//!
//! Without `AIRLOCK_TEST_POSTGRES_URL` the PostgreSQL tests print `SKIPPED …` and pass, except
//! under CI (`CI` set), where they fail: CI must run them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::access::{
    AccessProfile, AccessRequest, AccessState, Approval, Approved, SecretMount,
};
use airlock_core::audit::{ChainHead, ChainedEvent};
use airlock_core::ids::{AccessRequestId, EnvironmentId, Name, SessionId, TokenId, UserId};
use airlock_core::model::{
    AuditEvent, EnvState, Environment, NetworkMode, Party, Quota, Resources, Role, Scope, Team,
    TokenRecord, User,
};
use airlock_core::ports::{
    AccessQuery, AuditQuery, Ceilings, EnvironmentQuery, Inserted, SessionQuery, Store, StoreError,
};
use airlock_core::session::{Session, SessionKind};
use airlock_store::{PostgresStore, SqliteStore};
use chrono::{DateTime, TimeZone, Utc};
use sqlx::Connection;
use tempfile::TempDir;

/// Instantiates each behaviour test once per backend: `sqlite::<test>` and `postgres::<test>`.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::Db::sqlite().await;
                    super::$test(&db).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let test = concat!("postgres::", stringify!($test));
                    let Some(db) = super::Db::postgres(test).await else { return };
                    super::$test(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

conformance!(
    concurrent_creates_respect_the_host_capacity,
    lifetimes_touch_extend_and_come_due,
    a_replay_wins_over_a_full_quota,
    users_round_trip_and_names_are_unique,
    users_list_in_id_order_and_update_only_roles_and_teams,
    teams_and_quotas,
    tokens_are_found_by_hash_with_their_user,
    tokens_revoke_once_list_and_touch,
    environments_round_trip,
    idempotency_keys_replay_the_first_claim,
    live_names_are_unique_per_owner,
    transitions_only_from_allowed_states,
    environment_listing_filters_and_pages,
    quotas_count_live_environments,
    concurrent_creates_respect_the_quota,
    concurrent_claims_of_one_key_create_once,
    profiles_round_trip_every_field,
    access_requests_round_trip_and_list,
    approvals_count_once_and_grant,
    concurrent_approvals_grant_once,
    end_access_only_from_its_state,
    settings_upsert,
    states_are_counted_for_metrics,
    audit_appends_and_lists_newest_first,
    sessions_start_end_once_and_list,
    audit_appends_form_one_hash_chain,
    audit_queries_filter_and_page_in_chain_order,
    audit_events_from_before_the_chain_are_chained_in_written_order,
    concurrent_audit_appends_from_two_stores_form_one_chain,
    reopening_keeps_the_data,
);

// ---------------------------------------------------------------------------------------------
// Backends.

/// One backend's fresh, empty database, and how to open it again.
struct Db {
    store: Arc<dyn Store>,
    place: Place,
}

enum Place {
    Sqlite {
        path: PathBuf,
        _dir: TempDir,
    },
    Postgres {
        /// The database as given, to create and drop the schema.
        admin_url: String,
        /// The same with the test's schema as `search_path`.
        url: String,
        schema: String,
    },
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("airlock.db");
        let store = SqliteStore::open(&path).await.expect("opening SQLite");
        Db {
            store: Arc::new(store),
            place: Place::Sqlite { path, _dir: dir },
        }
    }

    /// A schema of its own in the test database; `None`, after saying so, when there is no
    /// test database outside CI.
    async fn postgres(test: &str) -> Option<Db> {
        let admin_url = postgres_url(test)?;
        let schema = fresh_schema(&admin_url).await;
        let url = with_search_path(&admin_url, &schema);
        let store = PostgresStore::connect(&url)
            .await
            .expect("connecting to PostgreSQL");
        Some(Db {
            store: Arc::new(store),
            place: Place::Postgres {
                admin_url,
                url,
                schema,
            },
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Another store on the same database, as a second server (or a restart) would open it.
    async fn open_again(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match &self.place {
            Place::Sqlite { path, .. } => Arc::new(SqliteStore::open(path).await?),
            Place::Postgres { url, .. } => Arc::new(PostgresStore::connect(url).await?),
        })
    }

    /// Runs SQL on the database directly, as an older airlock (or an intruder) would.
    async fn raw(&self, sql: &str) {
        match &self.place {
            Place::Sqlite { path, .. } => {
                let mut connection =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
            }
            Place::Postgres { url, .. } => {
                let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
            }
        }
    }

    /// Drops a passed test's schema; a failed test's stays for a look.
    async fn finish(self) {
        let Db { store, place } = self;
        drop(store);
        if let Place::Postgres {
            admin_url, schema, ..
        } = place
        {
            let mut admin = sqlx::PgConnection::connect(&admin_url)
                .await
                .expect("connecting to PostgreSQL");
            sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut admin)
                .await
                .expect("dropping the test schema");
        }
    }
}

/// `AIRLOCK_TEST_POSTGRES_URL`, or `None` after printing why the test is skipped. Under CI
/// its absence fails the test.
fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("AIRLOCK_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) => {
            panic!(
                "{test}: CI must run PostgreSQL: set AIRLOCK_TEST_POSTGRES_URL (scripts/postgres starts one)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: set AIRLOCK_TEST_POSTGRES_URL (scripts/postgres starts one)"
            );
            None
        }
    }
}

async fn fresh_schema(admin_url: &str) -> String {
    let unique = UserId::generate();
    let schema = format!("conformance_{}", &unique.as_str()[UserId::PREFIX.len()..]);
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connecting to PostgreSQL (AIRLOCK_TEST_POSTGRES_URL)");
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .expect("creating the test schema");
    schema
}

/// `url` with libpq's `options` setting the search path, so every pooled connection uses it.
fn with_search_path(url: &str, schema: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

// ---------------------------------------------------------------------------------------------
// Records.

/// A time with microseconds, the precision both stores keep.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
        + chrono::Duration::seconds(seconds)
        + chrono::Duration::microseconds(123_456)
}

fn name(text: &str) -> Name {
    Name::parse("name", text).unwrap()
}

fn user(user_name: &str, roles: &[Role], teams: &[&str]) -> User {
    User {
        id: UserId::generate(),
        name: name(user_name),
        roles: roles.to_vec(),
        teams: teams.iter().map(|team| name(team)).collect(),
        external_id: None,
        created_at: at(0),
    }
}

async fn add_user(store: &dyn Store, user_name: &str) -> User {
    let user = user(user_name, &[Role::Developer], &[]);
    store.insert_user(&user).await.unwrap();
    user
}

fn team(team_name: &str, quota: Quota) -> Team {
    Team {
        name: name(team_name),
        quota,
        created_at: at(1),
    }
}

fn token(user: &User, hash_byte: u8) -> TokenRecord {
    TokenRecord {
        id: TokenId::generate(),
        user_id: user.id.clone(),
        secret_hash: [hash_byte; 32],
        scopes: vec![Scope::Read, Scope::AccessRequest],
        description: Some(format!("token {hash_byte}")),
        created_at: at(2),
        expires_at: Some(at(3600)),
        revoked_at: None,
        last_used_at: None,
        rate_limit: None,
    }
}

fn resources(memory_mib: u64, millicpus: u64) -> Resources {
    Resources {
        memory_mib,
        millicpus,
        pids: 64,
        disk_mib: 1024,
    }
}

fn environment(owner: &User, environment_name: &str) -> Environment {
    Environment {
        id: EnvironmentId::generate(),
        name: name(environment_name),
        owner: owner.id.clone(),
        image: name("default"),
        resources: resources(512, 1000),
        network: NetworkMode::None,
        team: None,
        access_request: None,
        state: EnvState::Creating,
        created_at: at(10),
        updated_at: at(10),
        expires_at: at(3610),
        last_activity_at: at(10),
        idle_timeout: Some(Duration::from_secs(600)),
        failure: None,
    }
}

fn in_team(mut environment: Environment, team: &str, resources: Resources) -> Environment {
    environment.team = Some(name(team));
    environment.resources = resources;
    environment
}

fn profile(profile_name: &str) -> AccessProfile {
    AccessProfile {
        name: name(profile_name),
        description: None,
        max_duration: Duration::from_secs(3600),
        approvals_required: 1,
        secrets: Vec::new(),
        network: NetworkMode::None,
        requesters: Vec::new(),
        approvers: Vec::new(),
        created_at: at(5),
    }
}

fn access_request(requester: &User, profile: &str, approvals_required: u32) -> AccessRequest {
    AccessRequest {
        id: AccessRequestId::generate(),
        profile: name(profile),
        requester: requester.id.clone(),
        reason: "fix the incident".into(),
        duration: Duration::from_secs(1800),
        approvals_required,
        state: AccessState::Pending,
        created_at: at(20),
        decide_by: at(20 + 3600),
        approvals: Vec::new(),
        granted_at: None,
        expires_at: None,
        ended_at: None,
        ended_by: None,
        end_reason: None,
    }
}

fn audit(seconds: i64, action: &str) -> AuditEvent {
    AuditEvent {
        time: at(seconds),
        request_id: format!("req-{seconds}"),
        actor: "usr_someone".into(),
        action: action.into(),
        target: Some("env_something".into()),
        outcome: "ok".into(),
        source: None,
        detail: Some(format!("{{\"seconds\":{seconds}}}")),
    }
}

fn ids<T, I: Ord + Clone>(records: &[T], id: impl Fn(&T) -> &I) -> Vec<I> {
    records.iter().map(|record| id(record).clone()).collect()
}

fn sorted<I: Ord + Clone>(ids: &[&I]) -> Vec<I> {
    let mut ids: Vec<I> = ids.iter().map(|id| (*id).clone()).collect();
    ids.sort();
    ids
}

fn all(limit: u32) -> EnvironmentQuery {
    EnvironmentQuery {
        limit,
        ..Default::default()
    }
}

fn assert_duplicate(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(StoreError::Duplicate(rule)) => assert_eq!(rule, what),
        other => panic!("expected a duplicate {what}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Users and teams.

async fn users_round_trip_and_names_are_unique(db: &Db) {
    let store = db.store();
    let mut alice = user("alice", &[Role::Admin, Role::Approver], &["red", "blue"]);
    alice.external_id = Some("https://issuer.example alice-subject".into());
    store.insert_user(&alice).await.unwrap();
    assert_eq!(
        store.get_user(&alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.get_user(&UserId::generate()).await.unwrap(), None);

    let no_roles = user("nobody", &[], &[]);
    store.insert_user(&no_roles).await.unwrap();
    assert_eq!(store.get_user(&no_roles.id).await.unwrap(), Some(no_roles));

    assert_duplicate(
        store
            .insert_user(&user("alice", &[Role::Viewer], &[]))
            .await,
        "user",
    );
    let mut same_id = user("alice-2", &[], &[]);
    same_id.id = alice.id.clone();
    assert_duplicate(store.insert_user(&same_id).await, "user");
    let mut same_subject = user("alice-3", &[], &[]);
    same_subject.external_id = alice.external_id.clone();
    assert_duplicate(store.insert_user(&same_subject).await, "user");

    assert_eq!(
        store
            .find_external_user("https://issuer.example alice-subject")
            .await
            .unwrap(),
        Some(alice)
    );
    assert_eq!(store.find_external_user("nobody").await.unwrap(), None);
    assert_eq!(store.count_users().await.unwrap(), 2);
}

async fn users_list_in_id_order_and_update_only_roles_and_teams(db: &Db) {
    let store = db.store();
    assert_eq!(store.list_users(None, 10).await.unwrap(), Vec::new());
    let mut users = Vec::new();
    for index in 0..5 {
        users.push(add_user(&*store, &format!("user-{index}")).await);
    }
    users.sort_by(|a, b| a.id.cmp(&b.id));
    let page = |after: Option<usize>, limit: u32| {
        let store = store.clone();
        let after = after.map(|index| users[index].id.clone());
        async move { store.list_users(after.as_ref(), limit).await.unwrap() }
    };
    assert_eq!(page(None, 2).await, users[..2]);
    assert_eq!(page(Some(1), 2).await, users[2..4]);
    assert_eq!(page(Some(3), 2).await, users[4..]);
    assert_eq!(page(Some(4), 2).await, Vec::new());
    assert_eq!(page(None, 0).await, Vec::new());
    assert_eq!(page(None, 100).await, users);
    assert_eq!(store.count_users().await.unwrap(), 5);

    let mut changed = users[0].clone();
    changed.roles = vec![Role::Auditor, Role::Ci];
    changed.teams = vec![name("green")];
    changed.name = name("renamed");
    changed.external_id = Some("ignored".into());
    assert!(store.update_user(&changed).await.unwrap());
    let stored = store.get_user(&changed.id).await.unwrap().unwrap();
    assert_eq!(stored.roles, [Role::Auditor, Role::Ci]);
    assert_eq!(stored.teams, [name("green")]);
    assert_eq!(stored.name, users[0].name, "only roles and teams change");
    assert_eq!(stored.external_id, None, "only roles and teams change");

    changed.roles.clear();
    changed.teams.clear();
    assert!(store.update_user(&changed).await.unwrap());
    let stored = store.get_user(&changed.id).await.unwrap().unwrap();
    assert!(stored.roles.is_empty() && stored.teams.is_empty());

    let unknown = user("ghost", &[], &[]);
    assert!(!store.update_user(&unknown).await.unwrap());
}

async fn teams_and_quotas(db: &Db) {
    let store = db.store();
    assert_eq!(store.list_teams().await.unwrap(), Vec::new());
    let limited = Quota {
        max_environments: Some(3),
        max_memory_mib: Some(4096),
        max_millicpus: Some(2500),
    };
    // Names compare bytewise on both backends: '-' sorts before letters.
    for (team_name, quota) in [("b", Quota::default()), ("a-c", limited), ("ab", limited)] {
        store.insert_team(&team(team_name, quota)).await.unwrap();
    }
    assert_eq!(
        store.get_team(&name("a-c")).await.unwrap(),
        Some(team("a-c", limited))
    );
    assert_eq!(store.get_team(&name("nope")).await.unwrap(), None);
    assert_duplicate(store.insert_team(&team("b", limited)).await, "team");
    let listed = store.list_teams().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|team| team.name.as_str())
            .collect::<Vec<_>>(),
        ["a-c", "ab", "b"]
    );
    assert_eq!(listed[2], team("b", Quota::default()));

    let raised = Quota {
        max_environments: Some(10),
        max_memory_mib: None,
        max_millicpus: Some(u32::MAX as u64 * 4),
    };
    assert!(store.set_quota(&name("b"), &raised).await.unwrap());
    assert_eq!(
        store.get_team(&name("b")).await.unwrap().unwrap().quota,
        raised
    );
    assert!(
        store
            .set_quota(&name("ab"), &Quota::default())
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_team(&name("ab")).await.unwrap().unwrap().quota,
        Quota::default()
    );
    assert!(!store.set_quota(&name("nope"), &raised).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Tokens.

async fn tokens_are_found_by_hash_with_their_user(db: &Db) {
    let store = db.store();
    let alice = user("alice", &[Role::Developer, Role::Approver], &["red"]);
    store.insert_user(&alice).await.unwrap();
    let mut first = token(&alice, 1);
    first.description = None;
    first.expires_at = None;
    store.insert_token(&first).await.unwrap();
    assert_eq!(
        store.get_token(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_token(&TokenId::generate()).await.unwrap(), None);

    assert_eq!(
        store.find_token(&[1; 32]).await.unwrap(),
        Some((first.clone(), alice.clone()))
    );
    assert_eq!(store.find_token(&[9; 32]).await.unwrap(), None);

    // The user as it is now, not as it was when the token was made.
    let mut promoted = alice.clone();
    promoted.roles = vec![Role::Admin];
    promoted.teams = vec![name("red"), name("blue")];
    store.update_user(&promoted).await.unwrap();
    assert_eq!(
        store.find_token(&[1; 32]).await.unwrap().unwrap().1,
        promoted
    );

    // Whatever its expiry or revocation.
    let mut old = token(&alice, 2);
    old.expires_at = Some(at(-10));
    old.revoked_at = Some(at(-5));
    store.insert_token(&old).await.unwrap();
    assert_eq!(store.find_token(&[2; 32]).await.unwrap().unwrap().0, old);

    let mut same_hash = token(&alice, 1);
    same_hash.id = TokenId::generate();
    assert_duplicate(store.insert_token(&same_hash).await, "token");
    let mut same_id = token(&alice, 3);
    same_id.id = first.id.clone();
    assert_duplicate(store.insert_token(&same_id).await, "token");
}

async fn tokens_revoke_once_list_and_touch(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let bob = add_user(&*store, "bob").await;
    let mut alices = Vec::new();
    for byte in 1..=3 {
        let token = token(&alice, byte);
        store.insert_token(&token).await.unwrap();
        alices.push(token);
    }
    let bobs = token(&bob, 4);
    store.insert_token(&bobs).await.unwrap();
    alices.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(store.list_tokens(&alice.id).await.unwrap(), alices);
    assert_eq!(
        store.list_tokens(&bob.id).await.unwrap(),
        vec![bobs.clone()]
    );
    assert_eq!(
        store.list_tokens(&UserId::generate()).await.unwrap(),
        Vec::new()
    );

    assert!(store.revoke_token(&alices[0].id, at(100)).await.unwrap());
    assert!(!store.revoke_token(&alices[0].id, at(200)).await.unwrap());
    assert!(
        !store
            .revoke_token(&TokenId::generate(), at(100))
            .await
            .unwrap()
    );
    let revoked = store.get_token(&alices[0].id).await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at,
        Some(at(100)),
        "the first revocation stays"
    );

    store.touch_token(&bobs.id, at(300)).await.unwrap();
    store.touch_token(&bobs.id, at(360)).await.unwrap();
    store
        .touch_token(&TokenId::generate(), at(300))
        .await
        .unwrap();
    let touched = store.get_token(&bobs.id).await.unwrap().unwrap();
    assert_eq!(
        touched,
        TokenRecord {
            last_used_at: Some(at(360)),
            ..bobs
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Environments.

async fn environments_round_trip(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let plain = environment(&alice, "plain");
    assert_eq!(
        store
            .insert_environment(&plain, None, &Ceilings::default())
            .await
            .unwrap(),
        Inserted::Created
    );
    assert_eq!(store.get_environment(&plain.id).await.unwrap(), Some(plain));

    let mut full = environment(&alice, "full");
    full.image = name("python-3");
    full.resources = Resources {
        memory_mib: 64 * 1024,
        millicpus: 16_000,
        pids: 4096,
        disk_mib: 100 * 1024,
    };
    full.network = NetworkMode::Egress;
    full.team = Some(name("red"));
    full.access_request = Some(AccessRequestId::generate());
    full.state = EnvState::Failed;
    full.updated_at = at(11);
    full.failure = Some("the image is gone: \"python-3\"".into());
    assert_eq!(
        store
            .insert_environment(&full, None, &Ceilings::default())
            .await
            .unwrap(),
        Inserted::Created
    );
    assert_eq!(store.get_environment(&full.id).await.unwrap(), Some(full));
    assert_eq!(
        store
            .get_environment(&EnvironmentId::generate())
            .await
            .unwrap(),
        None
    );
}

async fn idempotency_keys_replay_the_first_claim(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let bob = add_user(&*store, "bob").await;
    let first = environment(&alice, "first");
    assert_eq!(
        store
            .insert_environment(
                &first,
                Some(("key-1", "fingerprint-a")),
                &Ceilings::default()
            )
            .await
            .unwrap(),
        Inserted::Created
    );

    // A replay gets the earlier environment and fingerprint, whatever it asks now, and
    // writes nothing.
    let again = environment(&alice, "again");
    let replayed = Inserted::Replayed {
        environment: first.id.clone(),
        fingerprint: "fingerprint-a".into(),
    };
    for fingerprint in ["fingerprint-a", "fingerprint-b"] {
        assert_eq!(
            store
                .insert_environment(&again, Some(("key-1", fingerprint)), &Ceilings::default())
                .await
                .unwrap(),
            replayed
        );
    }
    assert_eq!(store.get_environment(&again.id).await.unwrap(), None);

    // Keys are per owner; another key of the same owner is a new claim.
    let bobs = environment(&bob, "first");
    assert_eq!(
        store
            .insert_environment(
                &bobs,
                Some(("key-1", "fingerprint-c")),
                &Ceilings::default()
            )
            .await
            .unwrap(),
        Inserted::Created
    );
    assert_eq!(
        store
            .insert_environment(
                &again,
                Some(("key-2", "fingerprint-b")),
                &Ceilings::default()
            )
            .await
            .unwrap(),
        Inserted::Created
    );
    assert_eq!(store.list_environments(&all(100)).await.unwrap().len(), 3);

    // A create that fails does not keep its claim.
    let taken = environment(&alice, "first");
    assert_duplicate(
        store
            .insert_environment(
                &taken,
                Some(("key-3", "fingerprint-d")),
                &Ceilings::default(),
            )
            .await,
        "environment name",
    );
    let retry = environment(&alice, "retry");
    assert_eq!(
        store
            .insert_environment(
                &retry,
                Some(("key-3", "fingerprint-e")),
                &Ceilings::default()
            )
            .await
            .unwrap(),
        Inserted::Created
    );
}

/// Activity never moves back; expiry is set only on live environments; due ones are those
/// past their expiry and the running ones idle past their timeout.
async fn lifetimes_touch_extend_and_come_due(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let mut made = Vec::new();
    for (environment_name, state) in [
        ("idle", EnvState::Running),
        ("busy", EnvState::Running),
        ("stopped", EnvState::Stopped),
        ("old", EnvState::Failed),
    ] {
        let environment = environment(&alice, environment_name);
        store
            .insert_environment(&environment, None, &Ceilings::default())
            .await
            .unwrap();
        store
            .transition(
                &environment.id,
                &[EnvState::Creating],
                EnvState::Running,
                at(10),
                None,
            )
            .await
            .unwrap()
            .unwrap();
        if state != EnvState::Running {
            store
                .transition(&environment.id, &[EnvState::Running], state, at(10), None)
                .await
                .unwrap()
                .unwrap();
        }
        made.push(environment.id);
    }
    let [idle, busy, stopped, old] = [&made[0], &made[1], &made[2], &made[3]];
    store.touch_environment(busy, at(500)).await.unwrap();
    store.touch_environment(busy, at(100)).await.unwrap();
    let read = store.get_environment(busy).await.unwrap().unwrap();
    assert_eq!(read.last_activity_at, at(500), "activity never moves back");
    assert_eq!(read.idle_timeout, Some(Duration::from_secs(600)));

    // At 700 s: only `idle` has been idle for its 600 s.
    let due = store.due_environments(at(700), 100).await.unwrap();
    assert_eq!(ids(&due, |environment| &environment.id), vec![idle.clone()]);
    // At 3610 s everything live is past its expiry; a stopped one is not "idle".
    let due = store.due_environments(at(3610), 100).await.unwrap();
    assert_eq!(
        ids(&due, |environment| &environment.id),
        sorted(&[idle, busy, stopped, old])
    );
    // Extending moves a live one out; a failed one cannot be extended.
    let extended = store.set_expiry(busy, at(7200)).await.unwrap().unwrap();
    assert_eq!(extended.expires_at, at(7200));
    assert_eq!(store.set_expiry(old, at(7200)).await.unwrap(), None);
    store.touch_environment(busy, at(3600)).await.unwrap();
    let due = store.due_environments(at(3610), 100).await.unwrap();
    assert!(!due.iter().any(|environment| &environment.id == busy));
}

/// Retrying a create that succeeded returns it, even once its team is full; and a create
/// refused for the quota does not keep its key.
async fn a_replay_wins_over_a_full_quota(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let one = Quota {
        max_environments: Some(1),
        ..Quota::default()
    };
    store.insert_team(&team("solo", one)).await.unwrap();
    let first = in_team(environment(&alice, "first"), "solo", resources(64, 100));
    assert_eq!(
        store
            .insert_environment(
                &first,
                Some(("key-1", "f")),
                &Ceilings {
                    team: Some(one),
                    host: None
                }
            )
            .await
            .unwrap(),
        Inserted::Created
    );
    let retry = in_team(environment(&alice, "retry"), "solo", resources(64, 100));
    assert_eq!(
        store
            .insert_environment(
                &retry,
                Some(("key-1", "f")),
                &Ceilings {
                    team: Some(one),
                    host: None
                }
            )
            .await
            .unwrap(),
        Inserted::Replayed {
            environment: first.id.clone(),
            fingerprint: "f".into(),
        }
    );
    assert!(matches!(
        store
            .insert_environment(
                &retry,
                Some(("key-2", "f")),
                &Ceilings {
                    team: Some(one),
                    host: None
                }
            )
            .await
            .unwrap(),
        Inserted::OverQuota(_)
    ));
    // Room again: the refused key was not kept, so the same key now creates.
    store
        .transition(
            &first.id,
            &[EnvState::Creating],
            EnvState::Failed,
            at(10),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .insert_environment(
                &retry,
                Some(("key-2", "f")),
                &Ceilings {
                    team: Some(one),
                    host: None
                }
            )
            .await
            .unwrap(),
        Inserted::Created
    );
}

async fn live_names_are_unique_per_owner(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let bob = add_user(&*store, "bob").await;
    let web = environment(&alice, "web");
    store
        .insert_environment(&web, None, &Ceilings::default())
        .await
        .unwrap();
    assert_duplicate(
        store
            .insert_environment(&environment(&alice, "web"), None, &Ceilings::default())
            .await,
        "environment name",
    );
    let mut same_id = environment(&alice, "other");
    same_id.id = web.id.clone();
    assert_duplicate(
        store
            .insert_environment(&same_id, None, &Ceilings::default())
            .await,
        "environment name",
    );
    assert_eq!(
        store
            .insert_environment(&environment(&bob, "web"), None, &Ceilings::default())
            .await
            .unwrap(),
        Inserted::Created
    );

    // Deleted and failed environments free their name; the other live states keep it.
    for state in [EnvState::Running, EnvState::Stopped, EnvState::Deleting] {
        let mut holder = environment(&alice, "held");
        holder.state = state;
        store
            .insert_environment(&holder, None, &Ceilings::default())
            .await
            .unwrap();
        assert_duplicate(
            store
                .insert_environment(&environment(&alice, "held"), None, &Ceilings::default())
                .await,
            "environment name",
        );
        store
            .transition(&holder.id, &[state], EnvState::Failed, at(20), Some("x"))
            .await
            .unwrap()
            .unwrap();
    }
    store
        .transition(
            &web.id,
            &[EnvState::Creating],
            EnvState::Deleting,
            at(20),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_duplicate(
        store
            .insert_environment(&environment(&alice, "web"), None, &Ceilings::default())
            .await,
        "environment name",
    );
    store
        .transition(
            &web.id,
            &[EnvState::Deleting],
            EnvState::Deleted,
            at(21),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        let mut gone = environment(&alice, "web");
        gone.state = EnvState::Deleted;
        store
            .insert_environment(&gone, None, &Ceilings::default())
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .insert_environment(&environment(&alice, "web"), None, &Ceilings::default())
            .await
            .unwrap(),
        Inserted::Created
    );
}

async fn transitions_only_from_allowed_states(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let created = environment(&alice, "web");
    store
        .insert_environment(&created, None, &Ceilings::default())
        .await
        .unwrap();

    let running = store
        .transition(
            &created.id,
            &[EnvState::Creating],
            EnvState::Running,
            at(30),
            None,
        )
        .await
        .unwrap();
    let expected = Environment {
        state: EnvState::Running,
        updated_at: at(30),
        ..created.clone()
    };
    assert_eq!(running, Some(expected.clone()));

    // Not in `from`: nothing changes.
    assert_eq!(
        store
            .transition(
                &created.id,
                &[EnvState::Creating],
                EnvState::Running,
                at(31),
                None
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .transition(&created.id, &[], EnvState::Stopped, at(31), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get_environment(&created.id).await.unwrap(),
        Some(expected)
    );
    assert_eq!(
        store
            .transition(
                &EnvironmentId::generate(),
                &EnvState::ALL,
                EnvState::Failed,
                at(31),
                None,
            )
            .await
            .unwrap(),
        None
    );

    // One of several `from` states; a failure is recorded, and cleared by the next move.
    let failed = store
        .transition(
            &created.id,
            &[EnvState::Creating, EnvState::Running, EnvState::Stopped],
            EnvState::Failed,
            at(32),
            Some("out of memory"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (failed.state, failed.updated_at, failed.failure.as_deref()),
        (EnvState::Failed, at(32), Some("out of memory"))
    );
    let deleting = store
        .transition(
            &created.id,
            &[EnvState::Failed],
            EnvState::Deleting,
            at(33),
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        deleting,
        Environment {
            state: EnvState::Deleting,
            updated_at: at(33),
            failure: None,
            ..created
        }
    );
}

async fn environment_listing_filters_and_pages(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let bob = add_user(&*store, "bob").await;
    let record = |owner: &User, environment_name: &str, state: EnvState, granted: bool| {
        let mut environment = environment(owner, environment_name);
        environment.state = state;
        if granted {
            environment.access_request = Some(AccessRequestId::generate());
        }
        environment
    };
    let alice_web = record(&alice, "web", EnvState::Running, false);
    let alice_db = record(&alice, "db", EnvState::Creating, true);
    let alice_old_web = record(&alice, "web", EnvState::Deleted, false);
    let bob_web = record(&bob, "web", EnvState::Stopped, true);
    let bob_job = record(&bob, "job", EnvState::Failed, false);
    let everything = [&alice_web, &alice_db, &alice_old_web, &bob_web, &bob_job];
    for environment in everything {
        store
            .insert_environment(environment, None, &Ceilings::default())
            .await
            .unwrap();
    }
    let list = |query: EnvironmentQuery| {
        let store = store.clone();
        async move {
            let listed = store.list_environments(&query).await.unwrap();
            ids(&listed, |environment| &environment.id)
        }
    };
    let all_ids = sorted(&everything.map(|environment| &environment.id));

    assert_eq!(list(all(100)).await, all_ids);
    assert_eq!(
        list(EnvironmentQuery {
            owner: Some(alice.id.clone()),
            ..all(100)
        })
        .await,
        sorted(&[&alice_web.id, &alice_db.id, &alice_old_web.id])
    );
    assert_eq!(
        list(EnvironmentQuery {
            name: Some(name("web")),
            ..all(100)
        })
        .await,
        sorted(&[&alice_web.id, &alice_old_web.id, &bob_web.id])
    );
    assert_eq!(
        list(EnvironmentQuery {
            states: Some(vec![EnvState::Running, EnvState::Stopped]),
            ..all(100)
        })
        .await,
        sorted(&[&alice_web.id, &bob_web.id])
    );
    assert_eq!(
        list(EnvironmentQuery {
            states: Some(Vec::new()),
            ..all(100)
        })
        .await,
        Vec::<EnvironmentId>::new()
    );
    assert_eq!(
        list(EnvironmentQuery {
            granted_only: true,
            ..all(100)
        })
        .await,
        sorted(&[&alice_db.id, &bob_web.id])
    );
    assert_eq!(
        list(EnvironmentQuery {
            owner: Some(alice.id.clone()),
            name: Some(name("web")),
            states: Some(vec![EnvState::Running]),
            ..all(100)
        })
        .await,
        vec![alice_web.id.clone()]
    );
    assert_eq!(
        list(EnvironmentQuery {
            owner: Some(bob.id.clone()),
            granted_only: true,
            ..all(100)
        })
        .await,
        vec![bob_web.id.clone()]
    );

    // Pages in id order.
    assert_eq!(list(all(2)).await, all_ids[..2]);
    assert_eq!(
        list(EnvironmentQuery {
            after: Some(all_ids[1].clone()),
            ..all(2)
        })
        .await,
        all_ids[2..4]
    );
    assert_eq!(
        list(EnvironmentQuery {
            after: Some(all_ids[3].clone()),
            ..all(2)
        })
        .await,
        all_ids[4..]
    );
    assert_eq!(
        list(EnvironmentQuery {
            after: Some(all_ids[4].clone()),
            ..all(2)
        })
        .await,
        Vec::<EnvironmentId>::new()
    );
    assert_eq!(list(all(0)).await, Vec::<EnvironmentId>::new());
    let listed = store.list_environments(&all(100)).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|environment| environment.id == bob_web.id),
        Some(&bob_web),
        "listed records are whole"
    );
}

// ---------------------------------------------------------------------------------------------
// Quotas.

async fn quotas_count_live_environments(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let two = Quota {
        max_environments: Some(2),
        ..Quota::default()
    };
    store.insert_team(&team("red", two)).await.unwrap();
    let create = |environment_name: &str, team: &str, resources: Resources, quota: Quota| {
        let store = store.clone();
        let environment = in_team(environment(&alice, environment_name), team, resources);
        async move {
            let inserted = store
                .insert_environment(
                    &environment,
                    None,
                    &Ceilings {
                        team: Some(quota),
                        host: None,
                    },
                )
                .await
                .unwrap();
            (environment.id, inserted)
        }
    };
    let small = resources(256, 250);
    let (first, inserted) = create("red-1", "red", small, two).await;
    assert_eq!(inserted, Inserted::Created);
    assert_eq!(
        create("red-2", "red", small, two).await.1,
        Inserted::Created
    );
    assert_eq!(
        create("red-3", "red", small, two).await.1,
        Inserted::OverQuota("2 of 2 environments".into())
    );
    assert_eq!(
        store.list_environments(&all(100)).await.unwrap().len(),
        2,
        "nothing written over quota"
    );
    // Over quota, a key is not claimed either.
    let keyed = in_team(environment(&alice, "red-keyed"), "red", small);
    assert_eq!(
        store
            .insert_environment(
                &keyed,
                Some(("key", "fingerprint")),
                &Ceilings {
                    team: Some(two),
                    host: None
                }
            )
            .await
            .unwrap(),
        Inserted::OverQuota("2 of 2 environments".into())
    );

    // Failed (and deleted) environments do not count.
    store
        .transition(
            &first,
            &[EnvState::Creating],
            EnvState::Failed,
            at(40),
            Some("x"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .insert_environment(
                &keyed,
                Some(("key", "fingerprint")),
                &Ceilings {
                    team: Some(two),
                    host: None
                }
            )
            .await
            .unwrap(),
        Inserted::Created
    );
    // The quota is the one given, not the team's row; without one nothing is counted.
    assert_eq!(
        create("red-4", "red", small, Quota::default()).await.1,
        Inserted::Created
    );
    let environment = in_team(environment(&alice, "red-5"), "red", small);
    assert_eq!(
        store
            .insert_environment(&environment, None, &Ceilings::default())
            .await
            .unwrap(),
        Inserted::Created
    );

    let memory = Quota {
        max_memory_mib: Some(1000),
        ..Quota::default()
    };
    store.insert_team(&team("blue", memory)).await.unwrap();
    for index in 0..2 {
        let created = create(
            &format!("blue-{index}"),
            "blue",
            resources(400, 100),
            memory,
        )
        .await;
        assert_eq!(created.1, Inserted::Created);
    }
    assert_eq!(
        create("blue-2", "blue", resources(400, 100), memory)
            .await
            .1,
        Inserted::OverQuota("800 MiB of 1000 MiB of memory in use, 400 asked".into())
    );
    assert_eq!(
        create("blue-3", "blue", resources(200, 100), memory)
            .await
            .1,
        Inserted::Created,
        "exactly at the limit fits"
    );

    let cpus = Quota {
        max_millicpus: Some(1500),
        ..Quota::default()
    };
    store.insert_team(&team("green", cpus)).await.unwrap();
    assert_eq!(
        create("green-0", "green", resources(64, 1000), cpus)
            .await
            .1,
        Inserted::Created
    );
    assert_eq!(
        create("green-1", "green", resources(64, 1000), cpus)
            .await
            .1,
        Inserted::OverQuota("1 of 1.5 CPUs in use, 1 asked".into())
    );
    assert_eq!(
        create("green-2", "green", resources(64, 500), cpus).await.1,
        Inserted::Created
    );
}

/// Starts `attempts` creates in `team` at once; returns how many were created and how many
/// were refused for the quota.
async fn race(
    store: &Arc<dyn Store>,
    owner: &User,
    team: &str,
    quota: Quota,
    each: Resources,
    attempts: usize,
) -> (usize, usize) {
    let tasks: Vec<_> = (0..attempts)
        .map(|index| {
            let store = store.clone();
            let environment = in_team(environment(owner, &format!("{team}-{index}")), team, each);
            tokio::spawn(async move {
                store
                    .insert_environment(
                        &environment,
                        None,
                        &Ceilings {
                            team: Some(quota),
                            host: None,
                        },
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let (mut created, mut over) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Inserted::Created => created += 1,
            Inserted::OverQuota(_) => over += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (created, over)
}

async fn concurrent_creates_respect_the_quota(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let count = Quota {
        max_environments: Some(5),
        ..Quota::default()
    };
    store.insert_team(&team("count", count)).await.unwrap();
    assert_eq!(
        race(&store, &alice, "count", count, resources(64, 100), 20).await,
        (5, 15)
    );

    let memory = Quota {
        max_memory_mib: Some(1000),
        ..Quota::default()
    };
    store.insert_team(&team("memory", memory)).await.unwrap();
    assert_eq!(
        race(&store, &alice, "memory", memory, resources(300, 100), 10).await,
        (3, 7)
    );

    let cpus = Quota {
        max_millicpus: Some(2000),
        ..Quota::default()
    };
    store.insert_team(&team("cpus", cpus)).await.unwrap();
    assert_eq!(
        race(&store, &alice, "cpus", cpus, resources(64, 500), 10).await,
        (4, 6)
    );

    // A quota for a team that has no row is kept all the same.
    assert_eq!(
        race(&store, &alice, "rowless", count, resources(64, 100), 10).await,
        (5, 5)
    );
    assert_eq!(
        store.list_environments(&all(1000)).await.unwrap().len(),
        5 + 3 + 4 + 5
    );
}

/// The host's capacity counts every live environment, whoever's, under concurrent inserts.
async fn concurrent_creates_respect_the_host_capacity(db: &Db) {
    let store = db.store();
    let owners = [
        add_user(&*store, "alice").await,
        add_user(&*store, "bob").await,
    ];
    let capacity = Quota {
        max_environments: Some(6),
        max_memory_mib: Some(10_000),
        max_millicpus: None,
    };
    let tasks: Vec<_> = (0..24)
        .map(|index| {
            let store = store.clone();
            let environment = environment(&owners[index % 2], &format!("host-{index}"));
            tokio::spawn(async move {
                store
                    .insert_environment(
                        &environment,
                        None,
                        &Ceilings {
                            team: None,
                            host: Some(capacity),
                        },
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let (mut created, mut over) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Inserted::Created => created += 1,
            Inserted::OverCapacity(_) => over += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, over), (6, 18));
    // Memory counts too: 6 × 512 MiB live; another 512 fits under 3,584, a seventh does not.
    let tight = Quota {
        max_environments: None,
        max_memory_mib: Some(3584),
        max_millicpus: None,
    };
    let ceilings = Ceilings {
        team: None,
        host: Some(tight),
    };
    let fits = environment(&owners[0], "fits");
    assert_eq!(
        store
            .insert_environment(&fits, None, &ceilings)
            .await
            .unwrap(),
        Inserted::Created
    );
    let refused = environment(&owners[1], "refused");
    assert!(matches!(
        store
            .insert_environment(&refused, None, &ceilings)
            .await
            .unwrap(),
        Inserted::OverCapacity(_)
    ));
    assert_eq!(store.get_environment(&refused.id).await.unwrap(), None);
}

async fn concurrent_claims_of_one_key_create_once(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let tasks: Vec<_> = (0..10)
        .map(|index| {
            let store = store.clone();
            let environment = environment(&alice, "same");
            tokio::spawn(async move {
                let fingerprint = format!("fingerprint-{index}");
                let inserted = store
                    .insert_environment(
                        &environment,
                        Some(("one-key", &fingerprint)),
                        &Ceilings::default(),
                    )
                    .await
                    .unwrap();
                (environment.id, fingerprint, inserted)
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut replays = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (id, fingerprint, Inserted::Created) => created.push((id, fingerprint)),
            (
                _,
                _,
                Inserted::Replayed {
                    environment,
                    fingerprint,
                },
            ) => replays.push((environment, fingerprint)),
            (_, _, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(replays, vec![created[0].clone(); 9]);
    assert_eq!(
        ids(
            &store.list_environments(&all(100)).await.unwrap(),
            |environment| { &environment.id }
        ),
        [created[0].0.clone()]
    );
}

// ---------------------------------------------------------------------------------------------
// Access.

async fn profiles_round_trip_every_field(db: &Db) {
    let store = db.store();
    let approver = UserId::generate();
    let full = AccessProfile {
        name: name("prod-db"),
        description: Some("Production database, read-write ✓".into()),
        max_duration: Duration::from_millis(2 * 3600 * 1000 + 1),
        approvals_required: 2,
        secrets: vec![
            SecretMount::parse(
                Some("DB_PASSWORD".into()),
                Some("/run/secrets/db".into()),
                Some("/etc/airlock/db-password".into()),
                None,
            )
            .unwrap(),
            SecretMount::parse(
                Some("API_TOKEN".into()),
                None,
                None,
                Some("PROD_TOKEN".into()),
            )
            .unwrap(),
        ],
        network: NetworkMode::Egress,
        requesters: vec![Party::Role(Role::Developer), Party::Team(name("oncall"))],
        approvers: vec![Party::User(approver), Party::Role(Role::Approver)],
        created_at: at(7),
    };
    store.insert_profile(&full).await.unwrap();
    assert_eq!(
        store.get_profile(&full.name).await.unwrap(),
        Some(full.clone())
    );
    let bare = profile("a-bare");
    store.insert_profile(&bare).await.unwrap();
    assert_eq!(
        store.get_profile(&bare.name).await.unwrap(),
        Some(bare.clone())
    );
    assert_eq!(store.get_profile(&name("nope")).await.unwrap(), None);
    assert_duplicate(
        store.insert_profile(&profile("prod-db")).await,
        "access profile",
    );
    assert_eq!(store.list_profiles().await.unwrap(), [bare, full]);
}

async fn access_requests_round_trip_and_list(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let bob = add_user(&*store, "bob").await;
    store.insert_profile(&profile("prod")).await.unwrap();
    let mut first = access_request(&alice, "prod", 2);
    first.reason = "line one\nline \"two\" ✓".into();
    first.duration = Duration::from_millis(90 * 60 * 1000 + 7);
    store.insert_access_request(&first).await.unwrap();
    assert_eq!(
        store.get_access_request(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_access_request(&AccessRequestId::generate())
            .await
            .unwrap(),
        None
    );
    assert_duplicate(store.insert_access_request(&first).await, "access request");

    let second = access_request(&bob, "prod", 1);
    let third = access_request(&alice, "prod", 1);
    store.insert_access_request(&second).await.unwrap();
    store.insert_access_request(&third).await.unwrap();
    store
        .end_access(
            &third.id,
            AccessState::Pending,
            AccessState::Denied,
            at(30),
            bob.id.as_str(),
            "not now",
        )
        .await
        .unwrap()
        .unwrap();
    let list = |query: AccessQuery| {
        let store = store.clone();
        async move {
            let listed = store.list_access_requests(&query).await.unwrap();
            ids(&listed, |request| &request.id)
        }
    };
    let every = AccessQuery {
        limit: 100,
        ..AccessQuery::default()
    };
    let all_ids = sorted(&[&first.id, &second.id, &third.id]);
    assert_eq!(list(every.clone()).await, all_ids);
    assert_eq!(
        list(AccessQuery {
            requester: Some(alice.id.clone()),
            ..every.clone()
        })
        .await,
        sorted(&[&first.id, &third.id])
    );
    assert_eq!(
        list(AccessQuery {
            states: Some(vec![AccessState::Pending]),
            ..every.clone()
        })
        .await,
        sorted(&[&first.id, &second.id])
    );
    assert_eq!(
        list(AccessQuery {
            requester: Some(alice.id.clone()),
            states: Some(vec![AccessState::Denied, AccessState::Approved]),
            ..every.clone()
        })
        .await,
        vec![third.id.clone()]
    );
    assert_eq!(
        list(AccessQuery {
            states: Some(Vec::new()),
            ..every.clone()
        })
        .await,
        Vec::<AccessRequestId>::new()
    );
    assert_eq!(
        list(AccessQuery {
            limit: 2,
            ..every.clone()
        })
        .await,
        all_ids[..2]
    );
    assert_eq!(
        list(AccessQuery {
            after: Some(all_ids[1].clone()),
            limit: 2,
            ..every.clone()
        })
        .await,
        all_ids[2..]
    );
    // Listed requests come with their approvals.
    store
        .approve_access(&first.id, &bob.id, at(40))
        .await
        .unwrap();
    let listed = store.list_access_requests(&every).await.unwrap();
    let listed_first = listed
        .iter()
        .find(|request| request.id == first.id)
        .unwrap();
    assert_eq!(
        listed_first.approvals,
        [Approval {
            approver: bob.id.clone(),
            at: at(40),
        }]
    );
}

async fn approvals_count_once_and_grant(db: &Db) {
    let store = db.store();
    let requester = add_user(&*store, "requester").await;
    let ann = add_user(&*store, "ann").await;
    let ben = add_user(&*store, "ben").await;
    let cat = add_user(&*store, "cat").await;
    store.insert_profile(&profile("prod")).await.unwrap();
    let request = access_request(&requester, "prod", 2);
    store.insert_access_request(&request).await.unwrap();

    let counted = AccessRequest {
        approvals: vec![Approval {
            approver: ann.id.clone(),
            at: at(50),
        }],
        ..request.clone()
    };
    assert_eq!(
        store
            .approve_access(&request.id, &ann.id, at(50))
            .await
            .unwrap(),
        Some(Approved::Counted(counted.clone()))
    );
    assert_eq!(
        store
            .approve_access(&request.id, &ann.id, at(55))
            .await
            .unwrap(),
        Some(Approved::AlreadyCounted(counted.clone()))
    );

    let mut granted = counted.clone();
    granted.approvals.push(Approval {
        approver: ben.id.clone(),
        at: at(60),
    });
    granted.state = AccessState::Approved;
    granted.granted_at = Some(at(60));
    granted.expires_at = Some(at(60) + chrono::Duration::from_std(request.duration).unwrap());
    assert_eq!(
        store
            .approve_access(&request.id, &ben.id, at(60))
            .await
            .unwrap(),
        Some(Approved::Granted(granted.clone()))
    );
    assert_eq!(
        store
            .approve_access(&request.id, &cat.id, at(70))
            .await
            .unwrap(),
        Some(Approved::NotPending(granted.clone()))
    );
    assert_eq!(
        store
            .approve_access(&request.id, &ann.id, at(70))
            .await
            .unwrap(),
        Some(Approved::NotPending(granted.clone()))
    );
    assert_eq!(
        store.get_access_request(&request.id).await.unwrap(),
        Some(granted)
    );
    assert_eq!(
        store
            .approve_access(&AccessRequestId::generate(), &ann.id, at(70))
            .await
            .unwrap(),
        None
    );

    // One approval needed: the first grants.
    let quick = access_request(&requester, "prod", 1);
    store.insert_access_request(&quick).await.unwrap();
    match store
        .approve_access(&quick.id, &cat.id, at(80))
        .await
        .unwrap()
    {
        Some(Approved::Granted(request)) => {
            assert_eq!(request.granted_at, Some(at(80)));
            assert_eq!(request.expires_at, Some(at(80 + 1800)));
        }
        other => panic!("expected a grant, got {other:?}"),
    }
}

async fn concurrent_approvals_grant_once(db: &Db) {
    let store = db.store();
    let requester = add_user(&*store, "requester").await;
    let mut approvers = Vec::new();
    for index in 0..10 {
        approvers.push(add_user(&*store, &format!("approver-{index}")).await);
    }
    store.insert_profile(&profile("prod")).await.unwrap();
    let request = access_request(&requester, "prod", 3);
    store.insert_access_request(&request).await.unwrap();

    let tasks: Vec<_> = approvers
        .iter()
        .map(|approver| {
            let store = store.clone();
            let (request, approver) = (request.id.clone(), approver.id.clone());
            tokio::spawn(async move {
                store
                    .approve_access(&request, &approver, at(90))
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    let (mut counted, mut granted, mut not_pending) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            Approved::Counted(request) => counted.push(request.approvals.len()),
            Approved::Granted(request) => granted.push(request),
            Approved::NotPending(request) => {
                assert_eq!(request.approvals.len(), 3);
                not_pending += 1;
            }
            Approved::AlreadyCounted(_) => panic!("every approver is distinct"),
        }
    }
    counted.sort();
    assert_eq!(counted, [1, 2], "the two approvals before the grant");
    assert_eq!(granted.len(), 1, "exactly one grant");
    assert_eq!(not_pending, 7);
    let granted = granted.remove(0);
    assert_eq!(granted.approvals.len(), 3);
    let mut approver_ids = ids(&granted.approvals, |approval| &approval.approver);
    assert!(
        approver_ids.is_sorted(),
        "approvals at one time come in approver order"
    );
    approver_ids.dedup();
    assert_eq!(approver_ids.len(), 3);
    assert_eq!(
        store.get_access_request(&request.id).await.unwrap(),
        Some(granted)
    );
}

async fn end_access_only_from_its_state(db: &Db) {
    let store = db.store();
    let requester = add_user(&*store, "requester").await;
    let approver = add_user(&*store, "approver").await;
    store.insert_profile(&profile("prod")).await.unwrap();
    let denied = access_request(&requester, "prod", 1);
    store.insert_access_request(&denied).await.unwrap();

    let ended = store
        .end_access(
            &denied.id,
            AccessState::Pending,
            AccessState::Denied,
            at(100),
            approver.id.as_str(),
            "not during the freeze",
        )
        .await
        .unwrap();
    let expected = AccessRequest {
        state: AccessState::Denied,
        ended_at: Some(at(100)),
        ended_by: Some(approver.id.to_string()),
        end_reason: Some("not during the freeze".into()),
        ..denied.clone()
    };
    assert_eq!(ended, Some(expected.clone()));
    // From a state it is no longer in: nothing changes.
    assert_eq!(
        store
            .end_access(
                &denied.id,
                AccessState::Pending,
                AccessState::Lapsed,
                at(110),
                "system",
                "undecided",
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .end_access(
                &denied.id,
                AccessState::Approved,
                AccessState::Revoked,
                at(110),
                "system",
                "x",
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.get_access_request(&denied.id).await.unwrap(),
        Some(expected)
    );
    assert_eq!(
        store
            .end_access(
                &AccessRequestId::generate(),
                AccessState::Pending,
                AccessState::Denied,
                at(110),
                "system",
                "x",
            )
            .await
            .unwrap(),
        None
    );

    // A grant ends once, keeping its approvals and times.
    let grant = access_request(&requester, "prod", 1);
    store.insert_access_request(&grant).await.unwrap();
    let Some(Approved::Granted(granted)) = store
        .approve_access(&grant.id, &approver.id, at(120))
        .await
        .unwrap()
    else {
        panic!("expected a grant")
    };
    let revoked = store
        .end_access(
            &grant.id,
            AccessState::Approved,
            AccessState::Revoked,
            at(130),
            approver.id.as_str(),
            "done",
        )
        .await
        .unwrap();
    assert_eq!(
        revoked,
        Some(AccessRequest {
            state: AccessState::Revoked,
            ended_at: Some(at(130)),
            ended_by: Some(approver.id.to_string()),
            end_reason: Some("done".into()),
            ..granted
        })
    );
    assert_eq!(
        store
            .end_access(
                &grant.id,
                AccessState::Approved,
                AccessState::Expired,
                at(140),
                "system",
                "time",
            )
            .await
            .unwrap(),
        None
    );

    // Moves the state machine does not allow are refused outright.
    for (from, to) in [
        (AccessState::Pending, AccessState::Expired),
        (AccessState::Pending, AccessState::Approved),
        (AccessState::Denied, AccessState::Revoked),
    ] {
        let result = store
            .end_access(&grant.id, from, to, at(150), "system", "x")
            .await;
        assert!(
            matches!(result, Err(StoreError::Backend(_))),
            "{from} → {to}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Settings, audit, reopening.

async fn settings_upsert(db: &Db) {
    let store = db.store();
    assert_eq!(store.get_setting("seen").await.unwrap(), None);
    store.put_setting("seen", "1").await.unwrap();
    store.put_setting("other", "x").await.unwrap();
    assert_eq!(
        store.get_setting("seen").await.unwrap().as_deref(),
        Some("1")
    );
    store.put_setting("seen", "1893456000123456").await.unwrap();
    assert_eq!(
        store.get_setting("seen").await.unwrap().as_deref(),
        Some("1893456000123456")
    );
    store.put_setting("empty", "").await.unwrap();
    assert_eq!(
        store.get_setting("empty").await.unwrap().as_deref(),
        Some("")
    );
    assert_eq!(
        store.get_setting("other").await.unwrap().as_deref(),
        Some("x")
    );
}

async fn states_are_counted_for_metrics(db: &Db) {
    let store = db.store();
    let zero_environments: Vec<(EnvState, u64)> =
        EnvState::ALL.iter().map(|state| (*state, 0)).collect();
    let zero_requests: Vec<(AccessState, u64)> =
        AccessState::ALL.iter().map(|state| (*state, 0)).collect();
    assert_eq!(
        store.count_environments_by_state().await.unwrap(),
        zero_environments
    );
    assert_eq!(
        store.count_access_requests_by_state().await.unwrap(),
        zero_requests
    );

    let alice = add_user(&*store, "alice").await;
    let mut ids = Vec::new();
    for index in 0..4 {
        let environment = environment(&alice, &format!("env-{index}"));
        let inserted = store
            .insert_environment(&environment, None, &Ceilings::default())
            .await
            .unwrap();
        assert_eq!(inserted, Inserted::Created);
        ids.push(environment.id);
    }
    for (id, path) in [
        (&ids[0], &[EnvState::Running][..]),
        (&ids[1], &[EnvState::Running, EnvState::Stopped][..]),
        (&ids[2], &[EnvState::Failed][..]),
    ] {
        let mut from = EnvState::Creating;
        for &to in path {
            let moved = store.transition(id, &[from], to, at(20), None).await;
            assert!(moved.unwrap().is_some(), "{from} → {to}");
            from = to;
        }
    }
    let expected: Vec<(EnvState, u64)> = EnvState::ALL
        .iter()
        .map(|state| {
            let count = match state {
                EnvState::Creating | EnvState::Running | EnvState::Stopped | EnvState::Failed => 1,
                _ => 0,
            };
            (*state, count)
        })
        .collect();
    assert_eq!(store.count_environments_by_state().await.unwrap(), expected);

    let approver = add_user(&*store, "approver").await;
    store.insert_profile(&profile("prod")).await.unwrap();
    let granted = access_request(&alice, "prod", 1);
    let waiting = access_request(&alice, "prod", 1);
    let denied = access_request(&alice, "prod", 1);
    for request in [&granted, &waiting, &denied] {
        store.insert_access_request(request).await.unwrap();
    }
    let approved = store
        .approve_access(&granted.id, &approver.id, at(30))
        .await
        .unwrap();
    assert!(
        matches!(approved, Some(Approved::Granted(_))),
        "{approved:?}"
    );
    let ended = store
        .end_access(
            &denied.id,
            AccessState::Pending,
            AccessState::Denied,
            at(31),
            approver.id.as_str(),
            "no",
        )
        .await
        .unwrap();
    assert!(ended.is_some());
    let expected: Vec<(AccessState, u64)> = AccessState::ALL
        .iter()
        .map(|state| {
            let count = match state {
                AccessState::Pending | AccessState::Approved | AccessState::Denied => 1,
                _ => 0,
            };
            (*state, count)
        })
        .collect();
    assert_eq!(
        store.count_access_requests_by_state().await.unwrap(),
        expected
    );
}

async fn audit_appends_and_lists_newest_first(db: &Db) {
    let store = db.store();
    assert_eq!(store.list_audit(10).await.unwrap(), Vec::new());
    let first = audit(1, "environment.create");
    let second = AuditEvent {
        actor: "anonymous".into(),
        target: None,
        outcome: "forbidden".into(),
        source: Some("192.0.2.7".into()),
        detail: None,
        ..audit(2, "token.create")
    };
    // Appended order decides, not the events' own times.
    let third = audit(-100, "access.approve");
    for event in [&first, &second, &third] {
        store
            .append_audit(std::slice::from_ref(event))
            .await
            .unwrap();
    }
    assert_eq!(
        store.list_audit(10).await.unwrap(),
        [third.clone(), second.clone(), first]
    );
    assert_eq!(store.list_audit(2).await.unwrap(), [third, second]);
    assert_eq!(store.list_audit(0).await.unwrap(), Vec::new());
}

fn session(user: &User, environment: &EnvironmentId, kind: SessionKind, second: i64) -> Session {
    Session {
        id: SessionId::generate(),
        environment: environment.clone(),
        user: user.id.clone(),
        kind,
        argv: vec![
            "bash".into(),
            "-c".into(),
            "echo 'a \"quoted\" word'".into(),
        ],
        started_at: at(second),
        ended_at: None,
        exit_code: None,
        bytes_in: 0,
        bytes_out: 0,
        recorded: kind == SessionKind::Terminal,
    }
}

async fn sessions_start_end_once_and_list(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    let bob = add_user(&*store, "bob").await;
    let (one, two) = (EnvironmentId::generate(), EnvironmentId::generate());
    let shell = session(&alice, &one, SessionKind::Terminal, 1);
    let forward = session(&alice, &two, SessionKind::PortForward, 2);
    let exec = session(&bob, &one, SessionKind::Exec, 3);
    for session in [&shell, &forward, &exec] {
        store.insert_session(session).await.unwrap();
    }
    assert_eq!(
        store.get_session(&shell.id).await.unwrap().as_ref(),
        Some(&shell)
    );
    assert_eq!(
        store.get_session(&SessionId::generate()).await.unwrap(),
        None
    );

    let ended = Session {
        ended_at: Some(at(10)),
        exit_code: Some(130),
        bytes_in: 12,
        bytes_out: 1 << 40,
        ..shell.clone()
    };
    store.end_session(&ended).await.unwrap();
    // Only the first end counts.
    let again = Session {
        ended_at: Some(at(20)),
        exit_code: Some(0),
        ..ended.clone()
    };
    store.end_session(&again).await.unwrap();
    assert_eq!(
        store.get_session(&shell.id).await.unwrap(),
        Some(ended.clone())
    );

    let query = |environment: Option<&EnvironmentId>, user: Option<&User>, limit| SessionQuery {
        environment: environment.cloned(),
        user: user.map(|user| user.id.clone()),
        after: None,
        limit,
    };
    let listed = store.list_sessions(&query(None, None, 10)).await.unwrap();
    assert_eq!(
        ids(&listed, |session| &session.id),
        sorted(&[&shell.id, &forward.id, &exec.id])
    );
    let of_one = store
        .list_sessions(&query(Some(&one), None, 10))
        .await
        .unwrap();
    assert_eq!(
        ids(&of_one, |session| &session.id),
        sorted(&[&shell.id, &exec.id])
    );
    let of_alice_in_one = store
        .list_sessions(&query(Some(&one), Some(&alice), 10))
        .await
        .unwrap();
    assert_eq!(of_alice_in_one, [ended]);
    let first = store.list_sessions(&query(None, None, 1)).await.unwrap();
    let rest = store
        .list_sessions(&SessionQuery {
            after: Some(first[0].id.clone()),
            ..query(None, None, 10)
        })
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), 3);

    // A server that died leaves sessions open; the next one ends them.
    let orphans = store.end_open_sessions(at(30)).await.unwrap();
    assert_eq!(
        ids(&orphans, |session| &session.id),
        sorted(&[&forward.id, &exec.id])
    );
    let forward = store.get_session(&forward.id).await.unwrap().unwrap();
    assert_eq!((forward.ended_at, forward.exit_code), (Some(at(30)), None));
    assert_eq!(orphans.iter().find(|s| s.id == forward.id), Some(&forward));
    assert!(store.end_open_sessions(at(40)).await.unwrap().is_empty());
}

/// The chain as the core computes it over `events`.
fn chained(events: &[AuditEvent]) -> Vec<ChainedEvent> {
    let mut head = ChainHead::genesis();
    events
        .iter()
        .map(|event| {
            head = head.next(event);
            ChainedEvent {
                index: head.index,
                hash: head.hash,
                event: event.clone(),
            }
        })
        .collect()
}

fn everything() -> AuditQuery {
    AuditQuery {
        limit: 1000,
        ..Default::default()
    }
}

async fn audit_appends_form_one_hash_chain(db: &Db) {
    let store = db.store();
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::genesis());
    assert_eq!(store.query_audit(&everything()).await.unwrap(), Vec::new());
    let events: Vec<AuditEvent> = (0..7)
        .map(|n| AuditEvent {
            target: (n % 2 == 0).then(|| format!("env_{n}")),
            detail: (n % 3 == 0).then(|| "détail, with \"quotes\"".to_owned()),
            ..audit(n, "environment.create")
        })
        .collect();
    // One batch of three, one of one, one of three: one chain.
    let head = store.append_audit(&events[..3]).await.unwrap();
    assert_eq!(head.index, 3);
    store.append_audit(&events[3..4]).await.unwrap();
    let head = store.append_audit(&events[4..]).await.unwrap();
    let expected = chained(&events);
    assert_eq!(head.index, 7);
    assert_eq!(head.hash, expected[6].hash);
    assert_eq!(store.audit_head().await.unwrap(), head);
    assert_eq!(store.query_audit(&everything()).await.unwrap(), expected);
    // An empty batch writes nothing and says where the chain ends.
    assert_eq!(store.append_audit(&[]).await.unwrap(), head);
    assert_eq!(store.count_unchained_audit().await.unwrap(), 0);
    assert_eq!(store.chain_unchained_audit().await.unwrap(), 0);
    // A restart continues the same chain.
    let reopened = db.open_again().await.unwrap();
    let next = reopened.append_audit(&[audit(9, "whoami")]).await.unwrap();
    assert_eq!(next, head.next(&audit(9, "whoami")));
}

async fn audit_queries_filter_and_page_in_chain_order(db: &Db) {
    let store = db.store();
    let events = vec![
        AuditEvent {
            actor: "usr_a".into(),
            ..audit(1, "token.create")
        },
        AuditEvent {
            actor: "usr_b".into(),
            target: Some("acr_1".into()),
            ..audit(2, "access.approve")
        },
        AuditEvent {
            actor: "usr_a".into(),
            target: Some("acr_1".into()),
            ..audit(3, "access.revoke")
        },
        AuditEvent {
            actor: "usr_a".into(),
            ..audit(4, "token.create")
        },
    ];
    store.append_audit(&events).await.unwrap();
    let all = chained(&events);
    let query = |change: fn(&mut AuditQuery)| {
        let mut query = everything();
        change(&mut query);
        let store = store.clone();
        async move {
            store
                .query_audit(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|item| item.index)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(query(|_| {}).await, [1, 2, 3, 4]);
    assert_eq!(query(|q| q.actor = Some("usr_a".into())).await, [1, 3, 4]);
    assert_eq!(
        query(|q| q.action = Some("token.create".into())).await,
        [1, 4]
    );
    assert_eq!(query(|q| q.target = Some("acr_1".into())).await, [2, 3]);
    assert_eq!(query(|q| q.since = Some(at(2))).await, [2, 3, 4]);
    assert_eq!(query(|q| q.until = Some(at(3))).await, [1, 2]);
    assert_eq!(
        query(|q| {
            q.actor = Some("usr_a".into());
            q.since = Some(at(2));
            q.until = Some(at(4));
        })
        .await,
        [3]
    );
    assert_eq!(query(|q| q.after = 2).await, [3, 4]);
    assert_eq!(query(|q| q.limit = 2).await, [1, 2]);
    assert_eq!(
        query(|q| {
            q.after = 1;
            q.limit = 1;
            q.actor = Some("usr_a".into());
        })
        .await,
        [3]
    );
    assert_eq!(
        store
            .query_audit(&AuditQuery {
                after: 3,
                ..everything()
            })
            .await
            .unwrap(),
        all[3..]
    );
}

async fn audit_events_from_before_the_chain_are_chained_in_written_order(db: &Db) {
    // Rows as an airlock from before the chain wrote them: no index, no hash.
    db.raw(
        "INSERT INTO audit_events (time, request_id, actor, action, target, outcome, source, detail)
         VALUES (1893456001123456, 'req-1', 'usr_someone', 'environment.create', NULL, 'ok', NULL, NULL);
         INSERT INTO audit_events (time, request_id, actor, action, target, outcome, source, detail)
         VALUES (1893456000123456, 'req-0', 'anonymous', 'GET /v1/users', NULL, 'unauthenticated', '192.0.2.1', 'authentication required');",
    )
    .await;
    let store = db.store();
    assert_eq!(store.count_unchained_audit().await.unwrap(), 2);
    assert_eq!(store.audit_head().await.unwrap(), ChainHead::genesis());
    assert_eq!(store.chain_unchained_audit().await.unwrap(), 2);
    assert_eq!(store.count_unchained_audit().await.unwrap(), 0);
    let mut legacy = vec![
        AuditEvent {
            target: None,
            source: None,
            detail: None,
            ..audit(1, "environment.create")
        },
        AuditEvent {
            actor: "anonymous".into(),
            target: None,
            outcome: "unauthenticated".into(),
            source: Some("192.0.2.1".into()),
            detail: Some("authentication required".into()),
            ..audit(0, "GET /v1/users")
        },
    ];
    // Written order (not time) decides; new events follow.
    store.append_audit(&[audit(5, "whoami")]).await.unwrap();
    legacy.push(audit(5, "whoami"));
    assert_eq!(
        store.query_audit(&everything()).await.unwrap(),
        chained(&legacy)
    );
}

async fn concurrent_audit_appends_from_two_stores_form_one_chain(db: &Db) {
    // Two servers on one database (PostgreSQL), or a store and a second pool (SQLite).
    let stores = [db.store(), db.open_again().await.unwrap()];
    let appends = (0..40).map(|n| {
        let store = stores[n % 2].clone();
        tokio::spawn(async move {
            let batch: Vec<AuditEvent> = (0..(n % 3 + 1))
                .map(|k| audit((n * 10 + k) as i64, "environment.exec"))
                .collect();
            store.append_audit(&batch).await.unwrap();
        })
    });
    for append in futures_join(appends).await {
        append.unwrap();
    }
    let stored = db.store().query_audit(&everything()).await.unwrap();
    let events: Vec<AuditEvent> = stored.iter().map(|item| item.event.clone()).collect();
    assert_eq!(stored.len(), (0..40).map(|n| n % 3 + 1).sum::<usize>());
    assert_eq!(stored, chained(&events));
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await);
    }
    results
}

async fn reopening_keeps_the_data(db: &Db) {
    let store = db.store();
    let alice = add_user(&*store, "alice").await;
    store.put_setting("seen", "42").await.unwrap();
    // A restart, or a second server, opens the database already migrated.
    for _ in 0..2 {
        let reopened = db.open_again().await.unwrap();
        assert_eq!(
            reopened.get_user(&alice.id).await.unwrap(),
            Some(alice.clone())
        );
        assert_eq!(
            reopened.get_setting("seen").await.unwrap().as_deref(),
            Some("42")
        );
    }
}

/// Two servers starting at once on an empty database: one migrates, the other waits for it
/// (an advisory lock). PostgreSQL only: one SQLite file has one server, which locks its data
/// directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_servers_starting_together_migrate_once() {
    let Some(admin_url) = postgres_url("postgres_servers_starting_together_migrate_once") else {
        return;
    };
    let schema = fresh_schema(&admin_url).await;
    let url = with_search_path(&admin_url, &schema);
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    for start in starts {
        start.await.unwrap().expect("every server starts");
    }
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let (versions, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_version")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(versions >= 1);
    assert_eq!(versions, distinct, "each migration ran once");
    sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
}
