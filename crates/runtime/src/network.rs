//! Network modes of sandboxes.
//!
//! - `none`: the sandbox's own network namespace with only `lo` (brought up by the helper).
//! - `egress`: in addition, a veth pair: `eth0` inside, `alk<instance><slot>` on the host,
//!   a /30 per sandbox carved from [`SUBNET`], a default route through the host end, and NAT
//!   out of the host's own uplink. A host-wide firewall (iptables, installed once by
//!   [`install_firewall`]) lets a sandbox open connections to the outside and nothing else:
//!   the host itself (every address and port, airlock's included), other sandboxes,
//!   link-local (cloud metadata), loopback, multicast and the private and shared ranges are
//!   dropped, apart from DNS to the host's resolvers and what an operator allows. IPv6 is
//!   switched off on both ends and dropped by ip6tables as a second line.
//!
//! Links are made with rtnetlink messages (netlink-packet-route, the crates libcontainer
//! itself uses) from the runtime helper, between creating the sandbox and starting it. The
//! link's alias records its owner, `airlock <instance> <environment>`, so leftovers can be
//! found and removed. When a sandbox dies its namespace goes, and the pair with it; deleting
//! a sandbox also deletes its host end at once.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use serde::{Deserialize, Serialize};

/// Addresses of egress sandboxes: 16,384 /30 links, host end `.1`, sandbox end `.2`.
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 0, 0), 16);

/// Host-side link names start with this; the firewall matches `alk+`.
const LINK_PREFIX: &str = "alk";

/// Destinations an egress sandbox never reaches unless an operator allows them.
pub const DENIED_RANGES: &[&str] = &[
    "0.0.0.0/8",      // "this network"
    "10.0.0.0/8",     // private (RFC 1918), other sandboxes included
    "100.64.0.0/10",  // shared address space (carrier-grade NAT)
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local: cloud metadata services live here
    "172.16.0.0/12",  // private
    "192.0.0.0/24",   // IETF protocol assignments
    "192.168.0.0/16", // private
    "198.18.0.0/15",  // benchmarking
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, broadcast
];

/// How the server sets up egress, decided at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressConfig {
    /// Resolvers written to the sandbox's resolv.conf; port 53 to them is allowed.
    pub nameservers: Vec<Ipv4Addr>,
    /// Operator-allowed destinations (CIDR) that would otherwise be denied.
    pub allowed: Vec<String>,
}

impl EgressConfig {
    /// The host's own non-loopback IPv4 resolvers, from /etc/resolv.conf.
    pub fn from_host(allowed: Vec<String>) -> Self {
        let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let nameservers = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("nameserver"))
            .filter_map(|address| address.trim().parse::<Ipv4Addr>().ok())
            .filter(|address| !address.is_loopback())
            .collect();
        Self {
            nameservers,
            allowed,
        }
    }

    pub fn resolv_conf(&self) -> String {
        self.nameservers
            .iter()
            .map(|address| format!("nameserver {address}\n"))
            .collect()
    }
}

/// What the helper needs to give one sandbox its link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EgressPlan {
    pub instance: String,
    pub environment: String,
}

/// The addresses of one slot: (host end, sandbox end), both /30.
fn slot_addresses(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(SUBNET.0) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn slot_count() -> u32 {
    1 << (32 - SUBNET.1 - 2)
}

/// Hex digits of the instance in link names: `alk` + 6 + a slot of up to 5 digits fits
/// the kernel's 15 bytes. The alias carries the whole instance name.
const NAME_INSTANCE_DIGITS: usize = 6;

fn host_link_name(instance: &str, slot: u32) -> String {
    format!("{LINK_PREFIX}{}{slot}", short(instance))
}

/// The sandbox end's name while it is being made (it becomes `eth0` inside).
fn peer_link_name(instance: &str, slot: u32) -> String {
    format!("alp{}{slot}", short(instance))
}

fn short(instance: &str) -> &str {
    &instance[..instance.len().min(NAME_INSTANCE_DIGITS)]
}

fn alias(plan: &EgressPlan) -> String {
    format!("airlock {} {}", plan.instance, plan.environment)
}

/// A host link made by airlock: its name and the (instance, environment) of its alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    pub name: String,
    pub instance: String,
    pub environment: String,
}

/// Every airlock link on the host, of any instance.
pub fn host_links() -> Vec<HostLink> {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(LINK_PREFIX) {
                return None;
            }
            let alias = fs::read_to_string(entry.path().join("ifalias")).unwrap_or_default();
            let mut words = alias.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("airlock"), Some(instance), Some(environment)) => Some(HostLink {
                    name,
                    instance: instance.to_owned(),
                    environment: environment.to_owned(),
                }),
                // Being made right now (the alias comes a moment after the link): not ours
                // to judge; a link with a foreign alias is not ours at all.
                _ => None,
            }
        })
        .collect()
}

/// The environments that own links of this instance on the host, for the reconciler to
/// find links a crash left behind (`remove_links` removes them).
pub fn owners(instance: &str) -> std::collections::BTreeSet<String> {
    host_links()
        .into_iter()
        .filter(|link| link.instance == instance)
        .map(|link| link.environment)
        .collect()
}

/// Deletes the host end of every link of `environment` (the peer goes with it).
pub fn remove_links(instance: &str, environment: &str) -> io::Result<()> {
    for link in host_links() {
        if link.instance == instance && link.environment == environment {
            delete_link(&link.name)?;
        }
    }
    Ok(())
}

pub fn delete_link(name: &str) -> io::Result<()> {
    let index = match link_index(name) {
        Ok(index) => index,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let mut message = LinkMessage::default();
    message.header.index = index;
    match Netlink::open()?.request(RouteNetlinkMessage::DelLink(message), 0) {
        // Gone in between (its namespace died): what we wanted.
        Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        other => other,
    }
}

/// Gives the sandbox whose init is `pid` its `eth0`, linked to a new host end. Runs in the
/// helper, before the sandbox starts. On error nothing of the link is left.
pub fn attach(plan: &EgressPlan, pid: i32) -> Result<(), String> {
    let _lock = HostLock::acquire().map_err(|error| format!("network lock: {error}"))?;
    let used: Vec<String> = fs::read_dir("/sys/class/net")
        .map_err(|error| format!("listing links: {error}"))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    let slot = (0..slot_count())
        .find(|slot| {
            let suffix = slot.to_string();
            // Any instance's link, or a peer still on the host, holds the slot.
            !used.iter().any(|name| {
                name.starts_with(LINK_PREFIX)
                    && name.len() > LINK_PREFIX.len() + NAME_INSTANCE_DIGITS
                    && name[LINK_PREFIX.len() + NAME_INSTANCE_DIGITS..] == suffix
            })
        })
        .ok_or("no free address for another egress sandbox")?;
    let host = host_link_name(&plan.instance, slot);
    let peer = peer_link_name(&plan.instance, slot);
    let (host_address, sandbox_address) = slot_addresses(slot);
    let made = (|| -> io::Result<()> {
        let mut netlink = Netlink::open()?;
        netlink.create_veth(&host, &peer, pid)?;
        let index = link_index(&host)?;
        netlink.set_alias(index, &alias(plan))?;
        disable_ipv6(&host)?;
        netlink.add_address(index, host_address, 30)?;
        netlink.set_up(index)
    })();
    if let Err(error) = made {
        let _ = delete_link(&host);
        return Err(format!("making the host link: {error}"));
    }
    let namespace = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|error| format!("opening the sandbox's network namespace: {error}"))?;
    let inside = std::thread::spawn(move || -> io::Result<()> {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut netlink = Netlink::open()?;
        let index = link_index(&peer)?;
        netlink.rename(index, "eth0")?;
        disable_ipv6("eth0")?;
        netlink.add_address(index, sandbox_address, 30)?;
        netlink.set_up(index)?;
        netlink.add_default_route(host_address)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")));
    if let Err(error) = inside {
        let _ = delete_link(&host);
        return Err(format!("configuring eth0: {error}"));
    }
    Ok(())
}

/// Turns IPv6 off on a link of the calling thread's network namespace (what /proc/sys/net
/// shows depends on the namespace of the thread that opens it).
fn disable_ipv6(link: &str) -> io::Result<()> {
    match fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1") {
        // A kernel without IPv6 has nothing to disable.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn link_index(name: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        Err(io::Error::new(io::ErrorKind::NotFound, "no such link"))
    } else {
        Ok(index)
    }
}

/// A host-wide lock held while a slot is chosen and its link made, so concurrent creates
/// (of this or another airlock instance) never pick the same slot.
struct HostLock {
    _file: fs::File,
}

impl HostLock {
    fn acquire() -> io::Result<Self> {
        fs::create_dir_all("/run/airlock")?;
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/airlock/network.lock")?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { _file: file })
    }
}

/// A route netlink socket in the calling thread's network namespace, one request at a time.
struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        let mut reply = vec![0u8; 8192];
        loop {
            let length = self.socket.recv(&mut &mut reply[..], 0)?;
            let mut offset = 0;
            while offset < length {
                let answer =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[offset..length])
                        .map_err(io::Error::other)?;
                let size = answer.header.length as usize;
                if answer.header.sequence_number == self.sequence
                    && let NetlinkPayload::Error(error) = answer.payload
                {
                    return match error.code {
                        None => Ok(()),
                        Some(_) => Err(error.to_io()),
                    };
                }
                if size == 0 {
                    break;
                }
                offset += size;
            }
        }
    }

    fn create_veth(&mut self, host: &str, peer: &str, peer_pid: i32) -> io::Result<()> {
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::NetNsPid(peer_pid as u32),
        ];
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(host.to_owned()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = vec![LinkAttribute::IfAlias(alias.to_owned())];
        self.request(RouteNetlinkMessage::SetLink(message), 0)
    }

    fn rename(&mut self, index: u32, name: &str) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = vec![LinkAttribute::IfName(name.to_owned())];
        self.request(RouteNetlinkMessage::SetLink(message), 0)
    }

    fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(message), 0)
    }

    fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(address)),
            AddressAttribute::Address(IpAddr::V4(address)),
        ];
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

// ---- the host-wide firewall ----

const INPUT_CHAIN: &str = "AIRLOCK-INPUT";
const FORWARD_CHAIN: &str = "AIRLOCK-FORWARD";
const NAT_CHAIN: &str = "AIRLOCK-POSTROUTING";
/// Refusals are answered ("administratively prohibited"), so a program inside fails at
/// once with EHOSTUNREACH instead of waiting for a timeout.
const REJECT: &str = "REJECT --reject-with icmp-admin-prohibited";

/// The filter rules for traffic from and to sandbox links, as iptables-restore input.
fn filter_rules(config: &EgressConfig) -> String {
    let mut rules = vec![
        "*filter".to_owned(),
        format!(":{INPUT_CHAIN} - [0:0]"),
        format!(":{FORWARD_CHAIN} - [0:0]"),
        // The host answers nothing a sandbox starts, on any address or port (airlock's
        // API included); replies to connections the host opened still pass.
        format!("-A {INPUT_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
        format!("-A {INPUT_CHAIN} -j {REJECT}"),
        // Into a sandbox: only replies. A sandbox never reaches another one.
        format!(
            "-A {FORWARD_CHAIN} -o {LINK_PREFIX}+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
        ),
        format!("-A {FORWARD_CHAIN} -o {LINK_PREFIX}+ -j {REJECT}"),
    ];
    for nameserver in &config.nameservers {
        for protocol in ["udp", "tcp"] {
            rules.push(format!(
                "-A {FORWARD_CHAIN} -i {LINK_PREFIX}+ -d {nameserver}/32 -p {protocol} --dport 53 -j ACCEPT"
            ));
        }
    }
    for allowed in &config.allowed {
        rules.push(format!(
            "-A {FORWARD_CHAIN} -i {LINK_PREFIX}+ -d {allowed} -j ACCEPT"
        ));
    }
    for range in DENIED_RANGES
        .iter()
        .copied()
        .chain(host_subnets().iter().map(String::as_str))
    {
        rules.push(format!(
            "-A {FORWARD_CHAIN} -i {LINK_PREFIX}+ -d {range} -j {REJECT}"
        ));
    }
    rules.push(format!("-A {FORWARD_CHAIN} -i {LINK_PREFIX}+ -j ACCEPT"));
    rules.push("COMMIT".to_owned());
    rules.join("\n") + "\n"
}

fn nat_rules() -> String {
    format!(
        "*nat\n:{NAT_CHAIN} - [0:0]\n-A {NAT_CHAIN} -s {}/{} ! -o {LINK_PREFIX}+ -j MASQUERADE\nCOMMIT\n",
        SUBNET.0, SUBNET.1
    )
}

/// The networks on the host's uplinks (the links its default routes use): its LAN, as
/// internal as the private ranges, so denied too.
fn host_subnets() -> Vec<String> {
    let routes = |args: &[&str]| -> String {
        Command::new("ip")
            .args(["-4", "-o", "route", "show"])
            .args(args)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    };
    let device = |line: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        words.find(|word| *word == "dev")?;
        words.next().map(str::to_owned)
    };
    let uplinks: Vec<String> = routes(&["default"]).lines().filter_map(device).collect();
    routes(&["scope", "link"])
        .lines()
        .filter(|line| device(line).is_some_and(|dev| uplinks.contains(&dev)))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|network| network.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// Installs (or refreshes) the host-wide egress firewall and turns on IPv4 forwarding.
/// Idempotent; every airlock instance on the host shares it.
pub fn install_firewall(config: &EgressConfig) -> Result<(), String> {
    restore("iptables-restore", &filter_rules(config))?;
    restore("iptables-restore", &nat_rules())?;
    ensure_jump(
        "iptables",
        "filter",
        "INPUT",
        &["-i", "alk+", "-j", INPUT_CHAIN],
    )?;
    ensure_jump(
        "iptables",
        "filter",
        "FORWARD",
        &["-i", "alk+", "-j", FORWARD_CHAIN],
    )?;
    ensure_jump(
        "iptables",
        "filter",
        "FORWARD",
        &["-o", "alk+", "-j", FORWARD_CHAIN],
    )?;
    ensure_jump("iptables", "nat", "POSTROUTING", &["-j", NAT_CHAIN])?;
    // IPv6 is off on sandbox links; should it come back, nothing passes anyway.
    for (chain, direction) in [("INPUT", "-i"), ("FORWARD", "-i"), ("FORWARD", "-o")] {
        ensure_jump(
            "ip6tables",
            "filter",
            chain,
            &[direction, "alk+", "-j", "DROP"],
        )?;
    }
    let forwarding = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    if forwarding.trim() != "1" {
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|error| format!("enabling IPv4 forwarding: {error}"))?;
        tracing::warn!("enabled IPv4 forwarding (net.ipv4.ip_forward=1) for egress sandboxes");
    }
    Ok(())
}

fn restore(program: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("running {program}: {error}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(rules.as_bytes())
        .map_err(|error| format!("writing to {program}: {error}"))?;
    let output = child
        .wait_with_output()
        .map_err(|error| format!("running {program}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} refused the rules: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Inserts a rule at the top of a built-in chain unless it is already there.
fn ensure_jump(program: &str, table: &str, chain: &str, rule: &[&str]) -> Result<(), String> {
    let run = |action: &str| {
        Command::new(program)
            .args(["-w", "-t", table, action, chain])
            .args(rule)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
    };
    let present = run("-C").map_err(|error| format!("running {program}: {error}"))?;
    if present.status.success() {
        return Ok(());
    }
    let inserted = run("-I").map_err(|error| format!("running {program}: {error}"))?;
    if inserted.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} -t {table} -I {chain}: {}",
            String::from_utf8_lossy(&inserted.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash_30s_inside_the_subnet() {
        assert_eq!(
            slot_addresses(0),
            (Ipv4Addr::new(10, 213, 0, 1), Ipv4Addr::new(10, 213, 0, 2))
        );
        assert_eq!(
            slot_addresses(1),
            (Ipv4Addr::new(10, 213, 0, 5), Ipv4Addr::new(10, 213, 0, 6))
        );
        let last = slot_addresses(slot_count() - 1);
        assert_eq!(last.1, Ipv4Addr::new(10, 213, 255, 254));
        // Names fit IFNAMSIZ (15 bytes) for every slot.
        let instance = "0123456789ab";
        assert!(host_link_name(instance, slot_count() - 1).len() <= 15);
        assert!(peer_link_name(instance, slot_count() - 1).len() <= 15);
    }

    #[test]
    fn rules_deny_before_they_accept() {
        let config = EgressConfig {
            nameservers: vec![Ipv4Addr::new(10, 255, 255, 53)],
            allowed: vec!["10.1.2.0/24".into()],
        };
        let rules = filter_rules(&config);
        let position = |needle: &str| {
            rules
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} missing"))
        };
        let denied = |range: &str| format!("-d {range} -j {REJECT}");
        assert!(
            position("-d 10.255.255.53/32 -p udp --dport 53 -j ACCEPT")
                < position(&denied("10.0.0.0/8"))
        );
        assert!(position("-d 10.1.2.0/24 -j ACCEPT") < position(&denied("10.0.0.0/8")));
        assert!(position(&denied("169.254.0.0/16")) < position("-i alk+ -j ACCEPT"));
        assert!(position(&format!("-o alk+ -j {REJECT}")) < position("-i alk+ -j ACCEPT"));
        assert!(rules.ends_with("COMMIT\n"));
    }
}
