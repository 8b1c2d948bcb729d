//! Reading a sandbox's cgroups: what it uses and how often the kernel OOM-killed inside it.
//! libcontainer creates and removes the cgroups; this only reads their counters, on the
//! cgroup v1 hierarchies (`/sys/fs/cgroup/<controller>/…`) or a unified v2 tree.

use std::fs;
use std::path::{Path, PathBuf};

use airlock_core::model::Usage;

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
