//! The binaries under test: the agent and the server as `cargo build --bins` leaves them (built
//! here when they are older than their sources), the server built with the release profile (as
//! users run it, for the tests of its limits), and the agent built a second time as the next
//! version, for upgrades between two genuinely different builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The binaries under test, where `cargo build --bins` leaves them beside this crate's build (see
/// `build.rs`).
const AGENT: &str = concat!(env!("EDGE_AGENT_BIN_DIR"), "/agent");
const SERVER: &str = concat!(env!("EDGE_AGENT_BIN_DIR"), "/agent-server");

/// The `agent` binary under test, built and newer than its sources.
pub fn agent_bin() -> &'static str {
    binaries_built();
    AGENT
}

/// The `agent-server` binary under test, built and newer than its sources.
pub fn server_bin() -> &'static str {
    binaries_built();
    SERVER
}

/// `cargo test` builds no binary of another package, and these tests run the agent's and the
/// server's: once per test run, when either is missing or older than a source file of the
/// crates it is built from, they are built here (cargo's build lock is free while tests run).
/// `.ci/run` builds them first, so there this only looks.
fn binaries_built() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let newest = newest_source(&["base", "wire", "release", "agent", "server"]);
        if [AGENT, SERVER].iter().all(|b| built(Path::new(b)).is_some_and(|t| Some(t) >= newest)) {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--bins", "-p", "edge-agent", "-p", "edge-agent-server"])
            // As the sources' own version, which the tests expect them to report.
            .env_remove("EDGE_AGENT_VERSION")
            .current_dir(WORKSPACE)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the binaries under test failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// When the newest source file of these crates (or `Cargo.lock`) was last changed.
fn newest_source(crates: &[&str]) -> Option<std::time::SystemTime> {
    let dir = Path::new(WORKSPACE).join("crates");
    let lock = newest_file(&Path::new(WORKSPACE).join("Cargo.lock"));
    crates.iter().map(|c| newest_file(&dir.join(c))).chain([lock]).max().flatten()
}

/// When `bin` was built, if it was.
fn built(bin: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(bin).and_then(|m| m.modified()).ok()
}

/// When the newest file under `path` (itself, if a file) was last changed.
fn newest_file(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|e| newest_file(&e.path())).max()
}
/// `agent-server` built with the release profile, as users run it (`target/release/agent-server`):
/// built once per test run by `cargo build --release`, which finds it up to date when it is.
/// Never through a compiler wrapper that `.ci/run` lints the other builds with (clippy-driver
/// turns some of rustc's optimisations off): it is built as a user builds it, there too.
pub fn release_server_bin() -> &'static str {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "-p", "edge-agent-server", "--bin", "agent-server"])
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .env_remove("EDGE_AGENT_VERSION")
            .current_dir(WORKSPACE)
            .output()
            .unwrap();
        assert!(out.status.success(), "building the release server failed:\n{}", String::from_utf8_lossy(&out.stderr));
        Path::new(env!("EDGE_AGENT_TARGET_DIR")).join("release").join("agent-server").display().to_string()
    })
}

/// The workspace's root directory, for its scripts and packaging files.
pub const WORKSPACE: &str = env!("EDGE_AGENT_WORKSPACE");
/// Scratch space for the tests inside the target directory (`target/tmp`).
pub fn scratch_dir() -> PathBuf {
    Path::new(env!("EDGE_AGENT_TARGET_DIR")).join("tmp")
}

/// The version a second, genuinely different build of the agent reports.
pub fn next_version() -> String {
    let v = edge_agent_base::build_info::version();
    format!("{}.{}.0", v.major, v.minor + 1)
}

/// Where `.ci/run` leaves the agent built as [`next_version`]: it builds it in the main target
/// directory before the binaries under test, so that their dependencies are built once for both.
pub const PREBUILT_NEXT: &str = concat!(env!("EDGE_AGENT_TARGET_DIR"), "/next/agent");

/// The agent built a second time, as [`next_version`]: a real build, done once per test run. The
/// one `.ci/run` made ([`PREBUILT_NEXT`]) while it is newer than the agent's sources; else one in
/// its own target directory (cargo keeps it up to date between runs).
pub fn next_build() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let prebuilt = Path::new(PREBUILT_NEXT);
        let fresh = built(prebuilt).is_some_and(|t| Some(t) >= newest_source(&["base", "wire", "release", "agent"]));
        // One built for another version (the workspace's changed since) is built again.
        if fresh && reported_version(prebuilt).as_deref() == Some(next_version().as_str()) {
            return prebuilt.to_path_buf();
        }
        let bin = build_next();
        assert_eq!(reported_version(&bin), Some(next_version()), "the second build reports its own version");
        bin
    })
}

/// The version an agent binary reports.
fn reported_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).args(["version", "--json"]).output().ok()?;
    let reported: Value = serde_json::from_slice(&out.stdout).ok()?;
    reported["version"].as_str().map(str::to_owned)
}

/// The agent built as [`next_version`] in a target directory of its own; its binary.
fn build_next() -> PathBuf {
    let target = scratch_dir().join("next-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "edge-agent", "--bin", "agent", "--target-dir"])
        .arg(&target)
        .current_dir(WORKSPACE)
        .env("EDGE_AGENT_VERSION", next_version())
        .output()
        .unwrap();
    assert!(out.status.success(), "building the next version failed:\n{}", String::from_utf8_lossy(&out.stderr));
    target.join("debug").join("agent")
}
