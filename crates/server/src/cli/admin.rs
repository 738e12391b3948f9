//! Administration from the host: create an admin client, or an agent with its own credentials and
//! a ready-to-use agent configuration. Works on the configured store (the SQLite data directory or
//! the PostgreSQL database), whether or not a server runs.

use serde_json::json;

use crate::store::{self, StoreConfig, StoreError};

/// Creates an administrator client; returns `client_id` and `client_secret` lines.
pub async fn add_admin(config: &StoreConfig, name: &str) -> Result<String, StoreError> {
    let store = store::open(config).await?;
    let (client, secret) = store.create_client(true, None, name).await?;
    Ok(format!("client_id = \"{}\"\nclient_secret = \"{secret}\"\n", client.id))
}

/// Creates an `Agent` and credentials that may act only for it; returns its agent config (TOML).
pub async fn add_agent(config: &StoreConfig, name: &str, base_url: &str) -> Result<String, StoreError> {
    let store = store::open(config).await?;
    let agent = store.create_agent(name, "active", &json!([])).await?;
    let (client, secret) = store.create_client(false, Some(&agent.id), name).await?;
    Ok(format!(
        "# edge-agent configuration for agent {name:?}\n\
         base_url = \"{base_url}\"\n\
         agent_id = \"{}\"\n\
         client_id = \"{}\"\n\
         client_secret = \"{secret}\"\n",
        agent.id, client.id
    ))
}
