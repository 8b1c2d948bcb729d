//! The server's side of the exec agent: the sandbox's init (`init/airlock-init.rs`) listens on
//! `sandboxes/<id>/agent.sock` and starts commands the server sends it, with stdio the server
//! passes along. Starting a command this way is a connection, a message and a fork inside
//! the sandbox, where the runtime helper (`helper.rs`) costs a process start and a container
//! runtime joining namespaces and cgroups. Sandboxes made before the agent existed have no
//! socket; their commands still go through the helper.
//!
//! The protocol is described in the init's documentation.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// What to run.
pub struct Command<'a> {
    pub argv: &'a [String],
    /// Every variable the command gets, baseline included, as `NAME=value`.
    pub env: &'a [String],
    /// Empty: the agent's own (the sandbox's root).
    pub cwd: &'a str,
    /// The command's stdio is a terminal, to become its controlling terminal.
    pub tty: bool,
}

/// Why a command could not be handed to the agent.
#[derive(Debug)]
pub enum StartError {
    /// The sandbox has no agent (made by an earlier version), or nothing listens on its
    /// socket (the sandbox stopped, or its init never had one): the helper finds out which.
    NoAgent,
    /// The request cannot be expressed (a NUL byte, or larger than the agent takes).
    Invalid(&'static str),
    Io(io::Error),
}

/// How long a connection may wait while the agent's backlog is full.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// The largest request the agent takes (argv, variables and directory together).
const MAX_REQUEST: usize = 4 << 20;

/// One command started by the agent: signals go out, its exit code comes back, and dropping
/// this hangs up, which kills the command with its descendants.
pub struct Agent {
    stream: UnixStream,
    answers: tokio::sync::Mutex<Answers>,
}

#[derive(Default)]
struct Answers {
    pending: Vec<u8>,
    exit_code: Option<i32>,
}

impl Agent {
    /// Connects to the agent at `path` and starts `command` on `stdio` (stdin, stdout,
    /// stderr), which are closed here once sent.
    pub async fn start(
        path: &Path,
        command: &Command<'_>,
        stdio: [OwnedFd; 3],
    ) -> Result<Self, StartError> {
        let request = encode(command)?;
        let stream = connect(path).await?;
        let fds = stdio.each_ref().map(AsRawFd::as_raw_fd);
        let sent = loop {
            stream.writable().await.map_err(StartError::Io)?;
            match stream.try_io(Interest::WRITABLE, || {
                nix::sys::socket::sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[io::IoSlice::new(&request)],
                    &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(sent) => break sent,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(StartError::Io(error)),
            }
        };
        drop(stdio);
        let mut stream = stream;
        stream
            .write_all(&request[sent..])
            .await
            .map_err(StartError::Io)?;
        Ok(Self {
            stream,
            answers: Default::default(),
        })
    }

    /// Sends `signal` to the command's process group.
    pub fn signal(&self, signal: u8) -> io::Result<()> {
        // Never 0, which means "kill everything".
        self.send_byte(signal.max(1))
    }

    /// Kills the command and every process it started.
    pub fn kill(&self) -> io::Result<()> {
        self.send_byte(0)
    }

    fn send_byte(&self, byte: u8) -> io::Result<()> {
        match self.stream.try_write(&[byte]) {
            Ok(1) => Ok(()),
            Ok(_) => Err(io::ErrorKind::WriteZero.into()),
            Err(error) => Err(error),
        }
    }

    /// Waits for the command's exit code (128 + the signal that killed it). Cancel-safe; may
    /// be called again.
    pub async fn wait(&self) -> io::Result<i32> {
        let mut answers = self.answers.lock().await;
        loop {
            if let Some(code) = answers.exit_code {
                return Ok(code);
            }
            while let Some(end) = answers.pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = answers.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).into_owned();
                if let Some(code) = line.strip_prefix("exit ") {
                    let code = code.parse().map_err(|_| bad_answer(&line))?;
                    answers.exit_code = Some(code);
                    return Ok(code);
                } else if !line.starts_with("started ") {
                    return Err(bad_answer(&line));
                }
            }
            self.stream.readable().await?;
            let mut buffer = [0u8; 256];
            match self.stream.try_read(&mut buffer) {
                Ok(0) => {
                    // The sandbox stopped under the command: it was killed with everything in
                    // it, as the helper would report it.
                    answers.exit_code = Some(128 + libc::SIGKILL);
                    return Ok(128 + libc::SIGKILL);
                }
                Ok(n) => answers.pending.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    }
}

fn bad_answer(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the sandbox's init answered {line:?}"),
    )
}

/// Connects, waiting while the backlog is full; tells a missing agent from a dead one.
async fn connect(path: &Path) -> Result<UnixStream, StartError> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(error) => match error.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    return Err(StartError::NoAgent);
                }
                io::ErrorKind::WouldBlock if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                _ => return Err(StartError::Io(error)),
            },
        }
    }
}

/// The request: its length (4 bytes, little-endian), then NUL-terminated fields.
fn encode(command: &Command<'_>) -> Result<Vec<u8>, StartError> {
    let flags = if command.tty { "t" } else { "-" };
    let argc = command.argv.len().to_string();
    let fields = [flags, command.cwd, &argc]
        .into_iter()
        .chain(command.argv.iter().map(String::as_str))
        .chain(command.env.iter().map(String::as_str));
    let mut body = Vec::new();
    for field in fields {
        if field.contains('\0') {
            return Err(StartError::Invalid(
                "a command's arguments, variables and directory cannot hold NUL bytes",
            ));
        }
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    if body.len() > MAX_REQUEST {
        return Err(StartError::Invalid(
            "a command's arguments, variables and directory exceed 4 MiB together",
        ));
    }
    let mut request = (body.len() as u32).to_le_bytes().to_vec();
    request.extend_from_slice(&body);
    Ok(request)
}

/// The variables a command gets: the sandbox's baseline (from its bundle), each replaced by
/// a variable of the same name in `extra`, then the rest of `extra`.
pub fn merge_env(
    baseline: &[String],
    extra: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let name = |variable: &str| {
        variable
            .split_once('=')
            .map_or(variable, |(name, _)| name)
            .to_owned()
    };
    let mut merged: Vec<String> = baseline
        .iter()
        .filter(|variable| !extra.contains_key(&name(variable)))
        .cloned()
        .collect();
    merged.extend(extra.iter().map(|(name, value)| format!("{name}={value}")));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_length_prefixed_nul_terminated_fields() {
        let argv = ["sh".to_owned(), "-c".to_owned(), "true".to_owned()];
        let env = ["PATH=/bin".to_owned()];
        let request = encode(&Command {
            argv: &argv,
            env: &env,
            cwd: "/tmp",
            tty: true,
        })
        .unwrap();
        let body = b"t\0/tmp\x003\0sh\0-c\0true\0PATH=/bin\0";
        assert_eq!(request[..4], (body.len() as u32).to_le_bytes());
        assert_eq!(&request[4..], body);
    }

    #[test]
    fn a_nul_byte_is_refused() {
        let argv = ["echo".to_owned(), "a\0b".to_owned()];
        let result = encode(&Command {
            argv: &argv,
            env: &[],
            cwd: "",
            tty: false,
        });
        assert!(matches!(result, Err(StartError::Invalid(_))));
    }

    #[test]
    fn extra_variables_replace_the_baseline_ones() {
        let baseline = ["PATH=/bin".to_owned(), "HOME=/root".to_owned()];
        let extra = [
            ("HOME".to_owned(), "/home/x".to_owned()),
            ("A".to_owned(), "1".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            merge_env(&baseline, &extra),
            ["PATH=/bin", "A=1", "HOME=/home/x"]
        );
    }
}
