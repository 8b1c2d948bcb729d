//! The network attempts: raw sockets, changing interfaces, and connecting to addresses that
//! must be unreachable from inside (the host, airlock's own port, cloud metadata, private
//! networks).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use libc::c_long;

use crate::report::Attempt;
use crate::sys::{Refusal, close, errno, errno_name, outcome, refused};

/// How long a connection may take before it counts as refused.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The interface the netlink attempt tries to create.
const PROBE_INTERFACE: &[u8] = b"alprobe0";

pub fn attempts() -> Vec<Attempt> {
    vec![
        // A packet socket sees and forges every frame on the interfaces of the namespace.
        socket(
            "socket_packet_raw",
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as libc::c_int,
        ),
        // A raw IP socket forges packets with any source address.
        socket(
            "socket_inet_raw",
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_RAW,
        ),
        // Creating an interface (a dummy) through rtnetlink, as `ip link add` does.
        netlink_new_link(),
        // Changing an interface's flags (to their current value) through the old ioctl.
        set_loopback_flags(),
    ]
}

fn socket(name: &str, domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> Attempt {
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    outcome(name, fd as c_long, Refusal::AnyError, |fd| {
        close(fd);
        "made the socket".to_owned()
    })
}

fn push_attribute(buffer: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let length = 4 + payload.len();
    buffer.extend_from_slice(&(length as u16).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(payload);
    buffer.resize(buffer.len().next_multiple_of(4), 0);
}

/// An rtnetlink link message about `PROBE_INTERFACE`: RTM_NEWLINK of a dummy, or RTM_DELLINK.
fn link_message(message_type: u16, flags: u16) -> Vec<u8> {
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    let mut body = vec![0u8; 16]; // struct ifinfomsg, all zero: any family, any index
    let mut name = PROBE_INTERFACE.to_vec();
    name.push(0);
    push_attribute(&mut body, IFLA_IFNAME, &name);
    if message_type == libc::RTM_NEWLINK {
        let mut link_info = Vec::new();
        push_attribute(&mut link_info, IFLA_INFO_KIND, b"dummy");
        push_attribute(&mut body, IFLA_LINKINFO, &link_info);
    }
    let mut message = Vec::with_capacity(16 + body.len());
    message.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&message_type.to_ne_bytes());
    message.extend_from_slice(
        &(flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes(),
    );
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(&body);
    message
}

/// Sends one request and returns the error of the kernel's acknowledgement (0 is success).
fn netlink_request(fd: libc::c_int, message: &[u8]) -> Result<i32, String> {
    // SAFETY: send and recv over buffers of the lengths given.
    unsafe {
        if libc::send(fd, message.as_ptr().cast(), message.len(), 0) < 0 {
            return Err(format!("send: {}", errno_name(errno())));
        }
        let mut answer = [0u8; 4096];
        let received = libc::recv(fd, answer.as_mut_ptr().cast(), answer.len(), 0);
        if received < 0 {
            return Err(format!("recv: {}", errno_name(errno())));
        }
        let answer = &answer[..received as usize];
        let message_type = answer
            .get(4..6)
            .map(|bytes| u16::from_ne_bytes([bytes[0], bytes[1]]));
        let error = answer
            .get(16..20)
            .map(|bytes| i32::from_ne_bytes(bytes.try_into().expect("4 bytes")));
        match (message_type, error) {
            (Some(kind), Some(error)) if kind == libc::NLMSG_ERROR as u16 => Ok(-error),
            _ => Err("an answer that is not an acknowledgement".to_owned()),
        }
    }
}

fn netlink_new_link() -> Attempt {
    let name = "netlink_new_link";
    // SAFETY: socket takes integers only.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Attempt::blocked(name, format!("netlink socket: {}", errno_name(errno())));
    }
    let timeout = libc::timeval {
        tv_sec: CONNECT_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let create = link_message(
        libc::RTM_NEWLINK,
        (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16,
    );
    let attempt = match netlink_request(fd, &create) {
        Ok(0) => {
            let _ = netlink_request(fd, &link_message(libc::RTM_DELLINK, 0));
            Attempt::not_blocked(name, "created a dummy interface (then deleted it)")
        }
        Ok(code) => refused(name, code, Refusal::PermissionOnly),
        Err(problem) => Attempt::blocked(name, problem),
    };
    close(fd as c_long);
    attempt
}

/// struct ifreq with the flags member of its union.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; 16],
    flags: libc::c_short,
    padding: [u8; 22],
}

fn set_loopback_flags() -> Attempt {
    let name = "siocsifflags_lo";
    // SAFETY: socket takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Attempt::blocked(name, format!("socket: {}", errno_name(errno())));
    }
    let mut request = InterfaceRequest {
        name: [0; 16],
        flags: 0,
        padding: [0; 22],
    };
    request.name[..2].copy_from_slice(b"lo");
    // SAFETY: both ioctls read or write a struct ifreq, which `request` is laid out as.
    let result = unsafe {
        if libc::ioctl(
            fd,
            libc::SIOCGIFFLAGS as _,
            &mut request as *mut InterfaceRequest,
        ) != 0
        {
            let attempt = Attempt::blocked(name, format!("SIOCGIFFLAGS: {}", errno_name(errno())));
            libc::close(fd);
            return attempt;
        }
        libc::ioctl(
            fd,
            libc::SIOCSIFFLAGS as _,
            &request as *const InterfaceRequest,
        ) as c_long
    };
    let attempt = outcome(name, result, Refusal::PermissionOnly, |_| {
        "set lo's flags (to their current value)".to_owned()
    });
    close(fd as c_long);
    attempt
}

/// A TCP connection to `target` (`HOST:PORT`): refused, unreachable or timed out is blocked.
pub fn connect(target: &str) -> Attempt {
    let name = format!("connect {target}");
    let addresses = match target.to_socket_addrs() {
        Ok(addresses) => addresses.collect::<Vec<_>>(),
        Err(error) => return Attempt::blocked(name, format!("cannot resolve: {error}")),
    };
    let mut failures = Vec::new();
    for address in addresses {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(_) => return Attempt::not_blocked(name, format!("connected to {address}")),
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                failures.push(format!("{address}: timed out after {CONNECT_TIMEOUT:?}"));
            }
            Err(error) => failures.push(format!(
                "{address}: {}",
                error
                    .raw_os_error()
                    .map_or_else(|| error.to_string(), errno_name)
            )),
        }
    }
    if failures.is_empty() {
        return Attempt::blocked(name, "no address to connect to");
    }
    Attempt::blocked(name, failures.join("; "))
}
