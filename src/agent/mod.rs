//! The agent daemon: keeps one WebSocket to the control server ([`session`]), answers its
//! requests ([`handlers`]) and runs upgrades ([`crate::upgrade`]). [`run`] is the whole daemon;
//! the binary only parses flags, loads the config and sets up logging.

pub mod handlers;
pub mod session;
pub mod token;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ConfigSource};
use crate::logbuf::LogBuffer;
use crate::protocol::Envelope;
use crate::tls::{self, TlsError};
use crate::upgrade::Upgrader;

/// The version this binary was built as.
pub const VERSION: &str = env!("EDGE_AGENT_VERSION");
/// The target triple this binary was built for.
pub const TARGET: &str = env!("EDGE_AGENT_TARGET");
/// The commit this binary was built from.
pub const COMMIT: &str = env!("EDGE_AGENT_COMMIT");

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
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("state directory {path}: {source}")]
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
    pub upgrader: Upgrader,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap().clone()
    }

    /// Re-reads the configuration; on error the running one stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = self.source.load()?;
        *self.config.write().unwrap() = Arc::new(fresh);
        Ok(())
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

    /// `status.json` in the state directory: this daemon's pid, binary and connection state.
    pub fn write_status(&self, link: &Link) {
        let cfg = self.config();
        let status = serde_json::json!({
            "pid": std::process::id(),
            "version": VERSION,
            "binary": crate::upgrade::install::installed_path().ok(),
            "server": cfg.base_url.as_str(),
            "connected": link.connected,
            "since": crate::util::iso8601(link.since),
        });
        let path = cfg.state_dir.join(STATUS_FILE);
        if let Err(e) = crate::util::write_atomic(&path, status.to_string().as_bytes()) {
            tracing::warn!(path = %path.display(), "cannot write the status file: {e}");
        }
    }
}

/// The daemon's status file in the state directory.
pub const STATUS_FILE: &str = "status.json";

/// Builds the shared state: TLS only when an `https` URL needs it, an HTTP client, the state
/// directory.
pub fn prepare(
    source: ConfigSource,
    config: Config,
    logs: LogBuffer,
) -> Result<(Arc<Shared>, mpsc::Receiver<Envelope>), AgentError> {
    let needs_tls =
        config.base_url.scheme() == "https" || config.releases_url.as_ref().is_some_and(|u| u.scheme() == "https");
    let tls = if needs_tls || config.ca_file.is_some() {
        Some(tls::client_config(true, config.ca_file.as_deref())?)
    } else {
        None
    };
    let http_tls = match &tls {
        Some(t) => (**t).clone(),
        None => (*tls::client_config(false, None)?).clone(),
    };
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(http_tls)
        .connect_timeout(std::time::Duration::from_secs(4))
        .user_agent(format!("edge-agent/{VERSION}"))
        .build()?;
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
        upgrader: Upgrader::default(),
    };
    Ok((Arc::new(shared), outbox_rx))
}

/// Runs the daemon until shutdown, or until an installed upgrade needs a restart.
pub async fn run(shared: Arc<Shared>, outbox: mpsc::Receiver<Envelope>, shutdown: CancellationToken) -> Exit {
    let cfg = shared.config();
    tracing::info!(
        version = VERSION,
        target = TARGET,
        agent_id = %cfg.agent_id,
        server = %cfg.base_url,
        releases = cfg.releases_url.as_ref().map(|u| u.as_str()).unwrap_or("none"),
        "edge-agent starting"
    );
    shared.write_status(&shared.link.lock().unwrap().clone());
    // Ready once the loop runs, not once the server answers: a host that boots while the server
    // is down must not fail its unit.
    crate::notify::notify(&format!("READY=1\nSTATUS=connecting to {}", cfg.ws_url()));
    tokio::spawn(crate::notify::watchdog());
    tokio::spawn(crate::control::serve(shared.clone()));
    if cfg.trusted_keys.is_empty() {
        tracing::warn!("no trusted_keys configured: releases are checked by sha256 only, not by signature");
    }
    session::run(shared, outbox, shutdown).await
}
