//! Reaching into a running sandbox from the server without forking: its root filesystem as
//! the sandbox sees it (`/proc/<init>/root`, with the sandbox's own mounts) and its network
//! namespace (joined by a fresh thread that only makes one socket).

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use libcontainer::container::Container;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// How long a connection into a sandbox may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running sandbox's init, held by its `/proc/<pid>` directory: every later look at it goes
/// through that descriptor, so if the init dies and its pid is reused, nothing reaches the
/// newcomer (lookups under a dead process's directory fail).
pub struct Init(OwnedFd);

impl Init {
    /// The sandbox's init, checked to be in the sandbox's cgroup; None when it is not running.
    pub fn find(state_root: &Path, id: &str) -> Option<Self> {
        let container = Container::load(state_root.join(id)).ok()?;
        let pid = container.pid()?.as_raw();
        let dir = nix::fcntl::open(
            format!("/proc/{pid}").as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        // SAFETY: a new descriptor that nothing else owns.
        let init = Self(unsafe { OwnedFd::from_raw_fd(dir) });
        let mut cgroups = String::new();
        std::io::Read::read_to_string(
            &mut init.open("cgroup", OFlag::O_RDONLY).ok()?,
            &mut cgroups,
        )
        .ok()?;
        let suffix = format!("/{id}");
        cgroups
            .lines()
            .any(|line| {
                line.rsplit(':')
                    .next()
                    .is_some_and(|path| path.ends_with(&suffix))
            })
            .then_some(init)
    }

    fn open(&self, name: &str, flags: OFlag) -> io::Result<File> {
        let fd = nix::fcntl::openat(
            Some(self.0.as_raw_fd()),
            name,
            flags | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: a new descriptor that nothing else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The sandbox's root directory as its processes see it (an `O_PATH` descriptor).
    pub fn root(&self) -> io::Result<OwnedFd> {
        Ok(self
            .open("root", OFlag::O_PATH | OFlag::O_DIRECTORY)?
            .into())
    }

    /// One of its namespaces (`net`, `uts`), to join.
    fn namespace(&self, kind: &str) -> io::Result<File> {
        self.open(&format!("ns/{kind}"), OFlag::O_RDONLY)
    }
}

/// Sets the hostname in the UTS namespace of the sandbox's init, from a short-lived thread that
/// joins it (setns changes only the calling thread's namespace).
pub fn set_hostname(init: &Init, hostname: &str) -> io::Result<()> {
    let namespace = init.namespace("uts")?;
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

/// Connects to `port` on the loopback of the network namespace of the sandbox's init. The socket
/// is made in that namespace by a short-lived thread (setns changes only the calling
/// thread's namespace) and then used from anywhere like any other.
pub fn connect(init: &Init, port: u16) -> io::Result<TcpStream> {
    let namespace = init.namespace("net")?;
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
