//! `agent check-config`: validates the configuration, then tries each way out the agent uses, by
//! the route it would take (direct, or via which proxy): a token from the token endpoint, the
//! WebSocket's upgrade, and the release source. It builds an HTTP client and nothing else: no
//! state directory is created or read.

use reqwest::Url;

use super::HostError;
use crate::config::{Config, ConfigSource};

pub async fn check_config(source: &ConfigSource) -> Result<String, HostError> {
    let cfg = source.load()?;
    let (http, tls) = crate::http::client(&cfg)?;
    let mut said = format!("configuration {} is valid\n", source.path.display());
    let token_url = cfg.token_url();
    crate::daemon::token::fetch(&http, &cfg).await.map_err(HostError::Token)?;
    said += &line(
        &cfg,
        "token",
        &token_url,
        &format!("the server at {} issued a token for client {} (agent {})", cfg.base_url, cfg.client_id, cfg.agent_id),
    );
    let ws = crate::daemon::session::open(&cfg, tls.as_ref()).await?;
    drop(ws);
    said += &line(&cfg, "websocket", &cfg.ws_url(), "the server accepted the WebSocket");
    if let Some(releases) = &cfg.releases_url {
        let latest = releases.join("latest.json").expect("a base URL joins a relative path");
        let (status, _) = crate::upgrade::resolve::get_small(&http, &latest).await?;
        said += &line(&cfg, "releases", &latest, &format!("the release source answered {status}"));
    }
    if let Some(w) = cfg.trust.warning() {
        said += &format!("warning: {w}\n");
    }
    Ok(said.trim_end().to_string())
}

/// `what: URL, route: what happened`.
fn line(cfg: &Config, what: &str, url: &Url, result: &str) -> String {
    format!("{what:<10} {url} {}: {result}\n", cfg.proxy.route(url))
}
