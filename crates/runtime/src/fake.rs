//! An in-memory runtime for tests of the layers above it on machines without root. It keeps
//! the same contract as the local backend (states, remnants, errors, idempotent destroy) and
//! runs a few built-in commands: `echo ARGS…`, `cat` (echoes stdin), `true`, `false`; others
//! exit 127. Sessions run the same commands as streams (a signal ends them with 128 + its
//! number); every port answers as an echo server; files live in memory. Tests can play a crash: lose a sandbox, leave pieces of one behind, revive one
//! behind the engine's back, or make a destroy fail.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use airlock_core::access::SandboxFile;
use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::{ExecOutput, ExecSpec, NetworkMode, Usage};
use airlock_core::ports::{
    Connection, Process, ProcessControl, ProcessExit, ProcessSpec, Reader, Remnant, Runtime,
    RuntimeError, SandboxSpec, SandboxState,
};
use airlock_core::session::{Signal, TerminalSize};
use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a running sandbox holds; a stopped one keeps only its directory.
const RUNNING: [Remnant; 4] = [
    Remnant::State,
    Remnant::Cgroup,
    Remnant::Mounts,
    Remnant::Directory,
];

#[derive(Debug, Default)]
struct Sandbox {
    running: bool,
    remnants: BTreeSet<Remnant>,
    /// The files it was given when made.
    files: Vec<SandboxFile>,
    /// The variables of the last command run in it.
    last_exec_env: BTreeMap<String, String>,
    /// Its files written through `write_file`, by path.
    written: BTreeMap<String, Vec<u8>>,
    /// Its hostname, when it was changed after it was made.
    hostname: Option<Name>,
}

#[derive(Debug, Default)]
pub struct FakeRuntime {
    /// What `available_memory_mib` answers (unknown by default).
    available_memory_mib: Mutex<Option<u64>>,
    sandboxes: Mutex<BTreeMap<EnvironmentId, Sandbox>>,
    failing_destroys: Mutex<BTreeSet<EnvironmentId>>,
}

impl FakeRuntime {
    /// Makes a sandbox vanish behind the engine's back, as a crash of the host would.
    pub fn lose(&self, id: &EnvironmentId) {
        self.sandboxes.lock().expect("lock").remove(id);
    }

    /// Leaves pieces of a sandbox on the "host" with no process running, as a server killed
    /// in the middle of a create, start or stop would.
    pub fn leave(&self, id: &EnvironmentId, remnants: &[Remnant]) {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        let sandbox = sandboxes.entry(id.clone()).or_default();
        sandbox.running = false;
        sandbox.remnants.extend(remnants);
    }

    /// Makes an existing sandbox run behind the engine's back, as a start whose server died
    /// before recording it would.
    pub fn revive(&self, id: &EnvironmentId) {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        let sandbox = sandboxes.entry(id.clone()).or_default();
        sandbox.running = true;
        sandbox.remnants.extend(RUNNING);
    }

    /// The files a sandbox was given when it was made (empty if it is gone).
    pub fn files(&self, id: &EnvironmentId) -> Vec<SandboxFile> {
        let sandboxes = self.sandboxes.lock().expect("lock");
        sandboxes
            .get(id)
            .map(|sandbox| sandbox.files.clone())
            .unwrap_or_default()
    }

    /// A sandbox's hostname if it was changed after it was made.
    pub fn renamed(&self, id: &EnvironmentId) -> Option<Name> {
        let sandboxes = self.sandboxes.lock().expect("lock");
        sandboxes
            .get(id)
            .and_then(|sandbox| sandbox.hostname.clone())
    }

    /// The variables of the last command run in a sandbox.
    pub fn last_exec_env(&self, id: &EnvironmentId) -> BTreeMap<String, String> {
        let sandboxes = self.sandboxes.lock().expect("lock");
        sandboxes
            .get(id)
            .map(|sandbox| sandbox.last_exec_env.clone())
            .unwrap_or_default()
    }

    fn running(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        match self.sandboxes.lock().expect("lock").get(id) {
            Some(sandbox) if sandbox.running => Ok(()),
            _ => Err(RuntimeError::NotRunning),
        }
    }

    /// Pretends the host has this much memory available.
    pub fn set_available_memory_mib(&self, mib: Option<u64>) {
        *self.available_memory_mib.lock().expect("lock") = mib;
    }

    /// Makes every `destroy` of this sandbox fail (or succeed again).
    pub fn fail_destroy(&self, id: &EnvironmentId, failing: bool) {
        let mut failing_destroys = self.failing_destroys.lock().expect("lock");
        if failing {
            failing_destroys.insert(id.clone());
        } else {
            failing_destroys.remove(id);
        }
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

    fn available_memory_mib(&self) -> Option<u64> {
        *self.available_memory_mib.lock().expect("lock")
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        if sandboxes.contains_key(&spec.id) {
            return Err(RuntimeError::Failed("sandbox exists".into()));
        }
        sandboxes.insert(
            spec.id.clone(),
            Sandbox {
                running: true,
                remnants: RUNNING.into(),
                files: spec.files.clone(),
                last_exec_env: BTreeMap::new(),
                written: BTreeMap::new(),
                hostname: None,
            },
        );
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        let sandbox = sandboxes
            .get_mut(&spec.id)
            .filter(|sandbox| sandbox.remnants.contains(&Remnant::Directory))
            .ok_or(RuntimeError::Missing)?;
        sandbox.running = true;
        sandbox.remnants.extend(RUNNING);
        Ok(())
    }

    async fn stop(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        let sandbox = sandboxes.get_mut(id).ok_or(RuntimeError::Missing)?;
        sandbox.running = false;
        sandbox
            .remnants
            .retain(|remnant| *remnant == Remnant::Directory);
        if sandbox.remnants.is_empty() {
            sandboxes.remove(id);
        }
        Ok(())
    }

    async fn destroy(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        if self.failing_destroys.lock().expect("lock").contains(id) {
            return Err(RuntimeError::Failed("the fake was told to fail".into()));
        }
        self.sandboxes.lock().expect("lock").remove(id);
        Ok(())
    }

    async fn exec(&self, id: &EnvironmentId, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        match self.sandboxes.lock().expect("lock").get_mut(id) {
            Some(sandbox) if sandbox.running => sandbox.last_exec_env = spec.env.clone(),
            _ => return Err(RuntimeError::NotRunning),
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

    async fn rename(&self, id: &EnvironmentId, hostname: &Name) -> Result<(), RuntimeError> {
        match self.sandboxes.lock().expect("lock").get_mut(id) {
            Some(sandbox) if sandbox.running => {
                sandbox.hostname = Some(hostname.clone());
                Ok(())
            }
            _ => Err(RuntimeError::NotRunning),
        }
    }

    async fn spawn(&self, id: &EnvironmentId, spec: &ProcessSpec) -> Result<Process, RuntimeError> {
        self.running(id)?;
        let (stdin, mut input) = tokio::io::duplex(64 * 1024);
        let (mut output, stdout) = tokio::io::duplex(64 * 1024);
        let (signals, mut signalled) = tokio::sync::mpsc::unbounded_channel::<Signal>();
        let (done, exited) = tokio::sync::watch::channel(None);
        let argv = spec.argv.clone();
        tokio::spawn(async move {
            let run = async {
                match argv.first().map(String::as_str) {
                    Some("echo") => {
                        let line = format!("{}\n", argv[1..].join(" "));
                        let _ = output.write_all(line.as_bytes()).await;
                        0
                    }
                    Some("cat") => {
                        let _ = tokio::io::copy(&mut input, &mut output).await;
                        0
                    }
                    Some("true") => 0,
                    Some("false") => 1,
                    _ => 127,
                }
            };
            let exit_code = tokio::select! {
                code = run => code,
                Some(signal) = signalled.recv() => 128 + signal.number(),
            };
            let _ = done.send(Some(ProcessExit {
                exit_code,
                oom_killed: false,
            }));
        });
        Ok(Process {
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: spec
                .tty
                .is_none()
                .then(|| Box::pin(tokio::io::empty()) as Reader),
            control: std::sync::Arc::new(FakeProcess { signals, exited }),
        })
    }

    async fn connect(
        &self,
        id: &EnvironmentId,
        _port: u16,
    ) -> Result<Box<dyn Connection>, RuntimeError> {
        self.running(id)?;
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            while let Ok(n) = server.read(&mut buffer).await {
                if n == 0 || server.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        });
        Ok(Box::new(client))
    }

    async fn read_file(
        &self,
        id: &EnvironmentId,
        path: &str,
    ) -> Result<(u64, Reader), RuntimeError> {
        let sandboxes = self.sandboxes.lock().expect("lock");
        let sandbox = sandboxes
            .get(id)
            .filter(|sandbox| sandbox.running)
            .ok_or(RuntimeError::NotRunning)?;
        let contents = sandbox
            .written
            .get(path)
            .cloned()
            .ok_or_else(|| RuntimeError::Path(format!("{path}: no such file or directory")))?;
        Ok((
            contents.len() as u64,
            Box::pin(std::io::Cursor::new(contents)),
        ))
    }

    async fn write_file(
        &self,
        id: &EnvironmentId,
        path: &str,
        _mode: u32,
        mut contents: Reader,
        limit: u64,
    ) -> Result<u64, RuntimeError> {
        self.running(id)?;
        let mut bytes = Vec::new();
        (&mut contents)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| RuntimeError::Failed(error.to_string()))?;
        if bytes.len() as u64 > limit {
            return Err(RuntimeError::TooLarge(limit));
        }
        let mut sandboxes = self.sandboxes.lock().expect("lock");
        let sandbox = sandboxes
            .get_mut(id)
            .filter(|sandbox| sandbox.running)
            .ok_or(RuntimeError::NotRunning)?;
        let written = bytes.len() as u64;
        sandbox.written.insert(path.to_owned(), bytes);
        Ok(written)
    }

    async fn inspect(&self, id: &EnvironmentId) -> Result<SandboxState, RuntimeError> {
        // As the local backend sees it: a live init is running; runtime state or a
        // directory without one is stopped; a cgroup or helper alone is not a sandbox.
        Ok(match self.sandboxes.lock().expect("lock").get(id) {
            Some(sandbox) if sandbox.running => SandboxState::Running,
            Some(sandbox)
                if sandbox.remnants.contains(&Remnant::State)
                    || sandbox.remnants.contains(&Remnant::Directory) =>
            {
                SandboxState::Stopped
            }
            _ => SandboxState::Missing,
        })
    }

    async fn usage(&self, id: &EnvironmentId) -> Result<Usage, RuntimeError> {
        match self.sandboxes.lock().expect("lock").get(id) {
            Some(sandbox) if sandbox.running => Ok(Usage::default()),
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

    async fn remnants(&self, id: &EnvironmentId) -> Result<Vec<Remnant>, RuntimeError> {
        Ok(self
            .sandboxes
            .lock()
            .expect("lock")
            .get(id)
            .map(|sandbox| sandbox.remnants.iter().copied().collect())
            .unwrap_or_default())
    }
}

/// A session's command in the fake: ends by itself or at the first signal.
struct FakeProcess {
    signals: tokio::sync::mpsc::UnboundedSender<Signal>,
    exited: tokio::sync::watch::Receiver<Option<ProcessExit>>,
}

#[async_trait]
impl ProcessControl for FakeProcess {
    fn resize(&self, _size: TerminalSize) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn signal(&self, signal: Signal) -> Result<(), RuntimeError> {
        let _ = self.signals.send(signal);
        Ok(())
    }

    async fn wait(&self) -> Result<ProcessExit, RuntimeError> {
        let mut exited = self.exited.clone();
        let exit = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RuntimeError::Failed("the fake command vanished".into()))?;
        Ok(exit.expect("waited for it"))
    }
}
