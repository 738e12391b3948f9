//! The messages of the daemon's control socket: `agent upgrade` on the host (the client) asks the
//! running daemon (the server) to upgrade and follows it. One JSON object per line each way.

use semver::Version;
use serde::{Deserialize, Serialize};

/// The host's request: a version, or none for the latest. With `bundle`, the upgrade comes from an
/// offline bundle of that many bytes, which follow the request's line on the socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpgradeAsk {
    pub version: Option<Version>,
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<u64>,
}

/// The largest bundle the daemon accepts on its control socket.
pub const MAX_BUNDLE: u64 = 4 << 30;

/// What the daemon says while and after it works: any number of `progress`, then one of the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Said {
    Progress {
        bytes: u64,
        total: Option<u64>,
    },
    /// Nothing to do: the running version.
    UpToDate(Version),
    /// The new version is in place; the daemon restarts into it now.
    Installed(Version),
    Error(String),
}

impl Said {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("control messages serialize");
        s.push('\n');
        s
    }
}
