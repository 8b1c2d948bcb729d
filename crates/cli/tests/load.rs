//! Holding up under traffic: a principal over its rate gets 429 with a Retry-After it can
//! trust, others are untouched, revocations always get through, and every refusal is audited.

mod common;

use common::{Server, can_run_sandboxes};
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_over_its_rate_gets_429_and_others_do_not() {
    if !can_run_sandboxes("a_principal_over_its_rate_gets_429_and_others_do_not") {
        return;
    }
    // 5 a second with a burst of 5; admins (who revoke) 1000 a second.
    let server =
        Server::start_with(&["--rate-limit", "5/s:5", "--role-rate-limit", "admin=1000/s"]);
    let (noisy, noisy_id) = server
        .user_with("noisy", &["ci"], &[], &["read", "write"])
        .await;
    let (calm, _) = server
        .user_with("calm", &["developer"], &[], &["read", "write"])
        .await;

    let attempts: Vec<_> = (0..30)
        .map(|_| {
            let noisy = noisy.on(&server);
            tokio::spawn(
                async move { noisy.call(Method::GET, "/v1/environments", None, &[]).await },
            )
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    let mut longest_wait = 0;
    for attempt in attempts {
        let answer = attempt.await.unwrap();
        match answer.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let retry_after: u64 = answer.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry_after >= 1, "Retry-After {retry_after}");
                longest_wait = longest_wait.max(retry_after);
                assert!(
                    answer.body["type"]
                        .as_str()
                        .unwrap()
                        .ends_with("rate-limited"),
                    "{}",
                    answer.body
                );
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    // The burst passes; a few more may as time moves during the storm; most are refused.
    assert!((5..=10).contains(&ok), "{ok} allowed");
    assert_eq!(ok + limited, 30);

    // Someone else within their rate is not affected.
    let (status, _) = calm.get("/v1/environments").await;
    assert_eq!(status, StatusCode::OK);

    // After the advertised wait, the noisy principal is served again.
    tokio::time::sleep(std::time::Duration::from_secs(longest_wait)).await;
    let (status, _) = noisy.get("/v1/environments").await;
    assert_eq!(status, StatusCode::OK);

    // Revoking is never limited: exhaust the rate, then revoke the noisy principal's own
    // token with it.
    let (status, tokens) = noisy.get("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token_id = tokens["items"][0]["id"].as_str().unwrap().to_owned();
    loop {
        let (status, _) = noisy.get("/v1/environments").await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    let (status, body) = noisy.delete(&format!("/v1/tokens/{token_id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = noisy.get("/v1/environments").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Every 429 is in the audit trail, against the principal.
    let store = airlock_store::SqliteStore::open(&server.data_dir.join("airlock.db"))
        .await
        .unwrap();
    use airlock_core::ports::Store;
    let audited = store
        .list_audit(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.outcome == "rate_limited" && event.actor == noisy_id)
        .count();
    assert!(
        audited >= limited,
        "{audited} of {limited} refusals audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_far_above_capacity_ends_in_201_or_503_and_another_team_gets_through() {
    if !can_run_sandboxes(
        "a_burst_far_above_capacity_ends_in_201_or_503_and_another_team_gets_through",
    ) {
        return;
    }
    // Two creates at once, ten waiting at most, for at most 5 seconds.
    let server = Server::start_with(&[
        "--max-concurrent-creates",
        "2",
        "--create-queue-size",
        "10",
        "--create-queue-wait",
        "5",
    ]);
    let admin = server.admin();
    for team in ["release", "oncall"] {
        let (status, body) = admin
            .post("/v1/teams", serde_json::json!({ "name": team }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (burst, _) = server
        .user_with("release-bot", &["ci"], &["release"], &["read", "write"])
        .await;
    let (person, _) = server
        .user_with("sam", &["developer"], &["oncall"], &["read", "write"])
        .await;
    let body = serde_json::json!({ "resources": { "disk_mib": 64, "memory_mib": 64 } });
    let mut burst_calls = Vec::new();
    for _ in 0..60 {
        let burst = burst.on(&server);
        let body = body.clone();
        burst_calls.push(tokio::spawn(async move {
            burst
                .call(Method::POST, "/v1/environments", Some(body), &[])
                .await
        }));
    }
    // The other team arrives while the burst is queued.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut person_calls = Vec::new();
    for _ in 0..3 {
        let person = person.on(&server);
        let body = body.clone();
        person_calls.push(tokio::spawn(async move {
            person
                .call(Method::POST, "/v1/environments", Some(body), &[])
                .await
        }));
    }
    let mut created = 0;
    let mut shed = 0;
    for call in burst_calls {
        let answer = call.await.unwrap();
        match answer.status {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                shed += 1;
                assert!(
                    answer.headers.contains_key("retry-after"),
                    "{}",
                    answer.body
                );
                assert!(
                    answer.body["type"]
                        .as_str()
                        .unwrap()
                        .ends_with("overloaded"),
                    "{}",
                    answer.body
                );
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    for call in person_calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    }
    eprintln!("burst of 60: {created} created, {shed} refused with 503");
    assert!(
        shed > 0,
        "the burst was far above capacity: {created} created"
    );
    assert_eq!(created + shed, 60);
    // Exactly the acknowledged creates hold sandboxes: a refused create left nothing.
    assert_eq!(server.sandbox_dirs().len(), created + 3);
    let (status, list) = admin.get("/v1/environments?all=true&limit=200").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), created + 3);
    // Health is never shed.
    let (status, _) = server.anonymous().get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_refuses_beyond_its_capacity_and_creates_nothing() {
    if !can_run_sandboxes("the_host_refuses_beyond_its_capacity_and_creates_nothing") {
        return;
    }
    let server = Server::start_with(&["--capacity-environments", "3"]);
    let ann = server.user("ann").await;
    let bob = server.user("bob").await;
    let body = serde_json::json!({ "resources": { "disk_mib": 64 } });
    for api in [&ann, &bob, &ann] {
        api.create(body.clone()).await;
    }
    let answer = bob
        .call(Method::POST, "/v1/environments", Some(body.clone()), &[])
        .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    assert!(answer.headers.contains_key("retry-after"));
    assert!(
        answer.body["detail"].as_str().unwrap().contains("capacity"),
        "{}",
        answer.body
    );
    assert_eq!(server.sandbox_dirs().len(), 3);
    // Room again once one is gone.
    let (_, list) = ann.get("/v1/environments").await;
    let first = list["items"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = ann.delete(&format!("/v1/environments/{first}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    bob.create(body).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_serves_creates_of_its_shape_and_refills() {
    if !can_run_sandboxes("a_warm_pool_serves_creates_of_its_shape_and_refills") {
        return;
    }
    // Two of the default shape, one of a bigger shape with its own network link.
    let server = Server::start_with(&[
        "--warm-pool",
        "2",
        "--warm-pool-shape",
        "1:memory_mib=256,network=egress",
    ]);
    let wait_for_sandboxes = |count: usize| {
        let started = std::time::Instant::now();
        while server.sandbox_dirs().len() != count {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{:?}",
                server.sandbox_dirs()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_for_sandboxes(3);
    let warm = server.sandbox_dirs();
    let ann = server.user("ann").await;
    let id = ann.create(serde_json::json!({ "name": "quick" })).await;
    assert!(warm.contains(&id), "{id} is not one of {warm:?}");
    let (status, environment) = ann.get(&format!("/v1/environments/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(environment["name"], "quick");
    assert_eq!(ann.sh(&id, "echo warm").await["stdout"], "warm\n");
    // It is called by its new name, inside too.
    let names = ann.sh(&id, "hostname; echo $HOSTNAME").await;
    assert_eq!(names["stdout"], "quick\nquick\n", "{names}");
    // Another user cannot see it, and the pool makes another.
    let bob = server.user("bob").await;
    let (status, _) = bob.get(&format!("/v1/environments/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::task::block_in_place(|| wait_for_sandboxes(4));
    // The other shape comes from its own pool, with its link up.
    let warm = server.sandbox_dirs();
    let linked = ann
        .create(serde_json::json!({ "resources": { "memory_mib": 256 }, "network": "egress" }))
        .await;
    assert!(warm.contains(&linked), "{linked} is not one of {warm:?}");
    let link = ann.sh(&linked, "cat /sys/class/net/eth0/operstate").await;
    assert_eq!(link["stdout"], "up\n", "{link}");
    tokio::task::block_in_place(|| wait_for_sandboxes(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tokens_own_rate_limit_narrows_its_users_and_more_tokens_do_not_widen_it() {
    if !can_run_sandboxes("a_tokens_own_rate_limit_narrows_its_users") {
        return;
    }
    let server = Server::start_with(&["--rate-limit", "5/s:5"]);
    let (bot, _) = server
        .user_with("bot", &["ci"], &[], &["read", "write"])
        .await;
    async fn issue(server: &Server, bot: &common::Api, rate: &str) -> common::Api {
        let body = serde_json::json!({ "rate_limit": rate, "description": rate });
        let (status, issued) = bot.post("/v1/tokens", body).await;
        assert_eq!(status, StatusCode::CREATED, "{issued}");
        assert_eq!(issued["rate_limit"], rate, "{issued}");
        server.client(issued["token"].as_str().unwrap())
    }
    let slow = issue(&server, &bot, "2/s:2").await;
    let wide = issue(&server, &bot, "1000/s:1000").await;
    let (status, problem) = bot
        .post("/v1/tokens", serde_json::json!({ "rate_limit": "fast" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("rate_limit"),
        "{problem}"
    );
    // The calls above drew on the user's 5/s:5 too: let it fill again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let served = |api: common::Api, calls: usize| async move {
        let mut ok = 0;
        for _ in 0..calls {
            match api.get("/v1/environments").await.0 {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
        ok
    };
    // Its own 2 a second: the burst of 2 passes, then refusals (a third may pass if the
    // calls take over half a second).
    let ok = served(slow, 6).await;
    assert!((2..=3).contains(&ok), "{ok} of 6 allowed at 2/s:2");
    // A token claiming 1000 a second still counts against its user's 5/s:5, which the slow
    // token's calls have already drawn on.
    let ok = served(wide, 12).await;
    assert!(
        (1..=6).contains(&ok),
        "{ok} of 12 allowed under the user's 5/s:5"
    );

    // The token list shows each token's own limit (once the user's rate allows a call).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, tokens) = bot.get("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let mut limits: Vec<_> = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|token| token["rate_limit"].as_str())
        .collect();
    limits.sort();
    assert_eq!(limits, ["1000/s:1000", "2/s:2"]);
}
