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

/// The daemon's status file, if the daemon that wrote it still runs.
fn daemon(state: &StateDir) -> Option<Value> {
    let v: Value = serde_json::from_slice(&std::fs::read(state.status()).ok()?).ok()?;
    v["pid"].as_u64().filter(|p| crate::platform::alive(*p as u32)).map(|_| v)
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
