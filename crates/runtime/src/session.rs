//! A session's command on the local backend: the exec helper with the command's streams
//! (pipes, or a terminal whose master side the server holds) and a control pipe through
//! which signals reach it; closing that pipe (the session ended, the server died) kills it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use airlock_core::ports::{ProcessControl, ProcessExit, RuntimeError};
use airlock_core::session::{Signal, TerminalSize};
use async_trait::async_trait;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cgroups::SandboxCgroup;
use crate::helper::ExecStatus;

/// A new terminal of `size`: its master (for the server) and slave (the command's stdio).
pub fn open_terminal(size: TerminalSize) -> io::Result<(OwnedFd, OwnedFd)> {
    let size = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    let flags = nix::fcntl::fcntl(pty.master.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        pty.master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )?;
    Ok((pty.master, pty.slave))
}

fn set_size(master: &OwnedFd, size: TerminalSize) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The master side of a terminal as an async stream. Reading it after the command and every
/// other holder of the slave side are gone fails with EIO: that is its end of file.
#[derive(Clone)]
pub struct Terminal(std::sync::Arc<AsyncFd<OwnedFd>>);

impl Terminal {
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        // SAFETY: an OwnedFd's descriptor stays open and the same until the OwnedFd, owned by
        // the AsyncFd, is dropped with it.
        let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(Self(std::sync::Arc::new(fd)))
    }
}

impl AsyncRead for Terminal {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                let mut file = std::mem::ManuallyDrop::new(fd_as_file(fd.get_ref()));
                file.read(unfilled)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Terminal {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| {
                let mut file = std::mem::ManuallyDrop::new(fd_as_file(fd.get_ref()));
                file.write(data)
            }) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A `File` over a borrowed descriptor, for its `Read`/`Write`; the caller must never drop
/// it (wrap it in `ManuallyDrop`).
fn fd_as_file(fd: &OwnedFd) -> File {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller keeps this File in ManuallyDrop, so the descriptor (owned by `fd`,
    // which outlives the call) is never closed through it.
    unsafe { File::from_raw_fd(fd.as_raw_fd()) }
}

/// A session's command started by the sandbox's exec agent.
pub struct AgentProcess {
    pub(crate) agent: crate::agent::Agent,
    pub(crate) terminal: Option<Terminal>,
    pub(crate) cgroup: SandboxCgroup,
    pub(crate) oom_kills_before: u64,
}

#[async_trait]
impl ProcessControl for AgentProcess {
    fn resize(&self, size: TerminalSize) -> Result<(), RuntimeError> {
        resize(self.terminal.as_ref(), size)
    }

    fn signal(&self, signal: Signal) -> Result<(), RuntimeError> {
        self.agent
            .signal(signal.number() as u8)
            .map_err(|error| RuntimeError::Failed(format!("signalling the command: {error}")))
    }

    async fn wait(&self) -> Result<ProcessExit, RuntimeError> {
        let exit_code =
            self.agent.wait().await.map_err(|error| {
                RuntimeError::Failed(format!("waiting for the command: {error}"))
            })?;
        Ok(ProcessExit {
            exit_code,
            oom_killed: self.cgroup.oom_kills() > self.oom_kills_before,
        })
    }
}

fn resize(terminal: Option<&Terminal>, size: TerminalSize) -> Result<(), RuntimeError> {
    match terminal {
        Some(terminal) => set_size(terminal.0.get_ref(), size)
            .map_err(|error| RuntimeError::Failed(format!("resizing the terminal: {error}"))),
        None => Ok(()),
    }
}

/// The helper running a session's command (a sandbox without an exec agent).
pub struct LocalProcess {
    pub(crate) helper: tokio::sync::Mutex<tokio::process::Child>,
    pub(crate) status: std::sync::Mutex<Option<OwnedFd>>,
    /// Signals go in here; dropping it kills the command.
    pub(crate) control: File,
    pub(crate) terminal: Option<Terminal>,
    pub(crate) cgroup: SandboxCgroup,
    pub(crate) oom_kills_before: u64,
    pub(crate) exit: std::sync::Mutex<Option<ProcessExit>>,
}

#[async_trait]
impl ProcessControl for LocalProcess {
    fn resize(&self, size: TerminalSize) -> Result<(), RuntimeError> {
        resize(self.terminal.as_ref(), size)
    }

    fn signal(&self, signal: Signal) -> Result<(), RuntimeError> {
        // The helper reads one byte per signal; a pipe write this small is atomic.
        (&self.control)
            .write_all(&[signal.number() as u8])
            .map_err(|error| RuntimeError::Failed(format!("signalling the command: {error}")))
    }

    async fn wait(&self) -> Result<ProcessExit, RuntimeError> {
        let mut helper = self.helper.lock().await;
        if let Some(exit) = *self.exit.lock().expect("exit lock") {
            return Ok(exit);
        }
        helper
            .wait()
            .await
            .map_err(|error| RuntimeError::Failed(format!("waiting for the helper: {error}")))?;
        let mut text = Vec::new();
        if let Some(status) = self.status.lock().expect("status lock").take() {
            let _ = File::from(status).read_to_end(&mut text);
        }
        let status = ExecStatus::read(&text)?;
        let exit = ProcessExit {
            exit_code: status.exit_code,
            oom_killed: self.cgroup.oom_kills() > self.oom_kills_before,
        };
        *self.exit.lock().expect("exit lock") = Some(exit);
        Ok(exit)
    }
}
