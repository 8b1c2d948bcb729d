//! Files in and out of sandboxes.
//!
//! - An access grant's secret files, written into a sandbox's root filesystem before it
//!   starts: each path resolved beneath the root without following any symbolic link, so no
//!   link in an image can send a secret elsewhere on the host. Files are root's, mode 0400.
//! - Copies in and out of a running sandbox (`airlock cp`): paths resolved inside the root
//!   the sandbox sees, as if chrooted there (`RESOLVE_IN_ROOT`: `..` and absolute links stop
//!   at its root; `/proc` magic links refused), so nothing outside can be read or written.
//!   An upload is written beside its target and renamed over it only when complete.

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

/// The longest path accepted inside a sandbox.
const MAX_PATH: usize = 4096;

/// Why a path inside a sandbox cannot be used, in words for the caller.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn check_path(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::Refused(format!(
            "{path:?} is not an absolute path"
        )));
    }
    if path.len() > MAX_PATH || path.contains('\0') {
        return Err(PathError::Refused(
            "paths are at most 4096 bytes, without NUL".into(),
        ));
    }
    Ok(())
}

fn explain(path: &str, errno: Errno) -> PathError {
    let why = match errno {
        Errno::ENOENT => "no such file or directory",
        Errno::ENOTDIR => "a part of the path is not a directory",
        Errno::EISDIR => "is a directory",
        Errno::ELOOP => "too many symbolic links, or a link through /proc",
        Errno::EACCES | Errno::EPERM => "permission denied",
        Errno::EXDEV => "leads out of the environment's root",
        Errno::ENAMETOOLONG => "name too long",
        Errno::EROFS => "read-only file system",
        Errno::ENOSPC | Errno::EDQUOT => "no space left in the environment",
        other => return PathError::Io(std::io::Error::from(other)),
    };
    PathError::Refused(format!("{path}: {why}"))
}

fn in_root(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// Opens the regular file at `path` inside `root` for reading: it and its size.
pub fn open_inside(root: &OwnedFd, path: &str) -> Result<(File, u64), PathError> {
    check_path(path)?;
    // O_NONBLOCK: opening a FIFO must not hang; it is refused below like any non-file.
    let how = in_root(OFlag::O_RDONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK);
    let fd = openat2(root.as_raw_fd(), path, how).map_err(|errno| explain(path, errno))?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let metadata = file.metadata()?;
    if metadata.is_dir() {
        return Err(explain(path, Errno::EISDIR));
    }
    if !metadata.is_file() {
        return Err(PathError::Refused(format!("{path}: not a regular file")));
    }
    Ok((file, metadata.len()))
}

/// A file being uploaded: written under a temporary name beside its target, renamed over it
/// by [`Upload::commit`], removed if dropped before.
#[derive(Debug)]
pub struct Upload {
    dir: OwnedFd,
    temporary: String,
    name: String,
    committed: bool,
}

impl Upload {
    /// Starts an upload to `path` inside `root` (its directory must exist): the upload and
    /// the file to write into.
    pub fn begin(root: &OwnedFd, path: &str, mode: u32) -> Result<(Self, File), PathError> {
        check_path(path)?;
        let (parent, name) = path.rsplit_once('/').expect("absolute paths have a '/'");
        if name.is_empty() || name == "." || name == ".." {
            return Err(PathError::Refused(format!(
                "{path}: name the file to write, not a directory"
            )));
        }
        let parent = if parent.is_empty() { "/" } else { parent };
        let dir = openat2(
            root.as_raw_fd(),
            parent,
            in_root(OFlag::O_PATH | OFlag::O_DIRECTORY),
        )
        .map_err(|errno| explain(parent, errno))?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        let dir = unsafe { OwnedFd::from_raw_fd(dir) };
        let temporary = format!(".{name}.airlock-{:016x}", rand::random::<u64>());
        let temporary = if temporary.len() > 255 {
            format!(".airlock-upload-{:016x}", rand::random::<u64>())
        } else {
            temporary
        };
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            temporary.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|errno| explain(path, errno))?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))?;
        let upload = Self {
            dir,
            temporary,
            name: name.to_owned(),
            committed: false,
        };
        Ok((upload, file))
    }

    /// Puts the complete file in place (replacing a file, or a symbolic link itself, there).
    pub fn commit(mut self) -> Result<(), PathError> {
        nix::fcntl::renameat(
            Some(self.dir.as_raw_fd()),
            self.temporary.as_str(),
            Some(self.dir.as_raw_fd()),
            self.name.as_str(),
        )
        .map_err(|errno| explain(&self.name, errno))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = nix::unistd::unlinkat(
                Some(self.dir.as_raw_fd()),
                self.temporary.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
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

    fn root_of(dir: &Path) -> OwnedFd {
        open_dir(None, dir).unwrap()
    }

    #[test]
    fn reads_a_file_inside_and_never_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        std::fs::write(root.path().join("inside"), "hello").unwrap();
        std::fs::create_dir(root.path().join("dir")).unwrap();
        // An absolute link and a relative one climbing out: both stay in the root.
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../etc/hostname", root.path().join("rel"))
            .unwrap();
        let root_fd = root_of(root.path());

        let (mut file, size) = open_inside(&root_fd, "/inside").unwrap();
        assert_eq!(size, 5);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "hello");
        // ".." at the root is the root.
        assert!(open_inside(&root_fd, "/../../inside").is_ok());
        for path in ["/abs", "/rel", "/missing"] {
            let error = open_inside(&root_fd, path).unwrap_err().to_string();
            assert!(error.contains("no such file"), "{path}: {error}");
        }
        assert!(
            open_inside(&root_fd, "/dir")
                .unwrap_err()
                .to_string()
                .contains("directory")
        );
        assert!(open_inside(&root_fd, "relative").is_err());
    }

    #[test]
    fn an_upload_appears_whole_or_not_at_all_and_never_outside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), root.path().join("link")).unwrap();
        let root_fd = root_of(root.path());

        let (upload, mut file) = Upload::begin(&root_fd, "/new", 0o640).unwrap();
        file.write_all(b"partial").unwrap();
        drop(upload);
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            2,
            "the temporary is gone"
        );

        let (upload, mut file) = Upload::begin(&root_fd, "/new", 0o640).unwrap();
        file.write_all(b"whole").unwrap();
        upload.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("new")).unwrap(),
            "whole"
        );
        let mode = std::fs::metadata(root.path().join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        // A directory link pointing out resolves inside (and is missing there); a link as
        // the target is replaced, not followed.
        assert!(Upload::begin(&root_fd, "/out/x", 0o644).is_err());
        let (upload, mut file) = Upload::begin(&root_fd, "/link", 0o644).unwrap();
        file.write_all(b"replaced").unwrap();
        upload.commit().unwrap();
        assert!(!root.path().join("link").is_symlink());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(Upload::begin(&root_fd, "/", 0o644).is_err());
    }
}
