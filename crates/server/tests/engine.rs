//! The engine's rules on the real SQLite store and the fake runtime, with a clock the test
//! moves: audit records of refusals, token expiry, and reconciliation: lost and orphaned
//! sandboxes, leftovers no sandbox directory accounts for, interrupted creates and deletes,
//! stopped sandboxes a crash left running, and a removal that fails, each repair audited.

use std::sync::Arc;

use airlock_core::action::{Command, NewEnvironment, NewToken};
use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::EnvState;
use airlock_core::ports::{Ceilings, ManualClock, Remnant, Runtime, SandboxSpec, Store};
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
        files: Vec::new(),
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

/// The `environment.reconcile` events, oldest first, as (target, outcome, detail).
async fn reconcile_events(fixture: &Fixture) -> Vec<(String, String, String)> {
    let mut events: Vec<(String, String, String)> = fixture
        .engine
        .recent_audit(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.action == "environment.reconcile")
        .map(|event| {
            (
                event.target.unwrap_or_default(),
                event.outcome,
                event.detail.unwrap_or_default(),
            )
        })
        .collect();
    events.reverse();
    events
}

async fn state_of(fixture: &Fixture, id: &EnvironmentId) -> EnvState {
    fixture
        .store
        .get_environment(id)
        .await
        .unwrap()
        .unwrap()
        .state
}

async fn stop(fixture: &Fixture, principal: &airlock_core::model::Principal, id: &EnvironmentId) {
    fixture
        .engine
        .perform(principal, &origin(), Action::StopEnvironment(id.clone()))
        .await
        .unwrap();
}

#[tokio::test]
async fn reconcile_removes_leftovers_no_sandbox_directory_accounts_for() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let failed = create(&fixture, &admin, "failed-earlier").await;
    fixture
        .store
        .transition(
            &failed,
            &[EnvState::Running],
            EnvState::Failed,
            Utc::now(),
            Some("test"),
        )
        .await
        .unwrap();
    // A cgroup with a helper still at work and no record at all (a server killed while its
    // helper was creating), and the remains of a sandbox whose record already failed.
    let stray = EnvironmentId::generate();
    fixture
        .runtime
        .leave(&stray, &[Remnant::Helper, Remnant::Cgroup]);

    let report = fixture.engine.reconcile().await.unwrap();
    let mut removed = vec![failed.clone(), stray.clone()];
    removed.sort();
    assert_eq!(report.orphans_removed, removed);
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(fixture.runtime.list().await.unwrap().is_empty());
    assert_eq!(state_of(&fixture, &failed).await, EnvState::Failed);

    let events = reconcile_events(&fixture).await;
    let detail_of = |id: &EnvironmentId| {
        let matching: Vec<&(String, String, String)> = events
            .iter()
            .filter(|(target, _, _)| target == id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "one event per repair: {events:?}");
        assert_eq!(matching[0].1, "ok");
        matching[0].2.clone()
    };
    assert_eq!(
        detail_of(&stray),
        "orphan sandbox removed (no record); removed helper process, cgroup"
    );
    assert_eq!(
        detail_of(&failed),
        "orphan sandbox removed (its record is failed); removed runtime state, cgroup, mounts, directory"
    );
    assert_eq!(
        fixture.engine.reconcile().await.unwrap(),
        Default::default()
    );
}

#[tokio::test]
async fn reconcile_fails_interrupted_creates_and_removes_what_they_made() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let running = create(&fixture, &admin, "running").await;
    // Records left `creating` by a server killed mid-create: one whose helper got as far as
    // a cgroup and runtime state, one that made nothing yet.
    let mut interrupted = Vec::new();
    for name in ["half-made", "not-begun"] {
        let id = EnvironmentId::generate();
        let now = Utc::now();
        let environment = airlock_core::model::Environment {
            id: id.clone(),
            name: Name::parse("name", name).unwrap(),
            owner: admin.user.id.clone(),
            image: Name::parse("image", "default").unwrap(),
            resources: fixture.engine.limits().default_resources,
            network: Default::default(),
            team: None,
            access_request: None,
            state: EnvState::Creating,
            created_at: now,
            updated_at: now,
            expires_at: now + chrono::Duration::hours(1),
            last_activity_at: now,
            idle_timeout: None,
            failure: None,
        };
        fixture
            .store
            .insert_environment(&environment, None, &Ceilings::default())
            .await
            .unwrap();
        interrupted.push(id);
    }
    fixture.runtime.leave(
        &interrupted[0],
        &[
            Remnant::Helper,
            Remnant::State,
            Remnant::Cgroup,
            Remnant::Mounts,
            Remnant::Directory,
        ],
    );

    let report = fixture.engine.reconcile().await.unwrap();
    let mut expected = interrupted.clone();
    expected.sort();
    assert_eq!(report.marked_failed, expected);
    assert!(report.orphans_removed.is_empty(), "{report:?}");
    for id in &interrupted {
        let environment = fixture.store.get_environment(id).await.unwrap().unwrap();
        assert_eq!(environment.state, EnvState::Failed);
        assert_eq!(
            environment.failure.as_deref(),
            Some("creation was interrupted")
        );
    }
    assert_eq!(fixture.runtime.list().await.unwrap(), vec![running.clone()]);
    let events = reconcile_events(&fixture).await;
    assert!(events.contains(&(
        interrupted[0].to_string(),
        "ok".into(),
        "creation interrupted: marked failed; removed helper process, runtime state, cgroup, mounts, directory".into()
    )), "{events:?}");
    assert!(
        events.contains(&(
            interrupted[1].to_string(),
            "ok".into(),
            "creation interrupted: marked failed; nothing of it was left on the host".into()
        )),
        "{events:?}"
    );
    assert_eq!(events.len(), 2, "{events:?}");
}

#[tokio::test]
async fn reconcile_stops_again_a_stopped_sandbox_a_crash_left_running_or_half_up() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let revived = create(&fixture, &admin, "revived").await;
    let half_up = create(&fixture, &admin, "half-up").await;
    let clean = create(&fixture, &admin, "clean").await;
    for id in [&revived, &half_up, &clean] {
        stop(&fixture, &admin, id).await;
    }
    // A start whose server died before recording it; a start that mounted and made state
    // but whose init died.
    fixture.runtime.revive(&revived);
    fixture
        .runtime
        .leave(&half_up, &[Remnant::State, Remnant::Mounts]);

    let report = fixture.engine.reconcile().await.unwrap();
    let mut expected = vec![revived.clone(), half_up.clone()];
    expected.sort();
    assert_eq!(report.stopped_again, expected);
    assert!(report.marked_failed.is_empty(), "{report:?}");
    for id in [&revived, &half_up, &clean] {
        assert_eq!(state_of(&fixture, id).await, EnvState::Stopped);
        assert_eq!(
            fixture.runtime.remnants(id).await.unwrap(),
            vec![Remnant::Directory],
            "a stopped sandbox keeps its files and nothing else"
        );
    }
    let events = reconcile_events(&fixture).await;
    assert!(
        events.contains(&(
            revived.to_string(),
            "ok".into(),
            "sandbox running while its record says stopped: stopped, files kept".into()
        )),
        "{events:?}"
    );
    assert!(
        events.contains(&(
            half_up.to_string(),
            "ok".into(),
            "stopped sandbox held runtime state, mounts: removed, files kept".into()
        )),
        "{events:?}"
    );
    assert_eq!(events.len(), 2, "{events:?}");

    // They start again as usual.
    let Reply::Environment { environment, .. } = fixture
        .engine
        .perform(&admin, &origin(), Action::StartEnvironment(half_up.clone()))
        .await
        .unwrap()
    else {
        panic!("an environment")
    };
    assert_eq!(environment.state, EnvState::Running);
}

#[tokio::test]
async fn a_sandbox_that_cannot_be_removed_is_reported_and_retried_without_blocking_others() {
    let fixture = fixture().await;
    let admin = admin(&fixture).await;
    let stuck = create(&fixture, &admin, "stuck").await;
    let lost = create(&fixture, &admin, "lost").await;
    fixture.runtime.leave(&stuck, &[]);
    // Its init died (the record says running, the sandbox only has state and files), and
    // removing it fails for now.
    fixture.runtime.fail_destroy(&stuck, true);
    fixture.runtime.lose(&lost);

    let report = fixture.engine.reconcile().await.unwrap();
    let mut expected = vec![stuck.clone(), lost.clone()];
    expected.sort();
    assert_eq!(report.marked_failed, expected);
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_eq!(report.failures[0].0, stuck);
    assert!(
        report.failures[0].1.contains("removing it failed"),
        "{report:?}"
    );
    assert_eq!(state_of(&fixture, &stuck).await, EnvState::Failed);
    let events = reconcile_events(&fixture).await;
    assert!(
        events
            .iter()
            .any(|(target, outcome, detail)| target == stuck.as_str()
                && outcome == "error"
                && detail.starts_with("sandbox's processes exited: marked failed; removed ")),
        "{events:?}"
    );
    assert!(events.contains(&(
        lost.to_string(),
        "ok".into(),
        "sandbox gone: marked failed; nothing of it was left on the host".into()
    )));

    // Level-driven: once removal works again, the next pass removes the orphan.
    fixture.runtime.fail_destroy(&stuck, false);
    let report = fixture.engine.reconcile().await.unwrap();
    assert_eq!(report.orphans_removed, vec![stuck.clone()]);
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(fixture.runtime.list().await.unwrap().is_empty());
}
