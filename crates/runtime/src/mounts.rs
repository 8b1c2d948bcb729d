//! Overlay mounts of sandbox root filesystems, in the host's mount namespace, and the
//! helper's private view of them.
//!
//! Every sandbox's mounts live below `<runtime>/sandboxes`, which is made a mount of its own
//! (bound onto itself, private) when the runtime opens. A helper process then works in a
//! mount namespace of its own in which that one mount — and with it every sandbox's mounts —
//! is detached, but for the one sandbox it creates. libcontainer reads `/proc/self/mountinfo`
//! over a dozen times per create or exec, and a new sandbox's mount namespace starts as a
//! copy of its creator's: without the private view, both grow with every sandbox on the host.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Mounts `lower` (read-only) with `upper` (the sandbox's own writes) at `target`.
pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(io::Error::from)
}

/// Every mount point at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything at or below `dir`, deepest first; lazily if a mount is busy.
pub fn unmount_all_under(dir: &Path) -> io::Result<()> {
    for point in mounts_under(dir)? {
        if umount2(&point, MntFlags::empty()).is_err() {
            umount2(&point, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// Makes `dir` a mount of its own (bound onto itself) with private propagation, unless it
/// already is one. Refused while something is mounted below it that is not (sandboxes of an
/// earlier version still running): a mount over them would hide them.
pub fn ensure_own_mount(dir: &Path) -> io::Result<()> {
    let below = mounts_under(dir)?;
    let mounted = below.iter().any(|point| point == dir);
    if !mounted && !below.is_empty() {
        return Err(io::Error::other(format!(
            "{} already holds mounts; it becomes a mount of its own once they are gone",
            dir.display()
        )));
    }
    if !mounted {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(io::Error::from)?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Removes the mount [`ensure_own_mount`] made (when nothing is mounted below it any more).
pub fn release_own_mount(dir: &Path) -> io::Result<()> {
    if mounts_under(dir)?.iter().any(|point| point != dir) {
        return Ok(());
    }
    match umount2(dir, MntFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// In the calling process: enters a new mount namespace, private to it, in which `sandboxes`
/// (a mount of its own) is detached with every sandbox mount below it, except `keep` (one
/// sandbox's directory, with its mounts), which is moved aside through `staging` and put
/// back in place. Only for a single-threaded helper: unshare affects the calling thread.
pub fn enter_private_view(sandboxes: &Path, staging: &Path, keep: Option<&Path>) -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let bind = |from: &Path, to: &Path| {
        mount(
            Some(from),
            to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if let Some(keep) = keep {
        bind(keep, staging)?;
    }
    umount2(sandboxes, MntFlags::MNT_DETACH)?;
    if let Some(keep) = keep {
        // The directory is there again, now on the file system beneath the detached mount.
        bind(staging, keep)?;
        umount2(staging, MntFlags::MNT_DETACH)?;
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
