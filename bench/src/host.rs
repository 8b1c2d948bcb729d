//! Host plumbing for setup and cleanup: mounts under a directory, cgroup directories, processes
//! by command line, terminating a process by id, and an fsync probe of a filesystem.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the cgroup hierarchies are mounted (cgroup v1 hierarchies plus `unified`).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Every mount point at or below `dir` in this process's mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or below `dir` (lazily if busy); returns what it unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<PathBuf> {
    let mut unmounted = Vec::new();
    for point in mounts_under(dir) {
        let Ok(path) = std::ffi::CString::new(point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 takes a NUL-terminated path and flags; no memory is shared.
        let done = unsafe {
            libc::umount2(path.as_ptr(), 0) == 0
                || libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0
        };
        if done {
            unmounted.push(point);
        }
    }
    unmounted
}

/// Removes `dir` and everything in it, but only once nothing is mounted below it: deleting
/// through a live overlay mount would reach into its lower layers' view.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mounts = mounts_under(dir);
    if !mounts.is_empty() {
        bail!(
            "not removing {}: {} mount(s) still below it, e.g. {}",
            dir.display(),
            mounts.len(),
            mounts[0].display()
        );
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// mountinfo escapes space, tab, newline and backslash as three octal digits.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = if bytes[i] == b'\\' && i + 3 < bytes.len() {
            std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|code| u8::from_str_radix(code, 8).ok())
        } else {
            None
        };
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup hierarchies mounted under `/sys/fs/cgroup`.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(CGROUP_ROOT)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.is_dir() && !path.is_symlink())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Whether the cgroup `relative` (e.g. `libpod_parent`) exists in any hierarchy.
pub fn cgroup_exists(relative: &str) -> bool {
    cgroup_hierarchies()
        .iter()
        .any(|hierarchy| hierarchy.join(relative.trim_start_matches('/')).is_dir())
}

/// Removes the cgroup `relative` and its descendants from every hierarchy, deepest first.
/// A cgroup that still holds processes stays (rmdir fails with EBUSY); returns what stayed.
pub fn remove_cgroup(relative: &str) -> Vec<PathBuf> {
    let mut stayed = Vec::new();
    for hierarchy in cgroup_hierarchies() {
        let top = hierarchy.join(relative.trim_start_matches('/'));
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        for dir in dirs {
            if fs::remove_dir(&dir).is_err() && dir.exists() {
                stayed.push(dir);
            }
        }
    }
    stayed
}

/// [`remove_cgroup`], retried for up to `patience` while cgroups stay busy: a process that
/// just died keeps its cgroup busy until its parent (often PID 1) has reaped it.
pub fn remove_cgroup_patiently(relative: &str, patience: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + patience;
    loop {
        let stayed = remove_cgroup(relative);
        if stayed.is_empty() || Instant::now() >= deadline {
            return stayed;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Processes whose command line contains `needle`, as (pid, command line).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let own = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_owned()));
        }
    }
    found
}

/// Whether `pid` is gone (or a zombie waiting to be reaped).
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesized command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Sends `signal` to `pid` and waits up to `patience` for it to go.
pub fn signal_and_wait(pid: i32, signal: i32, patience: Duration) -> bool {
    // SAFETY: kill has no memory effects; a stale pid fails with ESRCH.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    process_gone(pid)
}

/// SIGKILL to every pid at once, then waits up to `patience` for all of them to go; returns
/// the ones still there.
pub fn kill_all(pids: &[i32], patience: Duration) -> Vec<i32> {
    for pid in pids {
        // SAFETY: kill has no memory effects; a stale pid fails with ESRCH.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + patience;
    let mut left: Vec<i32> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| !process_gone(*pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    left.retain(|pid| !process_gone(*pid));
    left
}

/// SIGTERM, then SIGKILL if `pid` is still there after `patience`.
pub fn terminate(pid: i32, patience: Duration) {
    if !signal_and_wait(pid, libc::SIGTERM, patience) {
        signal_and_wait(pid, libc::SIGKILL, Duration::from_secs(5));
    }
}

/// Time of writing 4 KiB and fsyncing it, `count` times, in a scratch file in `dir`: the floor
/// of one durable SQLite commit (WAL mode, `synchronous=FULL`) on that filesystem.
pub fn fsync_probe(dir: &Path, count: usize) -> Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut file = fs::File::create(&path).context("creating the fsync probe")?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    fs::remove_file(&path)?;
    Ok(samples)
}

/// The hard limit of a resource of this process (e.g. `libc::RLIMIT_NOFILE`).
pub fn hard_rlimit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_max
}

/// Cumulative CPU time of the whole host from `/proc/stat`, in clock ticks: (busy, iowait,
/// total). Differences between two snapshots say how loaded the machine was meanwhile, by
/// anything (the benchmark, the system under test, or someone else).
pub fn cpu_snapshot() -> (u64, u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, get(4), busy + get(3) + get(4))
}

/// The share of all CPUs' time spent busy between two [`cpu_snapshot`]s, in percent.
pub fn busy_percent(before: (u64, u64, u64), after: (u64, u64, u64)) -> f64 {
    let total = after.2.saturating_sub(before.2).max(1) as f64;
    100.0 * after.0.saturating_sub(before.0) as f64 / total
}

/// "busy X%, iowait Y%" of all CPUs between two [`cpu_snapshot`]s.
pub fn cpu_load_between(before: (u64, u64, u64), after: (u64, u64, u64)) -> String {
    let total = after.2.saturating_sub(before.2).max(1) as f64;
    format!(
        "host CPUs busy {:.0}%, iowait {:.0}% (all processes)",
        100.0 * after.0.saturating_sub(before.0) as f64 / total,
        100.0 * after.1.saturating_sub(before.1) as f64 / total
    )
}

/// The one-line description of the machine printed with the results.
pub fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {memory_gib:.0} GiB RAM, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn this_process_is_not_gone() {
        assert!(!process_gone(std::process::id() as i32));
    }
}
