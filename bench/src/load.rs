//! The load scenario (issue 6), for airlock and for podman doing the same work: bursts of
//! creates issued by many clients at once, each create followed by its first exec, with every
//! answer counted by status; and the memory an idle environment costs, at 100 and at 1,000
//! live ones.
//!
//! A burst: `creates` rounds over `clients` clients, each with its own connection, each taking
//! the next round as soon as its previous one is done, whatever its outcome. A refused create
//! is not retried: it is counted by status (201, 429, 503, other, timeout), and the burst goes
//! on. Throughput is the environments that became ready (first exec accepted) divided by the
//! wall time of the whole burst. Before and after each burst the system's own memory is read
//! from `/proc`; after it everything is deleted (not timed).
//!
//! Idle memory: environments are created by a few clients (not timed, refusals retried) up to
//! each level; after a pause the system's own memory (airlock's server; podman's service and
//! its conmon processes), the sandboxes' memory cgroups and the host's `MemAvailable` are
//! compared with what they were before the first environment. Before that baseline the page
//! cache is dropped: memory cgroups of sandboxes deleted earlier linger until the pages charged
//! to them go, and their release during the measurement would read as memory coming back.
//!
//! Each part gets a fresh server (or podman service), so one part's allocations do not hide
//! or inflate another's; idle memory comes first, before any burst has deleted hundreds of
//! sandboxes. With `--warm-pool N` airlock's bursts run again against a pool of the default
//! shape (the only shape a pool holds), with and without the default rate limit.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::airlock::{Airlock, Server, UNLIMITED_RATE};
use crate::host;
use crate::http::{Client, Response};
use crate::memory::{self, HostMemory, ProcessMemory};
use crate::podman::{self, Podman, Service, UsrMode};
use crate::scenario::System;
use crate::stats::{Report, Samples, Summary};

/// Every environment of the load scenario: 32 MiB of memory, a 64 MiB writable layer, no
/// network.
const MEMORY_MIB: u64 = 32;
const DISK_MIB: u64 = 64;

/// Live environments the airlock server may hold in these runs (its default is 2,000).
const CAPACITY: usize = 5000;

/// Clients creating the idle environments and deleting after each part (not timed): as many
/// as airlock admits at once by default.
const BATCH_CLIENTS: usize = 8;

/// How long the creates of one idle level may take before the benchmark stops at that level.
const IDLE_TIME_BUDGET: Duration = Duration::from_secs(30 * 60);

/// Failed creates in a row (other than 429 and 503) after which the idle creates stop: a limit
/// of the system or the host was hit.
const IDLE_MAX_FAILURES_IN_A_ROW: usize = 20;

/// A pause before each burst, so the previous cleanup's deferred work does not run inside it.
const PAUSE_BEFORE_BURST: Duration = Duration::from_secs(5);

/// `creates` rounds of create + first exec over `clients` concurrent clients, each client
/// taking the next round when its last is done (a closed loop); or, with
/// `arrivals_per_second`, rounds that start at that rate whatever the answers, each on a
/// connection of its own (an open loop: `clients` is then `creates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    pub creates: usize,
    pub clients: usize,
    pub arrivals_per_second: Option<usize>,
}

impl Burst {
    fn describe(&self) -> String {
        match self.arrivals_per_second {
            Some(rate) => format!("{} arriving at {rate}/s", self.creates),
            None => format!("{}/{} clients", self.creates, self.clients),
        }
    }
}

impl std::str::FromStr for Burst {
    type Err = String;

    /// `CREATESxCLIENTS`, e.g. `500x50`, or `CREATES@RATE`, e.g. `500@300` (open loop).
    fn from_str(text: &str) -> Result<Self, String> {
        let (creates, clients, paced) = match (text.split_once('x'), text.split_once('@')) {
            (Some((creates, clients)), None) => (creates, clients, false),
            (None, Some((creates, rate))) => (creates, rate, true),
            _ => {
                return Err(format!(
                    "{text:?} is not CREATESxCLIENTS (e.g. 500x50) or CREATES@RATE (e.g. 500@300)"
                ));
            }
        };
        let parse = |value: &str| {
            value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{value:?} in {text:?} is not a positive number"))
        };
        let creates = parse(creates)?;
        let clients = parse(clients)?;
        Ok(if paced {
            Self {
                creates,
                clients: creates,
                arrivals_per_second: Some(clients),
            }
        } else {
            Self {
                creates,
                clients,
                arrivals_per_second: None,
            }
        })
    }
}

/// What the load scenario runs.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Bursts with the per-principal rate limit out of the way (airlock and podman).
    pub bursts: Vec<Burst>,
    /// Bursts against airlock's default rate limit, whose 429s are the point (cold, and again
    /// with the warm pool when there is one).
    pub rate_limited_bursts: Vec<Burst>,
    /// Bursts against `airlock server --warm-pool N`, when the flag is given.
    pub warm_pool: Option<usize>,
    pub warm_pool_bursts: Vec<Burst>,
    /// Live idle environments at which memory is measured, in increasing order.
    pub idle_counts: Vec<usize>,
    /// The pause before memory is read (after creates, after cleanup).
    pub settle: Duration,
    /// How long one API call may take before it counts as a timeout.
    pub request_timeout: Duration,
    /// Untimed create, exec, delete rounds on each fresh server before it is measured.
    pub warmup: usize,
    /// Drop the page cache before the idle baseline (see [`memory::drop_page_cache`]).
    pub drop_caches: bool,
}

/// Why a call did not succeed.
#[derive(Debug, Clone)]
enum Failure {
    /// The server answered with this status; the reason is its problem `detail` (or the
    /// start of the body).
    Status(u16, String),
    /// No answer within the request timeout.
    Timeout,
    /// The connection failed, or the answer made no sense.
    Error(String),
}

impl Failure {
    fn from_response(response: &Response) -> Self {
        let reason = response
            .json()
            .ok()
            .and_then(|body| {
                ["detail", "message", "cause"]
                    .iter()
                    .find_map(|key| body[*key].as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&response.body).trim().to_owned());
        Failure::Status(response.status, shorten(&reason))
    }

    fn from_error(error: anyhow::Error) -> Self {
        Failure::Error(shorten(&format!("{error:#}")))
    }

    /// The column it is counted in: the status, `timeout` or `error`.
    fn key(&self) -> String {
        match self {
            Failure::Status(status, _) => status.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Error(_) => "error".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Status(status, reason) => format!("{status}: {reason}"),
            Failure::Timeout => "timeout".into(),
            Failure::Error(error) => format!("error: {error}"),
        }
    }

    /// Worth asking again after a pause: the server said so, or did not answer in time.
    fn retryable(&self) -> bool {
        matches!(self, Failure::Status(429 | 503, _) | Failure::Timeout)
    }
}

/// The first line of a reason, at most 120 characters, with ids and numbers left in (they
/// are few in these messages).
fn shorten(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
}

/// A call, or [`Failure::Timeout`] if it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// A system under load, driven through its API, with the processes and cgroups its memory is
/// read from.
trait Target {
    fn name(&self) -> &str;

    /// A new API client (its own connection).
    fn client(&self) -> Client;

    /// Creates and starts one environment of the load shape; its id once it runs.
    async fn create(&self, client: &mut Client) -> Result<String, Failure>;

    /// Runs `true` in it and waits for its exit code (which must be 0).
    async fn first_exec(&self, client: &mut Client, id: &str) -> Result<(), Failure>;

    /// Deletes it; one already gone counts as deleted.
    async fn delete(&self, client: &mut Client, id: &str) -> Result<(), Failure>;

    /// Ids of live environments (possibly only the first page of them).
    async fn list(&self, client: &mut Client) -> Result<Vec<String>, Failure>;

    /// The server's (or service's) process.
    fn main_pid(&self) -> Option<i32>;

    /// Long-lived helper processes outside the sandboxes (podman's conmon).
    fn helper_pids(&self) -> Vec<i32>;

    /// The memory cgroup (v1, relative) above every sandbox of the system.
    fn sandbox_cgroup(&self) -> String;

    /// Ends helpers that outlive their sandboxes once every sandbox is deleted; how many.
    fn after_purge(&self) -> usize;
}

/// airlock through its HTTP API.
struct AirlockTarget<'a> {
    server: &'a Server,
    api: Airlock,
    /// The create request's body.
    body: Value,
}

impl<'a> AirlockTarget<'a> {
    /// Creates environments of the load shape: 32 MiB, a 64 MiB writable layer, no network.
    fn new(server: &'a Server) -> Self {
        Self {
            server,
            api: server.api(),
            body: json!({
                "resources": { "memory_mib": MEMORY_MIB, "disk_mib": DISK_MIB },
                "network": "none",
            }),
        }
    }

    /// Creates environments of the default shape (`{}`), the only one a warm pool holds.
    fn default_shape(server: &'a Server) -> Self {
        Self {
            body: json!({}),
            ..Self::new(server)
        }
    }
}

impl Target for AirlockTarget<'_> {
    fn name(&self) -> &str {
        "airlock"
    }

    fn client(&self) -> Client {
        self.api.client()
    }

    async fn create(&self, client: &mut Client) -> Result<String, Failure> {
        let response = client
            .request("POST", "/v1/environments", Some(&self.body))
            .await
            .map_err(Failure::from_error)?;
        if response.status != 201 {
            return Err(Failure::from_response(&response));
        }
        let created = response.json().map_err(Failure::from_error)?;
        if created["state"] != "running" {
            return Err(Failure::Error(format!(
                "a new environment is {}, not running",
                created["state"]
            )));
        }
        created["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Error("the created environment has no id".into()))
    }

    async fn first_exec(&self, client: &mut Client, id: &str) -> Result<(), Failure> {
        let response = client
            .request(
                "POST",
                &format!("/v1/environments/{id}/exec"),
                Some(&json!({ "command": ["true"] })),
            )
            .await
            .map_err(Failure::from_error)?;
        if response.status != 200 {
            return Err(Failure::from_response(&response));
        }
        let body = response.json().map_err(Failure::from_error)?;
        if body["exit_code"] != 0 {
            return Err(Failure::Error(format!(
                "`true` exited with {}",
                body["exit_code"]
            )));
        }
        Ok(())
    }

    async fn delete(&self, client: &mut Client, id: &str) -> Result<(), Failure> {
        let response = client
            .request("DELETE", &format!("/v1/environments/{id}"), None)
            .await
            .map_err(Failure::from_error)?;
        match response.status {
            204 | 404 => Ok(()),
            _ => Err(Failure::from_response(&response)),
        }
    }

    async fn list(&self, client: &mut Client) -> Result<Vec<String>, Failure> {
        let response = client
            .request("GET", "/v1/environments?limit=200", None)
            .await
            .map_err(Failure::from_error)?;
        if response.status != 200 {
            return Err(Failure::from_response(&response));
        }
        let page = response.json().map_err(Failure::from_error)?;
        Ok(ids(&page["items"], "id"))
    }

    fn main_pid(&self) -> Option<i32> {
        self.server.pid()
    }

    fn helper_pids(&self) -> Vec<i32> {
        Vec::new()
    }

    fn sandbox_cgroup(&self) -> String {
        self.server.cgroup_parent()
    }

    fn after_purge(&self) -> usize {
        0
    }
}

/// podman through its libpod REST API: create + start, then exec as `podman exec` does it.
struct PodmanTarget<'a> {
    service: &'a Service,
    api: Podman,
}

impl PodmanTarget<'_> {
    /// podman's conmon processes of this service: one per container, and one per exec that
    /// lingers for 5 minutes after it (`--exit-delay 300`).
    fn conmons(&self) -> Vec<i32> {
        let needle = self.service.storage_dir().to_string_lossy().into_owned();
        host::processes_mentioning(&needle)
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "conmon")
            })
            .collect()
    }
}

impl Target for PodmanTarget<'_> {
    fn name(&self) -> &str {
        System::name(&self.api)
    }

    fn client(&self) -> Client {
        self.api.client()
    }

    async fn create(&self, client: &mut Client) -> Result<String, Failure> {
        let api = podman::API;
        let response = client
            .request(
                "POST",
                &format!("{api}/containers/create"),
                Some(&self.api.spec()),
            )
            .await
            .map_err(Failure::from_error)?;
        if response.status != 201 {
            return Err(Failure::from_response(&response));
        }
        let created = response.json().map_err(Failure::from_error)?;
        let id = created["Id"]
            .as_str()
            .ok_or_else(|| Failure::Error("the created container has no Id".into()))?
            .to_owned();
        let response = client
            .request("POST", &format!("{api}/containers/{id}/start"), None)
            .await
            .map_err(Failure::from_error)?;
        if response.status != 204 {
            return Err(Failure::from_response(&response));
        }
        Ok(id)
    }

    async fn first_exec(&self, client: &mut Client, id: &str) -> Result<(), Failure> {
        let api = podman::API;
        let response = client
            .request(
                "POST",
                &format!("{api}/containers/{id}/exec"),
                Some(&json!({ "Cmd": ["true"], "AttachStdout": true, "AttachStderr": true })),
            )
            .await
            .map_err(Failure::from_error)?;
        if response.status != 201 {
            return Err(Failure::from_response(&response));
        }
        let session = response.json().map_err(Failure::from_error)?["Id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Error("the exec session has no Id".into()))?;
        let response = client
            .request(
                "POST",
                &format!("{api}/exec/{session}/start"),
                Some(&json!({ "Detach": false, "Tty": false })),
            )
            .await
            .map_err(Failure::from_error)?;
        if response.status != 200 {
            return Err(Failure::from_response(&response));
        }
        let response = client
            .request("GET", &format!("{api}/exec/{session}/json"), None)
            .await
            .map_err(Failure::from_error)?;
        if response.status != 200 {
            return Err(Failure::from_response(&response));
        }
        let inspected = response.json().map_err(Failure::from_error)?;
        if inspected["Running"] != false || inspected["ExitCode"] != 0 {
            return Err(Failure::Error(format!(
                "`true` did not finish with 0: running {}, exit code {}",
                inspected["Running"], inspected["ExitCode"]
            )));
        }
        Ok(())
    }

    async fn delete(&self, client: &mut Client, id: &str) -> Result<(), Failure> {
        let response = client
            .request(
                "DELETE",
                &format!("{}/containers/{id}?force=true&timeout=0", podman::API),
                None,
            )
            .await
            .map_err(Failure::from_error)?;
        match response.status {
            200 => {}
            404 => return Ok(()),
            _ => return Err(Failure::from_response(&response)),
        }
        let reports = response.json().map_err(Failure::from_error)?;
        match reports
            .as_array()
            .and_then(|reports| reports.iter().find_map(|r| r["Err"].as_str()))
            .filter(|error| !error.is_empty())
        {
            Some(error) => Err(Failure::Error(shorten(error))),
            None => Ok(()),
        }
    }

    async fn list(&self, client: &mut Client) -> Result<Vec<String>, Failure> {
        let response = client
            .request(
                "GET",
                &format!("{}/containers/json?all=true", podman::API),
                None,
            )
            .await
            .map_err(Failure::from_error)?;
        if response.status != 200 {
            return Err(Failure::from_response(&response));
        }
        Ok(ids(&response.json().map_err(Failure::from_error)?, "Id"))
    }

    fn main_pid(&self) -> Option<i32> {
        self.service.pid()
    }

    fn helper_pids(&self) -> Vec<i32> {
        self.conmons()
    }

    fn sandbox_cgroup(&self) -> String {
        "libpod_parent".into()
    }

    fn after_purge(&self) -> usize {
        // With no container left, every conmon is an exec's, waiting out its exit delay.
        let lingering = self.conmons();
        let left = host::kill_all(&lingering, Duration::from_secs(10));
        lingering.len() - left.len()
    }
}

/// The string `field` of each object of a JSON array.
fn ids(items: &Value, field: &str) -> Vec<String> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The memory of a system and of the host at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    /// The server (airlock) or the service (podman).
    main: ProcessMemory,
    helpers: usize,
    helper_memory: ProcessMemory,
    /// The sandboxes' memory cgroup: (usage, kernel part), KiB.
    sandbox_cgroup_kib: Option<(u64, u64)>,
    host: HostMemory,
    host_processes: usize,
    /// Memory cgroups: (counted by the kernel, visible); the difference is dying ones.
    memory_cgroups: (u64, u64),
    load_average: [f64; 3],
}

impl Footprint {
    fn of(target: &impl Target) -> Self {
        let (helpers, helper_memory) = ProcessMemory::sum(&target.helper_pids());
        Self {
            main: target
                .main_pid()
                .and_then(ProcessMemory::of)
                .unwrap_or_default(),
            helpers,
            helper_memory,
            sandbox_cgroup_kib: memory::cgroup_usage(&target.sandbox_cgroup()),
            host: HostMemory::now(),
            host_processes: memory::process_count(),
            memory_cgroups: memory::memory_cgroups(),
            load_average: memory::load_average(),
        }
    }

    /// Deleted memory cgroups the kernel still keeps.
    fn dying_memory_cgroups(&self) -> u64 {
        self.memory_cgroups.0.saturating_sub(self.memory_cgroups.1)
    }

    /// The system's own resident memory: main process plus helpers.
    fn own_rss_kib(&self) -> u64 {
        self.main.rss_kib + self.helper_memory.rss_kib
    }

    fn own_pss_kib(&self) -> u64 {
        self.main.pss_kib + self.helper_memory.pss_kib
    }

    fn to_json(self) -> Value {
        json!({
            "main_rss_kib": self.main.rss_kib,
            "main_pss_kib": self.main.pss_kib,
            "helper_processes": self.helpers,
            "helpers_rss_kib": self.helper_memory.rss_kib,
            "helpers_pss_kib": self.helper_memory.pss_kib,
            "sandbox_cgroup_usage_kib": self.sandbox_cgroup_kib.map(|(usage, _)| usage),
            "sandbox_cgroup_kmem_kib": self.sandbox_cgroup_kib.map(|(_, kmem)| kmem),
            "host": self.host.to_json(),
            "host_processes": self.host_processes,
            "memory_cgroups_counted": self.memory_cgroups.0,
            "memory_cgroups_visible": self.memory_cgroups.1,
            "dying_memory_cgroups": self.dying_memory_cgroups(),
            "load_average": self.load_average,
        })
    }
}

/// What one client saw during a burst.
#[derive(Debug, Default)]
struct Tally {
    /// Create outcomes by column: "201", "429", "503", other statuses, "timeout", "error".
    creates: BTreeMap<String, usize>,
    /// First execs that failed after a 201, by column.
    exec_failures: BTreeMap<String, usize>,
    /// Every refusal and failure with its reason, counted.
    reasons: BTreeMap<String, usize>,
    /// Created environments, whether or not their first exec worked.
    created: usize,
    /// create->ready of the environments whose first exec worked.
    ready: Vec<Duration>,
    /// When each of those became ready, from the start of the burst.
    ready_at: Vec<Duration>,
    /// The create call(s) alone, of the 201s.
    create_calls: Vec<Duration>,
    /// Time until a create was refused or failed.
    refused: Vec<Duration>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (key, count) in other.creates {
            *self.creates.entry(key).or_default() += count;
        }
        for (key, count) in other.exec_failures {
            *self.exec_failures.entry(key).or_default() += count;
        }
        for (key, count) in other.reasons {
            *self.reasons.entry(key).or_default() += count;
        }
        self.created += other.created;
        self.ready.extend(other.ready);
        self.ready_at.extend(other.ready_at);
        self.create_calls.extend(other.create_calls);
        self.refused.extend(other.refused);
    }

    fn count(&self, key: &str) -> usize {
        self.creates.get(key).copied().unwrap_or(0)
    }
}

/// One burst's results.
#[derive(Debug)]
struct BurstResult {
    system: String,
    /// How the server ran, e.g. "rate limit 100000/s:100000".
    setup: String,
    burst: Burst,
    elapsed: Duration,
    host_busy: f64,
    tally: Tally,
    before: Footprint,
    after: Footprint,
    cleaned: Footprint,
    cleanup: Duration,
    deleted: usize,
    /// Helper processes ended after the cleanup (podman's lingering exec conmons).
    lingering_helpers: usize,
}

impl BurstResult {
    fn ready_per_second(&self) -> f64 {
        self.tally.ready.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn label(&self) -> String {
        format!("burst {}, {}", self.burst.describe(), self.setup)
    }

    fn to_json(&self) -> Value {
        let ms = |values: &[Duration]| {
            values
                .iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect::<Vec<_>>()
        };
        let summary = |values: &[Duration]| {
            Summary::of(values).map(|s| {
                json!({ "n": s.count, "min": s.min, "p50": s.p50, "p90": s.p90, "p99": s.p99,
                        "max": s.max, "mean": s.mean })
            })
        };
        json!({
            "system": self.system,
            "setup": self.setup,
            "creates": self.burst.creates,
            "clients": self.burst.clients,
            "seconds": self.elapsed.as_secs_f64(),
            "ready": self.tally.ready.len(),
            "ready_per_second": self.ready_per_second(),
            "created": self.tally.created,
            "create_outcomes": self.tally.creates,
            "first_exec_failures": self.tally.exec_failures,
            "reasons": self.tally.reasons,
            "host_busy_percent": self.host_busy,
            "create_to_ready_ms": summary(&self.tally.ready),
            "create_call_ms": summary(&self.tally.create_calls),
            "refused_ms": summary(&self.tally.refused),
            "samples": {
                "create_to_ready_ms": ms(&self.tally.ready),
                "ready_at_ms": ms(&self.tally.ready_at),
                "create_call_ms": ms(&self.tally.create_calls),
                "refused_ms": ms(&self.tally.refused),
            },
            "memory_before": self.before.to_json(),
            "memory_after": self.after.to_json(),
            "memory_after_cleanup": self.cleaned.to_json(),
            "cleanup_seconds": self.cleanup.as_secs_f64(),
            "deleted": self.deleted,
            "lingering_helpers_ended": self.lingering_helpers,
        })
    }
}

/// Memory at one level of live idle environments.
#[derive(Debug)]
struct IdleResult {
    system: String,
    wanted: usize,
    live: usize,
    /// How long the creates up to this level took (untimed in the scenario's sense).
    create_time: Duration,
    /// Creates refused or failed on the way, by reason (429s and 503s were retried).
    failures: BTreeMap<String, usize>,
    /// Why the creates stopped short of `wanted`.
    stopped: Option<String>,
    baseline: Footprint,
    now: Footprint,
}

impl IdleResult {
    fn per_environment_kib(&self, before: u64, after: u64) -> f64 {
        (after as f64 - before as f64) / self.live.max(1) as f64
    }

    fn to_json(&self) -> Value {
        let per = |before: u64, after: u64| self.per_environment_kib(before, after);
        let (base, now) = (&self.baseline, &self.now);
        let (base_cgroup, now_cgroup) = (
            base.sandbox_cgroup_kib.unwrap_or((0, 0)),
            now.sandbox_cgroup_kib.unwrap_or((0, 0)),
        );
        let processes =
            (now.host_processes as f64 - base.host_processes as f64) / self.live.max(1) as f64;
        json!({
            "system": self.system,
            "wanted": self.wanted,
            "live": self.live,
            "create_seconds": self.create_time.as_secs_f64(),
            "failures": self.failures,
            "stopped": self.stopped,
            "per_environment_kib": {
                "main_rss": per(base.main.rss_kib, now.main.rss_kib),
                "own_rss": per(base.own_rss_kib(), now.own_rss_kib()),
                "own_pss": per(base.own_pss_kib(), now.own_pss_kib()),
                "sandbox_cgroup_usage": per(base_cgroup.0, now_cgroup.0),
                "sandbox_cgroup_kmem": per(base_cgroup.1, now_cgroup.1),
                "host_mem_available_drop": per(now.host.available_kib, base.host.available_kib),
                "host_slab_unreclaimable":
                    per(base.host.slab_unreclaimable_kib, now.host.slab_unreclaimable_kib),
                "host_kernel_stack": per(base.host.kernel_stack_kib, now.host.kernel_stack_kib),
                "host_page_tables": per(base.host.page_tables_kib, now.host.page_tables_kib),
            },
            "host_processes_per_environment": processes,
            "baseline": base.to_json(),
            "now": now.to_json(),
        })
    }
}

/// The host after the idle environments were deleted, against the baseline before them.
#[derive(Debug)]
struct IdleCleanup {
    system: String,
    deleted: usize,
    seconds: f64,
    baseline: Footprint,
    after: Footprint,
}

impl IdleCleanup {
    fn describe(&self) -> String {
        let mib = |before: u64, after: u64| (after as f64 - before as f64) / 1024.0;
        let (base, after) = (&self.baseline.host, &self.after.host);
        format!(
            "{}: {} s after deleting {} idle environments ({:.0} s): MemAvailable {:+.1} MiB, \
             SUnreclaim {:+.1} MiB, Percpu {:+.1} MiB against the baseline; dying memory \
             cgroups {} (baseline {})",
            self.system,
            SETTLE_AFTER_DELETE.as_secs(),
            self.deleted,
            self.seconds,
            mib(base.available_kib, after.available_kib),
            mib(base.slab_unreclaimable_kib, after.slab_unreclaimable_kib),
            mib(base.percpu_kib, after.percpu_kib),
            self.after.dying_memory_cgroups(),
            self.baseline.dying_memory_cgroups()
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "system": self.system,
            "deleted": self.deleted,
            "delete_seconds": self.seconds,
            "settle_seconds": SETTLE_AFTER_DELETE.as_secs(),
            "baseline": self.baseline.to_json(),
            "after": self.after.to_json(),
        })
    }
}

/// How long after deleting the idle environments the host is read again.
const SETTLE_AFTER_DELETE: Duration = Duration::from_secs(10);

/// Everything the load scenario measured, printed after the main table and written to the
/// JSON under `load`.
#[derive(Debug, Default)]
pub struct LoadReport {
    bursts: Vec<BurstResult>,
    idle: Vec<IdleResult>,
    idle_cleanup: Vec<IdleCleanup>,
    /// How each server or service ran, and what else was going on.
    pub context: Vec<String>,
}

impl LoadReport {
    pub fn is_empty(&self) -> bool {
        self.bursts.is_empty() && self.idle.is_empty()
    }

    /// The two printed tables: bursts, then memory per idle environment.
    pub fn table(&self) -> String {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut out = String::new();
        if !self.bursts.is_empty() {
            let width = self
                .bursts
                .iter()
                .map(|b| b.system.len() + b.label().len() + 2)
                .max()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<width$}  {:>5}  {:>5}  {:>5}  {:>5}  {:>5}  {:>4}  {:>5}  {:>7}  {:>7}  {:>8}  {:>8}  {:>22}  {:>14}  {:>4}",
                "load: system, burst",
                "ready",
                "201",
                "429",
                "503",
                "other",
                "t/o",
                "exec!",
                "wall s",
                "ready/s",
                "p50 ms",
                "p99 ms",
                "RSS MiB before/after",
                "helpers after",
                "CPU"
            );
            for b in &self.bursts {
                let t = &b.tally;
                let other: usize = t
                    .creates
                    .iter()
                    .filter(|(key, _)| !["201", "429", "503", "timeout"].contains(&key.as_str()))
                    .map(|(_, count)| count)
                    .sum();
                let summary = Summary::of(&t.ready);
                let helpers = if b.after.helpers == 0 {
                    "-".to_owned()
                } else {
                    format!(
                        "{} ({:.0} MiB)",
                        b.after.helpers,
                        mib(b.after.helper_memory.rss_kib)
                    )
                };
                let _ = writeln!(
                    out,
                    "{:<width$}  {:>5}  {:>5}  {:>5}  {:>5}  {:>5}  {:>4}  {:>5}  {:>7.2}  {:>7.1}  {:>8}  {:>8}  {:>22}  {:>14}  {:>3.0}%",
                    format!("{}  {}", b.system, b.label()),
                    t.ready.len(),
                    t.count("201"),
                    t.count("429"),
                    t.count("503"),
                    other,
                    t.count("timeout"),
                    t.exec_failures.values().sum::<usize>(),
                    b.elapsed.as_secs_f64(),
                    b.ready_per_second(),
                    summary.map_or("-".into(), |s| format!("{:.1}", s.p50)),
                    summary.map_or("-".into(), |s| format!("{:.1}", s.p99)),
                    format!(
                        "{:.1} / {:.1}",
                        mib(b.before.main.rss_kib),
                        mib(b.after.main.rss_kib)
                    ),
                    helpers,
                    b.host_busy
                );
            }
            let reasons: Vec<String> = self
                .bursts
                .iter()
                .flat_map(|b| {
                    b.tally.reasons.iter().map(move |(reason, count)| {
                        format!("  {}  {}: {count}x {reason}", b.system, b.label())
                    })
                })
                .collect();
            if !reasons.is_empty() {
                let _ = writeln!(out, "refusals and failures:");
                for line in reasons {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        if !self.idle.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "{:<16}  {:>5}  {:>21}  {:>21}  {:>13}  {:>17}  {:>19}  {:>15}  {:>11}  {:>9}",
                "idle: system",
                "live",
                "main RSS MiB base/now",
                "helpers (n) RSS MiB",
                "own KiB/env",
                "own PSS KiB/env",
                "cgroups KiB/env",
                "MemAvail KiB/env",
                "slab KiB/env",
                "procs/env"
            );
            for i in &self.idle {
                let per = |before: u64, after: u64| i.per_environment_kib(before, after);
                let cgroup = |f: &Footprint| f.sandbox_cgroup_kib.unwrap_or((0, 0));
                let _ = writeln!(
                    out,
                    "{:<16}  {:>5}  {:>21}  {:>21}  {:>13.0}  {:>17.0}  {:>19}  {:>15.0}  {:>11.0}  {:>9.2}",
                    i.system,
                    i.live,
                    format!(
                        "{:.1} / {:.1}",
                        mib(i.baseline.main.rss_kib),
                        mib(i.now.main.rss_kib)
                    ),
                    format!(
                        "({}) {:.1}",
                        i.now.helpers,
                        mib(i.now.helper_memory.rss_kib)
                    ),
                    per(i.baseline.own_rss_kib(), i.now.own_rss_kib()),
                    per(i.baseline.own_pss_kib(), i.now.own_pss_kib()),
                    format!(
                        "{:.0} (kmem {:.0})",
                        per(cgroup(&i.baseline).0, cgroup(&i.now).0),
                        per(cgroup(&i.baseline).1, cgroup(&i.now).1)
                    ),
                    per(i.now.host.available_kib, i.baseline.host.available_kib),
                    per(
                        i.baseline.host.slab_unreclaimable_kib,
                        i.now.host.slab_unreclaimable_kib
                    ),
                    (i.now.host_processes as f64 - i.baseline.host_processes as f64)
                        / i.live.max(1) as f64
                );
                if let Some(reason) = &i.stopped {
                    let _ = writeln!(
                        out,
                        "  {}: stopped at {} of {}: {reason}",
                        i.system, i.live, i.wanted
                    );
                }
                for (reason, count) in &i.failures {
                    let _ = writeln!(out, "  {}: {count}x {reason}", i.system);
                }
            }
            for cleanup in &self.idle_cleanup {
                let _ = writeln!(out, "  {}", cleanup.describe());
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "environment": { "memory_mib": MEMORY_MIB, "disk_mib": DISK_MIB, "network": "none" },
            "context": self.context,
            "bursts": self.bursts.iter().map(BurstResult::to_json).collect::<Vec<_>>(),
            "idle": self.idle.iter().map(IdleResult::to_json).collect::<Vec<_>>(),
            "idle_cleanup": self.idle_cleanup.iter().map(IdleCleanup::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Untimed create, exec, delete rounds.
async fn warm_up(target: &impl Target, rounds: usize, timeout: Duration) -> Result<()> {
    let mut client = target.client();
    for round in 0..rounds {
        let id = within(timeout, target.create(&mut client))
            .await
            .map_err(|f| anyhow::anyhow!("warm-up create #{round}: {}", f.describe()))?;
        within(timeout, target.first_exec(&mut client, &id))
            .await
            .map_err(|f| anyhow::anyhow!("warm-up exec #{round}: {}", f.describe()))?;
        within(timeout, target.delete(&mut client, &id))
            .await
            .map_err(|f| anyhow::anyhow!("warm-up delete #{round}: {}", f.describe()))?;
    }
    Ok(())
}

/// One burst: `burst.creates` rounds of create + first exec over `burst.clients` clients.
async fn run_burst(target: &impl Target, burst: Burst, timeout: Duration) -> Tally {
    if let Some(rate) = burst.arrivals_per_second {
        return run_paced_burst(target, burst.creates, rate, timeout).await;
    }
    let next = Cell::new(0usize);
    let start = Instant::now();
    let workers = (0..burst.clients).map(|_| {
        let next = &next;
        async move {
            let mut client = target.client();
            let mut tally = Tally::default();
            loop {
                let index = next.get();
                if index >= burst.creates {
                    return tally;
                }
                next.set(index + 1);
                if round(target, &mut client, start, timeout, &mut tally).await {
                    client = target.client();
                }
            }
        }
    });
    let mut total = Tally::default();
    for tally in join_all(workers).await {
        total.merge(tally);
    }
    total
}

/// One round: a create, then its first exec, counted in `tally` (times from `start` for
/// `ready_at`). True when a call timed out: the connection is then unusable.
async fn round(
    target: &impl Target,
    client: &mut Client,
    start: Instant,
    timeout: Duration,
    tally: &mut Tally,
) -> bool {
    let began = Instant::now();
    let id = match within(timeout, target.create(client)).await {
        Ok(id) => id,
        Err(failure) => {
            tally.refused.push(began.elapsed());
            *tally.creates.entry(failure.key()).or_default() += 1;
            *tally
                .reasons
                .entry(format!("create {}", failure.describe()))
                .or_default() += 1;
            return matches!(failure, Failure::Timeout);
        }
    };
    tally.created += 1;
    tally.create_calls.push(began.elapsed());
    *tally.creates.entry("201".into()).or_default() += 1;
    match within(timeout, target.first_exec(client, &id)).await {
        Ok(()) => {
            tally.ready.push(began.elapsed());
            tally.ready_at.push(start.elapsed());
            false
        }
        Err(failure) => {
            *tally.exec_failures.entry(failure.key()).or_default() += 1;
            *tally
                .reasons
                .entry(format!("first exec {}", failure.describe()))
                .or_default() += 1;
            matches!(failure, Failure::Timeout)
        }
    }
}

/// An open-loop burst: round `i` starts at `i / rate` seconds whatever became of the others,
/// on a connection of its own, so latency is not bounded by the number of clients.
async fn run_paced_burst(
    target: &impl Target,
    creates: usize,
    rate: usize,
    timeout: Duration,
) -> Tally {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let rounds = (0..creates).map(|index| async move {
        tokio::time::sleep_until((start + interval * index as u32).into()).await;
        let mut tally = Tally::default();
        round(target, &mut target.client(), start, timeout, &mut tally).await;
        tally
    });
    let mut total = Tally::default();
    for tally in join_all(rounds).await {
        total.merge(tally);
    }
    total
}

/// Deletes every environment of the target (not timed), retrying refusals; returns how many.
async fn purge(target: &impl Target, timeout: Duration) -> Result<usize> {
    let mut client = target.client();
    let mut deleted = 0;
    for _ in 0..200 {
        let mut attempts = 0;
        let listed = loop {
            match within(timeout, target.list(&mut client)).await {
                Ok(ids) => break ids,
                Err(failure) if failure.retryable() && attempts < 60 => {
                    attempts += 1;
                    client = target.client();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(failure) => bail!(
                    "{}: listing environments to delete: {}",
                    target.name(),
                    failure.describe()
                ),
            }
        };
        if listed.is_empty() {
            return Ok(deleted);
        }
        let next = Cell::new(0usize);
        let workers = (0..BATCH_CLIENTS.min(listed.len())).map(|_| {
            let (next, listed) = (&next, &listed);
            async move {
                let mut client = target.client();
                let mut deleted = 0;
                loop {
                    let index = next.get();
                    let Some(id) = listed.get(index) else {
                        return Ok::<_, anyhow::Error>(deleted);
                    };
                    next.set(index + 1);
                    let mut attempts = 0;
                    loop {
                        match within(timeout, target.delete(&mut client, id)).await {
                            Ok(()) => break,
                            Err(failure) if failure.retryable() && attempts < 60 => {
                                attempts += 1;
                                client = target.client();
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Err(failure) => bail!("deleting {id}: {}", failure.describe()),
                        }
                    }
                    deleted += 1;
                }
            }
        });
        for outcome in join_all(workers).await {
            deleted += outcome.with_context(|| format!("{}: cleanup", target.name()))?;
        }
    }
    bail!(
        "{}: environments keep appearing while deleting them",
        target.name()
    )
}

/// The bursts, each with its cleanup and the memory before, after and after cleanup.
async fn bursts(
    target: &impl Target,
    bursts: &[Burst],
    setup: &str,
    plan: &LoadPlan,
    load: &mut LoadReport,
    report: &mut Report,
) -> Result<()> {
    for burst in bursts {
        tokio::time::sleep(PAUSE_BEFORE_BURST).await;
        eprintln!(
            "[{}] load: burst of {} ({setup})",
            target.name(),
            burst.describe()
        );
        let before = Footprint::of(target);
        let cpu = host::cpu_snapshot();
        let started = Instant::now();
        let tally = run_burst(target, *burst, plan.request_timeout).await;
        let elapsed = started.elapsed();
        let host_busy = host::busy_percent(cpu, host::cpu_snapshot());
        let after = Footprint::of(target);

        let cleanup_started = Instant::now();
        let deleted = purge(target, plan.request_timeout).await?;
        let lingering_helpers = target.after_purge();
        let cleanup = cleanup_started.elapsed();
        tokio::time::sleep(plan.settle).await;
        let cleaned = Footprint::of(target);

        let result = BurstResult {
            system: target.name().to_owned(),
            setup: setup.to_owned(),
            burst: *burst,
            elapsed,
            host_busy,
            tally,
            before,
            after,
            cleaned,
            cleanup,
            deleted,
            lingering_helpers,
        };
        eprintln!(
            "[{}] load: {} ready of {} in {:.2} s = {:.1}/s; creates {:?}; first exec failures {:?}",
            result.system,
            result.tally.ready.len(),
            burst.creates,
            elapsed.as_secs_f64(),
            result.ready_per_second(),
            result.tally.creates,
            result.tally.exec_failures
        );
        let label = result.label();
        let mut samples = Samples::new(format!("create->ready ({label})"));
        samples.values = result.tally.ready.clone();
        report.add(&result.system, samples);
        if !result.tally.refused.is_empty() {
            let mut samples = Samples::new(format!("create refused ({label})"));
            samples.values = result.tally.refused.clone();
            report.add(&result.system, samples);
        }
        load.bursts.push(result);
    }
    Ok(())
}

/// Creates `wanted` environments with a few clients, retrying 429 and 503; stops early after
/// too many other failures in a row or when the time budget is spent. Returns the ids made,
/// the failures by reason, and why it stopped short (if it did).
async fn fill(
    target: &impl Target,
    wanted: usize,
    timeout: Duration,
) -> (Vec<String>, BTreeMap<String, usize>, Option<String>) {
    let started = Instant::now();
    let claimed = Cell::new(0usize);
    let failures_in_a_row = Cell::new(0usize);
    let stop: Cell<Option<&'static str>> = Cell::new(None);
    let workers = (0..BATCH_CLIENTS.min(wanted.max(1))).map(|_| {
        let (claimed, failures_in_a_row, stop) = (&claimed, &failures_in_a_row, &stop);
        async move {
            let mut client = target.client();
            let mut made = Vec::new();
            let mut failures: BTreeMap<String, usize> = BTreeMap::new();
            while claimed.get() < wanted && stop.get().is_none() {
                claimed.set(claimed.get() + 1);
                loop {
                    if started.elapsed() > IDLE_TIME_BUDGET {
                        stop.set(Some("the time budget for these creates was spent"));
                    }
                    if stop.get().is_some() {
                        break;
                    }
                    match within(timeout, target.create(&mut client)).await {
                        Ok(id) => {
                            made.push(id);
                            failures_in_a_row.set(0);
                            break;
                        }
                        Err(failure) => {
                            *failures.entry(failure.describe()).or_default() += 1;
                            if matches!(failure, Failure::Timeout) {
                                client = target.client();
                            }
                            if failure.retryable() {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                            failures_in_a_row.set(failures_in_a_row.get() + 1);
                            if failures_in_a_row.get() >= IDLE_MAX_FAILURES_IN_A_ROW {
                                stop.set(Some("too many failed creates in a row"));
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            (made, failures)
        }
    });
    let mut made = Vec::new();
    let mut failures = BTreeMap::new();
    for (ids, failed) in join_all(workers).await {
        made.extend(ids);
        for (reason, count) in failed {
            *failures.entry(reason).or_default() += count;
        }
    }
    (made, failures, stop.get().map(str::to_owned))
}

/// Memory per idle environment at each level of `plan.idle_counts`, from a baseline taken
/// before the first one; then deletes them all.
async fn idle_memory(target: &impl Target, plan: &LoadPlan, load: &mut LoadReport) -> Result<()> {
    if plan.drop_caches {
        // Sandboxes deleted earlier (by anyone) leave memory cgroups that the kernel frees
        // only once the pages charged to them leave the page cache; freed during the
        // measurement, they would show as memory coming back.
        let before = Footprint::of(target);
        memory::drop_page_cache().context("dropping the page cache")?;
        let after = Footprint::of(target);
        load.context.push(format!(
            "{}: before the idle baseline, dropping the page cache took dying memory cgroups \
             from {} to {} and SUnreclaim from {} to {} MiB",
            target.name(),
            before.dying_memory_cgroups(),
            after.dying_memory_cgroups(),
            before.host.slab_unreclaimable_kib / 1024,
            after.host.slab_unreclaimable_kib / 1024
        ));
    }
    tokio::time::sleep(plan.settle).await;
    let baseline = Footprint::of(target);
    let mut live = 0;
    for &wanted in &plan.idle_counts {
        if wanted <= live {
            continue;
        }
        eprintln!(
            "[{}] load: creating idle environments up to {wanted}",
            target.name()
        );
        let started = Instant::now();
        let (made, failures, stopped) = fill(target, wanted - live, plan.request_timeout).await;
        live += made.len();
        let create_time = started.elapsed();
        eprintln!(
            "[{}] load: {live} idle environments ({:.0} s); settling for {} s",
            target.name(),
            create_time.as_secs_f64(),
            plan.settle.as_secs()
        );
        tokio::time::sleep(plan.settle).await;
        let now = Footprint::of(target);
        let stopped_short = stopped.is_some() || live < wanted;
        load.idle.push(IdleResult {
            system: target.name().to_owned(),
            wanted,
            live,
            create_time,
            failures,
            stopped,
            baseline,
            now,
        });
        if stopped_short {
            break;
        }
    }
    eprintln!(
        "[{}] load: deleting {live} idle environments",
        target.name()
    );
    let started = Instant::now();
    let deleted = purge(target, plan.request_timeout).await?;
    target.after_purge();
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE_AFTER_DELETE).await;
    load.idle_cleanup.push(IdleCleanup {
        system: target.name().to_owned(),
        deleted,
        seconds,
        baseline,
        after: Footprint::of(target),
    });
    Ok(())
}

/// airlock's flags for one part of the load scenario.
fn airlock_flags(rate_limit: Option<&str>, warm_pool: Option<usize>) -> Vec<String> {
    let mut flags = vec!["--capacity-environments".to_owned(), CAPACITY.to_string()];
    if let Some(rate) = rate_limit {
        flags.extend(["--rate-limit".to_owned(), rate.to_owned()]);
    }
    if let Some(size) = warm_pool {
        flags.extend(["--warm-pool".to_owned(), size.to_string()]);
    }
    flags
}

/// One fresh airlock server per part: bursts, bursts under the default rate limit, idle
/// memory, and (when asked) bursts with a warm pool. The first server's image skeleton also
/// becomes the podman image (`tarball`) when that does not exist yet.
pub async fn measure_airlock(
    binary: &Path,
    scratch: &Path,
    tarball: Option<&Path>,
    plan: &LoadPlan,
    load: &mut LoadReport,
    report: &mut Report,
) -> Result<()> {
    enum Part {
        Bursts,
        RateLimited,
        Idle,
        /// With a warm pool, and the rate limit out of the way or not.
        WarmPool {
            size: usize,
            rate_limited: bool,
        },
    }
    // Idle memory first: its baseline is best on a host that has not just deleted hundreds of
    // sandboxes.
    let mut parts = vec![Part::Idle, Part::Bursts, Part::RateLimited];
    if let Some(size) = plan.warm_pool {
        // Fast creates are what can outrun the default rate limit: its 429s show here.
        parts.push(Part::WarmPool {
            size,
            rate_limited: false,
        });
        parts.push(Part::WarmPool {
            size,
            rate_limited: true,
        });
    }
    for (index, part) in parts.into_iter().enumerate() {
        let (tag, flags, setup) = match &part {
            Part::Bursts if plan.bursts.is_empty() => continue,
            Part::RateLimited if plan.rate_limited_bursts.is_empty() => continue,
            Part::Idle if plan.idle_counts.is_empty() => continue,
            Part::WarmPool {
                rate_limited: false,
                ..
            } if plan.warm_pool_bursts.is_empty() => continue,
            Part::WarmPool {
                rate_limited: true, ..
            } if plan.rate_limited_bursts.is_empty() => continue,
            Part::Bursts => (
                "bursts",
                airlock_flags(Some(UNLIMITED_RATE), None),
                format!("rate limit {UNLIMITED_RATE}"),
            ),
            Part::RateLimited => (
                "rated",
                airlock_flags(None, None),
                "default rate limit".to_owned(),
            ),
            Part::Idle => (
                "idle",
                airlock_flags(Some(UNLIMITED_RATE), None),
                String::new(),
            ),
            Part::WarmPool {
                size,
                rate_limited: false,
            } => (
                "pool",
                airlock_flags(Some(UNLIMITED_RATE), Some(*size)),
                format!("rate limit {UNLIMITED_RATE}, warm pool {size}"),
            ),
            Part::WarmPool {
                size,
                rate_limited: true,
            } => (
                "poolr",
                airlock_flags(None, Some(*size)),
                format!("default rate limit, warm pool {size}"),
            ),
        };
        // Short: the runtime's socket paths below it must fit in a sockaddr_un.
        let data_dir = scratch.join(format!("airlock-{tag}"));
        let log = scratch.join(format!("airlock-load-{tag}.log"));
        let server = Server::start_with(binary, &data_dir, &log, &flags).await?;
        eprintln!(
            "[airlock] load ({tag}): server on {} with {}",
            server.address,
            flags.join(" ")
        );
        load.context.push(format!(
            "airlock load ({tag}): airlock server {}",
            flags.join(" ")
        ));
        if let Some(tarball) = tarball.filter(|path| index == 0 && !path.exists()) {
            crate::podman_rootfs(&server.runtime_root(), scratch, tarball)?;
        }
        let target = AirlockTarget::new(&server);
        let measured = crate::interruptible(async {
            warm_up(&target, plan.warmup, plan.request_timeout).await?;
            match part {
                Part::Bursts => bursts(&target, &plan.bursts, &setup, plan, load, report).await,
                Part::RateLimited => {
                    // The warm-up spent some of the bucket; let it refill first.
                    tokio::time::sleep(plan.settle).await;
                    bursts(
                        &target,
                        &plan.rate_limited_bursts,
                        &setup,
                        plan,
                        load,
                        report,
                    )
                    .await
                }
                Part::Idle => idle_memory(&target, plan, load).await,
                Part::WarmPool { size, rate_limited } => {
                    // Each burst starts with a full pool (and a full rate-limit bucket).
                    let target = AirlockTarget::default_shape(&server);
                    let list = if rate_limited {
                        &plan.rate_limited_bursts
                    } else {
                        &plan.warm_pool_bursts
                    };
                    for burst in list {
                        let pooled = wait_for_warm_pool(&server, size, plan).await;
                        let setup = format!("{setup} ({pooled} pooled), default shape");
                        bursts(&target, &[*burst], &setup, plan, load, report).await?;
                    }
                    Ok(())
                }
            }
        })
        .await;
        load.context.push(format!(
            "airlock load ({tag}): server at the end: {}",
            server.resource_usage()
        ));
        if measured.is_err() {
            let _ = purge(&target, plan.request_timeout).await;
        }
        // The server's own cleanup lists again: give a rate-limited bucket time to refill.
        tokio::time::sleep(Duration::from_secs(5)).await;
        eprintln!("[airlock] load ({tag}): cleanup");
        server.shut_down(report).await;
        measured.with_context(|| format!("airlock load ({tag})"))?;
    }
    Ok(())
}

/// Waits until the server's warm pool holds `size` sandboxes (counted as sandbox cgroups, with
/// no environment live), or until it has made no progress for 30 s; then lets it settle.
async fn wait_for_warm_pool(server: &Server, size: usize, plan: &LoadPlan) -> usize {
    let count = || {
        let dir =
            Path::new("/sys/fs/cgroup/memory").join(server.cgroup_parent().trim_start_matches('/'));
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    };
    eprintln!("[airlock] load: waiting for the warm pool to hold {size} sandboxes");
    let mut last = (count(), Instant::now());
    while last.0 < size && last.1.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    tokio::time::sleep(plan.settle).await;
    count()
}

/// podman with `runtime`: one fresh service for the bursts and one for idle memory, each
/// with the benchmark image imported.
#[allow(clippy::too_many_arguments)]
pub async fn measure_podman(
    runtime: &str,
    usr: UsrMode,
    scratch: &Path,
    socket: &Path,
    tarball: &Path,
    plan: &LoadPlan,
    load: &mut LoadReport,
    report: &mut Report,
) -> Result<()> {
    for (tag, idle) in [("idle", true), ("bursts", false)] {
        if (idle && plan.idle_counts.is_empty()) || (!idle && plan.bursts.is_empty()) {
            continue;
        }
        // Short: podman refuses a run root longer than 50 characters.
        let dir = scratch.join(format!("podman-{runtime}-{}", &tag[..1]));
        let log = scratch.join(format!("podman-load-{tag}-{runtime}.log"));
        let mut service = Service::start(runtime, &dir, socket, &log)
            .await
            .with_context(|| format!("starting podman with {runtime}"))?;
        let measured = async {
            let version = service.versions().await?;
            load.context.push(format!(
                "podman ({runtime}) load ({tag}): {version}; containers of {MEMORY_MIB} MiB, \
                 no disk limit (the overlay driver here has none)"
            ));
            service.import_image(tarball).await?;
            let target = PodmanTarget {
                service: &service,
                api: service.api(usr).with_memory_mib(MEMORY_MIB),
            };
            let result = crate::interruptible(async {
                warm_up(&target, plan.warmup, plan.request_timeout).await?;
                // The warm-up's exec conmons would linger for 5 minutes: not part of a baseline.
                target.after_purge();
                if idle {
                    idle_memory(&target, plan, load).await
                } else {
                    let setup = "no rate limit";
                    bursts(&target, &plan.bursts, setup, plan, load, report).await
                }
            })
            .await;
            if result.is_err() {
                let _ = purge(&target, plan.request_timeout).await;
            }
            result
        }
        .await;
        eprintln!("[podman ({runtime})] load ({tag}): cleanup");
        service.shut_down(report).await;
        measured.with_context(|| format!("podman ({runtime}) load ({tag})"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_creates_times_clients() {
        let check = |text: &str, expected: Option<(usize, usize)>| {
            let parsed = text.parse::<Burst>().ok().map(|b| (b.creates, b.clients));
            assert_eq!(parsed, expected, "{text:?}");
        };
        check("500x50", Some((500, 50)));
        check(" 100 x 20 ", Some((100, 20)));
        check("500", None);
        check("0x5", None);
        check("5x", None);
        check("500@300", Some((500, 500)));
        check("5x@3", None);
        let paced: Burst = "500@300".parse().unwrap();
        assert_eq!(paced.arrivals_per_second, Some(300));
        assert_eq!(paced.describe(), "500 arriving at 300/s");
    }

    #[test]
    fn only_refusals_to_wait_out_are_retried() {
        assert!(Failure::Status(429, String::new()).retryable());
        assert!(Failure::Status(503, String::new()).retryable());
        assert!(Failure::Timeout.retryable());
        assert!(!Failure::Status(500, String::new()).retryable());
        assert!(!Failure::Error("reset".into()).retryable());
    }
}
