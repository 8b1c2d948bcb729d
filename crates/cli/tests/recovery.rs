//! Crash recovery on real sandboxes. The server is killed with SIGKILL in the middle of a
//! burst of creates, restarted on the same data directory, and killed again, round after
//! round, so that any leak accumulates. After every restart: each create acknowledged with a
//! 201 is running and runs commands; no record is left `creating` or `deleting`; the host
//! holds exactly the sandboxes the records hold (state, directory, cgroup, mounts) and
//! nothing of any other; no runtime helper lives on; and every repair the reconciler made is
//! one audited `environment.reconcile` event. A second test fabricates leftovers of every
//! kind while the server is down and expects them gone, and audited, once it is back.
//!
//! The kill point is random; the seed is printed and `AIRLOCK_RECOVERY_SEED` replays it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::{AuditEvent, EnvState, Environment};
use airlock_core::ports::{Ceilings, EnvironmentQuery, Store};
use airlock_store::SqliteStore;
use chrono::{DateTime, Utc};
use common::{Api, Server, can_run_sandboxes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::json;

const ROUNDS: usize = 5;
const CLIENTS: usize = 14;

fn seed() -> u64 {
    let seed = match std::env::var("AIRLOCK_RECOVERY_SEED") {
        Ok(text) => text.parse().expect("AIRLOCK_RECOVERY_SEED is a number"),
        Err(_) => rand::random(),
    };
    eprintln!("recovery seed {seed} (replay with AIRLOCK_RECOVERY_SEED={seed})");
    seed
}

async fn open_store(server: &Server) -> SqliteStore {
    SqliteStore::open(&server.data_dir.join("airlock.db"))
        .await
        .expect("the database opens beside the server")
}

/// Every environment record, whatever its state or owner.
async fn records(server: &Server) -> BTreeMap<String, Environment> {
    let store = open_store(server).await;
    let mut all = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store
            .list_environments(&EnvironmentQuery {
                after: after.clone(),
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        all.extend(
            page.into_iter()
                .map(|environment| (environment.id.to_string(), environment)),
        );
    }
    all
}

/// The `environment.reconcile` events since `since`, by target.
async fn reconcile_events(
    server: &Server,
    since: DateTime<Utc>,
) -> BTreeMap<String, Vec<AuditEvent>> {
    let mut by_target: BTreeMap<String, Vec<AuditEvent>> = BTreeMap::new();
    for event in open_store(server)
        .await
        .list_audit(1_000_000)
        .await
        .unwrap()
    {
        if event.action == "environment.reconcile" && event.time >= since {
            by_target
                .entry(event.target.clone().unwrap_or_default())
                .or_default()
                .push(event);
        }
    }
    by_target
}

/// Everything of this instance on the host, by sandbox id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct HostView {
    sandbox_dirs: BTreeSet<String>,
    state_dirs: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    /// Sandbox ids with a mount below `runtime/sandboxes/<id>/`.
    mounted: BTreeSet<String>,
    /// Mounts under the data directory that belong to no sandbox directory.
    stray_mounts: Vec<String>,
    helpers: Vec<i32>,
}

impl HostView {
    fn of(server: &Server) -> HostView {
        let sandboxes = server.data_dir.join("runtime/sandboxes");
        let sandboxes = sandboxes.canonicalize().unwrap_or(sandboxes);
        let mut mounted = BTreeSet::new();
        let mut stray_mounts = Vec::new();
        for point in server.mounts() {
            match Path::new(&point)
                .strip_prefix(&sandboxes)
                .ok()
                .and_then(|rest| rest.iter().next())
            {
                Some(id) => {
                    mounted.insert(id.to_string_lossy().into_owned());
                }
                None => stray_mounts.push(point),
            }
        }
        HostView {
            sandbox_dirs: server.sandbox_dirs().into_iter().collect(),
            state_dirs: server.state_dirs().into_iter().collect(),
            cgroups: server.cgroup_dirs().into_iter().collect(),
            mounted,
            stray_mounts,
            helpers: server.helper_processes(),
        }
    }

    /// Every sandbox id anything was found of.
    fn ids(&self) -> BTreeSet<String> {
        self.sandbox_dirs
            .iter()
            .chain(&self.state_dirs)
            .chain(&self.cgroups)
            .chain(&self.mounted)
            .cloned()
            .collect()
    }
}

/// One create request of the burst.
struct Attempt {
    client: usize,
    name: String,
    key: Option<String>,
}

/// An environment whose create was answered 201 (or found running when its keyed request
/// was sent again).
#[derive(Debug, Clone)]
struct Acknowledged {
    id: String,
    client: usize,
    name: String,
}

/// Asserts the promises that hold after every restart; returns the records by id and the
/// number of repairs audited.
async fn check_recovered(
    server: &Server,
    clients: &[Api],
    acknowledged: &[Acknowledged],
    before: &BTreeMap<String, Environment>,
    host_before: &HostView,
    since: DateTime<Utc>,
    round: usize,
) -> (BTreeMap<String, Environment>, usize) {
    let after = records(server).await;

    // Every acknowledged create is running and usable.
    for environment in acknowledged {
        let client = &clients[environment.client];
        let (status, body) = client
            .get(&format!("/v1/environments/{}", environment.id))
            .await;
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        assert_eq!(
            body["state"], "running",
            "round {round}: an acknowledged environment is running: {body}"
        );
        let result = client.sh(&environment.id, "echo alive-$(hostname)").await;
        assert_eq!(
            (result["exit_code"].as_i64(), result["stdout"].as_str()),
            (
                Some(0),
                Some(format!("alive-{}\n", environment.name).as_str())
            ),
            "round {round}: {result}"
        );
    }

    // No record is left in the middle of a change; nothing is stopped (the test stops
    // nothing), so what holds a sandbox is running.
    for (id, environment) in &after {
        assert!(
            matches!(environment.state, EnvState::Running | EnvState::Failed),
            "round {round}: {id} is {} after recovery",
            environment.state
        );
    }
    for (id, environment) in before {
        if environment.state == EnvState::Running {
            assert_eq!(
                after[id].state,
                EnvState::Running,
                "round {round}: {id} was running when the server died"
            );
        }
    }
    let running: BTreeSet<String> = after
        .iter()
        .filter(|(_, environment)| environment.state == EnvState::Running)
        .map(|(id, _)| id.clone())
        .collect();

    // The host holds exactly the sandboxes of running records, each whole, and nothing else.
    let host = HostView::of(server);
    assert_eq!(
        host.sandbox_dirs, running,
        "round {round}: sandbox directories"
    );
    assert_eq!(host.state_dirs, running, "round {round}: runtime state");
    assert_eq!(host.cgroups, running, "round {round}: cgroups");
    assert_eq!(host.mounted, running, "round {round}: mounts");
    assert!(
        host.stray_mounts.is_empty(),
        "round {round}: {:?}",
        host.stray_mounts
    );
    assert!(
        host.helpers.is_empty(),
        "round {round}: runtime helpers outlived the reconciler: {:?}",
        host.helpers
    );

    // Each repair is one audited event, and nothing healthy was touched. A repair was due
    // for every record that changed across the restart and for every id the host held
    // something of that is not running now.
    let events = reconcile_events(server, since).await;
    let mut repaired: BTreeSet<String> = after
        .iter()
        .filter(|(id, environment)| {
            before
                .get(*id)
                .is_none_or(|earlier| earlier.state != environment.state)
        })
        .map(|(id, _)| id.clone())
        .collect();
    repaired.extend(
        host_before
            .ids()
            .into_iter()
            .filter(|id| !running.contains(id)),
    );
    let audited: BTreeSet<String> = events.keys().cloned().collect();
    assert_eq!(
        audited, repaired,
        "round {round}: one reconcile event per repair: {events:#?}"
    );
    for (id, events) in &events {
        assert_eq!(events.len(), 1, "round {round}: {id}: {events:#?}");
        let event = &events[0];
        assert_eq!(event.outcome, "ok", "round {round}: {event:?}");
        let detail = event.detail.as_deref().unwrap_or_default();
        let expected = match before.get(id).map(|environment| environment.state) {
            Some(EnvState::Creating) => "creation interrupted: marked failed",
            _ => "orphan sandbox removed",
        };
        assert!(
            detail.starts_with(expected),
            "round {round}: {id}: {detail:?} does not start with {expected:?}"
        );
    }
    let repairs = events.len();
    (after, repairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_a_burst_of_creates_loses_no_acknowledged_environment_and_leaks_nothing() {
    if !can_run_sandboxes("sigkill_during_a_burst_of_creates") {
        return;
    }
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = Server::start();
    let mut clients = vec![
        server.admin(),
        server.user("alice").await,
        server.user("bob").await,
    ];
    let mut acknowledged: Vec<Acknowledged> = Vec::new();

    for round in 0..ROUNDS {
        // Kill after a random number of acknowledgements (none: while the first sandboxes
        // are being made) and a random moment more, short beside a create, so that over the
        // rounds the kill lands anywhere in the burst while creates are in flight.
        let kill_after_acks = rng.random_range(0..CLIENTS);
        let jitter = Duration::from_millis(rng.random_range(0..40));
        let burst_started = std::time::Instant::now();
        let attempts: Vec<Attempt> = (0..CLIENTS)
            .map(|index| Attempt {
                client: index % clients.len(),
                name: format!("r{round}-c{index}"),
                key: (index % 3 == 0).then(|| format!("key-{round}-{index}")),
            })
            .collect();
        let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel();
        for (index, attempt) in attempts.iter().enumerate() {
            // A keyed create is sent twice at once: both must name the same environment.
            let copies = if attempt.key.is_some() { 2 } else { 1 };
            for _ in 0..copies {
                let client = clients[attempt.client].on(&server);
                let body = json!({ "name": attempt.name });
                let key = attempt.key.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    let headers: Vec<(&str, &str)> = key
                        .as_deref()
                        .map(|key| ("idempotency-key", key))
                        .into_iter()
                        .collect();
                    let answer = client
                        .try_call(Method::POST, "/v1/environments", Some(body), &headers)
                        .await;
                    let _ = answered.send((index, answer));
                });
            }
        }
        drop(answered);

        let mut results: Vec<(usize, Option<common::Answer>)> = Vec::new();
        let mut acks = 0;
        while acks < kill_after_acks {
            let Some((index, answer)) = answers.recv().await else {
                break;
            };
            if answer
                .as_ref()
                .is_some_and(|answer| answer.status == StatusCode::CREATED)
            {
                acks += 1;
            }
            results.push((index, answer));
        }
        tokio::time::sleep(jitter).await;
        server.kill();
        let killed_at = burst_started.elapsed();
        while let Some(result) = answers.recv().await {
            results.push(result);
        }

        let mut acknowledged_now: BTreeMap<usize, String> = BTreeMap::new();
        let mut unanswered = 0;
        for (index, answer) in &results {
            let Some(answer) = answer else {
                unanswered += 1;
                continue;
            };
            assert_eq!(
                answer.status,
                StatusCode::CREATED,
                "round {round}: a create before the kill: {}",
                answer.body
            );
            let id = answer.body["id"].as_str().unwrap().to_owned();
            if let Some(earlier) = acknowledged_now.insert(*index, id.clone()) {
                assert_eq!(
                    earlier, id,
                    "round {round}: one Idempotency-Key, one environment"
                );
            }
        }
        for (index, id) in &acknowledged_now {
            let attempt = &attempts[*index];
            acknowledged.push(Acknowledged {
                id: id.clone(),
                client: attempt.client,
                name: attempt.name.clone(),
            });
        }

        // What the crash left, seen while the server is down.
        let before = records(&server).await;
        let host_before = HostView::of(&server);
        let creating = before
            .values()
            .filter(|environment| environment.state == EnvState::Creating)
            .count();
        eprintln!(
            "round {round}: killed {killed_at:?} into the burst ({kill_after_acks} acknowledgements + {jitter:?}): \
             {} acknowledged, {unanswered} requests unanswered, {creating} records creating, \
             {} live helpers",
            acknowledged_now.len(),
            host_before.helpers.len()
        );
        let since = Utc::now();
        server.restart();
        clients = clients.iter().map(|client| client.on(&server)).collect();
        let (after, repairs) = check_recovered(
            &server,
            &clients,
            &acknowledged,
            &before,
            &host_before,
            since,
            round,
        )
        .await;

        // An acknowledged keyed create, sent again, is the same environment; one the crash
        // cut off is answered from its record (running or failed, never in between), or
        // made now if the crash came before its key was claimed.
        for (index, attempt) in attempts.iter().enumerate() {
            let Some(key) = attempt.key.as_deref() else {
                continue;
            };
            let answer = clients[attempt.client]
                .call(
                    Method::POST,
                    "/v1/environments",
                    Some(json!({ "name": attempt.name })),
                    &[("idempotency-key", key)],
                )
                .await;
            assert_eq!(
                answer.status,
                StatusCode::CREATED,
                "round {round}: {}",
                answer.body
            );
            let id = answer.body["id"].as_str().unwrap().to_owned();
            let replayed = answer.headers.contains_key("idempotency-replayed");
            match acknowledged_now.get(&index) {
                Some(earlier) => {
                    assert_eq!(
                        &id, earlier,
                        "round {round}: the same key, the same environment"
                    );
                    assert!(replayed, "round {round}: {}", answer.body);
                }
                None => {
                    assert_eq!(
                        replayed,
                        before.contains_key(&id),
                        "round {round}: replayed exactly when the key was claimed before the crash"
                    );
                    let state = answer.body["state"].as_str().unwrap_or_default();
                    assert!(
                        state == "running" || state == "failed",
                        "round {round}: {}",
                        answer.body
                    );
                    if state == "running" {
                        acknowledged.push(Acknowledged {
                            id,
                            client: attempt.client,
                            name: attempt.name.clone(),
                        });
                    }
                }
            }
        }
        let failed = after
            .values()
            .filter(|environment| environment.state == EnvState::Failed)
            .count();
        eprintln!(
            "round {round}: after restart {repairs} repairs audited; {} records, {failed} failed, {} acknowledged in all",
            after.len(),
            acknowledged.len()
        );
    }

    // Delete everything; then nothing of this instance is left on the host.
    let admin = &clients[0];
    let all = records(&server).await;
    for (id, environment) in &all {
        if environment.state == EnvState::Deleted {
            continue;
        }
        let (status, body) = admin.delete(&format!("/v1/environments/{id}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{id}: {body}");
    }
    let host = HostView::of(&server);
    assert_eq!(
        host,
        HostView::default(),
        "the host is clean after deleting everything"
    );
    for environment in records(&server).await.values() {
        assert_eq!(environment.state, EnvState::Deleted);
    }
}

/// Starts `sleep` and moves it into `cgroup` in every hierarchy that takes it; the number
/// of hierarchies it joined.
fn sleeper_in(parents: &[PathBuf], cgroup: &str) -> (std::process::Child, usize) {
    let sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let mut joined = 0;
    for parent in parents {
        let dir = parent.join(cgroup);
        std::fs::create_dir(&dir).unwrap();
        // A new v1 cpuset has no CPUs and takes no process; the other hierarchies do.
        if std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).is_ok() {
            joined += 1;
        }
    }
    (sleeper, joined)
}

/// Starts a stand-in for a create helper of sandbox `id` that outlived its server: a
/// process whose command line is the helper's (`… __runtime <create request>`), with a child
/// of its own as a real helper has. Returns it and its child.
fn fake_create_helper(runtime: &Path, id: &str) -> (std::process::Child, KillOnDrop) {
    let runtime = runtime.canonicalize().unwrap();
    let dir = runtime.parent().unwrap().join("fake-helper");
    std::fs::create_dir_all(&dir).unwrap();
    // `sh __runtime <json>` runs the script named `__runtime`: the command line matches.
    std::fs::write(
        dir.join("__runtime"),
        "sleep 1000 &\necho $! > child.pid\nwait\n",
    )
    .unwrap();
    let request = json!({
        "op": "create",
        "state_root": runtime.join("state"),
        "id": id,
        "bundle": runtime.join("sandboxes").join(id).join("bundle"),
        "seccomp": runtime.join("seccomp.bpf"),
    });
    let helper = std::process::Command::new("sh")
        .arg("__runtime")
        .arg(request.to_string())
        .current_dir(&dir)
        .spawn()
        .unwrap();
    let pid_file = dir.join("child.pid");
    let child = (0..1000)
        .find_map(|_| {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            if pid.is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            pid
        })
        .expect("the stand-in helper started its child");
    (helper, KillOnDrop(child))
}

/// Kills a process that is no child of the test when dropped, so that a failing test leaves
/// none behind.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if is_running(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

/// Whether a process exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(") ")?;
            rest.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Waits (boundedly) for a child the reconciler should have killed, and says how it ended.
fn reap(child: &mut std::process::Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..1000 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.signal();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test]
async fn leftovers_of_every_kind_are_removed_at_start_and_each_removal_is_audited() {
    if !can_run_sandboxes("leftovers_of_every_kind_are_removed_at_start") {
        return;
    }
    let mut server = Server::start();
    let admin = server.admin();
    let keeper = admin.create(json!({ "name": "keeper" })).await;
    let stopped = admin.create(json!({ "name": "stopped" })).await;
    assert_eq!(
        admin.sh(&stopped, "echo kept > /root/note").await["exit_code"],
        0
    );
    let (status, body) = admin
        .post(&format!("/v1/environments/{stopped}/stop"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The hierarchies where this instance has its cgroup parent (libcontainer made them).
    let parents: Vec<PathBuf> = server
        .cgroup_parents()
        .into_iter()
        .filter(|parent| parent.is_dir())
        .collect();
    assert!(!parents.is_empty(), "the instance has a cgroup parent");
    server.kill();
    let runtime = server.data_dir.join("runtime");

    // A cgroup, with a process in it, of no record: libcontainer made it, then the crash
    // came before its state was written.
    let cgroup_orphan = EnvironmentId::generate().to_string();
    let (mut orphan_sleeper, joined) = sleeper_in(&parents, &cgroup_orphan);
    assert!(joined > 0, "the sleeper joined a cgroup");

    // A sandbox directory of no record with its root filesystem still mounted.
    let mounted_orphan = EnvironmentId::generate().to_string();
    let dir = runtime.join("sandboxes").join(&mounted_orphan);
    for sub in ["lower", "upper/0", "work/0", "rootfs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.join("lower").display(),
        dir.join("upper/0").display(),
        dir.join("work/0").display()
    );
    let mounted = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(dir.join("rootfs"))
        .status()
        .unwrap();
    assert!(mounted.success());

    // A half-written runtime state of no record.
    let state_orphan = EnvironmentId::generate().to_string();
    std::fs::create_dir(runtime.join("state").join(&state_orphan)).unwrap();
    std::fs::write(
        runtime.join("state").join(&state_orphan).join("state.json"),
        "{\"ociVersion\": \"1.0",
    )
    .unwrap();

    // A record left `creating` by a server killed mid-create, with its helper still at work
    // (and a child of it), the sandbox directory and a cgroup with a process.
    let store = open_store(&server).await;
    let template = store
        .get_environment(&EnvironmentId::parse(&keeper).unwrap())
        .await
        .unwrap()
        .unwrap();
    let interrupted = EnvironmentId::generate();
    let now = Utc::now();
    store
        .insert_environment(
            &Environment {
                id: interrupted.clone(),
                name: Name::parse("name", "interrupted").unwrap(),
                state: EnvState::Creating,
                created_at: now,
                updated_at: now,
                failure: None,
                ..template
            },
            None,
            &Ceilings::default(),
        )
        .await
        .unwrap();
    drop(store);
    let interrupted = interrupted.to_string();
    std::fs::create_dir_all(runtime.join("sandboxes").join(&interrupted).join("bundle")).unwrap();
    let (mut creating_sleeper, joined) = sleeper_in(&parents, &interrupted);
    assert!(joined > 0, "the sleeper joined a cgroup");
    let (mut helper, helper_child) = fake_create_helper(&runtime, &interrupted);

    // The stopped environment's root filesystem mounted again, as a start cut short leaves it.
    let tmpfs = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(runtime.join("sandboxes").join(&stopped).join("rootfs"))
        .status()
        .unwrap();
    assert!(tmpfs.success());

    let since = Utc::now();
    server.restart();
    let admin = admin.on(&server);

    // Healthy environments are untouched.
    assert_eq!(
        admin.sh(&keeper, "echo still").await["stdout"],
        "still\n",
        "the running environment survived"
    );
    let (_, environment) = admin.get(&format!("/v1/environments/{stopped}")).await;
    assert_eq!(environment["state"], "stopped", "{environment}");
    let (_, environment) = admin.get(&format!("/v1/environments/{interrupted}")).await;
    assert_eq!(environment["state"], "failed", "{environment}");

    // Nothing of the leftovers remains, and their processes were killed.
    let host = HostView::of(&server);
    let expected =
        |ids: &[&str]| -> BTreeSet<String> { ids.iter().map(|id| id.to_string()).collect() };
    assert_eq!(host.sandbox_dirs, expected(&[&keeper, &stopped]));
    assert_eq!(host.state_dirs, expected(&[&keeper]));
    assert_eq!(host.cgroups, expected(&[&keeper]));
    assert_eq!(host.mounted, expected(&[&keeper]));
    assert!(host.stray_mounts.is_empty(), "{:?}", host.stray_mounts);
    assert_eq!(reap(&mut orphan_sleeper), Some(9), "killed with its cgroup");
    assert_eq!(
        reap(&mut creating_sleeper),
        Some(9),
        "killed with its cgroup"
    );
    assert_eq!(reap(&mut helper), Some(9), "the helper was killed");
    assert!(!is_running(helper_child.0), "the helper's child was killed");
    assert!(host.helpers.is_empty(), "{:?}", host.helpers);

    // Each removal is one audited event saying what was found.
    let events = reconcile_events(&server, since).await;
    let details: BTreeMap<String, Vec<(String, String)>> = events
        .into_iter()
        .map(|(target, events)| {
            let details = events
                .into_iter()
                .map(|event| (event.outcome, event.detail.unwrap_or_default()))
                .collect();
            (target, details)
        })
        .collect();
    let ok = |detail: &str| vec![("ok".to_owned(), detail.to_owned())];
    let expected: BTreeMap<String, Vec<(String, String)>> = [
        (
            cgroup_orphan.clone(),
            ok("orphan sandbox removed (no record); removed cgroup"),
        ),
        (
            mounted_orphan.clone(),
            ok("orphan sandbox removed (no record); removed mounts, directory"),
        ),
        (
            state_orphan.clone(),
            ok("orphan sandbox removed (no record); removed runtime state"),
        ),
        (
            interrupted.clone(),
            ok("creation interrupted: marked failed; removed helper process, cgroup, directory"),
        ),
        (
            stopped.clone(),
            ok("stopped sandbox held mounts: removed, files kept"),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(details, expected);

    // The stopped environment starts again on its files.
    let (status, body) = admin
        .post(&format!("/v1/environments/{stopped}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        admin.sh(&stopped, "cat /root/note").await["stdout"],
        "kept\n"
    );
}
