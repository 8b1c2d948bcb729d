//! The life of environments around the server's own: a graceful stop lets requests in flight
//! finish (or cancels them after the grace period) and leaves every environment running.

mod common;

use std::time::Duration;

use common::{Server, can_run_sandboxes};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight_and_leaves_environments_running() {
    if !can_run_sandboxes("sigterm_finishes_requests_in_flight_and_leaves_environments_running") {
        return;
    }
    let mut server = Server::start_with(&["--shutdown-grace", "30"]);
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let in_flight = {
        let user = user.on(&server);
        let path = format!("/v1/environments/{environment}/exec");
        tokio::spawn(async move {
            user.try_call(
                Method::POST,
                &path,
                Some(json!({ "command": ["sh", "-c", "sleep 2; echo finished"] })),
                &[],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(60)));
    assert!(status.success(), "{status}");
    let answer = in_flight
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["stdout"], "finished\n");

    server.restart();
    let user = user.on(&server);
    let result = user.sh(&environment, "echo still here").await;
    assert_eq!(result["stdout"], "still here\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_grace_period_requests_are_cancelled_and_environments_survive() {
    if !can_run_sandboxes("past_the_grace_period_requests_are_cancelled_and_environments_survive") {
        return;
    }
    let mut server = Server::start_with(&["--shutdown-grace", "1"]);
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let in_flight = {
        let user = user.on(&server);
        let path = format!("/v1/environments/{environment}/exec");
        tokio::spawn(async move {
            user.try_call(
                Method::POST,
                &path,
                Some(json!({ "command": ["sleep", "600"], "timeout_seconds": 600 })),
                &[],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(60)));
    assert!(status.success(), "{status}");
    assert!(
        in_flight.await.unwrap().is_none(),
        "cancelled, not answered"
    );

    server.restart();
    let user = user.on(&server);
    let (status, body) = user.get(&format!("/v1/environments/{environment}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "running");
    let result = user.sh(&environment, "echo still here").await;
    assert_eq!(result["stdout"], "still here\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn for_real_an_idle_environment_stops_and_an_expired_one_is_deleted() {
    if !can_run_sandboxes("for_real_an_idle_environment_stops_and_an_expired_one_is_deleted") {
        return;
    }
    let server = Server::start_with(&["--min-lifetime", "1"]);
    let user = server.user("ann").await;
    let idle = user
        .create(json!({ "idle_timeout_seconds": 2, "resources": { "disk_mib": 64 } }))
        .await;
    let expiring = user
        .create(json!({ "ttl_seconds": 4, "resources": { "disk_mib": 64 } }))
        .await;
    let wait_for = |id: String, wanted: StatusCode, state: Option<&'static str>| {
        let user = user.on(&server);
        async move {
            let started = std::time::Instant::now();
            loop {
                let (status, body) = user.get(&format!("/v1/environments/{id}")).await;
                if status == wanted && state.is_none_or(|state| body["state"] == state) {
                    return started.elapsed();
                }
                assert!(started.elapsed() < Duration::from_secs(30), "{id}: {body}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // A read is activity only once a minute, so polling does not keep it awake.
    wait_for(idle.clone(), StatusCode::OK, Some("stopped")).await;
    wait_for(expiring.clone(), StatusCode::NOT_FOUND, None).await;
    assert_eq!(
        server.sandbox_dirs(),
        vec![idle.clone()],
        "the stopped one keeps its files"
    );
    let (status, body) = user
        .post(&format!("/v1/environments/{idle}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
