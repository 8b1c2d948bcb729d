//! PID 1 of every sandbox: reaps orphans so zombies never fill `pids.max`, and exits on SIGTERM.
//!
//! Built by `build.rs` as a tiny static binary with no crates, and bind-mounted read-only into
//! each sandbox at `/.airlock/init`. It touches nothing but signals and `waitpid`, and makes
//! itself non-dumpable, so no process of the sandbox can ptrace or read it.

#![no_main]

use std::ffi::c_int;

#[repr(C)]
struct SigSet([u64; 16]);

const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const SIG_BLOCK: c_int = 0;
const WNOHANG: c_int = 1;
const PR_SET_DUMPABLE: c_int = 4;

unsafe extern "C" {
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, signal: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwaitinfo(set: *const SigSet, info: *mut [u8; 128]) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
    fn prctl(option: c_int, ...) -> c_int;
}

#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: c_int, _argv: *const *const u8) -> c_int {
    let mut set = SigSet([0; 16]);
    let mut info = [0u8; 128];
    // SAFETY: plain libc calls on stack memory of the sizes libc expects (sigset_t is 128
    // bytes, siginfo_t is 128 bytes).
    unsafe {
        // Same uid and capabilities as every process of the sandbox: without this, any of
        // them could attach to PID 1 (seccomp allows ptrace, for debuggers).
        prctl(PR_SET_DUMPABLE, 0 as std::ffi::c_ulong);
        sigemptyset(&mut set);
        sigaddset(&mut set, SIGCHLD);
        sigaddset(&mut set, SIGTERM);
        sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            let mut status = 0;
            while waitpid(-1, &mut status, WNOHANG) > 0 {}
            if sigwaitinfo(&set, &mut info) == SIGTERM {
                _exit(0);
            }
        }
    }
}
