//! The sandbox's seccomp profile: compiled once at server start into BPF, saved beside the
//! runtime's state, and installed by each sandbox's init and exec processes just before they
//! exec (see `executor.rs`). Nothing compiles a filter per create.
//!
//! The profile allows by default and denies, with `EPERM`, the system calls that container
//! escapes and host tampering rely on; each rule says why. Three programs stack (the kernel
//! applies all, the most restrictive answer wins):
//! 1. a guard that refuses the x32 ABI (syscall numbers with bit 30 set), which would otherwise
//!    reach the same kernel entry points under numbers this deny-list does not name;
//! 2. the deny-list itself (seccompiler also kills any process not on x86_64/aarch64's ABI);
//! 3. `clone3` answered with `ENOSYS`: its flags sit behind a pointer a filter cannot read, so
//!    libc falls back to `clone`, whose namespace flags the deny-list does check.

use std::collections::BTreeMap;
use std::path::Path;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the seccomp profile: {0}")]
    Compile(String),
    #[error("reading or writing the compiled profile {0}: {1}")]
    Io(String, std::io::Error),
    #[error("the compiled profile is damaged")]
    Corrupt,
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

/// System calls denied outright, each with the reason.
const DENIED: &[(i64, &str)] = &[
    // Mounting and changing the root: the core of most escapes (remount /proc, mount cgroupfs
    // for release_agent, mount a block device, pivot out).
    (libc::SYS_mount, "mounting filesystems"),
    (libc::SYS_umount2, "unmounting masked paths"),
    (libc::SYS_pivot_root, "changing the root filesystem"),
    (libc::SYS_open_tree, "new mount API: cloning mounts"),
    (libc::SYS_move_mount, "new mount API: attaching mounts"),
    (libc::SYS_fsopen, "new mount API: creating filesystems"),
    (libc::SYS_fsconfig, "new mount API: configuring filesystems"),
    (libc::SYS_fsmount, "new mount API: creating mounts"),
    (libc::SYS_fspick, "new mount API: reconfiguring mounts"),
    (
        libc::SYS_mount_setattr,
        "changing mount flags (e.g. making a read-only mount writable)",
    ),
    // Entering other namespaces: the way into the host's or another sandbox's.
    (libc::SYS_setns, "joining another namespace"),
    // Kernel code and the running kernel.
    (libc::SYS_init_module, "loading kernel modules"),
    (libc::SYS_finit_module, "loading kernel modules"),
    (libc::SYS_delete_module, "unloading kernel modules"),
    (libc::SYS_kexec_load, "replacing the running kernel"),
    (libc::SYS_kexec_file_load, "replacing the running kernel"),
    (libc::SYS_bpf, "loading eBPF programs into the kernel"),
    (
        libc::SYS_perf_event_open,
        "kernel profiling: side channels and a long CVE history",
    ),
    (
        libc::SYS_userfaultfd,
        "page-fault handling used to win kernel races in exploits",
    ),
    (
        libc::SYS_io_uring_setup,
        "io_uring: bypasses seccomp for the operations it performs",
    ),
    (
        libc::SYS_io_uring_enter,
        "io_uring: bypasses seccomp for the operations it performs",
    ),
    (
        libc::SYS_io_uring_register,
        "io_uring: bypasses seccomp for the operations it performs",
    ),
    // Keys are not namespaced: one sandbox could read or fill another's keyrings.
    (libc::SYS_keyctl, "the kernel keyring is not namespaced"),
    (libc::SYS_add_key, "the kernel keyring is not namespaced"),
    (
        libc::SYS_request_key,
        "the kernel keyring is not namespaced",
    ),
    // Files by handle ignore the mount namespace: the "shocker" escape read the host's files.
    (
        libc::SYS_open_by_handle_at,
        "opening host files by handle (shocker escape)",
    ),
    (libc::SYS_name_to_handle_at, "pairs with open_by_handle_at"),
    // Host-wide state no sandbox should change.
    (libc::SYS_reboot, "rebooting the host"),
    (libc::SYS_swapon, "host swap"),
    (libc::SYS_swapoff, "host swap"),
    (libc::SYS_acct, "host process accounting"),
    (libc::SYS_settimeofday, "the host clock is not namespaced"),
    (libc::SYS_clock_settime, "the host clock is not namespaced"),
    (libc::SYS_clock_adjtime, "the host clock is not namespaced"),
    (libc::SYS_adjtimex, "the host clock is not namespaced"),
    (libc::SYS_quotactl, "host filesystem quotas"),
    (
        libc::SYS_syslog,
        "the kernel log may hold host addresses and secrets",
    ),
    (libc::SYS_iopl, "raw I/O port access"),
    (libc::SYS_ioperm, "raw I/O port access"),
    (libc::SYS_vhangup, "hanging up the host's terminals"),
    (libc::SYS_lookup_dcookie, "kernel profiling internals"),
    (
        libc::SYS_kcmp,
        "comparing kernel objects across processes leaks kernel layout",
    ),
    (
        libc::SYS_process_vm_readv,
        "reading other processes' memory directly",
    ),
    (
        libc::SYS_process_vm_writev,
        "writing other processes' memory directly",
    ),
    (libc::SYS_uselib, "obsolete; historical exploit vector"),
    (libc::SYS_ustat, "obsolete"),
    (libc::SYS_sysfs, "obsolete"),
    (
        libc::SYS_personality,
        "execution domains (argument-filtered below)",
    ),
];

/// Namespace flags of `clone` and `unshare`: a sandbox makes no new namespaces (a new user
/// namespace is the classic first step to regaining capabilities).
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Execution domains programs legitimately ask for (Linux, Linux32 for `setarch`, and the
/// query value 0xffffffff); everything else (e.g. READ_IMPLIES_EXEC) is denied.
const ALLOWED_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The compiled profile: programs in installation order.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledProfile {
    pub programs: Vec<BpfProgram>,
}

impl CompiledProfile {
    /// Compiles the profile for the architecture airlock runs on.
    pub fn compile() -> Result<Self, SeccompError> {
        let arch = target_arch()?;
        let compile = |error: seccompiler::BackendError| SeccompError::Compile(error.to_string());

        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (syscall, _why) in DENIED {
            if *syscall != libc::SYS_personality {
                rules.insert(*syscall, vec![]);
            }
        }
        let any_namespace_flag = |argument: u8| -> Result<Vec<SeccompRule>, SeccompError> {
            NAMESPACE_FLAGS
                .iter()
                .map(|flag| {
                    let condition = SeccompCondition::new(
                        argument,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::MaskedEq(*flag),
                        *flag,
                    )
                    .map_err(compile)?;
                    SeccompRule::new(vec![condition]).map_err(compile)
                })
                .collect()
        };
        rules.insert(libc::SYS_clone, any_namespace_flag(0)?);
        rules.insert(libc::SYS_unshare, any_namespace_flag(0)?);
        // personality: deny unless the argument is one of the allowed values, as a conjunction
        // of "not equal" conditions.
        let not_allowed = ALLOWED_PERSONALITIES
            .iter()
            .map(|value| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *value)
                    .map_err(compile)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(
            libc::SYS_personality,
            vec![SeccompRule::new(not_allowed).map_err(compile)?],
        );

        let deny_list: BpfProgram = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(compile)?
        .try_into()
        .map_err(compile)?;

        let clone3: BpfProgram = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, vec![])]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(compile)?
        .try_into()
        .map_err(compile)?;

        Ok(Self {
            programs: vec![x32_guard(), deny_list, clone3],
        })
    }

    /// Installs every program on the calling thread and its siblings. The caller must have set
    /// no_new_privs (libcontainer does, from the spec) or hold CAP_SYS_ADMIN.
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            seccompiler::apply_filter_all_threads(program)
                .map_err(|error| SeccompError::Install(error.to_string()))?;
        }
        Ok(())
    }

    /// Serializes as: program count, then for each its instruction count and instructions,
    /// all little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(self.programs.len() as u32).to_le_bytes());
        for program in &self.programs {
            bytes.extend_from_slice(&(program.len() as u32).to_le_bytes());
            for instruction in program {
                bytes.extend_from_slice(&instruction.code.to_le_bytes());
                bytes.push(instruction.jt);
                bytes.push(instruction.jf);
                bytes.extend_from_slice(&instruction.k.to_le_bytes());
            }
        }
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SeccompError> {
        let mut cursor = bytes;
        let mut take = |n: usize| -> Result<&[u8], SeccompError> {
            if cursor.len() < n {
                return Err(SeccompError::Corrupt);
            }
            let (head, tail) = cursor.split_at(n);
            cursor = tail;
            Ok(head)
        };
        let u32_at = |slice: &[u8]| u32::from_le_bytes(slice.try_into().expect("4 bytes"));
        let count = u32_at(take(4)?) as usize;
        if count > 16 {
            return Err(SeccompError::Corrupt);
        }
        let mut programs = Vec::with_capacity(count);
        for _ in 0..count {
            let length = u32_at(take(4)?) as usize;
            if length == 0 || length > 4096 {
                return Err(SeccompError::Corrupt);
            }
            let mut program = Vec::with_capacity(length);
            for _ in 0..length {
                let raw = take(8)?;
                program.push(sock_filter {
                    code: u16::from_le_bytes([raw[0], raw[1]]),
                    jt: raw[2],
                    jf: raw[3],
                    k: u32_at(&raw[4..8]),
                });
            }
            programs.push(program);
        }
        if !cursor.is_empty() {
            return Err(SeccompError::Corrupt);
        }
        Ok(Self { programs })
    }

    pub fn save(&self, path: &Path) -> Result<(), SeccompError> {
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, self.to_bytes())
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|error| SeccompError::Io(path.display().to_string(), error))
    }

    pub fn load(path: &Path) -> Result<Self, SeccompError> {
        let bytes = std::fs::read(path)
            .map_err(|error| SeccompError::Io(path.display().to_string(), error))?;
        Self::from_bytes(&bytes)
    }
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|error| SeccompError::Compile(error.to_string()))
}

/// `ld [nr]; jge 0x40000000 ? deny : next; ret allow` — denies every x32 system call. On other
/// architectures the bit means nothing and the check never matches ordinary numbers.
fn x32_guard() -> BpfProgram {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    vec![
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JGE_K,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_compiles_and_round_trips() {
        let profile = CompiledProfile::compile().unwrap();
        assert_eq!(profile.programs.len(), 3);
        let bytes = profile.to_bytes();
        assert_eq!(CompiledProfile::from_bytes(&bytes).unwrap(), profile);
    }

    #[test]
    fn damaged_profiles_are_refused() {
        let bytes = CompiledProfile::compile().unwrap().to_bytes();
        for cut in [0, 3, 4, 9, bytes.len() - 1] {
            assert!(
                CompiledProfile::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CompiledProfile::from_bytes(&longer).is_err());
    }

    #[test]
    fn every_denied_syscall_says_why() {
        for (syscall, why) in DENIED {
            assert!(!why.is_empty(), "syscall {syscall} has no reason");
        }
    }
}
