//! Sessions: someone inside an environment — an interactive shell, a streamed command, a port
//! forward. Each is a record (who, where, what, how it ended, bytes each way) and, for a
//! terminal, a recording in asciicast v2 ([`Recorder`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Invalid;
use crate::ids::{EnvironmentId, SessionId, UserId};
use crate::ports::{Connection, Process};

/// What a session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A command (or login shell) on a terminal: recorded whole.
    Terminal,
    /// A command with separate stdin/stdout/stderr: recorded as argv, exit code and sizes.
    Exec,
    /// TCP to a port inside the environment, through the API.
    PortForward,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Terminal => "terminal",
            SessionKind::Exec => "exec",
            SessionKind::PortForward => "port_forward",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Terminal, Self::Exec, Self::PortForward]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One session, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub environment: EnvironmentId,
    /// Who opened it.
    pub user: UserId,
    pub kind: SessionKind,
    /// The command; for a port forward, the port as its one element.
    pub argv: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The command's exit code (128 + signal when killed); none for port forwards.
    pub exit_code: Option<i32>,
    /// Bytes the client sent in.
    pub bytes_in: u64,
    /// Bytes sent back to the client (stdout and stderr together).
    pub bytes_out: u64,
    /// Whether a recording exists (terminal sessions).
    pub recorded: bool,
}

/// A session just opened: its record, and its command's streams or its connection. The
/// server relays them and ends it with [`crate::Engine::end_session`].
pub struct LiveSession {
    pub session: Session,
    pub io: SessionIo,
}

pub enum SessionIo {
    Process(Process),
    Connection(Box<dyn Connection>),
}

impl fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

impl TerminalSize {
    pub const DEFAULT: TerminalSize = TerminalSize { cols: 80, rows: 24 };

    pub fn new(cols: u16, rows: u16) -> Result<Self, Invalid> {
        if !(1..=1000).contains(&cols) || !(1..=1000).contains(&rows) {
            return Err(Invalid::new("size", "columns and rows must be 1 to 1000"));
        }
        Ok(Self { cols, rows })
    }
}

/// The signals a client may send to a session's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
    Cont,
    Stop,
    Winch,
}

impl Signal {
    const ALL: [Signal; 10] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Kill,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Term,
        Signal::Cont,
        Signal::Stop,
        Signal::Winch,
    ];

    /// The name without `SIG`, as `kill -l` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Term => "TERM",
            Signal::Cont => "CONT",
            Signal::Stop => "STOP",
            Signal::Winch => "WINCH",
        }
    }

    /// Its number on Linux.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
            Signal::Cont => 18,
            Signal::Stop => 19,
            Signal::Winch => 28,
        }
    }

    pub fn from_number(number: i32) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|signal| signal.number() == number)
    }
}

impl FromStr for Signal {
    type Err = Invalid;

    /// `INT`, `SIGINT`, `int` or `2`.
    fn from_str(text: &str) -> Result<Self, Invalid> {
        let upper = text.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Self::ALL
            .into_iter()
            .find(|signal| signal.name() == name || signal.number().to_string() == name)
            .ok_or_else(|| Invalid::new("signal", format!("unknown signal `{text}`")))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

/// Writes a terminal session as asciicast v2 (<https://docs.asciinema.org/manual/asciicast/v2/>):
/// a header line, then one `[seconds, "o", text]` line per chunk of output and
/// `[seconds, "r", "COLSxROWS"]` per resize. Input is not recorded (it would hold passwords
/// typed at prompts that do not echo). Output is cut at `limit` bytes of recording, with a
/// last line saying so. Bytes split inside a UTF-8 sequence wait for the rest.
#[derive(Debug)]
pub struct Recorder {
    limit: u64,
    written: u64,
    /// An incomplete UTF-8 sequence at the end of the last chunk.
    pending: Vec<u8>,
    truncated: bool,
}

impl Recorder {
    /// The header line (with its newline) and a recorder that keeps at most `limit` bytes.
    pub fn start(
        size: TerminalSize,
        started: DateTime<Utc>,
        command: &[String],
        title: &str,
        limit: u64,
    ) -> (Self, Vec<u8>) {
        let header = serde_json::json!({
            "version": 2,
            "width": size.cols,
            "height": size.rows,
            "timestamp": started.timestamp(),
            "command": command.join(" "),
            "title": title,
            "env": {"TERM": "xterm-256color"},
        });
        let mut line = serde_json::to_vec(&header).expect("a header serializes");
        line.push(b'\n');
        let recorder = Self {
            limit,
            written: line.len() as u64,
            pending: Vec::new(),
            truncated: false,
        };
        (recorder, line)
    }

    /// The line to append for output `bytes` at `seconds` into the session, if any.
    pub fn output(&mut self, seconds: f64, bytes: &[u8]) -> Option<Vec<u8>> {
        self.pending.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // Keep a sequence cut at the end (at most 3 bytes) for the next chunk.
            Err(error) if error.error_len().is_none() => error.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        if complete == 0 {
            return None;
        }
        let rest = self.pending.split_off(complete);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        self.event(seconds, "o", &text)
    }

    /// The line to append for a resize at `seconds`.
    pub fn resize(&mut self, seconds: f64, size: TerminalSize) -> Option<Vec<u8>> {
        self.event(seconds, "r", &format!("{}x{}", size.cols, size.rows))
    }

    /// Whether output was cut at the limit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    fn event(&mut self, seconds: f64, code: &str, data: &str) -> Option<Vec<u8>> {
        if self.truncated {
            return None;
        }
        let seconds = (seconds.max(0.0) * 1e6).round() / 1e6;
        let mut line = serde_json::to_vec(&serde_json::json!([seconds, code, data]))
            .expect("an event serializes");
        line.push(b'\n');
        if self.written + line.len() as u64 > self.limit {
            self.truncated = true;
            let note = "\r\n[airlock: the recording reached its size limit here]\r\n";
            let mut line = serde_json::to_vec(&serde_json::json!([seconds, "o", note]))
                .expect("an event serializes");
            line.push(b'\n');
            return Some(line);
        }
        self.written += line.len() as u64;
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> serde_json::Value {
        serde_json::from_slice(line).expect("valid JSON")
    }

    #[test]
    fn a_recording_is_asciicast_v2() {
        let started = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (mut recorder, header) = Recorder::start(
            TerminalSize::new(100, 30).unwrap(),
            started,
            &["bash".into(), "-l".into()],
            "env_x",
            1 << 20,
        );
        let header = parse(&header);
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 100);
        assert_eq!(header["height"], 30);
        assert_eq!(header["timestamp"], 1_700_000_000);
        assert_eq!(header["command"], "bash -l");
        let line = recorder.output(0.5, b"hello\r\n").unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(parse(&line), serde_json::json!([0.5, "o", "hello\r\n"]));
        let line = recorder
            .resize(1.25, TerminalSize::new(120, 40).unwrap())
            .unwrap();
        assert_eq!(parse(&line), serde_json::json!([1.25, "r", "120x40"]));
    }

    #[test]
    fn utf8_split_across_chunks_waits_for_its_end() {
        let (mut recorder, _) =
            Recorder::start(TerminalSize::DEFAULT, Utc::now(), &[], "t", 1 << 20);
        let snowman = "☃".as_bytes();
        assert_eq!(recorder.output(0.1, &snowman[..1]), None);
        let line = recorder.output(0.2, &snowman[1..]).unwrap();
        assert_eq!(parse(&line), serde_json::json!([0.2, "o", "☃"]));
        // Invalid bytes are not held back forever.
        let line = recorder.output(0.3, b"\xff!").unwrap();
        assert_eq!(parse(&line)[2], "\u{fffd}!");
    }

    #[test]
    fn the_recording_stops_at_its_limit_and_says_so() {
        let (mut recorder, header) =
            Recorder::start(TerminalSize::DEFAULT, Utc::now(), &[], "t", 200);
        let mut total = header.len();
        let mut lines = 0;
        while let Some(line) = recorder.output(0.1, b"0123456789") {
            total += line.len();
            lines += 1;
            assert!(lines < 100, "the recorder never stopped");
        }
        assert!(recorder.truncated());
        // Everything but the note fits the limit; the note is the last line.
        assert!(total <= 200 + 100, "{total}");
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!("INT".parse::<Signal>().unwrap(), Signal::Int);
        assert_eq!("sigterm".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::Kill);
        assert!("SIGSEGV".parse::<Signal>().is_err());
        assert_eq!(Signal::from_number(28), Some(Signal::Winch));
    }
}
