//! The last step inside a sandbox before its program runs: install the precompiled seccomp
//! profile, then exec. libcontainer calls this after it has entered the namespaces and cgroups,
//! pivoted into the root, dropped capabilities and set no_new_privs.

use std::ffi::CString;

use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use crate::seccomp::CompiledProfile;

#[derive(Clone)]
pub struct SeccompExecutor {
    pub profile: CompiledProfile,
    /// Make stdin (a terminal) the process's controlling terminal, so that ^C, ^Z and
    /// window-size changes reach it. libcontainer has already made it a session leader.
    pub controlling_terminal: bool,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|process| process.args().as_ref())
            .ok_or(ExecutorError::InvalidArg)?;
        let argv: Vec<CString> = args
            .iter()
            .map(|arg| CString::new(arg.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
            .collect::<Result<_, _>>()?;
        let program = argv.first().ok_or(ExecutorError::InvalidArg)?.clone();
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal it from another session).
        if self.controlling_terminal && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(ExecutorError::Other(format!(
                "making stdin the controlling terminal: {}",
                std::io::Error::last_os_error()
            )));
        }
        self.profile
            .install()
            .map_err(|error| ExecutorError::Other(error.to_string()))?;
        // execvp only returns on failure; the filter is already in place either way.
        let error = nix::unistd::execvp(&program, &argv).unwrap_err();
        Err(ExecutorError::Other(format!(
            "{}: {error}",
            program.to_string_lossy()
        )))
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let has_args = spec
            .process()
            .as_ref()
            .and_then(|process| process.args().as_ref())
            .is_some_and(|args| !args.is_empty());
        if has_args {
            Ok(())
        } else {
            Err(ExecutorValidationError::ArgValidationError(
                "no program to run".into(),
            ))
        }
    }
}
