//! Recon: what a process inside sees, read the way amicontained and deepce read it — from
//! `/proc`, `/dev` and the filesystem, without changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv6Addr;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use crate::report::{Mount, Process, Recon, ThreadStatus};

/// Namespaces whose identity the report gives.
pub const NAMESPACES: &[&str] = &["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"];

/// Capability numbers and names, as in `linux/capability.h`.
const CAPABILITY_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The token prefix of airlock's credentials.
const TOKEN_PREFIX: &str = "alk_";

/// Upper bound on the directory entries the socket search visits.
const SOCKET_SEARCH_LIMIT: usize = 500_000;

pub fn collect() -> Recon {
    // SAFETY: these identity getters have no preconditions.
    let (uid, euid, gid, egid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    };
    let status = read("/proc/self/status");
    let capabilities: BTreeMap<String, String> = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
        .iter()
        .filter_map(|key| Some((key.to_string(), status_field(&status, key)?.to_owned())))
        .collect();
    let effective_capability_names = capabilities
        .get("CapEff")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(capability_names)
        .unwrap_or_default();
    let (environment, environment_with_tokens) = environment();
    Recon {
        uid,
        euid,
        gid,
        egid,
        hostname: hostname(),
        namespaces: namespace_inodes(),
        capabilities,
        effective_capability_names,
        threads: threads(),
        mounts: mounts(),
        devices: list_names("/dev"),
        environment,
        environment_with_tokens,
        unix_sockets: unix_sockets(),
        socket_files: socket_files(),
        interfaces: interfaces(),
        addresses: local_addresses(),
        processes: processes(),
        cgroups: read("/proc/self/cgroup")
            .lines()
            .map(str::to_owned)
            .collect(),
        security_label: fs::read_to_string("/proc/self/attr/current")
            .ok()
            .map(|label| label.trim_end_matches(['\0', '\n']).to_owned()),
    }
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == key).then(|| value.trim())
    })
}

fn capability_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| match CAPABILITY_NAMES.get(bit) {
            Some(name) => (*name).to_owned(),
            None => format!("CAP_{bit}"),
        })
        .collect()
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most the given length into the buffer.
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|byte| *byte == 0).unwrap_or(0);
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// `pid:[4026531836]` → 4026531836.
pub fn namespace_inode(link: &str) -> Option<u64> {
    link.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// The inode of each of this process's namespaces (see [`NAMESPACES`]).
pub fn namespace_inodes() -> BTreeMap<String, u64> {
    NAMESPACES
        .iter()
        .filter_map(|name| {
            let link = fs::read_link(format!("/proc/self/ns/{name}")).ok()?;
            Some((name.to_string(), namespace_inode(&link.to_string_lossy())?))
        })
        .collect()
}

/// Seccomp and no_new_privs of every thread, read while two extra threads wait: a filter
/// installed on one thread only would show here.
fn threads() -> Vec<ThreadStatus> {
    let release = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let release = release.clone();
            std::thread::spawn(move || {
                release.wait();
            })
        })
        .collect();
    let mut threads: Vec<ThreadStatus> = fs::read_dir("/proc/self/task")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let tid = entry.file_name().to_str()?.parse().ok()?;
                    let status = read(entry.path().join("status"));
                    let number = |key| status_field(&status, key)?.parse().ok();
                    Some(ThreadStatus {
                        tid,
                        seccomp: number("Seccomp"),
                        seccomp_filters: number("Seccomp_filters"),
                        no_new_privs: number("NoNewPrivs"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    release.wait();
    for worker in workers {
        let _ = worker.join();
    }
    threads.sort_by_key(|thread| thread.tid);
    threads
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[index], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut after = after.split(' ');
            Some(Mount {
                root: unescape(fields.get(3)?),
                mount_point: unescape(fields.get(4)?),
                options: fields.get(5)?.to_string(),
                fs_type: after.next()?.to_owned(),
                source: unescape(after.next().unwrap_or("")),
                super_options: after.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

fn mounts() -> Vec<Mount> {
    parse_mountinfo(&read("/proc/self/mountinfo"))
}

fn list_names(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Variable names of every readable process environment (this one's included), and the
/// names whose value carries an airlock token.
fn environment() -> (Vec<String>, Vec<String>) {
    let mut names = BTreeSet::new();
    let mut with_tokens = BTreeSet::new();
    let mut note = |name: String, value: &[u8]| {
        let holds_token = value
            .windows(TOKEN_PREFIX.len())
            .any(|window| window == TOKEN_PREFIX.as_bytes());
        if holds_token {
            with_tokens.insert(name.clone());
        }
        names.insert(name);
    };
    for (name, value) in std::env::vars_os() {
        use std::os::unix::ffi::OsStrExt;
        note(name.to_string_lossy().into_owned(), value.as_bytes());
    }
    for pid in pids() {
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for entry in environ
            .split(|byte| *byte == 0)
            .filter(|entry| !entry.is_empty())
        {
            let (name, value) = match entry.iter().position(|byte| *byte == b'=') {
                Some(at) => (&entry[..at], &entry[at + 1..]),
                None => (entry, &[][..]),
            };
            note(String::from_utf8_lossy(name).into_owned(), value);
        }
    }
    (
        names.into_iter().collect(),
        with_tokens.into_iter().collect(),
    )
}

fn unix_sockets() -> Vec<String> {
    let sockets: BTreeSet<String> = read("/proc/net/unix")
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(7).map(str::to_owned))
        .collect();
    sockets.into_iter().collect()
}

/// Socket files anywhere but `/proc` and `/sys`, the way deepce looks for a docker.sock.
fn socket_files() -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![std::path::PathBuf::from("/")];
    let mut visited = 0;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > SOCKET_SEARCH_LIMIT {
                found.push(format!(
                    "(search stopped after {SOCKET_SEARCH_LIMIT} entries)"
                ));
                return found;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_socket() {
                found.push(path.to_string_lossy().into_owned());
            } else if kind.is_dir() && path != Path::new("/proc") && path != Path::new("/sys") {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

fn interfaces() -> Vec<String> {
    read("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim().to_owned()))
        .collect()
}

/// The local addresses: IPv4 ones are the `/32 host LOCAL` leaves of `/proc/net/fib_trie`,
/// IPv6 ones the lines of `/proc/net/if_inet6`.
pub fn addresses_from(fib_trie: &str, if_inet6: &str) -> Vec<String> {
    let mut addresses = BTreeSet::new();
    let mut last_leaf = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last_leaf = Some(address.to_owned());
        } else if line.contains("/32 host LOCAL") {
            addresses.extend(last_leaf.take());
        }
    }
    for line in if_inet6.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if let Ok(bits) = u128::from_str_radix(hex, 16) {
            addresses.insert(Ipv6Addr::from(bits).to_string());
        }
    }
    addresses.into_iter().collect()
}

/// The local addresses of this process's network namespace.
pub fn local_addresses() -> Vec<String> {
    addresses_from(&read("/proc/net/fib_trie"), &read("/proc/net/if_inet6"))
}

fn processes() -> Vec<Process> {
    pids()
        .into_iter()
        .map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
            Process {
                pid,
                comm: read(format!("/proc/{pid}/comm")).trim_end().to_owned(),
                command: String::from_utf8_lossy(command).into_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_point_type_source_and_root() {
        let text = "22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b\n\
                    30 22 8:1 /data/init /.airlock/init ro shared:1 - ext4 /dev/sda1 rw\n\
                    31 22 0:5 / /my\\040dir rw - tmpfs tmpfs rw\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].mount_point, "/");
        assert_eq!(mounts[0].fs_type, "overlay");
        assert_eq!(mounts[0].super_options, "rw,lowerdir=/a,upperdir=/b");
        assert_eq!(mounts[1].root, "/data/init");
        assert_eq!(mounts[1].options, "ro");
        assert_eq!(mounts[1].source, "/dev/sda1");
        assert_eq!(mounts[2].mount_point, "/my dir");
    }

    #[test]
    fn addresses_are_local_leaves_and_ipv6_lines() {
        let fib_trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
                        \x20    |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n\
                        \x20    |-- 192.0.2.2\n        /32 host LOCAL\n";
        let if_inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(
            addresses_from(fib_trie, if_inet6),
            ["127.0.0.1", "192.0.2.2", "::1"]
        );
    }

    #[test]
    fn namespace_links_give_their_inode() {
        assert_eq!(namespace_inode("pid:[4026531836]"), Some(4026531836));
        assert_eq!(namespace_inode("garbage"), None);
    }

    #[test]
    fn capability_masks_decode_to_names() {
        assert_eq!(
            capability_names((1 << 21) | 1),
            ["CAP_CHOWN", "CAP_SYS_ADMIN"]
        );
    }
}
