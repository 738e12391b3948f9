//! The files of the agent's state directory, named in one place: the daemon writes some, the
//! host commands and the supervisor read them.

use std::path::{Path, PathBuf};

/// The agent's state directory (`state_dir` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir(path.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// The upgrade journal (protocol.md §3.3).
    pub fn journal(&self) -> PathBuf {
        self.0.join("upgrade.json")
    }
    /// The last upgrade results.
    pub fn history(&self) -> PathBuf {
        self.0.join("history.json")
    }
    /// Held while a process reads, changes and writes the journal or the history.
    pub fn lock(&self) -> PathBuf {
        self.0.join("upgrade.lock")
    }
    /// The daemon's pid, binary and connection, for `agent status`.
    pub fn status(&self) -> PathBuf {
        self.0.join("status.json")
    }
    /// The daemon's control socket, for `agent upgrade` on the host.
    pub fn control_socket(&self) -> PathBuf {
        self.0.join("control.sock")
    }
    /// An offline bundle received on the control socket, while its upgrade runs.
    pub fn incoming_bundle(&self) -> PathBuf {
        self.0.join("bundle.incoming")
    }
    /// The binary that ran before the last upgrade, kept for rollback.
    pub fn previous_binary(&self) -> PathBuf {
        self.0.join("previous").join(format!("agent{}", std::env::consts::EXE_SUFFIX))
    }
}
