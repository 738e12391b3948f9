//! The server's configuration: its flags (each also before or after a subcommand, some from the
//! environment), validated once into a [`ServerConfig`]; a bad value is one clear error naming the
//! flag, and the binary exits with code 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::StoreConfig;

/// Exit code for a configuration error (EX_USAGE of sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// The server's options; each works before or after a subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Address to listen on (port 0: any free port, printed at start)
    #[arg(long, global = true, env = "AGENT_SERVER_LISTEN", default_value = "127.0.0.1:8103")]
    pub listen: SocketAddr,
    /// Data directory of the embedded SQLite database (unused with --database)
    #[arg(long, global = true, env = "AGENT_SERVER_DATA", default_value = "/var/lib/edge-agent-server")]
    pub data: PathBuf,
    /// Store everything in this PostgreSQL database instead of SQLite (postgres://user:pass@host/db)
    #[arg(long, global = true, env = "AGENT_SERVER_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Join the other nodes sharing this Redis (redis://host:6379/0), for several nodes behind a
    /// load balancer; requires --database
    #[arg(long, global = true, env = "AGENT_SERVER_REDIS", hide_env_values = true)]
    pub redis: Option<String>,
    /// Seconds an agent stays "connected" after the node holding its socket stopped renewing it
    #[arg(long, global = true, default_value_t = 30)]
    pub presence_ttl: u64,
    /// Lifetime of issued access tokens, in seconds
    #[arg(long, global = true, default_value_t = 3600)]
    pub token_ttl: u64,
    /// Seconds between the server's heartbeats to each agent
    #[arg(long, global = true, default_value_t = 10.0)]
    pub heartbeat_interval: f64,
    /// A release directory (as `agent release publish` lays out) to serve at /releases/; `agent
    /// add` trusts the keys it records (keys/*.pub) and points agents at it
    #[arg(long, global = true)]
    pub releases: Option<PathBuf>,
    /// The public key releases are signed with (minisign.pub, or its key line), written by `agent
    /// add` into the agent's trusted_keys; repeatable; default: the keys in --releases
    #[arg(long, global = true, value_name = "FILE|KEY")]
    pub release_key: Vec<String>,
    /// Also serve /metrics without a token on this address (for a scraper on a private network)
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Lifetime of a web page session after sign-in, in seconds
    #[arg(long, global = true, default_value_t = 28800)]
    pub session_ttl: u64,
    /// The URL clients reach this server at: for absolute links in search results (default: from
    /// each request's Host and X-Forwarded-Proto headers), and the URL `agent add` writes into
    /// the agent's configuration (default there: http://127.0.0.1:8103/)
    #[arg(long, global = true)]
    pub base_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the data lives: SQLite in a directory (the default), or PostgreSQL.
    pub store: StoreConfig,
    /// Redis, joining this node to the others that share it and the store.
    pub redis: Option<String>,
    /// How long an agent stays "connected" when the node holding its socket stops renewing it.
    pub presence_ttl: Duration,
    pub token_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub max_message_bytes: usize,
    /// A release directory served at `/releases/`, if any.
    pub releases: Option<PathBuf>,
    /// A second address that serves `/metrics` without a token, for a scraper on a private network.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a web page session lasts after sign-in.
    pub session_ttl: Duration,
    /// The public base URL (ending in `/`) for absolute links; else from each request's headers.
    pub base_url: Option<String>,
}

impl Flags {
    /// Where the data lives: PostgreSQL with `--database`, else SQLite in `--data`.
    pub fn store(&self) -> StoreConfig {
        match &self.database {
            Some(url) => StoreConfig::Postgres(url.clone()),
            None => StoreConfig::Sqlite(self.data.clone()),
        }
    }

    /// The one place the flags become a [`ServerConfig`]; the error names the flag.
    pub fn validate(&self) -> Result<ServerConfig, String> {
        if !(self.heartbeat_interval.is_finite() && self.heartbeat_interval > 0.0) {
            return Err("--heartbeat-interval must be a positive number of seconds".into());
        }
        let base_url =
            self.base_url.as_deref().map(normalize_base_url).transpose().map_err(|why| format!("--base-url: {why}"))?;
        if self.redis.is_some() && self.database.is_none() {
            return Err("--redis needs --database: nodes joined by Redis must share one PostgreSQL database".into());
        }
        if self.presence_ttl < 3 {
            return Err("--presence-ttl must be at least 3 seconds".into());
        }
        Ok(ServerConfig {
            base_url,
            listen: self.listen,
            store: self.store(),
            redis: self.redis.clone(),
            presence_ttl: Duration::from_secs(self.presence_ttl),
            token_ttl: Duration::from_secs(self.token_ttl.max(1)),
            heartbeat_interval: Duration::from_secs_f64(self.heartbeat_interval),
            max_message_bytes: edge_agent_wire::message::DEFAULT_MAX_MESSAGE_BYTES,
            releases: self.releases.clone(),
            metrics_listen: self.metrics_listen,
            session_ttl: Duration::from_secs(self.session_ttl.max(1)),
        })
    }
}

/// `https://host/prefix` → `https://host/prefix/`; only http and https URLs.
fn normalize_base_url(raw: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw:?} must be an http:// or https:// URL with a host"));
    }
    let text = url.to_string();
    Ok(if text.ends_with('/') { text } else { format!("{text}/") })
}
