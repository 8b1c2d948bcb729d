//! Killing a process and all its descendants, as the host sees them.
//!
//! Killing top-down lets children escape (they are re-parented to the sandbox's init and leave
//! the tree), so the tree is first frozen with SIGSTOP, walked again until no new process
//! appears, and only then killed.

use std::collections::BTreeSet;
use std::fs;

/// The process and its descendants, from `/proc/<pid>/task/<tid>/children`.
pub fn descendants_and_self(pid: i32) -> BTreeSet<i32> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![pid];
    while let Some(current) = stack.pop() {
        if !seen.insert(current) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{current}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("children");
            if let Ok(children) = std::fs::read_to_string(path) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|child| child.parse::<i32>().ok()),
                );
            }
        }
    }
    seen
}

pub fn kill_tree(pid: i32) {
    let mut frozen = BTreeSet::new();
    for _ in 0..64 {
        let tree = descendants_and_self(pid);
        let new: Vec<i32> = tree.difference(&frozen).copied().collect();
        if new.is_empty() {
            break;
        }
        for process in new {
            // SAFETY: kill has no memory effects; a stale pid fails with ESRCH.
            unsafe { libc::kill(process, libc::SIGSTOP) };
            frozen.insert(process);
        }
    }
    for process in frozen {
        // SAFETY: as above.
        unsafe { libc::kill(process, libc::SIGKILL) };
    }
}

/// How long a killed process may take to die before it counts as stuck.
pub const DEATH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the process runs (a zombie has finished: it only waits to be reaped).
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself hold ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_missing_one_is_not() {
        assert!(is_alive(std::process::id() as i32));
        assert!(!is_alive(i32::MAX));
    }
}
