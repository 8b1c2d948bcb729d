//! Sessions in the engine, on real SQLite and the fake runtime: who may open one where, what
//! the trail and the records say, and that a session counts as activity.

use std::sync::Arc;

use airlock_core::action::{ListSessions, NewEnvironment, NewSession, NewUser};
use airlock_core::engine::SessionEnd;
use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::{Principal, Role};
use airlock_core::ports::{ManualClock, Store};
use airlock_core::session::{LiveSession, SessionIo, SessionKind, TerminalSize};
use airlock_core::{Action, Engine, Error, Origin, Reply};
use airlock_runtime::FakeRuntime;
use airlock_store::SqliteStore;
use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    engine: Engine,
    store: Arc<SqliteStore>,
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
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = Engine::new(
        store.clone(),
        Arc::new(FakeRuntime::default()),
        clock.clone(),
        Default::default(),
    );
    let (_, secret) = engine.bootstrap_admin().await.unwrap().unwrap();
    let admin = engine.authenticate(secret.expose()).await.unwrap();
    Fixture {
        engine,
        store,
        clock,
        admin,
        _dir: dir,
    }
}

impl Fixture {
    async fn as_user(&self, principal: &Principal, action: Action) -> Result<Reply, Error> {
        let origin = Origin {
            request_id: "req-1".into(),
            source: Some("192.0.2.1".into()),
        };
        self.engine.perform(principal, &origin, action).await
    }

    async fn user(&self, name: &str, role: Role) -> Principal {
        let reply = self
            .as_user(
                &self.admin,
                Action::CreateUser(NewUser {
                    name: Name::parse("name", name).unwrap(),
                    roles: vec![role],
                    teams: Vec::new(),
                }),
            )
            .await
            .unwrap();
        let Reply::User(user) = reply else {
            panic!("{reply:?}")
        };
        let reply = self
            .as_user(
                &self.admin,
                Action::CreateToken(airlock_core::action::NewToken {
                    user: Some(user.id.clone()),
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
        let Reply::Token { secret, .. } = reply else {
            panic!("{reply:?}")
        };
        self.engine.authenticate(secret.expose()).await.unwrap()
    }

    async fn environment(&self, owner: &Principal, idle: Option<u64>) -> EnvironmentId {
        let request = NewEnvironment {
            idle_timeout_seconds: idle,
            ..Default::default()
        };
        match self
            .as_user(
                owner,
                Action::CreateEnvironment {
                    request,
                    idempotency_key: None,
                },
            )
            .await
            .unwrap()
        {
            Reply::Environment { environment, .. } => environment.id,
            other => panic!("{other:?}"),
        }
    }
}

fn terminal(environment: &EnvironmentId, argv: &[&str]) -> Action {
    Action::StartSession(NewSession {
        environment: environment.clone(),
        kind: SessionKind::Terminal,
        argv: argv.iter().map(|arg| arg.to_string()).collect(),
        env: Default::default(),
        cwd: None,
        size: Some(TerminalSize::new(100, 30).unwrap()),
        port: None,
    })
}

fn live(reply: Result<Reply, Error>) -> LiveSession {
    match reply {
        Ok(Reply::Session(live)) => live,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_session_is_opened_relayed_ended_and_audited() {
    let fixture = fixture().await;
    let ann = fixture.user("ann", Role::Developer).await;
    let environment = fixture.environment(&ann, None).await;

    let live = live(
        fixture
            .as_user(&ann, terminal(&environment, &["cat"]))
            .await,
    );
    assert_eq!(live.session.user, ann.user.id);
    assert_eq!(live.session.argv, ["cat"]);
    assert!(live.session.recorded);
    assert_eq!(live.session.ended_at, None);
    let SessionIo::Process(mut process) = live.io else {
        panic!("a process")
    };
    process.stdin.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    process.stdout.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    process
        .control
        .signal(airlock_core::session::Signal::Term)
        .unwrap();
    let exit = process.control.wait().await.unwrap();
    assert_eq!(exit.exit_code, 128 + 15);

    let origin = Origin {
        request_id: "req-1".into(),
        source: Some("192.0.2.1".into()),
    };
    fixture
        .engine
        .end_session(
            &origin,
            &live.session,
            SessionEnd {
                exit: Some(exit),
                bytes_in: 4,
                bytes_out: 4,
                recording_sha256: Some("ab".repeat(32)),
            },
        )
        .await;
    let stored = fixture
        .store
        .get_session(&live.session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.exit_code, Some(143));
    assert_eq!((stored.bytes_in, stored.bytes_out), (4, 4));
    assert!(stored.ended_at.is_some());

    // Start and end are both in the trail, by ann, about the environment.
    let trail = fixture.engine.recent_audit(10).await.unwrap();
    let end = &trail[0];
    assert_eq!(
        (end.action.as_str(), end.actor.as_str()),
        ("session.end", ann.user.id.as_str())
    );
    assert_eq!(end.target.as_deref(), Some(environment.as_str()));
    assert!(
        end.detail.as_deref().unwrap().contains("exit code 143"),
        "{end:?}"
    );
    let start = trail
        .iter()
        .find(|event| event.action == "session.start")
        .unwrap();
    assert_eq!(start.outcome, "ok");
    assert_eq!(start.source.as_deref(), Some("192.0.2.1"));
    assert!(
        start
            .detail
            .as_deref()
            .unwrap()
            .contains(live.session.id.as_str())
    );
}

#[tokio::test]
async fn who_may_open_sessions_and_read_them() {
    let fixture = fixture().await;
    let ann = fixture.user("ann", Role::Developer).await;
    let bob = fixture.user("bob", Role::Developer).await;
    let viewer = fixture.user("vera", Role::Viewer).await;
    let auditor = fixture.user("audrey", Role::Auditor).await;
    let environment = fixture.environment(&ann, None).await;

    // Another user's environment is missing; a viewer may see it but not enter it.
    let refused = fixture.as_user(&bob, terminal(&environment, &[])).await;
    assert!(
        matches!(refused, Err(Error::NotFound { .. })),
        "{refused:?}"
    );
    let ann_session = live(fixture.as_user(&ann, terminal(&environment, &[])).await);
    // An empty command is a login shell.
    assert_eq!(ann_session.session.argv[0], "/bin/sh");

    let listed = |principal: Principal, all: bool| {
        let fixture = &fixture;
        async move {
            match fixture
                .as_user(
                    &principal,
                    Action::ListSessions(ListSessions {
                        all,
                        ..Default::default()
                    }),
                )
                .await
            {
                Ok(Reply::Sessions { items, .. }) => Ok(items.len()),
                Err(error) => Err(error),
                Ok(other) => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(listed(ann.clone(), false).await.unwrap(), 1);
    assert_eq!(listed(bob.clone(), false).await.unwrap(), 0);
    assert!(matches!(
        listed(bob.clone(), true).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(listed(auditor.clone(), true).await.unwrap(), 1);
    let id = ann_session.session.id.clone();
    let get = |principal: Principal| {
        let (fixture, id) = (&fixture, id.clone());
        async move { fixture.as_user(&principal, Action::GetRecording(id)).await }
    };
    assert!(get(ann.clone()).await.is_ok());
    assert!(get(auditor).await.is_ok());
    assert!(matches!(get(bob).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        get(viewer.clone()).await,
        Err(Error::NotFound { .. })
    ));

    // A stopped environment cannot be entered; a port forward needs a port.
    let refused = fixture
        .as_user(
            &ann,
            Action::StartSession(NewSession {
                environment: environment.clone(),
                kind: SessionKind::PortForward,
                argv: Vec::new(),
                env: Default::default(),
                cwd: None,
                size: None,
                port: None,
            }),
        )
        .await;
    assert!(matches!(refused, Err(Error::Invalid(_))), "{refused:?}");
    fixture
        .as_user(&ann, Action::StopEnvironment(environment.clone()))
        .await
        .unwrap();
    let refused = fixture.as_user(&ann, terminal(&environment, &[])).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    // Refusals are in the trail too.
    let trail = fixture.engine.recent_audit(50).await.unwrap();
    let refusals = trail
        .iter()
        .filter(|event| event.action == "session.start" && event.outcome != "ok")
        .count();
    assert_eq!(refusals, 3, "{trail:#?}");
}

#[tokio::test]
async fn an_open_session_keeps_its_environment_from_idling() {
    let fixture = fixture().await;
    let ann = fixture.user("ann", Role::Developer).await;
    let environment = fixture.environment(&ann, Some(600)).await;
    let session = live(
        fixture
            .as_user(&ann, terminal(&environment, &["cat"]))
            .await,
    );
    // 500 s pass; the relay marks the session alive; 500 more: not idle for 600 s yet.
    fixture.clock.advance(chrono::Duration::seconds(500));
    fixture
        .engine
        .keep_alive(&ann, &session.session)
        .await
        .unwrap();
    fixture.clock.advance(chrono::Duration::seconds(500));
    let reaped = fixture.engine.reap().await.unwrap();
    assert!(reaped.stopped.is_empty(), "{reaped:?}");
    // Without it, it would have been stopped.
    fixture.clock.advance(chrono::Duration::seconds(200));
    let reaped = fixture.engine.reap().await.unwrap();
    assert_eq!(reaped.stopped, [environment]);
}

#[tokio::test]
async fn a_buffered_command_is_recorded_in_the_trail_with_its_exit_code_and_sizes() {
    let fixture = fixture().await;
    let ann = fixture.user("ann", Role::Developer).await;
    let environment = fixture.environment(&ann, None).await;
    let reply = fixture
        .as_user(
            &ann,
            Action::Exec {
                environment: environment.clone(),
                command: airlock_core::action::Command {
                    argv: vec!["echo".into(), "hello".into()],
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    assert!(matches!(reply, Reply::Exec(_)));
    let trail = fixture.engine.recent_audit(5).await.unwrap();
    let exec = trail
        .iter()
        .find(|event| event.action == "environment.exec")
        .unwrap();
    assert_eq!(exec.target.as_deref(), Some(environment.as_str()));
    assert_eq!(
        exec.detail.as_deref(),
        Some("echo hello: exit code 0, 6 B stdout, 0 B stderr")
    );
}

#[tokio::test]
async fn an_open_session_ends_when_its_access_does() {
    let fixture = fixture().await;
    let ann = fixture.user("ann", Role::Developer).await;
    let environment = fixture.environment(&ann, None).await;
    let session = live(
        fixture
            .as_user(&ann, terminal(&environment, &["cat"]))
            .await,
    );
    fixture
        .engine
        .keep_alive(&ann, &session.session)
        .await
        .unwrap();

    // Her token revoked: the next check ends the session.
    let airlock_core::model::Credential::Token(token) = ann.credential.clone() else {
        panic!("a token")
    };
    fixture
        .as_user(&ann, Action::RevokeToken(token))
        .await
        .unwrap();
    let checked = fixture.engine.keep_alive(&ann, &session.session).await;
    assert!(
        matches!(checked, Err(Error::Unauthenticated)),
        "{checked:?}"
    );

    // Another one, whose environment is then deleted: ended too.
    let bob = fixture.user("bob", Role::Developer).await;
    let other = fixture.environment(&bob, None).await;
    let session = live(fixture.as_user(&bob, terminal(&other, &["cat"])).await);
    fixture
        .as_user(&bob, Action::DeleteEnvironment(other))
        .await
        .unwrap();
    let checked = fixture.engine.keep_alive(&bob, &session.session).await;
    assert!(
        matches!(checked, Err(Error::NotFound { .. })),
        "{checked:?}"
    );
}
