//! The agent's local configuration: parsed raw from a TOML file (or a Medplum `agent.properties`),
//! environment variables and flags, in that order of precedence, then validated once into a
//! [`Config`]. A bad value is one [`ConfigError`] naming the key; the binary exits with code 64.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

mod local;
mod trust;
pub use local::Local;
pub use trust::{ReleaseTrust, WHAT_TO_ADD};

/// Every key, as written in the file, with or without a value: the layer that flags, environment
/// and file fill in turn.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Control server base URL, e.g. https://api.example.com/
    #[arg(long)]
    pub base_url: Option<String>,
    /// OAuth client id of this agent's credentials
    #[arg(long)]
    pub client_id: Option<String>,
    /// OAuth client secret (prefer the file or EDGE_AGENT_CLIENT_SECRET: flags show in `ps`)
    #[arg(long, hide = true)]
    pub client_secret: Option<String>,
    /// Id of this agent's Agent resource on the server
    #[arg(long)]
    pub agent_id: Option<String>,
    /// Directory for the agent's own state (upgrade journal, previous binary, history)
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Log format: text or json
    #[arg(long)]
    pub log_format: Option<String>,
    /// Seconds between heartbeats (default 10)
    #[arg(long)]
    pub heartbeat_interval: Option<f64>,
    /// Smallest reconnect delay in seconds (default 1)
    #[arg(long)]
    pub reconnect_min_delay: Option<f64>,
    /// Largest reconnect delay in seconds (default 10)
    #[arg(long)]
    pub reconnect_max_delay: Option<f64>,
    /// Extra PEM CA certificate(s) to trust besides the system's roots
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Base URL of the release source (latest.json, v<version>.json); upgrades need it
    #[arg(long)]
    pub releases_url: Option<String>,
    /// Trusted minisign public keys (base64 lines): releases must be signed by one of them
    #[arg(long = "trusted-key")]
    #[serde(default)]
    pub trusted_keys: Option<Vec<String>>,
    /// Install releases without a signature when no trusted key is set (default false: refused)
    #[arg(long)]
    pub allow_unsigned: Option<bool>,
    /// Whether an explicit older version may be installed (default true)
    #[arg(long)]
    pub allow_downgrade: Option<bool>,
    /// Seconds a new version has to connect before it is rolled back (default 120)
    #[arg(long)]
    pub health_window: Option<f64>,
    /// Largest message accepted from the server, in bytes (default 1 MiB)
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// HTTP proxy for everything the agent sends (wins over HTTPS_PROXY and the others; "" for none)
    #[arg(long)]
    pub proxy_url: Option<String>,
    /// Hosts reached without the proxy, as NO_PROXY (wins over NO_PROXY)
    #[arg(long)]
    pub no_proxy: Option<String>,
    /// File holding the proxy's Basic credentials as user:password (wins over the proxy URL's)
    #[arg(long)]
    pub proxy_auth: Option<PathBuf>,
    /// The standard proxy variables (HTTPS_PROXY, NO_PROXY, …) of the environment.
    #[arg(skip)]
    #[serde(skip)]
    pub proxy_env: Vec<(String, String)>,
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub agent_id: String,
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
    pub heartbeat_interval: Duration,
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    pub ca_file: Option<PathBuf>,
    pub releases_url: Option<Url>,
    /// Which releases may be installed: `trusted_keys` and `allow_unsigned`, read together.
    pub trust: ReleaseTrust,
    pub allow_downgrade: bool,
    pub health_window: Duration,
    pub max_message_bytes: usize,
    /// Which proxy, if any, each URL goes through.
    pub proxy: crate::proxy::Proxies,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}, line {line}: expected key=value")]
    PropertiesLine { path: PathBuf, line: usize },
    #[error("`{key}` is missing: set it in the config file, as {env}, or with --{flag}")]
    Missing { key: &'static str, env: String, flag: String },
    #[error("`{key}` = {value:?} is invalid: {problem}")]
    Invalid { key: &'static str, value: String, problem: String },
}

impl ConfigError {
    fn missing(key: &'static str) -> Self {
        ConfigError::Missing { key, env: env_name(key), flag: key.replace('_', "-") }
    }
    fn invalid(key: &'static str, value: impl fmt::Display, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { key, value: value.to_string(), problem: problem.into() }
    }
}

fn env_name(key: &str) -> String {
    format!("EDGE_AGENT_{}", key.to_ascii_uppercase())
}

/// Where the configuration comes from; [`ConfigSource::load`] reads it anew each time, so
/// `agent:reloadconfig` sees the file as it is now.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file, and whether the user named it (a named file must exist).
    pub path: PathBuf,
    pub explicit: bool,
    pub env: BTreeMap<String, String>,
    pub flags: RawConfig,
}

impl ConfigSource {
    /// The file named by `--config`, else the default path; `EDGE_AGENT_*` variables from `env`.
    pub fn new(path: Option<PathBuf>, env: impl IntoIterator<Item = (String, String)>, flags: RawConfig) -> Self {
        let keep = |k: &str| k.starts_with("EDGE_AGENT_") || crate::proxy::ENV_VARS.contains(&k);
        let env = env.into_iter().filter(|(k, _)| keep(k)).collect();
        ConfigSource {
            explicit: path.is_some(),
            path: path.unwrap_or_else(crate::platform::default_config_path),
            env,
            flags,
        }
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        validate(self.layered(self.read_file()?)?)
    }

    /// Flags over the environment over `file`, with the environment's proxy variables.
    fn layered(&self, file: RawConfig) -> Result<RawConfig, ConfigError> {
        let env = raw_from_env(&self.env)?;
        let mut raw = self.flags.clone().or(env).or(file);
        raw.proxy_env = self
            .env
            .iter()
            .filter(|(k, _)| crate::proxy::ENV_VARS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(raw)
    }

    fn read_file(&self) -> Result<RawConfig, ConfigError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.explicit => return Ok(RawConfig::default()),
            Err(source) => return Err(ConfigError::Unreadable { path: self.path.clone(), source }),
        };
        if self.path.extension().is_some_and(|e| e == "properties") {
            return parse_properties(&self.path, &text);
        }
        toml::from_str(&text)
            .map_err(|e| ConfigError::Syntax { path: self.path.clone(), message: e.message().to_string() })
    }
}

impl RawConfig {
    /// Fills every key this layer lacks from `lower`.
    fn or(self, lower: RawConfig) -> RawConfig {
        RawConfig {
            base_url: self.base_url.or(lower.base_url),
            client_id: self.client_id.or(lower.client_id),
            client_secret: self.client_secret.or(lower.client_secret),
            agent_id: self.agent_id.or(lower.agent_id),
            state_dir: self.state_dir.or(lower.state_dir),
            log_format: self.log_format.or(lower.log_format),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            reconnect_min_delay: self.reconnect_min_delay.or(lower.reconnect_min_delay),
            reconnect_max_delay: self.reconnect_max_delay.or(lower.reconnect_max_delay),
            ca_file: self.ca_file.or(lower.ca_file),
            releases_url: self.releases_url.or(lower.releases_url),
            trusted_keys: self.trusted_keys.filter(|k| !k.is_empty()).or(lower.trusted_keys),
            allow_unsigned: self.allow_unsigned.or(lower.allow_unsigned),
            allow_downgrade: self.allow_downgrade.or(lower.allow_downgrade),
            health_window: self.health_window.or(lower.health_window),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            proxy_url: self.proxy_url.or(lower.proxy_url),
            no_proxy: self.no_proxy.or(lower.no_proxy),
            proxy_auth: self.proxy_auth.or(lower.proxy_auth),
            proxy_env: self.proxy_env,
        }
    }
}

/// A Medplum `agent.properties` file: `baseUrl`, `clientId`, `clientSecret`, `agentId`; other
/// Medplum keys (log levels, channels) do not apply here and are ignored.
fn parse_properties(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let mut raw = RawConfig::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (key, value) =
            line.split_once('=').ok_or(ConfigError::PropertiesLine { path: path.to_path_buf(), line: i + 1 })?;
        let value = Some(value.trim().to_string());
        match key.trim() {
            "baseUrl" => raw.base_url = value,
            "clientId" => raw.client_id = value,
            "clientSecret" => raw.client_secret = value,
            "agentId" => raw.agent_id = value,
            _ => {}
        }
    }
    Ok(raw)
}

fn raw_from_env(env: &BTreeMap<String, String>) -> Result<RawConfig, ConfigError> {
    fn get(env: &BTreeMap<String, String>, key: &str) -> Option<String> {
        env.get(&env_name(key)).filter(|v| !v.is_empty()).cloned()
    }
    fn num<T: std::str::FromStr>(env: &BTreeMap<String, String>, key: &'static str) -> Result<Option<T>, ConfigError> {
        get(env, key)
            .map(|v| v.parse().map_err(|_| ConfigError::invalid(key, &v, format!("{} is not a number", env_name(key)))))
            .transpose()
    }
    let boolean = |key: &'static str| match get(env, key).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes") => Ok(Some(true)),
        Some("false" | "0" | "no") => Ok(Some(false)),
        Some(v) => Err(ConfigError::invalid(key, v, format!("{} must be true or false", env_name(key)))),
    };
    Ok(RawConfig {
        base_url: get(env, "base_url"),
        client_id: get(env, "client_id"),
        client_secret: get(env, "client_secret"),
        agent_id: get(env, "agent_id"),
        state_dir: get(env, "state_dir").map(PathBuf::from),
        log_format: get(env, "log_format"),
        heartbeat_interval: num(env, "heartbeat_interval")?,
        reconnect_min_delay: num(env, "reconnect_min_delay")?,
        reconnect_max_delay: num(env, "reconnect_max_delay")?,
        ca_file: get(env, "ca_file").map(PathBuf::from),
        releases_url: get(env, "releases_url"),
        trusted_keys: get(env, "trusted_keys").map(|v| v.split(',').map(|k| k.trim().to_string()).collect()),
        allow_unsigned: boolean("allow_unsigned")?,
        allow_downgrade: boolean("allow_downgrade")?,
        health_window: num(env, "health_window")?,
        max_message_bytes: num(env, "max_message_bytes")?,
        proxy_url: get(env, "proxy_url"),
        no_proxy: get(env, "no_proxy"),
        proxy_auth: get(env, "proxy_auth").map(PathBuf::from),
        proxy_env: vec![],
    })
}

fn required(key: &'static str, value: Option<String>) -> Result<String, ConfigError> {
    value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).ok_or_else(|| ConfigError::missing(key))
}

fn seconds(key: &'static str, value: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v < 86_400.0 * 365.0) {
        return Err(ConfigError::invalid(key, v, "expected a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn http_url(key: &'static str, value: &str) -> Result<Url, ConfigError> {
    let mut url = Url::parse(value).map_err(|e| ConfigError::invalid(key, value, format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(key, value, "expected an http:// or https:// URL"));
    }
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// The one place a raw configuration becomes a [`Config`].
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let base_url = http_url("base_url", &required("base_url", raw.base_url)?)?;
    let client_id = required("client_id", raw.client_id)?;
    let client_secret = Secret(required("client_secret", raw.client_secret)?);
    let agent_id = required("agent_id", raw.agent_id)?;
    let log_format = match raw.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(ConfigError::invalid("log_format", other, "expected text or json")),
    };
    let reconnect_min_delay = seconds("reconnect_min_delay", raw.reconnect_min_delay, 1.0)?;
    let reconnect_max_delay = seconds("reconnect_max_delay", raw.reconnect_max_delay, 10.0)?;
    if reconnect_max_delay < reconnect_min_delay {
        return Err(ConfigError::invalid(
            "reconnect_max_delay",
            reconnect_max_delay.as_secs_f64(),
            format!("must not be below reconnect_min_delay ({})", reconnect_min_delay.as_secs_f64()),
        ));
    }
    let releases_url =
        raw.releases_url.filter(|u| !u.trim().is_empty()).map(|u| http_url("releases_url", u.trim())).transpose()?;
    let trust = ReleaseTrust::from_raw(raw.trusted_keys, raw.allow_unsigned)?;
    let max_message_bytes = raw.max_message_bytes.unwrap_or(edge_agent_wire::message::DEFAULT_MAX_MESSAGE_BYTES);
    if !(1024..=edge_agent_wire::message::HARD_MAX_MESSAGE_BYTES).contains(&max_message_bytes) {
        return Err(ConfigError::invalid(
            "max_message_bytes",
            max_message_bytes,
            format!("expected 1024 to {}", edge_agent_wire::message::HARD_MAX_MESSAGE_BYTES),
        ));
    }
    let proxy = proxy::proxies(&raw.proxy_url, &raw.no_proxy, raw.proxy_auth.as_deref(), &raw.proxy_env)?;
    Ok(Config {
        proxy,
        base_url,
        client_id,
        client_secret,
        agent_id,
        state_dir: raw.state_dir.unwrap_or_else(crate::platform::default_state_dir),
        log_format,
        heartbeat_interval: seconds("heartbeat_interval", raw.heartbeat_interval, 10.0)?,
        reconnect_min_delay,
        reconnect_max_delay,
        ca_file: raw.ca_file,
        releases_url,
        trust,
        allow_downgrade: raw.allow_downgrade.unwrap_or(true),
        health_window: seconds("health_window", raw.health_window, 120.0)?,
        max_message_bytes,
    })
}

impl Config {
    /// `{base}/oauth2/token`.
    pub fn token_url(&self) -> Url {
        self.base_url.join("oauth2/token").expect("a base URL joins a relative path")
    }

    /// The WebSocket URL: scheme http→ws, https→wss, the whole path replaced by `/ws/agent`.
    pub fn ws_url(&self) -> Url {
        ws_url_of(&self.base_url)
    }
}

/// The WebSocket URL of a server's base URL (see [`Config::ws_url`]).
fn ws_url_of(base_url: &Url) -> Url {
    let mut url = base_url.clone();
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme).expect("ws and wss are valid schemes for an http URL");
    url.set_path("/ws/agent");
    url.set_query(None);
    url
}

mod proxy;
#[cfg(test)]
mod tests;
