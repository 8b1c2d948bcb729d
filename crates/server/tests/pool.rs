//! The warm pool on the engine, with the real SQLite store and the fake runtime: it fills to
//! its size, a create of its shape takes a warm sandbox whole (no new sandbox made), other
//! shapes are made cold, replays and quotas hold, and a smaller pool sheds its surplus.

use std::sync::Arc;

use airlock_core::action::{NewEnvironment, NewUser};
use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::{Principal, Role, Scope};
use airlock_core::policy::{Limits, WarmPool};
use airlock_core::ports::{ManualClock, Runtime};
use airlock_core::{Action, Engine, Error, Origin, Reply};
use airlock_runtime::FakeRuntime;
use airlock_store::SqliteStore;
use chrono::Utc;

fn engine(store: Arc<SqliteStore>, runtime: Arc<FakeRuntime>, warm_pool: u32) -> Engine {
    let defaults = Limits::default().default_resources;
    engine_of(
        store,
        runtime,
        vec![WarmPool::parse(&warm_pool.to_string(), defaults).unwrap()],
    )
}

fn engine_of(
    store: Arc<SqliteStore>,
    runtime: Arc<FakeRuntime>,
    warm_pools: Vec<WarmPool>,
) -> Engine {
    let limits = Limits {
        warm_pools,
        ..Default::default()
    };
    Engine::new(
        store,
        runtime,
        Arc::new(ManualClock::new(Utc::now())),
        limits,
    )
}

/// A fresh SQLite store (in a directory kept alive by the first value) and a fake runtime.
async fn parts() -> (tempfile::TempDir, Arc<SqliteStore>, Arc<FakeRuntime>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap(),
    );
    (dir, store, Arc::new(FakeRuntime::default()))
}

async fn create(
    engine: &Engine,
    principal: &Principal,
    request: NewEnvironment,
    key: Option<&str>,
) -> Result<(EnvironmentId, bool), Error> {
    match engine
        .perform(
            principal,
            &Origin::default(),
            Action::CreateEnvironment {
                request,
                idempotency_key: key.map(str::to_owned),
            },
        )
        .await?
    {
        Reply::Environment {
            environment,
            replayed,
            ..
        } => {
            assert_eq!(environment.owner, principal.user.id);
            Ok((environment.id, replayed))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn creates_of_the_pools_shape_take_warm_sandboxes_and_the_pool_refills() {
    let (_dir, store, runtime) = parts().await;
    let engine = engine(store.clone(), runtime.clone(), 3);
    let (_, secret) = engine.bootstrap_admin().await.unwrap().unwrap();
    let admin = engine.authenticate(secret.expose()).await.unwrap();
    engine.prepare_pool().await.unwrap();

    let report = engine.refill_pool().await.unwrap();
    assert_eq!(report.made.len(), 3);
    assert_eq!(runtime.list().await.unwrap().len(), 3);
    let warm: Vec<EnvironmentId> = report.made.clone();

    // The default shape: a warm sandbox, taken whole; nothing new is made.
    let (taken, _) = create(&engine, &admin, NewEnvironment::default(), None)
        .await
        .unwrap();
    assert!(warm.contains(&taken));
    assert_eq!(runtime.list().await.unwrap().len(), 3);
    // The same key again: the same environment, not another warm one.
    let named = NewEnvironment {
        name: Some(Name::parse("name", "ci-job").unwrap()),
        ..Default::default()
    };
    let (first, _) = create(&engine, &admin, named.clone(), Some("job-1"))
        .await
        .unwrap();
    let (again, replayed) = create(&engine, &admin, named, Some("job-1")).await.unwrap();
    assert_eq!((again, replayed), (first.clone(), true));
    assert!(warm.contains(&first));
    // The warm sandbox now goes by the environment's name.
    assert_eq!(
        runtime.renamed(&first).map(String::from).as_deref(),
        Some("ci-job")
    );

    // Another shape is made cold.
    let (cold, _) = create(
        &engine,
        &admin,
        NewEnvironment {
            memory_mib: Some(64),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    assert!(!warm.contains(&cold));
    assert_eq!(runtime.list().await.unwrap().len(), 4);

    // The refill makes the two taken again.
    assert_eq!(engine.refill_pool().await.unwrap().made.len(), 2);
    assert_eq!(runtime.list().await.unwrap().len(), 6);

    // A team at its quota gets no warm sandbox either.
    engine
        .perform(
            &admin,
            &Origin::default(),
            Action::CreateTeam {
                name: Name::parse("name", "tiny").unwrap(),
                quota: airlock_core::model::Quota {
                    max_environments: Some(0),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    engine
        .perform(
            &admin,
            &Origin::default(),
            Action::CreateUser(NewUser {
                name: Name::parse("name", "tina").unwrap(),
                roles: vec![Role::Developer],
                teams: vec![Name::parse("team", "tiny").unwrap()],
            }),
        )
        .await
        .unwrap();
    let tina = {
        let Reply::Users(users) = engine
            .perform(&admin, &Origin::default(), Action::ListUsers)
            .await
            .unwrap()
        else {
            panic!()
        };
        let user = users
            .into_iter()
            .find(|user| user.name.as_str() == "tina")
            .unwrap();
        Principal {
            user,
            credential: admin.credential.clone(),
            scopes: vec![Scope::Read, Scope::Write],
            rate_limit: None,
        }
    };
    let refused = create(&engine, &tina, NewEnvironment::default(), None).await;
    assert!(
        matches!(refused, Err(Error::QuotaExceeded(_))),
        "{refused:?}"
    );

    // A smaller pool after a restart sheds its surplus.
    let smaller = engine_with(store.clone(), runtime.clone(), 1).await;
    let report = smaller.refill_pool().await.unwrap();
    assert_eq!(report.removed.len(), 2);
    assert_eq!(runtime.list().await.unwrap().len(), 4);
}

async fn engine_with(store: Arc<SqliteStore>, runtime: Arc<FakeRuntime>, size: u32) -> Engine {
    let engine = engine(store, runtime, size);
    engine.prepare_pool().await.unwrap();
    engine
}

#[tokio::test]
async fn each_configured_shape_has_its_own_pool_and_a_dropped_shape_is_removed() {
    let (_dir, store, runtime) = parts().await;
    let defaults = Limits::default().default_resources;
    let big = WarmPool::parse("2:memory_mib=2048,cpus=2", defaults).unwrap();
    let small = WarmPool::parse("1:memory_mib=128", defaults).unwrap();
    let engine = engine_of(store.clone(), runtime.clone(), vec![big, small]);
    let (_, secret) = engine.bootstrap_admin().await.unwrap().unwrap();
    let admin = engine.authenticate(secret.expose()).await.unwrap();
    engine.prepare_pool().await.unwrap();
    let warm = engine.refill_pool().await.unwrap().made;
    assert_eq!(warm.len(), 3);

    // Each shape is served from its own pool; the default shape (no pool here) is made cold.
    let shape = |memory_mib, cpus| NewEnvironment {
        memory_mib: Some(memory_mib),
        cpus,
        ..Default::default()
    };
    let (taken_big, _) = create(&engine, &admin, shape(2048, Some(2.0)), None)
        .await
        .unwrap();
    let (taken_small, _) = create(&engine, &admin, shape(128, None), None)
        .await
        .unwrap();
    assert!(warm.contains(&taken_big) && warm.contains(&taken_small));
    let (cold, _) = create(&engine, &admin, NewEnvironment::default(), None)
        .await
        .unwrap();
    assert!(!warm.contains(&cold));
    // The small pool is empty now: its shape goes cold until the refill.
    let (cold_small, _) = create(&engine, &admin, shape(128, None), None)
        .await
        .unwrap();
    assert!(!warm.contains(&cold_small));
    let report = engine.refill_pool().await.unwrap();
    assert_eq!(report.made.len(), 2, "{report:?}");

    // Restarted without the small shape: its warm sandbox goes, the big pool stays.
    let only_big = engine_of(store.clone(), runtime.clone(), vec![big]);
    only_big.prepare_pool().await.unwrap();
    let report = only_big.refill_pool().await.unwrap();
    assert_eq!(
        (report.made.len(), report.removed.len()),
        (0, 1),
        "{report:?}"
    );
    let (taken, _) = create(&only_big, &admin, shape(2048, Some(2.0)), None)
        .await
        .unwrap();
    assert!(report.removed.iter().all(|id| *id != taken));
}

#[test]
fn pool_shapes_parse_with_the_defaults_filled_in() {
    let defaults = Limits::default().default_resources;
    let pool = WarmPool::parse("5:memory_mib=1024,cpus=1.5,network=egress", defaults).unwrap();
    assert_eq!(pool.size, 5);
    assert_eq!(pool.resources.memory_mib, 1024);
    assert_eq!(pool.resources.millicpus, 1500);
    assert_eq!(pool.resources.disk_mib, defaults.disk_mib);
    assert_eq!(pool.network, airlock_core::model::NetworkMode::Egress);
    assert_eq!(WarmPool::parse("3", defaults).unwrap().resources, defaults);
    for bad in [
        "",
        "x",
        "2:memory=1",
        "2:cpus=0",
        "2:network=host",
        "2:memory_mib",
    ] {
        assert!(WarmPool::parse(bad, defaults).is_err(), "{bad:?}");
    }
}
