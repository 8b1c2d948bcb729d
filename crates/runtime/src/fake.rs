//! An in-memory runtime for tests of the layers above it on machines without root. It keeps
//! the same contract as the local backend (states, errors, idempotent destroy) and runs a few
//! built-in commands: `echo ARGS…`, `cat` (echoes stdin), `true`, `false`; others exit 127.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::{ExecOutput, ExecSpec, NetworkMode, Usage};
use airlock_core::ports::{Runtime, RuntimeError, SandboxSpec, SandboxState};
use async_trait::async_trait;

#[derive(Debug, Default)]
pub struct FakeRuntime {
    sandboxes: Mutex<BTreeMap<EnvironmentId, bool>>,
}

impl FakeRuntime {
    /// Makes a sandbox vanish behind the engine's back, as a crash of the host would.
    pub fn lose(&self, id: &EnvironmentId) {
        self.sandboxes.lock().expect("lock").remove(id);
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn has_image(&self, image: &Name) -> bool {
        image.as_str() == "default"
    }

    fn supports_network(&self, _mode: NetworkMode) -> bool {
        true
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        if sandboxes.contains_key(&spec.id) {
            return Err(RuntimeError::Failed("sandbox exists".into()));
        }
        sandboxes.insert(spec.id.clone(), true);
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        let running = sandboxes.get_mut(&spec.id).ok_or(RuntimeError::Missing)?;
        *running = true;
        Ok(())
    }

    async fn stop(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        *sandboxes.get_mut(id).ok_or(RuntimeError::Missing)? = false;
        Ok(())
    }

    async fn destroy(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        self.sandboxes.lock().expect("lock").remove(id);
        Ok(())
    }

    async fn exec(&self, id: &EnvironmentId, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        if self.sandboxes.lock().expect("lock").get(id) != Some(&true) {
            return Err(RuntimeError::NotRunning);
        }
        let (exit_code, stdout) = match spec.argv[0].as_str() {
            "echo" => (0, format!("{}\n", spec.argv[1..].join(" ")).into_bytes()),
            "cat" => (0, spec.stdin.clone()),
            "true" => (0, Vec::new()),
            "false" => (1, Vec::new()),
            _ => (127, Vec::new()),
        };
        let truncated = stdout.len() > spec.output_limit;
        Ok(ExecOutput {
            exit_code,
            stdout: stdout[..stdout.len().min(spec.output_limit)].to_vec(),
            stderr: Vec::new(),
            truncated,
            timed_out: false,
            oom_killed: false,
            duration: Duration::ZERO,
        })
    }

    async fn inspect(&self, id: &EnvironmentId) -> Result<SandboxState, RuntimeError> {
        Ok(match self.sandboxes.lock().expect("lock").get(id) {
            Some(true) => SandboxState::Running,
            Some(false) => SandboxState::Stopped,
            None => SandboxState::Missing,
        })
    }

    async fn usage(&self, id: &EnvironmentId) -> Result<Usage, RuntimeError> {
        match self.sandboxes.lock().expect("lock").get(id) {
            Some(true) => Ok(Usage::default()),
            _ => Err(RuntimeError::NotRunning),
        }
    }

    async fn list(&self) -> Result<Vec<EnvironmentId>, RuntimeError> {
        Ok(self
            .sandboxes
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect())
    }
}
