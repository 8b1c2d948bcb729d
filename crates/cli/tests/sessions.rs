//! Inside environments through a real server and real sandboxes: terminal sessions driven
//! over the WebSocket and through `airlock shell` on a pseudo-terminal, streamed commands
//! with signals, port forwards and the proxy path carrying real HTTP, files in and out with
//! escapes refused, and recordings replayed.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{AIRLOCK, Api, Server, can_run_sandboxes};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a session's WebSocket as `api`; the refusal's status when it is refused.
async fn open(api: &Api, path: &str) -> Result<Socket, StatusCode> {
    let url = format!("{}{path}", api.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", api.token()).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status()),
        Err(error) => panic!("connecting: {error}"),
    }
}

/// What a session's socket has said so far.
#[derive(Default)]
struct Heard {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    controls: Vec<Value>,
}

impl Heard {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn exit(&self) -> Option<&Value> {
        self.controls
            .iter()
            .find(|message| message["type"] == "exit")
    }
}

/// Reads the socket until `done` holds (or the socket closes), at most 30 s.
async fn listen(socket: &mut Socket, heard: &mut Heard, done: impl Fn(&Heard) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(heard) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => return,
            Err(_) => panic!(
                "timed out; stdout so far: {:?}, controls: {:?}",
                heard.text(),
                heard.controls
            ),
        };
        match message {
            Message::Binary(data) => match data.first() {
                Some(1) => heard.stdout.extend_from_slice(&data[1..]),
                Some(2) => heard.stderr.extend_from_slice(&data[1..]),
                other => panic!("a frame on channel {other:?}"),
            },
            Message::Text(text) => heard.controls.push(serde_json::from_str(&text).unwrap()),
            Message::Close(_) => return,
            _ => {}
        }
    }
}

/// Opens a session as `api` and waits for its `started` message.
async fn opened(api: &Api, path: &str) -> (Socket, Heard) {
    let mut socket = open(api, path).await.expect("the session opens");
    let mut heard = Heard::default();
    listen(&mut socket, &mut heard, |heard| !heard.controls.is_empty()).await;
    assert_eq!(heard.controls[0]["type"], "started", "{:?}", heard.controls);
    (socket, heard)
}

async fn type_in(socket: &mut Socket, text: &[u8]) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(text);
    socket.send(Message::Binary(frame.into())).await.unwrap();
}

async fn control(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

fn new_output_after(heard: &Heard, mark: usize, needle: &str) -> bool {
    String::from_utf8_lossy(&heard.stdout[mark.min(heard.stdout.len())..]).contains(needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_session_types_reads_resizes_interrupts_and_ends_with_its_exit_code() {
    if !can_run_sandboxes("a_terminal_session") {
        return;
    }
    let server = Server::start();
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let path = format!("/v1/environments/{environment}/exec/stream?tty=true&cols=80&rows=24");
    let (mut socket, mut heard) = opened(&user, &path).await;
    assert_eq!(heard.controls[0]["type"], "started");
    let session = heard.controls[0]["session_id"].as_str().unwrap().to_owned();

    // Typed, echoed and answered by a shell on a terminal of the asked size.
    type_in(
        &mut socket,
        b"stty size; tty -s && echo on-a-$((1+1))-tty\n",
    )
    .await;
    listen(&mut socket, &mut heard, |heard| {
        heard.text().contains("on-a-2-tty\r\n")
    })
    .await;
    assert!(heard.text().contains("24 80"), "{}", heard.text());

    // A resize reaches the terminal.
    control(
        &mut socket,
        json!({ "type": "resize", "cols": 120, "rows": 40 }),
    )
    .await;
    let mark = heard.stdout.len();
    type_in(&mut socket, b"stty size\n").await;
    listen(&mut socket, &mut heard, |heard| {
        new_output_after(heard, mark, "40 120")
    })
    .await;

    // ^C goes inside: it interrupts the foreground job, not the session.
    type_in(&mut socket, b"sleep 600\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    type_in(&mut socket, b"\x03").await;
    let mark = heard.stdout.len();
    type_in(&mut socket, b"echo after-$((40+2))\n").await;
    listen(&mut socket, &mut heard, |heard| {
        new_output_after(heard, mark, "after-42\r\n")
    })
    .await;

    // The open session shows in the metrics.
    let (auditor, _) = server
        .user_with("audrey", &["auditor"], &[], &["read"])
        .await;
    let metrics = fetch_text(&auditor, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "airlock_sessions_open 1"),
        "{metrics}"
    );

    type_in(&mut socket, b"exit 3\n").await;
    listen(&mut socket, &mut heard, |heard| heard.exit().is_some()).await;
    assert_eq!(
        heard.exit().unwrap()["exit_code"],
        3,
        "{:?}",
        heard.controls
    );
    let metrics = fetch_text(&auditor, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|line| line == "airlock_sessions_open 0"),
        "{metrics}"
    );

    // Its start and end are in the audit trail, by the user who opened it.
    let (_, trail) = auditor
        .get(&format!("/v1/audit?target={environment}"))
        .await;
    let events = trail["items"].as_array().unwrap();
    let start = events
        .iter()
        .find(|event| event["action"] == "session.start")
        .unwrap();
    assert_eq!(start["outcome"], "ok");
    assert!(
        start["detail"].as_str().unwrap().contains(&session),
        "{start}"
    );
    let end = events
        .iter()
        .find(|event| event["action"] == "session.end")
        .unwrap();
    assert_eq!(end["actor"], start["actor"]);
    assert!(
        end["detail"].as_str().unwrap().contains("exit code 3"),
        "{end}"
    );
    // The trail vouches for the recording: its SHA-256 is in the end event.
    let recorded = fetch_text(&user, &format!("/v1/sessions/{session}/recording")).await;
    let digest: String = sha2::Sha256::digest(recorded.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(
        end["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("recording sha256 {digest}")),
        "{end}"
    );

    // The record: ended, exit code, sizes, and a recording.
    let (status, record) = user.get(&format!("/v1/sessions/{session}")).await;
    assert_eq!(status, StatusCode::OK, "{record}");
    assert_eq!(record["kind"], "terminal");
    assert_eq!(record["environment_id"], environment.as_str());
    assert_eq!(record["exit_code"], 3);
    assert!(record["ended_at"].is_string(), "{record}");
    assert!(record["bytes_in"].as_u64().unwrap() > 20, "{record}");
    assert_eq!(
        record["bytes_out"].as_u64().unwrap(),
        heard.stdout.len() as u64
    );
    assert_eq!(record["recorded"], true);

    let recording = fetch_text(&user, &format!("/v1/sessions/{session}/recording")).await;
    let mut lines = recording.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64()),
        (Some(2), Some(80))
    );
    assert_eq!(header["height"], 24);
    let events: Vec<(f64, String, String)> = lines
        .map(|line| serde_json::from_str(line).expect("an asciicast event"))
        .collect();
    assert!(
        events.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "times never go back"
    );
    assert!(
        events
            .iter()
            .any(|event| event.1 == "r" && event.2 == "120x40")
    );
    let output: String = events
        .iter()
        .filter(|event| event.1 == "o")
        .map(|event| event.2.as_str())
        .collect();
    assert!(output.contains("after-42"), "{output}");
    assert_eq!(
        output.as_bytes(),
        heard.stdout.as_slice(),
        "the recording is the output"
    );

    // `airlock session replay` plays it back; others cannot see it.
    let replayed = Command::new(AIRLOCK)
        .args(["session", "replay", &session, "--speed", "1000"])
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", user.token())
        .env("AIRLOCK_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("after-42"));
    let stranger = server.user("bob").await;
    for path in [
        format!("/v1/sessions/{session}"),
        format!("/v1/sessions/{session}/recording"),
    ] {
        assert_eq!(stranger.get(&path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    // An auditor reads everyone's.
    assert_eq!(
        auditor
            .get(&format!("/v1/sessions/{session}/recording"))
            .await
            .0,
        StatusCode::OK
    );
    let (_, listed) = auditor.get("/v1/sessions?all=true").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
}

async fn fetch_text(api: &Api, path: &str) -> String {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.url))
        .bearer_auth(api.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_command_keeps_its_streams_apart_takes_stdin_and_signals() {
    if !can_run_sandboxes("a_streamed_command") {
        return;
    }
    let server = Server::start();
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let script = "tr a-z A-Z; echo to-stderr >&2; exit 7";
    let path = format!(
        "/v1/environments/{environment}/exec/stream?command=sh&command=-c&command={}",
        percent(script)
    );
    let mut socket = open(&user, &path).await.expect("opens");
    type_in(&mut socket, b"hello ").await;
    type_in(&mut socket, b"world\n").await;
    control(&mut socket, json!({ "type": "eof" })).await;
    let mut heard = Heard::default();
    listen(&mut socket, &mut heard, |heard| heard.exit().is_some()).await;
    assert_eq!(heard.text(), "HELLO WORLD\n");
    assert_eq!(String::from_utf8_lossy(&heard.stderr), "to-stderr\n");
    assert_eq!(heard.exit().unwrap()["exit_code"], 7);

    // The command holds its three streams and nothing of the server or the helper.
    let path = format!(
        "/v1/environments/{environment}/exec/stream?command=sh&command=-c&command={}",
        percent("ls /proc/$$/fd")
    );
    let mut socket = open(&user, &path).await.expect("opens");
    let mut heard = Heard::default();
    listen(&mut socket, &mut heard, |heard| heard.exit().is_some()).await;
    assert_eq!(
        heard.text(),
        "0\n1\n2\n",
        "{}",
        String::from_utf8_lossy(&heard.stderr)
    );

    // A signal reaches the command: SIGINT ends `sleep` with 128 + 2.
    let path = format!("/v1/environments/{environment}/exec/stream?command=sleep&command=600");
    let (mut socket, mut heard) = opened(&user, &path).await;
    let started = Instant::now();
    control(&mut socket, json!({ "type": "signal", "signal": "INT" })).await;
    listen(&mut socket, &mut heard, |heard| heard.exit().is_some()).await;
    assert_eq!(heard.exit().unwrap()["exit_code"], 130);
    assert!(started.elapsed() < Duration::from_secs(30));

    // A client that goes away takes its command with it.
    let path = format!(
        "/v1/environments/{environment}/exec/stream?command=sh&command=-c&command={}",
        percent("echo $$ > /tmp/pid; exec sleep 600")
    );
    let (socket, _) = opened(&user, &path).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(socket);
    assert!(
        dies_within_10_s(&user, &environment, "/tmp/pid").await,
        "the command outlived its session"
    );

    // `airlock exec --stream -i`: stdin piped in, output and exit code back.
    let mut child = Command::new(AIRLOCK)
        .args([
            "env",
            "exec",
            "--stream",
            "-i",
            &environment,
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; exit 4",
        ])
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", user.token())
        .env("AIRLOCK_CONFIG", "/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped through\n")
        .unwrap();
    let output = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "PIPED THROUGH\n");
    assert_eq!(output.status.code(), Some(4));

    // Sessions of the environment, as recorded.
    let (_, listed) = user
        .get(&format!("/v1/sessions?environment={environment}"))
        .await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{listed}");
    assert_eq!(items[0]["kind"], "exec");
    assert_eq!(items[0]["argv"], json!(["sh", "-c", script]));
    assert_eq!(items[0]["exit_code"], 7);
    assert_eq!(items[0]["bytes_in"], 12);
    assert_eq!(items[0]["bytes_out"], 12 + 10);
    assert_eq!(items[0]["recorded"], false);

    // A sandbox made before the exec agent (no socket): its sessions go through the runtime
    // helper, streams, signals and exit code alike.
    std::fs::remove_file(
        server
            .data_dir
            .join("runtime/sandboxes")
            .join(&environment)
            .join("agent.sock"),
    )
    .unwrap();
    let path = format!(
        "/v1/environments/{environment}/exec/stream?command=sh&command=-c&command={}",
        percent("tr a-z A-Z; echo $PPID >&2; exit 6")
    );
    let mut socket = open(&user, &path).await.expect("opens");
    type_in(&mut socket, b"old way\n").await;
    control(&mut socket, json!({ "type": "eof" })).await;
    let mut heard = Heard::default();
    listen(&mut socket, &mut heard, |heard| heard.exit().is_some()).await;
    assert_eq!(heard.text(), "OLD WAY\n");
    // Joined from outside: its parent is not in the sandbox's PID namespace.
    assert_eq!(String::from_utf8_lossy(&heard.stderr), "0\n");
    assert_eq!(heard.exit().unwrap()["exit_code"], 6);
    let path = format!("/v1/environments/{environment}/exec/stream?command=sleep&command=600");
    let (mut socket, mut heard) = opened(&user, &path).await;
    control(&mut socket, json!({ "type": "signal", "signal": "INT" })).await;
    listen(&mut socket, &mut heard, |heard| heard.exit().is_some()).await;
    assert_eq!(heard.exit().unwrap()["exit_code"], 130);
}

async fn wait_until<F, Fut>(limit: Duration, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Whether the process whose pid the environment's file `pid_file` holds is gone within 10 s.
async fn dies_within_10_s(api: &Api, environment: &str, pid_file: &str) -> bool {
    let check = format!("kill -0 $(cat {pid_file}) 2>/dev/null && echo alive");
    wait_until(Duration::from_secs(10), || async {
        api.sh(environment, &check).await["stdout"] != "alive\n"
    })
    .await
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_of_another_users_environment_are_not_found_and_bad_requests_are_refused() {
    if !can_run_sandboxes("sessions_refused") {
        return;
    }
    let server = Server::start();
    let ann = server.user("ann").await;
    let bob = server.user("bob").await;
    let environment = ann.create(json!({ "resources": { "disk_mib": 64 } })).await;
    for path in [
        format!("/v1/environments/{environment}/exec/stream?tty=true"),
        format!("/v1/environments/{environment}/ports/8080/forward"),
    ] {
        assert_eq!(
            open(&bob, &path).await.err(),
            Some(StatusCode::NOT_FOUND),
            "{path}"
        );
    }
    let (status, _) = bob
        .get(&format!(
            "/v1/environments/{environment}/files?path=/etc/hostname"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = bob
        .get(&format!("/v1/environments/{environment}/proxy/8080/"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Not a WebSocket, no command, a bad size, a closed port: clear refusals.
    let (status, problem) = ann
        .get(&format!(
            "/v1/environments/{environment}/exec/stream?command=true"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    for path in [
        format!("/v1/environments/{environment}/exec/stream"),
        format!("/v1/environments/{environment}/exec/stream?tty=true&cols=0"),
        format!("/v1/environments/{environment}/ports/0/forward"),
    ] {
        assert_eq!(
            open(&ann, &path).await.err(),
            Some(StatusCode::BAD_REQUEST),
            "{path}"
        );
    }
    let closed = format!("/v1/environments/{environment}/ports/9/forward");
    assert_eq!(open(&ann, &closed).await.err(), Some(StatusCode::CONFLICT));
    // None of these left a session behind.
    let (_, listed) = ann.get("/v1/sessions").await;
    assert_eq!(listed["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_forward_and_the_proxy_path_carry_real_http() {
    if !can_run_sandboxes("a_port_forward") {
        return;
    }
    let server = Server::start();
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    // A server inside that answers with the request's path and headers.
    let script = r#"
import http.server, json
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 8000), Echo).serve_forever()
"#;
    let path = format!(
        "/v1/environments/{environment}/exec/stream?command=python3&command=-c&command={}",
        percent(script)
    );
    let _server_inside = open(&user, &path).await.expect("opens");
    let listening = wait_until(Duration::from_secs(20), || async {
        let result = user
            .sh(&environment, "python3 -c \"import socket; socket.create_connection(('127.0.0.1', 8000))\" && echo up")
            .await;
        result["stdout"] == "up\n"
    })
    .await;
    assert!(listening, "the server inside never listened");

    // Through a WebSocket port forward, raw HTTP/1.1.
    let mut socket = open(
        &user,
        &format!("/v1/environments/{environment}/ports/8000/forward"),
    )
    .await
    .expect("forward opens");
    socket
        .send(Message::Binary(
            b"GET /through-the-forward HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_vec()
                .into(),
        ))
        .await
        .unwrap();
    let mut received = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(20), socket.next()).await
    {
        match message {
            Message::Binary(data) => received.extend_from_slice(&data),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.0 200"), "{received}");
    assert!(received.contains("/through-the-forward"), "{received}");

    // Through `airlock port-forward` on a local port.
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut forwarder = Command::new(AIRLOCK)
        .args(["port-forward", &environment, &format!("{local}:8000")])
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", user.token())
        .env("AIRLOCK_CONFIG", "/nonexistent")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{local}/via-cli")).await {
            answer = Some(response.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    forwarder.kill().unwrap();
    let _ = forwarder.wait();
    let answer: Value = serde_json::from_str(&answer.expect("the local port answered")).unwrap();
    assert_eq!(answer["path"], "/via-cli");

    // Through the proxy path: the query is kept, the caller's token is not passed on.
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/environments/{environment}/proxy/8000/some/my%20page?x=1",
            server.url
        ))
        .bearer_auth(user.token())
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    // Passed on as it came, still encoded.
    assert_eq!(answer["path"], "/some/my%20page?x=1");
    let headers = answer["headers"].as_object().unwrap();
    assert_eq!(headers.get("x-custom"), Some(&json!("kept")));
    assert!(
        headers
            .keys()
            .all(|name| !name.eq_ignore_ascii_case("authorization")),
        "{headers:?}"
    );
    // No token, no proxy.
    let response = reqwest::get(format!(
        "{}/v1/environments/{environment}/proxy/8000/",
        server.url
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

fn airlock_cp(
    server: &Server,
    token: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    let mut child = Command::new(AIRLOCK)
        .arg("cp")
        .args(args)
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", token)
        .env("AIRLOCK_CONFIG", "/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn files_copy_in_and_out_never_escape_and_respect_the_limit() {
    if !can_run_sandboxes("files_copy") {
        return;
    }
    let server = Server::start_with(&["--copy-limit-mib", "1"]);
    let user = server.user("ann").await;
    let token = user.token().to_owned();
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let local = tempfile::tempdir().unwrap();

    // In from a file (its mode kept), out to a file: the same bytes.
    let contents: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    let source = local.path().join("data.bin");
    std::fs::write(&source, &contents).unwrap();
    std::fs::set_permissions(&source, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let remote = format!("{environment}:/tmp/data.bin");
    let copied = tokio::task::block_in_place(|| {
        airlock_cp(&server, &token, &[source.to_str().unwrap(), &remote], None)
    });
    assert!(copied.status.success(), "{copied:?}");
    let inside = user
        .sh(
            &environment,
            "stat -c %a /tmp/data.bin; wc -c < /tmp/data.bin",
        )
        .await;
    assert_eq!(inside["stdout"], "750\n300000\n", "{inside}");
    // The trail says which file.
    let (_, trail) = server
        .admin()
        .get("/v1/audit?action=environment.copy_in")
        .await;
    let detail = trail["items"][0]["detail"].as_str().unwrap().to_owned();
    assert_eq!(detail, "/tmp/data.bin: 300000 B written");
    let back = local.path().join("back.bin");
    let copied = tokio::task::block_in_place(|| {
        airlock_cp(&server, &token, &[&remote, back.to_str().unwrap()], None)
    });
    assert!(copied.status.success(), "{copied:?}");
    assert_eq!(std::fs::read(&back).unwrap(), contents);

    // Standard input in, standard output out; the environment's own mounts are seen (/dev/shm
    // is a tmpfs of the sandbox).
    let copied = tokio::task::block_in_place(|| {
        airlock_cp(
            &server,
            &token,
            &["-", &format!("{environment}:/dev/shm/note")],
            Some(b"via stdin"),
        )
    });
    assert!(copied.status.success(), "{copied:?}");
    assert_eq!(
        user.sh(&environment, "cat /dev/shm/note").await["stdout"],
        "via stdin"
    );
    let copied = tokio::task::block_in_place(|| {
        airlock_cp(
            &server,
            &token,
            &[&format!("{environment}:/dev/shm/note"), "-"],
            None,
        )
    });
    assert_eq!(copied.stdout, b"via stdin");

    // Escapes: links out of the root resolve inside it (or are refused), never on the host.
    let host_secret = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    std::fs::write(host_secret.path(), "host secret").unwrap();
    let host_dir = tempfile::tempdir_in("/tmp").unwrap();
    let host_secret_path = host_secret.path().to_str().unwrap();
    let host_dir_path = host_dir.path().to_str().unwrap();
    user.sh(
        &environment,
        &format!(
            "ln -s {host_secret_path} /tmp/abs; ln -s ../../../../../../..{host_secret_path} /tmp/rel; \
             ln -s {host_dir_path} /tmp/dirlink"
        ),
    )
    .await;
    for path in [
        "/tmp/abs",
        "/tmp/rel",
        "/proc/1/root/etc/hostname",
        "/proc/self/root/etc/passwd",
    ] {
        let response = reqwest::Client::new()
            .get(format!(
                "{}/v1/environments/{environment}/files?path={}",
                server.url,
                percent(path)
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(!body.contains("host secret"), "{path}: {body}");
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{path}: {status} {body}"
        );
    }
    let upload = |path: &str, body: Vec<u8>| {
        let url = format!(
            "{}/v1/environments/{environment}/files?path={}",
            server.url,
            percent(path)
        );
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .put(url)
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let status = upload("/tmp/dirlink/planted", b"x".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(std::fs::read_dir(host_dir.path()).unwrap().count(), 0);
    // A link as the target is replaced, not followed.
    assert_eq!(
        upload("/tmp/abs", b"replaced".to_vec()).await,
        StatusCode::CREATED
    );
    assert_eq!(
        std::fs::read_to_string(host_secret.path()).unwrap(),
        "host secret"
    );

    // Over the limit: refused, and nothing is left behind.
    let status = upload("/tmp/big", vec![7u8; 2 << 20]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let listing = user.sh(&environment, "ls -a /tmp").await;
    let names = listing["stdout"].as_str().unwrap();
    assert!(!names.contains("big"), "{names}");
    assert!(!names.contains("airlock"), "{names}");
    // Relative paths and directories are refused with a reason.
    assert_eq!(
        upload("tmp/x", b"x".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        upload("/tmp/", b"x".to_vec()).await,
        StatusCode::BAD_REQUEST
    );
    let (status, problem) = user
        .get(&format!("/v1/environments/{environment}/files?path=/tmp"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("directory"),
        "{problem}"
    );
}

/// `airlock shell` on a pseudo-terminal, as a person at a terminal runs it.
#[tokio::test(flavor = "multi_thread")]
async fn airlock_shell_behaves_like_an_ssh_session() {
    if !can_run_sandboxes("airlock_shell") {
        return;
    }
    let server = Server::start();
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let slave = |fd: &std::os::fd::OwnedFd| std::process::Stdio::from(fd.try_clone().unwrap());
    let mut command = Command::new(AIRLOCK);
    // As a login would: its own session, the terminal its controlling one (so that resizing
    // it sends SIGWINCH).
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .args(["shell", &environment])
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_TOKEN", user.token())
        .env("AIRLOCK_CONFIG", "/nonexistent")
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .unwrap();
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (mut master, output) = (master.try_clone().unwrap(), output.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = master.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
    }
    let seen = |needle: &str, from: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = String::from_utf8_lossy(&output.lock().unwrap()[from..]).into_owned();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?} in {text:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mark = || output.lock().unwrap().len();
    let mut keys = master.try_clone().unwrap();
    tokio::task::block_in_place(|| {
        // The local terminal's size went along.
        keys.write_all(b"stty size\n").unwrap();
        seen("30 100", 0);
        // A resize of the local terminal follows (SIGWINCH).
        let size = libc::winsize {
            ws_row: 50,
            ws_col: 132,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        std::thread::sleep(Duration::from_millis(300));
        let from = mark();
        keys.write_all(b"stty size\n").unwrap();
        seen("50 132", from);
        // ^C goes inside (the local terminal is raw): the sleep ends, the session goes on.
        keys.write_all(b"sleep 600\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        keys.write_all(b"\x03").unwrap();
        let from = mark();
        keys.write_all(b"echo still-$((6*7))\n").unwrap();
        seen("still-42", from);
        keys.write_all(b"exit 5\n").unwrap();
    });
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert_eq!(status.code(), Some(5));
}

/// A session ends with its environment, and every session ends (recorded) when the server
/// stops; a session a killed server left open is closed at the next start.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_end_with_their_environment_and_with_the_server() {
    if !can_run_sandboxes("sessions_end") {
        return;
    }
    let mut server = Server::start_with(&["--shutdown-grace", "10"]);
    let user = server.user("ann").await;
    let doomed = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let (mut socket, mut heard) = opened(
        &user,
        &format!("/v1/environments/{doomed}/exec/stream?tty=true"),
    )
    .await;
    let first = heard.controls[0]["session_id"].as_str().unwrap().to_owned();
    let (status, _) = user.delete(&format!("/v1/environments/{doomed}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    listen(&mut socket, &mut heard, |heard| heard.controls.len() > 1).await;
    assert!(
        heard.exit().is_some() || heard.controls[1]["type"] == "closed",
        "{:?}",
        heard.controls
    );
    let (_, record) = user.get(&format!("/v1/sessions/{first}")).await;
    assert!(record["ended_at"].is_string(), "{record}");

    // SIGTERM: the open session is told why and recorded as ended.
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let (mut socket, mut heard) = opened(
        &user,
        &format!("/v1/environments/{environment}/exec/stream?tty=true"),
    )
    .await;
    let second = heard.controls[0]["session_id"].as_str().unwrap().to_owned();
    let status = tokio::task::block_in_place(|| server.terminate(Duration::from_secs(30)));
    assert!(status.success(), "{status}");
    // What the server said before it went is still in the socket.
    listen(&mut socket, &mut heard, |heard| heard.controls.len() > 1).await;
    assert_eq!(heard.controls[1]["type"], "closed", "{:?}", heard.controls);
    assert_eq!(heard.controls[1]["reason"], "the server is shutting down");
    server.restart();
    let user = user.on(&server);
    let (_, record) = user.get(&format!("/v1/sessions/{second}")).await;
    assert!(record["ended_at"].is_string(), "{record}");

    // SIGKILL leaves one open; the next start ends its record.
    let (_socket, heard) = opened(
        &user,
        &format!("/v1/environments/{environment}/exec/stream?tty=true"),
    )
    .await;
    let third = heard.controls[0]["session_id"].as_str().unwrap().to_owned();
    server.kill();
    server.restart();
    let user = user.on(&server);
    let (_, record) = user.get(&format!("/v1/sessions/{third}")).await;
    assert!(record["ended_at"].is_string(), "{record}");
    assert!(record["exit_code"].is_null(), "{record}");
    // And its end is in the trail, like every session's.
    let (_, trail) = server.admin().get("/v1/audit?action=session.end").await;
    let ends: Vec<&Value> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["detail"].as_str().unwrap_or("").contains(&third))
        .collect();
    assert_eq!(ends.len(), 1, "{trail}");
    assert!(
        ends[0]["detail"]
            .as_str()
            .unwrap()
            .contains("ended at start")
    );
}

/// A command that is slow to read its input never stops its output from being drained (and
/// with it the session): 4 MiB through `cat`, sent as fast as the socket takes it.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_input_and_output_flow_together_and_a_dropped_client_takes_the_whole_tree() {
    if !can_run_sandboxes("bulk_input") {
        return;
    }
    let server = Server::start();
    let user = server.user("ann").await;
    let environment = user
        .create(json!({ "resources": { "disk_mib": 64 } }))
        .await;
    let socket = open(
        &user,
        &format!("/v1/environments/{environment}/exec/stream?command=cat"),
    )
    .await
    .expect("opens");
    let (mut sink, mut source) = socket.split();
    const TOTAL: usize = 4 << 20;
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            let mut frame = vec![0u8];
            frame.extend_from_slice(&chunk);
            sink.send(Message::Binary(frame.into())).await.unwrap();
        }
        sink.send(Message::Text(json!({ "type": "eof" }).to_string().into()))
            .await
            .unwrap();
        sink
    });
    let mut received = 0usize;
    let mut exit = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while exit.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, source.next())
            .await
            .unwrap_or_else(|_| panic!("stuck after {received} bytes"));
        match message {
            Some(Ok(Message::Binary(data))) => received += data.len() - 1,
            Some(Ok(Message::Text(text))) => {
                let control: Value = serde_json::from_str(&text).unwrap();
                if control["type"] == "exit" {
                    exit = Some(control["exit_code"].clone());
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the session ended early: {other:?} after {received} bytes"),
        }
    }
    drop(writer.await.unwrap());
    assert_eq!(received, TOTAL);
    assert_eq!(exit, Some(json!(0)));

    // A client that goes away takes every process of its command with it, also one that
    // left the command's process group and session.
    let path = format!(
        "/v1/environments/{environment}/exec/stream?command=sh&command=-c&command={}",
        percent("setsid sleep 600 & echo $! > /tmp/escapee; wait")
    );
    let (socket, _) = opened(&user, &path).await;
    let started = wait_until(Duration::from_secs(10), || async {
        user.sh(&environment, "test -s /tmp/escapee && echo yes")
            .await["stdout"]
            == "yes\n"
    })
    .await;
    assert!(started);
    drop(socket);
    assert!(
        dies_within_10_s(&user, &environment, "/tmp/escapee").await,
        "a process of the session outlived it"
    );
}

/// One user's open sessions are bounded (429 past it, nothing started); a seat comes back
/// when a session ends.
#[tokio::test(flavor = "multi_thread")]
async fn open_sessions_per_user_are_bounded() {
    if !can_run_sandboxes("sessions_bounded") {
        return;
    }
    let server = Server::start_with(&["--max-sessions-per-user", "2"]);
    let ann = server.user("ann").await;
    let bob = server.user("bob").await;
    let mine = ann.create(json!({ "resources": { "disk_mib": 64 } })).await;
    let theirs = bob.create(json!({ "resources": { "disk_mib": 64 } })).await;
    let sleeping = |environment: &str| {
        format!("/v1/environments/{environment}/exec/stream?command=sleep&command=600")
    };
    let first = open(&ann, &sleeping(&mine)).await.expect("first");
    let _second = open(&ann, &sleeping(&mine)).await.expect("second");
    assert_eq!(
        open(&ann, &sleeping(&mine)).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    // Another user is not affected.
    let _bobs = open(&bob, &sleeping(&theirs)).await.expect("bob's");
    // One ends; a seat is free again.
    drop(first);
    let reopened = wait_until(Duration::from_secs(10), || async {
        open(&ann, &sleeping(&mine)).await.is_ok()
    })
    .await;
    assert!(reopened);
    let (_, listed) = ann.get(&format!("/v1/sessions?environment={mine}")).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");
}
