//! Administration from the host: create an admin client, or an agent with its own credentials and
//! a ready-to-use agent configuration that trusts the release signing keys this server knows.
//! Works on the configured store (the SQLite data directory or the PostgreSQL database), whether
//! or not a server runs.

use std::path::{Path, PathBuf};

use edge_agent_release::keys::{self, KeyError};
use edge_agent_release::signature::{check_public_key, public_key_line};
use serde_json::json;

use crate::fleet::lease::{Lease, AGENT_IDENTIFIERS_WAIT};
use crate::model::access::Role;
use crate::model::agent::fits_text;
use crate::model::audit::Ref;
use crate::model::query::{AgentQuery, NameMatch};
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
    #[error("--name {0:?}: {1}")]
    Name(String, &'static str),
    #[error("--identifier {given:?}: {why}")]
    Identifier { given: String, why: String },
    #[error("another write of agent identifiers (a server's, or another agent add) held them for {0:?}: try again")]
    IdentifiersBusy(std::time::Duration),
}

/// An agent to create, as `agent add` was given it, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    pub name: String,
    /// (system, value) pairs.
    pub identifiers: Vec<(String, String)>,
}

impl NewAgent {
    /// `--name` (trimmed; not empty) and each `--identifier SYSTEM|VALUE`.
    pub fn parse(name: &str, identifiers: &[String]) -> Result<NewAgent, AdminError> {
        let bad_name = |why| AdminError::Name(name.to_string(), why);
        let trimmed = name.trim();
        if trimmed.is_empty() {
            return Err(bad_name("an agent needs a name: pass --name NAME, e.g. --name clinic-7"));
        }
        if !fits_text(trimmed) {
            return Err(bad_name("a name is at most 256 characters, without control or invisible characters"));
        }
        let mut pairs = Vec::new();
        for given in identifiers {
            let bad = |why: &str| AdminError::Identifier { given: given.clone(), why: why.to_string() };
            let Some((system, value)) = given.split_once('|') else {
                return Err(bad("expected SYSTEM|VALUE, e.g. urn:acme:site|clinic-7"));
            };
            let (system, value) = (system.trim(), value.trim());
            if system.is_empty() || value.is_empty() {
                return Err(bad("both the system and the value are needed: SYSTEM|VALUE"));
            }
            if ![system, value].iter().all(|t| fits_text(t)) {
                return Err(bad(
                    "the system and the value are each at most 256 characters, without control or invisible characters",
                ));
            }
            if let Some(why) = crate::model::agent::unsearchable_identifier(system, value) {
                return Err(bad(why));
            }
            let pair = (system.to_string(), value.to_string());
            if pairs.contains(&pair) {
                return Err(bad("given twice"));
            }
            pairs.push(pair);
        }
        Ok(NewAgent { name: trimmed.to_string(), identifiers: pairs })
    }

    fn identifiers_json(&self) -> serde_json::Value {
        self.identifiers.iter().map(|(system, value)| json!({"system": system, "value": value})).collect()
    }
}

/// The first agent matching `q`, if any.
async fn first_match(store: &dyn store::Store, q: AgentQuery) -> Result<Option<String>, StoreError> {
    let q = AgentQuery { count: 1, skip_total: true, ..q };
    Ok(store.search(&q).await?.0.into_iter().next().map(|a| a.id))
}

/// Refuses an identifier another agent has; a warning when the name is already in use.
async fn check_unique(store: &dyn store::Store, new: &NewAgent) -> Result<Option<String>, AdminError> {
    let given: Vec<_> = new.identifiers.iter().map(|(s, v)| (Some(s.clone()), v.clone())).collect();
    if let Some((id, given)) = store.identifier_clash(&given, None).await? {
        return Err(AdminError::Identifier {
            given,
            why: format!("agent {id} has it already: identifiers are unique"),
        });
    }
    let q = AgentQuery { names: vec![(NameMatch::Exact, new.name.clone())], ..AgentQuery::default() };
    Ok(first_match(store, q).await?.map(|id| {
        format!(
            "agent {id} is also named {:?}: searches by name find both (an --identifier tells them apart)",
            new.name
        )
    }))
}

/// Creates an operator's client with `role`; returns `client_id` and `client_secret` lines.
pub async fn add_client(config: &StoreConfig, role: Role, name: &str) -> Result<String, StoreError> {
    let store = store::open(config).await?;
    let (client, secret) = store.create_client(role, None, name).await?;
    let entity = Ref { reference: format!("ClientApplication/{}", client.id), display: Some(name.into()) };
    let why = format!("Client created with the {} role", role.name());
    store.batch(super::credentials::cli_event("client-create", 'C', entity, &why)).await?;
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
    /// The name is already in use; no release key is known (the configuration refuses upgrades
    /// until one is added).
    pub warnings: Vec<String>,
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
pub async fn add_agent(config: &StoreConfig, new: &NewAgent, setup: &AgentSetup<'_>) -> Result<Added, AdminError> {
    let keys = release_keys(setup)?;
    let store = store::open(config).await?;
    // Held from the check to the write, as a server's writes of identifiers hold it.
    let lease = match new.identifiers.is_empty() {
        true => None,
        false => Some(
            Lease::for_identifiers(store.clone(), "agent add")
                .await?
                .ok_or(AdminError::IdentifiersBusy(AGENT_IDENTIFIERS_WAIT))?,
        ),
    };
    let made = async {
        let warning = check_unique(&*store, new).await?;
        let fence = lease.as_ref().map(Lease::fence);
        Ok::<_, AdminError>((store.create_agent(&new.name, "active", &new.identifiers_json(), fence).await?, warning))
    }
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    let (agent, warning) = made?;
    let (mut warnings, name): (Vec<String>, _) = (warning.into_iter().collect(), &new.name);
    let (client, secret) = store.create_client(Role::Agent, Some(&agent.id), name).await?;
    let entity = Ref { reference: format!("Agent/{}", agent.id), display: Some(name.into()) };
    store
        .batch(super::credentials::cli_event("agent-create", 'C', entity, "Agent created with its credentials"))
        .await?;
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
        warnings.push(warning.into());
        return Ok(Added { config: text, warnings });
    }
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    text += &format!("trusted_keys = [{}]\n", quoted.join(", "));
    Ok(Added { config: text, warnings })
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
