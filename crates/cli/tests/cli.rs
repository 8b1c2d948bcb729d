//! The client commands of the `airlock` binary against a real server, as a user types them.

mod common;

use std::process::{Command, Output};

use common::{AIRLOCK, Server, can_run_sandboxes};
use serde_json::Value;

fn airlock(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(AIRLOCK)
        .args(args)
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", token)
        .env("AIRLOCK_CONFIG", "/nonexistent/airlock-config.json")
        .output()
        .expect("run airlock")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn env_commands_create_list_exec_and_remove() {
    if !can_run_sandboxes("env_commands") {
        return;
    }
    let server = Server::start();
    let token = server.admin_token.clone();

    let created = airlock(
        &server,
        &token,
        &[
            "env", "create", "--name", "cli-test", "--memory", "128", "--json",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let environment: Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(environment["state"], "running");
    assert_eq!(environment["resources"]["memory_mib"], 128);

    let table = airlock(&server, &token, &["env", "list"]);
    let table = stdout(&table);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("cli-test") && table.contains("running"),
        "{table}"
    );

    // exec by name; stdout, stderr and the exit code pass through.
    let exec = airlock(
        &server,
        &token,
        &[
            "env",
            "exec",
            "cli-test",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
    );
    assert_eq!(exec.status.code(), Some(7), "{exec:?}");
    assert_eq!(stdout(&exec), "out\n");
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "err\n");

    let stopped = airlock(&server, &token, &["env", "stop", "cli-test", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&stopped.stdout).unwrap()["state"],
        "stopped"
    );
    let refused = airlock(&server, &token, &["env", "exec", "cli-test", "--", "true"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not running"),
        "{refused:?}"
    );

    let removed = airlock(&server, &token, &["env", "rm", "cli-test"]);
    assert!(removed.status.success(), "{removed:?}");
    let missing = airlock(&server, &token, &["env", "get", "cli-test"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no environment named"),
        "{missing:?}"
    );
}

#[test]
fn a_bad_token_is_a_clear_error() {
    if !can_run_sandboxes("bad_token") {
        return;
    }
    let server = Server::start();
    let output = airlock(&server, "alk_wrong", &["env", "list"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Authentication required (401)"),
        "{output:?}"
    );
}
