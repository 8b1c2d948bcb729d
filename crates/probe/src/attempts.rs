//! The escape attempts on filesystems, devices, processes, namespaces and the kernel. Each
//! issues the system call an attacker would, with arguments that would work if nothing
//! stopped it, and undoes whatever did work (unmounts, detaches, closes, restores values).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libc::c_long;

use crate::recon::NAMESPACES;
use crate::report::Attempt;
use crate::sys::{Refusal, c_path, c_string, close, errno, errno_name, in_child, outcome};

/// Host device nodes an attacker opens when a runtime leaves them in `/dev`.
const HOST_DEVICES: &[&str] = &[
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/sda",
    "/dev/vda",
    "/dev/nvme0n1",
];

/// A private directory for mount points and device nodes, removed when dropped.
pub struct Scratch {
    root: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let root = std::env::temp_dir().join(format!("airlock-probe-{}", std::process::id()));
        let _ = fs::create_dir_all(&root);
        Scratch { root }
    }

    /// A fresh directory under the scratch root.
    fn dir(&self, name: &str) -> PathBuf {
        let path = self.root.join(name);
        let _ = fs::create_dir_all(&path);
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn mounts(scratch: &Scratch) -> Vec<Attempt> {
    vec![
        // cgroup v1 with a controller: its writable release_agent is a program the host kernel
        // runs as root when the cgroup empties (CVE-2022-0492, the release_agent escape).
        try_mount(
            "mount_cgroup_v1",
            "cgroup",
            &scratch.dir("cgroup-v1"),
            Some("cgroup"),
            0,
            Some("memory"),
            Undo::Unmount,
        ),
        // cgroup v2: the unified hierarchy, to leave the environment's cgroup and its limits.
        try_mount(
            "mount_cgroup2",
            "cgroup2",
            &scratch.dir("cgroup2"),
            Some("cgroup2"),
            0,
            None,
            Undo::Unmount,
        ),
        // A fresh procfs has none of /proc's masked and read-only paths.
        try_mount(
            "mount_proc",
            "proc",
            &scratch.dir("proc"),
            Some("proc"),
            0,
            None,
            Undo::Unmount,
        ),
        // A fresh, writable sysfs: uevent_helper, device and firmware knobs of the host.
        try_mount(
            "mount_sysfs",
            "sysfs",
            &scratch.dir("sysfs"),
            Some("sysfs"),
            0,
            None,
            Undo::Unmount,
        ),
        // Clearing the read-only flag of /sys in place.
        try_mount(
            "remount_sys_rw",
            "none",
            Path::new("/sys"),
            None,
            libc::MS_REMOUNT | libc::MS_BIND,
            None,
            Undo::RemountReadOnly,
        ),
        // Clearing the read-only flag of /proc/sys (core_pattern, modprobe) in place.
        try_mount(
            "remount_proc_sys_rw",
            "none",
            Path::new("/proc/sys"),
            None,
            libc::MS_REMOUNT | libc::MS_BIND,
            None,
            Undo::RemountReadOnly,
        ),
        // Binding the root elsewhere, the first step of escapes that rearrange mounts.
        try_mount(
            "bind_mount_root",
            "/",
            &scratch.dir("root"),
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
            Undo::Unmount,
        ),
    ]
}

/// How to undo a mount that should have been refused.
enum Undo {
    Unmount,
    RemountReadOnly,
}

fn mount(
    source: &str,
    target: &Path,
    fs_type: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> c_long {
    let source = c_string(source);
    let target = c_path(target);
    let fs_type = fs_type.map(c_string);
    let data = data.map(c_string);
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call, or null pointers.
    unsafe {
        libc::syscall(
            libc::SYS_mount,
            source.as_ptr(),
            target.as_ptr(),
            fs_type
                .as_ref()
                .map_or(std::ptr::null(), |text| text.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |text| text.as_ptr()),
        )
    }
}

fn try_mount(
    name: &str,
    source: &str,
    target: &Path,
    fs_type: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    undo: Undo,
) -> Attempt {
    let result = mount(source, target, fs_type, flags, data);
    outcome(name, result, Refusal::PermissionOnly, |_| {
        let mut detail = format!("mounted at {}", target.display());
        if fs_type == Some("cgroup") {
            let agent = rewrite("", &target.join("release_agent"), WriteBack::CurrentValue);
            detail.push_str(&format!("; its release_agent: {}", agent.detail));
        }
        match undo {
            Undo::Unmount => {
                let target = c_path(target);
                // SAFETY: umount2 with a NUL-terminated path.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
            Undo::RemountReadOnly => {
                let flags = libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC;
                mount("none", target, None, flags, None);
            }
        }
        detail
    })
}

/// What to write once a kernel knob opened for writing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteBack {
    /// Its own current value, which proves the write works and changes nothing.
    CurrentValue,
    /// Nothing: even a harmless value would act (sysrq-trigger, binfmt_misc/register).
    Nothing,
}

/// Opens a file for writing, then writes back its current value (or nothing).
fn rewrite(name: &str, path: &Path, write_back: WriteBack) -> Attempt {
    let current = fs::read(path).ok();
    let mut file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(error) => return Attempt::blocked(name, io_errno(&error)),
    };
    let mut value = match (write_back, current) {
        (WriteBack::Nothing, _) => {
            return Attempt::not_blocked(name, "opened for writing (nothing written)");
        }
        (WriteBack::CurrentValue, None) => {
            return Attempt::not_blocked(name, "opened for writing (unreadable, nothing written)");
        }
        (WriteBack::CurrentValue, Some(value)) => value,
    };
    if value.is_empty() {
        value.push(b'\n');
    }
    match file.write_all(&value) {
        Ok(()) => Attempt::not_blocked(name, "wrote (its current value back)"),
        Err(error) => Attempt::blocked(name, format!("opened, but write: {}", io_errno(&error))),
    }
}

fn io_errno(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => errno_name(code),
        None => error.to_string(),
    }
}

pub fn kernel_knobs() -> Vec<Attempt> {
    vec![
        // core_pattern starting with `|` makes the host kernel run a program as root on a crash.
        rewrite(
            "write_core_pattern",
            Path::new("/proc/sys/kernel/core_pattern"),
            WriteBack::CurrentValue,
        ),
        // sysrq-trigger crashes, reboots or freezes the host with one byte.
        rewrite(
            "write_sysrq_trigger",
            Path::new("/proc/sysrq-trigger"),
            WriteBack::Nothing,
        ),
        // modprobe is what the host kernel runs as root for an unknown binary format.
        rewrite(
            "write_modprobe",
            Path::new("/proc/sys/kernel/modprobe"),
            WriteBack::CurrentValue,
        ),
        // uevent_helper is what the host kernel runs as root on every device event.
        rewrite(
            "write_uevent_helper",
            Path::new("/sys/kernel/uevent_helper"),
            WriteBack::CurrentValue,
        ),
        // binfmt_misc registers an interpreter the host kernel runs for matching binaries.
        rewrite(
            "write_binfmt_misc_register",
            Path::new("/proc/sys/fs/binfmt_misc/register"),
            WriteBack::Nothing,
        ),
        // release_agent of a v1 cgroup hierarchy already mounted: the host runs it as root.
        write_release_agent(),
    ]
}

fn write_release_agent() -> Attempt {
    let name = "write_release_agent";
    let mut candidates = vec![PathBuf::from("/sys/fs/cgroup/release_agent")];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        candidates.extend(
            entries
                .flatten()
                .map(|entry| entry.path().join("release_agent")),
        );
    }
    let mut refusals = Vec::new();
    for path in candidates.iter().filter(|path| path.exists()) {
        let attempt = rewrite(name, path, WriteBack::CurrentValue);
        if !attempt.blocked {
            return Attempt::not_blocked(name, format!("{}: {}", path.display(), attempt.detail));
        }
        refusals.push(format!("{}: {}", path.display(), attempt.detail));
    }
    if refusals.is_empty() {
        Attempt::blocked(
            name,
            "no release_agent file is visible under /sys/fs/cgroup",
        )
    } else {
        Attempt::blocked(name, refusals.join("; "))
    }
}

pub fn devices(scratch: &Scratch) -> Vec<Attempt> {
    let mut attempts = vec![
        // A node for the host's first disk (8,0): raw access to every file on it.
        mknod_and_open("mknod_block_device", scratch, libc::S_IFBLK, 8, 0),
        // A node for /dev/mem (1,1): the host's physical memory.
        mknod_and_open("mknod_dev_mem", scratch, libc::S_IFCHR, 1, 1),
    ];
    // Host device nodes a careless runtime leaves in /dev.
    attempts.extend(HOST_DEVICES.iter().map(|path| {
        let name = format!("open_{}", path.trim_start_matches('/').replace('/', "_"));
        open_device(&name, Path::new(path))
    }));
    // /proc/kcore: the kernel's memory as an ELF core file.
    attempts.push(read_file("read_kcore", Path::new("/proc/kcore")));
    attempts
}

fn mknod_and_open(
    name: &str,
    scratch: &Scratch,
    kind: libc::mode_t,
    major: u32,
    minor: u32,
) -> Attempt {
    let path = scratch.root.join(name);
    let c_node = c_path(&path);
    // SAFETY: mknod with a NUL-terminated path; makedev is arithmetic.
    let result = unsafe { libc::mknod(c_node.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    if result != 0 {
        return Attempt::blocked(name, format!("mknod: {}", errno_name(errno())));
    }
    let opened = open_device(name, &path);
    let _ = fs::remove_file(&path);
    if opened.blocked {
        Attempt::blocked(name, format!("mknod worked, open: {}", opened.detail))
    } else {
        Attempt::not_blocked(name, format!("made {major}:{minor} and {}", opened.detail))
    }
}

/// Opening a device read-only is the escape: nothing is read.
fn open_device(name: &str, path: &Path) -> Attempt {
    match fs::File::open(path) {
        Ok(_) => Attempt::not_blocked(name, format!("opened {}", path.display())),
        Err(error) => Attempt::blocked(name, io_errno(&error)),
    }
}

/// Blocked when the file cannot be opened or yields nothing (a masked path reads as empty).
pub fn read_file(name: &str, path: &Path) -> Attempt {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) => return Attempt::blocked(name, io_errno(&error)),
    };
    let mut buffer = [0u8; 256];
    match file.read(&mut buffer) {
        Ok(0) => Attempt::blocked(name, "opened, but it reads as empty"),
        Ok(count) => Attempt::not_blocked(name, format!("read {count} bytes")),
        Err(error) => Attempt::blocked(name, format!("opened, but read: {}", io_errno(&error))),
    }
}

pub fn processes() -> Vec<Attempt> {
    vec![ptrace_attach_pid1(), process_vm_readv_pid1()]
}

/// Attaching to pid 1 controls a process that may hold more privilege or host descriptors.
fn ptrace_attach_pid1() -> Attempt {
    let name = "ptrace_attach_pid1";
    // SAFETY: PTRACE_ATTACH takes a pid and no pointers.
    let result = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            libc::PTRACE_ATTACH as c_long,
            1 as c_long,
            0 as c_long,
            0 as c_long,
        )
    };
    outcome(name, result, Refusal::PermissionOnly, |_| {
        let mut status = 0;
        // SAFETY: waits for the attach stop of the tracee, then lets it go on unsignalled.
        unsafe {
            libc::waitpid(1, &mut status, libc::__WALL);
            libc::syscall(
                libc::SYS_ptrace,
                libc::PTRACE_DETACH as c_long,
                1 as c_long,
                0 as c_long,
                0 as c_long,
            );
        }
        "attached to pid 1 (then detached)".to_owned()
    })
}

/// Reading pid 1's memory directly, at its first mapping.
fn process_vm_readv_pid1() -> Attempt {
    let name = "process_vm_readv_pid1";
    let address = fs::read_to_string("/proc/1/maps")
        .ok()
        .and_then(|maps| usize::from_str_radix(maps.split('-').next()?, 16).ok())
        .unwrap_or(0x1000);
    let mut buffer = [0u8; 16];
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: buffer.len(),
    };
    // SAFETY: one local iovec over a stack buffer of its length; the remote one is only
    // read by the kernel, from the other process.
    let result = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            1 as c_long,
            &local as *const libc::iovec,
            1 as c_long,
            &remote as *const libc::iovec,
            1 as c_long,
            0 as c_long,
        )
    };
    outcome(name, result, Refusal::PermissionOnly, |count| {
        format!("read {count} bytes of pid 1's memory")
    })
}

pub fn namespaces(scratch: &Scratch) -> Vec<Attempt> {
    let mut attempts = vec![
        // A new user namespace holds every capability: the usual first step to kernel bugs.
        in_child("unshare_user", || {
            unshare("unshare_user", libc::CLONE_NEWUSER)
        }),
        // A new mount namespace, to mount freely in it.
        in_child("unshare_mount", || {
            unshare("unshare_mount", libc::CLONE_NEWNS)
        }),
        // The same through clone, and through clone3 whose flags a seccomp filter cannot read.
        in_child("clone_newuser", clone_new_user),
        in_child("clone3_newuser", clone3_new_user),
    ];
    // Joining pid 1's namespaces: the host's, were pid 1 the host's init.
    for namespace in NAMESPACES {
        let name = format!("setns_pid1_{namespace}");
        attempts.push(in_child(&name, || setns_pid1(&name, namespace)));
    }
    // Swapping the root filesystem for another.
    let new_root = scratch.dir("pivot");
    attempts.push(in_child("pivot_root", || pivot_root(&new_root)));
    // The classic breakout with CAP_SYS_CHROOT: chroot deeper, then climb out with `..`.
    let jail = scratch.dir("jail");
    attempts.push(in_child("chroot_breakout", || chroot_breakout(&jail)));
    attempts
}

fn unshare(name: &str, flags: libc::c_int) -> Attempt {
    // SAFETY: unshare takes flags only; this runs in a forked child.
    let result = unsafe { libc::syscall(libc::SYS_unshare, flags as c_long) };
    outcome(name, result, Refusal::AnyError, |_| {
        "made a new namespace".to_owned()
    })
}

/// After a fork-style clone: the new process leaves at once, the parent reaps it.
fn reap_clone(name: &str, result: c_long) -> Attempt {
    if result == 0 {
        // SAFETY: the cloned process leaves without touching the parent's state.
        unsafe { libc::_exit(0) };
    }
    outcome(name, result, Refusal::AnyError, |pid| {
        let mut status = 0;
        // SAFETY: reaps the process just cloned.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        "made a process in a new user namespace".to_owned()
    })
}

fn clone_new_user() -> Attempt {
    // SAFETY: clone without CLONE_VM and with no new stack behaves like fork; the child only
    // calls _exit (see reap_clone).
    let result = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long,
            0 as c_long,
            0 as c_long,
            0 as c_long,
            0 as c_long,
        )
    };
    reap_clone("clone_newuser", result)
}

fn clone3_new_user() -> Attempt {
    // struct clone_args, first version: flags, pidfd, child_tid, parent_tid, exit_signal,
    // stack, stack_size, tls.
    let mut arguments = [0u64; 8];
    arguments[0] = libc::CLONE_NEWUSER as u64;
    arguments[4] = libc::SIGCHLD as u64;
    // SAFETY: clone3 reads the argument struct of the size given; no CLONE_VM, no stack, so
    // it behaves like fork and the child only calls _exit.
    let result = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            arguments.as_mut_ptr(),
            std::mem::size_of_val(&arguments) as c_long,
        )
    };
    reap_clone("clone3_newuser", result)
}

fn setns_pid1(name: &str, namespace: &str) -> Attempt {
    let path = c_string(&format!("/proc/1/ns/{namespace}"));
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Attempt::blocked(name, format!("open: {}", errno_name(errno())));
    }
    // SAFETY: setns with a descriptor this child owns; it runs in a forked child.
    let result = unsafe { libc::syscall(libc::SYS_setns, fd as c_long, 0 as c_long) };
    outcome(name, result, Refusal::AnyError, |_| {
        "joined pid 1's namespace".to_owned()
    })
}

fn pivot_root(new_root: &Path) -> Attempt {
    let put_old = new_root.join("old");
    let _ = fs::create_dir_all(&put_old);
    let (new_root, put_old) = (c_path(new_root), c_path(&put_old));
    // SAFETY: pivot_root with NUL-terminated paths; it runs in a forked child.
    let result =
        unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    outcome("pivot_root", result, Refusal::PermissionOnly, |_| {
        "pivoted the root".to_owned()
    })
}

fn chroot_breakout(jail: &Path) -> Attempt {
    let name = "chroot_breakout";
    let identity = |path: &str| fs::metadata(path).map(|meta| (meta.dev(), meta.ino())).ok();
    let before = identity("/");
    let jail = c_path(jail);
    // SAFETY: chdir and chroot with NUL-terminated paths; this runs in a forked child.
    unsafe {
        libc::chdir(c"/".as_ptr());
        if libc::chroot(jail.as_ptr()) != 0 {
            return Attempt::blocked(name, format!("chroot: {}", errno_name(errno())));
        }
        // The working directory is still outside the new root: climb from there.
        for _ in 0..64 {
            libc::chdir(c"..".as_ptr());
        }
        if libc::chroot(c".".as_ptr()) != 0 {
            return Attempt::blocked(name, format!("second chroot: {}", errno_name(errno())));
        }
    }
    let after = identity("/");
    if after.is_some() && after == before {
        Attempt::blocked(name, "climbed no higher than the environment's own root")
    } else {
        Attempt::not_blocked(
            name,
            format!("reached another root: {after:?} (the environment's is {before:?})"),
        )
    }
}

pub fn kernel(scratch: &Scratch) -> Vec<Attempt> {
    let mut attempts = vec![
        // Replacing the running kernel (0 segments: unloads, were it allowed).
        raw("kexec_load", || {
            // SAFETY: no segments, so no pointer is read.
            unsafe {
                libc::syscall(
                    libc::SYS_kexec_load,
                    0 as c_long,
                    0 as c_long,
                    std::ptr::null::<libc::c_void>(),
                    0 as c_long,
                )
            }
        }),
        // Loading code into the kernel, from memory and from a file.
        raw("init_module", || {
            let image = [0u8; 64];
            // SAFETY: the kernel reads at most the given length of the image.
            unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len() as c_long,
                    c"".as_ptr(),
                )
            }
        }),
        raw("finit_module", || {
            // SAFETY: an invalid descriptor and an empty parameter string.
            unsafe {
                libc::syscall(
                    libc::SYS_finit_module,
                    -1 as c_long,
                    c"".as_ptr(),
                    0 as c_long,
                )
            }
        }),
        // Unloading a module (a driver, a security module) of the host.
        raw("delete_module", || {
            // SAFETY: a NUL-terminated module name.
            unsafe {
                libc::syscall(
                    libc::SYS_delete_module,
                    c"airlock_probe_absent".as_ptr(),
                    libc::O_NONBLOCK as c_long,
                )
            }
        }),
        // eBPF programs run in the kernel; the verifier has a long CVE history.
        descriptor("bpf_prog_load", bpf_prog_load),
        // Kernel performance counters: side channels and a long CVE history.
        descriptor("perf_event_open", perf_event_open),
        // The kernel keyring is not namespaced: other environments' and the host's keys.
        raw("keyctl", || {
            const KEYCTL_GET_KEYRING_ID: c_long = 0;
            const KEY_SPEC_SESSION_KEYRING: c_long = -3;
            // SAFETY: integer arguments only.
            unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_GET_KEYRING_ID,
                    KEY_SPEC_SESSION_KEYRING,
                    0 as c_long,
                )
            }
        }),
        raw("add_key", || {
            const KEY_SPEC_PROCESS_KEYRING: c_long = -2;
            // SAFETY: NUL-terminated type and description, and a one-byte payload.
            unsafe {
                libc::syscall(
                    libc::SYS_add_key,
                    c"user".as_ptr(),
                    c"airlock-probe".as_ptr(),
                    c"x".as_ptr(),
                    1 as c_long,
                    KEY_SPEC_PROCESS_KEYRING,
                )
            }
        }),
        // "Shocker": opening the host's files by inode number, past the mount namespace.
        descriptor("open_by_handle_at", open_by_handle_at),
        // Stalling kernel page faults to win races in kernel exploits.
        descriptor("userfaultfd", || {
            const UFFD_USER_MODE_ONLY: c_long = 1;
            // SAFETY: flags only.
            unsafe {
                libc::syscall(
                    libc::SYS_userfaultfd,
                    (libc::O_CLOEXEC | libc::O_NONBLOCK) as c_long | UFFD_USER_MODE_ONLY,
                )
            }
        }),
        // io_uring performs system calls a seccomp filter never sees.
        descriptor("io_uring_setup", || {
            let mut parameters = [0u32; 30];
            // SAFETY: struct io_uring_params is 120 zeroed bytes here.
            unsafe {
                libc::syscall(
                    libc::SYS_io_uring_setup,
                    1 as c_long,
                    parameters.as_mut_ptr(),
                )
            }
        }),
    ];
    #[cfg(target_arch = "x86_64")]
    attempts.extend([
        // Raw I/O ports: the host's hardware, below any kernel check.
        raw("iopl", || {
            // SAFETY: an integer level; set back to 0 below if it worked.
            let result = unsafe { libc::syscall(libc::SYS_iopl, 3 as c_long) };
            if result == 0 {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_iopl, 0 as c_long) };
            }
            result
        }),
        raw("ioperm", || {
            // SAFETY: integer arguments; the permission is dropped again if it was granted.
            let result = unsafe {
                libc::syscall(libc::SYS_ioperm, 0x80 as c_long, 1 as c_long, 1 as c_long)
            };
            if result == 0 {
                // SAFETY: as above.
                unsafe {
                    libc::syscall(libc::SYS_ioperm, 0x80 as c_long, 1 as c_long, 0 as c_long)
                };
            }
            result
        }),
    ]);
    let swap_file = c_path(&scratch.root.join("swapfile"));
    attempts.extend([
        // Host swap: the host's memory written to a file the environment controls.
        raw("swapon", || {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::syscall(libc::SYS_swapon, swap_file.as_ptr(), 0 as c_long) }
        }),
        // Host power state (CAD_OFF: Ctrl-Alt-Del sends SIGINT to init instead of rebooting).
        raw("reboot", || {
            // SAFETY: the two magic numbers and a command; the argument pointer is unused.
            unsafe {
                libc::syscall(
                    libc::SYS_reboot,
                    libc::LINUX_REBOOT_MAGIC1 as c_long,
                    libc::LINUX_REBOOT_MAGIC2 as c_long,
                    libc::LINUX_REBOOT_CMD_CAD_OFF as c_long,
                    std::ptr::null::<libc::c_void>(),
                )
            }
        }),
        // The host clock is not namespaced: setting it (to now) moves the host's.
        raw("settimeofday", || {
            let mut now = libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            };
            // SAFETY: gettimeofday fills the struct; settimeofday reads it.
            unsafe {
                libc::gettimeofday(&mut now, std::ptr::null_mut());
                libc::syscall(
                    libc::SYS_settimeofday,
                    &now as *const libc::timeval,
                    std::ptr::null::<libc::c_void>(),
                )
            }
        }),
        raw("clock_settime", || {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime fills the struct; clock_settime reads it.
            unsafe {
                libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
                libc::syscall(
                    libc::SYS_clock_settime,
                    libc::CLOCK_REALTIME as c_long,
                    &now as *const libc::timespec,
                )
            }
        }),
        // The kernel log holds host addresses, devices and other tenants' messages.
        raw("syslog_read", || {
            const SYSLOG_ACTION_READ_ALL: c_long = 3;
            let mut buffer = [0u8; 4096];
            // SAFETY: the kernel writes at most the given length into the buffer.
            unsafe {
                libc::syscall(
                    libc::SYS_syslog,
                    SYSLOG_ACTION_READ_ALL,
                    buffer.as_mut_ptr(),
                    buffer.len() as c_long,
                )
            }
        }),
    ]);
    attempts
}

/// A system call whose success is the escape.
fn raw(name: &str, call: impl FnOnce() -> c_long) -> Attempt {
    outcome(name, call(), Refusal::PermissionOnly, |value| {
        format!("allowed (returned {value})")
    })
}

/// A system call whose success is the escape and returns a descriptor, which is closed.
fn descriptor(name: &str, call: impl FnOnce() -> c_long) -> Attempt {
    outcome(name, call(), Refusal::PermissionOnly, |fd| {
        close(fd);
        "allowed (returned a descriptor)".to_owned()
    })
}

fn bpf_prog_load() -> c_long {
    const BPF_PROG_LOAD: c_long = 5;
    const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
    // `r0 = 0; exit`, two 8-byte instructions.
    let instructions: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    // The BPF_PROG_LOAD part of union bpf_attr: prog_type, insn_cnt, insns, license, rest 0.
    let mut attributes = [0u8; 128];
    attributes[0..4].copy_from_slice(&BPF_PROG_TYPE_SOCKET_FILTER.to_ne_bytes());
    attributes[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attributes[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    attributes[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: the attribute block and the memory it points to outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attributes.as_ptr(),
            attributes.len() as c_long,
        )
    }
}

/// struct perf_event_attr, its first version (64 bytes).
#[repr(C)]
struct PerfEventAttributes {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    breakpoint_type: u32,
    breakpoint_address: u64,
}

fn perf_event_open() -> c_long {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
    const DISABLED: u64 = 1;
    const EXCLUDE_KERNEL: u64 = 1 << 5;
    const EXCLUDE_HV: u64 = 1 << 6;
    const PERF_FLAG_FD_CLOEXEC: c_long = 8;
    // The counter an unprivileged process may open on itself, were the call allowed.
    let attributes = PerfEventAttributes {
        kind: PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<PerfEventAttributes>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: DISABLED | EXCLUDE_KERNEL | EXCLUDE_HV,
        wakeup_events: 0,
        breakpoint_type: 0,
        breakpoint_address: 0,
    };
    // SAFETY: the attribute struct outlives the call; this process, any CPU, no group.
    unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attributes as *const PerfEventAttributes,
            0 as c_long,
            -1 as c_long,
            -1 as c_long,
            PERF_FLAG_FD_CLOEXEC,
        )
    }
}

/// struct file_handle with an 8-byte FILEID_INO32_GEN handle.
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    inode_and_generation: [u32; 2],
}

fn open_by_handle_at() -> c_long {
    const FILEID_INO32_GEN: i32 = 1;
    // Inode 2 is the root directory of ext2/3/4 filesystems: the host's root, were it one.
    let handle = FileHandle {
        handle_bytes: 8,
        handle_type: FILEID_INO32_GEN,
        inode_and_generation: [2, 0],
    };
    // SAFETY: open with a NUL-terminated path; the handle outlives the call; the mount
    // descriptor is closed after it.
    unsafe {
        let mount_fd = libc::open(
            c"/".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        let result = libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd as c_long,
            &handle as *const FileHandle,
            (libc::O_RDONLY | libc::O_CLOEXEC) as c_long,
        );
        let saved = errno();
        libc::close(mount_fd);
        *libc::__errno_location() = saved;
        result
    }
}
