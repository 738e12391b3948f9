//! What every part of the daemon shares: the configuration as it is now (reloadable), the HTTP
//! client and TLS settings, the connection state, the outbox of messages produced away from the
//! session, the restart signal and the upgrade runner; and why the daemon stops.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ConfigSource};
use crate::http::{self, ClientError};
use crate::logbuf::LogBuffer;
use crate::state_dir::StateDir;
use crate::upgrade::context::Context;
use crate::upgrade::error::UpgradeError;
use crate::upgrade::runner::Runner;
use edge_agent_base::build_info::version_str;
use edge_agent_wire::message::Envelope;

/// Why the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT: the socket was closed cleanly.
    Shutdown,
    /// A new binary is installed: start it (the supervisor does).
    Restart,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("state directory {path}")]
    StateDir { path: std::path::PathBuf, source: std::io::Error },
}

/// Connection state, for `agent:stats` and `agent status`.
#[derive(Debug, Clone)]
pub struct Link {
    pub connected: bool,
    pub since: SystemTime,
}

/// What every part of the daemon shares.
pub struct Shared {
    pub source: ConfigSource,
    config: RwLock<Arc<Config>>,
    pub logs: LogBuffer,
    pub http: reqwest::Client,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub started: Instant,
    pub reconnects: std::sync::atomic::AtomicU64,
    pub link: Mutex<Link>,
    /// Messages produced away from the session (upgrade results); sent once the agent is live.
    pub outbox: mpsc::Sender<Envelope>,
    /// Cancelled when the installed binary has been replaced and the process must restart.
    pub restart: CancellationToken,
    pub runner: Arc<Runner>,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Re-reads the configuration; on error the running one stays. The proxies stay as the HTTP
    /// client was built with them, so that every request keeps one route until a restart.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let mut fresh = self.source.load()?;
        let running = self.config();
        if fresh.proxy != running.proxy {
            tracing::warn!("the proxy settings changed: they take effect when the agent restarts");
            fresh.proxy = running.proxy.clone();
        }
        *self.config.write().unwrap() = Arc::new(fresh);
        Ok(())
    }

    /// What the upgrade pipeline needs, from the configuration as it is now.
    pub fn upgrade_context(&self) -> Result<Arc<Context>, UpgradeError> {
        Context::new(self.http.clone(), &self.config()).map(Arc::new)
    }

    /// Records a connection change, in memory and in `status.json` for `agent status`.
    pub fn set_link(&self, connected: bool) {
        let link = {
            let mut link = self.link.lock().unwrap();
            if link.connected == connected {
                return;
            }
            *link = Link { connected, since: SystemTime::now() };
            link.clone()
        };
        let cfg = self.config();
        crate::notify::notify(&if connected {
            format!("STATUS=connected to {}", cfg.ws_url())
        } else {
            format!("STATUS=disconnected from {}, reconnecting", cfg.ws_url())
        });
        self.write_status(&link);
    }

    /// `status.json` in the state directory: this daemon's pid (and when it started, which tells it
    /// from a later process with the same pid), binary and connection state.
    pub fn write_status(&self, link: &Link) {
        let cfg = self.config();
        let ws_url = cfg.ws_url();
        let route = cfg.proxy.route(&ws_url);
        let status = serde_json::json!({
            "pid": std::process::id(),
            "pid_started": crate::platform::started(std::process::id()),
            "version": version_str(),
            "binary": crate::upgrade::install::installed_path().ok(),
            "server": cfg.base_url.as_str(),
            "proxy": crate::proxy::in_use(route),
            "route": route.to_string(),
            "connected": link.connected,
            "since": edge_agent_base::time::iso8601(link.since),
        });
        let path = StateDir::new(&cfg.state_dir).status();
        if let Err(e) = edge_agent_base::fs::write_atomic(&path, status.to_string().as_bytes()) {
            tracing::warn!(path = %path.display(), "cannot write the status file: {e}");
        }
    }
}

/// Builds the shared state: an HTTP client (TLS only when an `https` URL needs it), the state
/// directory.
pub fn prepare(
    source: ConfigSource,
    config: Config,
    logs: LogBuffer,
) -> Result<(Arc<Shared>, mpsc::Receiver<Envelope>), AgentError> {
    let (http, tls) = http::client(&config)?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| AgentError::StateDir { path: config.state_dir.clone(), source })?;
    let (outbox, outbox_rx) = mpsc::channel(64);
    let shared = Shared {
        source,
        config: RwLock::new(Arc::new(config)),
        logs,
        http,
        tls,
        started: Instant::now(),
        reconnects: Default::default(),
        link: Mutex::new(Link { connected: false, since: SystemTime::now() }),
        outbox,
        restart: CancellationToken::new(),
        runner: Arc::default(),
    };
    Ok((Arc::new(shared), outbox_rx))
}
