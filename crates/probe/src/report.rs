//! The probe's report: what it saw (`recon`) and what it tried (`attempts`). This is the JSON
//! contract with the isolation tests and with operators; fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub recon: Recon,
    pub attempts: Vec<Attempt>,
}

impl Report {
    /// True when every escape attempt was refused.
    pub fn all_blocked(&self) -> bool {
        self.attempts.iter().all(|attempt| attempt.blocked)
    }

    /// The attempts that were not refused.
    pub fn not_blocked(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|attempt| !attempt.blocked)
            .collect()
    }
}

/// One escape attempt and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub name: String,
    pub blocked: bool,
    /// The errno the kernel answered (e.g. `EPERM`), or what happened when it was not refused.
    pub detail: String,
}

impl Attempt {
    pub fn blocked(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            blocked: true,
            detail: detail.into(),
        }
    }

    pub fn not_blocked(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            blocked: false,
            detail: detail.into(),
        }
    }
}

/// What a process inside sees of its surroundings, as container recon tools list it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Recon {
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    pub egid: u32,
    pub hostname: String,
    /// Inode number of each `/proc/self/ns/<name>` that could be read: equal inodes are the
    /// same namespace.
    pub namespaces: BTreeMap<String, u64>,
    /// `CapInh`, `CapPrm`, `CapEff`, `CapBnd` and `CapAmb` of `/proc/self/status`, in hex.
    pub capabilities: BTreeMap<String, String>,
    /// `CapEff` decoded into names such as `CAP_CHOWN`.
    pub effective_capability_names: Vec<String>,
    /// Every thread of the probe, read while more than one thread runs.
    pub threads: Vec<ThreadStatus>,
    pub mounts: Vec<Mount>,
    /// Names in `/dev`, sorted.
    pub devices: Vec<String>,
    /// Environment variable names of this process and of every process it can read.
    pub environment: Vec<String>,
    /// Names of environment variables whose value holds an airlock token (`alk_`).
    pub environment_with_tokens: Vec<String>,
    /// Named unix sockets of this network namespace (`/proc/net/unix`).
    pub unix_sockets: Vec<String>,
    /// Socket files found on the filesystem (outside `/proc` and `/sys`).
    pub socket_files: Vec<String>,
    /// Network interfaces (`/proc/net/dev`).
    pub interfaces: Vec<String>,
    /// Local addresses (`/proc/net/fib_trie` and `/proc/net/if_inet6`).
    pub addresses: Vec<String>,
    /// Every process visible in `/proc`.
    pub processes: Vec<Process>,
    /// `/proc/self/cgroup`, line by line.
    pub cgroups: Vec<String>,
    /// The LSM label (`/proc/self/attr/current`), when there is one.
    pub security_label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStatus {
    pub tid: u32,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: Option<u32>,
    pub seccomp_filters: Option<u32>,
    pub no_new_privs: Option<u32>,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub mount_point: String,
    /// Per-mount options, such as `ro,nosuid,nodev,noexec`.
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// The directory of the filesystem mounted there (not `/` for bind mounts).
    pub root: String,
    pub super_options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    /// The first word of `/proc/<pid>/cmdline`.
    pub command: String,
}
