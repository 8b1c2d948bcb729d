//! The runtime helper: a short-lived, single-threaded process (`airlock __runtime <json>`) in
//! which every libcontainer call that forks happens. The API server is multi-threaded, and
//! forking there is unsafe; the helper is exec'd fresh for each create or exec, so it forks
//! from a clean single thread. A sandbox's init is the helper's child and is re-parented when
//! the helper exits, so sandboxes outlive both the helper and the server (like containerd's
//! shims, without a resident process per sandbox).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::executor::SeccompExecutor;
use crate::network::{self, EgressPlan};
use crate::seccomp::CompiledProfile;

/// The first argument that selects helper mode in the airlock binary.
pub const HELPER_ARG: &str = "__runtime";

/// The environment variable through which an exec helper receives its command's variables
/// (which may carry a grant's secrets): a process's environment is readable only by its
/// owner, unlike its command line.
pub const EXEC_ENV_VAR: &str = "AIRLOCK_EXEC_ENV";

/// The file descriptor on which an exec helper reports its [`ExecStatus`].
pub const STATUS_FD: i32 = 3;

/// The file descriptor at which a create helper passes the exec agent's listening socket to
/// the sandbox's init (libcontainer keeps it open through `preserve_fds`).
pub const AGENT_FD: i32 = 3;

/// The file descriptor on which a session's exec helper reads signals for its command, one
/// byte (the signal's number) each; at its end (the server hung up) the command is killed.
pub const CONTROL_FD: i32 = 4;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HelperRequest {
    /// Create and start the sandbox described by `bundle/config.json`.
    Create {
        state_root: PathBuf,
        id: String,
        bundle: PathBuf,
        seccomp: PathBuf,
        /// Set for `egress` sandboxes: the link to give them before they start.
        egress: Option<EgressPlan>,
        /// Work in a private view of the sandboxes' mounts, through this staging directory
        /// (see `mounts::enter_private_view`).
        #[serde(default)]
        view: Option<PathBuf>,
        /// Where the sandbox's init listens for commands (the exec agent, see
        /// `init/airlock-init.rs`); outside the sandbox's root.
        #[serde(default)]
        agent: Option<PathBuf>,
    },
    /// Run a command in a running sandbox with the helper's stdio; report on fd 3.
    Exec {
        state_root: PathBuf,
        id: String,
        seccomp: PathBuf,
        argv: Vec<String>,
        env: HashMap<String, String>,
        cwd: Option<PathBuf>,
        /// None: no time limit (a session).
        timeout_ms: Option<u64>,
        /// The helper's stdio is a terminal: make it the command's controlling terminal.
        #[serde(default)]
        tty: bool,
        /// Signals arrive on [`CONTROL_FD`].
        #[serde(default)]
        control: bool,
        /// As for `Create`; no sandbox's mounts are needed to join one.
        #[serde(default)]
        view: Option<PathBuf>,
    },
}

/// What an exec helper reports when it is done.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecStatus {
    pub exit_code: i32,
    pub timed_out: bool,
    /// Set when the command could not be started at all.
    pub error: Option<String>,
}

impl ExecStatus {
    /// What an exec helper wrote on its status descriptor: how its command ended, or why it
    /// could not run it.
    pub(crate) fn read(text: &[u8]) -> Result<Self, airlock_core::ports::RuntimeError> {
        use airlock_core::ports::RuntimeError;
        let status: Self = serde_json::from_slice(text)
            .map_err(|_| RuntimeError::Failed("the runtime helper reported nothing".into()))?;
        match status.error {
            Some(error) if error.contains("not running") => Err(RuntimeError::NotRunning),
            Some(error) => Err(RuntimeError::Failed(error)),
            None => Ok(status),
        }
    }
}

/// Runs the helper; the return value is the process's exit code.
pub fn main(request_json: &str) -> i32 {
    // Processes forked from here join the sandbox's namespaces before they exec; while they
    // hold the helper's capabilities and file descriptors, nothing in the sandbox may ptrace
    // them or read their /proc files (runc's fix for CVE-2016-9962). execve resets this.
    // SAFETY: prctl with PR_SET_DUMPABLE takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong) };
    let request: HelperRequest = match serde_json::from_str(request_json) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("airlock runtime helper: bad request: {error}");
            return 2;
        }
    };
    match request {
        HelperRequest::Create {
            state_root,
            id,
            bundle,
            seccomp,
            egress,
            view,
            agent,
        } => match private_view(&state_root, view.as_deref(), bundle.parent()).and_then(|()| {
            create(
                &state_root,
                &id,
                &bundle,
                &seccomp,
                egress.as_ref(),
                agent.as_deref(),
            )
        }) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("{error}");
                1
            }
        },
        HelperRequest::Exec {
            state_root,
            id,
            seccomp,
            argv,
            env,
            cwd,
            timeout_ms,
            tty,
            control,
            view,
        } => {
            if let Err(error) = private_view(&state_root, view.as_deref(), None) {
                eprintln!("airlock runtime helper: {error}");
                return 2;
            }
            let mut env = env;
            if let Some(passed) = std::env::var_os(EXEC_ENV_VAR) {
                match serde_json::from_slice::<HashMap<String, String>>(passed.as_encoded_bytes()) {
                    Ok(passed) => env.extend(passed),
                    Err(error) => {
                        eprintln!("airlock runtime helper: bad {EXEC_ENV_VAR}: {error}");
                        return 2;
                    }
                }
            }
            // SAFETY: the server opens fd 4 for a session's helper as the read end of a pipe;
            // nothing else in this process uses or closes it.
            let control = control.then(|| unsafe { File::from_raw_fd(CONTROL_FD) });
            let status = exec(
                &state_root,
                &id,
                &seccomp,
                Command {
                    argv,
                    env,
                    cwd,
                    timeout: timeout_ms.map(Duration::from_millis),
                    tty,
                    control,
                },
            );
            // SAFETY: the server opens fd 3 for this process as the write end of a pipe, and
            // nothing else in this process uses or closes it.
            let mut status_pipe = unsafe { File::from_raw_fd(STATUS_FD) };
            let _ = status_pipe.write_all(&serde_json::to_vec(&status).expect("status serializes"));
            0
        }
    }
}

/// Enters the private view of the sandboxes' mounts when the server asked for it (`staging`
/// set): the `sandboxes` directory beside `state_root` detached, `keep` kept.
fn private_view(
    state_root: &Path,
    staging: Option<&Path>,
    keep: Option<&Path>,
) -> Result<(), String> {
    let Some(staging) = staging else {
        return Ok(());
    };
    let root = state_root.parent().ok_or("the state root has no parent")?;
    crate::mounts::enter_private_view(&root.join("sandboxes"), staging, keep)
        .map_err(|error| format!("entering the private view of the sandboxes: {error}"))
}

fn create(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    seccomp: &Path,
    egress: Option<&EgressPlan>,
    agent: Option<&Path>,
) -> Result<(), String> {
    let profile = CompiledProfile::load(seccomp).map_err(|error| error.to_string())?;
    // The agent's socket becomes fd 3 of this process, which the sandbox's init inherits.
    let agent = agent
        .map(|path| {
            listen_for_agent(path).map_err(|error| format!("the exec agent's socket: {error}"))
        })
        .transpose()?;
    let dev_null = || -> Result<OwnedFd, String> {
        File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|error| error.to_string())
    };
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|error| format!("state root: {error}"))?
        .with_executor(SeccompExecutor {
            profile,
            controlling_terminal: false,
        })
        .with_stdin(dev_null()?)
        .with_stdout(dev_null()?)
        .with_stderr(dev_null()?)
        .validate_id()
        .map_err(|error| format!("container id: {error}"))?
        .with_preserved_fds(i32::from(agent.is_some()))
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|error| format!("creating the container: {error}"))?;
    let started = (|| {
        let pid = container.pid().ok_or("the container has no init process")?;
        bring_up_loopback(pid.as_raw())
            .map_err(|error| format!("bringing up loopback: {error}"))?;
        if let Some(plan) = egress {
            network::attach(plan, pid.as_raw())?;
        }
        container
            .start()
            .map_err(|error| format!("starting the container: {error}"))
    })();
    if let Err(error) = started {
        let _ = container.delete(true);
        if let Some(plan) = egress {
            let _ = network::remove_links(&plan.instance, &plan.environment);
        }
        return Err(error);
    }
    Ok(())
}

/// Binds and listens on the agent's socket (replacing one an earlier start left) and puts it
/// at [`AGENT_FD`], inheritable; returns it, to be kept open until the init has it.
fn listen_for_agent(path: &Path) -> std::io::Result<OwnedFd> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = OwnedFd::from(std::os::unix::net::UnixListener::bind(path)?);
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    if listener.as_raw_fd() == AGENT_FD {
        // Already there (the lowest free descriptor): only let the init inherit it.
        nix::fcntl::fcntl(
            listener.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        return Ok(listener);
    }
    // The socket took the lowest free descriptor, so 3 is held by something else, which a
    // dup2 would close under its owner: refuse instead (never seen: the helper opens nothing
    // before this).
    if nix::fcntl::fcntl(AGENT_FD, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        return Err(std::io::Error::other(format!(
            "descriptor {AGENT_FD} is taken in the runtime helper"
        )));
    }
    // SAFETY: dup2 onto a descriptor nothing in this process owns (checked just above); the
    // copy is not close-on-exec.
    if unsafe { libc::dup2(listener.as_raw_fd(), AGENT_FD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(listener);
    // SAFETY: dup2 just made AGENT_FD a copy that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(AGENT_FD) })
}

/// A new network namespace starts with `lo` down (libcontainer leaves it so): bring it up
/// from a thread that joins the sandbox's namespace, leaving the helper's own untouched.
fn bring_up_loopback(pid: i32) -> Result<(), String> {
    let namespace = File::open(format!("/proc/{pid}/ns/net")).map_err(|error| error.to_string())?;
    std::thread::spawn(move || -> Result<(), String> {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|error| format!("setns: {error}"))?;
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|error| format!("socket: {error}"))?;
        // SAFETY: `ifreq` is plain old data; zeroed is a valid value. The ioctls read and
        // write only that struct, whose name field gets a NUL-terminated "lo".
        unsafe {
            let mut request: libc::ifreq = std::mem::zeroed();
            for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
                *slot = *byte as libc::c_char;
            }
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
                return Err(format!("SIOCGIFFLAGS: {}", std::io::Error::last_os_error()));
            }
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
                return Err(format!("SIOCSIFFLAGS: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| "the loopback thread panicked".to_owned())?
}

/// What an exec helper runs, and how.
struct Command {
    argv: Vec<String>,
    env: HashMap<String, String>,
    cwd: Option<PathBuf>,
    timeout: Option<Duration>,
    tty: bool,
    control: Option<File>,
}

fn exec(state_root: &Path, id: &str, seccomp: &Path, command: Command) -> ExecStatus {
    let Command {
        argv,
        env,
        cwd,
        timeout,
        tty,
        control,
    } = command;
    let failed = |error: String| ExecStatus {
        exit_code: -1,
        timed_out: false,
        error: Some(error),
    };
    let profile = match CompiledProfile::load(seccomp) {
        Ok(profile) => profile,
        Err(error) => return failed(error.to_string()),
    };
    let builder = match ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
    {
        Ok(builder) => builder,
        Err(error) => return failed(format!("state root: {error}")),
    };
    let pid = match builder
        .with_executor(SeccompExecutor {
            profile,
            controlling_terminal: tty,
        })
        .as_tenant()
        .with_container_args(argv)
        .with_env(env)
        .with_cwd(cwd)
        .with_detach(false)
        .build()
    {
        Ok(pid) => pid.as_raw(),
        Err(libcontainer::error::LibcontainerError::IncorrectStatus(status)) => {
            return failed(format!("the sandbox is {status:?}, not running"));
        }
        Err(libcontainer::error::LibcontainerError::NoDirectory) => {
            return failed("the sandbox is not running".into());
        }
        Err(error) => {
            // The command could not start (missing program, bad cwd): report it the way a
            // shell does, as exit code 127 with the reason on stderr.
            eprintln!("airlock: {error}");
            return ExecStatus {
                exit_code: 127,
                timed_out: false,
                error: None,
            };
        }
    };
    let timed_out = !wait_for_exit(
        pid,
        timeout.map(|timeout| Instant::now() + timeout),
        control,
    );
    if timed_out {
        crate::process_tree::kill_tree(pid);
    }
    let mut status = 0;
    // SAFETY: `pid` is this process's child (libcontainer creates the tenant as our child);
    // `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let exit_code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    ExecStatus {
        exit_code,
        timed_out,
        error: None,
    }
}

/// Waits for the child to exit without reaping it; false when the deadline passed first.
/// Meanwhile signal numbers read from `control` go to the child's process group (as a
/// terminal's would); when `control` ends, the server hung up and the child is killed.
fn wait_for_exit(pid: i32, deadline: Option<Instant>, mut control: Option<File>) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        return true; // already gone
    }
    // SAFETY: pidfd_open just returned this fd to us; we own it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    loop {
        let millis = match deadline {
            Some(deadline) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return false;
                }
                remaining.as_millis().clamp(1, i32::MAX as u128) as i32
            }
            None => -1,
        };
        let mut polls = [
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: control.as_ref().map_or(-1, |control| control.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (poll ignores a negative fd).
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), 2, millis) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return true;
        }
        if polls[0].revents != 0 {
            return true;
        }
        if polls[1].revents != 0
            && let Some(pipe) = control.as_mut()
        {
            let mut signals = [0u8; 64];
            match std::io::Read::read(pipe, &mut signals) {
                Ok(0) | Err(_) => {
                    // The server hung up: nobody is left to see the command's output.
                    crate::process_tree::kill_tree(pid);
                    control = None;
                }
                Ok(n) => {
                    for &signal in &signals[..n] {
                        // SAFETY: kill takes a process group (the child leads its own, made
                        // by setsid; unreaped, its id cannot be reused) and a signal number.
                        unsafe { libc::kill(-pid, i32::from(signal)) };
                    }
                }
            }
        }
    }
}

// ---- create helpers an earlier server left at work ----

/// A runtime helper process making or starting a sandbox (or a fork of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    pub pid: i32,
    pub id: String,
}

/// The part of a helper's request that says what it works on (see [`HelperRequest`]).
#[derive(Deserialize)]
struct HelperTarget {
    op: String,
    state_root: PathBuf,
    id: String,
}

/// Every live create helper working in `state_root`, from `/proc/<pid>/cmdline`. Exec
/// helpers are left out: they only wait for a command, which dies with its sandbox's cgroup.
pub fn create_helpers(state_root: &Path) -> Vec<Helper> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own_pid = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own_pid)
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let mut args = cmdline.split(|byte| *byte == 0);
            let (_program, mode, request) = (args.next()?, args.next()?, args.next()?);
            if mode != HELPER_ARG.as_bytes() {
                return None;
            }
            let target: HelperTarget = serde_json::from_slice(request).ok()?;
            (target.op == "create" && target.state_root == state_root)
                .then_some(Helper { pid, id: target.id })
        })
        .collect()
}

/// Kills the create helpers of sandbox `id` with their process trees and waits until they
/// are dead, so that nothing goes on making the sandbox while it is taken apart. Returns
/// how many helpers there were.
pub fn kill_create_helpers(state_root: &Path, id: &str) -> usize {
    let helpers: Vec<Helper> = create_helpers(state_root)
        .into_iter()
        .filter(|helper| helper.id == id)
        .collect();
    for helper in &helpers {
        tracing::warn!(
            environment = id,
            pid = helper.pid,
            "killing a create helper left by an earlier server"
        );
        crate::process_tree::kill_tree(helper.pid);
    }
    let deadline = Instant::now() + crate::process_tree::DEATH_TIMEOUT;
    while helpers
        .iter()
        .any(|helper| crate::process_tree::is_alive(helper.pid))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    helpers.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_is_no_create_helper() {
        assert!(create_helpers(Path::new("/nonexistent/state")).is_empty());
    }
}
