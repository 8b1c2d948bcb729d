//! Images: read-only root filesystems that sandboxes layer their private writable layer on.
//!
//! The default image is made from the host itself, so the first run needs no download: a small
//! skeleton (directories, the `/bin → usr/bin` style links, a generated `/etc` with an allowlist
//! of public host files) plus the host's `/usr` as a second read-only layer mounted at `/usr`.
//! Nothing private of the host is in it: no `/root`, `/home`, `/etc/shadow`, SSH host keys,
//! project checkout or airlock data directory. `/usr` is used live (not copied, 5 GB here): a
//! package upgrade on the host shows up in running sandboxes, as with a bind mount.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One overlay of an image: the read-only directory `lower` seen at `target` in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub target: String,
    pub lower: PathBuf,
}

/// An image as the runtime uses it: its layers, the root first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub layers: Vec<Layer>,
}

/// Files and directories of the host's `/etc` that are public and that common tools need
/// (dynamic linker cache, alternatives links, CA certificates, locale and terminal data).
const ETC_ALLOWLIST: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "debian_version",
    "environment",
    "gai.conf",
    "host.conf",
    "inputrc",
    "issue",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "login.defs",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "profile",
    "profile.d",
    "protocols",
    "python3",
    "python3.11",
    "services",
    "shells",
    "skel",
    "ssl/certs",
    "ssl/openssl.cnf",
    "terminfo",
    "timezone",
    "java-17-openjdk",
    "perl",
];

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Builds the default image under `dir` and returns it.
///
/// `dir/rootfs` is the lower layer of every running sandbox's overlay, which reads it live:
/// none of its files may go while a sandbox runs, or they vanish from under it (a start that
/// rebuilt the tree in place took `/lib64`, hence the dynamic linker, from every sandbox that
/// had not used it yet). So a build identical to the current tree is dropped; a different one
/// takes its place while the old tree is kept aside as `rootfs.<n>`, removed by a later build
/// once no overlay of this image is mounted.
pub fn build_default(dir: &Path) -> io::Result<Image> {
    let rootfs = dir.join("rootfs");
    let staging = dir.join("rootfs.new");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    build_skeleton(&staging)?;
    if !rootfs.exists() {
        fs::rename(&staging, &rootfs)?;
    } else if tree_digest(&staging)? == tree_digest(&rootfs)? {
        fs::remove_dir_all(&staging)?;
    } else {
        let kept = (0..)
            .map(|n| dir.join(format!("rootfs.{n}")))
            .find(|path| !path.exists())
            .expect("a free name");
        fs::rename(&rootfs, &kept)?;
        fs::rename(&staging, &rootfs)?;
    }
    // Mounts name the tree by its path, whichever generation they got: keep every old one
    // while any overlay of the image is mounted.
    if !is_mounted_as_lower(&rootfs) {
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name
                .strip_prefix("rootfs.")
                .is_some_and(|rest| rest == "old" || rest.parse::<u32>().is_ok());
            if generation {
                fs::remove_dir_all(entry.path())?;
            }
        }
    }
    Ok(Image {
        name: "default".into(),
        layers: vec![
            Layer {
                target: "/".into(),
                lower: rootfs,
            },
            Layer {
                target: "/usr".into(),
                lower: PathBuf::from("/usr"),
            },
        ],
    })
}

/// Whether an overlay in this mount namespace has `tree` as a lower directory (overlays
/// list them in their options, as given when mounted).
fn is_mounted_as_lower(tree: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    // mountinfo escapes these as octal.
    let lower = tree
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011");
    info.lines()
        .filter_map(|line| line.split_once(" - overlay "))
        .any(|(_, options)| {
            options
                .split([',', ':'])
                .any(|option| option.strip_prefix("lowerdir=").unwrap_or(option) == lower.as_str())
        })
}

/// A digest of a tree's names, kinds, modes, link targets and file contents.
fn tree_digest(root: &Path) -> io::Result<Vec<u8>> {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    fn walk(root: &Path, path: &Path, hasher: &mut Sha256) -> io::Result<()> {
        let metadata = fs::symlink_metadata(path)?;
        let relative = path.strip_prefix(root).unwrap_or(path);
        hasher.update(relative.as_os_str().as_bytes());
        hasher.update([0]);
        hasher.update(metadata.permissions().mode().to_le_bytes());
        if metadata.file_type().is_symlink() {
            hasher.update(fs::read_link(path)?.as_os_str().as_bytes());
        } else if metadata.is_dir() {
            let mut entries: Vec<PathBuf> = fs::read_dir(path)?
                .map(|entry| entry.map(|entry| entry.path()))
                .collect::<io::Result<_>>()?;
            entries.sort();
            for entry in entries {
                walk(root, &entry, hasher)?;
            }
        } else {
            hasher.update(metadata.len().to_le_bytes());
            hasher.update(fs::read(path)?);
        }
        hasher.update([0xff]);
        Ok(())
    }
    let mut hasher = Sha256::new();
    walk(root, root, &mut hasher)?;
    Ok(hasher.finalize().to_vec())
}

fn build_skeleton(root: &Path) -> io::Result<()> {
    let directories: &[(&str, u32)] = &[
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("var/lib", 0o755),
        ("var/log", 0o755),
        ("var/cache", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
        ("usr", 0o755),
        ("etc", 0o755),
        ("etc/ssl", 0o755),
        (".airlock", 0o755),
    ];
    for (path, mode) in directories {
        let path = root.join(path);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }
    // The mount point of the sandbox init.
    fs::write(root.join(".airlock/init"), b"")?;
    // Merged-/usr links, as the host has them.
    for link in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        if let Ok(target) = fs::read_link(Path::new("/").join(link)) {
            symlink(target, root.join(link))?;
        }
    }
    let etc = root.join("etc");
    fs::write(etc.join("passwd"), PASSWD)?;
    fs::write(etc.join("group"), GROUP)?;
    fs::write(etc.join("hosts"), HOSTS)?;
    fs::write(etc.join("resolv.conf"), "")?;
    fs::write(etc.join("hostname"), "sandbox\n")?;
    for entry in ETC_ALLOWLIST {
        let source = Path::new("/etc").join(entry);
        if fs::symlink_metadata(&source).is_ok() {
            copy_tree(&source, &etc.join(entry))?;
        }
    }
    Ok(())
}

/// Copies files, directories and symlinks (as links), keeping modes; skips anything else and
/// anything unreadable, and never follows a link.
fn copy_tree(source: &Path, target: &Path) -> io::Result<()> {
    let metadata = fs::symlink_metadata(source)?;
    let kind = metadata.file_type();
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    if kind.is_symlink() {
        symlink(fs::read_link(source)?, target)?;
    } else if kind.is_dir() {
        fs::create_dir_all(target)?;
        fs::set_permissions(
            target,
            fs::Permissions::from_mode(metadata.permissions().mode() & 0o7777),
        )?;
        for entry in fs::read_dir(source)? {
            let entry = entry?;
            copy_tree(&entry.path(), &target.join(entry.file_name()))?;
        }
    } else if kind.is_file() {
        match fs::copy(source, target) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_image_holds_nothing_private() {
        let dir = tempfile::tempdir().unwrap();
        let image = build_default(dir.path()).unwrap();
        let root = &image.layers[0].lower;
        for private in [
            "etc/shadow",
            "etc/gshadow",
            "etc/ssh",
            "etc/sudoers",
            "home/root",
            "work",
            "etc/machine-id",
        ] {
            assert!(
                fs::symlink_metadata(root.join(private)).is_err(),
                "{private} leaked into the image"
            );
        }
        assert!(
            fs::read_to_string(root.join("etc/passwd"))
                .unwrap()
                .starts_with("root:x:0:0")
        );
        assert_eq!(fs::read_dir(root.join("root")).unwrap().count(), 0);
        assert_eq!(image.layers[1].target, "/usr");
        // Building again leaves an identical tree alone.
        let inode = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::symlink_metadata(path).unwrap().ino()
        };
        let before = inode(&root.join("etc/passwd"));
        let again = build_default(dir.path()).unwrap();
        assert_eq!(again, image);
        assert_eq!(inode(&root.join("etc/passwd")), before);
    }

    #[test]
    fn a_changed_image_takes_the_place_of_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let image = build_default(dir.path()).unwrap();
        let root = &image.layers[0].lower;
        fs::write(root.join("etc/hosts"), "changed since\n").unwrap();
        build_default(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/hosts")).unwrap(), HOSTS);
        // No overlay uses the old tree here, so it is gone already.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["rootfs".to_owned()]);
    }
}
