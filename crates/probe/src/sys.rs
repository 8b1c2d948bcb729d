//! Low-level helpers of the attempts: errno names, reading a system call's answer as refused
//! or not, C strings, and running an attempt in a forked child.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::Path;

use crate::report::Attempt;

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `EPERM`, `ENOENT`, …, or `errno N` for the rest.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENOKEY => "ENOKEY",
        libc::ESTALE => "ESTALE",
        libc::ENOTSUP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno {code}"),
    };
    name.to_owned()
}

/// How an attempt's error is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Any error means the attempt failed (opening a file, connecting, making a socket).
    AnyError,
    /// Only a refusal counts: `EPERM` or `EACCES` (the kernel's permission checks, and the
    /// seccomp filter's answer) or `ENOSYS` (filtered or absent). Any other error means the
    /// kernel got past its permission check and only the probe's harmless arguments stopped
    /// it, so a real attacker's arguments would have worked.
    PermissionOnly,
}

impl Refusal {
    fn refuses(self, code: i32) -> bool {
        match self {
            Refusal::AnyError => true,
            Refusal::PermissionOnly => {
                matches!(code, libc::EPERM | libc::EACCES | libc::ENOSYS)
            }
        }
    }
}

/// Reads an error code as this attempt's outcome.
pub fn refused(name: &str, code: i32, refusal: Refusal) -> Attempt {
    if refusal.refuses(code) {
        Attempt::blocked(name, errno_name(code))
    } else {
        Attempt::not_blocked(
            name,
            format!(
                "{}: the kernel got past its permission check",
                errno_name(code)
            ),
        )
    }
}

/// Reads a raw system call's return value: negative is an error (errno is read), anything else
/// means the call was allowed and `on_success` describes (and undoes) what it did.
pub fn outcome(
    name: &str,
    result: libc::c_long,
    refusal: Refusal,
    on_success: impl FnOnce(libc::c_long) -> String,
) -> Attempt {
    if result < 0 {
        refused(name, errno(), refusal)
    } else {
        Attempt::not_blocked(name, on_success(result))
    }
}

pub fn c_string(text: &str) -> CString {
    CString::new(text).expect("no NUL in the probe's own strings")
}

pub fn c_path(path: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).unwrap_or_else(|_| c_string("/nonexistent"))
}

pub fn close(fd: libc::c_long) {
    // SAFETY: closing a descriptor this process opened and owns; nothing else uses it.
    unsafe { libc::close(fd as libc::c_int) };
}

/// Runs `attempt` in a forked child, so that a success (a new namespace, a new root) changes
/// only the child, and a single-threaded process makes the call (unshare of a user namespace
/// requires one). The probe must be single-threaded when it calls this.
pub fn in_child(name: &str, attempt: impl FnOnce() -> Attempt) -> Attempt {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Attempt::not_blocked(name, format!("pipe: {}", errno_name(errno())));
    }
    // SAFETY: the probe is single-threaded here (its recon threads are joined), so the child
    // may run ordinary Rust code; it leaves with _exit and never returns into the caller.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Attempt::not_blocked(name, format!("fork: {}", errno_name(errno())));
    }
    if pid == 0 {
        let result = attempt();
        let message = format!("{}{}", u8::from(result.blocked), result.detail);
        // SAFETY: the write end of the pipe, owned by this child; then leave without running
        // the parent's destructors or atexit handlers.
        unsafe {
            libc::write(fds[1], message.as_ptr().cast(), message.len());
            libc::_exit(0);
        }
    }
    // SAFETY: the parent owns both ends; it closes the write end and reads the other to EOF.
    let mut reader = unsafe {
        libc::close(fds[1]);
        std::fs::File::from_raw_fd(fds[0])
    };
    let mut message = String::new();
    let _ = reader.read_to_string(&mut message);
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        return if signal == libc::SIGSYS {
            Attempt::blocked(name, "killed by SIGSYS (seccomp)")
        } else {
            Attempt::not_blocked(name, format!("the child died of signal {signal}"))
        };
    }
    match message.split_at_checked(1) {
        Some(("1", detail)) => Attempt::blocked(name, detail),
        Some(("0", detail)) => Attempt::not_blocked(name, detail),
        _ => Attempt::not_blocked(name, "the child reported nothing"),
    }
}
