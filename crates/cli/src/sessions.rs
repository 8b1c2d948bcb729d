//! Inside environments from the command line: `shell` (an ssh-like terminal), streamed
//! `exec`, `cp`, `port-forward`, and session records (`session list|get|replay`).

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use airlock_api as api;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::Connection;
use crate::client::{Client, WebSocket, path_segment};
use crate::commands::resolve;
use crate::output::print_json;

#[derive(Subcommand)]
pub enum SessionCommand {
    /// List your sessions (or everyone's, as an auditor or admin).
    #[command(alias = "ls")]
    List {
        /// Only those in this environment (id or name).
        #[arg(long = "env")]
        environment: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Show one session.
    Get { session: String },
    /// Play a terminal session's recording here, at its own pace (or write the asciicast
    /// file with --raw, for `asciinema play`).
    Replay {
        session: String,
        /// Play this many times faster.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Never wait longer than this many seconds between two outputs.
        #[arg(long, default_value_t = 2.0)]
        idle_limit: f64,
        /// Write the asciicast v2 file to standard output instead.
        #[arg(long)]
        raw: bool,
    },
}

/// Options of a streamed command.
pub struct Stream {
    pub argv: Vec<String>,
    pub tty: bool,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// Send this process's standard input to the command as it comes.
    pub stdin: bool,
}

/// The size of the terminal on standard output, if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Puts the terminal on standard input in raw mode (keys go through as typed, ^C included)
/// until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        let Ok(original) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = original.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        if nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw)
            .is_err()
        {
            return Self(None);
        }
        Self(Some(original))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                original,
            );
        }
    }
}

/// Reads standard input on a thread of its own (a blocked read must not hold up the exit)
/// and hands it over in chunks; an empty chunk is its end.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel(8);
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = std::io::Read::read(&mut std::io::stdin(), &mut buffer).unwrap_or(0);
            if sender.blocking_send(buffer[..n].to_vec()).is_err() || n == 0 {
                return;
            }
        }
    });
    receiver
}

fn control(message: &api::SessionMessage) -> Message {
    Message::Text(serde_json::to_string(message).expect("serializes").into())
}

/// Runs a command in an environment with live streams; its exit code.
pub async fn stream(client: &Client, environment: &str, options: Stream) -> Result<i32> {
    let id = resolve(client, environment).await?;
    let mut query: Vec<String> = options
        .argv
        .iter()
        .map(|arg| format!("command={}", path_segment(arg)))
        .collect();
    let size = terminal_size();
    if options.tty {
        query.push("tty=true".into());
        if let Some((cols, rows)) = size {
            query.push(format!("cols={cols}&rows={rows}"));
        }
    }
    for (name, value) in &options.env {
        query.push(format!("env={}", path_segment(&format!("{name}={value}"))));
    }
    if let Some(cwd) = &options.cwd {
        query.push(format!("cwd={}", path_segment(cwd)));
    }
    let socket = client
        .websocket(&format!(
            "/v1/environments/{id}/exec/stream?{}",
            query.join("&")
        ))
        .await?;
    // Raw mode only when both ends are terminals: keys (^C too) go inside as typed.
    let local_terminal = options.tty && nix::unistd::isatty(0).unwrap_or(false);
    let _raw = local_terminal.then(RawMode::enter);
    relay(socket, options.tty, options.stdin || options.tty).await
}

async fn relay(mut socket: WebSocket, tty: bool, forward_stdin: bool) -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut input = if forward_stdin {
        read_stdin()
    } else {
        let (_, receiver) = mpsc::channel(1);
        receiver
    };
    let mut input_open = forward_stdin;
    if !forward_stdin {
        socket.send(control(&api::SessionMessage::Eof)).await?;
    }
    let mut resized = signal(SignalKind::window_change())?;
    let mut interrupted = signal(SignalKind::interrupt())?;
    let mut terminated = signal(SignalKind::terminate())?;
    let mut hung_up = signal(SignalKind::hangup())?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Binary(data))) => match data.first() {
                    Some(1) => { stdout.write_all(&data[1..])?; stdout.flush()?; }
                    Some(2) => { stderr.write_all(&data[1..])?; stderr.flush()?; }
                    _ => {}
                },
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<api::SessionMessage>(&text) {
                        Ok(api::SessionMessage::Exit { exit_code, oom_killed }) => {
                            if oom_killed {
                                eprint!("airlock: a process was killed for memory\r\n");
                            }
                            return Ok(exit_code);
                        }
                        Ok(api::SessionMessage::Closed { reason }) => {
                            bail!("the session ended: {reason}");
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let reason = frame.map(|frame| frame.reason.to_string()).unwrap_or_default();
                    bail!("the session closed without an exit code {reason}");
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error).context("the session's connection broke"),
                None => bail!("the session's connection closed"),
            },
            chunk = input.recv(), if input_open => match chunk {
                Some(chunk) if !chunk.is_empty() => {
                    let mut frame = Vec::with_capacity(chunk.len() + 1);
                    frame.push(0);
                    frame.extend_from_slice(&chunk);
                    socket.send(Message::Binary(frame.into())).await?;
                }
                _ => {
                    input_open = false;
                    // On a terminal the end of input is ^D, typed; a pipe's end is EOF.
                    if !tty {
                        socket.send(control(&api::SessionMessage::Eof)).await?;
                    }
                }
            },
            _ = resized.recv() => {
                if let (true, Some((cols, rows))) = (tty, terminal_size()) {
                    socket.send(control(&api::SessionMessage::Resize { cols, rows })).await?;
                }
            }
            _ = interrupted.recv() => {
                socket.send(control(&api::SessionMessage::Signal { signal: "INT".into() })).await?;
            }
            _ = terminated.recv() => {
                socket.send(control(&api::SessionMessage::Signal { signal: "TERM".into() })).await?;
            }
            _ = hung_up.recv() => {
                socket.send(control(&api::SessionMessage::Signal { signal: "HUP".into() })).await?;
            }
        }
    }
}

/// `ENV:/path` → (environment, path); a local path → None.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (environment, path) = spec.split_once(':')?;
    (!environment.is_empty() && path.starts_with('/') && !environment.contains('/'))
        .then_some((environment, path))
}

/// Copies one file in or out: exactly one of `source` and `target` is `ENV:/path`; `-` is
/// standard input or output.
pub async fn copy(connection: &Connection, source: &str, target: &str) -> Result<i32> {
    let client = Client::new(connection)?;
    match (remote(source), remote(target)) {
        (Some((environment, path)), None) => {
            let id = resolve(&client, environment).await?;
            let response = client
                .fetch(&format!(
                    "/v1/environments/{id}/files?path={}",
                    path_segment(path)
                ))
                .await?;
            let mut body = response.bytes_stream();
            if target == "-" {
                let mut out = std::io::stdout();
                while let Some(chunk) = body.next().await {
                    out.write_all(&chunk.context("receiving the file")?)?;
                }
                out.flush()?;
                return Ok(0);
            }
            let target = std::path::Path::new(target);
            let target = if target.is_dir() {
                let name = path.rsplit('/').next().filter(|name| !name.is_empty());
                target.join(name.context("the source names no file")?)
            } else {
                target.to_path_buf()
            };
            // Written beside the target and renamed: a broken copy leaves nothing half-written.
            let partial = target.with_extension("airlock-partial");
            let mut file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("creating {}", partial.display()))?;
            let copied: Result<()> = async {
                use tokio::io::AsyncWriteExt;
                while let Some(chunk) = body.next().await {
                    file.write_all(&chunk.context("receiving the file")?)
                        .await?;
                }
                file.sync_all().await?;
                Ok(())
            }
            .await;
            if let Err(error) = copied {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
            tokio::fs::rename(&partial, &target).await?;
            Ok(0)
        }
        (None, Some((environment, path))) => {
            let id = resolve(&client, environment).await?;
            let (body, mode) = if source == "-" {
                let stdin = stdin_stream();
                (reqwest::Body::wrap_stream(stdin), None)
            } else {
                let file = tokio::fs::File::open(source)
                    .await
                    .with_context(|| format!("opening {source}"))?;
                let metadata = file.metadata().await?;
                if !metadata.is_file() {
                    bail!("{source} is not a regular file");
                }
                use std::os::unix::fs::PermissionsExt;
                let mode = metadata.permissions().mode() & 0o7777;
                (reqwest::Body::from(file), Some(mode))
            };
            let mut url = format!("/v1/environments/{id}/files?path={}", path_segment(path));
            if let Some(mode) = mode {
                url.push_str(&format!("&mode={mode:o}"));
            }
            let copied: api::CopiedFile = client.upload(Method::PUT, &url, body).await?;
            if connection.json {
                print_json(&copied);
            }
            Ok(0)
        }
        (Some(_), Some(_)) => bail!("copy between two environments through this machine instead"),
        (None, None) => bail!("one of the two must be ENV:/absolute/path"),
    }
}

/// Standard input as a stream of chunks, read on a thread of its own.
fn stdin_stream() -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    let receiver = read_stdin();
    futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Some(chunk) if !chunk.is_empty() => Some((Ok(chunk), receiver)),
            _ => None,
        }
    })
}

/// Listens on `address:local` and forwards each connection to `remote` in the environment,
/// until interrupted.
pub async fn port_forward(
    connection: &Connection,
    environment: &str,
    ports: &str,
    address: &str,
) -> Result<i32> {
    let client = std::sync::Arc::new(Client::new(connection)?);
    let (local, remote) = match ports.split_once(':') {
        Some((local, remote)) => (local.parse::<u16>()?, remote.parse::<u16>()?),
        None => {
            let port = ports.parse::<u16>().context("PORT or LOCAL:REMOTE")?;
            (port, port)
        }
    };
    let id = resolve(&client, environment).await?;
    let path = format!("/v1/environments/{id}/ports/{remote}/forward");
    // One connection first: a closed port or a refused caller is an error now, not later.
    let probe = client.websocket(&path).await?;
    drop(probe);
    let listener = tokio::net::TcpListener::bind((address, local))
        .await
        .with_context(|| format!("listening on {address}:{local}"))?;
    eprintln!(
        "forwarding {} to port {remote} of {environment}",
        listener.local_addr()?
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let (client, path) = (client.clone(), path.clone());
                tokio::spawn(async move {
                    match client.websocket(&path).await {
                        Ok(socket) => forward(stream, socket).await,
                        Err(error) => eprintln!("airlock: {error:#}"),
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

async fn forward(stream: tokio::net::TcpStream, socket: WebSocket) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = stream.into_split();
    let (mut sink, mut source) = socket.split();
    let upstream = async {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buffer[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let downstream = async {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Binary(data) if writer.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

pub async fn session(connection: &Connection, command: SessionCommand) -> Result<i32> {
    let client = Client::new(connection)?;
    match command {
        SessionCommand::List { environment, all } => {
            let mut query = format!("/v1/sessions?all={all}");
            if let Some(environment) = environment {
                let id = resolve(&client, &environment).await?;
                query.push_str(&format!("&environment={id}"));
            }
            let sessions = client
                .all_pages(&query, |page: api::SessionList| {
                    (page.items, page.next_cursor)
                })
                .await?;
            if connection.json {
                print_json(&sessions);
                return Ok(0);
            }
            println!(
                "{:<30} {:<30} {:<13} {:<8} {:<6} COMMAND",
                "ID", "ENVIRONMENT", "KIND", "EXIT", "REC"
            );
            for session in sessions {
                let exit = match (session.ended_at, session.exit_code) {
                    (None, _) => "open".to_owned(),
                    (Some(_), Some(code)) => code.to_string(),
                    (Some(_), None) => "-".to_owned(),
                };
                println!(
                    "{:<30} {:<30} {:<13} {:<8} {:<6} {}",
                    session.id,
                    session.environment_id,
                    session.kind,
                    exit,
                    if session.recorded { "yes" } else { "no" },
                    session.argv.join(" ")
                );
            }
            Ok(0)
        }
        SessionCommand::Get { session } => {
            let session: api::Session = client
                .send(
                    Method::GET,
                    &format!("/v1/sessions/{}", path_segment(&session)),
                    None::<&()>,
                    &[],
                )
                .await?;
            print_json(&session);
            Ok(0)
        }
        SessionCommand::Replay {
            session,
            speed,
            idle_limit,
            raw,
        } => {
            let recording = client
                .fetch(&format!(
                    "/v1/sessions/{}/recording",
                    path_segment(&session)
                ))
                .await?
                .bytes()
                .await
                .context("receiving the recording")?;
            let mut out = std::io::stdout();
            if raw {
                out.write_all(&recording)?;
                return Ok(0);
            }
            replay(&recording, speed, idle_limit, &mut out).await?;
            Ok(0)
        }
    }
}

/// Writes an asciicast v2 recording's output to `out` at its pace (`speed` times faster, no
/// pause longer than `idle_limit` seconds).
pub async fn replay(
    recording: &[u8],
    speed: f64,
    idle_limit: f64,
    out: &mut impl Write,
) -> Result<()> {
    if speed <= 0.0 {
        bail!("--speed must be above 0");
    }
    let mut lines = recording.split(|byte| *byte == b'\n');
    let header: serde_json::Value =
        serde_json::from_slice(lines.next().unwrap_or_default()).context("not asciicast")?;
    if header["version"] != 2 {
        bail!("not an asciicast v2 recording");
    }
    let mut previous = 0.0f64;
    for line in lines.filter(|line| !line.is_empty()) {
        let (time, code, data): (f64, String, String) =
            serde_json::from_slice(line).context("a damaged recording event")?;
        if code != "o" {
            continue;
        }
        let pause = ((time - previous).max(0.0)).min(idle_limit) / speed;
        previous = time;
        if pause > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        }
        out.write_all(data.as_bytes())?;
        out.flush()?;
    }
    Ok(())
}
