//! `airlock-bench`: measures airlock's create->ready, exec and delete latencies through its
//! HTTP API, breaks airlock's time down by layer, and does the same work with podman's REST API
//! on the same machine in the same run; prints one table (and optionally writes JSON). With
//! `--load` it also runs the load scenario (bursts of creates, memory per idle environment),
//! and with `--sessions` the sessions scenario (streamed commands over airlock's WebSocket and
//! podman's exec endpoints).
//!
//! Everything runs against 127.0.0.1 and unix sockets, in a scratch directory that is removed
//! at the end, with every sandbox deleted through its own API before its server stops. There
//! are no timing assertions anywhere: this measures, it does not judge.

mod airlock;
mod breakdown;
mod host;
mod http;
mod load;
mod memory;
mod podman;
mod scenario;
mod sessions;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::load::{Burst, LoadPlan, LoadReport};
use crate::podman::UsrMode;
use crate::scenario::Plan;
use crate::sessions::SessionPlan;
use crate::stats::Report;

#[derive(Parser, Debug)]
#[command(
    name = "airlock-bench",
    about = "Benchmark airlock's sandbox lifecycle against podman on this machine (needs root)"
)]
struct Args {
    /// The airlock binary to benchmark (build it with `cargo build --release -p airlock`).
    #[arg(long, default_value = "target/release/airlock")]
    airlock_bin: PathBuf,
    /// Serial create->ready rounds (each sandbox stays up until the serial deletes).
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Exec round trips, serial and again spread over the concurrent clients.
    #[arg(long, default_value_t = 200)]
    exec_iterations: usize,
    /// Concurrent clients for the concurrent scenarios.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// Sandboxes created (then deleted) by the concurrent clients together.
    #[arg(long, default_value_t = 100)]
    concurrent_total: usize,
    /// Untimed create, exec, delete rounds before measuring each system.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Rounds of each part of airlock's breakdown (0 skips the breakdown).
    #[arg(long, default_value_t = 50)]
    breakdown_iterations: usize,
    /// Measure airlock only.
    #[arg(long)]
    skip_podman: bool,
    /// OCI runtimes to run podman with, in order.
    #[arg(long, value_delimiter = ',', default_value = "crun,runc")]
    podman_runtimes: Vec<Runtime>,
    /// How podman containers get the host's /usr (airlock overlays it).
    #[arg(long, value_enum, default_value_t = UsrArg::Overlay)]
    podman_usr: UsrArg,
    /// Where the scratch directory (data dir, podman storage) goes; it must be on the disk
    /// airlock would use, since SQLite commits fsync.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Also write the results, raw samples included, as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Copy the servers' logs (airlock, podman) into this directory at the end. Without it,
    /// logs are kept (in the temp directory) only when something went wrong.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Skip the lifecycle suite (serial and concurrent create, exec, delete, breakdown).
    #[arg(long)]
    skip_lifecycle: bool,
    /// Also run the load scenario: bursts of creates, memory per idle environment.
    #[arg(long)]
    load: bool,
    /// Bursts as CREATESxCLIENTS, with the rate limit out of the way (`none`: no bursts).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100x20,100x50,500x20,500x50"
    )]
    load_bursts: Vec<String>,
    /// Bursts against airlock's default per-principal rate limit (`none`: skip).
    #[arg(long, value_delimiter = ',', default_value = "500x50")]
    load_rate_limited_bursts: Vec<String>,
    /// Live idle environments at which memory is measured (`none`: skip).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    load_idle: Vec<String>,
    /// Also run bursts against `airlock server --warm-pool N`.
    #[arg(long)]
    load_warm_pool: Option<usize>,
    /// The bursts of the warm-pool run: CREATESxCLIENTS (closed loop) or CREATES@RATE
    /// (creates arriving at RATE a second whatever the answers: an open loop).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500x20,500x50,500@150,500@300"
    )]
    load_warm_pool_bursts: Vec<String>,
    /// Seconds to let things settle before memory is read.
    #[arg(long, default_value_t = 10)]
    load_settle: u64,
    /// Seconds one API call of the load scenario may take before it counts as a timeout.
    #[arg(long, default_value_t = 60)]
    load_timeout: u64,
    /// Do not drop the page cache before the idle-memory baseline (by default it is dropped
    /// so that memory cgroups of sandboxes deleted earlier are gone before measuring).
    #[arg(long)]
    load_keep_caches: bool,
    /// Also run the sessions scenario: streamed commands in one running sandbox (open->first
    /// output, keystroke->echo, throughput; a terminal's first prompt for airlock).
    #[arg(long)]
    sessions: bool,
    /// `echo ready` sessions opened one after another.
    #[arg(long, default_value_t = 200)]
    session_opens: usize,
    /// Lines sent through one `cat` session, one after another.
    #[arg(long, default_value_t = 1000)]
    session_round_trips: usize,
    /// MiB streamed out of each throughput session (`head -c`).
    #[arg(long, default_value_t = 64)]
    session_stream_mib: u64,
    /// Throughput sessions (after one untimed).
    #[arg(long, default_value_t = 5)]
    session_stream_repetitions: usize,
    /// airlock terminal sessions opened to their first prompt (0: none).
    #[arg(long, default_value_t = 50)]
    session_terminal_opens: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Runtime {
    Crun,
    Runc,
}

impl Runtime {
    fn as_str(self) -> &'static str {
        match self {
            Runtime::Crun => "crun",
            Runtime::Runc => "runc",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum UsrArg {
    Overlay,
    Bind,
}

/// The podman socket named in docs/BENCHMARKS.md (one service at a time uses it).
const PODMAN_SOCKET: &str = "/run/airlock-bench-podman.sock";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // One thread: the benchmark's own CPU use stays small and off the measured servers' cores
    // as much as possible; the concurrent clients are futures on this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("airlock-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: airlock and podman make namespaces, mounts and cgroups");
    }
    let binary = args
        .airlock_bin
        .canonicalize()
        .with_context(|| format!("the airlock binary {}", args.airlock_bin.display()))?;
    let load_plan = if args.load {
        Some(load_plan(&args)?)
    } else {
        None
    };
    let session_plan = args.sessions.then(|| SessionPlan {
        warmup: args.warmup,
        opens: args.session_opens.max(1),
        round_trips: args.session_round_trips.max(1),
        stream_bytes: args.session_stream_mib.max(1) * 1024 * 1024,
        stream_repetitions: args.session_stream_repetitions.max(1),
        terminal_opens: args.session_terminal_opens,
    });
    if args.skip_lifecycle && load_plan.is_none() && session_plan.is_none() {
        bail!("--skip-lifecycle without --load or --sessions leaves nothing to measure");
    }
    let plan = Plan {
        warmup: args.warmup,
        iterations: args.iterations.max(1),
        exec_iterations: args.exec_iterations.max(1),
        concurrency: args.concurrency.max(1),
        concurrent_total: args.concurrent_total.max(1),
    };
    let scratch = args
        .work_dir
        .canonicalize()
        .with_context(|| format!("the work directory {}", args.work_dir.display()))?
        .join(format!("airlock-bench-{}", std::process::id()));
    std::fs::create_dir(&scratch)
        .with_context(|| format!("creating the scratch directory {}", scratch.display()))?;

    let mut report = Report::default();
    let mut load = LoadReport::default();
    let mut context = vec![format!("airlock: {}", airlock_version(&binary))];
    let outcome = measure_all(
        &args,
        &binary,
        &plan,
        load_plan.as_ref(),
        session_plan.as_ref(),
        &scratch,
        &mut report,
        &mut load,
        &mut context,
    )
    .await;

    let kept = match &args.logs {
        Some(dir) => Some(dir.clone()),
        None if outcome.is_err() || !report.notes.is_empty() => {
            Some(std::env::temp_dir().join(format!("airlock-bench-{}-logs", std::process::id())))
        }
        None => None,
    };
    if let Some(kept) = kept.filter(|dir| std::fs::create_dir_all(dir).is_ok()) {
        for entry in std::fs::read_dir(&scratch).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
            }
        }
        eprintln!("logs kept in {}", kept.display());
    }
    if let Err(error) = host::remove_tree(&scratch) {
        report.note(format!("scratch directory: {error:#}"));
    }

    let machine = host::machine_description();
    println!();
    println!("airlock-bench on {machine}");
    for line in &context {
        println!("  {line}");
    }
    for line in &load.context {
        println!("  {line}");
    }
    if !args.skip_lifecycle {
        println!(
            "  plan: warm-up {}, serial create->ready {}, exec {} (serial, then over {} clients), \
             concurrent create->ready {} over {} clients",
            plan.warmup,
            plan.iterations,
            plan.exec_iterations,
            plan.concurrency,
            plan.concurrent_total,
            plan.concurrency
        );
    }
    if let Some(load_plan) = &load_plan {
        println!("  load plan: {load_plan:?}");
    }
    if let Some(session_plan) = &session_plan {
        println!("  sessions plan: {session_plan:?}");
    }
    println!();
    print!("{}", report.table());
    if !load.is_empty() {
        println!();
        print!("{}", load.table());
    }
    if !report.notes.is_empty() {
        println!();
        for note in &report.notes {
            println!("note: {note}");
        }
    }
    if let Some(path) = &args.json {
        let context = json!({
            "machine": machine,
            "context": context,
            "plan": {
                "warmup": plan.warmup, "iterations": plan.iterations,
                "exec_iterations": plan.exec_iterations, "concurrency": plan.concurrency,
                "concurrent_total": plan.concurrent_total,
                "breakdown_iterations": args.breakdown_iterations,
                "podman_usr": format!("{:?}", args.podman_usr).to_lowercase(),
                "skip_lifecycle": args.skip_lifecycle,
                "load": load_plan.as_ref().map(|plan| format!("{plan:?}")),
                "sessions": session_plan.as_ref().map(|plan| format!("{plan:?}")),
            },
        });
        let mut results = report.to_json(context);
        if load_plan.is_some() {
            results["load"] = load.to_json();
        }
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    outcome
}

/// airlock, then podman with each runtime (the lifecycle suite, then the load and sessions
/// scenarios of each); stops at the first failure or on Ctrl-C, always cleaning up the system it was
/// measuring.
#[allow(clippy::too_many_arguments)]
async fn measure_all(
    args: &Args,
    binary: &Path,
    plan: &Plan,
    load_plan: Option<&LoadPlan>,
    session_plan: Option<&SessionPlan>,
    scratch: &Path,
    report: &mut Report,
    load: &mut LoadReport,
    context: &mut Vec<String>,
) -> Result<()> {
    let tarball = scratch.join("rootfs.tar");
    if !args.skip_lifecycle {
        measure_airlock(args, binary, plan, scratch, &tarball, report, context).await?;
    }
    if let Some(load_plan) = load_plan {
        let tarball = (!args.skip_podman).then_some(tarball.as_path());
        load::measure_airlock(binary, scratch, tarball, load_plan, load, report).await?;
    }
    if let Some(session_plan) = session_plan {
        let tarball = (!args.skip_podman).then_some(tarball.as_path());
        sessions::measure_airlock(binary, scratch, tarball, session_plan, report, context).await?;
    }
    if args.skip_podman {
        return Ok(());
    }
    let usr = match args.podman_usr {
        UsrArg::Overlay => UsrMode::Overlay,
        UsrArg::Bind => UsrMode::Bind,
    };
    for runtime in &args.podman_runtimes {
        let runtime = runtime.as_str();
        if !args.skip_lifecycle {
            measure_podman(runtime, usr, plan, scratch, &tarball, report, context).await?;
        }
        if let Some(load_plan) = load_plan {
            load::measure_podman(
                runtime,
                usr,
                scratch,
                Path::new(PODMAN_SOCKET),
                &tarball,
                load_plan,
                load,
                report,
            )
            .await?;
        }
        if let Some(session_plan) = session_plan {
            sessions::measure_podman(
                runtime,
                usr,
                scratch,
                Path::new(PODMAN_SOCKET),
                &tarball,
                session_plan,
                report,
                context,
            )
            .await?;
        }
    }
    Ok(())
}

/// The lifecycle suite (and the breakdown) against a fresh airlock server; also makes the
/// podman image's `tarball` from its image skeleton unless podman is skipped.
async fn measure_airlock(
    args: &Args,
    binary: &Path,
    plan: &Plan,
    scratch: &Path,
    tarball: &Path,
    report: &mut Report,
    context: &mut Vec<String>,
) -> Result<()> {
    let data_dir = scratch.join("airlock");
    let server = airlock::Server::start(binary, &data_dir, &scratch.join("airlock.log")).await?;
    eprintln!(
        "[airlock] server on {} with data dir {}",
        server.address,
        data_dir.display()
    );
    let prepared = if args.skip_podman {
        Ok(())
    } else {
        podman_rootfs(&server.runtime_root(), scratch, tarball)
    };
    let api = server.api();
    let breakdown_scratch = scratch.join("breakdown");
    let load_before = host::cpu_snapshot();
    let measured = match prepared {
        Err(error) => Err(error),
        Ok(()) => {
            interruptible(scenario::run_suite(
                &api,
                plan,
                report,
                async |sandboxes, report| {
                    if args.breakdown_iterations == 0 {
                        return Ok(());
                    }
                    std::fs::create_dir_all(&breakdown_scratch)?;
                    breakdown::measure(
                        binary,
                        &server,
                        &sandboxes[0],
                        &breakdown_scratch,
                        args.breakdown_iterations,
                        report,
                    )
                    .await
                },
            ))
            .await
        }
    };
    context.push(format!(
        "airlock phase: {}; server at the end: {}",
        host::cpu_load_between(load_before, host::cpu_snapshot()),
        server.resource_usage()
    ));
    eprintln!("[airlock] cleanup");
    server.shut_down(report).await;
    measured.context("measuring airlock")
}

/// The lifecycle suite against a fresh podman service running containers with `runtime`.
async fn measure_podman(
    runtime: &str,
    usr: UsrMode,
    plan: &Plan,
    scratch: &Path,
    tarball: &Path,
    report: &mut Report,
    context: &mut Vec<String>,
) -> Result<()> {
    let dir = scratch.join(format!("podman-{runtime}"));
    let log = scratch.join(format!("podman-{runtime}.log"));
    let mut service = podman::Service::start(runtime, &dir, Path::new(PODMAN_SOCKET), &log)
        .await
        .with_context(|| format!("starting podman with {runtime}"))?;
    let measured = async {
        let version = service.versions().await?;
        eprintln!("[podman ({runtime})] {version}");
        context.push(format!("podman ({runtime}): {version}"));
        service.import_image(tarball).await?;
        let api = service.api(usr);
        let before = host::cpu_snapshot();
        let result =
            interruptible(scenario::run_suite(&api, plan, report, async |_, _| Ok(()))).await;
        context.push(format!(
            "podman ({runtime}) phase: {}",
            host::cpu_load_between(before, host::cpu_snapshot())
        ));
        result
    }
    .await;
    eprintln!("[podman ({runtime})] cleanup");
    service.shut_down(report).await;
    measured.with_context(|| format!("measuring podman with {runtime}"))
}

/// Runs `work` unless Ctrl-C (or SIGTERM) comes first.
async fn interruptible(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = terminate.recv() => bail!("terminated"),
    }
}

/// The load scenario's plan from the command line.
fn load_plan(args: &Args) -> Result<LoadPlan> {
    let bursts = |list: &[String]| -> Result<Vec<Burst>> {
        list.iter()
            .filter(|item| !item.is_empty() && item.as_str() != "none")
            .map(|item| item.parse::<Burst>().map_err(anyhow::Error::msg))
            .collect()
    };
    let mut idle_counts = args
        .load_idle
        .iter()
        .filter(|item| !item.is_empty() && item.as_str() != "none")
        .map(|item| {
            item.parse::<usize>()
                .with_context(|| format!("--load-idle {item:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    idle_counts.retain(|n| *n > 0);
    idle_counts.sort_unstable();
    Ok(LoadPlan {
        bursts: bursts(&args.load_bursts).context("--load-bursts")?,
        rate_limited_bursts: bursts(&args.load_rate_limited_bursts)
            .context("--load-rate-limited-bursts")?,
        warm_pool: args.load_warm_pool,
        warm_pool_bursts: bursts(&args.load_warm_pool_bursts).context("--load-warm-pool-bursts")?,
        idle_counts,
        settle: std::time::Duration::from_secs(args.load_settle),
        request_timeout: std::time::Duration::from_secs(args.load_timeout.max(1)),
        warmup: args.warmup,
        drop_caches: !args.load_keep_caches,
    })
}

/// The podman image's root: airlock's own default-image skeleton (the same `/etc` allowlist
/// and links) plus airlock's sandbox init at `/.airlock/init` as PID 1, tarred for import.
/// `/usr` is not in it: containers get the host's `/usr` as a volume, as airlock does.
fn podman_rootfs(runtime_root: &Path, scratch: &Path, tarball: &Path) -> Result<()> {
    let staging = scratch.join("podman-rootfs");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(runtime_root.join("images/default/rootfs"))
        .arg(&staging)
        .status()?;
    if !copied.success() {
        bail!("copying airlock's image skeleton failed");
    }
    std::fs::copy(
        runtime_root.join("airlock-init"),
        staging.join(".airlock/init"),
    )
    .context("copying airlock-init")?;
    let tarred = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(&staging)
        .arg("-cf")
        .arg(tarball)
        .arg(".")
        .status()?;
    if !tarred.success() {
        bail!("tarring the podman root filesystem failed");
    }
    host::remove_tree(&staging)
}

fn airlock_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|version| !version.is_empty())
        .map(|version| format!("{version} ({})", binary.display()))
        .unwrap_or_else(|| binary.display().to_string())
}
