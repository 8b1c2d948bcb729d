//! The local backend: sandboxes on this host, made by youki's libcontainer.
//!
//! On disk, under `<data-dir>/runtime/`:
//! - `state/<id>/`: libcontainer's state of each running sandbox;
//! - `sandboxes/<id>/`: `bundle/config.json`; `disk.img`, the writable layer, an ext4 image
//!   of the sandbox's `disk_mib` (see `disk.rs`) mounted at `layer/` while the sandbox runs,
//!   holding the overlay `upper/<n>` and `work/<n>` of each image layer; and `rootfs/`, where
//!   the overlays are mounted while the sandbox runs;
//! - `disks/`: one formatted, sparse ext4 template per disk size, copied for each sandbox;
//! - `images/<name>/`: image trees; `airlock-init`, `seccomp.bpf`: shared by all sandboxes.
//!
//! Layer and overlay mounts live in the host's mount namespace, made and removed by the server;
//! everything that forks (create, exec) runs in the helper process (`helper.rs`). Files,
//! mounts, kill and delete do not fork and run here, always on blocking threads.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::{ExecOutput, ExecSpec, NetworkMode, Usage};
use airlock_core::ports::{
    Connection, Process, ProcessSpec, Reader, Remnant, Runtime, RuntimeError, SandboxSpec,
    SandboxState, Writer,
};
use async_trait::async_trait;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::signal::Signal;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::Command;

use crate::agent::{self, Agent};
use crate::cgroups::{self, SandboxCgroup};
use crate::disk::{self, Disks};
use crate::enter;
use crate::files;
use crate::helper::{
    self, CONTROL_FD, EXEC_ENV_VAR, ExecStatus, HELPER_ARG, HelperRequest, STATUS_FD,
};
use crate::image::{self, Image};
use crate::mounts;
use crate::network::{self, EgressConfig, EgressPlan};
use crate::oci::{self, SpecInputs};
use crate::process_tree;
use crate::seccomp::CompiledProfile;
use crate::session::{self, AgentProcess, LocalProcess, Terminal};

/// The sandbox init, built by `build.rs`.
const INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/airlock-init"));

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// `<data-dir>/runtime`.
    pub root: PathBuf,
    /// The airlock executable, run as the helper (`airlock __runtime …`).
    pub helper: PathBuf,
    /// Offer the `egress` network mode (installs the host-wide firewall at start).
    pub egress: bool,
    /// Destinations (CIDR) egress sandboxes may reach although they are private.
    pub egress_allow: Vec<String>,
}

pub struct LocalRuntime {
    host: Arc<Host>,
}

/// The runtime's directories and settings, with the synchronous work on them (files, mounts,
/// libcontainer state). Only reached through [`LocalRuntime::blocking`], so none of it runs
/// on an async worker thread.
struct Host {
    root: PathBuf,
    helper: PathBuf,
    images: HashMap<String, Image>,
    /// The templates of the sandboxes' disk images.
    disks: Disks,
    /// Parent of every sandbox's cgroup, distinct per data directory so that two airlock
    /// instances on one host never touch each other's sandboxes.
    cgroup_parent: String,
    /// Six hex digits naming this instance (data directory) in host-wide names.
    instance: String,
    /// Set when `egress` sandboxes can be made here.
    egress: Option<EgressConfig>,
    /// The staging directory of the helpers' private view of the sandboxes' mounts, when
    /// `sandboxes/` is a mount of its own (see `mounts`).
    view: Option<PathBuf>,
}

fn failed(context: &str, error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed(format!("{context}: {error}"))
}

impl LocalRuntime {
    /// Prepares the runtime directory: installs the init binary, compiles the seccomp
    /// profile and builds the default image. Fails if this host cannot run sandboxes.
    pub fn open(config: LocalConfig) -> Result<Self, RuntimeError> {
        let root = config.root;
        for dir in ["state", "sandboxes", "images", "view"] {
            fs::create_dir_all(root.join(dir))
                .map_err(|e| failed("creating the runtime directory", e))?;
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
            .map_err(|e| failed("securing the runtime directory", e))?;
        let root = root
            .canonicalize()
            .map_err(|e| failed("resolving the runtime directory", e))?;
        let text = root.to_string_lossy();
        if text.contains([',', ':', '\n']) {
            return Err(RuntimeError::Failed(format!(
                "the data directory {text:?} must not contain ',' or ':' (overlayfs options)"
            )));
        }
        // Unix sockets: libcontainer's state/<id>/notify.sock and the exec agent's
        // sandboxes/<id>/agent.sock; sun_path holds 107 bytes.
        let longest = [
            "/state/".len() + 30 + "/notify.sock".len(),
            "/sandboxes/".len() + 30 + "/agent.sock".len(),
        ];
        if text.len() + longest.into_iter().max().unwrap_or(0) > 107 {
            return Err(RuntimeError::Failed(format!(
                "the data directory path {text:?} is too long for the runtime's sockets"
            )));
        }

        let init = root.join("airlock-init");
        if fs::read(&init).ok().as_deref() != Some(INIT_BINARY) {
            let temporary = root.join("airlock-init.tmp");
            fs::write(&temporary, INIT_BINARY)
                .map_err(|e| failed("installing the sandbox init", e))?;
            fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))
                .map_err(|e| failed("installing the sandbox init", e))?;
            fs::rename(&temporary, &init).map_err(|e| failed("installing the sandbox init", e))?;
        }
        CompiledProfile::compile()
            .and_then(|profile| profile.save(&root.join("seccomp.bpf")))
            .map_err(|e| failed("preparing the seccomp profile", e))?;

        let disks = Disks::open(&root.join("disks"))
            .map_err(|e| failed("preparing the disks of the writable layers", e))?;
        let default = image::build_default(&root.join("images/default"))
            .map_err(|e| failed("building the default image", e))?;
        let digest = Sha256::digest(root.to_string_lossy().as_bytes());
        let instance: String = digest
            .iter()
            .take(6)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let egress = config
            .egress
            .then(|| EgressConfig::from_host(config.egress_allow));
        let egress = match egress.map(|egress| network::install_firewall(&egress).map(|()| egress))
        {
            None => None,
            Some(Ok(egress)) => Some(egress),
            Some(Err(error)) => {
                tracing::warn!(%error, "the egress network mode is unavailable");
                None
            }
        };
        let view = match mounts::ensure_own_mount(&root.join("sandboxes")) {
            Ok(()) => Some(root.join("view")),
            Err(error) => {
                tracing::warn!(%error, "helpers will see every sandbox's mounts");
                None
            }
        };
        let host = Host {
            view,
            root,
            helper: config.helper,
            images: HashMap::from([(default.name.clone(), default)]),
            disks,
            cgroup_parent: format!("/airlock/{instance}"),
            instance,
            egress,
        };
        Ok(Self {
            host: Arc::new(host),
        })
    }

    /// Removes what this instance holds on the host beside its sandboxes — its (empty)
    /// parent cgroups, the mount of `sandboxes/` — when no sandbox remains.
    pub fn release_host_resources(&self) {
        self.host.release_cgroup_parent();
        if let Err(error) = mounts::release_own_mount(&self.host.root.join("sandboxes")) {
            tracing::warn!(%error, "could not unmount the sandboxes directory");
        }
    }

    /// Runs filesystem, mount and libcontainer-state work on a blocking thread, inside the
    /// caller's span (what libcontainer logs there keeps the request id).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Host) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let host = self.host.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| work(&host)))
            .await
            .map_err(|e| failed("joining a blocking task", e))?
    }

    async fn run_create_helper(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let egress = match spec.network {
            NetworkMode::None => None,
            NetworkMode::Egress => Some(EgressPlan {
                instance: self.host.instance.clone(),
                environment: spec.id.to_string(),
            }),
        };
        let request = HelperRequest::Create {
            state_root: self.host.state_root(),
            id: spec.id.to_string(),
            bundle: self.host.sandbox_dir(&spec.id).join("bundle"),
            seccomp: self.host.seccomp_path(),
            egress,
            view: self.host.view.clone(),
            agent: Some(self.host.agent_path(&spec.id)),
        };
        let output = self
            .helper_command(&request)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| failed("running the runtime helper", e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(RuntimeError::Failed(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }

    fn helper_command(&self, request: &HelperRequest) -> Command {
        let mut command = Command::new(&self.host.helper);
        command
            .arg(HELPER_ARG)
            .arg(serde_json::to_string(request).expect("request serializes"))
            .env_clear()
            .kill_on_drop(true);
        if let Some(filter) = std::env::var_os("AIRLOCK_HELPER_LOG") {
            command.env("AIRLOCK_HELPER_LOG", filter);
        }
        command
    }

    /// Starts the sandbox on existing directories (`fresh`: made just now, removed on
    /// failure; otherwise the writable layer is kept). On failure unmounts what `prepare`
    /// mounted and removes libcontainer's leftovers.
    async fn boot(&self, spec: &SandboxSpec, fresh: bool) -> Result<(), RuntimeError> {
        let id = spec.id.clone();
        self.blocking(move |host| {
            if fresh {
                host.make_sandbox_dir(&id)
            } else if host.sandbox_dir(&id).exists() {
                Ok(())
            } else {
                Err(RuntimeError::Missing)
            }
        })
        .await?;
        let prepared = {
            let spec = spec.clone();
            self.blocking(move |host| {
                host.prepare(&spec)?;
                host.write_network_files(&spec)?;
                let rootfs = host.sandbox_dir(&spec.id).join("rootfs");
                files::write_files(&rootfs, &spec.files)
                    .map_err(|e| failed("writing the grant's files", e))
            })
            .await
        };
        let booted = match prepared {
            Ok(()) => self.run_create_helper(spec).await,
            Err(error) => Err(error),
        };
        if let Err(error) = booted {
            let id = spec.id.clone();
            let _ = self
                .blocking(move |host| {
                    let _ = host.kill_and_forget(&id);
                    let dir = host.sandbox_dir(&id);
                    // The overlays, then the layer, whose loop device detaches with it.
                    let _ = mounts::unmount_all_under(&dir);
                    if fresh {
                        let _ = fs::remove_dir_all(&dir);
                    }
                    Ok(())
                })
                .await;
            return Err(error);
        }
        Ok(())
    }

    /// Runs a command through the sandbox's exec agent; `None` when it has none.
    async fn exec_by_agent(
        &self,
        id: &EnvironmentId,
        spec: &ExecSpec,
    ) -> Result<Option<ExecOutput>, RuntimeError> {
        let started = Instant::now();
        let cgroup = self.host.cgroup(id);
        let oom_kills_before = cgroup.oom_kills();
        let (env, cwd) = self.command_env(id, &spec.env, spec.cwd.as_deref()).await?;
        let (stdin_read, stdin_write) = pipe()?;
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let command = agent::Command {
            argv: &spec.argv,
            env: &env,
            cwd: &cwd,
            tty: false,
        };
        let stdio = [stdin_read, stdout_write, stderr_write];
        // The command's time counts from here: handing it over is part of it.
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let path = self.host.agent_path(id);
        let agent =
            match tokio::time::timeout_at(deadline, Agent::start(&path, &command, stdio)).await {
                Ok(Ok(agent)) => agent,
                Ok(Err(agent::StartError::NoAgent)) => return Ok(None),
                Ok(Err(error)) => return Err(start_error(error)),
                Err(_elapsed) => return Err(did_not_take()),
            };
        let mut stdin = pipe::Sender::from_owned_fd(stdin_write)
            .map_err(|e| failed("opening the command's stdin", e))?;
        let input = spec.stdin.clone();
        let _writer = AbortOnDrop(tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        }));
        let receiver = |fd| {
            pipe::Receiver::from_owned_fd(fd).map_err(|e| failed("opening the command's output", e))
        };
        let stdout = capture(receiver(stdout_read)?, spec.output_limit);
        let stderr = capture(receiver(stderr_read)?, spec.output_limit);
        let (exit_code, timed_out) = match tokio::time::timeout_at(deadline, agent.wait()).await {
            Ok(exit) => (exit.map_err(|e| failed("running the command", e))?, false),
            Err(_elapsed) => {
                let _ = agent.kill();
                let exit = tokio::time::timeout(process_tree::DEATH_TIMEOUT, agent.wait())
                    .await
                    .map_err(|_| RuntimeError::Failed("a timed-out command did not die".into()))?
                    .map_err(|e| failed("running the command", e))?;
                (exit, true)
            }
        };
        let (stdout, out_truncated) = finish_capture(stdout).await;
        let (stderr, err_truncated) = finish_capture(stderr).await;
        Ok(Some(ExecOutput {
            exit_code,
            stdout,
            stderr,
            truncated: out_truncated || err_truncated,
            timed_out,
            oom_killed: cgroup.oom_kills() > oom_kills_before,
            duration: started.elapsed(),
        }))
    }

    /// Starts a session's command through the sandbox's exec agent; `None` when it has none.
    async fn spawn_by_agent(
        &self,
        id: &EnvironmentId,
        spec: &ProcessSpec,
    ) -> Result<Option<Process>, RuntimeError> {
        let cgroup = self.host.cgroup(id);
        let oom_kills_before = cgroup.oom_kills();
        let (env, cwd) = self.command_env(id, &spec.env, spec.cwd.as_deref()).await?;
        let command = agent::Command {
            argv: &spec.argv,
            env: &env,
            cwd: &cwd,
            tty: spec.tty.is_some(),
        };
        let path = self.host.agent_path(id);
        let started = match spec.tty {
            Some(size) => {
                let (master, slave) =
                    session::open_terminal(size).map_err(|e| failed("opening a terminal", e))?;
                let copy = || {
                    slave
                        .try_clone()
                        .map_err(|e| failed("opening a terminal", e))
                };
                let stdio = [copy()?, copy()?, slave];
                start_agent(&path, &command, stdio).await?.map(|agent| {
                    let terminal = Terminal::new(master);
                    (agent, None, terminal.map(Some))
                })
            }
            None => {
                let (stdin_read, stdin_write) = pipe()?;
                let (stdout_read, stdout_write) = pipe()?;
                let (stderr_read, stderr_write) = pipe()?;
                let stdio = [stdin_read, stdout_write, stderr_write];
                start_agent(&path, &command, stdio).await?.map(|agent| {
                    (
                        agent,
                        Some((stdin_write, stdout_read, stderr_read)),
                        Ok(None),
                    )
                })
            }
        };
        let (agent, pipes, terminal) = match started {
            Ok(started) => started,
            Err(agent::StartError::NoAgent) => return Ok(None),
            Err(error) => return Err(start_error(error)),
        };
        let terminal = terminal.map_err(|e| failed("opening a terminal", e))?;
        let (stdin, stdout, stderr): (Writer, Reader, Option<Reader>) = match (&terminal, pipes) {
            (Some(terminal), _) => (Box::pin(terminal.clone()), Box::pin(terminal.clone()), None),
            (None, Some((stdin, stdout, stderr))) => {
                let io = |e| failed("opening the command's streams", e);
                (
                    Box::pin(pipe::Sender::from_owned_fd(stdin).map_err(io)?),
                    Box::pin(pipe::Receiver::from_owned_fd(stdout).map_err(io)?),
                    Some(Box::pin(pipe::Receiver::from_owned_fd(stderr).map_err(io)?)),
                )
            }
            (None, None) => unreachable!("a command without a terminal has pipes"),
        };
        Ok(Some(Process {
            stdin,
            stdout,
            stderr,
            control: Arc::new(AgentProcess {
                agent,
                terminal,
                cgroup,
                oom_kills_before,
            }),
        }))
    }

    /// A command's variables and working directory: the sandbox's baseline from its bundle
    /// (`HOSTNAME` follows a rename) with `extra` on top, and `cwd` or the bundle's.
    async fn command_env(
        &self,
        id: &EnvironmentId,
        extra: &std::collections::BTreeMap<String, String>,
        cwd: Option<&str>,
    ) -> Result<(Vec<String>, String), RuntimeError> {
        let id = id.clone();
        let (baseline, default_cwd) = self
            .blocking(move |host| {
                let path = host.sandbox_dir(&id).join("bundle/config.json");
                let text = match fs::read(&path) {
                    Ok(text) => text,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        return Err(RuntimeError::NotRunning);
                    }
                    Err(error) => return Err(failed("reading the bundle", error)),
                };
                let config: serde_json::Value =
                    serde_json::from_slice(&text).map_err(|e| failed("reading the bundle", e))?;
                let env = config["process"]["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|variable| variable.as_str().map(str::to_owned))
                    .collect::<Vec<_>>();
                let cwd = config["process"]["cwd"].as_str().unwrap_or("/").to_owned();
                Ok((env, cwd))
            })
            .await?;
        Ok((
            agent::merge_env(&baseline, extra),
            cwd.map_or(default_cwd, str::to_owned),
        ))
    }

    /// An exec helper's request (the command's variables go in its environment instead, see
    /// `EXEC_ENV_VAR`); a session's (`timeout_ms` none) also reads signals on `CONTROL_FD`.
    fn exec_request(
        &self,
        id: &EnvironmentId,
        argv: &[String],
        cwd: Option<&str>,
        timeout_ms: Option<u64>,
        tty: bool,
    ) -> HelperRequest {
        HelperRequest::Exec {
            state_root: self.host.state_root(),
            id: id.to_string(),
            seccomp: self.host.seccomp_path(),
            argv: argv.to_vec(),
            env: HashMap::new(),
            cwd: cwd.map(PathBuf::from),
            timeout_ms,
            tty,
            control: timeout_ms.is_none(),
            view: self.host.view.clone(),
        }
    }

    /// Runs a command through the runtime helper (sandboxes without an agent).
    async fn exec_by_helper(
        &self,
        id: &EnvironmentId,
        spec: &ExecSpec,
    ) -> Result<ExecOutput, RuntimeError> {
        let started = Instant::now();
        let cgroup = self.host.cgroup(id);
        let oom_kills_before = cgroup.oom_kills();
        let timeout_ms = spec.timeout.as_millis() as u64;
        let request =
            self.exec_request(id, &spec.argv, spec.cwd.as_deref(), Some(timeout_ms), false);
        let (status_read, status_write) = pipe()?;
        let status_write_fd = status_write.as_raw_fd();
        let mut command = self.helper_command(&request);
        command
            .env(
                EXEC_ENV_VAR,
                serde_json::to_string(&spec.env).expect("variables serialize"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec only dup2, which is async-signal-safe, runs; it makes
        // the status pipe the child's fd 3 (dup2 clears close-on-exec on the copy).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(status_write_fd, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| failed("running the runtime helper", e))?;
        drop(status_write);

        let mut stdin = child.stdin.take().expect("piped stdin");
        let input = spec.stdin.clone();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
        let limit = spec.output_limit;
        let stdout = capture(child.stdout.take().expect("piped stdout"), limit);
        let stderr = capture(child.stderr.take().expect("piped stderr"), limit);

        // The helper enforces the timeout itself; this bound only guards against a stuck helper.
        let guard = spec.timeout + Duration::from_secs(30);
        let exited = tokio::time::timeout(guard, child.wait()).await;
        writer.abort();
        if exited.is_err() {
            let _ = child.kill().await;
            return Err(RuntimeError::Failed(
                "the runtime helper did not finish".into(),
            ));
        }
        let mut status_pipe = std::fs::File::from(status_read);
        let mut status_text = Vec::new();
        status_pipe
            .read_to_end(&mut status_text)
            .map_err(|e| failed("reading the exec status", e))?;
        let status = ExecStatus::read(&status_text)?;
        let (stdout, out_truncated) = finish_capture(stdout).await;
        let (stderr, err_truncated) = finish_capture(stderr).await;
        Ok(ExecOutput {
            exit_code: status.exit_code,
            stdout,
            stderr,
            truncated: out_truncated || err_truncated,
            timed_out: status.timed_out,
            oom_killed: cgroup.oom_kills() > oom_kills_before,
            duration: started.elapsed(),
        })
    }

    /// Runs a session's command through the runtime helper (sandboxes without an agent).
    async fn spawn_by_helper(
        &self,
        id: &EnvironmentId,
        spec: &ProcessSpec,
    ) -> Result<Process, RuntimeError> {
        let cgroup = self.host.cgroup(id);
        let oom_kills_before = cgroup.oom_kills();
        let request = self.exec_request(
            id,
            &spec.argv,
            spec.cwd.as_deref(),
            None,
            spec.tty.is_some(),
        );
        let (status_read, status_write) = pipe()?;
        let (control_read, control_write) = pipe()?;
        let (status_fd, control_fd) = (status_write.as_raw_fd(), control_read.as_raw_fd());
        let mut command = self.helper_command(&request);
        command
            .env(
                EXEC_ENV_VAR,
                serde_json::to_string(&spec.env).expect("variables serialize"),
            )
            // The helper must outlive a dropped session long enough to kill the command: it
            // does so when the control pipe closes.
            .kill_on_drop(false);
        let terminal = match spec.tty {
            Some(size) => {
                let (master, slave) =
                    session::open_terminal(size).map_err(|e| failed("opening a terminal", e))?;
                let copy = |fd: &std::os::fd::OwnedFd| {
                    fd.try_clone()
                        .map(Stdio::from)
                        .map_err(|e| failed("opening a terminal", e))
                };
                command
                    .stdin(copy(&slave)?)
                    .stdout(copy(&slave)?)
                    .stderr(Stdio::from(slave));
                Some(Terminal::new(master).map_err(|e| failed("opening a terminal", e))?)
            }
            None => {
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                None
            }
        };
        // SAFETY: between fork and exec only dup2, which is async-signal-safe, runs; it makes
        // the status pipe fd 3 and the control pipe fd 4 (dup2 clears close-on-exec).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(status_fd, STATUS_FD) < 0 || libc::dup2(control_fd, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut helper = command
            .spawn()
            .map_err(|e| failed("running the runtime helper", e))?;
        drop((status_write, control_read));
        let (stdin, stdout, stderr): (_, Reader, _) = match &terminal {
            Some(terminal) => (
                Box::pin(terminal.clone()) as airlock_core::ports::Writer,
                Box::pin(terminal.clone()),
                None,
            ),
            None => (
                Box::pin(helper.stdin.take().expect("piped stdin")) as airlock_core::ports::Writer,
                Box::pin(helper.stdout.take().expect("piped stdout")),
                Some(Box::pin(helper.stderr.take().expect("piped stderr")) as Reader),
            ),
        };
        Ok(Process {
            stdin,
            stdout,
            stderr,
            control: Arc::new(LocalProcess {
                helper: tokio::sync::Mutex::new(helper),
                status: std::sync::Mutex::new(Some(status_read)),
                control: std::fs::File::from(control_write),
                terminal,
                cgroup,
                oom_kills_before,
                exit: std::sync::Mutex::new(None),
            }),
        })
    }
}

impl Host {
    /// Removes this instance's (empty) parent cgroups, in every hierarchy, v1 or v2; called
    /// when no sandbox remains and none is being made.
    pub fn release_cgroup_parent(&self) {
        cgroups::release_parent(&self.cgroup_parent);
    }

    fn cgroup_path(&self, id: &EnvironmentId) -> String {
        format!("{}/{}", self.cgroup_parent, id)
    }

    fn cgroup(&self, id: &EnvironmentId) -> SandboxCgroup {
        SandboxCgroup::new(&self.cgroup_path(id))
    }

    fn sandbox_dir(&self, id: &EnvironmentId) -> PathBuf {
        self.root.join("sandboxes").join(id.as_str())
    }

    fn state_root(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Where the sandbox's init listens for commands (see `agent.rs`).
    fn agent_path(&self, id: &EnvironmentId) -> PathBuf {
        self.sandbox_dir(id).join("agent.sock")
    }

    fn seccomp_path(&self) -> PathBuf {
        self.root.join("seccomp.bpf")
    }

    fn image(&self, name: &Name) -> Result<&Image, RuntimeError> {
        self.images
            .get(name.as_str())
            .ok_or_else(|| RuntimeError::Failed(format!("unknown image {name}")))
    }

    /// Mounts the sandbox's overlays and writes its spec; the directories must exist.
    fn prepare(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let image = self.image(&spec.image)?;
        let dir = self.sandbox_dir(&spec.id);
        let rootfs = dir.join("rootfs");
        mounts::unmount_all_under(&rootfs).map_err(|e| failed("clearing old mounts", e))?;
        let writable = self.mount_layer(&dir, spec.resources.disk_mib)?;
        for (index, layer) in image.layers.iter().enumerate() {
            let upper = writable.join("upper").join(index.to_string());
            let work = writable.join("work").join(index.to_string());
            for path in [&upper, &work] {
                fs::create_dir_all(path).map_err(|e| failed("creating the writable layer", e))?;
            }
            let target = rootfs.join(layer.target.trim_start_matches('/'));
            mounts::mount_overlay(&layer.lower, &upper, &work, &target)
                .map_err(|e| failed("mounting the root filesystem", e))?;
        }
        let bundle = dir.join("bundle");
        fs::create_dir_all(&bundle).map_err(|e| failed("creating the bundle", e))?;
        let config = oci::sandbox_spec(&SpecInputs {
            rootfs: &rootfs,
            hostname: spec.hostname.as_str(),
            init_binary: &self.root.join("airlock-init"),
            cgroup_path: &self.cgroup_path(&spec.id),
            resources: spec.resources,
        });
        fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&config).expect("spec serializes"),
        )
        .map_err(|e| failed("writing the bundle", e))?;
        Ok(())
    }

    /// Mounts the sandbox's writable layer at `layer/` and returns where its overlay
    /// directories go: its `disk.img`, made from the template of `disk_mib` on first use, or
    /// kept from before a stop. A layer still mounted (a stop cut short) is used as it is.
    fn mount_layer(&self, dir: &Path, disk_mib: u64) -> Result<PathBuf, RuntimeError> {
        let image = dir.join(disk::IMAGE);
        let layer = dir.join(disk::LAYER);
        if disk::is_mounted(&layer) {
            return Ok(layer);
        }
        if image.exists() {
            // Its last loop device must be gone: two at once would corrupt the filesystem.
            disk::wait_until_detached(&image, Duration::from_secs(2))
                .map_err(|e| failed("mounting the writable layer", e))?;
        } else if dir.join("upper").exists() {
            // Made before writable layers had a size: its directories stay where they are.
            tracing::warn!(sandbox = %dir.display(), "the writable layer has no disk limit");
            return Ok(dir.to_owned());
        } else {
            self.disks
                .provision(&image, disk_mib)
                .map_err(|e| failed("making the writable layer", e))?;
        }
        disk::mount_image(&image, &layer).map_err(|e| failed("mounting the writable layer", e))?;
        Ok(layer)
    }

    /// Points an egress sandbox's resolver at the host's (rewritten at every start, so a
    /// change on the host reaches stopped sandboxes too).
    fn write_network_files(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        if let (NetworkMode::Egress, Some(egress)) = (spec.network, &self.egress) {
            let etc = self.sandbox_dir(&spec.id).join("rootfs/etc");
            fs::write(etc.join("resolv.conf"), egress.resolv_conf())
                .map_err(|e| failed("writing resolv.conf", e))?;
        }
        Ok(())
    }

    /// Deletes the sandbox's host link now rather than when the kernel gets round to
    /// destroying its network namespace.
    fn remove_network(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        network::remove_links(&self.instance, id.as_str())
            .map_err(|e| failed("removing the network link", e))
    }

    fn make_sandbox_dir(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        let dir = self.sandbox_dir(id);
        fs::create_dir(&dir).map_err(|e| failed("creating the sandbox directory", e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| failed("securing the sandbox directory", e))
    }

    /// Kills the sandbox's processes and deletes libcontainer's state and cgroups, with what
    /// a crash leaves outside that state: a create helper of a killed server still at work
    /// (killed first, so that nothing goes on making the sandbox), cgroups libcontainer never
    /// recorded or could not remove (their processes are killed), a half-written state.
    fn kill_and_forget(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        helper::kill_create_helpers(&self.state_root(), id.as_str());
        let container_root = self.state_root().join(id.as_str());
        if container_root.exists()
            && let Err(error) = Self::delete_container(&container_root)
        {
            // Cleared below by hand: the cgroups, then the state.
            tracing::warn!(environment = %id, %error, "libcontainer could not delete the sandbox");
        }
        if cgroups::remove_cgroups(&self.cgroup_parent, id.as_str())
            .map_err(|e| failed("removing the sandbox's cgroups", e))?
        {
            tracing::warn!(environment = %id, "removed cgroups the sandbox's state did not account for");
        }
        match fs::remove_dir_all(&container_root) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(failed("removing sandbox state", error)),
        }
    }

    /// Kills the container whose state is at `container_root` and deletes it (state and
    /// cgroups) through libcontainer.
    fn delete_container(container_root: &Path) -> Result<(), RuntimeError> {
        let mut container = match Container::load(container_root.to_owned()) {
            Ok(container) => container,
            // A half-written state directory: nothing can run from it.
            Err(_) => {
                return fs::remove_dir_all(container_root)
                    .map_err(|e| failed("removing sandbox state", e));
            }
        };
        if container.status() != ContainerStatus::Stopped
            && container.status() != ContainerStatus::Creating
        {
            let _ = container.kill(Signal::try_from("SIGKILL").expect("SIGKILL"), true);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while container.status() != ContainerStatus::Stopped && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            container
                .refresh_status()
                .map_err(|e| failed("reading sandbox status", e))?;
        }
        container
            .delete(true)
            .map_err(|e| failed("deleting the sandbox", e))
    }

    fn inspect(&self, id: &EnvironmentId) -> SandboxState {
        let container_root = self.state_root().join(id.as_str());
        if container_root.exists() {
            return match Container::load(container_root).map(|container| container.status()) {
                Ok(ContainerStatus::Running) => SandboxState::Running,
                _ => SandboxState::Stopped,
            };
        }
        if self.sandbox_dir(id).exists() {
            SandboxState::Stopped
        } else {
            SandboxState::Missing
        }
    }

    /// Every sandbox with anything on the host: runtime state, a directory (mounts live in
    /// it), a cgroup under this instance's parent, a create helper at work, a network device.
    fn list(&self) -> Result<Vec<EnvironmentId>, RuntimeError> {
        // Each name found, with where, for the warning about a foreign one.
        let mut names: Vec<(String, String)> = Vec::new();
        for dir in [self.state_root(), self.root.join("sandboxes")] {
            for entry in fs::read_dir(&dir).map_err(|e| failed("listing sandboxes", e))? {
                let entry = entry.map_err(|e| failed("listing sandboxes", e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                names.push((name, entry.path().display().to_string()));
            }
        }
        for name in cgroups::cgroup_names(&self.cgroup_parent) {
            let place = format!("cgroup {}/{name}", self.cgroup_parent);
            names.push((name, place));
        }
        for helper in helper::create_helpers(&self.state_root()) {
            names.push((helper.id, format!("helper process {}", helper.pid)));
        }
        for name in network::owners(&self.instance) {
            let place = format!("network link of {name}");
            names.push((name, place));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (name, place) in names {
            match EnvironmentId::parse(&name) {
                Ok(id) => {
                    ids.insert(id);
                }
                Err(_) => tracing::warn!(%place, "ignoring a foreign entry among sandboxes"),
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// What the host holds of the sandbox, in [`Remnant`] order.
    fn remnants(&self, id: &EnvironmentId) -> Vec<Remnant> {
        let dir = self.sandbox_dir(id);
        let found = [
            (
                Remnant::Helper,
                helper::create_helpers(&self.state_root())
                    .iter()
                    .any(|helper| helper.id == id.as_str()),
            ),
            (Remnant::State, self.state_root().join(id.as_str()).exists()),
            (
                Remnant::Cgroup,
                !cgroups::cgroup_dirs(&self.cgroup_parent, id.as_str()).is_empty(),
            ),
            (
                Remnant::Mounts,
                mounts::mounts_under(&dir).is_ok_and(|points| !points.is_empty()),
            ),
            (Remnant::Directory, dir.exists()),
            (
                Remnant::Network,
                network::owners(&self.instance).contains(id.as_str()),
            ),
        ];
        found
            .into_iter()
            .filter_map(|(remnant, present)| present.then_some(remnant))
            .collect()
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn has_image(&self, image: &Name) -> bool {
        self.host.images.contains_key(image.as_str())
    }

    fn supports_network(&self, mode: NetworkMode) -> bool {
        match mode {
            NetworkMode::None => true,
            NetworkMode::Egress => self.host.egress.is_some(),
        }
    }

    fn available_memory_mib(&self) -> Option<u64> {
        available_memory_mib(&fs::read_to_string("/proc/meminfo").ok()?)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.boot(spec, true).await
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.boot(spec, false).await
    }

    async fn stop(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        let id = id.clone();
        self.blocking(move |host| {
            host.kill_and_forget(&id)?;
            host.remove_network(&id)?;
            // The overlays, then the layer, whose loop device detaches with it; its image stays.
            mounts::unmount_all_under(&host.sandbox_dir(&id)).map_err(|e| failed("unmounting", e))
        })
        .await
    }

    async fn destroy(&self, id: &EnvironmentId) -> Result<(), RuntimeError> {
        let id = id.clone();
        self.blocking(move |host| {
            host.kill_and_forget(&id)?;
            host.remove_network(&id)?;
            let dir = host.sandbox_dir(&id);
            // The overlays, then the layer (detaching its loop device), then every file.
            mounts::unmount_all_under(&dir).map_err(|e| failed("unmounting", e))?;
            match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(failed("removing the sandbox directory", error)),
            }
        })
        .await
    }

    async fn exec(&self, id: &EnvironmentId, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        match self.exec_by_agent(id, spec).await? {
            Some(output) => Ok(output),
            None => self.exec_by_helper(id, spec).await,
        }
    }

    async fn spawn(&self, id: &EnvironmentId, spec: &ProcessSpec) -> Result<Process, RuntimeError> {
        // A terminal's programs need to know what it is.
        let mut spec = spec.clone();
        if spec.tty.is_some() {
            spec.env
                .entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
        }
        match self.spawn_by_agent(id, &spec).await? {
            Some(process) => Ok(process),
            None => self.spawn_by_helper(id, &spec).await,
        }
    }

    async fn rename(&self, id: &EnvironmentId, hostname: &Name) -> Result<(), RuntimeError> {
        let (id, hostname) = (id.clone(), hostname.to_string());
        self.blocking(move |host| {
            let init = enter::Init::find(&host.state_root(), id.as_str())
                .ok_or(RuntimeError::NotRunning)?;
            enter::set_hostname(&init, &hostname).map_err(|e| failed("setting the hostname", e))?;
            // Later commands take their baseline variables from the bundle.
            let path = host.sandbox_dir(&id).join("bundle/config.json");
            let text = fs::read(&path).map_err(|e| failed("reading the bundle", e))?;
            let mut config: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| failed("reading the bundle", e))?;
            config["hostname"] = hostname.clone().into();
            if let Some(env) = config["process"]["env"].as_array_mut() {
                env.retain(|variable| {
                    !variable
                        .as_str()
                        .is_some_and(|v| v.starts_with("HOSTNAME="))
                });
                env.push(format!("HOSTNAME={hostname}").into());
            }
            let temporary = path.with_extension("json.tmp");
            fs::write(
                &temporary,
                serde_json::to_vec(&config).expect("a spec serializes"),
            )
            .and_then(|()| fs::rename(&temporary, &path))
            .map_err(|e| failed("writing the bundle", e))
        })
        .await
    }

    async fn connect(
        &self,
        id: &EnvironmentId,
        port: u16,
    ) -> Result<Box<dyn Connection>, RuntimeError> {
        let id = id.clone();
        let stream = self
            .blocking(move |host| {
                let init = enter::Init::find(&host.state_root(), id.as_str())
                    .ok_or(RuntimeError::NotRunning)?;
                enter::connect(&init, port).map_err(|error| match error.kind() {
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut => {
                        RuntimeError::PortClosed(port)
                    }
                    _ => failed("connecting into the sandbox", error),
                })
            })
            .await?;
        stream
            .set_nonblocking(true)
            .map_err(|e| failed("connecting into the sandbox", e))?;
        let _ = stream.set_nodelay(true);
        let stream = tokio::net::TcpStream::from_std(stream)
            .map_err(|e| failed("connecting into the sandbox", e))?;
        Ok(Box::new(stream))
    }

    async fn read_file(
        &self,
        id: &EnvironmentId,
        path: &str,
    ) -> Result<(u64, Reader), RuntimeError> {
        let (id, path) = (id.clone(), path.to_owned());
        let (file, size) = self
            .blocking(move |host| {
                let init = enter::Init::find(&host.state_root(), id.as_str())
                    .ok_or(RuntimeError::NotRunning)?;
                let root = init.root().map_err(|e| failed("opening the root", e))?;
                files::open_inside(&root, &path).map_err(path_error)
            })
            .await?;
        // Never more than the size announced (a file growing meanwhile, or one of /proc's
        // that says 0 and then has something to read).
        let file = tokio::fs::File::from_std(file).take(size);
        Ok((size, Box::pin(file)))
    }

    async fn write_file(
        &self,
        id: &EnvironmentId,
        path: &str,
        mode: u32,
        mut contents: Reader,
        limit: u64,
    ) -> Result<u64, RuntimeError> {
        let (id, target) = (id.clone(), path.to_owned());
        let (upload, file) = self
            .blocking(move |host| {
                let init = enter::Init::find(&host.state_root(), id.as_str())
                    .ok_or(RuntimeError::NotRunning)?;
                let root = init.root().map_err(|e| failed("opening the root", e))?;
                files::Upload::begin(&root, &target, mode).map_err(path_error)
            })
            .await?;
        // Dropped on any early return (or a cancelled request): the partial file goes too.
        let mut file = tokio::fs::File::from_std(file);
        let mut buffer = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = contents
                .read(&mut buffer)
                .await
                .map_err(|e| failed("receiving the file", e))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > limit {
                return Err(RuntimeError::TooLarge(limit));
            }
            file.write_all(&buffer[..n])
                .await
                .map_err(|error| match error.raw_os_error() {
                    Some(libc::ENOSPC | libc::EDQUOT) => {
                        RuntimeError::Path(format!("{path}: no space left in the environment"))
                    }
                    _ => failed("writing the file", error),
                })?;
        }
        file.flush()
            .await
            .map_err(|e| failed("writing the file", e))?;
        // On disk before it takes the target's place: whole or nothing, across a crash too.
        file.sync_all()
            .await
            .map_err(|e| failed("writing the file", e))?;
        drop(file);
        tokio::task::spawn_blocking(move || upload.commit().map_err(path_error))
            .await
            .map_err(|e| failed("joining a blocking task", e))??;
        Ok(written)
    }

    async fn inspect(&self, id: &EnvironmentId) -> Result<SandboxState, RuntimeError> {
        let id = id.clone();
        self.blocking(move |host| Ok(host.inspect(&id))).await
    }

    async fn usage(&self, id: &EnvironmentId) -> Result<Usage, RuntimeError> {
        let id = id.clone();
        self.blocking(move |host| match host.inspect(&id) {
            SandboxState::Running => Ok(Usage {
                disk_bytes: disk::used_bytes(&host.sandbox_dir(&id).join(disk::LAYER)),
                ..host.cgroup(&id).usage()
            }),
            _ => Err(RuntimeError::NotRunning),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<EnvironmentId>, RuntimeError> {
        self.blocking(Host::list).await
    }

    async fn remnants(&self, id: &EnvironmentId) -> Result<Vec<Remnant>, RuntimeError> {
        let id = id.clone();
        self.blocking(move |host| Ok(host.remnants(&id))).await
    }
}

/// What has been read of one output stream: the kept bytes, and whether any were dropped.
type Captured = std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>;

/// Reads a stream to its end into `captured`, keeping at most `limit` bytes.
async fn read_capped(mut stream: impl AsyncRead + Unpin, limit: usize, captured: Captured) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut captured = captured.lock().expect("capture lock");
                let room = limit.saturating_sub(captured.0.len());
                captured.0.extend_from_slice(&buffer[..n.min(room)]);
                captured.1 |= n > room;
            }
        }
    }
}

fn capture(
    stream: impl AsyncRead + Unpin + Send + 'static,
    limit: usize,
) -> (tokio::task::JoinHandle<()>, Captured) {
    let captured = Captured::default();
    (
        tokio::spawn(read_capped(stream, limit, captured.clone())),
        captured,
    )
}

/// Waits briefly for a stream to end (a background process the command left may hold it
/// open), then takes what arrived.
async fn finish_capture(
    (task, captured): (tokio::task::JoinHandle<()>, Captured),
) -> (Vec<u8>, bool) {
    let abort = task.abort_handle();
    if tokio::time::timeout(Duration::from_millis(250), task)
        .await
        .is_err()
    {
        abort.abort();
    }
    std::mem::take(&mut *captured.lock().expect("capture lock"))
}

/// A pipe whose ends are both close-on-exec (one end goes to a command through the agent).
fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), RuntimeError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed("creating a pipe", e))
}

/// How long a session's command may take to be handed to the agent (a session has no
/// timeout of its own).
const AGENT_START_PATIENCE: Duration = Duration::from_secs(10);

/// [`Agent::start`] within [`AGENT_START_PATIENCE`].
async fn start_agent(
    path: &Path,
    command: &agent::Command<'_>,
    stdio: [std::os::fd::OwnedFd; 3],
) -> Result<Result<Agent, agent::StartError>, RuntimeError> {
    tokio::time::timeout(AGENT_START_PATIENCE, Agent::start(path, command, stdio))
        .await
        .map_err(|_elapsed| did_not_take())
}

fn did_not_take() -> RuntimeError {
    RuntimeError::Failed("the sandbox's init did not take the command in time".into())
}

/// A task aborted when this is dropped, on every way out of a function.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start_error(error: agent::StartError) -> RuntimeError {
    match error {
        agent::StartError::NoAgent => RuntimeError::NotRunning,
        agent::StartError::Invalid(why) => RuntimeError::Failed(why.into()),
        agent::StartError::Io(error) => failed("reaching the sandbox's init", error),
    }
}

fn path_error(error: files::PathError) -> RuntimeError {
    match error {
        files::PathError::Refused(why) => RuntimeError::Path(why),
        files::PathError::Io(error) => failed("reaching into the sandbox", error),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in MiB.
fn available_memory_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod meminfo_tests {
    use super::available_memory_mib;

    #[test]
    fn reads_mem_available() {
        let meminfo =
            "MemTotal:       24683656 kB\nMemFree:  100 kB\nMemAvailable:   20971520 kB\n";
        assert_eq!(available_memory_mib(meminfo), Some(20480));
        assert_eq!(available_memory_mib("MemTotal: 1 kB\n"), None);
    }
}
