//! What the host commands (`agent status`, `agent rollback`) need of the configuration: the state
//! directory and the release trust. They answer from local state, so credentials that are not
//! set yet are reported as missing, and a file this user may not read (an operator who is not
//! the agent's user) as unknown, not an error.

use std::path::PathBuf;

use reqwest::Url;

use super::{ConfigError, ConfigSource, RawConfig, ReleaseTrust};

/// The local part of the configuration.
#[derive(Debug, Clone)]
pub struct Local {
    pub state_dir: PathBuf,
    pub trust: ReleaseTrust,
    /// Which proxy, if any, each URL goes through.
    pub proxy: crate::proxy::Proxies,
    /// The server's WebSocket URL, when `base_url` is set (and valid).
    pub ws_url: Option<Url>,
    /// The keys the daemon needs to reach its server that are not set, in file order.
    pub missing_credentials: Vec<&'static str>,
    /// Why the file could not be read, when this user is not allowed to: nothing in it is known.
    pub unreadable: Option<String>,
    /// The configuration file read (or looked for).
    pub path: PathBuf,
}

impl ConfigSource {
    /// The local part of the configuration: a file that cannot be read or parsed, or a bad
    /// `trusted_keys`, is still an error; missing credentials are not.
    pub fn load_local(&self) -> Result<Local, ConfigError> {
        let (file, unreadable) = match self.read_file() {
            Err(ConfigError::Unreadable { path, source }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                let why =
                    format!("cannot read {} (permission denied: run as root or the agent's user)", path.display());
                (RawConfig::default(), Some(why))
            }
            read => (read?, None),
        };
        let raw = self.layered(file)?;
        let trust = ReleaseTrust::from_raw(raw.trusted_keys.clone(), raw.allow_unsigned)?;
        let proxy = super::proxy::proxies(&raw.proxy_url, &raw.no_proxy, raw.proxy_auth.as_deref(), &raw.proxy_env)?;
        let base_url = raw.base_url.as_deref().and_then(|u| super::http_url("base_url", u.trim()).ok());
        Ok(Local {
            proxy,
            ws_url: base_url.as_ref().map(super::ws_url_of),
            missing_credentials: if unreadable.is_some() { Vec::new() } else { missing_credentials(&raw) },
            unreadable,
            state_dir: raw.state_dir.unwrap_or_else(crate::platform::default_state_dir),
            trust,
            path: self.path.clone(),
        })
    }
}

fn missing_credentials(raw: &RawConfig) -> Vec<&'static str> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
    [
        ("base_url", &raw.base_url),
        ("client_id", &raw.client_id),
        ("client_secret", &raw.client_secret),
        ("agent_id", &raw.agent_id),
    ]
    .into_iter()
    .filter(|(_, v)| !set(v))
    .map(|(k, _)| k)
    .collect()
}

impl Local {
    /// The missing credentials in a sentence that says what to do; `None` when all are set.
    pub fn credentials_problem(&self) -> Option<String> {
        if let Some(why) = &self.unreadable {
            return Some(format!("unknown: {why}"));
        }
        (!self.missing_credentials.is_empty()).then(|| {
            format!(
                "{} not set: the daemon cannot connect until they are in {} (as `agent-server agent add` writes \
                 them), the EDGE_AGENT_* variables or flags",
                self.missing_credentials.join(", "),
                self.path.display()
            )
        })
    }
}
