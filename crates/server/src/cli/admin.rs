//! Administration from the host: create an admin client, or an agent with its own credentials and
//! a ready-to-use agent configuration that trusts the release signing keys this server knows.
//! Works on the configured store (the SQLite data directory or the PostgreSQL database), whether
//! or not a server runs.

use std::path::{Path, PathBuf};

use edge_agent_release::keys::{self, KeyError};
use edge_agent_release::signature::{check_public_key, public_key_line};
use serde_json::json;

use crate::store::{self, StoreConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--release-key {given:?}: {why}")]
    ReleaseKey { given: String, why: String },
    #[error("cannot read the release keys recorded in --releases")]
    RecordedKeys(#[source] KeyError),
    #[error("{0} exists: refusing to overwrite it (it may hold another agent's secret); pass --force to replace it")]
    Exists(PathBuf),
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Creates an administrator client; returns `client_id` and `client_secret` lines.
pub async fn add_admin(config: &StoreConfig, name: &str) -> Result<String, StoreError> {
    let store = store::open(config).await?;
    let (client, secret) = store.create_client(true, None, name).await?;
    Ok(format!("client_id = \"{}\"\nclient_secret = \"{secret}\"\n", client.id))
}

/// What `agent add` writes into an agent's configuration besides its credentials.
pub struct AgentSetup<'a> {
    /// The server's URL as the agent reaches it, ending in `/`.
    pub base_url: &'a str,
    /// `--release-key`: minisign public key files or key lines.
    pub release_keys: &'a [String],
    /// `--releases`: the release directory this server hosts at `/releases/`.
    pub releases: Option<&'a Path>,
}

/// An agent's configuration, and what the operator must be told about it.
pub struct Added {
    pub config: String,
    /// Set when no release key is known: the configuration refuses upgrades until one is added.
    pub warning: Option<String>,
}

/// The release public keys this server knows: each `--release-key` (a file, or the key itself),
/// else those `agent release publish --key` recorded in the `--releases` directory.
pub fn release_keys(setup: &AgentSetup<'_>) -> Result<Vec<String>, AdminError> {
    let mut keys = Vec::new();
    for given in setup.release_keys {
        let bad = |why: String| AdminError::ReleaseKey { given: given.clone(), why };
        let text = match Path::new(given).is_file() {
            true => std::fs::read_to_string(given).map_err(|e| bad(format!("cannot read it: {e}")))?,
            false => given.clone(),
        };
        let line = public_key_line(&text);
        check_public_key(&line).map_err(|why| bad(format!("neither a minisign public key file nor a key: {why}")))?;
        keys.push(line);
    }
    if keys.is_empty() {
        if let Some(dir) = setup.releases {
            keys = keys::recorded_public(dir).map_err(AdminError::RecordedKeys)?;
        }
    }
    Ok(keys)
}

/// Creates an `Agent` and credentials that may act only for it; returns its configuration (TOML).
pub async fn add_agent(config: &StoreConfig, name: &str, setup: &AgentSetup<'_>) -> Result<Added, AdminError> {
    let keys = release_keys(setup)?;
    let store = store::open(config).await?;
    let agent = store.create_agent(name, "active", &json!([])).await?;
    let (client, secret) = store.create_client(false, Some(&agent.id), name).await?;
    let mut text = format!(
        "# edge-agent configuration for agent {name:?}\n\
         base_url = \"{}\"\n\
         agent_id = \"{}\"\n\
         client_id = \"{}\"\n\
         client_secret = \"{secret}\"\n",
        setup.base_url, agent.id, client.id
    );
    if setup.releases.is_some() {
        text += &format!("releases_url = \"{}releases/\"\n", setup.base_url);
    }
    if keys.is_empty() {
        text += "# No release public key was known when this file was written: this agent refuses every\n\
                 # upgrade until trusted_keys lists the key its releases are signed with, e.g.\n\
                 # trusted_keys = [\"<the last line of minisign.pub from agent release keygen>\"]\n";
        let warning = "no release public key is known (no --release-key, and no keys/ in a --releases \
                       directory), so this agent will refuse every upgrade until trusted_keys is added to its \
                       configuration; pass --release-key FILE (the minisign.pub of `agent release keygen`) or \
                       --releases DIR (where `agent release publish --key` records it)";
        return Ok(Added { config: text, warning: Some(warning.into()) });
    }
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    text += &format!("trusted_keys = [{}]\n", quoted.join(", "));
    Ok(Added { config: text, warning: None })
}

/// Refuses `--out FILE` before anything is created when the file exists and `force` is not set.
pub fn check_out(out: &Path, force: bool) -> Result<(), AdminError> {
    match out.symlink_metadata() {
        Ok(_) if !force => Err(AdminError::Exists(out.to_path_buf())),
        _ => Ok(()),
    }
}

/// Writes an agent's configuration to `out`, readable by its owner only (0600): a new file, or,
/// with `force`, one that replaces the existing file whole.
pub fn write_out(out: &Path, text: &str, force: bool) -> Result<(), AdminError> {
    use std::io::Write;
    let failed = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AlreadyExists => AdminError::Exists(out.to_path_buf()),
        _ => AdminError::Write { path: out.to_path_buf(), source },
    };
    if force {
        return edge_agent_base::fs::write_private_atomic(out, text.as_bytes()).map_err(failed);
    }
    let mut file = edge_agent_base::fs::create_private(out).map_err(failed)?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(failed)
}

/// Why stdout, when it is a regular file, is not fit for a secret: its mode lets group or others
/// read it (the shell's `> agent.toml` under the usual umask).
pub fn stdout_exposed() -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::PermissionsExt;
        let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
        let meta = std::fs::File::from(fd).metadata().ok()?;
        let mode = meta.permissions().mode() & 0o777;
        (meta.is_file() && mode & 0o044 != 0).then(|| {
            format!(
                "stdout is a file that others can read (mode {mode:04o}), and this configuration holds the \
                 agent's secret: chmod 600 it, or write it with --out FILE, which creates it 0600"
            )
        })
    }
    #[cfg(not(unix))]
    None
}
