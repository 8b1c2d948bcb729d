//! airlock under test: starting `airlock server` on a fresh data directory, its HTTP API as a
//! [`System`], and cleanup (delete every environment through the API, stop the server, then
//! remove the data directory and the cgroup parent the server made).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::host;
use crate::http::{Client, Endpoint};
use crate::scenario::System;
use crate::stats::Report;

/// A running `airlock server` started by the benchmark.
pub struct Server {
    child: Child,
    binary: PathBuf,
    pub address: SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
}

/// A per-principal rate limit high enough never to refuse: the benchmarks measure the
/// sandboxes, not the limiter (the load scenario measures it on purpose, with the default).
pub const UNLIMITED_RATE: &str = "100000/s:100000";

impl Server {
    /// Starts `binary server` on `data_dir` (which must not exist yet) listening on an
    /// ephemeral port of 127.0.0.1, with the rate limit out of the way, and waits for
    /// "airlock listening on http://…".
    pub async fn start(binary: &Path, data_dir: &Path, log: &Path) -> Result<Self> {
        let flags = ["--rate-limit".to_owned(), UNLIMITED_RATE.to_owned()];
        Self::start_with(binary, data_dir, log, &flags).await
    }

    /// [`Server::start`] with more `airlock server` flags (e.g. `--rate-limit 100/s`).
    pub async fn start_with(
        binary: &Path,
        data_dir: &Path,
        log: &Path,
        flags: &[String],
    ) -> Result<Self> {
        if data_dir.exists() {
            bail!("the data directory {} already exists", data_dir.display());
        }
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let mut child = Command::new(binary)
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            // Its own process group: a Ctrl-C at the terminal must not stop the server before
            // the benchmark has deleted its environments through the API.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} server", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(address) = line.trim().strip_prefix("airlock listening on http://") {
                    return address
                        .parse::<SocketAddr>()
                        .with_context(|| format!("bad listen address in {line:?}"));
                }
            }
            bail!("the server exited before listening; see {}", log.display())
        })
        .await
        .context("the server did not start within 120 s")??;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let token = std::fs::read_to_string(data_dir.join("admin-token"))
            .context("reading the admin token")?
            .trim()
            .to_owned();
        Ok(Self {
            child,
            binary: binary.to_owned(),
            address,
            token,
            data_dir: data_dir.to_owned(),
        })
    }

    /// The API as a [`System`].
    pub fn api(&self) -> Airlock {
        Airlock {
            endpoint: Endpoint::Tcp(self.address),
            token: self.token.clone(),
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|pid| pid as i32)
    }

    /// The server process's resident memory and thread count, from `/proc`.
    pub fn resource_usage(&self) -> String {
        let status = self
            .child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .unwrap_or_else(|| "?".into())
        };
        format!(
            "VmRSS {}, VmHWM {}, {} threads",
            field("VmRSS:"),
            field("VmHWM:"),
            field("Threads:")
        )
    }

    /// The server's runtime directory (`<data-dir>/runtime`, canonical).
    pub fn runtime_root(&self) -> PathBuf {
        let root = self.data_dir.join("runtime");
        root.canonicalize().unwrap_or(root)
    }

    /// The cgroup parent of this server's sandboxes: `/airlock/` and the first 6 bytes of the
    /// SHA-256 of the runtime root, in hex (as `airlock-runtime` derives it).
    pub fn cgroup_parent(&self) -> String {
        let digest = Sha256::digest(self.runtime_root().to_string_lossy().as_bytes());
        let instance: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("/airlock/{instance}")
    }

    /// Deletes every environment through the API, stops the server, and removes what it left:
    /// the data directory (once nothing is mounted in it) and its cgroup parent. Problems are
    /// noted in the report, not returned: cleanup always runs to the end.
    pub async fn shut_down(mut self, report: &mut Report) {
        let api = self.api();
        match api.delete_everything().await {
            Ok(0) => {}
            Ok(n) => eprintln!("[airlock] cleanup: deleted {n} remaining environment(s)"),
            Err(error) => report.note(format!(
                "airlock cleanup: deleting environments through the API failed: {error:#}"
            )),
        }
        let cgroup_parent = self.cgroup_parent();
        let runtime_root = self.runtime_root();
        if let Some(pid) = self.child.id() {
            host::terminate(pid as i32, Duration::from_secs(15));
        }
        let _ = self.child.wait().await;

        // Sandboxes no environment of ours owns (a warm pool's) are not deleted through the
        // API: `airlock purge` destroys whatever sandboxes the data directory still has.
        let state = runtime_root.join("state");
        let left = std::fs::read_dir(&state).map_or(0, |entries| entries.count());
        // `airlock purge` also removes the cgroup parent.
        let purged = left > 0;
        if purged {
            let outcome = Command::new(&self.binary)
                .arg("purge")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            match outcome {
                // A note either way: expected with a warm pool, a leak without one.
                Ok(status) if status.success() => report.note(format!(
                    "airlock cleanup: {left} sandbox(es) were left after every environment \
                     was deleted through the API (a warm pool's, or leaked); `airlock purge` \
                     destroyed them"
                )),
                Ok(status) => report.note(format!("airlock cleanup: `airlock purge` {status}")),
                Err(error) => report.note(format!("airlock cleanup: `airlock purge`: {error}")),
            }
        }

        // The runtime's own mount of `sandboxes/` (which holds every sandbox's) stays while
        // the server lives; it is not a sandbox's.
        let own = self.data_dir.join("runtime/sandboxes");
        let leftovers: Vec<_> = host::unmount_all_under(&self.data_dir)
            .into_iter()
            .filter(|point| *point != own)
            .collect();
        if !leftovers.is_empty() {
            report.note(format!(
                "airlock left {} mount(s) after every environment was deleted, e.g. {}; unmounted",
                leftovers.len(),
                leftovers[0].display()
            ));
        }
        if let Ok(entries) = std::fs::read_dir(&state) {
            let left: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !left.is_empty() {
                report.note(format!(
                    "airlock left libcontainer state for {} sandbox(es) after deletion: {}",
                    left.len(),
                    left.join(", ")
                ));
            }
        }
        if !purged && !host::cgroup_exists(&cgroup_parent) {
            report.note(format!(
                "airlock's cgroup parent {cgroup_parent} was not found: cleanup may have missed it"
            ));
        }
        let stayed = host::remove_cgroup_patiently(&cgroup_parent, Duration::from_secs(10));
        if !stayed.is_empty() {
            report.note(format!(
                "cgroups of airlock sandboxes still in use after cleanup: {}",
                stayed
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // The shared `/airlock` parent goes only if no other airlock instance uses it.
        for hierarchy in host::cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join("airlock"));
        }
    }
}

/// airlock's HTTP API, as one user with the admin token.
#[derive(Clone)]
pub struct Airlock {
    endpoint: Endpoint,
    token: String,
}

impl Airlock {
    /// Deletes every live environment of the caller; returns how many.
    pub async fn delete_everything(&self) -> Result<usize> {
        let mut client = self.client();
        let mut deleted = 0;
        // Each pass lists the first page of what is still live; deleted ones drop out.
        for _ in 0..1000 {
            let page = client
                .request("GET", "/v1/environments?limit=200", None)
                .await?
                .expect(200, "listing environments")?
                .json()?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return Ok(deleted);
            }
            for item in items {
                let id = item["id"].as_str().unwrap_or_default().to_owned();
                self.delete(&mut client, &id).await?;
                deleted += 1;
            }
        }
        bail!("environments keep appearing while deleting them")
    }

    /// GET with the token; the status must be 200.
    pub async fn get(&self, client: &mut Client, path: &str) -> Result<()> {
        client.request("GET", path, None).await?.expect(200, path)?;
        Ok(())
    }
}

impl System for Airlock {
    type Handle = String;

    fn name(&self) -> &str {
        "airlock"
    }

    fn client(&self) -> Client {
        Client::new(
            self.endpoint.clone(),
            vec![("Authorization".to_owned(), format!("Bearer {}", self.token))],
        )
    }

    async fn create(&self, client: &mut Client) -> Result<String> {
        let body = client
            .request("POST", "/v1/environments", Some(&json!({})))
            .await?
            .expect(201, "creating an environment")?
            .json()?;
        if body["state"] != "running" {
            bail!("a new environment is {}, not running", body["state"]);
        }
        body["id"]
            .as_str()
            .map(str::to_owned)
            .context("the created environment has no id")
    }

    async fn exec_true(&self, client: &mut Client, id: &String) -> Result<()> {
        let body = client
            .request(
                "POST",
                &format!("/v1/environments/{id}/exec"),
                Some(&json!({ "command": ["true"] })),
            )
            .await?
            .expect(200, "exec")?
            .json()?;
        if body["exit_code"] != 0 {
            bail!(
                "`true` exited with {}: {}",
                body["exit_code"],
                body["stderr"]
            );
        }
        Ok(())
    }

    async fn delete(&self, client: &mut Client, id: &String) -> Result<()> {
        client
            .request("DELETE", &format!("/v1/environments/{id}"), None)
            .await?
            .expect(204, "deleting an environment")?;
        Ok(())
    }
}
