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

/// Builds the default image under `dir` (replacing an older build) and returns it.
pub fn build_default(dir: &Path) -> io::Result<Image> {
    let rootfs = dir.join("rootfs");
    let staging = dir.join("rootfs.new");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    build_skeleton(&staging)?;
    if rootfs.exists() {
        let old = dir.join("rootfs.old");
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        fs::rename(&rootfs, &old)?;
        fs::rename(&staging, &rootfs)?;
        // Running sandboxes keep the old tree through their open mounts; unlinking is safe.
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(&staging, &rootfs)?;
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
        // Building again replaces the tree in place.
        let again = build_default(dir.path()).unwrap();
        assert_eq!(again, image);
    }
}
