//! The writable layer of a sandbox as a filesystem of its own size, so that a full disk is
//! ENOSPC inside the sandbox and never on the host.
//!
//! Each sandbox has `sandboxes/<id>/disk.img`, a sparse ext4 image of its `disk_mib`, attached
//! to a loop device and mounted at `sandboxes/<id>/layer/` (nodev, nosuid); the overlays'
//! `upper/<n>` and `work/<n>` live inside it. The image stays across stop and start and goes
//! with the sandbox directory.
//!
//! Creating one is cheap because nothing is formatted per sandbox:
//! - `runtime/disks/` keeps one formatted template per distinct size, made once by
//!   `mkfs.ext4` (e2fsprogs; besides the helper, the one program the server runs) into a
//!   temporary file and renamed into place, so a template is either whole or absent;
//! - a sandbox's image is a copy of its template that keeps the holes (a reflink where the
//!   host filesystem has them, otherwise `copy_file_range` over the data extents found with
//!   `SEEK_DATA`/`SEEK_HOLE`): 2 MB are written for 4 GiB, 7 MB for 256 GiB;
//! - the image is attached through `/dev/loop-control` (`LOOP_CTL_GET_FREE`, then
//!   `LOOP_CONFIGURE`, retried when another process takes the same free device first) with
//!   `LO_FLAGS_AUTOCLEAR`, then mounted. From then on the mount is what holds the loop device
//!   open: unmounting detaches it, and if the mount never happens (an error, or a crash of
//!   the server) the kernel detaches it when the attaching file descriptor closes. No loop
//!   device outlives its mount.
//!
//! Everything here blocks; the local backend calls it from blocking threads only.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::unistd::{Whence, lseek};

/// The sandbox's image, in its sandbox directory.
pub const IMAGE: &str = "disk.img";
/// Where the image is mounted, in the sandbox directory.
pub const LAYER: &str = "layer";

/// Names the templates' format: change it when the `mkfs.ext4` options change, so that
/// templates made by an older version are not used.
const TEMPLATE_FORMAT: &str = "ext4-v1";

/// How `mkfs.ext4` formats a template: 4 KiB blocks, nothing reserved for root, and no
/// zeroing (the image is sparse, its holes read as zeros; the discard that mke2fs does on a
/// file punches holes and lets it mark the inode tables zeroed, so the kernel does not zero
/// them in the background after mounting either).
const MKFS_OPTIONS: &[&str] = &[
    "-q",
    "-F",
    "-b",
    "4096",
    "-m",
    "0",
    "-E",
    "lazy_itable_init=1,lazy_journal_init=1",
];

/// Where `mkfs.ext4` is looked for before `$PATH`, which may lack the sbin directories.
const MKFS_PLACES: &[&str] = &[
    "/usr/sbin/mkfs.ext4",
    "/sbin/mkfs.ext4",
    "/usr/bin/mkfs.ext4",
];

const LOOP_CONTROL: &str = "/dev/loop-control";
/// `<linux/loop.h>`: ioctls of `/dev/loop-control` and of a loop device.
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// The loop device reads and writes the image with direct I/O where the host filesystem
/// allows it (the kernel silently falls back otherwise), so the image's pages are not cached
/// a second time below the layer's own page cache.
const LO_FLAGS_DIRECT_IO: u32 = 16;
/// Attempts at taking a free loop device that other processes may take first.
const ATTACH_ATTEMPTS: usize = 64;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`, the argument of `LOOP_CONFIGURE`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}: {1}")]
    Io(&'static str, #[source] io::Error),
    #[error(
        "this host cannot attach loop devices ({LOOP_CONTROL}: {0}); the writable layer of \
         every environment is a loop-mounted ext4 image: load the loop module, or give this \
         container {LOOP_CONTROL} and the /dev/loop* devices"
    )]
    NoLoopDevices(#[source] io::Error),
    #[error("mkfs.ext4 was not found in {MKFS_PLACES:?} or $PATH: install e2fsprogs")]
    NoMkfs,
    #[error("formatting a disk template with mkfs.ext4 failed: {0}")]
    Format(String),
    #[error(
        "the disk image {image} is still attached to {devices:?}: something outside the \
         sandbox still holds its filesystem"
    )]
    InUse {
        image: PathBuf,
        devices: Vec<String>,
    },
}

fn step(context: &'static str) -> impl FnOnce(io::Error) -> DiskError {
    move |error| DiskError::Io(context, error)
}

/// The templates of one runtime directory, and the `mkfs.ext4` that makes them.
pub struct Disks {
    dir: PathBuf,
    mkfs: PathBuf,
    /// Held while a template is made, so that concurrent creates format it once.
    making: Mutex<()>,
}

impl Disks {
    /// Prepares `dir` for the templates (removing temporary files a crash left) and checks
    /// that this host can attach loop devices and format ext4.
    pub fn open(dir: &Path) -> Result<Disks, DiskError> {
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(LOOP_CONTROL)
            .map_err(DiskError::NoLoopDevices)?;
        free_loop_device(&control).map_err(DiskError::NoLoopDevices)?;
        let mkfs = find_mkfs().ok_or(DiskError::NoMkfs)?;
        fs::create_dir_all(dir).map_err(step("creating the disk templates directory"))?;
        for entry in fs::read_dir(dir).map_err(step("listing the disk templates"))? {
            let entry = entry.map_err(step("listing the disk templates"))?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Disks {
            dir: dir.to_owned(),
            mkfs,
            making: Mutex::new(()),
        })
    }

    /// Makes `image`, a new empty ext4 filesystem of `size_mib`, as a sparse copy of the
    /// template of that size. On failure `image` does not exist.
    pub fn provision(&self, image: &Path, size_mib: u64) -> Result<(), DiskError> {
        let template = self.template(size_mib)?;
        let from = File::open(&template).map_err(step("opening the disk template"))?;
        let to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(image)
            .map_err(step("creating the disk image"))?;
        let copied = sparse_copy(&from, &to).map_err(step("copying the disk template"));
        if copied.is_err() {
            let _ = fs::remove_file(image);
        }
        copied
    }

    /// The formatted template of `size_mib`, made now if it does not exist yet.
    fn template(&self, size_mib: u64) -> Result<PathBuf, DiskError> {
        let path = self.dir.join(format!("{TEMPLATE_FORMAT}-{size_mib}m.img"));
        if path.exists() {
            return Ok(path);
        }
        let _making = self
            .making
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if path.exists() {
            return Ok(path);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let temporary = self.dir.join(format!(
            "{TEMPLATE_FORMAT}-{size_mib}m.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let made = self.format(&temporary, size_mib).and_then(|()| {
            fs::rename(&temporary, &path).map_err(step("installing the disk template"))
        });
        if made.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        made.map(|()| path)
    }

    fn format(&self, path: &Path, size_mib: u64) -> Result<(), DiskError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(step("creating a disk template"))?;
        file.set_len(size_mib * 1024 * 1024)
            .map_err(step("sizing a disk template"))?;
        let output = Command::new(&self.mkfs)
            .args(MKFS_OPTIONS)
            .arg(path)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(step("running mkfs.ext4"))?;
        if !output.status.success() {
            return Err(DiskError::Format(format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        // Durable before it is renamed into place: every sandbox of this size copies it.
        file.sync_all().map_err(step("syncing a disk template"))
    }
}

fn find_mkfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    MKFS_PLACES
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path).map(|dir| dir.join("mkfs.ext4")))
        .find(|candidate| candidate.is_file())
}

/// Copies `from` into the empty file `to`, leaving holes where `from` has them.
fn sparse_copy(from: &File, to: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    if unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(());
    }
    let length = from.metadata()?.len();
    to.set_len(length)?;
    let mut offset = 0;
    while offset < length as i64 {
        let data = match lseek(from.as_raw_fd(), offset, Whence::SeekData) {
            Ok(data) => data,
            // Only a hole is left.
            Err(Errno::ENXIO) => break,
            Err(error) => return Err(error.into()),
        };
        let hole = lseek(from.as_raw_fd(), data, Whence::SeekHole)?;
        let mut at = data;
        while at < hole {
            let (mut read_at, mut write_at) = (at, at);
            // SAFETY: both descriptors are open; the offsets are valid for the call, which
            // reads and advances them and leaves the files' own positions alone.
            let copied = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    &mut read_at,
                    to.as_raw_fd(),
                    &mut write_at,
                    (hole - at) as usize,
                    0,
                )
            };
            match copied {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the disk template shrank while being copied",
                    ));
                }
                copied if copied < 0 => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
                copied => at += copied as i64,
            }
        }
        offset = hole;
    }
    Ok(())
}

/// Mounts `image` at `target` (made if missing) through a new loop device.
pub fn mount_image(image: &Path, target: &Path) -> Result<(), DiskError> {
    fs::create_dir_all(target).map_err(step("creating the layer mount point"))?;
    let device = LoopDevice::attach(image)?;
    mount(
        Some(device.path.as_path()),
        target,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| DiskError::Io("mounting the disk image", e.into()))
    // `device` closes here: the mount holds the loop device now, and AUTOCLEAR detaches it
    // at unmount. If the mount failed, this close detaches it at once.
}

/// Whether `target` has a filesystem of its own mounted on it (the layer's ext4).
pub fn is_mounted(target: &Path) -> bool {
    match (fs::metadata(target), target.parent().map(fs::metadata)) {
        (Ok(target), Some(Ok(parent))) => target.dev() != parent.dev(),
        _ => false,
    }
}

/// Bytes in use on the filesystem mounted at `target`, or `None` if none is mounted there.
pub fn used_bytes(target: &Path) -> Option<u64> {
    if !is_mounted(target) {
        return None;
    }
    let stats = nix::sys::statvfs::statvfs(target).ok()?;
    let blocks = stats.blocks().saturating_sub(stats.blocks_free());
    Some(blocks * stats.fragment_size())
}

/// Waits until no loop device is attached to `image` any more, for at most `patience`.
///
/// A stopped sandbox's loop device detaches when its layer is unmounted, unless something
/// still holds the filesystem (a process of the host working in it, or for a moment the copy
/// of the host's mounts that a new mount namespace starts with). Mounting the image a second
/// time through another loop device meanwhile would corrupt it, so this must hold first.
pub fn wait_until_detached(image: &Path, patience: Duration) -> Result<(), DiskError> {
    let deadline = Instant::now() + patience;
    loop {
        let devices = loop_devices_of(image);
        if devices.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DiskError::InUse {
                image: image.to_owned(),
                devices,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The loop devices (`/dev/loopN`) attached to `image`, from sysfs.
pub fn loop_devices_of(image: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let image = image.as_os_str().as_encoded_bytes();
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("loop"))
        .filter(|entry| {
            fs::read(entry.path().join("loop/backing_file"))
                .is_ok_and(|backing| backing.strip_suffix(b"\n").unwrap_or(&backing) == image)
        })
        .map(|entry| format!("/dev/{}", entry.file_name().to_string_lossy()))
        .collect()
}

/// A loop device attached to an image by this process, open until dropped. Being
/// AUTOCLEAR, it detaches when the last holder closes it: this handle, then the mount.
struct LoopDevice {
    path: PathBuf,
    _device: File,
}

impl LoopDevice {
    fn attach(image: &Path) -> Result<LoopDevice, DiskError> {
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(step("opening the disk image"))?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(LOOP_CONTROL)
            .map_err(DiskError::NoLoopDevices)?;
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                size_limit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // Informational only (sysfs's backing_file has the full path): the tail that fits.
        let name = image.as_os_str().as_encoded_bytes();
        let tail = &name[name.len().saturating_sub(63)..];
        config.info.file_name[..tail.len()].copy_from_slice(tail);

        let mut last_error = None;
        for _ in 0..ATTACH_ATTEMPTS {
            let number = free_loop_device(&control).map_err(DiskError::NoLoopDevices)?;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(device) => device,
                // Just made by LOOP_CTL_GET_FREE, its node may not be there yet.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    last_error = Some(error);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(error) => return Err(DiskError::Io("opening a loop device", error)),
            };
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is (same
            // layout, size checked above); the descriptor in it stays open across the call.
            if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) } == 0 {
                return Ok(LoopDevice {
                    path,
                    _device: device,
                });
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                // Another process configured this device between GET_FREE and CONFIGURE.
                Some(libc::EBUSY) => last_error = Some(error),
                Some(libc::EINVAL | libc::ENOTTY) => {
                    return Err(DiskError::Io(
                        "attaching the disk image (LOOP_CONFIGURE needs Linux 5.8 or later)",
                        error,
                    ));
                }
                _ => return Err(DiskError::Io("attaching the disk image", error)),
            }
        }
        Err(DiskError::Io(
            "attaching the disk image: every free loop device was taken by others",
            last_error.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)),
        ))
    }
}

/// The number of a free loop device, made if none is free.
fn free_loop_device(control: &File) -> io::Result<i32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument.
    let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
    if number < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("SKIPPED {test}: loop devices and mounts need root");
        }
        root
    }

    fn allocated(path: &Path) -> u64 {
        fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_provisioned_image_is_a_sparse_ext4_of_the_size_asked_for() {
        if !root("a_provisioned_image_is_a_sparse_ext4") {
            return;
        }
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let disks = Disks::open(&dir.path().join("disks")).unwrap();
        let first = dir.path().join("first.img");
        let second = dir.path().join("second.img");
        disks.provision(&first, 1024).unwrap();
        disks.provision(&second, 1024).unwrap();
        assert!(disks.provision(&second, 1024).is_err(), "never overwrites");
        let templates = fs::read_dir(dir.path().join("disks")).unwrap().count();
        assert_eq!(templates, 1, "one template per size, no temporary left");
        for image in [&first, &second] {
            assert_eq!(fs::metadata(image).unwrap().len(), 1024 * 1024 * 1024);
            assert!(
                allocated(image) < 8 * 1024 * 1024,
                "{} bytes allocated: the copy lost its holes",
                allocated(image)
            );
        }
        let layer = dir.path().join("layer");
        mount_image(&first, &layer).unwrap();
        let used = used_bytes(&layer).unwrap();
        let stats = nix::sys::statvfs::statvfs(&layer).unwrap();
        let size = stats.blocks() * stats.fragment_size();
        nix::mount::umount(&layer).unwrap();
        assert!(used < 1024 * 1024, "a new filesystem is empty: {used} used");
        assert!(
            size > 950 * 1024 * 1024 && size <= 1024 * 1024 * 1024,
            "{size} bytes"
        );
        assert!(loop_devices_of(&first).is_empty(), "unmounting detaches");
        assert_eq!(used_bytes(&layer), None, "nothing mounted");
    }

    #[test]
    fn a_loop_device_attached_but_never_mounted_detaches_when_its_holder_dies() {
        if !root("a_loop_device_attached_but_never_mounted_detaches") {
            return;
        }
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let disks = Disks::open(&dir.path().join("disks")).unwrap();
        let image = dir.path().join("disk.img");
        disks.provision(&image, 64).unwrap();

        // Dropped without mounting, as on an error between attach and mount.
        let device = LoopDevice::attach(&image).unwrap();
        assert_eq!(loop_devices_of(&image), [device.path.display().to_string()]);
        drop(device);
        assert_eq!(loop_devices_of(&image), Vec::<String>::new());

        // A process that dies between attach and mount, as a crashed server would.
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "disk::tests::attaches_and_aborts",
                "--ignored",
                "--nocapture",
            ])
            .env("AIRLOCK_TEST_ATTACH", &image)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(stdout.contains("attached /dev/loop"), "{stdout}");
        assert!(!child.status.success(), "the child aborted");
        assert_eq!(loop_devices_of(&image), Vec::<String>::new());
    }

    /// Run by the test above in a child process.
    #[test]
    #[ignore = "a helper of a_loop_device_attached_but_never_mounted_detaches"]
    fn attaches_and_aborts() {
        let Some(image) = std::env::var_os("AIRLOCK_TEST_ATTACH") else {
            return;
        };
        let device = LoopDevice::attach(Path::new(&image)).unwrap();
        println!("attached {}", device.path.display());
        std::process::abort();
    }

    #[test]
    fn a_full_layer_is_enospc_and_a_second_attachment_is_refused() {
        if !root("a_full_layer_is_enospc") {
            return;
        }
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let disks = Disks::open(&dir.path().join("disks")).unwrap();
        let image = dir.path().join("disk.img");
        disks.provision(&image, 64).unwrap();
        let layer = dir.path().join("layer");
        mount_image(&image, &layer).unwrap();
        assert!(wait_until_detached(&image, Duration::ZERO).is_err());

        let chunk = vec![1u8; 1024 * 1024];
        let mut file = File::create(layer.join("fill")).unwrap();
        let mut written = 0u64;
        let error = loop {
            match io::Write::write_all(&mut file, &chunk).and_then(|()| file.sync_data()) {
                Ok(()) => written += chunk.len() as u64,
                Err(error) => break error,
            }
            assert!(written <= 64 * 1024 * 1024, "wrote past the disk's size");
        };
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        assert!(written > 40 * 1024 * 1024, "only {written} bytes fit");
        assert!(allocated(&image) <= 64 * 1024 * 1024);
        assert!(used_bytes(&layer).unwrap() >= written);
        drop(file);
        nix::mount::umount(&layer).unwrap();
        wait_until_detached(&image, Duration::ZERO).unwrap();
    }
}
