//! Temporary production access end to end, through the HTTP API, with real sandboxes and real
//! short durations: request, approve, open an environment, see the secret inside, let the
//! grant expire (or revoke it) and see the environment, its sessions and its secret gone; a
//! grant that ended while the server was down is revoked before the first request; every
//! refusal is the status a user expects.

mod common;

use std::time::{Duration, Instant};

use common::{Api, Server, can_run_sandboxes};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-db-password";

struct Cast {
    server: Server,
    developer: Api,
    approver: Api,
    _secret_dir: tempfile::TempDir,
}

/// A server with a `prod` profile of `max_seconds` (its secret a file on the server), a
/// developer who may request, and an approver.
async fn cast(max_seconds: u64) -> Cast {
    let server = Server::start();
    let secret_dir = tempfile::tempdir().unwrap();
    let secret_path = secret_dir.path().join("db-password");
    std::fs::write(&secret_path, SECRET).unwrap();
    let (status, profile) = server
        .admin()
        .post(
            "/v1/access-profiles",
            json!({
                "name": "prod",
                "description": "production database",
                "max_duration_seconds": max_seconds,
                "approvals_required": 1,
                "secrets": [
                    { "env": "DB_PASSWORD", "file": "/run/secrets/db", "from_file": secret_path },
                ],
                "approvers": ["role:approver"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{profile}");
    // Where the secret appears is shown; its value and where the server keeps it are not.
    let text = profile.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(secret_path.to_str().unwrap()),
        "{text}"
    );
    let (developer, _) = server
        .user_with(
            "dev",
            &["developer"],
            &[],
            &["read", "write", "access:request"],
        )
        .await;
    let (approver, _) = server
        .user_with("alice", &["approver"], &[], &["read", "access:approve"])
        .await;
    Cast {
        server,
        developer,
        approver,
        _secret_dir: secret_dir,
    }
}

async fn request(developer: &Api, seconds: u64) -> String {
    let (status, request) = developer
        .post(
            "/v1/access-requests",
            json!({ "profile": "prod", "reason": "INC-7: checkout failing", "duration_seconds": seconds }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{request}");
    assert_eq!(request["state"], "pending");
    request["id"].as_str().unwrap().to_owned()
}

async fn approve(approver: &Api, id: &str) -> Value {
    let (status, request) = approver
        .post(&format!("/v1/access-requests/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{request}");
    assert_eq!(request["state"], "approved");
    request
}

async fn open(developer: &Api, grant: &str) -> String {
    developer
        .create(json!({ "access_request": grant, "resources": { "disk_mib": 64 } }))
        .await
}

/// Polls until the environment is gone (404), for at most `limit`.
async fn await_gone(api: &Api, id: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _) = api.get(&format!("/v1/environments/{id}")).await;
        if status == StatusCode::NOT_FOUND {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "environment {id} still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_gives_its_secret_for_its_time_then_everything_is_gone() {
    if !can_run_sandboxes("a_grant_gives_its_secret_for_its_time_then_everything_is_gone") {
        return;
    }
    // A profile of 4 seconds: the developer asks for an hour and gets 4 seconds.
    let cast = cast(4).await;
    let grant = request(&cast.developer, 3600).await;
    // Before approval nobody can open an environment with it.
    let (status, body) = cast
        .developer
        .post("/v1/environments", json!({ "access_request": grant }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let approved = approve(&cast.approver, &grant).await;
    assert_eq!(approved["duration_seconds"], 4);

    let environment = open(&cast.developer, &grant).await;
    let inside = cast
        .developer
        .sh(
            &environment,
            "cat /run/secrets/db; echo; echo \"$DB_PASSWORD\"; stat -c %a /run/secrets/db",
        )
        .await;
    assert_eq!(inside["exit_code"], 0, "{inside}");
    assert_eq!(
        inside["stdout"].as_str().unwrap(),
        format!("{SECRET}\n{SECRET}\n400\n")
    );
    // Someone else cannot open an environment with this grant, and does not learn it exists.
    let other = cast.server.user("bob").await;
    let (status, _) = other
        .post("/v1/environments", json!({ "access_request": grant }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A session still running when the grant ends is killed with the environment.
    let session = {
        let developer = cast.developer.on(&cast.server);
        let environment = environment.clone();
        tokio::spawn(async move {
            developer
                .call(
                    Method::POST,
                    &format!("/v1/environments/{environment}/exec"),
                    Some(json!({ "command": ["sleep", "600"], "timeout_seconds": 600 })),
                    &[],
                )
                .await
        })
    };
    let sandbox_dir = cast
        .server
        .data_dir
        .join("runtime/sandboxes")
        .join(&environment);
    assert!(sandbox_dir.exists());

    await_gone(&cast.developer, &environment, Duration::from_secs(20)).await;
    let expires_at: chrono::DateTime<chrono::Utc> =
        approved["expires_at"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "environment gone {} ms after the grant's end",
        (chrono::Utc::now() - expires_at).num_milliseconds()
    );
    let ended = tokio::time::timeout(Duration::from_secs(20), session)
        .await
        .expect("the session ended with the grant")
        .unwrap();
    // Killed with its sandbox: SIGKILL's exit code, or an error if it had not started yet.
    assert!(
        ended.status != StatusCode::OK || ended.body["exit_code"] == 137,
        "{}",
        ended.body
    );
    assert!(
        !sandbox_dir.exists(),
        "the sandbox and its secret file are gone"
    );
    assert!(
        cast.server.mounts().is_empty(),
        "{:?}",
        cast.server.mounts()
    );

    let (status, history) = cast
        .developer
        .get(&format!("/v1/access-requests/{grant}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["state"], "expired", "{history}");
    assert_eq!(history["ended_by"], "system");
    assert_eq!(history["reason"], "INC-7: checkout failing");
    assert_eq!(history["approvals"].as_array().unwrap().len(), 1);
    // The expired grant opens nothing any more.
    let (status, _) = cast
        .developer
        .post("/v1/environments", json!({ "access_request": grant }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_ends_access_at_once_and_only_the_right_people_decide() {
    if !can_run_sandboxes("revoking_ends_access_at_once_and_only_the_right_people_decide") {
        return;
    }
    let cast = cast(3600).await;
    let grant = request(&cast.developer, 3600).await;

    // Self-approval is refused; a stranger does not see the request; a bad id is 400.
    let (status, body) = cast
        .developer
        .post(&format!("/v1/access-requests/{grant}/approve"), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let stranger = cast.server.user("eve").await;
    let (status, _) = stranger.get(&format!("/v1/access-requests/{grant}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = cast
        .approver
        .post("/v1/access-requests/not-an-id/approve", json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The developer's token was not given access:approve; the approver's not write.
    let (status, _) = cast.approver.post("/v1/environments", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    approve(&cast.approver, &grant).await;
    let environment = open(&cast.developer, &grant).await;
    let answer = cast
        .developer
        .call(
            Method::POST,
            &format!("/v1/access-requests/{grant}/revoke"),
            Some(json!({ "reason": "done with the incident" })),
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["state"], "revoked");
    // Gone before the revoke answered.
    let (status, _) = cast
        .developer
        .get(&format!("/v1/environments/{environment}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(cast.server.sandbox_dirs().is_empty());

    // Refusals and decisions are all in the audit trail (read by the admin through the
    // store-backed log the server keeps; here: the request's history).
    let (status, list) = cast.approver.get("/v1/access-requests?all=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["state"], "revoked");
    let (status, _) = cast.developer.get("/v1/access-requests?all=true").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_that_ends_while_the_server_is_down_is_revoked_before_the_first_request() {
    if !can_run_sandboxes(
        "a_grant_that_ends_while_the_server_is_down_is_revoked_before_the_first_request",
    ) {
        return;
    }
    let mut cast = cast(3).await;
    let grant = request(&cast.developer, 3).await;
    approve(&cast.approver, &grant).await;
    let environment = open(&cast.developer, &grant).await;
    cast.server.kill();
    std::thread::sleep(Duration::from_secs(4));
    cast.server.restart();
    // The very first request after start already finds it gone.
    let developer = cast.developer.on(&cast.server);
    let (status, _) = developer
        .get(&format!("/v1/environments/{environment}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, history) = developer.get(&format!("/v1/access-requests/{grant}")).await;
    assert_eq!(history["state"], "expired");
    assert!(cast.server.sandbox_dirs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn team_quotas_hold_under_concurrent_creates_over_http() {
    if !can_run_sandboxes("team_quotas_hold_under_concurrent_creates_over_http") {
        return;
    }
    let server = Server::start();
    let (status, team) = server
        .admin()
        .post(
            "/v1/teams",
            json!({ "name": "payments", "quota": { "max_environments": 3 } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let (developer, _) = server
        .user_with("dev", &["developer"], &["payments"], &["read", "write"])
        .await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let developer = developer.on(&server);
            tokio::spawn(async move {
                developer
                    .post(
                        "/v1/environments",
                        json!({ "resources": { "disk_mib": 64 } }),
                    )
                    .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        if status == StatusCode::FORBIDDEN {
            assert!(
                body["type"].as_str().unwrap().ends_with("quota-exceeded"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    let created = statuses
        .iter()
        .filter(|status| **status == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|status| **status == StatusCode::FORBIDDEN)
        .count();
    assert_eq!((created, refused), (3, 5), "{statuses:?}");
    assert_eq!(server.sandbox_dirs().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_policies_extend_and_restrict_and_a_bad_file_stops_the_server() {
    if !can_run_sandboxes("operator_policies_extend_and_restrict_and_a_bad_file_stops_the_server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.cedar");
    // Viewers may create environments here; nobody, admins included, may exec in them.
    std::fs::write(
        &policy,
        r#"
        @id("viewers-create")
        permit (principal in Airlock::Role::"viewer",
                action in [Airlock::Action::"environment.create", Airlock::Action::"environment.delete"],
                resource);
        @id("no-exec")
        forbid (principal, action == Airlock::Action::"environment.exec", resource);
        "#,
    )
    .unwrap();
    let server = Server::start_with(&["--policy", policy.to_str().unwrap()]);
    let (viewer, _) = server
        .user_with("val", &["viewer"], &[], &["read", "write"])
        .await;
    let environment = viewer
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    for api in [&viewer, &server.admin()] {
        let (status, problem) = api
            .post(
                &format!("/v1/environments/{environment}/exec"),
                json!({ "command": ["true"] }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    }
    let (status, _) = viewer
        .delete(&format!("/v1/environments/{environment}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    drop(server);

    // A policy that does not fit the schema stops the server, saying where and why.
    std::fs::write(
        &policy,
        "permit (principal, action == Airlock::Action::\"environment.exec\", resource)\nwhen { resource.colour == \"red\" };\n",
    )
    .unwrap();
    let output = std::process::Command::new(common::AIRLOCK)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("colour") && stderr.contains("line 2"),
        "{stderr}"
    );
}
