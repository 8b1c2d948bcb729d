//! Lifetimes with a clock the test moves: the TTL deletes, idleness stops (files kept),
//! activity and lease renewals postpone it, extensions stay within the hard maximum.

use std::sync::Arc;

use airlock_core::action::{Command, NewEnvironment};
use airlock_core::ids::EnvironmentId;
use airlock_core::model::{EnvState, Principal};
use airlock_core::ports::{ManualClock, Runtime, SandboxState, Store};
use airlock_core::{Action, Engine, Error, Origin, Reply};
use airlock_runtime::FakeRuntime;
use airlock_store::SqliteStore;
use chrono::Utc;

struct Fixture {
    engine: Engine,
    store: Arc<SqliteStore>,
    runtime: Arc<FakeRuntime>,
    clock: Arc<ManualClock>,
    admin: Principal,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap(),
    );
    let runtime = Arc::new(FakeRuntime::default());
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = Engine::new(
        store.clone(),
        runtime.clone(),
        clock.clone(),
        Default::default(),
    );
    let (_, secret) = engine.bootstrap_admin().await.unwrap().unwrap();
    let admin = engine.authenticate(secret.expose()).await.unwrap();
    Fixture {
        engine,
        store,
        runtime,
        clock,
        admin,
        _dir: dir,
    }
}

impl Fixture {
    async fn perform(&self, action: Action) -> Result<Reply, Error> {
        self.engine
            .perform(&self.admin, &Origin::default(), action)
            .await
    }

    async fn create(&self, ttl: u64, idle: Option<u64>) -> EnvironmentId {
        let request = NewEnvironment {
            ttl_seconds: Some(ttl),
            idle_timeout_seconds: idle,
            ..Default::default()
        };
        match self
            .perform(Action::CreateEnvironment {
                request,
                idempotency_key: None,
            })
            .await
            .unwrap()
        {
            Reply::Environment { environment, .. } => environment.id,
            other => panic!("{other:?}"),
        }
    }

    async fn state(&self, id: &EnvironmentId) -> EnvState {
        self.store.get_environment(id).await.unwrap().unwrap().state
    }

    fn advance(&self, seconds: i64) {
        self.clock.advance(chrono::Duration::seconds(seconds));
    }

    async fn audited(&self, action: &str) -> usize {
        self.engine
            .recent_audit(500)
            .await
            .unwrap()
            .into_iter()
            .filter(|event| event.action == action && event.actor == "system")
            .count()
    }
}

#[tokio::test]
async fn the_ttl_deletes_on_time_and_not_before() {
    let fixture = fixture().await;
    let id = fixture.create(600, None).await;
    fixture.advance(599);
    assert_eq!(fixture.engine.reap().await.unwrap(), Default::default());
    assert_eq!(fixture.state(&id).await, EnvState::Running);
    fixture.advance(1);
    let report = fixture.engine.reap().await.unwrap();
    assert_eq!(report.expired, vec![id.clone()]);
    assert_eq!(fixture.state(&id).await, EnvState::Deleted);
    assert_eq!(
        fixture.runtime.inspect(&id).await.unwrap(),
        SandboxState::Missing
    );
    assert_eq!(fixture.audited("environment.expire").await, 1);
    // Nothing more to do on the next pass.
    assert_eq!(fixture.engine.reap().await.unwrap(), Default::default());
}

#[tokio::test]
async fn idleness_stops_and_activity_or_a_lease_postpones_it() {
    let fixture = fixture().await;
    let id = fixture.create(86_400, Some(300)).await;
    let never = fixture.create(86_400, Some(0)).await;

    fixture.advance(200);
    fixture
        .perform(Action::Exec {
            environment: id.clone(),
            command: Command {
                argv: vec!["true".into()],
                ..Default::default()
            },
        })
        .await
        .unwrap();
    fixture.advance(200);
    fixture.engine.reap().await.unwrap();
    assert_eq!(
        fixture.state(&id).await,
        EnvState::Running,
        "the exec was activity"
    );

    fixture
        .perform(Action::RenewLease(id.clone()))
        .await
        .unwrap();
    fixture.advance(299);
    fixture.engine.reap().await.unwrap();
    assert_eq!(
        fixture.state(&id).await,
        EnvState::Running,
        "the lease was activity"
    );

    fixture.advance(1);
    let report = fixture.engine.reap().await.unwrap();
    assert_eq!(report.stopped, vec![id.clone()]);
    assert_eq!(fixture.state(&id).await, EnvState::Stopped);
    assert_eq!(
        fixture.runtime.inspect(&id).await.unwrap(),
        SandboxState::Stopped
    );
    assert_eq!(fixture.audited("environment.idle_stop").await, 1);
    assert_eq!(
        fixture.state(&never).await,
        EnvState::Running,
        "idle timeout 0 is never"
    );

    // Starting again is activity: not stopped again at once.
    fixture
        .perform(Action::StartEnvironment(id.clone()))
        .await
        .unwrap();
    fixture.engine.reap().await.unwrap();
    assert_eq!(fixture.state(&id).await, EnvState::Running);
}

#[tokio::test]
async fn extensions_stay_within_the_hard_maximum() {
    let fixture = fixture().await;
    let id = fixture.create(600, None).await;
    let max_ttl = fixture.engine.limits().max_ttl.as_secs() as i64;
    fixture.advance(500);
    let Reply::Environment { environment, .. } = fixture
        .perform(Action::ExtendEnvironment {
            environment: id.clone(),
            ttl_seconds: 3600,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        environment.expires_at,
        fixture.engine.now() + chrono::Duration::seconds(3600)
    );
    // Past the hard maximum from creation: refused, nothing changed.
    fixture.advance(max_ttl - 1000);
    let refused = fixture
        .perform(Action::ExtendEnvironment {
            environment: id.clone(),
            ttl_seconds: 3600,
        })
        .await;
    assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    // It expired long ago in this story: the reaper deletes it.
    fixture.engine.reap().await.unwrap();
    assert_eq!(fixture.state(&id).await, EnvState::Deleted);
}

#[tokio::test]
async fn a_host_short_of_memory_refuses_creates_until_it_has_some_again() {
    let fixture = fixture().await;
    fixture.runtime.set_available_memory_mib(Some(100));
    let refused = fixture
        .perform(Action::CreateEnvironment {
            request: NewEnvironment::default(),
            idempotency_key: None,
        })
        .await;
    assert!(
        matches!(refused, Err(Error::Overloaded { .. })),
        "{refused:?}"
    );
    assert!(fixture.runtime.list().await.unwrap().is_empty());
    fixture.runtime.set_available_memory_mib(Some(8192));
    fixture.create(600, None).await;
}
