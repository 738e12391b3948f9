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
        let crates = Path::new(WORKSPACE).join("crates");
        let newest = ["base", "wire", "release", "agent", "server"]
            .iter()
            .map(|c| newest_file(&crates.join(c)))
            .chain([newest_file(&Path::new(WORKSPACE).join("Cargo.lock"))])
            .max()
            .flatten();
        let built = |b: &str| std::fs::metadata(b).and_then(|m| m.modified()).ok();
        if [AGENT, SERVER].iter().all(|b| built(b).is_some_and(|t| Some(t) >= newest)) {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--bins", "-p", "edge-agent", "-p", "edge-agent-server"])
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
pub fn release_server_bin() -> &'static str {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "-p", "edge-agent-server", "--bin", "agent-server"])
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

/// The agent built a second time, as [`next_version`]: a real build, in its own target directory,
/// done once per test run (cargo keeps it up to date between runs).
pub fn next_build() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
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
        let bin = target.join("debug").join("agent");
        let v = Command::new(&bin).args(["version", "--json"]).output().unwrap();
        let reported: Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!(reported["version"], next_version().as_str(), "the second build reports its own version");
        bin
    })
}
