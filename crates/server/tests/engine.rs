//! The engine's rules on the real SQLite store and the fake runtime, with a clock the test
//! moves: audit records of refusals, token expiry, reconciliation of lost and orphaned
//! sandboxes, and interrupted deletes.

use std::sync::Arc;

use airlock_core::action::{Command, NewEnvironment, NewToken};
use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::EnvState;
use airlock_core::ports::{ManualClock, Runtime, SandboxSpec, Store};
use airlock_core::{Action, Engine, Error, Origin, Reply};
use airlock_runtime::FakeRuntime;
use airlock_store::SqliteStore;
use chrono::Utc;

struct Fixture {
    engine: Engine,
    store: Arc<SqliteStore>,
    runtime: Arc<FakeRuntime>,
    clock: Arc<ManualClock>,
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
    Fixture {
        engine,
        store,
        runtime,
        clock,
        _dir: dir,
    }
}

fn origin() -> Origin {
    Origin {
        request_id: "req-1".into(),
        source: Some("127.0.0.1".into()),
    }
}

async fn admin(fixture: &Fixture) -> airlock_core::model::Principal {
    let (_, secret) = fixture
        .engine
        .bootstrap_admin()
        .await
        .unwrap()
        .expect("first start makes an admin");
    fixture.engine.authenticate(secret.expose()).await.unwrap()
}

async fn create(
    fixture: &Fixture,
    principal: &airlock_core::model::Principal,
    name: &str,
) -> EnvironmentId {
    let request = NewEnvironment {
        name: Some(Name::parse("name", name).unwrap()),
        ..Default::default()
    };
    match fixture
        .engine
        .perform(
            principal,
            &origin(),
            Action::CreateEnvironment {
                request,
                idempotency_key: None,
            },
        )
        .await
        .unwrap()
    {
        Reply::Environment { environment, .. } => environment.id,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn bootstrap_happens_once() {
    let fixture = fixture().await;
    assert!(fixture.engine.bootstrap_admin().await.unwrap().is_some());
    assert!(fixture.engine.bootstrap_admin().await.unwrap().is_none());
}

#[tokio::test]
async fn every_action_and_every_refusal_is_audited() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let id = create(&fixture, &admin, "audited").await;
    let missing = EnvironmentId::generate();
    let error = fixture
        .engine
        .perform(&admin, &origin(), Action::GetEnvironment(missing.clone()))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }));
    fixture
        .engine
        .record_refusal(
            &origin(),
            None,
            "GET /v1/environments",
            &Error::Unauthenticated,
        )
        .await;

    let events = fixture.engine.recent_audit(10).await.unwrap();
    let summary: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|event| {
            (
                event.action.clone(),
                event.outcome.clone(),
                event.target.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "GET /v1/environments".into(),
                "unauthenticated".into(),
                None
            ),
            (
                "environment.get".into(),
                "not_found".into(),
                Some(missing.to_string())
            ),
            (
                "environment.create".into(),
                "ok".into(),
                Some(id.to_string())
            ),
            (
                "user.bootstrap".into(),
                "ok".into(),
                Some(admin.user.id.to_string())
            ),
        ]
    );
    assert!(
        events
            .iter()
            .take(3)
            .all(|event| event.request_id == "req-1" || event.action == "user.bootstrap")
    );
    assert_eq!(events[0].actor, "anonymous");
    assert_eq!(events[1].source.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn tokens_expire_on_the_clock() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let request = NewToken {
        expires_in_seconds: Some(60),
        ..Default::default()
    };
    let Reply::Token { secret, .. } = fixture
        .engine
        .perform(&admin, &origin(), Action::CreateToken(request))
        .await
        .unwrap()
    else {
        panic!("a token")
    };
    assert!(fixture.engine.authenticate(secret.expose()).await.is_ok());
    fixture.clock.advance(chrono::Duration::seconds(61));
    assert!(matches!(
        fixture.engine.authenticate(secret.expose()).await,
        Err(Error::Unauthenticated)
    ));
}

#[tokio::test]
async fn reconcile_fails_lost_sandboxes_removes_orphans_and_finishes_deletes() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let lost = create(&fixture, &admin, "lost").await;
    let healthy = create(&fixture, &admin, "healthy").await;
    let half_deleted = create(&fixture, &admin, "half-deleted").await;

    fixture.runtime.lose(&lost);
    let orphan = EnvironmentId::generate();
    let spec = SandboxSpec {
        id: orphan.clone(),
        hostname: Name::parse("name", "orphan").unwrap(),
        image: Name::parse("image", "default").unwrap(),
        resources: fixture.engine.limits().default_resources,
        network: Default::default(),
    };
    fixture.runtime.create(&spec).await.unwrap();
    fixture
        .store
        .transition(
            &half_deleted,
            &[EnvState::Running],
            EnvState::Deleting,
            Utc::now(),
            None,
        )
        .await
        .unwrap();

    let report = fixture.engine.reconcile().await.unwrap();
    assert_eq!(report.marked_failed, vec![lost.clone()]);
    assert_eq!(report.orphans_removed, vec![orphan.clone()]);
    assert_eq!(report.deletions_finished, vec![half_deleted.clone()]);
    assert_eq!(
        fixture
            .store
            .get_environment(&lost)
            .await
            .unwrap()
            .unwrap()
            .state,
        EnvState::Failed
    );
    assert_eq!(
        fixture
            .store
            .get_environment(&healthy)
            .await
            .unwrap()
            .unwrap()
            .state,
        EnvState::Running
    );
    assert_eq!(
        fixture
            .store
            .get_environment(&half_deleted)
            .await
            .unwrap()
            .unwrap()
            .state,
        EnvState::Deleted
    );
    assert_eq!(fixture.runtime.list().await.unwrap(), vec![healthy.clone()]);

    // Level-driven: a second pass finds nothing to do.
    assert_eq!(
        fixture.engine.reconcile().await.unwrap(),
        Default::default()
    );
    // The healthy one still works.
    let command = Command {
        argv: vec!["echo".into(), "hi".into()],
        ..Default::default()
    };
    let Reply::Exec(output) = fixture
        .engine
        .perform(
            &admin,
            &origin(),
            Action::Exec {
                environment: healthy,
                command,
            },
        )
        .await
        .unwrap()
    else {
        panic!("an exec result")
    };
    assert_eq!(output.stdout, b"hi\n");
}
