//! A create that fails half-way leaves nothing on the host: no mounts, no loop devices, no
//! directories, no cgroups, no libcontainer state.

use airlock_core::ids::{EnvironmentId, Name};
use airlock_core::model::Resources;
use airlock_core::ports::{Runtime, SandboxSpec};
use airlock_runtime::{LocalConfig, LocalRuntime};

unsafe extern "C" {
    fn geteuid() -> u32;
}

#[tokio::test]
async fn a_failed_create_rolls_back_everything() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        eprintln!("SKIPPED a_failed_create_rolls_back_everything: needs root");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("alrb")
        .tempdir_in("/tmp")
        .unwrap();
    // The helper cannot run: creation fails after the overlays are mounted.
    let runtime = LocalRuntime::open(LocalConfig {
        root: dir.path().join("runtime"),
        helper: "/nonexistent/airlock".into(),
        egress: false,
        egress_allow: Vec::new(),
    })
    .unwrap();
    let id = EnvironmentId::generate();
    let spec = SandboxSpec {
        id: id.clone(),
        hostname: Name::parse("name", "doomed").unwrap(),
        image: Name::parse("image", "default").unwrap(),
        resources: Resources {
            memory_mib: 64,
            millicpus: 500,
            pids: 64,
            disk_mib: 256,
        },
        network: Default::default(),
        files: Vec::new(),
    };
    assert!(runtime.create(&spec).await.is_err());

    // Nothing is mounted below the runtime's own mount of `sandboxes/`.
    let sandboxes = dir.path().join("runtime/sandboxes");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| {
            point.starts_with(dir.path().to_str().unwrap()) && *point != sandboxes.to_str().unwrap()
        })
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    // The writable layer's loop device went with its mount.
    for device in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let backing = std::fs::read_to_string(device.path().join("loop/backing_file"));
        assert!(
            !backing.is_ok_and(|file| file.starts_with(dir.path().to_str().unwrap())),
            "{:?} left attached",
            device.file_name()
        );
    }
    assert!(
        !dir.path()
            .join("runtime/sandboxes")
            .join(id.as_str())
            .exists()
    );
    assert!(!dir.path().join("runtime/state").join(id.as_str()).exists());
    assert!(runtime.list().await.unwrap().is_empty());
    let cgroups = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("find /sys/fs/cgroup -name '{id}'"))
        .output()
        .unwrap();
    assert!(cgroups.stdout.is_empty());
    // Released, nothing of the runtime stays mounted.
    runtime.release_host_resources();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.path().to_str().unwrap()),
        "the runtime's own mount stayed"
    );
}
