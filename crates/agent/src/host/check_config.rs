//! `agent check-config`: validates the configuration and asks the token endpoint for a token with
//! it. It builds an HTTP client and nothing else: no state directory is created or read.

use super::HostError;
use crate::config::ConfigSource;

pub async fn check_config(source: &ConfigSource) -> Result<String, HostError> {
    let cfg = source.load()?;
    let (http, _) = crate::http::client(&cfg)?;
    crate::daemon::token::fetch(&http, &cfg).await.map_err(HostError::Token)?;
    let warning = cfg.trust.warning().map(|w| format!("\nwarning: {w}")).unwrap_or_default();
    Ok(format!(
        "configuration {} is valid; the server at {} issued a token for client {} (agent {}){warning}",
        source.path.display(),
        cfg.base_url,
        cfg.client_id,
        cfg.agent_id
    ))
}
