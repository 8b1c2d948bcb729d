//! Live sessions: relaying a session's WebSocket to its command (or its TCP connection),
//! writing terminal recordings, and closing every session at shutdown. The engine opened
//! the session (authorized, audited, recorded it); here it runs until the command ends, the
//! client leaves or the server stops, and then the engine records how it ended.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_api as api;
use airlock_core::engine::SessionEnd;
use airlock_core::ids::{SessionId, UserId};
use airlock_core::model::Principal;
use airlock_core::ports::{Connection, Process, ProcessExit, Reader};
use airlock_core::session::{LiveSession, Recorder, Session, SessionIo, Signal, TerminalSize};
use airlock_core::{Engine, Origin};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};

/// How often an open session checks that its opener may still be inside, marks its
/// environment as in use (well within the shortest idle timeout a create may ask for, 60 s
/// by default), and pings its client.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);

/// How long output may still arrive after the command ended (a background process may hold
/// its streams open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);

/// Why a terminal session ends when its recording cannot be written.
const RECORDING_FAILED: &str = "the session could not be recorded";

/// Bytes read from a stream at once.
const CHUNK: usize = 32 * 1024;

/// How many sessions may be open at once.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Bytes of one recording at most.
    pub recording: u64,
    /// Sessions one user may have open.
    pub per_user: usize,
    /// Sessions the server relays in all (each holds a helper process and a terminal or
    /// pipes on the host).
    pub total: usize,
}

/// The sessions this server relays.
pub struct Sessions {
    recordings: PathBuf,
    limits: SessionLimits,
    /// Seats taken, by user (a seat is taken before a session opens, freed once its end is
    /// recorded): the sessions open, for the limits and for shutdown.
    seats: std::sync::Mutex<std::collections::HashMap<UserId, usize>>,
    closing: watch::Sender<bool>,
    /// Told when the last seat is freed.
    all_closed: Notify,
}

impl Sessions {
    pub fn new(recordings: PathBuf, limits: SessionLimits) -> Self {
        Self {
            recordings,
            limits,
            seats: Default::default(),
            closing: watch::channel(false).0,
            all_closed: Notify::new(),
        }
    }

    /// A seat for one more session of `user`, or why there is none: 429 past the user's
    /// limit, 503 past the server's; each with when to try again.
    pub fn seat(self: &Arc<Self>, user: &UserId) -> Result<Seat, airlock_core::Error> {
        let mut seats = self.seats.lock().expect("seats lock");
        let total: usize = seats.values().sum();
        let retry_after = Duration::from_secs(5);
        if total >= self.limits.total {
            return Err(airlock_core::Error::Overloaded {
                reason: format!(
                    "the server relays {total} sessions, the most it may; try again later"
                ),
                retry_after,
            });
        }
        let mine = seats.entry(user.clone()).or_default();
        if *mine >= self.limits.per_user {
            return Err(airlock_core::Error::RateLimited { retry_after });
        }
        *mine += 1;
        Ok(Seat {
            sessions: self.clone(),
            user: user.clone(),
        })
    }

    /// Where a terminal session's asciicast recording is.
    pub fn recording_path(&self, id: &SessionId) -> PathBuf {
        self.recordings.join(format!("{id}.cast"))
    }

    /// Ends every session (each records its end) and waits for them, at most `grace`.
    pub async fn close_all(&self, grace: Duration) {
        self.closing.send_replace(true);
        let _ = tokio::time::timeout(grace, async {
            loop {
                let closed = self.all_closed.notified();
                if self.seats.lock().expect("seats lock").is_empty() {
                    return;
                }
                closed.await;
            }
        })
        .await;
    }
}

/// One user's place among the open sessions, freed when dropped.
pub struct Seat {
    sessions: Arc<Sessions>,
    user: UserId,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = self.sessions.seats.lock().expect("seats lock");
        if let Some(count) = seats.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                seats.remove(&self.user);
            }
        }
        if seats.is_empty() {
            self.sessions.all_closed.notify_waiters();
        }
    }
}

/// Runs a session that the engine opened over an upgraded WebSocket (recorded when it has a
/// `terminal`, of that first size), then records its end. The caller holds the session's
/// [`Seat`] until this returns.
pub async fn run(
    sessions: Arc<Sessions>,
    engine: Arc<Engine>,
    origin: Origin,
    principal: Principal,
    live: LiveSession,
    terminal: Option<TerminalSize>,
    socket: WebSocket,
) {
    let LiveSession { session, io } = live;
    let mut ending = match io {
        SessionIo::Process(process) => {
            let inside = Inside {
                sessions: &sessions,
                engine: &engine,
                principal: &principal,
                session: &session,
            };
            relay_process(&inside, process, terminal, socket).await
        }
        SessionIo::Connection(connection) => {
            let inside = Inside {
                sessions: &sessions,
                engine: &engine,
                principal: &principal,
                session: &session,
            };
            relay_connection(&inside, connection, socket).await
        }
    };
    // Recorded before the client hears the end, so what it reads next is already true.
    engine.end_session(&origin, &session, ending.end).await;
    for message in ending.farewell {
        if ending.socket.send(message).await.is_err() {
            break;
        }
    }
}

/// A relay's context: the session, who opened it, and where it runs.
struct Inside<'a> {
    sessions: &'a Arc<Sessions>,
    engine: &'a Arc<Engine>,
    principal: &'a Principal,
    session: &'a Session,
}

impl Inside<'_> {
    /// Still allowed? Otherwise why the session ends.
    async fn keep_alive(&self) -> Result<(), &'static str> {
        match self.engine.keep_alive(self.principal, self.session).await {
            Ok(()) => Ok(()),
            Err(airlock_core::Error::Internal(error)) => {
                tracing::warn!(error, session = %self.session.id, "could not check a session");
                Ok(())
            }
            Err(error) => {
                tracing::info!(%error, session = %self.session.id, "a session's access ended");
                Err("access to the environment ended")
            }
        }
    }
}

/// How a relay ended: what to record, and what to tell the client last.
struct Ending {
    end: SessionEnd,
    socket: WebSocket,
    /// The last messages (an exit code, a reason, the close frame); none when the client
    /// left first.
    farewell: Vec<Message>,
}

fn close_frame(reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: reason.into(),
    }))
}

/// Ends a session whose WebSocket never opened (the upgrade failed).
pub async fn abandon(engine: Arc<Engine>, origin: Origin, live: LiveSession) {
    drop(live.io);
    engine
        .end_session(&origin, &live.session, SessionEnd::default())
        .await;
}

/// What the relay loop hears from the reader tasks.
enum Output {
    Data(u8, Vec<u8>),
    Done,
}

/// Reads a stream in chunks into `sink`, tagged with its channel; says when it ended.
fn pump(
    channel: u8,
    mut reader: Reader,
    sink: mpsc::Sender<Output>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Output::Data(channel, buffer[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Output::Done).await;
    })
}

/// Appends a terminal session's recording to its file as it happens.
struct Recording {
    recorder: Recorder,
    file: tokio::io::BufWriter<tokio::fs::File>,
    /// SHA-256 of everything written, for the `session.end` event: the trail vouches for
    /// the recording.
    digest: Sha256,
    started: Instant,
}

impl Recording {
    async fn open(
        sessions: &Sessions,
        session: &Session,
        size: TerminalSize,
    ) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&sessions.recordings).await?;
        let file = tokio::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(sessions.recording_path(&session.id))
            .await?;
        let (recorder, header) = Recorder::start(
            size,
            session.started_at,
            &session.argv,
            session.environment.as_str(),
            sessions.limits.recording,
        );
        let mut recording = Self {
            recorder,
            file: tokio::io::BufWriter::new(file),
            digest: Sha256::new(),
            started: Instant::now(),
        };
        recording.write(&header).await?;
        Ok(recording)
    }

    async fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.digest.update(line);
        self.file.write_all(line).await
    }

    async fn output(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let seconds = self.started.elapsed().as_secs_f64();
        match self.recorder.output(seconds, bytes) {
            Some(line) => self.write(&line).await,
            None => Ok(()),
        }
    }

    async fn resize(&mut self, size: TerminalSize) -> std::io::Result<()> {
        let seconds = self.started.elapsed().as_secs_f64();
        match self.recorder.resize(seconds, size) {
            Some(line) => self.write(&line).await,
            None => Ok(()),
        }
    }

    /// Flushes and syncs the file; the SHA-256 of all of it, in hex.
    async fn finish(mut self) -> String {
        let _ = self.file.flush().await;
        let _ = self.file.get_ref().sync_all().await;
        self.digest
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

fn control_message(message: &api::SessionMessage) -> Message {
    Message::Text(
        serde_json::to_string(message)
            .expect("a session message serializes")
            .into(),
    )
}

async fn relay_process(
    inside: &Inside<'_>,
    process: Process,
    terminal: Option<TerminalSize>,
    mut socket: WebSocket,
) -> Ending {
    let (sessions, session) = (inside.sessions, inside.session);
    let Process {
        stdin,
        stdout,
        stderr,
        control,
    } = process;
    let mut end = SessionEnd::default();
    let mut recording = match terminal {
        Some(size) => match Recording::open(sessions, session, size).await {
            Ok(recording) => Some(recording),
            Err(error) => {
                // A session that cannot be recorded does not run.
                tracing::error!(%error, session = %session.id, "cannot write the recording");
                let _ = control.signal(Signal::Kill);
                return Ending {
                    end,
                    socket,
                    farewell: vec![close_frame("the session cannot be recorded")],
                };
            }
        },
        None => None,
    };
    let _ = socket
        .send(control_message(&api::SessionMessage::Started {
            session_id: session.id.to_string(),
        }))
        .await;

    let (sink, mut output) = mpsc::channel(16);
    let mut streams = 1;
    let stdout_task = pump(1, stdout, sink.clone());
    let stderr_task = stderr.map(|stderr| {
        streams += 1;
        pump(2, stderr, sink.clone())
    });
    drop(sink);

    let mut closing = sessions.closing.subscribe();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    keep_alive.tick().await;
    let waiting = control.clone();
    let exited = async move { waiting.wait().await };
    tokio::pin!(exited);
    // Input goes to the command from a task of its own: a command that is not reading must
    // never stop this loop from draining its output (it would block writing, and both wait).
    // While a chunk waits for room, the socket is not read: backpressure to the client.
    let (input, feed) = mpsc::channel::<Input>(8);
    let feeder = tokio::spawn(feed_stdin(stdin, feed));
    let mut pending: Option<Input> = None;
    let mut stdin_open = true;
    let mut exit: Option<ProcessExit> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let reason = loop {
        let draining = async {
            match drain_until {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            permit = input.reserve(), if pending.is_some() => match permit {
                Ok(permit) => permit.send(pending.take().expect("checked")),
                Err(_) => {
                    // The command's stdin is closed: what it was sent goes nowhere.
                    pending = None;
                    stdin_open = false;
                }
            },
            message = socket.recv(), if pending.is_none() => match message {
                Some(Ok(Message::Binary(data))) => {
                    if data.first() == Some(&0) && stdin_open {
                        end.bytes_in += data.len() as u64 - 1;
                        offer(&input, &mut pending, Input::Data(data[1..].to_vec()));
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str::<api::SessionMessage>(&text) {
                        Ok(api::SessionMessage::Resize { cols, rows }) => {
                            if let Ok(size) = TerminalSize::new(cols, rows) {
                                let _ = control.resize(size);
                                if let Some(recording) = recording.as_mut()
                                    && recording.resize(size).await.is_err()
                                {
                                    break Some(RECORDING_FAILED);
                                }
                            }
                        }
                        Ok(api::SessionMessage::Signal { signal }) => {
                            if let Ok(signal) = signal.parse::<Signal>() {
                                let _ = control.signal(signal);
                            }
                        }
                        Ok(api::SessionMessage::Eof) if stdin_open => {
                            // Closing a pipe is the end of input; a terminal needs ^D.
                            stdin_open = false;
                            offer(&input, &mut pending, Input::End);
                        }
                        _ => {}
                    }
                }
                // The client left: nobody sees the command's output any more. Its streams and
                // control pipe close when this returns, and the helper kills its whole tree.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
            chunk = output.recv() => match chunk {
                Some(Output::Data(channel, data)) => {
                    end.bytes_out += data.len() as u64;
                    // A terminal session that can no longer be recorded does not go on.
                    if let Some(recording) = recording.as_mut()
                        && let Err(error) = recording.output(&data).await
                    {
                        tracing::error!(%error, session = %session.id, "writing the recording failed");
                        break Some(RECORDING_FAILED);
                    }
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(channel);
                    frame.extend_from_slice(&data);
                    if socket.send(Message::Binary(frame.into())).await.is_err() {
                        break None;
                    }
                }
                Some(Output::Done) => {
                    streams -= 1;
                    if streams == 0 && exit.is_some() {
                        break Some("exit");
                    }
                }
                None => {
                    if exit.is_some() {
                        break Some("exit");
                    }
                }
            },
            result = &mut exited, if exit.is_none() => {
                match result {
                    Ok(status) => {
                        exit = Some(status);
                        if streams == 0 {
                            break Some("exit");
                        }
                        drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                    }
                    Err(error) => {
                        tracing::warn!(%error, session = %session.id, "lost a session's command");
                        break Some("the command was lost");
                    }
                }
            },
            () = draining => break Some("exit"),
            () = closed(&mut closing) => break Some("the server is shutting down"),
            _ = keep_alive.tick() => {
                if let Err(reason) = inside.keep_alive().await {
                    break Some(reason);
                }
                let _ = socket.send(Message::Ping(Default::default())).await;
            }
        }
    };
    stdout_task.abort();
    if let Some(task) = stderr_task {
        task.abort();
    }
    feeder.abort();
    if let Some(recording) = recording {
        end.recording_sha256 = Some(recording.finish().await);
    }
    end.exit = exit;
    let farewell = match (reason, exit) {
        (Some(_), Some(exit)) => vec![
            control_message(&api::SessionMessage::Exit {
                exit_code: exit.exit_code,
                oom_killed: exit.oom_killed,
            }),
            close_frame("exit"),
        ],
        (Some(reason), None) => vec![
            control_message(&api::SessionMessage::Closed {
                reason: reason.into(),
            }),
            close_frame(reason),
        ],
        (None, _) => Vec::new(),
    };
    Ending {
        end,
        socket,
        farewell,
    }
}

async fn relay_connection(
    inside: &Inside<'_>,
    connection: Box<dyn Connection>,
    mut socket: WebSocket,
) -> Ending {
    let sessions = inside.sessions;
    let mut end = SessionEnd::default();
    let (reader, writer) = tokio::io::split(connection);
    let (sink, mut output) = mpsc::channel(16);
    let reading = pump(1, Box::pin(reader), sink);
    // As for a command's stdin: the connection is written from a task of its own.
    let (input, feed) = mpsc::channel::<Input>(8);
    let writing = tokio::spawn(feed_connection(writer, feed));
    let mut pending: Option<Input> = None;
    let mut closing = sessions.closing.subscribe();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
    keep_alive.tick().await;
    let reason = loop {
        tokio::select! {
            permit = input.reserve(), if pending.is_some() => match permit {
                Ok(permit) => permit.send(pending.take().expect("checked")),
                Err(_) => break Some("the connection closed"),
            },
            message = socket.recv(), if pending.is_none() => match message {
                Some(Ok(Message::Binary(data))) => {
                    end.bytes_in += data.len() as u64;
                    offer(&input, &mut pending, Input::Data(data.to_vec()));
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
            chunk = output.recv() => match chunk {
                Some(Output::Data(_, data)) => {
                    end.bytes_out += data.len() as u64;
                    if socket.send(Message::Binary(data.into())).await.is_err() {
                        break None;
                    }
                }
                Some(Output::Done) | None => break Some("the connection closed"),
            },
            () = closed(&mut closing) => break Some("the server is shutting down"),
            _ = keep_alive.tick() => {
                if let Err(reason) = inside.keep_alive().await {
                    break Some(reason);
                }
                let _ = socket.send(Message::Ping(Default::default())).await;
            }
        }
    };
    reading.abort();
    writing.abort();
    Ending {
        end,
        socket,
        farewell: reason.map(close_frame).into_iter().collect(),
    }
}

/// What the relay hands to a command's stdin.
enum Input {
    Data(Vec<u8>),
    /// The end of input: the pipe is closed.
    End,
}

/// Queues `chunk` for the feeder, or keeps it in `pending` until there is room.
fn offer(input: &mpsc::Sender<Input>, pending: &mut Option<Input>, chunk: Input) {
    match input.try_send(chunk) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(chunk)) => *pending = Some(chunk),
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Writes what arrives to the command's stdin until its end, or until the command stops
/// taking input.
async fn feed_stdin(mut stdin: airlock_core::ports::Writer, mut feed: mpsc::Receiver<Input>) {
    while let Some(input) = feed.recv().await {
        match input {
            Input::Data(bytes) => {
                if stdin.write_all(&bytes).await.is_err() || stdin.flush().await.is_err() {
                    return;
                }
            }
            Input::End => {
                let _ = stdin.shutdown().await;
                return;
            }
        }
    }
}

/// Writes what arrives to a connection until the client or the connection is done.
async fn feed_connection(mut writer: impl AsyncWrite + Unpin, mut feed: mpsc::Receiver<Input>) {
    while let Some(Input::Data(bytes)) = feed.recv().await {
        if write_all(&mut writer, &bytes).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Resolves once the server starts shutting down.
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

async fn write_all(writer: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> std::io::Result<()> {
    writer.write_all(data).await?;
    writer.flush().await
}
