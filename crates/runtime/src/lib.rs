//! Sandbox backends behind the core's `Runtime` port: the local backend (youki's libcontainer,
//! overlayfs on loop-mounted ext4 layers, cgroups, a precompiled seccomp profile) and a fake
//! for tests without root.

mod agent;
mod cgroups;
mod disk;
mod enter;
mod executor;
pub mod fake;
mod files;
pub mod helper;
pub mod image;
mod local;
mod mounts;
pub mod network;
pub mod oci;
mod process_tree;
pub mod seccomp;
mod session;

pub use fake::FakeRuntime;
pub use local::{LocalConfig, LocalRuntime};
