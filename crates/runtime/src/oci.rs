//! The OCI runtime spec (`config.json`) of a sandbox: namespaces, mounts, capabilities,
//! masked paths and cgroup limits. Seccomp is deliberately absent here: the executor installs
//! the precompiled profile (see `seccomp.rs`).

use std::path::Path;

use airlock_core::model::Resources;
use serde_json::{Value, json};

/// What the sandbox keeps of root's capabilities: enough to administer files and processes
/// inside, nothing that reaches the kernel or the host (no SYS_ADMIN, NET_ADMIN, SYS_PTRACE,
/// SYS_MODULE, MKNOD, NET_RAW, DAC_READ_SEARCH, …).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from the sandbox, as OCI runtimes do by default: kernel memory, keys, timers
/// and firmware that leak host state or invite attacks.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths left visible but read-only: writing them would change the host kernel.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct SpecInputs<'a> {
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub init_binary: &'a Path,
    pub cgroup_path: &'a str,
    pub resources: Resources,
}

pub fn sandbox_spec(inputs: &SpecInputs<'_>) -> Value {
    let capabilities: Vec<&str> = CAPABILITIES.to_vec();
    let memory_bytes = inputs.resources.memory_mib * 1024 * 1024;
    const CPU_PERIOD: u64 = 100_000;
    let cpu_quota = inputs.resources.millicpus * CPU_PERIOD / 1000;
    json!({
        "ociVersion": "1.0.2",
        "root": { "path": inputs.rootfs, "readonly": false },
        "hostname": inputs.hostname,
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/.airlock/init"],
            "env": [
                format!("PATH={PATH}"),
                "HOME=/root",
                "TERM=xterm",
                "LANG=C.UTF-8",
                format!("HOSTNAME={}", inputs.hostname),
            ],
            "cwd": "/root",
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            "noNewPrivileges": true,
        },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/.airlock/init", "type": "bind", "source": inputs.init_binary, "options": ["bind", "ro", "nosuid", "nodev"] },
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" },
                { "type": "network" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "cgroup" },
            ],
            "cgroupsPath": inputs.cgroup_path,
            "resources": {
                "memory": { "limit": memory_bytes },
                "cpu": { "quota": cpu_quota, "period": CPU_PERIOD },
                "pids": { "limit": inputs.resources.pids },
                "devices": [
                    { "allow": false, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm" },
                    { "allow": true, "type": "c", "major": 136, "access": "rwm" },
                ],
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_as_an_oci_spec_with_the_limits_asked_for() {
        let spec = sandbox_spec(&SpecInputs {
            rootfs: Path::new("/data/rootfs"),
            hostname: "web",
            init_binary: Path::new("/data/airlock-init"),
            cgroup_path: "/airlock/x/env",
            resources: Resources {
                memory_mib: 64,
                millicpus: 500,
                pids: 100,
                disk_mib: 256,
            },
        });
        let parsed: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
        let linux = parsed.linux().as_ref().unwrap();
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(
            resources.memory().as_ref().unwrap().limit(),
            Some(64 * 1024 * 1024)
        );
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 100);
        assert!(
            parsed
                .process()
                .as_ref()
                .unwrap()
                .no_new_privileges()
                .unwrap()
        );
        assert!(
            linux.seccomp().is_none(),
            "seccomp is installed by the executor, precompiled"
        );
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 6);
    }
}
