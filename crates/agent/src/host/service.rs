//! `agent service install|uninstall|start|stop`: the agent as a Windows service, through
//! [`crate::platform::service`] (on Unix it says to use the systemd unit instead). The
//! configuration is checked before a service is registered with it.

use std::path::{Path, PathBuf};

use super::HostError;
use crate::config::{ConfigSource, RawConfig};
use crate::platform::{self, service, DEFAULT_SERVICE_NAME};

/// `agent service …`, as the command line gives it.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Register this binary, where it is, as a service running `agent run` (starts with Windows,
    /// restarts on failure); the configuration is checked first
    Install {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
        name: String,
    },
    /// Stop the service if it runs, and remove it
    Uninstall {
        #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
        name: String,
    },
    /// Start the service and wait until it runs
    Start {
        /// The service's configuration, to name its log file if it fails to start
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
        name: String,
    },
    /// Stop the service (the agent and its worker stop cleanly) and wait until it has
    Stop {
        #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
        name: String,
    },
    /// Internal: what the service control manager starts
    #[command(hide = true)]
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_SERVICE_NAME)]
        name: String,
    },
}

/// Runs one of the operator's service commands (`run` is the service itself: the binary's).
pub fn command(cmd: ServiceCommand) -> Result<String, HostError> {
    match cmd {
        ServiceCommand::Install { config, name } => install(config, &name),
        ServiceCommand::Uninstall { name } => uninstall(&name),
        ServiceCommand::Start { config, name } => start(config, &name),
        ServiceCommand::Stop { name } => stop(&name),
        ServiceCommand::Run { .. } => {
            Err(HostError::Refused("`agent service run` is started by the service control manager".into()))
        }
    }
}

/// The log file of a service running with `state_dir` (`agent run --log-file`).
pub fn log_file(state_dir: &Path) -> PathBuf {
    state_dir.join("agent.log")
}

fn source(config: Option<PathBuf>) -> ConfigSource {
    ConfigSource::new(config, std::env::vars(), RawConfig::default())
}

/// Registers this binary, where it is, as the service `name` running with `config`.
pub fn install(config: Option<PathBuf>, name: &str) -> Result<String, HostError> {
    service::available()?;
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
