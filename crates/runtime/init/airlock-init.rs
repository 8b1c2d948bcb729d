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
//! 2. The agent starts the command in a session of its own (a terminal becomes its
//!    controlling terminal) and answers `started <pid>\n`; a command that cannot start gets
//!    the reason on its stderr and the answer `exit 127\n`.
//! 3. Each byte the server sends then is a signal for the command's process group; byte 0
//!    kills the command with its descendants. When the command ends the agent answers
//!    `exit <code>\n` (128 + the signal for a killed command) and closes the connection.
//! 4. If the server hangs up first, the command and its descendants are killed.
//!
//! Built without crates, so the few system interfaces it needs are declared in `sys` below
//! (Linux, 64-bit glibc: x86_64 and aarch64 share these values).

#![no_main]

use std::ffi::{c_int, c_void};

use sys as libc;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The listening socket the runtime helper passes.
const LISTENER: RawFd = 3;
/// Commands running (or connections being read) at once; more wait in the listen backlog.
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
    let mut connections: Vec<Connection> = Vec::new();
    reap(&mut connections);
    loop {
        let mut polls = Vec::with_capacity(connections.len() + 2);
        polls.push(poll_for(signals));
        let accepting = listener.is_some() && connections.len() < MAX_CONNECTIONS;
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
            reap(&mut connections);
        }
        // Connections first (their indexes match `polls` only until one is added).
        let mut index = connections.len();
        while index > 0 {
            index -= 1;
            if polls[index + 2].revents != 0 && !connections[index].serve() {
                connections.swap_remove(index);
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
            }
        }
    }
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
                match receive(&self.socket, request, stdio) {
                    Received::More => return true,
                    Received::Closed => return false,
                    Received::Whole => {}
                }
                let request = std::mem::take(request);
                let stdio = std::mem::take(stdio);
                match start(&request, stdio) {
                    Ok(pid) => {
                        self.state = State::Running { pid };
                        self.answer(&format!("started {pid}\n"))
                    }
                    Err(()) => {
                        self.answer("exit 127\n");
                        false
                    }
                }
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
                if n < 0 {
                    let error = std::io::Error::last_os_error().raw_os_error();
                    return matches!(error, Some(libc::EAGAIN | libc::EINTR));
                }
                if n == 0 {
                    // The server hung up: nobody is left to see the command's output.
                    kill_tree(pid);
                    return false;
                }
                for &signal in &bytes[..n as usize] {
                    if signal == 0 {
                        kill_tree(pid);
                    } else {
                        // SAFETY: kill takes a process group (the command leads its own; it
                        // is unreaped until we answer, so its id is not reused) and a signal.
                        unsafe { libc::kill(-pid, c_int::from(signal)) };
                    }
                }
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
    Whole,
    Closed,
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
            if length > MAX_REQUEST || request.len() > 4 + length {
                return Received::Closed;
            }
            if request.len() == 4 + length {
                request.drain(..4);
                return Received::Whole;
            }
        }
    }
}

/// Starts the command a request describes; its pid, or `Err` once the reason is on its
/// stderr.
fn start(request: &[u8], stdio: Vec<OwnedFd>) -> Result<i32, ()> {
    let Ok([stdin, stdout, stderr]) = <[OwnedFd; 3]>::try_from(stdio) else {
        return Err(());
    };
    let mut report = stderr.try_clone().map(File::from).map_err(|_| ())?;
    let fail = |report: &mut File, why: &str| {
        let _ = writeln!(report, "airlock: {why}");
        Err(())
    };
    let mut fields = request
        .strip_suffix(b"\0")
        .unwrap_or(request)
        .split(|byte| *byte == 0);
    fn text(field: Option<&[u8]>) -> Option<&str> {
        field.and_then(|field| std::str::from_utf8(field).ok())
    }
    let (Some(flags), Some(cwd), Some(argc)) =
        (text(fields.next()), text(fields.next()), text(fields.next()))
    else {
        return fail(&mut report, "a malformed request");
    };
    let Ok(argc) = argc.parse::<usize>() else {
        return fail(&mut report, "a malformed request");
    };
    let argv: Vec<&[u8]> = fields.by_ref().take(argc).collect();
    if argv.len() != argc || argc == 0 {
        return fail(&mut report, "a malformed request");
    }
    use std::os::unix::ffi::OsStrExt;
    let os = |bytes: &[u8]| std::ffi::OsStr::from_bytes(bytes).to_owned();
    let mut command = Command::new(os(argv[0]));
    command.args(argv[1..].iter().map(|arg| os(arg))).env_clear();
    for variable in fields {
        if let Some(at) = variable.iter().position(|byte| *byte == b'=') {
            command.env(os(&variable[..at]), os(&variable[at + 1..]));
        }
    }
    if !cwd.is_empty() {
        command.current_dir(cwd);
    }
    let terminal = flags == "t";
    command
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: between fork and exec only sigprocmask, sigaction, setsid and ioctl run, all
    // async-signal-safe, on memory of this frame.
    unsafe {
        command.pre_exec(move || {
            // The command starts as a fresh process would: nothing blocked (init blocks
            // SIGCHLD and SIGTERM for its signalfd; a shell inheriting that waits forever),
            // every signal at its default.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            let default: libc::sigaction_t = std::mem::zeroed();
            for signal in 1..=64 {
                // SIGKILL and SIGSTOP, and the C library's own, refuse: nothing to undo.
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match command.spawn() {
        // Never waited for through `Child`: `reap` collects it.
        Ok(child) => Ok(child.id() as i32),
        Err(error) => {
            let program = String::from_utf8_lossy(argv[0]);
            fail(&mut report, &format!("cannot run {program}: {error}"))
        }
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
