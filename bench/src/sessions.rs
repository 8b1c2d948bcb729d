//! The sessions scenario: streamed commands inside one running sandbox, for airlock through
//! its session WebSocket (`/v1/environments/{id}/exec/stream`, docs/SESSIONS.md) and for
//! podman through the docker-compatible exec endpoints of its service (`POST
//! /containers/{id}/exec`, then `POST /exec/{id}/start` on a connection upgraded to a raw
//! stream, stdout and stderr multiplexed with 8-byte headers).
//!
//! Measured, serially, against a fresh server (or service) holding one running sandbox:
//! - open -> first output and open -> exit of `echo ready`, a new connection per session, as a
//!   CLI opens it;
//! - keystroke -> echo: on one open session running `cat` (no terminal), a short line written
//!   to its stdin until it has come back on stdout; and on a shell loop that answers every
//!   line with two writes (stdout, then stderr), until both have come back;
//! - throughput: `head -c BYTES /dev/zero` streamed out of a session, from open to exit;
//! - airlock only: open -> first output of a terminal session's login shell (its prompt).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::airlock::Server;
use crate::host;
use crate::http::{Client, Endpoint, read_response};
use crate::podman::{Service, UsrMode};
use crate::scenario::System;
use crate::stats::{Report, Samples, Throughput};

/// The docker-compatible API version the exec requests are written against (podman 4.x
/// serves up to 1.41).
const COMPAT: &str = "/v1.41";

/// How long one session step (open, one echo, one stream) may take before the benchmark
/// gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

/// How much of the sessions scenario to run.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    /// Untimed sessions (and lines) before each measurement.
    pub warmup: usize,
    /// `echo ready` sessions, one after another.
    pub opens: usize,
    /// Lines written to one `cat` session, one after another.
    pub round_trips: usize,
    /// Bytes streamed out of each throughput session.
    pub stream_bytes: u64,
    /// Throughput sessions.
    pub stream_repetitions: usize,
    /// airlock terminal sessions opened to their first output (0: none).
    pub terminal_opens: usize,
}

/// What a session says next.
enum Event {
    /// Bytes on stdout (1) or stderr (2).
    Output(u8, Vec<u8>),
    /// The command's exit code (airlock says it in the stream; podman does not).
    Exit(i64),
    /// The stream ended.
    End,
}

/// A system that can run streamed commands in a sandbox.
trait SessionSystem {
    type Session: Session;

    fn name(&self) -> &str;

    /// Starts `argv` in the sandbox with its stdin attached; returns once the command runs.
    async fn open(&self, argv: &[&str]) -> Result<Self::Session>;
}

/// One open session.
trait Session {
    async fn next(&mut self) -> Result<Event>;
    async fn write_stdin(&mut self, bytes: &[u8]) -> Result<()>;
    async fn close_stdin(&mut self) -> Result<()>;
    /// When the session was seen to be open: airlock's `started` message, podman's upgraded
    /// answer to the exec start.
    fn opened_at(&self) -> Instant;
    /// The exit code once the stream has ended (podman asks its API; airlock heard it).
    async fn exit_code(&mut self) -> Result<i64>;
}

/// airlock's session WebSocket, as the admin.
struct AirlockSessions {
    address: SocketAddr,
    token: String,
    environment: String,
}

struct AirlockSession {
    socket: WebSocketStream<TcpStream>,
    opened_at: Instant,
    exit: Option<i64>,
}

impl AirlockSessions {
    /// Connects (a new TCP connection, TCP_NODELAY) and upgrades `path`; returns once the
    /// server has said `started`.
    async fn connect(&self, path: &str) -> Result<AirlockSession> {
        let tcp = TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        let mut request = format!("ws://{}{path}", self.address).into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        let (mut socket, _) = tokio_tungstenite::client_async(request, tcp)
            .await
            .with_context(|| format!("opening {path}"))?;
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text)?;
                ensure!(message["type"] == "started", "first message: {text}");
            }
            other => bail!("no `started` message: {other:?}"),
        }
        Ok(AirlockSession {
            socket,
            opened_at: Instant::now(),
            exit: None,
        })
    }

    fn path(&self, query: &str) -> String {
        format!("/v1/environments/{}/exec/stream?{query}", self.environment)
    }
}

impl SessionSystem for AirlockSessions {
    type Session = AirlockSession;

    fn name(&self) -> &str {
        "airlock"
    }

    async fn open(&self, argv: &[&str]) -> Result<AirlockSession> {
        let query: Vec<String> = argv
            .iter()
            .map(|arg| format!("command={}", percent_encoded(arg)))
            .collect();
        self.connect(&self.path(&query.join("&"))).await
    }
}

/// `text` for a query string: every byte but the unreserved ones (RFC 3986) as `%XX`.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

impl Session for AirlockSession {
    async fn next(&mut self) -> Result<Event> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(&channel @ (1 | 2)) => {
                        return Ok(Event::Output(channel, data[1..].to_vec()));
                    }
                    other => bail!("a frame on channel {other:?}"),
                },
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text)?;
                    match message["type"].as_str() {
                        Some("exit") => {
                            let code = message["exit_code"].as_i64().unwrap_or(-1);
                            self.exit = Some(code);
                            return Ok(Event::Exit(code));
                        }
                        Some("closed") => bail!("the session was closed: {text}"),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(Event::End),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            }
        }
    }

    async fn write_stdin(&mut self, bytes: &[u8]) -> Result<()> {
        let mut frame = Vec::with_capacity(bytes.len() + 1);
        frame.push(0);
        frame.extend_from_slice(bytes);
        self.socket.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    async fn close_stdin(&mut self) -> Result<()> {
        let eof = json!({ "type": "eof" }).to_string();
        self.socket.send(Message::Text(eof.into())).await?;
        Ok(())
    }

    fn opened_at(&self) -> Instant {
        self.opened_at
    }

    async fn exit_code(&mut self) -> Result<i64> {
        self.exit.context("the session ended without an exit code")
    }
}

/// podman's docker-compatible exec endpoints on the service's socket.
struct PodmanSessions {
    name: String,
    socket: PathBuf,
    container: String,
}

struct PodmanSession {
    stream: BufReader<UnixStream>,
    opened_at: Instant,
    socket: PathBuf,
    exec: String,
}

/// `POST path` with a JSON body and extra header lines, as raw bytes.
fn post(path: &str, body: &Value, extra_headers: &str) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl SessionSystem for PodmanSessions {
    type Session = PodmanSession;

    fn name(&self) -> &str {
        &self.name
    }

    /// Exec create, then exec start on the same connection, upgraded: one connection per
    /// session, as airlock's.
    async fn open(&self, argv: &[&str]) -> Result<PodmanSession> {
        let mut stream = BufReader::new(
            UnixStream::connect(&self.socket)
                .await
                .with_context(|| format!("connecting to {}", self.socket.display()))?,
        );
        let create = post(
            &format!("{COMPAT}/containers/{}/exec", self.container),
            &json!({
                "Cmd": argv, "AttachStdin": true, "AttachStdout": true, "AttachStderr": true,
                "Tty": false,
            }),
            "",
        );
        stream.get_mut().write_all(&create).await?;
        let (created, reusable) = read_response(&mut stream, "POST").await?;
        ensure!(
            reusable,
            "podman closed the connection after the exec create"
        );
        let exec = created.expect(201, "creating an exec")?.json()?["Id"]
            .as_str()
            .context("the exec has no Id")?
            .to_owned();
        let start = post(
            &format!("{COMPAT}/exec/{exec}/start"),
            &json!({ "Detach": false, "Tty": false }),
            "Connection: Upgrade\r\nUpgrade: tcp\r\n",
        );
        stream.get_mut().write_all(&start).await?;
        // The head of the upgraded answer; the raw stream follows it.
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await?;
        let status = status_line.split(' ').nth(1).unwrap_or_default();
        if status != "101" && status != "200" {
            bail!("starting an exec: {}", status_line.trim());
        }
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                bail!("podman closed the connection inside the exec start's head");
            }
            if line.trim_end().is_empty() {
                break;
            }
        }
        Ok(PodmanSession {
            stream,
            opened_at: Instant::now(),
            socket: self.socket.clone(),
            exec,
        })
    }
}

impl Session for PodmanSession {
    /// One frame of the multiplexed stream: [channel, 0, 0, 0, length (u32, big endian)].
    async fn next(&mut self) -> Result<Event> {
        let mut header = [0u8; 8];
        let first = self.stream.read(&mut header[..1]).await?;
        if first == 0 {
            return Ok(Event::End);
        }
        self.stream.read_exact(&mut header[1..]).await?;
        let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut data = vec![0u8; length];
        self.stream.read_exact(&mut data).await?;
        match header[0] {
            channel @ (1 | 2) => Ok(Event::Output(channel, data)),
            other => bail!("a frame on stream {other}"),
        }
    }

    async fn write_stdin(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.get_mut().write_all(bytes).await?;
        Ok(())
    }

    async fn close_stdin(&mut self) -> Result<()> {
        self.stream.get_mut().shutdown().await?;
        Ok(())
    }

    fn opened_at(&self) -> Instant {
        self.opened_at
    }

    /// What a docker client does after the stream: inspect the exec (polled while podman
    /// still says it runs).
    async fn exit_code(&mut self) -> Result<i64> {
        let mut client = Client::new(Endpoint::Unix(self.socket.clone()), Vec::new());
        for _ in 0..1000 {
            let inspected = client
                .request("GET", &format!("{COMPAT}/exec/{}/json", self.exec), None)
                .await?
                .expect(200, "inspecting an exec")?
                .json()?;
            if inspected["Running"] == false {
                return inspected["ExitCode"]
                    .as_i64()
                    .context("the exec has no ExitCode");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        bail!("the exec still runs after its stream ended")
    }
}

/// `step` within [`STEP_DEADLINE`].
async fn deadline<T>(what: &str, step: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STEP_DEADLINE, step)
        .await
        .with_context(|| format!("{what}: no progress within {STEP_DEADLINE:?}"))?
}

/// Reads a session to its end: stdout, stderr, and the instant the command was seen to exit
/// (airlock's `exit` message, or podman's end of stream).
async fn read_to_exit(session: &mut impl Session) -> Result<(Vec<u8>, Vec<u8>, Instant)> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match session.next().await? {
            Event::Output(1, data) => stdout.extend_from_slice(&data),
            Event::Output(_, data) => stderr.extend_from_slice(&data),
            Event::Exit(_) | Event::End => return Ok((stdout, stderr, Instant::now())),
        }
    }
}

/// Reads what is left after the exit (airlock's close frame), untimed.
async fn drain(session: &mut impl Session) -> Result<()> {
    while !matches!(session.next().await?, Event::End) {}
    Ok(())
}

/// `echo ready` sessions: open -> first output, open -> exit, open -> exit code.
async fn open_to_output<S: SessionSystem>(
    system: &S,
    plan: &SessionPlan,
    report: &mut Report,
) -> Result<()> {
    let mut opened = Samples::new("session open->started (echo)");
    let mut first_output = Samples::new("session open->first output (echo)");
    let mut exited = Samples::new("session open->exit (echo)");
    let mut exit_code = Samples::new("session open->exit code (echo)");
    for index in 0..plan.warmup + plan.opens {
        let timed = index >= plan.warmup;
        deadline("an echo session", async {
            let started = Instant::now();
            let mut session = system.open(&["echo", "ready"]).await?;
            let mut first = None;
            let mut stdout = Vec::new();
            let exit = loop {
                match session.next().await? {
                    Event::Output(1, data) => {
                        first.get_or_insert_with(Instant::now);
                        stdout.extend_from_slice(&data);
                    }
                    Event::Output(_, data) => bail!(
                        "`echo ready` wrote to stderr: {}",
                        String::from_utf8_lossy(&data)
                    ),
                    Event::Exit(_) | Event::End => break Instant::now(),
                }
            };
            let code = session.exit_code().await?;
            let coded = Instant::now();
            ensure!(
                stdout == b"ready\n" && code == 0,
                "`echo ready` gave {:?} and exit code {code}",
                String::from_utf8_lossy(&stdout)
            );
            drain(&mut session).await?;
            if timed {
                opened.push(session.opened_at() - started);
                first_output.push(first.context("no output")? - started);
                exited.push(exit - started);
                exit_code.push(coded - started);
            }
            Ok(())
        })
        .await
        .with_context(|| format!("echo session #{index}"))?;
    }
    report.add(system.name(), opened);
    report.add(system.name(), first_output);
    report.add(system.name(), exited);
    report.add(system.name(), exit_code);
    Ok(())
}

/// A shell loop that writes every line it reads to stdout, then to stderr: two writes, two
/// frames, for every line.
const ECHO_TWICE: &str =
    "while IFS= read -r line; do printf '%s\\n' \"$line\"; printf '%s\\n' \"$line\" >&2; done";

/// Lines written to one session, one after another, each timed until it has come back: from
/// `cat` on stdout, or (`twice`) from [`ECHO_TWICE`] on stdout and on stderr.
async fn round_trips<S: SessionSystem>(
    system: &S,
    plan: &SessionPlan,
    twice: bool,
    report: &mut Report,
) -> Result<()> {
    let (label, argv, count) = if twice {
        (
            "session line->stdout+stderr (sh)",
            vec!["sh", "-c", ECHO_TWICE],
            plan.round_trips.div_ceil(5),
        )
    } else {
        (
            "session keystroke->echo (cat)",
            vec!["cat"],
            plan.round_trips,
        )
    };
    let mut samples = Samples::new(label);
    let mut session = deadline("opening a session", system.open(&argv)).await?;
    for index in 0..plan.warmup * 10 + count {
        let line = format!("line {index:06}\n");
        deadline("a line through the session", async {
            let started = Instant::now();
            session.write_stdin(line.as_bytes()).await?;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while stdout.len() < line.len() || (twice && stderr.len() < line.len()) {
                match session.next().await? {
                    Event::Output(1, data) => stdout.extend_from_slice(&data),
                    Event::Output(_, data) => stderr.extend_from_slice(&data),
                    Event::Exit(_) | Event::End => bail!("{argv:?} ended"),
                }
            }
            let elapsed = started.elapsed();
            let expected_stderr = if twice { line.as_bytes() } else { b"" };
            ensure!(
                stdout == line.as_bytes() && stderr == expected_stderr,
                "wrote {line:?}, read back {:?} and {:?}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
            if index >= plan.warmup * 10 {
                samples.push(elapsed);
            }
            Ok(())
        })
        .await
        .with_context(|| format!("line #{index}"))?;
    }
    // The end of input ends the command.
    deadline("ending the session", async {
        session.close_stdin().await?;
        let (stdout, stderr, _) = read_to_exit(&mut session).await?;
        ensure!(
            stdout.is_empty() && stderr.is_empty(),
            "{argv:?} wrote more: {stdout:?} {stderr:?}"
        );
        let code = session.exit_code().await?;
        ensure!(code == 0, "{argv:?} exited with {code}");
        drain(&mut session).await
    })
    .await?;
    report.add(system.name(), samples);
    Ok(())
}

/// `head -c BYTES /dev/zero` sessions, from open to exit with every byte read.
async fn throughput<S: SessionSystem>(
    system: &S,
    plan: &SessionPlan,
    report: &mut Report,
    context: &mut Vec<String>,
) -> Result<()> {
    let mib = plan.stream_bytes as f64 / (1024.0 * 1024.0);
    let label = format!("session stream {mib:.0} MiB (head /dev/zero)");
    let mut samples = Samples::new(label.clone());
    let bytes = plan.stream_bytes.to_string();
    let cpu = host::cpu_snapshot();
    for index in 0..1 + plan.stream_repetitions {
        let elapsed = deadline("a stream session", async {
            let started = Instant::now();
            let mut session = system.open(&["head", "-c", &bytes, "/dev/zero"]).await?;
            let mut received = 0u64;
            let mut stderr = Vec::new();
            loop {
                match session.next().await? {
                    Event::Output(1, data) => {
                        ensure!(
                            data.iter().all(|b| *b == 0),
                            "non-zero bytes from /dev/zero"
                        );
                        received += data.len() as u64;
                    }
                    Event::Output(_, data) => stderr.extend_from_slice(&data),
                    Event::Exit(_) | Event::End => break,
                }
            }
            let elapsed = started.elapsed();
            let code = session.exit_code().await?;
            ensure!(
                received == plan.stream_bytes && code == 0,
                "received {received} of {} bytes, exit code {code}, stderr {:?}",
                plan.stream_bytes,
                String::from_utf8_lossy(&stderr)
            );
            drain(&mut session).await?;
            Ok(elapsed)
        })
        .await
        .with_context(|| format!("stream session #{index}"))?;
        // The first one is a warm-up.
        if index > 0 {
            samples.push(elapsed);
        }
    }
    let host_busy = host::busy_percent(cpu, host::cpu_snapshot());
    let total: Duration = samples.values.iter().sum();
    let rates: Vec<String> = samples
        .values
        .iter()
        .map(|d| format!("{:.0}", mib / d.as_secs_f64()))
        .collect();
    context.push(format!(
        "{} sessions: {mib:.0} MiB streamed at {} MiB/s",
        system.name(),
        rates.join(", ")
    ));
    report.throughputs.push(Throughput {
        system: system.name().to_owned(),
        label: format!("{label}, MiB"),
        count: (mib * samples.values.len() as f64).round() as usize,
        concurrency: 1,
        elapsed: total,
        host_busy,
    });
    report.add(system.name(), samples);
    Ok(())
}

/// airlock only: terminal sessions (a login shell) until their first output, the prompt.
async fn terminal_opens(
    system: &AirlockSessions,
    plan: &SessionPlan,
    report: &mut Report,
) -> Result<()> {
    let mut samples = Samples::new("terminal open->first output (shell)");
    let path = system.path("tty=true&cols=80&rows=24");
    for index in 0..plan.warmup + plan.terminal_opens {
        deadline("a terminal session", async {
            let started = Instant::now();
            let mut session = system.connect(&path).await?;
            loop {
                match session.next().await? {
                    Event::Output(_, data) if !data.is_empty() => break,
                    Event::Output(..) => {}
                    Event::Exit(code) => bail!("the shell exited with {code} before its prompt"),
                    Event::End => bail!("the session ended before its prompt"),
                }
            }
            let elapsed = started.elapsed();
            session.write_stdin(b"exit\n").await?;
            read_to_exit(&mut session).await?;
            drain(&mut session).await?;
            if index >= plan.warmup {
                samples.push(elapsed);
            }
            Ok(())
        })
        .await
        .with_context(|| format!("terminal session #{index}"))?;
    }
    report.add("airlock", samples);
    Ok(())
}

/// Every part for one system, in order.
async fn run_all<S: SessionSystem>(
    system: &S,
    plan: &SessionPlan,
    report: &mut Report,
    context: &mut Vec<String>,
) -> Result<()> {
    let name = system.name().to_owned();
    eprintln!("[{name}] sessions: open->output, {} sessions", plan.opens);
    open_to_output(system, plan, report).await?;
    eprintln!(
        "[{name}] sessions: keystroke->echo, {} lines",
        plan.round_trips
    );
    round_trips(system, plan, false, report).await?;
    eprintln!(
        "[{name}] sessions: line->stdout+stderr, {} lines",
        plan.round_trips.div_ceil(5)
    );
    round_trips(system, plan, true, report).await?;
    eprintln!(
        "[{name}] sessions: streaming {} bytes, {} times",
        plan.stream_bytes, plan.stream_repetitions
    );
    throughput(system, plan, report, context).await
}

/// A fresh airlock server with one running environment; also makes the podman image's
/// `tarball` from its skeleton when given and missing.
pub async fn measure_airlock(
    binary: &Path,
    scratch: &Path,
    tarball: Option<&Path>,
    plan: &SessionPlan,
    report: &mut Report,
    context: &mut Vec<String>,
) -> Result<()> {
    let data_dir = scratch.join("airlock-s");
    let log = scratch.join("airlock-sessions.log");
    let server = Server::start(binary, &data_dir, &log).await?;
    eprintln!("[airlock] sessions: server on {}", server.address);
    let api = server.api();
    let measured = crate::interruptible(async {
        if let Some(tarball) = tarball.filter(|path| !path.exists()) {
            crate::podman_rootfs(&server.runtime_root(), scratch, tarball)?;
        }
        let mut client = api.client();
        let environment = api.create(&mut client).await?;
        let system = AirlockSessions {
            address: server.address,
            token: server.token.clone(),
            environment,
        };
        let before = host::cpu_snapshot();
        run_all(&system, plan, report, context).await?;
        if plan.terminal_opens > 0 {
            eprintln!(
                "[airlock] sessions: terminal open->prompt, {} sessions",
                plan.terminal_opens
            );
            terminal_opens(&system, plan, report).await?;
        }
        context.push(format!(
            "airlock sessions phase: {}; server at the end: {}",
            host::cpu_load_between(before, host::cpu_snapshot()),
            server.resource_usage()
        ));
        Ok(())
    })
    .await;
    eprintln!("[airlock] sessions: cleanup");
    server.shut_down(report).await;
    measured.context("airlock sessions")
}

/// A fresh podman service with `runtime` and one running container of the benchmark image.
#[allow(clippy::too_many_arguments)]
pub async fn measure_podman(
    runtime: &str,
    usr: UsrMode,
    scratch: &Path,
    socket: &Path,
    tarball: &Path,
    plan: &SessionPlan,
    report: &mut Report,
    context: &mut Vec<String>,
) -> Result<()> {
    // Short: podman refuses a run root longer than 50 characters.
    let dir = scratch.join(format!("podman-{runtime}-s"));
    let log = scratch.join(format!("podman-sessions-{runtime}.log"));
    let mut service = Service::start(runtime, &dir, socket, &log)
        .await
        .with_context(|| format!("starting podman with {runtime}"))?;
    let measured = async {
        let version = service.versions().await?;
        context.push(format!("podman ({runtime}) sessions: {version}"));
        service.import_image(tarball).await?;
        let api = service.api(usr);
        let mut client = api.client();
        let container = api.create(&mut client).await?;
        let system = PodmanSessions {
            name: api.name().to_owned(),
            socket: socket.to_owned(),
            container,
        };
        let before = host::cpu_snapshot();
        let result = crate::interruptible(run_all(&system, plan, report, context)).await;
        context.push(format!(
            "podman ({runtime}) sessions phase: {}",
            host::cpu_load_between(before, host::cpu_snapshot())
        ));
        result
    }
    .await;
    eprintln!("[podman ({runtime})] sessions: cleanup");
    service.shut_down(report).await;
    measured.with_context(|| format!("podman ({runtime}) sessions"))
}
