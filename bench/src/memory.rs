//! What memory the systems under test and the host use, read from `/proc` and the cgroup v1
//! memory hierarchy: a process's resident and proportional set sizes, a memory cgroup's usage,
//! and the host's `/proc/meminfo`. All sizes are in KiB.

use std::fs;
use std::path::Path;

use serde_json::{Value, json};

/// Where the cgroup v1 memory hierarchy is mounted.
const MEMORY_CGROUP_ROOT: &str = "/sys/fs/cgroup/memory";

/// One process's memory: `VmRSS` from `/proc/<pid>/status` and `Pss` from
/// `/proc/<pid>/smaps_rollup` (RSS with each shared page divided among its sharers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl ProcessMemory {
    /// The process's memory, or `None` once it is gone.
    pub fn of(pid: i32) -> Option<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = field_kib(&status, "VmRSS:").unwrap_or(0);
        let pss_kib = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|rollup| field_kib(&rollup, "Pss:"))
            .unwrap_or(0);
        Some(Self { rss_kib, pss_kib })
    }

    /// The processes' memory added up, with how many of them were still there.
    pub fn sum(pids: &[i32]) -> (usize, Self) {
        let mut total = Self::default();
        let mut count = 0;
        for memory in pids.iter().filter_map(|pid| Self::of(*pid)) {
            total.rss_kib += memory.rss_kib;
            total.pss_kib += memory.pss_kib;
            count += 1;
        }
        (count, total)
    }
}

/// The host's memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMemory {
    /// What the kernel estimates new work could get without swapping.
    pub available_kib: u64,
    pub free_kib: u64,
    /// Slab the kernel cannot reclaim (dentries and inodes in use, mounts, namespaces, …).
    pub slab_unreclaimable_kib: u64,
    /// Kernel stacks of all threads.
    pub kernel_stack_kib: u64,
    /// Page tables of all processes.
    pub page_tables_kib: u64,
    /// tmpfs and shared memory.
    pub shmem_kib: u64,
    /// Per-CPU allocations (memory cgroups hold some each).
    pub percpu_kib: u64,
}

impl HostMemory {
    pub fn now() -> Self {
        let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let get = |name: &str| field_kib(&info, name).unwrap_or(0);
        Self {
            available_kib: get("MemAvailable:"),
            free_kib: get("MemFree:"),
            slab_unreclaimable_kib: get("SUnreclaim:"),
            kernel_stack_kib: get("KernelStack:"),
            page_tables_kib: get("PageTables:"),
            shmem_kib: get("Shmem:"),
            percpu_kib: get("Percpu:"),
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "mem_available_kib": self.available_kib,
            "mem_free_kib": self.free_kib,
            "slab_unreclaimable_kib": self.slab_unreclaimable_kib,
            "kernel_stack_kib": self.kernel_stack_kib,
            "page_tables_kib": self.page_tables_kib,
            "shmem_kib": self.shmem_kib,
            "percpu_kib": self.percpu_kib,
        })
    }
}

/// What a memory cgroup (v1) and its descendants are charged: `memory.usage_in_bytes` (user
/// and kernel memory together) and `memory.kmem.usage_in_bytes` (the kernel part), in KiB.
/// `None` when the cgroup does not exist.
pub fn cgroup_usage(relative: &str) -> Option<(u64, u64)> {
    let dir = Path::new(MEMORY_CGROUP_ROOT).join(relative.trim_start_matches('/'));
    let read = |file: &str| {
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(|bytes| bytes / 1024)
    };
    Some((
        read("memory.usage_in_bytes")?,
        read("memory.kmem.usage_in_bytes").unwrap_or(0),
    ))
}

/// Memory cgroups as the kernel counts them (`/proc/cgroups`, deleted ones it still keeps
/// included) and as the hierarchy shows them: (counted, visible). A deleted cgroup stays
/// ("dying") while pages charged to it remain in the page cache.
pub fn memory_cgroups() -> (u64, u64) {
    let counted = fs::read_to_string("/proc/cgroups")
        .ok()
        .and_then(|text| {
            text.lines()
                .map(|line| line.split_whitespace().collect::<Vec<_>>())
                .find(|fields| fields.first() == Some(&"memory"))
                .and_then(|fields| fields.get(2).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0);
    (counted, count_dirs(Path::new(MEMORY_CGROUP_ROOT)))
}

fn count_dirs(dir: &Path) -> u64 {
    1 + fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| count_dirs(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Writes dirty pages back and drops the clean page cache (`vm.drop_caches = 1`): pages
/// charged to deleted memory cgroups go, and those cgroups with them. Only reclaimable memory
/// is dropped; it costs others some re-reading from disk.
pub fn drop_page_cache() -> std::io::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "1")
}

/// The number of processes on the host.
pub fn process_count() -> usize {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_str()
                        .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The host's load averages over 1, 5 and 15 minutes, from `/proc/loadavg`.
pub fn load_average() -> [f64; 3] {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut values = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [(); 3].map(|_| values.next().unwrap_or(0.0))
}

/// A `Name:   123 kB` field of a `/proc` file, in KiB.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "MemTotal:       24683520 kB\nMemAvailable:   23887104 kB\n";
        assert_eq!(field_kib(text, "MemAvailable:"), Some(23_887_104));
        assert_eq!(field_kib(text, "Pss:"), None);
    }

    #[test]
    fn the_root_memory_cgroup_is_counted() {
        let (counted, visible) = memory_cgroups();
        if counted == 0 {
            eprintln!("skipped: no cgroup v1 memory hierarchy here");
            return;
        }
        assert!(visible >= 1);
    }

    #[test]
    fn this_process_has_resident_memory() {
        let memory = ProcessMemory::of(std::process::id() as i32).unwrap();
        assert!(memory.rss_kib > 0);
    }
}
