//! The audit trail as an operator relies on it, end to end through the real server and the
//! real `airlock audit verify`: every refusal (401, 403, 404, 400, 429) lands in the chain;
//! each kind of tampering with a stopped server's database or checkpoints — a deleted row, an
//! edited field, two rows swapped, a forged row, a cut-off tail, a chain rewritten with fresh
//! hashes, a corrupt signature, checkpoints signed by another key, checkpoints deleted — makes
//! verify exit non-zero naming the first bad index, while the untouched copy verifies; a
//! SIGKILL in the middle of a burst leaves a chain that verifies and holds every answered
//! request; and a privileged action whose record cannot be written fails with 503 and
//! changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::audit::{ChainHead, Checkpoint, chain_hash, leaf_hash, parse_checkpoints};
use airlock_core::model::AuditEvent;
use airlock_core::ports::{AuditQuery, Store};
use airlock_store::SqliteStore;
use common::{AIRLOCK, Api, Server, can_run_sandboxes};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

/// Runs `airlock audit verify` on a data directory: its exit code and what it printed.
fn verify(data_dir: &Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(AIRLOCK)
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("run airlock audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// Verify must fail naming `index`.
fn assert_fails_at(case: &str, data_dir: &Path, index: u64, extra: &[&str]) {
    let (code, text) = verify(data_dir, extra);
    assert_ne!(code, 0, "{case}: verify passed:\n{text}");
    assert!(
        text.contains(&format!("first bad index {index}:")),
        "{case}: expected first bad index {index}:\n{text}"
    );
}

/// A copy of the database and the checkpoints of a stopped server's data directory.
fn copy_data_dir(from: &Path, name: &str) -> PathBuf {
    let to = from.parent().unwrap().join(name);
    std::fs::create_dir_all(to.join("audit")).unwrap();
    for file in ["airlock.db", "airlock.db-wal", "airlock.db-shm"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
    for entry in std::fs::read_dir(from.join("audit")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("audit").join(entry.file_name())).unwrap();
    }
    to
}

/// Runs SQL on a data directory's database, as an intruder with the file would.
async fn tamper(data_dir: &Path, sql: &str) {
    let mut connection = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        data_dir.join("airlock.db").display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql(sql).execute(&mut connection).await.unwrap();
    connection.close().await.unwrap();
}

/// The stored chain of a data directory, read as verify does.
async fn stored_chain(data_dir: &Path) -> Vec<airlock_core::audit::ChainedEvent> {
    let store = SqliteStore::open_read_only(&data_dir.join("airlock.db"))
        .await
        .unwrap();
    store
        .query_audit(&AuditQuery {
            limit: u32::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
}

fn checkpoint_indexes(data_dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(data_dir.join("audit/checkpoints.jsonl")).unwrap();
    let (checkpoints, _) = parse_checkpoints(&text).unwrap();
    checkpoints
        .iter()
        .map(|checkpoint| checkpoint.index)
        .collect()
}

/// Every event of the trail through `GET /v1/audit`, page by page.
async fn read_trail(api: &Api, filters: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = api
            .get(&format!("/v1/audit?limit=200{filters}{cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        events.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return events,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_is_in_the_chain_and_each_kind_of_tampering_is_detected() {
    // The server needs root for its runtime, even without sandboxes.
    if !can_run_sandboxes("every_refusal_is_in_the_chain_and_each_kind_of_tampering_is_detected") {
        return;
    }
    // A tight rate for everyone but the admin, so a 429 is easy to provoke.
    let mut server =
        Server::start_with(&["--rate-limit", "1/m:4", "--role-rate-limit", "admin=1000/s"]);
    let admin = server.admin();
    let (developer, developer_id) = server
        .user_with("dev", &["developer"], &[], &["read", "write"])
        .await;
    let (auditor, _) = server
        .user_with("audrey", &["auditor"], &[], &["read"])
        .await;

    // Refusals of every kind.
    let (status, _) = server.anonymous().get("/v1/environments").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.client("alk_forged").get("/v1/whoami").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = developer.get("/v1/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = developer.get("/v1/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = developer
        .get("/v1/environments/env_01arz3ndektsv4rrffq69g5fav")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = developer.get("/v1/no-such-route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = developer
        .post("/v1/environments", json!({ "owner": "someone-else" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = developer.get("/v1/tokens?nonsense=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut limited = false;
    for _ in 0..10 {
        let (status, _) = developer.get("/v1/whoami").await;
        limited |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "never rate limited");

    // Each is in the trail, with its source, for the auditor to read.
    let trail = read_trail(&auditor, "").await;
    let outcomes: Vec<(&str, &str)> = trail
        .iter()
        .map(|event| {
            (
                event["actor"].as_str().unwrap(),
                event["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for (actor, outcome) in [
        ("anonymous", "unauthenticated"),
        (developer_id.as_str(), "forbidden"),
        (developer_id.as_str(), "not_found"),
        ("anonymous", "not_found"),
        (developer_id.as_str(), "invalid"),
        (developer_id.as_str(), "rate_limited"),
    ] {
        assert!(
            outcomes.contains(&(actor, outcome)),
            "no {outcome} of {actor} in {outcomes:?}"
        );
    }
    assert!(
        trail
            .iter()
            .all(|event| event["source"] == "127.0.0.1" || event["actor"] == "system"),
        "{trail:?}"
    );
    // Indexes run from 1 without a gap; filters narrow by actor and action.
    let indexes: Vec<u64> = trail
        .iter()
        .map(|event| event["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (1..=indexes.len() as u64).collect::<Vec<_>>());
    let developer_trail = read_trail(&auditor, &format!("&actor={developer_id}")).await;
    assert!(!developer_trail.is_empty());
    assert!(
        developer_trail
            .iter()
            .all(|event| event["actor"] == developer_id.as_str())
    );
    let created = read_trail(&admin, "&action=user.create").await;
    assert_eq!(
        created
            .iter()
            .filter(|event| event["outcome"] == "ok")
            .count(),
        2
    );
    // The export follows every page: as many lines as the trail has events by then.
    let export = Command::new(AIRLOCK)
        .args([
            "audit",
            "export",
            "--url",
            &server.url,
            "--token",
            &server.admin_token,
        ])
        .output()
        .unwrap();
    assert!(export.status.success());
    let lines: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(lines.len() > trail.len(), "{} lines", lines.len());
    assert_eq!(lines[..trail.len()], trail[..]);

    // Verified while the server runs, and after a graceful stop signed to the last event.
    let (code, text) = verify(&server.data_dir, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(server.terminate(Duration::from_secs(30)).success());
    let data_dir = server.data_dir.clone();
    let chain = stored_chain(&data_dir).await;
    let last = chain.len() as u64;
    assert!(last > 20, "{last} events");
    assert_eq!(checkpoint_indexes(&data_dir).last(), Some(&last));
    let (code, text) = verify(&data_dir, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("{last} events")), "{text}");

    // Each kind of tampering, on a copy of its own.
    let case = copy_data_dir(&data_dir, "deleted");
    tamper(&case, "DELETE FROM audit_events WHERE chain_index = 5").await;
    assert_fails_at("a deleted row", &case, 5, &[]);

    let case = copy_data_dir(&data_dir, "edited");
    tamper(
        &case,
        "UPDATE audit_events SET outcome = 'ok' WHERE chain_index = 6",
    )
    .await;
    assert_fails_at("an edited field", &case, 6, &[]);

    let case = copy_data_dir(&data_dir, "swapped");
    tamper(
        &case,
        "UPDATE audit_events SET chain_index = -1 WHERE chain_index = 7;
         UPDATE audit_events SET chain_index = 7 WHERE chain_index = 9;
         UPDATE audit_events SET chain_index = 9 WHERE chain_index = -1;",
    )
    .await;
    assert_fails_at("two rows swapped", &case, 7, &[]);

    // A forged row at 10 with a hash that follows from 9; the rest renumbered.
    let case = copy_data_dir(&data_dir, "forged");
    let forged = AuditEvent {
        actor: "usr_nobody".into(),
        action: "access.approve".into(),
        target: None,
        source: None,
        detail: None,
        ..chain[9].event.clone()
    };
    let hash = chain_hash(&chain[8].hash, &leaf_hash(10, &forged));
    tamper(
        &case,
        &format!(
            "UPDATE audit_events SET chain_index = -chain_index WHERE chain_index >= 10;
             UPDATE audit_events SET chain_index = 1 - chain_index WHERE chain_index <= -10;
             INSERT INTO audit_events (time, request_id, actor, action, target, outcome, source, detail, chain_index, hash)
             VALUES ({}, '{}', '{}', '{}', NULL, '{}', NULL, NULL, 10, X'{}');",
            forged.time.timestamp_micros(),
            forged.request_id,
            forged.actor,
            forged.action,
            forged.outcome,
            airlock_core::audit::to_hex(&hash),
        ),
    )
    .await;
    assert_eq!(stored_chain(&case).await.len() as u64, last + 1);
    // Caught at the next event, whose hash no longer follows; or, if a checkpoint was
    // signed at 10, there: everything after the checkpoint before it is suspect.
    let checkpoints = checkpoint_indexes(&data_dir);
    let expected = if checkpoints.contains(&10) {
        checkpoints
            .iter()
            .filter(|&&index| index < 10)
            .max()
            .unwrap_or(&0)
            + 1
    } else {
        11
    };
    assert_fails_at("a forged row", &case, expected, &[]);

    let case = copy_data_dir(&data_dir, "truncated");
    tamper(
        &case,
        &format!("DELETE FROM audit_events WHERE chain_index > {}", last - 3),
    )
    .await;
    assert_fails_at("a cut-off tail", &case, last - 2, &[]);

    // Event 12 edited and every hash after it recomputed: only a checkpoint can tell, so
    // everything after the last checkpoint before it is suspect.
    let case = copy_data_dir(&data_dir, "rewritten");
    let mut rewrite = String::new();
    let mut head = ChainHead {
        index: 11,
        hash: chain[10].hash,
    };
    for stored in &chain[11..] {
        let mut event = stored.event.clone();
        if stored.index == 12 {
            event.outcome = "ok".into();
            rewrite.push_str("UPDATE audit_events SET outcome = 'ok' WHERE chain_index = 12;\n");
        }
        head = head.next(&event);
        rewrite.push_str(&format!(
            "UPDATE audit_events SET hash = X'{}' WHERE chain_index = {};\n",
            airlock_core::audit::to_hex(&head.hash),
            stored.index
        ));
    }
    tamper(&case, &rewrite).await;
    let vouched = checkpoint_indexes(&data_dir)
        .into_iter()
        .filter(|&index| index < 12)
        .max()
        .unwrap_or(0);
    assert_fails_at("a rewritten chain", &case, vouched + 1, &[]);

    // The checkpoints: a corrupt signature, another key's, none at all.
    let checkpoints_text =
        std::fs::read_to_string(data_dir.join("audit/checkpoints.jsonl")).unwrap();
    let case = copy_data_dir(&data_dir, "bad-signature");
    let mut lines: Vec<String> = checkpoints_text.lines().map(str::to_owned).collect();
    let mut checkpoint = Checkpoint::parse_line(lines.last().unwrap()).unwrap();
    checkpoint.signature[0] ^= 0x40;
    *lines.last_mut().unwrap() = checkpoint.to_line();
    std::fs::write(
        case.join("audit/checkpoints.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
    assert_fails_at("a corrupt signature", &case, last, &[]);

    let case = copy_data_dir(&data_dir, "other-key");
    let other = airlock_core::audit::generate_key();
    let resigned: String = parse_checkpoints(&checkpoints_text)
        .unwrap()
        .0
        .iter()
        .map(|checkpoint| {
            let head = ChainHead {
                index: checkpoint.index,
                hash: checkpoint.hash,
            };
            Checkpoint::sign(&other, head, checkpoint.time).to_line() + "\n"
        })
        .collect();
    std::fs::write(case.join("audit/checkpoints.jsonl"), &resigned).unwrap();
    let first_checkpoint = checkpoint_indexes(&data_dir)[0];
    assert_fails_at("another key's checkpoints", &case, first_checkpoint, &[]);
    // With its public key swapped in too, only a copy of the real one kept elsewhere tells.
    let pinned = data_dir.parent().unwrap().join("pinned.pub");
    std::fs::copy(data_dir.join("audit/checkpoint.pub"), &pinned).unwrap();
    std::fs::write(
        case.join("audit/checkpoint.pub"),
        airlock_core::audit::to_hex(other.verifying_key().as_bytes()) + "\n",
    )
    .unwrap();
    assert_eq!(verify(&case, &[]).0, 0);
    assert_fails_at(
        "another key's checkpoints and public key",
        &case,
        first_checkpoint,
        &["--public-key", pinned.to_str().unwrap()],
    );

    let case = copy_data_dir(&data_dir, "no-checkpoints");
    std::fs::remove_file(case.join("audit/checkpoints.jsonl")).unwrap();
    assert_fails_at("deleted checkpoints", &case, 1, &[]);

    // A row slipped in without a place in the chain.
    let case = copy_data_dir(&data_dir, "unchained");
    tamper(
        &case,
        "INSERT INTO audit_events (time, request_id, actor, action, outcome)
         VALUES (0, 'x', 'usr_nobody', 'access.approve', 'ok')",
    )
    .await;
    assert_fails_at("an unchained row", &case, last + 1, &[]);

    // Not tampering: a checkpoint line a crash cut short.
    let case = copy_data_dir(&data_dir, "torn");
    let torn = format!("{checkpoints_text}{{\"index\":{},\"hash\":\"ab", last + 1);
    std::fs::write(case.join("audit/checkpoints.jsonl"), torn).unwrap();
    let (code, text) = verify(&case, &[]);
    assert_eq!(code, 0, "{text}");

    // And the original is still whole.
    let (code, text) = verify(&data_dir, &[]);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkill_in_the_middle_of_a_burst_leaves_a_chain_that_verifies_with_every_answered_request()
 {
    if !can_run_sandboxes("a_sigkill_in_the_middle_of_a_burst_leaves_a_chain_that_verifies") {
        return;
    }
    let mut server = Server::start();
    let admin = Arc::new(server.admin());
    let anonymous = Arc::new(server.anonymous());
    let burst: Vec<_> = (0..400)
        .map(|n| {
            let api = if n % 2 == 0 {
                admin.clone()
            } else {
                anonymous.clone()
            };
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(n as u64)).await;
                let answer = api.try_call(Method::GET, "/v1/users", None, &[]).await?;
                answer
                    .headers
                    .get("x-request-id")
                    .map(|id| id.to_str().unwrap().to_owned())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    server.kill();
    let mut answered = Vec::new();
    for request in burst {
        if let Some(id) = request.await.unwrap() {
            answered.push(id);
        }
    }
    assert!(!answered.is_empty(), "nothing was answered before the kill");
    assert!(answered.len() < 400, "the kill came after the burst");

    let (code, text) = verify(&server.data_dir, &[]);
    assert_eq!(code, 0, "{text}");
    // Every request answered before the kill is on record.
    let recorded: std::collections::HashSet<String> = stored_chain(&server.data_dir)
        .await
        .into_iter()
        .map(|stored| stored.event.request_id)
        .collect();
    let missing: Vec<_> = answered
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(missing.is_empty(), "answered but not recorded: {missing:?}");

    // The next start carries on the same chain, and its stop signs it to the end.
    server.restart();
    let (status, _) = admin.on(&server).get("/v1/whoami").await;
    assert_eq!(status, StatusCode::OK);
    assert!(server.terminate(Duration::from_secs(30)).success());
    let (code, text) = verify(&server.data_dir, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("not yet signed"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_action_whose_record_cannot_be_written_fails_with_503_and_changes_nothing() {
    if !can_run_sandboxes("a_privileged_action_whose_record_cannot_be_written_fails_with_503") {
        return;
    }
    let server = Server::start();
    let admin = server.admin();
    let (status, alice) = admin
        .post(
            "/v1/users",
            json!({ "name": "alice", "roles": ["developer"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    let alice_id = alice["id"].as_str().unwrap().to_owned();

    // The audit table refuses every insert from now on.
    tamper(
        &server.data_dir,
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events
         BEGIN SELECT RAISE(ABORT, 'the audit trail is unavailable'); END;",
    )
    .await;
    let attempts = [
        (
            Method::POST,
            "/v1/tokens".to_owned(),
            json!({ "user_id": alice_id }),
        ),
        (
            Method::POST,
            "/v1/users".to_owned(),
            json!({ "name": "bob" }),
        ),
        (
            Method::PATCH,
            format!("/v1/users/{alice_id}"),
            json!({ "roles": ["admin"] }),
        ),
        (
            Method::POST,
            "/v1/teams".to_owned(),
            json!({ "name": "payments" }),
        ),
    ];
    for (method, path, body) in attempts {
        let answer = admin.call(method.clone(), &path, Some(body), &[]).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["type"], "urn:airlock:problem:audit-unavailable",
            "{}",
            answer.body
        );
        assert!(answer.headers.contains_key("retry-after"));
    }
    // Reads go on (their records are lost and logged).
    let (status, users) = admin.get("/v1/users").await;
    assert_eq!(status, StatusCode::OK);

    // Nothing changed: no token for alice, no bob, alice not an admin, no team.
    tamper(&server.data_dir, "DROP TRIGGER refuse_audit").await;
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"bob"), "{names:?}");
    let alice_now = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|user| user["name"] == "alice")
        .unwrap();
    assert_eq!(alice_now["roles"], json!(["developer"]));
    let (status, tokens) = admin.get(&format!("/v1/tokens?user_id={alice_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tokens["items"], json!([]));
    let (_, teams) = admin.get("/v1/teams").await;
    assert_eq!(teams["items"], json!([]));
    // Once the trail is back, the same action goes through, on record.
    let (status, _) = admin
        .post("/v1/tokens", json!({ "user_id": alice_id }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let trail = read_trail(&admin, "&action=token.create").await;
    let outcomes: Vec<&str> = trail
        .iter()
        .map(|event| event["outcome"].as_str().unwrap())
        .collect();
    assert!(outcomes.ends_with(&["attempt", "ok"]), "{outcomes:?}");
    let (code, text) = verify(&server.data_dir, &[]);
    assert_eq!(code, 0, "{text}");
}
