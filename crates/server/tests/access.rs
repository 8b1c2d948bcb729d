//! Temporary production access and team quotas on the engine, with the real SQLite store, the
//! real policies, the fake runtime and a clock the test moves: who may request, approve,
//! deny, revoke; N distinct approvers; lapsing; expiry with the environments destroyed; a
//! clock set back; a restart after a grant ended; quotas under concurrent creates.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_core::access::{AccessState, SecretMount, SecretSource, SecretValue};
use airlock_core::action::{
    Command, ListAccessRequests, NewAccessRequest, NewEnvironment, NewProfile, NewToken, NewUser,
};
use airlock_core::ids::{AccessRequestId, EnvironmentId, Name};
use airlock_core::model::{EnvState, Party, Principal, Quota, Role, Scope};
use airlock_core::ports::{Clock, ManualClock, Runtime, SandboxState, Secrets, Store};
use airlock_core::{Action, Engine, Error, Origin, Reply};
use airlock_runtime::FakeRuntime;
use airlock_store::SqliteStore;
use chrono::Utc;

/// Secrets the test hands out by name.
struct TestSecrets(BTreeMap<String, String>);

impl Secrets for TestSecrets {
    fn read(&self, source: &SecretSource) -> Result<SecretValue, String> {
        let SecretSource::Env(name) = source else {
            return Err("files are not used here".into());
        };
        self.0
            .get(name)
            .map(|value| SecretValue::new(value.as_bytes().to_vec()))
            .ok_or_else(|| format!("no {name}"))
    }
}

struct Fixture {
    engine: Arc<Engine>,
    store: Arc<SqliteStore>,
    runtime: Arc<FakeRuntime>,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
    admin: Principal,
}

fn engine_on(
    store: Arc<SqliteStore>,
    runtime: Arc<FakeRuntime>,
    clock: Arc<ManualClock>,
) -> Engine {
    let secrets = TestSecrets(BTreeMap::from([("DB".to_owned(), "hunter2".to_owned())]));
    Engine::new(store, runtime, clock, Default::default()).with_secrets(Arc::new(secrets))
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
    let engine = Arc::new(engine_on(store.clone(), runtime.clone(), clock.clone()));
    let (_, secret) = engine.bootstrap_admin().await.unwrap().unwrap();
    let admin = engine.authenticate(secret.expose()).await.unwrap();
    Fixture {
        engine,
        store,
        runtime,
        clock,
        dir,
        admin,
    }
}

fn origin() -> Origin {
    Origin {
        request_id: "test".into(),
        source: None,
    }
}

impl Fixture {
    async fn perform(&self, principal: &Principal, action: Action) -> Result<Reply, Error> {
        self.engine.perform(principal, &origin(), action).await
    }

    /// A user with `roles` and `teams`, signed in with a token of `scopes`.
    async fn user(
        &self,
        name: &str,
        roles: &[Role],
        teams: &[&str],
        scopes: &[Scope],
    ) -> Principal {
        let Reply::User(user) = self
            .perform(
                &self.admin,
                Action::CreateUser(NewUser {
                    name: Name::parse("name", name).unwrap(),
                    roles: roles.to_vec(),
                    teams: teams
                        .iter()
                        .map(|team| Name::parse("team", team).unwrap())
                        .collect(),
                }),
            )
            .await
            .unwrap()
        else {
            panic!("not a user")
        };
        let Reply::Token { secret, .. } = self
            .perform(
                &self.admin,
                Action::CreateToken(NewToken {
                    user: Some(user.id),
                    scopes: Some(scopes.to_vec()),
                    ..Default::default()
                }),
            )
            .await
            .unwrap()
        else {
            panic!("not a token")
        };
        self.engine.authenticate(secret.expose()).await.unwrap()
    }

    async fn team(&self, name: &str, quota: Quota) {
        self.perform(
            &self.admin,
            Action::CreateTeam {
                name: Name::parse("name", name).unwrap(),
                quota,
            },
        )
        .await
        .unwrap();
    }

    async fn profile(&self, name: &str, approvals: u32, approvers: Vec<Party>) {
        self.perform(
            &self.admin,
            Action::CreateProfile(NewProfile {
                name: Name::parse("name", name).unwrap(),
                description: None,
                max_duration_seconds: 3600,
                approvals_required: approvals,
                secrets: vec![SecretMount {
                    env: Some("DB_PASSWORD".into()),
                    file: Some("/run/secrets/db".into()),
                    source: SecretSource::Env("DB".into()),
                }],
                network: None,
                requesters: None,
                approvers: Some(approvers),
            }),
        )
        .await
        .unwrap();
    }

    async fn request(&self, principal: &Principal, profile: &str, seconds: u64) -> AccessRequestId {
        match self
            .perform(
                principal,
                Action::RequestAccess(NewAccessRequest {
                    profile: Name::parse("profile", profile).unwrap(),
                    reason: "incident 42: payments are down".into(),
                    duration_seconds: seconds,
                }),
            )
            .await
            .unwrap()
        {
            Reply::AccessRequest(request) => request.id,
            other => panic!("{other:?}"),
        }
    }

    async fn state(&self, id: &AccessRequestId) -> AccessState {
        self.store
            .get_access_request(id)
            .await
            .unwrap()
            .unwrap()
            .state
    }

    async fn open(
        &self,
        principal: &Principal,
        grant: &AccessRequestId,
    ) -> Result<EnvironmentId, Error> {
        match self
            .perform(
                principal,
                Action::CreateEnvironment {
                    request: NewEnvironment {
                        access_request: Some(grant.clone()),
                        ..Default::default()
                    },
                    idempotency_key: None,
                },
            )
            .await?
        {
            Reply::Environment { environment, .. } => Ok(environment.id),
            other => panic!("{other:?}"),
        }
    }

    async fn env_state(&self, id: &EnvironmentId) -> EnvState {
        self.store.get_environment(id).await.unwrap().unwrap().state
    }

    fn advance(&self, seconds: i64) {
        self.clock.advance(chrono::Duration::seconds(seconds));
    }
}

const DEVELOPER: &[Scope] = &[Scope::Read, Scope::Write, Scope::AccessRequest];
const APPROVER: &[Scope] = &[Scope::Read, Scope::AccessApprove];

#[tokio::test]
async fn a_grant_opens_an_environment_with_its_secrets_and_its_end_destroys_it() {
    let fixture = fixture().await;
    fixture
        .profile("prod", 1, vec![Party::Role(Role::Approver)])
        .await;
    let dev = fixture
        .user("dev", &[Role::Developer], &[], DEVELOPER)
        .await;
    let approver = fixture
        .user("alice", &[Role::Approver], &[], APPROVER)
        .await;
    let grant = fixture.request(&dev, "prod", 600).await;

    // Pending: nobody can open an environment with it yet.
    assert!(matches!(
        fixture.open(&dev, &grant).await,
        Err(Error::Forbidden(_))
    ));
    let Reply::AccessRequest(approved) = fixture
        .perform(&approver, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(approved.state, AccessState::Approved);
    let granted_at = approved.granted_at.unwrap();
    assert_eq!(
        approved.expires_at.unwrap(),
        granted_at + chrono::Duration::seconds(600)
    );

    // Someone else, even an admin, cannot use the grant: it is not theirs.
    let other = fixture
        .user("bob", &[Role::Developer], &[], DEVELOPER)
        .await;
    assert!(matches!(
        fixture.open(&other, &grant).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        fixture.open(&fixture.admin, &grant).await,
        Err(Error::NotFound { .. })
    ));

    let environment = fixture.open(&dev, &grant).await.unwrap();
    let record = fixture
        .store
        .get_environment(&environment)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.access_request.as_ref(), Some(&grant));
    assert!(
        record.expires_at <= approved.expires_at.unwrap(),
        "never outlives its grant"
    );
    let files = fixture.runtime.files(&environment);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "/run/secrets/db");
    assert_eq!(files[0].contents.expose(), b"hunter2");
    // Variables reach every command.
    let Reply::Exec(_) = fixture
        .perform(
            &dev,
            Action::Exec {
                environment: environment.clone(),
                command: Command {
                    argv: vec!["env".into()],
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        fixture
            .runtime
            .last_exec_env(&environment)
            .get("DB_PASSWORD")
            .map(String::as_str),
        Some("hunter2")
    );

    // Not yet: the sweep leaves an active grant alone.
    fixture.advance(599);
    fixture.engine.sweep_access().await.unwrap();
    assert_eq!(fixture.env_state(&environment).await, EnvState::Running);

    fixture.advance(1);
    let report = fixture.engine.sweep_access().await.unwrap();
    assert_eq!(report.expired, vec![grant.clone()]);
    assert_eq!(report.destroyed, vec![environment.clone()]);
    assert_eq!(fixture.state(&grant).await, AccessState::Expired);
    assert_eq!(fixture.env_state(&environment).await, EnvState::Deleted);
    assert_eq!(
        fixture.runtime.inspect(&environment).await.unwrap(),
        SandboxState::Missing
    );
    assert!(matches!(
        fixture.open(&dev, &grant).await,
        Err(Error::Forbidden(_))
    ));

    // History stays: who asked, why, who approved, when and how it ended.
    let ended = fixture
        .store
        .get_access_request(&grant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.approvals.len(), 1);
    assert_eq!(ended.approvals[0].approver, approver.user.id);
    assert_eq!(ended.ended_by.as_deref(), Some("system"));
    assert!(ended.reason.contains("incident 42"));
    let actions: Vec<String> = fixture
        .engine
        .recent_audit(200)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.action)
        .collect();
    for expected in [
        "access.request",
        "access.approve",
        "access.grant",
        "access.expire",
        "environment.grant_ended",
    ] {
        assert!(
            actions.iter().any(|action| action == expected),
            "{expected} not audited"
        );
    }
}

#[tokio::test]
async fn nobody_approves_their_own_request_and_approvals_are_distinct_people() {
    let fixture = fixture().await;
    fixture.team("sre", Quota::default()).await;
    fixture
        .profile(
            "prod",
            2,
            vec![
                Party::Role(Role::Approver),
                Party::Team(Name::parse("team", "sre").unwrap()),
            ],
        )
        .await;
    // A developer who is also an approver and in the approving team.
    let dev = fixture
        .user(
            "dev",
            &[Role::Developer, Role::Approver],
            &["sre"],
            &[
                Scope::Read,
                Scope::Write,
                Scope::AccessRequest,
                Scope::AccessApprove,
            ],
        )
        .await;
    let alice = fixture
        .user("alice", &[Role::Approver], &[], APPROVER)
        .await;
    let carol = fixture
        .user(
            "carol",
            &[Role::Developer],
            &["sre"],
            &[Scope::Read, Scope::AccessApprove],
        )
        .await;
    let outsider = fixture
        .user(
            "mallory",
            &[Role::Developer],
            &[],
            &[Scope::Read, Scope::AccessApprove],
        )
        .await;
    let grant = fixture.request(&dev, "prod", 600).await;

    assert!(matches!(
        fixture
            .perform(&dev, Action::ApproveAccess(grant.clone()))
            .await,
        Err(Error::Forbidden(_))
    ));
    // Nor does an admin decide it: that is for the profile's approvers.
    assert!(matches!(
        fixture
            .perform(&fixture.admin, Action::ApproveAccess(grant.clone()))
            .await,
        Err(Error::Forbidden(_))
    ));
    // Someone who is not an approver of the profile does not even see the request.
    assert!(matches!(
        fixture
            .perform(&outsider, Action::ApproveAccess(grant.clone()))
            .await,
        Err(Error::NotFound { .. })
    ));
    // A token without the approve scope cannot approve, whoever holds it.
    let alice_read_only = {
        let mut principal = alice.clone();
        principal.scopes = vec![Scope::Read];
        principal
    };
    assert!(matches!(
        fixture
            .perform(&alice_read_only, Action::ApproveAccess(grant.clone()))
            .await,
        Err(Error::Forbidden(_))
    ));

    fixture
        .perform(&alice, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap();
    fixture
        .perform(&alice, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap();
    assert_eq!(
        fixture.state(&grant).await,
        AccessState::Pending,
        "the same person counts once"
    );
    let Reply::AccessRequest(request) = fixture
        .perform(&carol, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(request.state, AccessState::Approved);
    assert_eq!(request.approvals.len(), 2);
    assert!(matches!(
        fixture
            .perform(&alice, Action::ApproveAccess(grant.clone()))
            .await,
        Err(Error::Conflict(_))
    ));
}

#[tokio::test]
async fn requests_lapse_and_denied_ones_stay_denied() {
    let fixture = fixture().await;
    fixture
        .profile("prod", 1, vec![Party::Role(Role::Approver)])
        .await;
    let dev = fixture
        .user("dev", &[Role::Developer], &[], DEVELOPER)
        .await;
    let alice = fixture
        .user("alice", &[Role::Approver], &[], APPROVER)
        .await;

    let lapsing = fixture.request(&dev, "prod", 600).await;
    let denied = fixture.request(&dev, "prod", 600).await;
    fixture
        .perform(
            &alice,
            Action::DenyAccess {
                id: denied.clone(),
                reason: Some("not during the freeze".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(fixture.state(&denied).await, AccessState::Denied);
    assert!(matches!(
        fixture
            .perform(&alice, Action::ApproveAccess(denied.clone()))
            .await,
        Err(Error::Conflict(_))
    ));

    fixture.advance(3600);
    // Deciding after the request's time is refused even before a sweep notices.
    assert!(matches!(
        fixture
            .perform(&alice, Action::ApproveAccess(lapsing.clone()))
            .await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(fixture.state(&lapsing).await, AccessState::Lapsed);

    // Listing: the requester sees their own, the approver everyone's; a developer cannot list all.
    let Reply::AccessRequests { items, .. } = fixture
        .perform(
            &alice,
            Action::ListAccessRequests(ListAccessRequests {
                all: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(items.len(), 2);
    assert!(matches!(
        fixture
            .perform(
                &dev,
                Action::ListAccessRequests(ListAccessRequests {
                    all: true,
                    ..Default::default()
                })
            )
            .await,
        Err(Error::Forbidden(_))
    ));
}

#[tokio::test]
async fn revoking_destroys_the_environments_at_once() {
    let fixture = fixture().await;
    fixture
        .profile("prod", 1, vec![Party::Role(Role::Approver)])
        .await;
    let dev = fixture
        .user("dev", &[Role::Developer], &[], DEVELOPER)
        .await;
    let alice = fixture
        .user("alice", &[Role::Approver], &[], APPROVER)
        .await;
    let other = fixture
        .user("bob", &[Role::Developer], &[], DEVELOPER)
        .await;
    let grant = fixture.request(&dev, "prod", 3600).await;
    fixture
        .perform(&alice, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap();
    let first = fixture.open(&dev, &grant).await.unwrap();
    let second = fixture.open(&dev, &grant).await.unwrap();

    // Another developer may not revoke it and does not learn it exists.
    assert!(matches!(
        fixture
            .perform(
                &other,
                Action::RevokeAccess {
                    id: grant.clone(),
                    reason: None
                }
            )
            .await,
        Err(Error::NotFound { .. })
    ));
    fixture
        .perform(
            &alice,
            Action::RevokeAccess {
                id: grant.clone(),
                reason: Some("incident over".into()),
            },
        )
        .await
        .unwrap();
    for environment in [&first, &second] {
        assert_eq!(fixture.env_state(environment).await, EnvState::Deleted);
    }
    let ended = fixture
        .store
        .get_access_request(&grant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.state, AccessState::Revoked);
    assert_eq!(ended.ended_by.as_deref(), Some(alice.user.id.as_str()));
    assert_eq!(ended.end_reason.as_deref(), Some("incident over"));
}

#[tokio::test]
async fn a_clock_set_back_never_extends_a_grant() {
    let fixture = fixture().await;
    fixture
        .profile("prod", 1, vec![Party::Role(Role::Approver)])
        .await;
    let dev = fixture
        .user("dev", &[Role::Developer], &[], DEVELOPER)
        .await;
    let alice = fixture
        .user("alice", &[Role::Approver], &[], APPROVER)
        .await;
    let grant = fixture.request(&dev, "prod", 600).await;
    fixture
        .perform(&alice, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap();
    let environment = fixture.open(&dev, &grant).await.unwrap();

    fixture.advance(601);
    fixture.engine.now(); // the engine has seen the time past the end
    fixture.advance(-3600);
    assert!(matches!(
        fixture.open(&dev, &grant).await,
        Err(Error::Forbidden(_))
    ));
    fixture.engine.sweep_access().await.unwrap();
    assert_eq!(fixture.state(&grant).await, AccessState::Expired);
    assert_eq!(fixture.env_state(&environment).await, EnvState::Deleted);

    // Across a restart too: a new engine on the same database, with the clock still behind.
    let restarted = engine_on(
        fixture.store.clone(),
        fixture.runtime.clone(),
        fixture.clock.clone(),
    );
    restarted.restore_time().await.unwrap();
    assert!(restarted.now() > fixture.clock.now() + chrono::Duration::seconds(3000));
}

#[tokio::test]
async fn a_grant_that_ended_while_the_server_was_down_is_revoked_at_start() {
    let fixture = fixture().await;
    fixture
        .profile("prod", 1, vec![Party::Role(Role::Approver)])
        .await;
    let dev = fixture
        .user("dev", &[Role::Developer], &[], DEVELOPER)
        .await;
    let alice = fixture
        .user("alice", &[Role::Approver], &[], APPROVER)
        .await;
    let grant = fixture.request(&dev, "prod", 600).await;
    fixture
        .perform(&alice, Action::ApproveAccess(grant.clone()))
        .await
        .unwrap();
    let environment = fixture.open(&dev, &grant).await.unwrap();

    // "Down" for an hour: nothing swept. The next engine sweeps before serving.
    fixture.advance(3600);
    let restarted = engine_on(
        fixture.store.clone(),
        fixture.runtime.clone(),
        fixture.clock.clone(),
    );
    restarted.restore_time().await.unwrap();
    let report = restarted.sweep_access().await.unwrap();
    assert_eq!(report.expired, vec![grant.clone()]);
    assert_eq!(report.destroyed, vec![environment.clone()]);
    assert_eq!(fixture.env_state(&environment).await, EnvState::Deleted);
    let _ = &fixture.dir;
}

#[tokio::test]
async fn team_quotas_hold_under_concurrent_creates() {
    let fixture = fixture().await;
    fixture
        .team(
            "payments",
            Quota {
                max_environments: Some(5),
                max_memory_mib: None,
                max_millicpus: None,
            },
        )
        .await;
    fixture
        .team(
            "search",
            Quota {
                max_environments: None,
                max_memory_mib: Some(1024),
                max_millicpus: None,
            },
        )
        .await;
    let dev = fixture
        .user("dev", &[Role::Developer], &["payments"], DEVELOPER)
        .await;
    let searcher = fixture
        .user(
            "sam",
            &[Role::Ci],
            &["search"],
            &[Scope::Read, Scope::Write],
        )
        .await;

    let attempts = (0..20).map(|_| {
        let engine = fixture.engine.clone();
        let dev = dev.clone();
        tokio::spawn(async move {
            engine
                .perform(
                    &dev,
                    &origin(),
                    Action::CreateEnvironment {
                        request: NewEnvironment::default(),
                        idempotency_key: None,
                    },
                )
                .await
        })
    });
    let mut created = 0;
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => created += 1,
            Err(Error::QuotaExceeded(_)) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, refused), (5, 15));
    assert_eq!(fixture.runtime.list().await.unwrap().len(), 5);

    // Memory: 512 MiB each by default, 1024 in all.
    for expected_ok in [true, true, false] {
        let result = fixture
            .perform(
                &searcher,
                Action::CreateEnvironment {
                    request: NewEnvironment::default(),
                    idempotency_key: None,
                },
            )
            .await;
        assert_eq!(result.is_ok(), expected_ok, "{result:?}");
    }
    // Not a member: refused, nothing made.
    let result = fixture
        .perform(
            &searcher,
            Action::CreateEnvironment {
                request: NewEnvironment {
                    team: Some(Name::parse("team", "payments").unwrap()),
                    ..Default::default()
                },
                idempotency_key: None,
            },
        )
        .await;
    assert!(matches!(result, Err(Error::Forbidden(_))));
    assert_eq!(fixture.runtime.list().await.unwrap().len(), 7);
}

#[tokio::test]
async fn roles_decide_what_each_principal_may_do() {
    let fixture = fixture().await;
    fixture
        .profile("prod", 1, vec![Party::Role(Role::Approver)])
        .await;
    let all_scopes = Scope::ALL
        .iter()
        .copied()
        .filter(|scope| *scope != Scope::Admin)
        .collect::<Vec<_>>();
    let dev = fixture
        .user("dev", &[Role::Developer], &[], &all_scopes)
        .await;
    let viewer = fixture.user("vic", &[Role::Viewer], &[], &all_scopes).await;
    let auditor = fixture
        .user("audrey", &[Role::Auditor], &[], &all_scopes)
        .await;
    let ci = fixture.user("runner", &[Role::Ci], &[], &all_scopes).await;
    let nobody = fixture.user("nobody", &[], &[], &all_scopes).await;

    let create = || Action::CreateEnvironment {
        request: NewEnvironment::default(),
        idempotency_key: None,
    };
    let Reply::Environment { environment, .. } = fixture.perform(&dev, create()).await.unwrap()
    else {
        panic!()
    };
    let id = environment.id;
    assert!(fixture.perform(&ci, create()).await.is_ok());
    assert!(matches!(
        fixture.perform(&viewer, create()).await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        fixture.perform(&auditor, create()).await,
        Err(Error::Forbidden(_))
    ));

    // The auditor sees the developer's environment but may not touch it; others do not see it.
    assert!(
        fixture
            .perform(&auditor, Action::GetEnvironment(id.clone()))
            .await
            .is_ok()
    );
    assert!(matches!(
        fixture
            .perform(&auditor, Action::DeleteEnvironment(id.clone()))
            .await,
        Err(Error::Forbidden(_))
    ));
    for stranger in [&viewer, &ci, &nobody] {
        assert!(matches!(
            fixture
                .perform(stranger, Action::GetEnvironment(id.clone()))
                .await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            fixture
                .perform(stranger, Action::DeleteEnvironment(id.clone()))
                .await,
            Err(Error::NotFound { .. })
        ));
    }
    // CI jobs do not ask for production access (they do not even see the profiles);
    // developers do.
    let request = |profile: &str| {
        Action::RequestAccess(NewAccessRequest {
            profile: Name::parse("profile", profile).unwrap(),
            reason: "deploy hotfix".into(),
            duration_seconds: 600,
        })
    };
    assert!(matches!(
        fixture.perform(&ci, request("prod")).await,
        Err(Error::NotFound { .. })
    ));
    assert!(fixture.perform(&dev, request("prod")).await.is_ok());
    assert!(matches!(
        fixture.perform(&dev, request("nope")).await,
        Err(Error::NotFound { .. })
    ));
    // Admin-only actions.
    for principal in [&dev, &auditor, &ci] {
        assert!(matches!(
            fixture
                .perform(
                    principal,
                    Action::CreateTeam {
                        name: Name::parse("name", "x").unwrap(),
                        quota: Quota::default()
                    }
                )
                .await,
            Err(Error::Forbidden(_))
        ));
    }
    assert!(fixture.perform(&auditor, Action::ListUsers).await.is_ok());
    assert!(matches!(
        fixture.perform(&dev, Action::ListUsers).await,
        Err(Error::Forbidden(_))
    ));
    // Every refusal is audited.
    let refusals = fixture
        .engine
        .recent_audit(500)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.outcome == "forbidden" || event.outcome == "not_found")
        .count();
    assert!(refusals >= 12, "{refusals} refusals audited");
}
