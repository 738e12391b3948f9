//! Administration from the host: create an admin client, or an agent with its own credentials and
//! a ready-to-use agent configuration. Works on the data directory, whether or not the server runs.

use std::path::Path;

use serde_json::json;

use super::db::{Store, StoreError};

/// Creates an administrator client; returns `client_id` and `client_secret` lines.
pub fn add_admin(data_dir: &Path, name: &str) -> Result<String, StoreError> {
    let store = Store::open(data_dir)?;
    let (client, secret) = store.create_client(true, None, name)?;
    Ok(format!("client_id = \"{}\"\nclient_secret = \"{secret}\"\n", client.id))
}

/// Creates an `Agent` and credentials that may act only for it; returns its agent config (TOML).
pub fn add_agent(data_dir: &Path, name: &str, base_url: &str) -> Result<String, StoreError> {
    let store = Store::open(data_dir)?;
    let agent = store.create_agent(name, "active", &json!([]))?;
    let (client, secret) = store.create_client(false, Some(&agent.id), name)?;
    Ok(format!(
        "# edge-agent configuration for agent {name:?}\n\
         base_url = \"{base_url}\"\n\
         agent_id = \"{}\"\n\
         client_id = \"{}\"\n\
         client_secret = \"{secret}\"\n",
        agent.id, client.id
    ))
}
