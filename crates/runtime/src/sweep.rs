//! What a sandbox leaves on the host outside libcontainer's state, found and removed by
//! sandbox id: create helpers still at work after their server was killed (and the forks
//! they made, which carry the same command line until they exec), control groups
//! libcontainer never recorded or failed to remove (with the processes in them), and host
//! network devices. `LocalRuntime::list`, `remnants` and `destroy` reach the host through
//! these; the engine's reconciler decides what goes.
//!
//! Everything is keyed by sandbox id, so the reconciler can take an environment's lifecycle
//! lock before it looks: nothing here removes a thing it cannot attribute to one id.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::helper::HELPER_ARG;
use crate::{network, process_tree};

/// How long a killed process may take to die before its cgroup counts as stuck.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);

/// A runtime helper process making or starting a sandbox (or a fork of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    pub pid: i32,
    pub id: String,
}

/// The part of a helper's request that says what it works on (see `helper::HelperRequest`).
#[derive(Deserialize)]
struct HelperTarget {
    op: String,
    state_root: PathBuf,
    id: String,
}

/// Every live create helper working in `state_root`, from `/proc/<pid>/cmdline`. Exec
/// helpers are left out: they only wait for a command, which dies with its sandbox's cgroup.
pub fn create_helpers(state_root: &Path) -> Vec<Helper> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own_pid = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own_pid)
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let mut args = cmdline.split(|byte| *byte == 0);
            let (_program, mode, request) = (args.next()?, args.next()?, args.next()?);
            if mode != HELPER_ARG.as_bytes() {
                return None;
            }
            let target: HelperTarget = serde_json::from_slice(request).ok()?;
            (target.op == "create" && target.state_root == state_root)
                .then_some(Helper { pid, id: target.id })
        })
        .collect()
}

/// Kills the create helpers of sandbox `id` with their process trees and waits until they
/// are dead, so that nothing goes on making the sandbox while it is taken apart. Returns
/// how many helpers there were.
pub fn kill_create_helpers(state_root: &Path, id: &str) -> usize {
    let helpers: Vec<Helper> = create_helpers(state_root)
        .into_iter()
        .filter(|helper| helper.id == id)
        .collect();
    for helper in &helpers {
        tracing::warn!(
            environment = id,
            pid = helper.pid,
            "killing a create helper left by an earlier server"
        );
        process_tree::kill_tree(helper.pid);
    }
    let deadline = Instant::now() + DEATH_TIMEOUT;
    while helpers.iter().any(|helper| is_alive(helper.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    helpers.len()
}

/// Whether the process runs (a zombie has finished: it only waits to be reaped).
fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

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
    let deadline = Instant::now() + DEATH_TIMEOUT;
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

/// The environments that own network devices of this instance on the host, for the
/// reconciler to find devices a crash left behind. Their removal is `Host::remove_network`,
/// which `stop` and `destroy` call. Extend here when a network mode makes other kinds of
/// host devices.
pub fn network_owners(instance: &str) -> BTreeSet<String> {
    network::host_links()
        .into_iter()
        .filter(|link| link.instance == instance)
        .map(|link| link.environment)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(is_alive(std::process::id() as i32));
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn this_test_is_no_create_helper() {
        assert!(create_helpers(Path::new("/nonexistent/state")).is_empty());
    }
}
