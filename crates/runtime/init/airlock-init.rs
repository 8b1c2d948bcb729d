//! PID 1 of every sandbox: reaps orphans so zombies never fill `pids.max`, exits on SIGTERM,
//! and starts the commands the server asks for (the exec agent).
//!
//! Built by `build.rs` as a tiny static binary with no crates, and bind-mounted read-only into
//! each sandbox at `/.airlock/init`. It makes itself non-dumpable, so no process of the
//! sandbox can ptrace it or open its file descriptors through `/proc/1/fd`.
//!
//! ## The exec agent
//! The runtime helper that creates the sandbox passes a listening Unix socket as fd 3, bound
//! at a path of the host outside the sandbox's root (`sandboxes/<id>/agent.sock`): only the
//! server can connect to it. Since init already lives in the sandbox's namespaces and cgroup,
//! with its seccomp filter, capabilities and user, a command forked from here gets exactly
//! what a command joined from outside would — without a helper process and a container
//! runtime per command.
//!
//! One connection runs one command:
//! 1. The server sends a 4-byte little-endian length and a request of NUL-terminated fields
//!    `flags, cwd, argc, argv..., env...` (`flags` is `t` for a terminal, else `-`; env
//!    entries are `NAME=value`), with the command's stdin, stdout and stderr attached as
//!    `SCM_RIGHTS`.
//! 2. The agent forks the command in a session of its own (a terminal becomes its
//!    controlling terminal) and answers `started <pid>\n`; the fork itself looks the program
//!    up and execs it, so nothing in the sandbox can hold the agent up by stopping it. A
//!    command that cannot start gets the reason on its stderr and exits 127 (126: found but
//!    not executable).
//! 3. Each byte the server sends then is a signal for the command's process group; byte 0
//!    kills the command with its descendants. When the command ends the agent answers
//!    `exit <code>\n` (128 + the signal for a killed command) and closes the connection.
//! 4. If the server hangs up first (also before the command started), the command and its
//!    descendants are killed.
//!
//! Built without crates, so the few system interfaces it needs are declared in `sys` below
//! (Linux, 64-bit glibc: x86_64 and aarch64 share these values).

#![no_main]

use std::ffi::{CString, c_char, c_int, c_void};

use sys as libc;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The listening socket the runtime helper passes.
const LISTENER: RawFd = 3;
/// Commands running (or connections being read) at once; more wait in the listen backlog.
/// Lowered to fit the descriptor limit (a connection holds up to four while it starts).
const MAX_CONNECTIONS: usize = 1024;
/// The largest request (argv and environment together).
const MAX_REQUEST: usize = 4 << 20;

fn main_loop() -> ! {
    // SAFETY: plain libc calls on memory of the sizes libc expects.
    let signals = unsafe {
        // Same uid and capabilities as every process of the sandbox: without this, any of
        // them could attach to PID 1 (seccomp allows ptrace, for debuggers).
        libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
    };
    let listener = listening_socket(LISTENER);
    let max_connections = connection_limit();
    let mut connections: Vec<Connection> = Vec::new();
    // Set when accepting failed for want of descriptors: until a connection ends, the
    // listener (still readable) is left out of the poll instead of spinning on it.
    let mut accept_paused = false;
    reap(&mut connections);
    loop {
        let mut polls = Vec::with_capacity(connections.len() + 2);
        polls.push(poll_for(signals));
        let accepting =
            listener.is_some() && !accept_paused && connections.len() < max_connections;
        polls.push(poll_for(if accepting { LISTENER } else { -1 }));
        polls.extend(connections.iter().map(|c| poll_for(c.socket.as_raw_fd())));
        // SAFETY: `polls` is a valid array of its length.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if ready <= 0 {
            continue;
        }
        if polls[0].revents != 0 {
            let mut info = [0u8; 128];
            // SAFETY: signalfd reads are whole 128-byte siginfo records.
            while unsafe { libc::read(signals, info.as_mut_ptr().cast(), info.len()) } > 0 {
                let number = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                if number == libc::SIGTERM as u32 {
                    // SAFETY: ends the process, and with it the sandbox.
                    unsafe { libc::_exit(0) };
                }
            }
            let before = connections.len();
            reap(&mut connections);
            if connections.len() != before {
                // `polls` no longer lines up with `connections`: poll again (level-triggered,
                // nothing is lost).
                accept_paused = false;
                continue;
            }
        }
        let mut index = connections.len();
        while index > 0 {
            index -= 1;
            if polls[index + 2].revents != 0 && !connections[index].serve() {
                connections.swap_remove(index);
                accept_paused = false;
            }
        }
        if polls[1].revents != 0 {
            // SAFETY: accept4 on the listening socket, with no address wanted.
            let fd = unsafe {
                libc::accept4(
                    LISTENER,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd >= 0 {
                connections.push(Connection {
                    // SAFETY: accept4 just returned this descriptor to us.
                    socket: unsafe { OwnedFd::from_raw_fd(fd) },
                    state: State::Reading {
                        request: Vec::new(),
                        stdio: Vec::new(),
                    },
                });
            } else if matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE)
            ) {
                accept_paused = true;
            }
        }
    }
}

/// [`MAX_CONNECTIONS`], or fewer when the descriptor limit would not hold them.
fn connection_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 64;
    }
    let spare = (limit.rlim_cur as usize).saturating_sub(16) / 4;
    spare.clamp(1, MAX_CONNECTIONS)
}

fn poll_for(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// `fd` when it is a listening socket (made close-on-exec, non-blocking), else nothing: a
/// sandbox started without an agent only reaps.
fn listening_socket(fd: RawFd) -> Option<RawFd> {
    let mut listening: c_int = 0;
    let mut size = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int; fcntl on a descriptor we own.
    unsafe {
        let ok = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut c_int).cast(),
            &mut size,
        ) == 0;
        if !ok || listening == 0 {
            return None;
        }
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
    }
    Some(fd)
}

/// Reaps every finished child; the server learns how its commands ended.
fn reap(connections: &mut Vec<Connection>) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let Some(index) = connections
            .iter()
            .position(|c| matches!(c.state, State::Running { pid: running } if running == pid))
        else {
            continue;
        };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            -1
        };
        connections[index].answer(&format!("exit {code}\n"));
        connections.swap_remove(index);
    }
}

struct Connection {
    socket: OwnedFd,
    state: State,
}

enum State {
    /// The request is still arriving.
    Reading {
        request: Vec<u8>,
        stdio: Vec<OwnedFd>,
    },
    /// Its command runs (leading its own session and process group).
    Running { pid: i32 },
}

impl Connection {
    /// Handles what arrived; false when the connection is done with.
    fn serve(&mut self) -> bool {
        match &mut self.state {
            State::Reading { request, stdio } => {
                let signals = match receive(&self.socket, request, stdio) {
                    Received::More => return true,
                    Received::Closed => return false,
                    Received::Whole(signals) => signals,
                };
                if server_gone(&self.socket) {
                    // It gave up (a timeout, a cancelled request) while this waited.
                    return false;
                }
                let request = std::mem::take(request);
                let stdio = std::mem::take(stdio);
                let Some(pid) = start(&request, stdio) else {
                    self.answer("exit 127\n");
                    return false;
                };
                self.state = State::Running { pid };
                if !self.answer(&format!("started {pid}\n")) {
                    kill_tree(pid);
                    return false;
                }
                // Signals sent before the request was whole (a ^C, the kill of a timeout).
                deliver(pid, &signals);
                true
            }
            State::Running { pid } => {
                let pid = *pid;
                let mut bytes = [0u8; 64];
                // SAFETY: reads into a buffer of its length.
                let n = unsafe {
                    libc::recv(
                        self.socket.as_raw_fd(),
                        bytes.as_mut_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0
                    && matches!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EAGAIN | libc::EINTR)
                    )
                {
                    return true;
                }
                if n <= 0 {
                    // The server hung up (or the connection broke): nobody is left to see
                    // the command's output.
                    kill_tree(pid);
                    return false;
                }
                deliver(pid, &bytes[..n as usize]);
                true
            }
        }
    }

    /// Sends a short answer; false when the server is gone.
    fn answer(&self, text: &str) -> bool {
        // SAFETY: sends from a buffer of its length; MSG_NOSIGNAL: no SIGPIPE for PID 1.
        let sent = unsafe {
            libc::send(
                self.socket.as_raw_fd(),
                text.as_ptr().cast(),
                text.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        sent == text.len() as isize
    }
}

enum Received {
    More,
    /// The request is in `request`; with the bytes that followed it (signals).
    Whole(Vec<u8>),
    Closed,
}

/// Whether the server has closed its end (nothing more to read, ever).
fn server_gone(socket: &OwnedFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks one byte into a one-byte buffer.
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    n == 0
        || (n < 0
            && !matches!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN | libc::EINTR)
            ))
}

/// Signal bytes from the server: 0 kills the command with its descendants, any other the
/// signal of that number to its process group.
fn deliver(pid: i32, signals: &[u8]) {
    for &signal in signals {
        if signal == 0 {
            kill_tree(pid);
        } else {
            // SAFETY: kill takes a process group (the command leads its own; it is unreaped
            // until we answer, so its id is not reused) and a signal.
            unsafe { libc::kill(-pid, c_int::from(signal)) };
        }
    }
}

/// Reads what is there of a request (and the three descriptors sent with its first byte).
fn receive(socket: &OwnedFd, request: &mut Vec<u8>, stdio: &mut Vec<OwnedFd>) -> Received {
    loop {
        let mut buffer = [0u8; 16384];
        let mut control = [0u8; 128];
        let mut vector = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is valid, then its pointers are set to live
        // buffers of the lengths given.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut vector;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast::<c_void>();
        header.msg_controllen = control.len();
        // SAFETY: `header` points at live buffers; received descriptors are close-on-exec.
        let n = unsafe {
            libc::recvmsg(
                socket.as_raw_fd(),
                &mut header,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let error = std::io::Error::last_os_error().raw_os_error();
            return if matches!(error, Some(libc::EAGAIN | libc::EINTR)) {
                Received::More
            } else {
                Received::Closed
            };
        }
        if n == 0 {
            return Received::Closed;
        }
        let control = &control[..header.msg_controllen.min(control.len())];
        for fd in libc::received_fds(control) {
            // SAFETY: the kernel just made this descriptor for us.
            stdio.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        request.extend_from_slice(&buffer[..n as usize]);
        if request.len() >= 4 {
            let length = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
            let length = length as usize;
            if length > MAX_REQUEST {
                return Received::Closed;
            }
            if request.len() >= 4 + length {
                let signals = request.split_off(4 + length);
                request.drain(..4);
                return Received::Whole(signals);
            }
        }
    }
}

/// Starts the command a request describes: its pid, or `None` (a malformed request, said on
/// its stderr). The fork looks the program up and execs it, reporting a failure on the
/// command's stderr; the agent never waits for it.
fn start(request: &[u8], stdio: Vec<OwnedFd>) -> Option<i32> {
    let Ok(stdio) = <[OwnedFd; 3]>::try_from(stdio) else {
        return None;
    };
    let Some(command) = Prepared::parse(request) else {
        report(&stdio[2], "airlock: a malformed request\n");
        return None;
    };
    // SAFETY: this process has one thread, so the child may do anything the parent could.
    match unsafe { libc::fork() } {
        0 => command.run(&stdio),
        -1 => {
            report(&stdio[2], "airlock: cannot fork\n");
            None
        }
        // The parent's copies of the command's streams close here.
        pid => Some(pid),
    }
}

/// Writes a short note on a command's stderr without ever blocking the agent.
fn report(stderr: &OwnedFd, text: &str) {
    // SAFETY: fcntl and write on a descriptor we own, from a buffer of its length.
    unsafe {
        libc::fcntl(stderr.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::write(stderr.as_raw_fd(), text.as_ptr().cast(), text.len());
    }
}

/// A request, parsed into what `execve` takes.
struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
    terminal: bool,
}

impl Prepared {
    fn parse(request: &[u8]) -> Option<Self> {
        let mut fields = request
            .strip_suffix(b"\0")
            .unwrap_or(request)
            .split(|byte| *byte == 0);
        let flags = fields.next()?;
        let cwd = fields.next()?;
        let argc: usize = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        let argv: Vec<CString> = fields
            .by_ref()
            .take(argc)
            .map(|arg| CString::new(arg).ok())
            .collect::<Option<_>>()?;
        if argv.len() != argc || argc == 0 || argv[0].is_empty() {
            return None;
        }
        let env = fields
            .filter(|variable| variable.contains(&b'='))
            .map(|variable| CString::new(variable).ok())
            .collect::<Option<_>>()?;
        Some(Self {
            argv,
            env,
            cwd: (!cwd.is_empty()).then(|| CString::new(cwd).ok()).flatten(),
            terminal: flags == b"t",
        })
    }

    /// In the forked child: becomes the command, or reports why not and exits.
    fn run(self, stdio: &[OwnedFd; 3]) -> ! {
        // SAFETY: the child of a single-threaded process; every call gets valid pointers to
        // memory of this frame; the process execs or exits here.
        unsafe {
            // As a fresh process would start: nothing blocked (init blocks SIGCHLD and
            // SIGTERM for its signalfd; a shell inheriting that waits forever), every signal
            // at its default (SIGKILL, SIGSTOP and the C library's own refuse: nothing to undo).
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let default: libc::sigaction_t = std::mem::zeroed();
            for signal in 1..=64 {
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // The streams become 0, 1 and 2 (the received copies are close-on-exec; init's
            // own 0–2 are /dev/null, so the received ones are all above 2).
            for (target, fd) in stdio.iter().enumerate() {
                libc::dup2(fd.as_raw_fd(), target as c_int);
            }
            libc::setsid();
            if self.terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                fail(126, "cannot take the terminal", &std::io::Error::last_os_error());
            }
            if let Some(cwd) = &self.cwd
                && libc::chdir(cwd.as_ptr()) < 0
            {
                let why = format!("cannot change to {}", shorten(cwd.as_bytes()));
                fail(127, &why, &std::io::Error::last_os_error());
            }
            let argv = pointers(&self.argv);
            let env = pointers(&self.env);
            let program = self.argv[0].as_bytes();
            let mut denied = None;
            for candidate in self.candidates(program) {
                libc::execve(candidate.as_ptr(), argv.as_ptr(), env.as_ptr());
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::ENOENT | libc::ENOTDIR) => {}
                    Some(libc::EACCES) => denied = Some(error),
                    _ => {
                        let why = format!("cannot run {}", shorten(program));
                        fail(126, &why, &error);
                    }
                }
            }
            let why = format!("cannot run {}", shorten(program));
            match denied {
                Some(error) => fail(126, &why, &error),
                None => fail(127, &why, &std::io::Error::from_raw_os_error(libc::ENOENT)),
            }
        }
    }

    /// Where to look for `program`: itself when it names a path, else each directory of the
    /// command's own `PATH` (a default when it has none), as `execvp` would.
    fn candidates(&self, program: &[u8]) -> Vec<CString> {
        if program.contains(&b'/') {
            return CString::new(program).into_iter().collect();
        }
        let path = self
            .env
            .iter()
            .find_map(|variable| variable.as_bytes().strip_prefix(b"PATH="))
            .unwrap_or(b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(|byte| *byte == b':')
            .map(|dir| if dir.is_empty() { &b"."[..] } else { dir })
            .filter_map(|dir| CString::new([dir, b"/", program].concat()).ok())
            .collect()
    }
}

/// A null-terminated array of pointers to `strings`, for `execve`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|string| string.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// A name for a message: at most 200 bytes of it.
fn shorten(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// In the forked child: says why on stderr and exits with `code`.
fn fail(code: c_int, why: &str, error: &std::io::Error) -> ! {
    let text = format!("airlock: {why}: {error}\n");
    // SAFETY: writes from a buffer of its length, then ends the process.
    unsafe {
        libc::write(2, text.as_ptr().cast(), text.len());
        libc::_exit(code)
    }
}

/// Kills a process and its descendants: stopped first, walked until no new one appears
/// (killing top-down would let children escape to PID 1), then killed.
fn kill_tree(pid: i32) {
    let mut frozen: Vec<i32> = Vec::new();
    for _ in 0..64 {
        let mut new = Vec::new();
        let mut stack = vec![pid];
        while let Some(current) = stack.pop() {
            if !frozen.contains(&current) && !new.contains(&current) {
                new.push(current);
            }
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{current}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    stack.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
                }
            }
        }
        if new.is_empty() {
            break;
        }
        for process in new {
            // SAFETY: kill has no memory effects; a stale pid fails with ESRCH.
            unsafe { libc::kill(process, libc::SIGSTOP) };
            frozen.push(process);
        }
    }
    for process in frozen {
        // SAFETY: as above.
        unsafe { libc::kill(process, libc::SIGKILL) };
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: c_int, _argv: *const *const u8) -> c_int {
    main_loop()
}

/// The system interfaces used above, as the `libc` crate would declare them.
#[allow(non_camel_case_types)]
mod sys {
    pub use std::ffi::c_ulong;
    use std::ffi::{c_int, c_long, c_uint, c_void};

    pub type nfds_t = c_ulong;
    pub type socklen_t = c_uint;

    #[repr(C)]
    pub struct sigset_t([u64; 16]);
    /// `struct sigaction` of glibc; zeroed, it sets the default action.
    #[repr(C)]
    pub struct sigaction_t {
        pub sa_handler: usize,
        pub sa_mask: sigset_t,
        pub sa_flags: c_int,
        pub sa_restorer: usize,
    }
    #[repr(C)]
    pub struct pollfd {
        pub fd: c_int,
        pub events: i16,
        pub revents: i16,
    }
    #[repr(C)]
    pub struct rlimit {
        pub rlim_cur: u64,
        pub rlim_max: u64,
    }
    #[repr(C)]
    pub struct iovec {
        pub iov_base: *mut c_void,
        pub iov_len: usize,
    }
    #[repr(C)]
    pub struct msghdr {
        pub msg_name: *mut c_void,
        pub msg_namelen: socklen_t,
        pub msg_iov: *mut iovec,
        pub msg_iovlen: usize,
        pub msg_control: *mut c_void,
        pub msg_controllen: usize,
        pub msg_flags: c_int,
    }
    #[repr(C)]
    pub struct cmsghdr {
        pub cmsg_len: usize,
        pub cmsg_level: c_int,
        pub cmsg_type: c_int,
    }

    pub const SIGCHLD: c_int = 17;
    pub const SIGTERM: c_int = 15;
    pub const SIGSTOP: c_int = 19;
    pub const SIGKILL: c_int = 9;
    pub const SIG_BLOCK: c_int = 0;
    pub const SIG_SETMASK: c_int = 2;
    pub const PR_SET_DUMPABLE: c_int = 4;
    pub const O_NONBLOCK: c_int = 0o4000;
    pub const O_CLOEXEC: c_int = 0o2000000;
    pub const SFD_CLOEXEC: c_int = O_CLOEXEC;
    pub const SFD_NONBLOCK: c_int = O_NONBLOCK;
    pub const SOCK_CLOEXEC: c_int = O_CLOEXEC;
    pub const SOCK_NONBLOCK: c_int = O_NONBLOCK;
    pub const SOL_SOCKET: c_int = 1;
    pub const SO_ACCEPTCONN: c_int = 30;
    pub const SCM_RIGHTS: c_int = 1;
    pub const MSG_DONTWAIT: c_int = 0x40;
    pub const MSG_NOSIGNAL: c_int = 0x4000;
    pub const MSG_CMSG_CLOEXEC: c_int = 0x4000_0000;
    pub const F_SETFD: c_int = 2;
    pub const F_SETFL: c_int = 4;
    pub const FD_CLOEXEC: c_int = 1;
    pub const POLLIN: i16 = 1;
    pub const WNOHANG: c_int = 1;
    pub const TIOCSCTTY: c_ulong = 0x540E;
    pub const EAGAIN: i32 = 11;
    pub const EINTR: i32 = 4;
    pub const ENOENT: i32 = 2;
    pub const ENOTDIR: i32 = 20;
    pub const EACCES: i32 = 13;
    pub const EMFILE: i32 = 24;
    pub const ENFILE: i32 = 23;
    pub const MSG_PEEK: c_int = 0x2;
    pub const RLIMIT_NOFILE: c_int = 7;

    unsafe extern "C" {
        pub fn prctl(option: c_int, ...) -> c_int;
        pub fn sigemptyset(set: *mut sigset_t) -> c_int;
        pub fn sigaddset(set: *mut sigset_t, signal: c_int) -> c_int;
        pub fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int;
        pub fn sigaction(signal: c_int, action: *const sigaction_t, old: *mut sigaction_t)
        -> c_int;
        pub fn signalfd(fd: c_int, set: *const sigset_t, flags: c_int) -> c_int;
        pub fn poll(fds: *mut pollfd, count: nfds_t, timeout: c_int) -> c_int;
        pub fn read(fd: c_int, buffer: *mut c_void, count: usize) -> isize;
        pub fn accept4(fd: c_int, address: *mut c_void, length: *mut socklen_t, flags: c_int)
        -> c_int;
        pub fn getsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *mut c_void,
            length: *mut socklen_t,
        ) -> c_int;
        pub fn fcntl(fd: c_int, command: c_int, ...) -> c_int;
        pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
        pub fn recv(fd: c_int, buffer: *mut c_void, length: usize, flags: c_int) -> isize;
        pub fn send(fd: c_int, buffer: *const c_void, length: usize, flags: c_int) -> isize;
        pub fn recvmsg(fd: c_int, message: *mut msghdr, flags: c_int) -> isize;
        pub fn kill(pid: c_int, signal: c_int) -> c_int;
        pub fn setsid() -> c_int;
        pub fn fork() -> c_int;
        pub fn dup2(old: c_int, new: c_int) -> c_int;
        pub fn chdir(path: *const std::ffi::c_char) -> c_int;
        pub fn execve(
            path: *const std::ffi::c_char,
            argv: *const *const std::ffi::c_char,
            envp: *const *const std::ffi::c_char,
        ) -> c_int;
        pub fn write(fd: c_int, buffer: *const c_void, count: usize) -> isize;
        pub fn getrlimit(resource: c_int, limit: *mut rlimit) -> c_int;
        pub fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
        pub fn _exit(code: c_int) -> !;
    }

    #[allow(non_snake_case)]
    pub fn WIFEXITED(status: c_int) -> bool {
        status & 0x7f == 0
    }
    #[allow(non_snake_case)]
    pub fn WEXITSTATUS(status: c_int) -> c_int {
        (status >> 8) & 0xff
    }
    #[allow(non_snake_case)]
    pub fn WIFSIGNALED(status: c_int) -> bool {
        ((status & 0x7f) + 1) as i8 >= 2
    }
    #[allow(non_snake_case)]
    pub fn WTERMSIG(status: c_int) -> c_int {
        status & 0x7f
    }

    /// The descriptors of every `SCM_RIGHTS` message in a received control buffer.
    pub fn received_fds(control: &[u8]) -> Vec<c_int> {
        let header = std::mem::size_of::<cmsghdr>();
        let mut fds = Vec::new();
        let mut at = 0;
        while at + header <= control.len() {
            // SAFETY: a cmsghdr fits at `at` (checked above); read unaligned.
            let message: cmsghdr =
                unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
            if message.cmsg_len < header || at + message.cmsg_len > control.len() {
                break;
            }
            if message.cmsg_level == SOL_SOCKET && message.cmsg_type == SCM_RIGHTS {
                for chunk in control[at + header..at + message.cmsg_len].chunks_exact(4) {
                    fds.push(c_int::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
                }
            }
            // Each message is padded to the size of a long.
            let align = std::mem::size_of::<c_long>();
            at += message.cmsg_len.div_ceil(align) * align;
        }
        fds
    }
}
