//! The operator's commands on the host: [`status`], [`rollback`], [`check_config`], the client
//! side of [`upgrade`], [`service`] (Windows) and [`release`] (publishing). They read the agent's
//! state directory (status file, journal, history, previous binary) and build only what they use;
//! none needs the daemon to be running, and each says plainly when something is missing.

pub mod check_config;
pub mod release;
pub mod rollback;
pub mod service;
pub mod status;
pub mod upgrade;

use std::path::{Path, PathBuf};

use semver::Version;
use serde_json::Value;

use crate::state_dir::StateDir;
use crate::upgrade::error::UpgradeError;
use crate::upgrade::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no previous binary at {0}: nothing to roll back to (one is kept by each upgrade)")]
    NoPrevious(PathBuf),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error("cannot update the upgrade journal")]
    Journal(#[from] StoreError),
    #[error("the token endpoint refused or failed")]
    Token(#[source] crate::daemon::token::TokenError),
    #[error(transparent)]
    Client(#[from] crate::http::ClientError),
    #[error(transparent)]
    Socket(#[from] crate::daemon::session::SocketError),
    #[error("{0}")]
    Refused(String),
    #[error("the daemon: {0}")]
    Daemon(String),
    #[error(transparent)]
    Service(#[from] crate::platform::ServiceError),
}

/// The version a binary reports, if it runs.
fn version_of(binary: &Path) -> Option<Version> {
    let out = std::process::Command::new(binary).args(["version", "--json"]).output().ok()?;
    let reported = serde_json::from_slice::<Value>(&out.stdout).ok()?;
    edge_agent_wire::parse_version(reported["version"].as_str()?).ok()
}

/// The daemon's status file, if the daemon that wrote it still runs: its pid runs a process
/// that started when the daemon did (a daemon that died leaves its pid to be reused; a file
/// from a version that did not write the start is taken at the pid's word).
fn daemon(state: &StateDir) -> Option<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(state.status()).ok()?).ok()?;
    let pid = u32::try_from(v["pid"].as_u64()?).ok()?;
    let started = crate::platform::started(pid)?;
    match v["pid_started"].as_u64() {
        Some(recorded) if recorded != started => None,
        _ => Some(v),
    }
}

/// The pid of the running daemon, if one runs.
pub fn daemon_pid(state: &StateDir) -> Option<u32> {
    daemon(state).and_then(|d| d["pid"].as_u64()).map(|p| p as u32)
}

/// The installed binary: as the running daemon reported it, else this command's own.
fn installed(state: &StateDir) -> PathBuf {
    daemon(state)
        .and_then(|d| d["binary"].as_str().map(PathBuf::from))
        .or_else(|| crate::upgrade::install::installed_path().ok())
        .unwrap_or_else(|| PathBuf::from("agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file naming this test's own process: running, and started when it did.
    #[test]
    fn a_status_file_names_the_daemon_only_while_its_process_runs() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let pid = std::process::id();
        let started = crate::platform::started(pid).expect("this process runs");
        let write = |v: Value| std::fs::write(state.status(), v.to_string()).unwrap();

        write(serde_json::json!({"pid": pid, "pid_started": started}));
        assert_eq!(daemon_pid(&state), Some(pid));
        // A daemon that died left its pid to a process started at another time.
        write(serde_json::json!({"pid": pid, "pid_started": started + 1}));
        assert_eq!(daemon_pid(&state), None);
        // A status file written before the start was recorded: the pid's word.
        write(serde_json::json!({"pid": pid}));
        assert_eq!(daemon_pid(&state), Some(pid));
        // No such process, and a pid that is not one.
        write(serde_json::json!({"pid": u32::MAX - 1}));
        assert_eq!(daemon_pid(&state), None);
        write(serde_json::json!({"pid": u64::MAX}));
        assert_eq!(daemon_pid(&state), None);
    }
}
