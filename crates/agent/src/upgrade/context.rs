//! What the pipeline needs from its caller (the daemon, or `agent upgrade` on the host), and
//! nothing more: the HTTP client, the release source and trusted keys, the local policy, the
//! state directory and the installed binary.

use std::path::{Path, PathBuf};

use reqwest::Url;

use super::error::UpgradeError;
use super::{decide, install, store};
use crate::config::{Config, ReleaseTrust};
use crate::state_dir::StateDir;

/// What one upgrade works with.
#[derive(Debug, Clone)]
pub struct Context {
    pub http: reqwest::Client,
    pub releases: Option<Url>,
    /// Which releases may be installed (signed by a trusted key, or unsigned when allowed).
    pub trust: ReleaseTrust,
    pub policy: decide::Policy,
    pub store: store::Store,
    /// The installed binary, which the swap replaces.
    pub installed: PathBuf,
}

impl Context {
    /// The context for `config`, replacing this process's own executable.
    pub fn new(http: reqwest::Client, config: &Config) -> Result<Context, UpgradeError> {
        Ok(Context {
            http,
            releases: config.releases_url.clone(),
            trust: config.trust.clone(),
            policy: decide::Policy { allow_downgrade: config.allow_downgrade },
            store: store::Store::new(StateDir::new(&config.state_dir)),
            installed: install::installed_path().map_err(UpgradeError::Installed)?,
        })
    }

    /// The directory of the installed binary, where downloads are staged (same filesystem).
    pub fn install_dir(&self) -> &Path {
        self.installed.parent().unwrap_or(Path::new("/"))
    }
}
