//! The access commands of the `airlock` binary against a real server, the whole flow as people
//! type it: an admin sets up a team, users, tokens and a profile; a developer asks; an
//! approver approves; the developer opens an environment under the grant and ends it.

mod common;

use std::process::{Command, Output};

use common::{AIRLOCK, Server, can_run_sandboxes};
use serde_json::Value;

/// Runs `airlock <args>` as the holder of `token`, with no config file in the way.
fn airlock(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(AIRLOCK)
        .args(args)
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", token)
        .env("AIRLOCK_CONFIG", "/nonexistent/airlock-config.json")
        .output()
        .expect("run airlock")
}

/// Runs a command that must succeed with `--json` and returns what it printed.
fn airlock_json(server: &Server, token: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = airlock(server, token, &args);
    assert!(output.status.success(), "airlock {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("airlock {args:?} printed no JSON ({error}): {output:?}"))
}

/// Runs a command that must succeed and returns its table or line.
fn airlock_text(server: &Server, token: &str, args: &[&str]) -> String {
    let output = airlock(server, token, args);
    assert!(output.status.success(), "airlock {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"))
        .to_owned()
}

/// Creates a user and issues a token of theirs with `scopes`; returns (user id, token).
fn user_with_token(
    server: &Server,
    admin: &str,
    create: &[&str],
    scopes: &str,
) -> (String, String) {
    let user = airlock_json(server, admin, create);
    let id = text(&user["id"]);
    let issued = airlock_json(
        server,
        admin,
        &["token", "create", "--user", &id, "--scopes", scopes],
    );
    (id, text(&issued["token"]))
}

#[test]
fn access_is_requested_approved_used_and_revoked_through_the_cli() {
    if !can_run_sandboxes("access_flow") {
        return;
    }
    let server = Server::start();
    let admin = server.admin_token.clone();

    // The admin sets up a team, a developer in it, an approver and a profile.
    let team = airlock_json(
        &server,
        &admin,
        &["team", "create", "payments", "--max-environments", "3"],
    );
    assert_eq!(team["quota"]["max_environments"], 3);
    let teams = airlock_text(&server, &admin, &["team", "list"]);
    assert!(teams.starts_with("NAME"), "{teams}");
    assert!(
        teams.contains("payments") && teams.contains("unlimited"),
        "{teams}"
    );

    let (dev_id, dev) = user_with_token(
        &server,
        &admin,
        &[
            "user",
            "create",
            "dev",
            "--role",
            "developer",
            "--team",
            "payments",
        ],
        "read,write,access:request",
    );
    let (approver_id, approver) = user_with_token(
        &server,
        &admin,
        &["user", "create", "ana", "--role", "approver"],
        "read,access:approve",
    );
    let users = airlock_text(&server, &admin, &["user", "list"]);
    assert!(
        users.contains(&dev_id) && users.contains(&approver_id) && users.contains("payments"),
        "{users}"
    );

    let profile = airlock_json(
        &server,
        &admin,
        &[
            "access",
            "profile",
            "create",
            "--name",
            "prod-db",
            "--max-duration",
            "1h",
            "--approvals",
            "1",
            "--requester",
            "role:developer",
            "--approver",
            "role:approver",
            "--description",
            "read replica of the production database",
        ],
    );
    assert_eq!(profile["max_duration_seconds"], 3600);
    assert_eq!(profile["approvals_required"], 1);
    let profiles = airlock_text(&server, &dev, &["access", "profile", "list"]);
    assert!(
        profiles.contains("prod-db") && profiles.contains("1h"),
        "{profiles}"
    );

    // The developer asks; the human-readable answer names the request and its state.
    let asked = airlock_text(
        &server,
        &dev,
        &[
            "access",
            "request",
            "prod-db",
            "--reason",
            "INC-1234: check the stuck payment batch",
            "--duration",
            "30m",
        ],
    );
    let request_id = asked.split_whitespace().next().unwrap().to_owned();
    assert!(request_id.starts_with("acr_"), "{asked}");
    assert!(asked.contains("pending"), "{asked}");

    // Asking for a bad duration is refused by the CLI before anything is sent.
    let bad = airlock(
        &server,
        &dev,
        &[
            "access",
            "request",
            "prod-db",
            "--reason",
            "x",
            "--duration",
            "soon",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a duration"),
        "{bad:?}"
    );

    // The developer may not approve their own request, and is told why in one line: their
    // token is not scoped for deciding requests.
    let refused = airlock(&server, &dev, &["access", "approve", &request_id]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refusal.starts_with("error: ") && refusal.contains("(403)"),
        "{refusal}"
    );
    assert!(refusal.contains("`access:approve`"), "{refusal}");
    assert_eq!(refusal.lines().count(), 1, "{refusal}");

    // The approver sees it among everyone's pending requests and approves it.
    let pending = airlock_json(
        &server,
        &approver,
        &["access", "list", "--all", "--state", "pending"],
    );
    let pending = pending.as_array().unwrap();
    assert!(
        pending
            .iter()
            .any(|request| request["id"] == request_id.as_str()),
        "{pending:?}"
    );
    let table = airlock_text(&server, &approver, &["access", "list", "--all"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(&request_id) && table.contains("INC-1234") && table.contains("decide by"),
        "{table}"
    );
    let approved = airlock_text(&server, &approver, &["access", "approve", &request_id]);
    assert!(
        approved.contains(&request_id) && approved.contains("approved"),
        "{approved}"
    );
    let granted = airlock_json(&server, &dev, &["access", "get", &request_id]);
    assert_eq!(granted["state"], "approved");
    assert_eq!(granted["approvals"][0]["approver"], approver_id.as_str());

    // The developer opens an environment under the grant, then ends the grant.
    let environment = airlock_json(
        &server,
        &dev,
        &[
            "env",
            "create",
            "--name",
            "incident",
            "--grant",
            &request_id,
        ],
    );
    assert_eq!(environment["state"], "running");
    assert_eq!(environment["access_request"], request_id.as_str());
    assert_eq!(environment["team"], "payments");

    let revoked = airlock_text(
        &server,
        &dev,
        &["access", "revoke", &request_id, "--reason", "done"],
    );
    assert!(revoked.contains("revoked"), "{revoked}");
    let shown = airlock_text(&server, &dev, &["access", "get", &request_id]);
    assert!(shown.contains("revoked"), "{shown}");
    assert!(
        shown.contains("INC-1234: check the stuck payment batch"),
        "{shown}"
    );
    let ended = airlock_json(&server, &dev, &["access", "get", &request_id]);
    assert_eq!(ended["state"], "revoked");
    assert_eq!(ended["ended_by"], dev_id.as_str());
    assert_eq!(ended["end_reason"], "done");

    // The environment went with the grant.
    let environments = airlock_json(&server, &dev, &["env", "list"]);
    assert!(
        environments
            .as_array()
            .unwrap()
            .iter()
            .all(|listed| listed["id"] != environment["id"] || listed["state"] == "deleted"),
        "{environments}"
    );

    // The admin sees the developer's tokens, with their last use.
    let tokens = airlock_text(&server, &admin, &["token", "list", "--user", &dev_id]);
    assert!(
        tokens.starts_with("ID") && tokens.contains("LAST USED"),
        "{tokens}"
    );
    assert!(tokens.contains("access:request"), "{tokens}");
}

#[test]
fn team_quotas_and_user_teams_are_changed_through_the_cli() {
    if !can_run_sandboxes("team_commands") {
        return;
    }
    let server = Server::start();
    let admin = server.admin_token.clone();

    airlock_json(&server, &admin, &["team", "create", "web"]);
    airlock_json(&server, &admin, &["team", "create", "data"]);
    let team = airlock_json(
        &server,
        &admin,
        &[
            "team",
            "quota",
            "web",
            "--max-memory",
            "2048",
            "--max-cpus",
            "2.5",
        ],
    );
    assert_eq!(team["quota"]["max_memory_mib"], 2048);
    assert_eq!(team["quota"]["max_cpus"], 2.5);
    assert!(team["quota"].get("max_environments").is_none(), "{team}");

    let user = airlock_json(&server, &admin, &["user", "create", "bo", "--team", "web"]);
    let id = text(&user["id"]);
    let updated = airlock_json(
        &server,
        &admin,
        &["user", "update", &id, "--team", "web", "--team", "data"],
    );
    let mut teams: Vec<String> = updated["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    teams.sort();
    assert_eq!(teams, ["data", "web"], "{updated}");
    let nothing = airlock(&server, &admin, &["user", "update", &id]);
    assert!(!nothing.status.success());
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("nothing to change"),
        "{nothing:?}"
    );
}
