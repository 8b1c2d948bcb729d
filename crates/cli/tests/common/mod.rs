//! Test harness: the real `airlock` binary as a server on a loopback port with a fresh data
//! directory, and an HTTP client with a principal's token. Dropping a server kills it and
//! destroys every sandbox it left (`airlock purge`), so no test leaks mounts or cgroups.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

/// True when this process may create sandboxes; otherwise prints why the test is skipped.
pub fn can_run_sandboxes(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc_geteuid() } == 0;
    if !root {
        eprintln!(
            "SKIPPED {test}: creating sandboxes needs root (namespaces, cgroups, overlayfs); CI runs as root"
        );
    }
    root
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub admin_token: String,
    pub data_dir: PathBuf,
    /// The unauthenticated metrics page, when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    /// What the server wrote to stderr, line by line, when started with
    /// [`Server::start_logged`] (else it goes to the test's stderr).
    pub logs: Option<Arc<Mutex<Vec<String>>>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    _temp: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra `airlock server` flags (kept across restarts).
    pub fn start_with(args: &[&str]) -> Server {
        Self::start_full(args, &[], false)
    }

    /// Starts a server with extra flags and environment variables, keeping its stderr lines
    /// in [`Server::logs`].
    pub fn start_logged(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_full(args, env, true)
    }

    fn start_full(args: &[&str], env: &[(&str, &str)], capture: bool) -> Server {
        let temp = tempfile::Builder::new()
            .prefix("al")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let data_dir = temp.path().join("d");
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let logs = capture.then(|| Arc::new(Mutex::new(Vec::new())));
        let (mut child, url, metrics_url) = spawn(&data_dir, &args, &env, logs.clone());
        let admin_token = match std::fs::read_to_string(data_dir.join("admin-token")) {
            Ok(token) => token.trim().to_owned(),
            Err(error) => {
                // Never leave a server behind a failed start.
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server wrote no admin token: {error}");
            }
        };
        Server {
            child: Some(child),
            url,
            admin_token,
            data_dir,
            metrics_url,
            logs,
            args,
            env,
            _temp: temp,
        }
    }

    /// Kills the server with SIGKILL, as a crash would; sandboxes stay.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (at most `limit`) for the server to exit; its exit status.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: kill with a valid pid and signal number.
        unsafe { libc_kill(child.id() as i32, 15) };
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("the server did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same data directory (and port, if free).
    pub fn restart(&mut self) {
        self.kill();
        let (child, url, metrics_url) =
            spawn(&self.data_dir, &self.args, &self.env, self.logs.clone());
        self.child = Some(child);
        self.url = url;
        self.metrics_url = metrics_url;
    }

    pub fn client(&self, token: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: self.url.clone(),
            token: Some(token.to_owned()),
        }
    }

    pub fn admin(&self) -> Api {
        self.client(&self.admin_token)
    }

    pub fn anonymous(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: self.url.clone(),
            token: None,
        }
    }

    /// Creates a developer and returns a client holding a read+write token of theirs.
    pub async fn user(&self, name: &str) -> Api {
        self.user_with(name, &["developer"], &[], &["read", "write"])
            .await
            .0
    }

    /// Creates a user with roles and teams; returns a client holding a token with `scopes`,
    /// and the user's id.
    pub async fn user_with(
        &self,
        name: &str,
        roles: &[&str],
        teams: &[&str],
        scopes: &[&str],
    ) -> (Api, String) {
        let admin = self.admin();
        let (status, user) = admin
            .post(
                "/v1/users",
                json!({ "name": name, "roles": roles, "teams": teams }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let (status, token) = admin
            .post(
                "/v1/tokens",
                json!({ "user_id": user["id"], "scopes": scopes }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{token}");
        (
            self.client(token["token"].as_str().unwrap()),
            user["id"].as_str().unwrap().to_owned(),
        )
    }

    pub fn sandbox_dirs(&self) -> Vec<String> {
        list_dir(&self.data_dir.join("runtime/sandboxes"))
    }

    pub fn state_dirs(&self) -> Vec<String> {
        list_dir(&self.data_dir.join("runtime/state"))
    }

    /// Mount points of sandboxes under the data directory, from the host's mount table (the
    /// runtime's own mount of `sandboxes/`, which holds them, is not one).
    pub fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = self.data_dir.to_string_lossy().to_string();
        let own = format!("{prefix}/runtime/sandboxes");
        info.lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| point.starts_with(&prefix) && *point != own)
            .map(str::to_owned)
            .collect()
    }
}

impl Server {
    /// The name of this server's instance in host-wide names (cgroups, network links),
    /// derived from the runtime directory as the runtime does.
    pub fn instance(&self) -> String {
        use sha2::Digest;
        let root = self
            .data_dir
            .join("runtime")
            .canonicalize()
            .expect("the runtime directory exists once the server started");
        let digest = sha2::Sha256::digest(root.to_string_lossy().as_bytes());
        digest
            .iter()
            .take(6)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// This instance's cgroup parent, `<hierarchy>/airlock/<instance>`, in every cgroup
    /// hierarchy mounted (each v1 controller's and the v2 tree), whether it exists or not.
    /// `<instance>` is derived from the runtime directory as the runtime does.
    pub fn cgroup_parents(&self) -> Vec<PathBuf> {
        let instance = self.instance();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mut parents: Vec<PathBuf> = info
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let fs_type = after.split(' ').next()?;
                let point = before.split(' ').nth(4)?;
                matches!(fs_type, "cgroup" | "cgroup2")
                    .then(|| Path::new(point).join("airlock").join(&instance))
            })
            .collect();
        parents.sort();
        parents.dedup();
        parents
    }

    /// The names of the cgroups under this instance's parent, in any hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cgroup_parents()
            .iter()
            .flat_map(|parent| {
                list_dir(parent)
                    .into_iter()
                    .filter(|name| parent.join(name).is_dir())
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Live runtime helpers (`airlock __runtime …`) working in this data directory.
    pub fn helper_processes(&self) -> Vec<i32> {
        let needle = self.data_dir.to_string_lossy().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                cmdline.contains("\0__runtime\0") && cmdline.contains(&needle)
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new(AIRLOCK)
            .arg("purge")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .status();
    }
}

fn list_dir(path: &Path) -> Vec<String> {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts the server; its URL and, with `--metrics-listen`, its metrics page's.
fn spawn(
    data_dir: &Path,
    args: &[String],
    env: &[(String, String)],
    logs: Option<Arc<Mutex<Vec<String>>>>,
) -> (Child, String, Option<String>) {
    let mut child = Command::new(AIRLOCK)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--reconcile-seconds",
            "3600",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(args)
        .env("AIRLOCK_LOG", "warn")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::piped())
        .stderr(if logs.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .expect("start airlock server");
    if let Some(logs) = logs {
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                logs.lock().unwrap().push(line);
            }
        });
    }
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut metrics_url = None;
    let url = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read server output");
        if let Some(address) = line.strip_prefix("metrics on ") {
            metrics_url = Some(address.trim().to_owned());
        }
        if let Some(address) = line.strip_prefix("airlock listening on ") {
            break address.trim().to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url, metrics_url)
}

pub struct Api {
    http: reqwest::Client,
    pub url: String,
    token: Option<String>,
}

/// A response as tests look at it.
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.try_call(method, path, body, headers)
            .await
            .expect("request reaches the server")
    }

    /// The bearer token, for clients other than this one (WebSockets, the CLI).
    pub fn token(&self) -> &str {
        self.token.as_deref().unwrap_or_default()
    }

    /// The same principal against `server` as it is now (a restart moves it to a new port).
    pub fn on(&self, server: &Server) -> Api {
        Api {
            http: self.http.clone(),
            url: server.url.clone(),
            token: self.token.clone(),
        }
    }

    /// Like [`Api::call`], but `None` when no answer came (the server died meanwhile).
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Option<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .timeout(Duration::from_secs(120));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.ok()?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Some(Answer {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let answer = self.call(Method::GET, path, None, &[]).await;
        (answer.status, answer.body)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let answer = self.call(Method::POST, path, Some(body), &[]).await;
        (answer.status, answer.body)
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let answer = self.call(Method::DELETE, path, None, &[]).await;
        (answer.status, answer.body)
    }

    /// Creates an environment and returns its id, asserting success.
    pub async fn create(&self, body: Value) -> String {
        let (status, environment) = self.post("/v1/environments", body).await;
        assert_eq!(status, StatusCode::CREATED, "{environment}");
        assert_eq!(environment["state"], "running");
        environment["id"].as_str().unwrap().to_owned()
    }

    /// Runs `sh -c script` and returns the exec result, asserting the call succeeded.
    pub async fn sh(&self, id: &str, script: &str) -> Value {
        let (status, result) = self
            .post(
                &format!("/v1/environments/{id}/exec"),
                json!({ "command": ["sh", "-c", script] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        result
    }
}
