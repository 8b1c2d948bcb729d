//! `airlock-bench`: measures airlock's create->ready, exec and delete latencies through its
//! HTTP API, breaks airlock's time down by layer, and does the same work with podman's REST API
//! on the same machine in the same run; prints one table (and optionally writes JSON).
//!
//! Everything runs against 127.0.0.1 and unix sockets, in a scratch directory that is removed
//! at the end, with every sandbox deleted through its own API before its server stops. There
//! are no timing assertions anywhere: this measures, it does not judge.

mod airlock;
mod breakdown;
mod host;
mod http;
mod podman;
mod scenario;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::podman::UsrMode;
use crate::scenario::Plan;
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
    let mut context = vec![format!("airlock: {}", airlock_version(&binary))];
    let outcome = measure_all(&args, &binary, &plan, &scratch, &mut report, &mut context).await;

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
    println!();
    print!("{}", report.table());
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
            },
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report.to_json(context))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    outcome
}

/// airlock, then podman with each runtime; stops at the first failure or on Ctrl-C, always
/// cleaning up the system it was measuring.
async fn measure_all(
    args: &Args,
    binary: &Path,
    plan: &Plan,
    scratch: &Path,
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
    let tarball = scratch.join("rootfs.tar");
    let prepared = if args.skip_podman {
        Ok(())
    } else {
        podman_rootfs(&server.runtime_root(), scratch, &tarball)
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
    measured.context("measuring airlock")?;

    if args.skip_podman {
        return Ok(());
    }
    let usr = match args.podman_usr {
        UsrArg::Overlay => UsrMode::Overlay,
        UsrArg::Bind => UsrMode::Bind,
    };
    for runtime in &args.podman_runtimes {
        let runtime = runtime.as_str();
        let dir = scratch.join(format!("podman-{runtime}"));
        let log = scratch.join(format!("podman-{runtime}.log"));
        let mut service = podman::Service::start(runtime, &dir, Path::new(PODMAN_SOCKET), &log)
            .await
            .with_context(|| format!("starting podman with {runtime}"))?;
        let measured = async {
            let version = service.versions().await?;
            eprintln!("[podman ({runtime})] {version}");
            context.push(format!("podman ({runtime}): {version}"));
            service.import_image(&tarball).await?;
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
        measured.with_context(|| format!("measuring podman with {runtime}"))?;
    }
    Ok(())
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
