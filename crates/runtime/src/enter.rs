//! Reaching into a running sandbox from the server without forking: its root filesystem as
//! the sandbox sees it (`/proc/<init>/root`, with the sandbox's own mounts) and its network
//! namespace (joined by a fresh thread that only makes one socket).

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use libcontainer::container::Container;

/// How long a connection into a sandbox may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The host pid of the sandbox's init, checked to be in the sandbox's cgroup (so a pid
/// reused by another process is never taken for it). None when the sandbox is not running.
pub fn init_pid(state_root: &Path, id: &str) -> Option<i32> {
    let container = Container::load(state_root.join(id)).ok()?;
    let pid = container.pid()?.as_raw();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroups.contains(id).then_some(pid)
}

/// The sandbox's root directory as its processes see it (an `O_PATH` descriptor).
pub fn open_root(pid: i32) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the hostname in the UTS namespace of process `pid`, from a short-lived thread that
/// joins it (setns changes only the calling thread's namespace).
pub fn set_hostname(pid: i32, hostname: &str) -> io::Result<()> {
    let namespace = File::open(format!("/proc/{pid}/ns/uts"))?;
    let hostname = hostname.to_owned();
    std::thread::Builder::new()
        .name("airlock-hostname".into())
        .spawn(move || -> io::Result<()> {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWUTS)?;
            nix::unistd::sethostname(&hostname)?;
            Ok(())
        })?
        .join()
        .map_err(|_| io::Error::other("the hostname thread panicked"))?
}

/// Connects to `port` on the loopback of the network namespace of process `pid`. The socket
/// is made in that namespace by a short-lived thread (setns changes only the calling
/// thread's namespace) and then used from anywhere like any other.
pub fn connect(pid: i32, port: u16) -> io::Result<TcpStream> {
    let namespace = File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::Builder::new()
        .name("airlock-connect".into())
        .spawn(move || -> io::Result<TcpStream> {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)?;
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                CONNECT_TIMEOUT,
            )
        })?
        .join()
        .map_err(|_| io::Error::other("the connecting thread panicked"))?
}
