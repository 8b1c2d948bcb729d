//! Builds the sandbox init (`init/airlock-init.rs`) as a small static executable, embedded into
//! the runtime with `include_bytes!` and installed into the data directory at start.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "init/airlock-init.rs";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--target",
            &target,
        ])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
        ])
        .arg("-o")
        .arg(out.join("airlock-init"))
        .arg(source)
        .status()
        .expect("run rustc for the sandbox init");
    assert!(status.success(), "building the sandbox init failed");
}
