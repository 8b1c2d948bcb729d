//! Where airlock's time goes, without perf or strace: each layer of the create and exec paths
//! timed on its own, next to the full HTTP round trips measured by the scenarios.
//!
//! From the bottom up: the HTTP floor (`/healthz`), HTTP plus token check and a database read
//! (`GET /v1/environments/{id}`), one durable write on the data directory's filesystem (the
//! floor of each SQLite commit; exec writes one audit record, create writes three), a bare
//! fork+exec on the host, the start of the `airlock` binary as a helper process, the runtime
//! helper (`airlock __runtime …`) doing an exec or a create+start directly, without the server,
//! and the two overlay mounts a create makes. Two kernel costs the helper pays are timed alone:
//! reading `/proc/self/mountinfo` (libcontainer's cgroup v1 code reads it about 14 times per
//! exec, and it grows by two long overlay lines per running sandbox) and moving a process into
//! a v1 cgroup.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::airlock::{Airlock, Server};
use crate::host;
use crate::scenario::System;
use crate::stats::{Report, Samples};

const SYSTEM: &str = "airlock parts";

/// The file descriptor on which the helper reports an exec's status (`STATUS_FD` in
/// `airlock_runtime::helper`).
const STATUS_FD: i32 = 3;

/// Measures every part, `iterations` times each, using `sandbox` (running) for the exec
/// parts and its bundle as the template for direct creates.
pub async fn measure(
    binary: &Path,
    server: &Server,
    sandbox: &str,
    scratch: &Path,
    iterations: usize,
    report: &mut Report,
) -> Result<()> {
    eprintln!("[airlock] breakdown: {iterations} rounds of each part");
    let api: Airlock = server.api();
    let mut client = api.client();

    let mut samples = Samples::new("HTTP GET /healthz");
    for _ in 0..iterations {
        let started = Instant::now();
        api.get(&mut client, "/healthz").await?;
        samples.push(started.elapsed());
    }
    report.add(SYSTEM, samples);

    let mut samples = Samples::new("HTTP GET /v1/environments/{id}");
    let path = format!("/v1/environments/{sandbox}");
    for _ in 0..iterations {
        let started = Instant::now();
        api.get(&mut client, &path).await?;
        samples.push(started.elapsed());
    }
    report.add(SYSTEM, samples);

    let mut samples = Samples::new("write+fsync 4 KiB (data dir)");
    samples.values = host::fsync_probe(scratch, iterations)?;
    report.add(SYSTEM, samples);

    let mut samples = Samples::new("spawn /bin/true on the host");
    for _ in 0..iterations {
        let started = Instant::now();
        let status = Command::new("/bin/true").status()?;
        samples.push(started.elapsed());
        if !status.success() {
            bail!("/bin/true failed: {status}");
        }
    }
    report.add(SYSTEM, samples);

    let mut samples = Samples::new("spawn helper, bad request");
    for _ in 0..iterations {
        let started = Instant::now();
        let output = Command::new(binary)
            .args(["__runtime", "{}"])
            .env_clear()
            .stdin(Stdio::null())
            .output()?;
        samples.push(started.elapsed());
        if output.status.code() != Some(2) {
            bail!(
                "the helper did not refuse an empty request: {}",
                output.status
            );
        }
    }
    report.add(SYSTEM, samples);

    let lines = fs::read_to_string("/proc/self/mountinfo")
        .map(|text| text.lines().count())
        .unwrap_or(0);
    let mut samples = Samples::new(format!("read /proc/self/mountinfo ({lines} lines)"));
    for _ in 0..iterations {
        let started = Instant::now();
        let text = fs::read_to_string("/proc/self/mountinfo")?;
        std::hint::black_box(text.lines().filter_map(|l| l.split(' ').nth(4)).count());
        samples.push(started.elapsed());
    }
    report.add(SYSTEM, samples);

    if let Some(samples) = cgroup_attach(iterations)? {
        report.add(SYSTEM, samples);
    }

    let runtime = server.runtime_root();
    let mut samples = Samples::new("helper exec true, direct");
    for _ in 0..iterations {
        let started = Instant::now();
        helper_exec(binary, &runtime, sandbox)?;
        samples.push(started.elapsed());
    }
    report.add(SYSTEM, samples);

    let (mounts, unmounts) = overlay_mounts(&runtime, scratch, iterations)?;
    report.add(SYSTEM, mounts);
    report.add(SYSTEM, unmounts);

    let samples = direct_creates(binary, &runtime, sandbox, scratch, iterations)?;
    report.add(SYSTEM, samples);
    Ok(())
}

/// Moving a process into a cgroup v1 cgroup (writing its pid to `cgroup.procs`), as every
/// create and exec does for each hierarchy: the first move takes the kernel's
/// `cgroup_threadgroup_rwsem` for writing, which waits for an RCU grace period; moves right
/// after it are fast. Rounds are 50 ms apart so each one pays what an isolated exec pays.
fn cgroup_attach(iterations: usize) -> Result<Option<Samples>> {
    let Some(hierarchy) = ["pids", "freezer", "memory"]
        .iter()
        .map(|name| Path::new("/sys/fs/cgroup").join(name))
        .find(|path| path.join("cgroup.procs").exists())
    else {
        return Ok(None);
    };
    let relative = format!("airlock-bench-{}-attach", std::process::id());
    let cgroup = hierarchy.join(&relative);
    fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    let name = hierarchy.file_name().unwrap_or_default().to_string_lossy();
    let mut samples = Samples::new(format!("move a process to a v1 cgroup ({name})"));
    let outcome = (|| -> Result<()> {
        for _ in 0..iterations {
            let mut child = Command::new("sleep").arg("10").spawn()?;
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            let written = fs::write(cgroup.join("cgroup.procs"), child.id().to_string());
            let elapsed = started.elapsed();
            let _ = child.kill();
            let _ = child.wait();
            written.context("writing cgroup.procs")?;
            samples.push(elapsed);
        }
        Ok(())
    })();
    let stayed = host::remove_cgroup_patiently(&relative, Duration::from_secs(5));
    outcome?;
    if !stayed.is_empty() {
        bail!("the probe cgroup stayed: {stayed:?}");
    }
    Ok(Some(samples))
}

/// Runs `true` in the sandbox through the helper, as the server does: a pipe on fd 3 for the
/// status, pipes for stdio, and an empty environment.
fn helper_exec(binary: &Path, runtime: &Path, sandbox: &str) -> Result<()> {
    let request = json!({
        "op": "exec",
        "state_root": runtime.join("state"),
        "id": sandbox,
        "seccomp": runtime.join("seccomp.bpf"),
        "argv": ["true"],
        "env": {},
        "cwd": null,
        "timeout_ms": 60_000,
    });
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the status pipe");
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = write_end.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .arg("__runtime")
        .arg(request.to_string())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only dup2, async-signal-safe, runs between fork and exec; the copy on fd 3
    // does not have close-on-exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(write_fd, STATUS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().context("running the helper")?;
    drop(write_end);
    let mut status = String::new();
    fs::File::from(read_end).read_to_string(&mut status)?;
    let status: Value = serde_json::from_str(&status)
        .with_context(|| format!("the helper reported {status:?}; {}", output.status))?;
    if status["exit_code"] != 0 || !status["error"].is_null() {
        bail!(
            "direct exec failed: {status}; stderr {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Mounts and unmounts the two overlays of a sandbox root (the image skeleton at `/`, the
/// host's `/usr` at `/usr`) on scratch directories, timing each half.
fn overlay_mounts(runtime: &Path, scratch: &Path, iterations: usize) -> Result<(Samples, Samples)> {
    let skeleton = runtime.join("images/default/rootfs");
    let base = scratch.join("overlays");
    let root = base.join("rootfs");
    let layers = [
        (skeleton.clone(), root.clone(), "0"),
        (PathBuf::from("/usr"), root.join("usr"), "1"),
    ];
    let mut mounts = Samples::new("mount root + /usr overlays");
    let mut unmounts = Samples::new("unmount them");
    let result = (|| -> Result<()> {
        for (_, _, n) in &layers {
            fs::create_dir_all(base.join("upper").join(n))?;
            fs::create_dir_all(base.join("work").join(n))?;
        }
        fs::create_dir_all(&root)?;
        for _ in 0..iterations {
            let started = Instant::now();
            for (lower, target, n) in &layers {
                fs::create_dir_all(target)?;
                let options = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    base.join("upper").join(n).display(),
                    base.join("work").join(n).display()
                );
                mount_overlay(target, &options)?;
            }
            mounts.push(started.elapsed());
            let started = Instant::now();
            for (_, target, _) in layers.iter().rev() {
                unmount(target)?;
            }
            unmounts.push(started.elapsed());
        }
        Ok(())
    })();
    host::unmount_all_under(&base);
    host::remove_tree(&base)?;
    result?;
    Ok((mounts, unmounts))
}

fn mount_overlay(target: &Path, options: &str) -> Result<()> {
    let target_c = std::ffi::CString::new(target.as_os_str().as_bytes())?;
    let options_c = std::ffi::CString::new(options)?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target_c.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NODEV,
            options_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting an overlay on {}", target.display()));
    }
    Ok(())
}

fn unmount(target: &Path) -> Result<()> {
    let target_c = std::ffi::CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target_c.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("unmounting {}", target.display()));
    }
    Ok(())
}

/// Creates and starts sandboxes with the helper alone (`airlock __runtime` create: libcontainer
/// create, loopback up, start), reusing the running `template` sandbox's mounted root and spec
/// with a cgroup path of our own and a state root of our own, and tears each down by hand
/// (SIGKILL its init, remove its cgroups and state) outside the timing.
fn direct_creates(
    binary: &Path,
    runtime: &Path,
    template: &str,
    scratch: &Path,
    iterations: usize,
) -> Result<Samples> {
    let spec_path = runtime
        .join("sandboxes")
        .join(template)
        .join("bundle/config.json");
    let mut spec: Value = serde_json::from_slice(
        &fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )?;
    let cgroup_parent = format!("/airlock-bench-{}", std::process::id());
    let state_root = scratch.join("direct-state");
    fs::create_dir_all(&state_root)?;
    let mut samples = Samples::new("helper create, direct");
    let mut outcome = Ok(());
    for index in 0..iterations {
        let id = format!("direct{index}");
        let bundle = scratch.join("direct-bundles").join(&id);
        fs::create_dir_all(&bundle)?;
        spec["linux"]["cgroupsPath"] = json!(format!("{cgroup_parent}/{id}"));
        fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
        let request = json!({
            "op": "create",
            "state_root": state_root,
            "id": id,
            "bundle": bundle,
            "seccomp": runtime.join("seccomp.bpf"),
        });
        let started = Instant::now();
        let output = Command::new(binary)
            .arg("__runtime")
            .arg(request.to_string())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let elapsed = started.elapsed();
        let torn_down = tear_down(&state_root.join(&id), &format!("{cgroup_parent}/{id}"));
        if !output.status.success() {
            outcome = Err(anyhow::anyhow!(
                "direct create failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            break;
        }
        if let Err(error) = torn_down {
            outcome = Err(error);
            break;
        }
        samples.push(elapsed);
    }
    let stayed = host::remove_cgroup(&cgroup_parent);
    host::remove_tree(&scratch.join("direct-bundles"))?;
    host::remove_tree(&state_root)?;
    outcome?;
    if !stayed.is_empty() {
        bail!("cgroups of direct creates stayed: {stayed:?}");
    }
    Ok(samples)
}

/// Kills a sandbox made by a direct create and removes its cgroups and state directory.
fn tear_down(state_dir: &Path, cgroup: &str) -> Result<()> {
    if let Ok(text) = fs::read(state_dir.join("state.json")) {
        let state: Value = serde_json::from_slice(&text)?;
        match state["pid"].as_i64() {
            Some(pid)
                if !host::signal_and_wait(pid as i32, libc::SIGKILL, Duration::from_secs(5)) =>
            {
                bail!("the init {pid} of a direct create did not die")
            }
            _ => {}
        }
    }
    let stayed = host::remove_cgroup_patiently(cgroup, Duration::from_secs(5));
    if !stayed.is_empty() {
        bail!("cgroups of a direct create stayed: {stayed:?}");
    }
    if state_dir.exists() {
        fs::remove_dir_all(state_dir)?;
    }
    Ok(())
}
