//! `agent service install|uninstall|start|stop`: the agent as a Windows service, through
//! [`crate::platform::service`] (on Unix it says to use the systemd unit instead). The
//! configuration is checked before a service is registered with it.

use std::path::{Path, PathBuf};

use super::HostError;
use crate::config::{ConfigSource, RawConfig};
use crate::platform::{self, service};

/// The log file of a service running with `state_dir` (`agent run --log-file`).
pub fn log_file(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.log")
}

fn source(config: Option<PathBuf>) -> ConfigSource {
    ConfigSource::new(config, std::env::vars(), RawConfig::default())
}

/// Registers this binary, where it is, as the service `name` running with `config`.
pub fn install(config: Option<PathBuf>, name: &str) -> Result<String, HostError> {
    let source = source(config);
    source.load()?;
    let binary = crate::upgrade::install::installed_path()
        .map_err(|e| HostError::Refused(format!("cannot locate this binary: {e}")))?;
    let config = std::path::absolute(&source.path).unwrap_or(source.path);
    Ok(service::install(name, &binary, &config)?)
}

/// Starts the service `name`; if it stops at once, the error names its log file.
pub fn start(config: Option<PathBuf>, name: &str) -> Result<String, HostError> {
    let state = source(config).load().ok().map(|c| c.state_dir);
    Ok(service::start(name, &log_file(&state.unwrap_or_else(platform::default_state_dir)))?)
}

pub fn stop(name: &str) -> Result<String, HostError> {
    Ok(service::stop(name)?)
}

pub fn uninstall(name: &str) -> Result<String, HostError> {
    Ok(service::uninstall(name)?)
}
