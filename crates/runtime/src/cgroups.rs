//! airlock's own dealings with sandboxes' cgroups (libcontainer creates and removes them):
//! reading a sandbox's counters — what it uses, how often the kernel OOM-killed inside it —
//! and, for the reconciler, finding cgroups by name under an instance's parent in every
//! hierarchy (v1 controllers, a v2 tree, or both on a hybrid host) and removing those a crash
//! left, with the processes in them.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_core::model::Usage;

use crate::process_tree;

const ROOT: &str = "/sys/fs/cgroup";

/// One sandbox's cgroup, `relative` being its `cgroupsPath` (e.g. `/airlock/ab12cd/env_…`).
pub struct SandboxCgroup {
    relative: PathBuf,
    unified: bool,
}

impl SandboxCgroup {
    pub fn new(relative: &str) -> Self {
        Self {
            relative: PathBuf::from(relative.trim_start_matches('/')),
            // A pure v2 host has cgroup.controllers at the root; hybrid and v1 hosts do not.
            unified: Path::new(ROOT).join("cgroup.controllers").exists(),
        }
    }

    fn file(&self, controller: &str, name: &str) -> PathBuf {
        if self.unified {
            Path::new(ROOT).join(&self.relative).join(name)
        } else {
            Path::new(ROOT)
                .join(controller)
                .join(&self.relative)
                .join(name)
        }
    }

    /// Processes the kernel killed for memory in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (controller, name) = if self.unified {
            ("", "memory.events")
        } else {
            ("memory", "memory.oom_control")
        };
        read_keyed(&self.file(controller, name), "oom_kill").unwrap_or(0)
    }

    pub fn usage(&self) -> Usage {
        if self.unified {
            Usage {
                memory_bytes: read_number(&self.file("", "memory.current")).unwrap_or(0),
                pids: read_number(&self.file("", "pids.current")).unwrap_or(0),
                oom_kills: self.oom_kills(),
                cpu_nanoseconds: read_keyed(&self.file("", "cpu.stat"), "usage_usec").unwrap_or(0)
                    * 1000,
                disk_bytes: None,
            }
        } else {
            Usage {
                memory_bytes: read_number(&self.file("memory", "memory.usage_in_bytes"))
                    .unwrap_or(0),
                pids: read_number(&self.file("pids", "pids.current")).unwrap_or(0),
                oom_kills: self.oom_kills(),
                cpu_nanoseconds: read_number(&self.file("cpuacct", "cpuacct.usage")).unwrap_or(0),
                disk_bytes: None,
            }
        }
    }
}

// ---- leftovers, found and removed by name ----

/// Where the cgroup hierarchies are mounted: each v1 controller's and the v2 tree (on a
/// hybrid host both), from the mount table.
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fs_type = after.split(' ').next()?;
            let point = before.split(' ').nth(4)?;
            matches!(fs_type, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect();
    mounts.sort();
    mounts.dedup();
    mounts
}

/// `parent` (e.g. `/airlock/ab12cd`) in every hierarchy.
fn parent_dirs(parent: &str) -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .map(|mount| mount.join(parent.trim_start_matches('/')))
        .collect()
}

/// The names of the cgroups under `parent`, in any hierarchy.
pub fn cgroup_names(parent: &str) -> BTreeSet<String> {
    parent_dirs(parent)
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The existing cgroup directories of sandbox `name` under `parent`.
pub fn cgroup_dirs(parent: &str, name: &str) -> Vec<PathBuf> {
    parent_dirs(parent)
        .into_iter()
        .map(|dir| dir.join(name))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Kills every process in sandbox `name`'s cgroups and removes them, in every hierarchy.
/// Returns whether there were any.
pub fn remove_cgroups(parent: &str, name: &str) -> io::Result<bool> {
    let dirs = cgroup_dirs(parent, name);
    for dir in &dirs {
        remove_cgroup(dir)?;
    }
    Ok(!dirs.is_empty())
}

/// Removes one cgroup and any below it, killing their processes first. A cgroup directory
/// cannot be removed while a process is in it; its files go with it.
fn remove_cgroup(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                remove_cgroup(&entry.path())?;
            }
        }
    }
    // Frozen processes cannot act on SIGKILL: thaw first (v1 freezer, v2 cgroup.freeze).
    for (file, value) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
        if dir.join(file).exists() {
            let _ = fs::write(dir.join(file), value);
        }
    }
    let deadline = Instant::now() + process_tree::DEATH_TIMEOUT;
    loop {
        let processes = match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let pids: Vec<i32> = processes
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
        if pids.is_empty() {
            match fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
                // EBUSY: a process is still leaving; try again below.
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => {}
            }
        } else {
            tracing::warn!(cgroup = %dir.display(), ?pids, "killing processes left in a sandbox's cgroup");
            // v2 kills the whole cgroup at once, racing no fork; v1 kills pid by pid, and a
            // fork in between is caught on the next round.
            let kill_file = dir.join("cgroup.kill");
            if !kill_file.exists() || fs::write(&kill_file, "1").is_err() {
                for pid in pids {
                    // SAFETY: kill has no memory effects; a stale pid fails with ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "processes in {} do not die",
                    dir.display()
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes `parent` (and the shared level above it once no instance uses it) from every
/// hierarchy where it is empty. Only safe while no sandbox is being created.
pub fn release_parent(parent: &str) {
    for dir in parent_dirs(parent) {
        if fs::remove_dir(&dir).is_ok()
            && let Some(shared) = dir.parent()
        {
            let _ = fs::remove_dir(shared);
        }
    }
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a file of `key value` lines.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    parse_keyed(&text, key)
}

fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(parse_keyed(v1, "oom_kill"), Some(3));
        assert_eq!(parse_keyed(v1, "oom_kill_disable"), Some(0));
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_keyed(v2, "oom_kill"), Some(2));
        assert_eq!(parse_keyed(v2, "missing"), None);
    }
}
