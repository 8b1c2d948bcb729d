//! Writing an access grant's secret files into a sandbox's root filesystem before it starts:
//! each path resolved beneath the root without following any symbolic link, so no link in
//! an image can send a secret elsewhere on the host. Files are root's, mode 0400.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use airlock_core::access::SandboxFile;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, mkdirat};

/// Writes `files` under `rootfs`, making missing directories (mode 0755).
pub fn write_files(rootfs: &Path, files: &[SandboxFile]) -> std::io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let root = open_dir(None, rootfs)?;
    for file in files {
        write_one(&root, file).map_err(|error| {
            std::io::Error::new(error.kind(), format!("{}: {error}", file.path))
        })?;
    }
    Ok(())
}

fn write_one(root: &OwnedFd, file: &SandboxFile) -> std::io::Result<()> {
    let relative = file.path.trim_start_matches('/');
    let (parents, name) = match relative.rsplit_once('/') {
        Some((parents, name)) => (Some(parents), name),
        None => (None, relative),
    };
    let mut dir = root.try_clone()?;
    for part in parents.into_iter().flat_map(|parents| parents.split('/')) {
        match mkdirat(Some(dir.as_raw_fd()), part, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(errno.into()),
        }
        dir = open_dir(Some(&dir), Path::new(part))?;
    }
    let how = OpenHow::new()
        .flags(
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
        )
        .mode(Mode::from_bits_truncate(0o400))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(dir.as_raw_fd(), name, how).map_err(std::io::Error::from)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let mut out = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o400))?;
    out.write_all(file.contents.expose())?;
    out.sync_all()
}

/// Opens a directory beneath `parent` (or an absolute host path when `None`), refusing
/// symbolic links at every step.
fn open_dir(parent: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let fd = match parent {
        Some(parent) => openat2(
            parent.as_raw_fd(),
            path,
            OpenHow::new()
                .flags(flags | OFlag::O_NOFOLLOW)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
        ),
        None => nix::fcntl::open(path, flags, Mode::empty()),
    }
    .map_err(std::io::Error::from)?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::access::SecretValue;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &str, contents: &str) -> SandboxFile {
        SandboxFile {
            path: path.into(),
            contents: SecretValue::new(contents.as_bytes().to_vec()),
        }
    }

    #[test]
    fn writes_files_with_their_directories_read_only_for_root() {
        let root = tempfile::tempdir().unwrap();
        write_files(
            root.path(),
            &[file("/run/secrets/db", "hunter2"), file("/token", "t")],
        )
        .unwrap();
        let written = root.path().join("run/secrets/db");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "hunter2");
        assert_eq!(
            std::fs::metadata(&written).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(
            std::fs::read_to_string(root.path().join("token")).unwrap(),
            "t"
        );
    }

    #[test]
    fn refuses_to_follow_a_symbolic_link_out_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("var")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), root.path().join("leaf")).unwrap();
        assert!(write_files(root.path(), &[file("/var/secret", "s")]).is_err());
        assert!(write_files(root.path(), &[file("/leaf", "s")]).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
