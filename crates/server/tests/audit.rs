//! The audit trail fails closed on the engine, with the real SQLite store made to refuse
//! every audit insert (a trigger the test installs): each privileged action — approving,
//! denying and revoking access, creating and revoking tokens, creating and updating users,
//! creating teams and setting quotas, creating profiles — ends in `AuditUnavailable` and
//! changes nothing, the first admin is not made without its record, and reads go on.

use std::sync::Arc;

use airlock_core::access::AccessState;
use airlock_core::action::{NewAccessRequest, NewProfile, NewToken, NewUser};
use airlock_core::ids::{AccessRequestId, Name, TokenId};
use airlock_core::model::{Party, Principal, Quota, Role, Scope};
use airlock_core::ports::{ManualClock, Store};
use airlock_core::{Action, Engine, Error, Origin, Reply};
use airlock_runtime::FakeRuntime;
use airlock_store::SqliteStore;
use chrono::Utc;
use sqlx::Connection;

struct Fixture {
    engine: Engine,
    store: Arc<SqliteStore>,
    dir: tempfile::TempDir,
    admin: Principal,
}

/// An engine on a fresh SQLite store (in the directory returned first) and the fake runtime.
async fn engine() -> (tempfile::TempDir, Arc<SqliteStore>, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("test.db"))
            .await
            .unwrap(),
    );
    let engine = Engine::new(
        store.clone(),
        Arc::new(FakeRuntime::default()),
        Arc::new(ManualClock::new(Utc::now())),
        Default::default(),
    );
    (dir, store, engine)
}

async fn fixture() -> Fixture {
    let (dir, store, engine) = engine().await;
    let (_, secret) = engine.bootstrap_admin().await.unwrap().unwrap();
    let admin = engine.authenticate(secret.expose()).await.unwrap();
    Fixture {
        engine,
        store,
        dir,
        admin,
    }
}

/// Makes the audit table refuse (or accept again) every insert.
async fn refuse_audit(dir: &std::path::Path, refuse: bool) {
    let mut connection =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("test.db").display()))
            .await
            .unwrap();
    let sql = if refuse {
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
         BEGIN SELECT RAISE(ABORT, 'the audit trail is unavailable'); END;"
    } else {
        "DROP TRIGGER refuse_audit"
    };
    sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
}

impl Fixture {
    async fn perform(&self, principal: &Principal, action: Action) -> Result<Reply, Error> {
        self.engine
            .perform(principal, &Origin::default(), action)
            .await
    }

    async fn user(&self, name: &str, roles: &[Role], scopes: &[Scope]) -> (Principal, TokenId) {
        let Ok(Reply::User(user)) = self
            .perform(
                &self.admin,
                Action::CreateUser(NewUser {
                    name: Name::parse("name", name).unwrap(),
                    roles: roles.to_vec(),
                    teams: Vec::new(),
                }),
            )
            .await
        else {
            panic!("no user")
        };
        let Ok(Reply::Token { secret, record }) = self
            .perform(
                &self.admin,
                Action::CreateToken(NewToken {
                    user: Some(user.id),
                    scopes: Some(scopes.to_vec()),
                    ..Default::default()
                }),
            )
            .await
        else {
            panic!("no token")
        };
        (
            self.engine.authenticate(secret.expose()).await.unwrap(),
            record.id,
        )
    }

    async fn request(&self, requester: &Principal) -> AccessRequestId {
        let Ok(Reply::AccessRequest(request)) = self
            .perform(
                requester,
                Action::RequestAccess(NewAccessRequest {
                    profile: Name::parse("profile", "prod").unwrap(),
                    reason: "incident 7: checkout failing".into(),
                    duration_seconds: 600,
                }),
            )
            .await
        else {
            panic!("no request")
        };
        request.id
    }

    async fn state_of(&self, id: &AccessRequestId) -> AccessState {
        self.store
            .get_access_request(id)
            .await
            .unwrap()
            .unwrap()
            .state
    }
}

fn profile(name: &str) -> NewProfile {
    NewProfile {
        name: Name::parse("name", name).unwrap(),
        description: None,
        max_duration_seconds: 3600,
        approvals_required: 1,
        secrets: Vec::new(),
        network: None,
        requesters: None,
        approvers: Some(vec![Party::Role(Role::Approver)]),
    }
}

#[tokio::test]
async fn privileged_actions_fail_closed_and_change_nothing_when_the_audit_trail_refuses() {
    let fixture = fixture().await;
    let (developer, developer_token) = fixture
        .user(
            "dev",
            &[Role::Developer],
            &[Scope::Read, Scope::Write, Scope::AccessRequest],
        )
        .await;
    let (approver, _) = fixture
        .user(
            "alice",
            &[Role::Approver],
            &[Scope::Read, Scope::AccessApprove],
        )
        .await;
    fixture
        .perform(
            &fixture.admin,
            Action::CreateTeam {
                name: Name::parse("name", "payments").unwrap(),
                quota: Quota::default(),
            },
        )
        .await
        .unwrap();
    fixture
        .perform(&fixture.admin, Action::CreateProfile(profile("prod")))
        .await
        .unwrap();
    let pending = fixture.request(&developer).await;
    let granted = fixture.request(&developer).await;
    fixture
        .perform(&approver, Action::ApproveAccess(granted.clone()))
        .await
        .unwrap();
    let events_before = fixture.store.list_audit(1000).await.unwrap().len();

    refuse_audit(fixture.dir.path(), true).await;
    let attempts: Vec<(&Principal, Action)> = vec![
        (&approver, Action::ApproveAccess(pending.clone())),
        (
            &approver,
            Action::DenyAccess {
                id: pending.clone(),
                reason: None,
            },
        ),
        (
            &developer,
            Action::RevokeAccess {
                id: granted.clone(),
                reason: None,
            },
        ),
        (
            &fixture.admin,
            Action::CreateToken(NewToken {
                user: Some(developer.user.id.clone()),
                ..Default::default()
            }),
        ),
        (&developer, Action::RevokeToken(developer_token.clone())),
        (
            &fixture.admin,
            Action::CreateUser(NewUser {
                name: Name::parse("name", "bob").unwrap(),
                roles: vec![Role::Admin],
                teams: Vec::new(),
            }),
        ),
        (
            &fixture.admin,
            Action::UpdateUser {
                id: developer.user.id.clone(),
                roles: Some(vec![Role::Admin]),
                teams: None,
            },
        ),
        (
            &fixture.admin,
            Action::CreateTeam {
                name: Name::parse("name", "other").unwrap(),
                quota: Quota::default(),
            },
        ),
        (
            &fixture.admin,
            Action::SetQuota {
                team: Name::parse("name", "payments").unwrap(),
                quota: Quota {
                    max_environments: Some(1),
                    ..Default::default()
                },
            },
        ),
        (&fixture.admin, Action::CreateProfile(profile("prod2"))),
    ];
    for (principal, action) in attempts {
        let name = action.name();
        assert!(action.is_privileged(), "{name}");
        let result = fixture.perform(principal, action).await;
        assert!(
            matches!(result, Err(Error::AuditUnavailable(_))),
            "{name}: {result:?}"
        );
    }
    // Reads go on; their records are lost (and logged).
    assert!(
        fixture
            .perform(&fixture.admin, Action::ListUsers)
            .await
            .is_ok()
    );
    refuse_audit(fixture.dir.path(), false).await;

    // Nothing changed.
    assert_eq!(fixture.state_of(&pending).await, AccessState::Pending);
    assert_eq!(fixture.state_of(&granted).await, AccessState::Approved);
    let tokens = fixture.store.list_tokens(&developer.user.id).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].revoked_at.is_none());
    assert_eq!(fixture.store.count_users().await.unwrap(), 3);
    let stored = fixture
        .store
        .get_user(&developer.user.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.roles, [Role::Developer]);
    let teams = fixture.store.list_teams().await.unwrap();
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0].quota, Quota::default());
    assert_eq!(fixture.store.list_profiles().await.unwrap().len(), 1);
    assert_eq!(
        fixture.store.list_audit(1000).await.unwrap().len(),
        events_before
    );

    // With the trail back, the same action goes through with its attempt and outcome.
    fixture
        .perform(&approver, Action::ApproveAccess(pending.clone()))
        .await
        .unwrap();
    let latest = fixture.store.list_audit(3).await.unwrap();
    let latest: Vec<(&str, &str)> = latest
        .iter()
        .map(|event| (event.action.as_str(), event.outcome.as_str()))
        .collect();
    assert_eq!(
        latest,
        [
            ("access.approve", "ok"),
            ("access.grant", "ok"),
            ("access.approve", "attempt")
        ]
    );
}

#[tokio::test]
async fn the_first_admin_is_not_made_without_its_record() {
    let (dir, store, engine) = engine().await;
    refuse_audit(dir.path(), true).await;
    assert!(matches!(
        engine.bootstrap_admin().await,
        Err(Error::AuditUnavailable(_))
    ));
    assert_eq!(store.count_users().await.unwrap(), 0);
    refuse_audit(dir.path(), false).await;
    assert!(engine.bootstrap_admin().await.unwrap().is_some());
}
