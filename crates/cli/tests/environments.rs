//! Environments through the HTTP API of the real server, on real sandboxes: the lifecycle, the
//! other principal who must see nothing, bad input that must change nothing, idempotency, and
//! commands with their exit codes, input, timeouts and output caps.

mod common;

use common::{Server, can_run_sandboxes};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn assert_problem(status: StatusCode, body: &Value, expected: StatusCode, slug: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:airlock:problem:{slug}"),
        "{body}"
    );
    assert_eq!(body["status"], expected.as_u16(), "{body}");
}

#[tokio::test]
async fn health_and_openapi_need_no_credentials() {
    if !can_run_sandboxes("health_and_openapi_need_no_credentials") {
        return;
    }
    let server = Server::start();
    let anonymous = server.anonymous();
    let (status, health) = anonymous.get("/healthz").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, document) = anonymous.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(document["paths"]["/v1/environments/{id}/exec"]["post"].is_object());
}

#[tokio::test]
async fn lifecycle_create_exec_stop_start_delete_leaves_nothing_behind() {
    if !can_run_sandboxes("lifecycle") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;

    let answer = alice
        .call(Method::POST, "/v1/environments", Some(json!({ "name": "web", "resources": { "memory_mib": 128, "cpus": 0.5, "pids": 64 }, "ttl_seconds": 600 })), &[])
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let environment = answer.body;
    let id = environment["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("env_") && id.len() == 30, "{id}");
    assert_eq!(answer.headers["location"], format!("/v1/environments/{id}"));
    assert_eq!(environment["name"], "web");
    assert_eq!(environment["state"], "running");
    assert_eq!(
        environment["resources"],
        json!({ "memory_mib": 128, "cpus": 0.5, "pids": 64, "disk_mib": 4096 })
    );

    // The limits asked for are the limits in force.
    let limits = alice
        .sh(
            &id,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo none; hostname",
        )
        .await;
    assert_eq!(limits["exit_code"], 0, "{limits}");
    assert!(
        limits["stdout"].as_str().unwrap().ends_with("web\n"),
        "{limits}"
    );

    let (status, list) = alice.get("/v1/environments").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], id.as_str());

    // Stop keeps files; a stopped environment refuses commands; start brings it back.
    assert_eq!(
        alice.sh(&id, "echo kept > /root/note").await["exit_code"],
        0
    );
    let (status, stopped) = alice
        .post(&format!("/v1/environments/{id}/stop"), json!({}))
        .await;
    assert_eq!(
        (status, stopped["state"].as_str()),
        (StatusCode::OK, Some("stopped"))
    );
    assert!(
        server.mounts().is_empty(),
        "a stopped sandbox holds no mounts: {:?}",
        server.mounts()
    );
    let (status, body) = alice
        .post(
            &format!("/v1/environments/{id}/exec"),
            json!({ "command": ["true"] }),
        )
        .await;
    assert_problem(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, started) = alice
        .post(&format!("/v1/environments/{id}/start"), json!({}))
        .await;
    assert_eq!(
        (status, started["state"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    assert_eq!(alice.sh(&id, "cat /root/note").await["stdout"], "kept\n");

    // Delete: 204, then gone, and nothing of it remains on the host.
    let (status, _) = alice.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = alice.get(&format!("/v1/environments/{id}")).await;
    assert_problem(status, &body, StatusCode::NOT_FOUND, "not-found");
    let (status, _) = alice.delete(&format!("/v1/environments/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        server.sandbox_dirs().is_empty(),
        "{:?}",
        server.sandbox_dirs()
    );
    assert!(server.state_dirs().is_empty(), "{:?}", server.state_dirs());
    assert!(server.mounts().is_empty(), "{:?}", server.mounts());
    let cgroups = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("find /sys/fs/cgroup -name '{id}'"))
        .output()
        .unwrap();
    assert!(
        cgroups.stdout.is_empty(),
        "cgroups left: {}",
        String::from_utf8_lossy(&cgroups.stdout)
    );
    let processes = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("grep -l {id} /proc/[0-9]*/cgroup 2>/dev/null"))
        .output()
        .unwrap();
    assert!(
        processes.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&processes.stdout)
    );
}

#[tokio::test]
async fn another_principals_environment_is_exactly_like_a_missing_one() {
    if !can_run_sandboxes("another_principal") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let id = alice.create(json!({ "name": "private" })).await;
    let missing = "env_01aaaaaaaaaaaaaaaaaaaaaaaa";

    for (method, suffix, body) in [
        (Method::GET, "", None),
        (Method::DELETE, "", None),
        (Method::POST, "/stop", Some(json!({}))),
        (Method::POST, "/start", Some(json!({}))),
        (Method::POST, "/exec", Some(json!({ "command": ["true"] }))),
    ] {
        let theirs = bob
            .call(
                method.clone(),
                &format!("/v1/environments/{id}{suffix}"),
                body.clone(),
                &[],
            )
            .await;
        let absent = bob
            .call(
                method.clone(),
                &format!("/v1/environments/{missing}{suffix}"),
                body,
                &[],
            )
            .await;
        assert_eq!(
            theirs.status,
            StatusCode::NOT_FOUND,
            "{method} {suffix}: {}",
            theirs.body
        );
        assert_eq!(
            theirs.body, absent.body,
            "{method} {suffix} must not tell an existing environment from a missing one"
        );
    }
    let (_, list) = bob.get("/v1/environments").await;
    assert_eq!(list["items"], json!([]));
    let (_, list) = bob.get("/v1/environments?all=true").await;
    assert_eq!(
        list["type"], "urn:airlock:problem:forbidden",
        "only admins list everyone's"
    );
    // Bob may reuse the name: names are per owner.
    bob.create(json!({ "name": "private" })).await;

    // Alice's environment is untouched by all of that.
    assert_eq!(
        alice.sh(&id, "echo still-here").await["stdout"],
        "still-here\n"
    );
    // An admin sees everyone's.
    let (_, list) = server.admin().get("/v1/environments?all=true").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    if !can_run_sandboxes("bad_input") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;

    for (body, field) in [
        (
            json!({ "owner": "usr_01aaaaaaaaaaaaaaaaaaaaaaaa" }),
            "owner",
        ),
        (json!({ "name": "Not Valid" }), "name"),
        (json!({ "name": "-x" }), "name"),
        (json!({ "image": "../../etc" }), "image"),
        (json!({ "image": "nosuchimage" }), "image"),
        (
            json!({ "resources": { "memory_mib": 1_000_000_000u64 } }),
            "memory_mib",
        ),
        (json!({ "resources": { "memory_mib": 1 } }), "memory_mib"),
        (json!({ "resources": { "cpus": -1 } }), "cpus"),
        (json!({ "resources": { "pids": 0 } }), "pids"),
        (json!({ "resources": { "privileged": true } }), "privileged"),
        (json!({ "ttl_seconds": 10_000_000_000u64 }), "ttl_seconds"),
        (json!({ "mounts": ["/:/host"] }), "mounts"),
        (json!("not an object"), ""),
    ] {
        let (status, problem) = alice.post("/v1/environments", body.clone()).await;
        assert_problem(
            status,
            &problem,
            StatusCode::BAD_REQUEST,
            if field.is_empty() || ["owner", "privileged", "mounts"].contains(&field) {
                "invalid-body"
            } else {
                "invalid-request"
            },
        );
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body} -> {problem}"
        );
    }

    let big = "x".repeat(5 * 1024 * 1024);
    let (status, problem) = alice.post("/v1/environments", json!({ "name": big })).await;
    assert_problem(
        status,
        &problem,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
    );

    let answer = alice
        .call(
            Method::POST,
            "/v1/environments",
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        answer.body
    );

    let (status, problem) = alice.get("/v1/environments/not-an-id").await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");
    let (status, problem) = alice.get("/v1/environments?limit=0").await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");
    let (status, problem) = alice.get("/v1/environments?cursor=garbage").await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST, "invalid-request");

    // Nothing was created by any of it.
    let (_, list) = alice.get("/v1/environments").await;
    assert_eq!(list["items"], json!([]));
    assert!(server.sandbox_dirs().is_empty());

    let id = alice.create(json!({})).await;
    for (command, field) in [
        (json!({ "command": [] }), "command"),
        (json!({ "command": [""] }), "command"),
        (json!({ "command": ["echo", "a\u{0}b"] }), "NUL"),
        (json!({ "command": ["true"], "cwd": "relative" }), "cwd"),
        (
            json!({ "command": ["true"], "env": { "BAD=KEY": "x" } }),
            "env",
        ),
        (
            json!({ "command": ["true"], "timeout_seconds": 0 }),
            "timeout_seconds",
        ),
        (
            json!({ "command": ["true"], "timeout_seconds": 1_000_000 }),
            "timeout_seconds",
        ),
        (json!({ "command": ["true"], "user": "root" }), "user"),
    ] {
        let (status, problem) = alice
            .post(&format!("/v1/environments/{id}/exec"), command.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{command} -> {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{command} -> {problem}"
        );
    }
    // A name that is taken is a conflict, and leaves the first environment alone.
    let (status, _) = alice
        .post("/v1/environments", json!({ "name": "dup" }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, problem) = alice
        .post("/v1/environments", json!({ "name": "dup" }))
        .await;
    assert_problem(status, &problem, StatusCode::CONFLICT, "conflict");
    let (_, list) = alice.get("/v1/environments").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert_eq!(server.sandbox_dirs().len(), 2);
}

#[tokio::test]
async fn credentials_are_checked_and_revocation_is_immediate() {
    if !can_run_sandboxes("credentials") {
        return;
    }
    let server = Server::start();
    let anonymous = server.anonymous();
    let answer = anonymous
        .call(Method::GET, "/v1/environments", None, &[])
        .await;
    assert_problem(
        answer.status,
        &answer.body,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert!(answer.headers.contains_key("www-authenticate"));
    for bad in [
        "alk_",
        "Basic abc",
        &format!("alk_{}", "0".repeat(64)),
        &server.admin_token.replace('a', "b"),
    ] {
        let answer = anonymous
            .call(
                Method::GET,
                "/v1/environments",
                None,
                &[("authorization", &format!("Bearer {bad}"))],
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    // A token in the query string is not a credential.
    let (status, _) = anonymous
        .get(&format!(
            "/v1/environments?access_token={}",
            server.admin_token
        ))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let admin = server.admin();
    let (_, user) = admin.post("/v1/users", json!({ "name": "carol" })).await;
    let (status, issued) = admin
        .post(
            "/v1/tokens",
            json!({ "user_id": user["id"], "scopes": ["read"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let secret = issued["token"].as_str().unwrap();
    assert!(secret.starts_with("alk_"));
    let reader = server.client(secret);
    let (status, _) = reader.get("/v1/environments").await;
    assert_eq!(status, StatusCode::OK);
    let (status, problem) = reader.post("/v1/environments", json!({})).await;
    assert_problem(status, &problem, StatusCode::FORBIDDEN, "forbidden");
    // Non-admins cannot make users or tokens for others (another user, which they may not
    // see, is as missing), nor grant scopes they lack.
    let carol = server.user("dave").await;
    let (status, _) = carol.post("/v1/users", json!({ "name": "eve" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = carol
        .post("/v1/tokens", json!({ "user_id": user["id"] }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = carol
        .post("/v1/tokens", json!({ "scopes": ["admin"] }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nobody but the owner (or an admin) can revoke a token: to them it does not exist.
    let (status, _) = carol
        .delete(&format!("/v1/tokens/{}", issued["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = admin
        .delete(&format!("/v1/tokens/{}", issued["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = reader.get("/v1/environments").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a revoked token is refused at once"
    );
}

#[tokio::test]
async fn the_same_idempotency_key_creates_exactly_one_environment() {
    if !can_run_sandboxes("idempotency") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let key = [("idempotency-key", "job-42")];
    let calls = (0..5).map(|_| {
        alice.call(
            Method::POST,
            "/v1/environments",
            Some(json!({ "name": "ci" })),
            &key,
        )
    });
    let answers = futures::future::join_all(calls).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
            answer.body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one key, one environment: {ids:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|answer| answer.headers.contains_key("idempotency-replayed"))
            .count(),
        4
    );
    assert_eq!(server.sandbox_dirs().len(), 1);

    // The same key with another request is refused; another principal's key is its own.
    let changed = alice
        .call(
            Method::POST,
            "/v1/environments",
            Some(json!({ "name": "other" })),
            &key,
        )
        .await;
    assert_eq!(changed.status, StatusCode::CONFLICT, "{}", changed.body);
    let theirs = bob
        .call(
            Method::POST,
            "/v1/environments",
            Some(json!({ "name": "ci" })),
            &key,
        )
        .await;
    assert_eq!(theirs.status, StatusCode::CREATED);
    assert!(!ids.contains(theirs.body["id"].as_str().unwrap()));
}

#[tokio::test]
async fn commands_report_exit_codes_take_input_and_are_bounded() {
    if !can_run_sandboxes("commands") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;
    let id = alice.create(json!({})).await;
    let exec = |body: Value| {
        let alice = &alice;
        let path = format!("/v1/environments/{id}/exec");
        async move {
            let (status, result) = alice.post(&path, body).await;
            assert_eq!(status, StatusCode::OK, "{result}");
            result
        }
    };

    let result = exec(json!({ "command": ["sh", "-c", "echo out; echo err >&2; exit 3"] })).await;
    assert_eq!(
        (
            result["exit_code"].as_i64(),
            result["stdout"].as_str(),
            result["stderr"].as_str()
        ),
        (Some(3), Some("out\n"), Some("err\n"))
    );
    let result = exec(json!({ "command": ["cat"], "stdin": "piped in" })).await;
    assert_eq!(result["stdout"], "piped in");
    let result = exec(json!({ "command": ["sh", "-c", "echo $GREETING; pwd"], "env": { "GREETING": "hi" }, "cwd": "/tmp" })).await;
    assert_eq!(result["stdout"], "hi\n/tmp\n");
    let result = exec(json!({ "command": ["no-such-program"] })).await;
    assert_eq!(result["exit_code"], 127, "{result}");
    assert!(
        result["stderr"]
            .as_str()
            .unwrap()
            .contains("cannot run no-such-program"),
        "{result}"
    );
    // Found but not executable: 126, as a shell says it.
    let result = exec(json!({ "command": ["/etc/hostname"] })).await;
    assert_eq!(result["exit_code"], 126, "{result}");
    let result = exec(json!({ "command": ["true"], "cwd": "/no/such/dir" })).await;
    assert_eq!(result["exit_code"], 127, "{result}");
    assert!(
        result["stderr"]
            .as_str()
            .unwrap()
            .contains("cannot change to /no/such/dir"),
        "{result}"
    );
    // The server's own environment never reaches the sandbox.
    let result = exec(json!({ "command": ["env"] })).await;
    assert!(
        !result["stdout"].as_str().unwrap().contains("AIRLOCK"),
        "{result}"
    );

    // A timeout kills the whole process tree, background children included.
    let result = exec(json!({ "command": ["sh", "-c", "sleep 300 & sleep 301; echo never"], "timeout_seconds": 1 })).await;
    assert_eq!(result["timed_out"], true, "{result}");
    assert_eq!(result["exit_code"], 128 + 9, "{result}");
    assert!(!result["stdout"].as_str().unwrap().contains("never"));
    let left =
        exec(json!({ "command": ["sh", "-c", "ps -e -o comm= | grep -c sleep || true"] })).await;
    assert_eq!(
        left["stdout"], "0\n",
        "sleepers survived the timeout: {left}"
    );

    // Output beyond the cap is cut and flagged.
    let result =
        exec(json!({ "command": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"] })).await;
    assert_eq!(result["truncated"], true);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 1024 * 1024);
    assert_eq!(result["exit_code"], 0);
}

#[tokio::test]
async fn commands_start_from_the_sandboxs_init_and_without_its_agent_through_the_helper() {
    if !can_run_sandboxes("agent") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;
    let id = alice.create(json!({})).await;
    let path = format!("/v1/environments/{id}/exec");
    let parent = || async {
        let (status, result) = alice
            .post(
                &path,
                json!({ "command": ["sh", "-c", "grep PPid /proc/$$/status; echo $HOSTNAME"] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        result["stdout"].as_str().unwrap().to_owned()
    };
    // The sandbox's init (PID 1) forks the command: it is `sh`'s parent.
    let name = alice.get(&format!("/v1/environments/{id}")).await.1["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(parent().await, format!("PPid:\t1\n{name}\n"));
    // Only the server reaches the agent: its socket is outside the sandbox's root, and the
    // init's descriptors are closed to the sandbox's processes (non-dumpable PID 1).
    let socket = server
        .data_dir
        .join("runtime/sandboxes")
        .join(&id)
        .join("agent.sock");
    assert!(socket.exists());
    let (_, inside) = alice
        .post(&path, json!({ "command": ["sh", "-c", "readlink /proc/1/fd/3 || echo refused; find / -xdev -name agent.sock | wc -l"] }))
        .await;
    assert_eq!(inside["stdout"], "refused\n0\n", "{inside}");
    // A sandbox made before the agent existed has no socket: its commands still run, joined
    // from outside by the runtime helper (their parent is outside the sandbox's PID namespace).
    std::fs::remove_file(&socket).unwrap();
    assert_eq!(parent().await, format!("PPid:\t0\n{name}\n"));
}

#[tokio::test]
async fn sandboxes_are_isolated_from_the_host_and_each_other() {
    if !can_run_sandboxes("isolation") {
        return;
    }
    let server = Server::start();
    let alice = server.user("alice").await;
    let first = alice.create(json!({ "name": "one" })).await;
    let second = alice.create(json!({ "name": "two" })).await;

    let report = alice
        .sh(
            &first,
            "echo pid1=$(cat /proc/1/cmdline | tr '\\0' ' '); \
             echo procs=$(ls -d /proc/[0-9]* | wc -l); \
             grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; \
             echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,); \
             ls /home /root | wc -l; test -e /etc/shadow && echo shadow-visible; \
             mount -t tmpfs none /mnt 2>/dev/null && echo mounted; \
             echo secret > /tmp/mine; \
             echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo wrote-proc-sys; true",
        )
        .await;
    let stdout = report["stdout"].as_str().unwrap();
    assert!(stdout.contains("pid1=/.airlock/init"), "{stdout}");
    let processes: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("procs="))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(processes < 10, "the sandbox sees host processes: {stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("ifaces=lo,\n"), "only loopback: {stdout}");
    assert!(
        !stdout.contains("shadow-visible")
            && !stdout.contains("mounted")
            && !stdout.contains("wrote-proc-sys"),
        "{stdout}"
    );
    let capabilities = u64::from_str_radix(
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:\t"))
            .unwrap(),
        16,
    )
    .unwrap();
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    const CAP_SYS_MODULE: u64 = 1 << 16;
    assert_eq!(
        capabilities & (CAP_SYS_ADMIN | CAP_NET_ADMIN | CAP_SYS_PTRACE | CAP_SYS_MODULE),
        0,
        "{stdout}"
    );

    // Files of one environment are invisible to the other and absent from the image.
    let other = alice
        .sh(&second, "cat /tmp/mine 2>&1; ls /tmp | wc -l")
        .await;
    assert!(
        other["stdout"].as_str().unwrap().contains("No such file"),
        "{other}"
    );
    let image = server
        .data_dir
        .join("runtime/images/default/rootfs/tmp/mine");
    assert!(!image.exists());
    // Writes to /usr go to the environment's own layer, never to the host.
    let write = alice
        .sh(
            &first,
            "echo x > /usr/airlock-probe && cat /usr/airlock-probe",
        )
        .await;
    assert_eq!(write["stdout"], "x\n", "{write}");
    assert!(
        !std::path::Path::new("/usr/airlock-probe").exists(),
        "a sandbox wrote to the host's /usr"
    );
}

#[tokio::test]
async fn environments_survive_a_server_kill_and_are_usable_after_restart() {
    if !can_run_sandboxes("restart") {
        return;
    }
    let mut server = Server::start();
    let admin_token = server.admin_token.clone();
    let id = server.admin().create(json!({ "name": "survivor" })).await;
    let doomed = server.admin().create(json!({ "name": "doomed" })).await;
    assert_eq!(
        server
            .admin()
            .sh(
                &id,
                "echo before > /root/state; sleep 1000 > /dev/null 2>&1 & echo ok"
            )
            .await["stdout"],
        "ok\n"
    );

    server.kill();
    // While the server is down, one sandbox dies (as if its processes crashed).
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            server
                .data_dir
                .join(format!("runtime/state/{doomed}/state.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let pid = state["pid"].as_i64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    server.restart();
    let admin = server.client(&admin_token);
    let result = admin.sh(&id, "cat /root/state; pgrep -c sleep").await;
    assert_eq!(
        result["stdout"], "before\n1\n",
        "the environment kept running across the restart: {result}"
    );
    let (_, environment) = admin.get(&format!("/v1/environments/{doomed}")).await;
    assert_eq!(environment["state"], "failed", "{environment}");
    assert!(
        !server.sandbox_dirs().contains(&doomed),
        "the dead sandbox was cleaned up"
    );
}
