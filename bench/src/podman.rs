//! podman under test: its REST API service (`podman system service`) on a private storage
//! root, the image made from airlock's own root skeleton, the libpod API as a [`System`], and
//! cleanup of everything the service and its conmon processes leave behind.
//!
//! How podman is made to run on this host (see docs/BENCHMARKS.md for why):
//! - `--cgroup-manager cgroupfs`: PID 1 is not systemd;
//! - the container's `nofile` and `nproc` rlimits are pinned to the service's hard limits:
//!   podman asks for nofile 1048576 by default, above this host's hard limit, and root here
//!   lacks CAP_SYS_RESOURCE to raise it;
//! - with crun, the service runs in a private mount namespace where the cgroup2 mount at
//!   `/sys/fs/cgroup/unified` is unmounted: crun 1.8.1 refuses hybrid layouts ("cgroups in
//!   hybrid mode not supported") when cgroup2 has any controller (here: hugetlb). It then
//!   sees a plain cgroup v1 host and enforces the same v1 limits airlock does. runc needs no
//!   such help.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::host;
use crate::http::{Client, Endpoint};
use crate::scenario::System;
use crate::stats::Report;

/// The libpod API version the requests are written against (podman 4.x).
pub(crate) const API: &str = "/v4.0.0/libpod";

/// The image the benchmark imports.
const IMAGE: &str = "localhost/airlock-bench:latest";

/// How the sandbox sees the host's `/usr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsrMode {
    /// A per-container overlay with a writable upper layer (`-v /usr:/usr:O`), as airlock.
    Overlay,
    /// A read-only bind mount (`-v /usr:/usr:ro`): cheaper, but not what airlock does.
    Bind,
}

/// A running `podman system service` started by the benchmark.
pub struct Service {
    child: Child,
    runtime: String,
    socket: PathBuf,
    /// Storage root, run root, tmpdir and network config dir all live below this.
    dir: PathBuf,
    /// Whether `libpod_parent` existed in the cgroup tree before we started.
    had_libpod_parent: bool,
    /// Whether the runtime's own state root (`/run/crun`, `/run/runc`) existed before.
    had_runtime_root: bool,
    image_id: Option<String>,
}

impl Service {
    /// Starts the service for `runtime` (`crun` or `runc`) with all its state under `dir`,
    /// listening on `socket`, and waits until it answers `/_ping`.
    pub async fn start(runtime: &str, dir: &Path, socket: &Path, log: &Path) -> Result<Self> {
        for sub in ["storage", "run", "tmp", "cni"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        if socket.exists() {
            bail!(
                "{} exists: is another benchmark running? Remove it if not.",
                socket.display()
            );
        }
        let had_libpod_parent = host::cgroup_exists("libpod_parent");
        let had_runtime_root = Path::new("/run").join(runtime).exists();
        let mut args: Vec<OsString> = vec![
            "--root".into(),
            dir.join("storage").into(),
            "--runroot".into(),
            dir.join("run").into(),
            "--tmpdir".into(),
            dir.join("tmp").into(),
            "--network-config-dir".into(),
            dir.join("cni").into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
            "--runtime".into(),
            runtime.into(),
            "system".into(),
            "service".into(),
            "--time=0".into(),
        ];
        let mut url = OsString::from("unix://");
        url.push(socket);
        args.push(url);
        let log_file = std::fs::File::create(log)?;
        let mut command = if runtime == "crun" {
            let mut command = Command::new("unshare");
            command
                .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg(
                    "if mountpoint -q /sys/fs/cgroup/unified; then \
                     umount /sys/fs/cgroup/unified || exit 1; fi; exec \"$@\"",
                )
                .args(["sh", "podman"]);
            command
        } else {
            Command::new("podman")
        };
        let child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Its own process group, so a Ctrl-C at the terminal leaves cleanup to us.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting `podman system service` (run bench/setup-podman.sh first)")?;
        let mut service = Self {
            child,
            runtime: runtime.to_owned(),
            socket: socket.to_owned(),
            dir: dir.to_owned(),
            had_libpod_parent,
            had_runtime_root,
            image_id: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = service.child.try_wait() {
                bail!(
                    "podman system service exited with {status}; see {}",
                    log.display()
                );
            }
            let mut client = service.client();
            let ping = client.request("GET", "/_ping", None).await;
            if ping.is_ok_and(|response| response.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!("podman system service did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(service)
    }

    fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket.clone()), Vec::new())
    }

    /// The service's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|pid| pid as i32)
    }

    /// podman's storage root (`--root`): every conmon of this service names it.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// podman's and the runtime's versions, e.g. "podman 4.3.1, crun 1.8.1".
    pub async fn versions(&self) -> Result<String> {
        let info = self
            .client()
            .request("GET", &format!("{API}/info"), None)
            .await?
            .expect(200, "podman info")?
            .json()?;
        let podman = info["version"]["Version"].as_str().unwrap_or("?");
        let runtime = info["host"]["ociRuntime"]["version"]
            .as_str()
            .unwrap_or("?")
            .lines()
            .next()
            .unwrap_or("?");
        let cgroups = info["host"]["cgroupVersion"].as_str().unwrap_or("?");
        let manager = info["host"]["cgroupManager"].as_str().unwrap_or("?");
        Ok(format!(
            "podman {podman}, {runtime}, cgroups {cgroups} via {manager}"
        ))
    }

    /// Imports `tarball` (a root filesystem) as the benchmark image.
    pub async fn import_image(&mut self, tarball: &Path) -> Result<()> {
        let body = std::fs::read(tarball)?;
        let reply = self
            .client()
            .send(
                "POST",
                &format!("{API}/images/import?reference={IMAGE}"),
                Some(&body),
                "application/x-tar",
            )
            .await?
            .expect(200, "importing the image")?
            .json()?;
        self.image_id = reply["Id"].as_str().map(str::to_owned);
        Ok(())
    }

    /// The API as a [`System`] creating containers of the imported image.
    /// Container rlimits are pinned to the service's own hard limits (podman lowers its
    /// `nproc` to 32768 at start; `nofile` is this host's 20000): asking for more fails here.
    pub fn api(&self, usr: UsrMode) -> Podman {
        let limits = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/limits")).ok())
            .unwrap_or_default();
        let hard = |name: &str, fallback: u64| {
            limits
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line[name.len()..].split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
                .unwrap_or(fallback)
        };
        Podman {
            name: format!("podman ({})", self.runtime),
            socket: self.socket.clone(),
            usr,
            nofile: hard("Max open files", host::hard_rlimit(libc::RLIMIT_NOFILE)),
            nproc: hard("Max processes", host::hard_rlimit(libc::RLIMIT_NPROC)),
            memory_mib: 512,
        }
    }

    /// Removes every container and the image, stops the service, ends the conmon processes
    /// it left (podman keeps one per exec alive for 5 minutes), and removes the storage and
    /// the cgroups podman made. Problems go to the report; cleanup always runs to the end.
    pub async fn shut_down(mut self, report: &mut Report) {
        let tag = format!("podman ({})", self.runtime);
        let mut client = self.client();
        match client
            .request("GET", &format!("{API}/containers/json?all=true"), None)
            .await
            .and_then(|r| r.expect(200, "listing containers"))
            .and_then(|r| r.json())
        {
            Ok(list) => {
                let ids: Vec<String> = list
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|c| c["Id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if !ids.is_empty() {
                    eprintln!("[{tag}] cleanup: removing {} container(s)", ids.len());
                }
                for id in ids {
                    if let Err(error) = remove_container(&mut client, &id).await {
                        report.note(format!("{tag} cleanup: {error:#}"));
                    }
                }
            }
            Err(error) => report.note(format!("{tag} cleanup: {error:#}")),
        }
        if let Some(id) = &self.image_id {
            let removed = client
                .request("DELETE", &format!("{API}/images/{id}?force=true"), None)
                .await
                .and_then(|r| r.expect(200, "removing the image"));
            if let Err(error) = removed {
                report.note(format!("{tag} cleanup: {error:#}"));
            }
        }
        if let Some(pid) = self.child.id() {
            host::terminate(pid as i32, Duration::from_secs(15));
        }
        let _ = self.child.wait().await;

        // conmon of each exec lingers for --exit-delay (300 s) before running podman's cleanup
        // command; these, and anything else started for our storage, are ours to end.
        let needle = self.dir.join("storage").to_string_lossy().into_owned();
        let stragglers = host::processes_mentioning(&needle);
        if !stragglers.is_empty() {
            eprintln!(
                "[{tag}] cleanup: ending {} leftover podman helper process(es) (conmon)",
                stragglers.len()
            );
        }
        // They are idle; SIGTERM makes conmon wait for a process long gone, so SIGKILL.
        let pids: Vec<i32> = stragglers.iter().map(|(pid, _)| *pid).collect();
        let left = host::kill_all(&pids, Duration::from_secs(10));
        if !left.is_empty() {
            report.note(format!(
                "{tag} cleanup: {} podman helper process(es) did not end: {left:?}",
                left.len()
            ));
        }

        let unmounted = host::unmount_all_under(&self.dir);
        if !unmounted.is_empty() {
            eprintln!(
                "[{tag}] cleanup: unmounted {} storage mount(s)",
                unmounted.len()
            );
        }
        if !self.had_libpod_parent {
            let stayed = host::remove_cgroup_patiently("libpod_parent", Duration::from_secs(10));
            if !stayed.is_empty() {
                report.note(format!(
                    "{tag} cleanup: cgroups still in use: {}",
                    stayed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if !self.had_runtime_root {
            // Only succeeds when empty, i.e. when no other container of that runtime runs.
            let _ = std::fs::remove_dir(Path::new("/run").join(&self.runtime));
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Err(error) = host::remove_tree(&self.dir) {
            report.note(format!("{tag} cleanup: {error:#}"));
        }
    }
}

async fn remove_container(client: &mut Client, id: &str) -> Result<()> {
    let reply = client
        .request(
            "DELETE",
            &format!("{API}/containers/{id}?force=true&timeout=0"),
            None,
        )
        .await?
        .expect(200, "removing a container")?
        .json()?;
    if let Some(error) = reply
        .as_array()
        .and_then(|reports| reports.iter().find_map(|r| r["Err"].as_str()))
        .filter(|error| !error.is_empty())
    {
        bail!("removing container {id}: {error}");
    }
    Ok(())
}

/// The libpod REST API, one container per sandbox.
pub struct Podman {
    name: String,
    socket: PathBuf,
    usr: UsrMode,
    nofile: u64,
    nproc: u64,
    memory_mib: u64,
}

impl Podman {
    /// The same API with containers limited to `mib` of memory.
    pub fn with_memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The container spec: the same init, limits and namespaces as an airlock environment.
    pub(crate) fn spec(&self) -> Value {
        let mut spec = json!({
            "image": IMAGE,
            "command": ["/.airlock/init"],
            "work_dir": "/root",
            "netns": { "nsmode": "none" },
            "r_limits": [
                { "type": "nofile", "soft": self.nofile, "hard": self.nofile },
                { "type": "nproc", "soft": self.nproc, "hard": self.nproc },
            ],
            "resource_limits": {
                "memory": { "limit": self.memory_mib * 1024 * 1024 },
                "cpu": { "quota": 100_000, "period": 100_000 },
                "pids": { "limit": 512 },
            },
        });
        match self.usr {
            UsrMode::Overlay => {
                spec["overlay_volumes"] = json!([{ "destination": "/usr", "source": "/usr" }]);
            }
            UsrMode::Bind => {
                spec["mounts"] = json!([{
                    "destination": "/usr", "source": "/usr", "type": "bind",
                    "options": ["rbind", "ro"],
                }]);
            }
        }
        spec
    }
}

impl System for Podman {
    type Handle = String;

    fn name(&self) -> &str {
        &self.name
    }

    fn client(&self) -> Client {
        Client::new(Endpoint::Unix(self.socket.clone()), Vec::new())
    }

    /// Create, then start: what `podman run -d` does through the API.
    async fn create(&self, client: &mut Client) -> Result<String> {
        let created = client
            .request(
                "POST",
                &format!("{API}/containers/create"),
                Some(&self.spec()),
            )
            .await?
            .expect(201, "creating a container")?
            .json()?;
        let id = created["Id"]
            .as_str()
            .context("the created container has no Id")?
            .to_owned();
        client
            .request("POST", &format!("{API}/containers/{id}/start"), None)
            .await?
            .expect(204, "starting a container")?;
        Ok(id)
    }

    /// Exec create, exec start attached (the output streams until the process exits and the
    /// server closes the connection), then inspect for the exit code: what `podman exec` does.
    async fn exec_true(&self, client: &mut Client, id: &String) -> Result<()> {
        let session = client
            .request(
                "POST",
                &format!("{API}/containers/{id}/exec"),
                Some(&json!({ "Cmd": ["true"], "AttachStdout": true, "AttachStderr": true })),
            )
            .await?
            .expect(201, "creating an exec session")?
            .json()?;
        let session = session["Id"]
            .as_str()
            .context("the exec session has no Id")?
            .to_owned();
        client
            .request(
                "POST",
                &format!("{API}/exec/{session}/start"),
                Some(&json!({ "Detach": false, "Tty": false })),
            )
            .await?
            .expect(200, "starting an exec session")?;
        let inspected = client
            .request("GET", &format!("{API}/exec/{session}/json"), None)
            .await?
            .expect(200, "inspecting an exec session")?
            .json()?;
        if inspected["Running"] != false || inspected["ExitCode"] != 0 {
            bail!(
                "`true` did not finish with 0: running {}, exit code {}",
                inspected["Running"],
                inspected["ExitCode"]
            );
        }
        Ok(())
    }

    /// Forced removal with no stop timeout (SIGKILL), as airlock's delete.
    async fn delete(&self, client: &mut Client, id: &String) -> Result<()> {
        remove_container(client, id).await
    }
}
