//! `agent-server client list|show|remove|rotate-secret` and `agent list|show|remove|rotate-secret`:
//! credentials taken back from the host, on the store itself. Every change is written with its
//! revocation, which every running node reads from the store within a second (it polls every
//! 250 ms): sockets close, tokens stop.

use crate::model::access::Role;
use crate::model::agent::{AgentRow, Client};
use crate::model::audit::{Ref, REST};
use crate::model::revocation::{AGENT_REMOVED, AGENT_ROTATED, CLIENT_REMOVED, CLIENT_ROTATED, ROLE_CHANGED};
use crate::store::audit;
use crate::store::db::Stmt;
use crate::store::lifecycle::Found;
use crate::store::revocations::revocation;
use crate::store::{self, Store, StoreConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no client {0}: `agent-server client list` shows them")]
    UnknownClient(String),
    #[error("no agent {0}: `agent-server agent list` shows them")]
    UnknownAgent(String),
    #[error(transparent)]
    Role(#[from] crate::model::access::UnknownRole),
    #[error("client {0} is an agent's: its role is fixed")]
    AgentClient(String),
    #[error("agent {id} ({name}) was removed at {at}: nothing left to change")]
    Removed { id: String, name: String, at: String },
}

/// An audit event of the command line: `subtype` on `entity`, by the host's user.
pub fn cli_event(subtype: &str, action: char, entity: Ref, description: &str) -> Vec<Stmt> {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let who = Ref {
        reference: "Device/agent-server-cli".into(),
        display: Some(format!("agent-server command line ({user})")),
    };
    let mut e = audit::event(REST, subtype, action, Some(who), None);
    (e.entities, e.description) = (vec![entity], description.to_string());
    audit::record(&[e])
}

fn client_line(c: &Client) -> String {
    let role = c.role.name();
    let agent = c.agent_id.as_deref().map(|a| format!("  Agent/{a}")).unwrap_or_default();
    format!("{}  {role}  {}{agent}\n", c.id, c.display())
}

/// `client list`: id, role and name of every client, one a line.
pub async fn list_clients(config: &StoreConfig) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    Ok(store.clients().await?.iter().map(client_line).collect())
}

/// `client show ID`.
pub async fn show_client(config: &StoreConfig, id: &str) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let c = store.client(id).await?.ok_or_else(|| CredentialError::UnknownClient(id.into()))?;
    let role = c.role.name();
    let mut text = format!("client_id = \"{}\"\nname = \"{}\"\nrole = \"{role}\"\n", c.id, c.display());
    if let Some(a) = &c.agent_id {
        text += &format!("agent_id = \"{a}\"\n");
    }
    Ok(text)
}

/// `client remove ID`.
pub async fn remove_client(config: &StoreConfig, id: &str) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let mut r = revocation(CLIENT_REMOVED);
    let Some(c) = store.client(id).await? else { return Err(CredentialError::UnknownClient(id.into())) };
    let also = cli_event("client-remove", 'D', c.reference(), "Client removed: its secret, tokens and sessions ended");
    let c = store.remove_client(id, &mut r, also).await?.ok_or_else(|| CredentialError::UnknownClient(id.into()))?;
    Ok(format!("removed client {} ({}); its tokens and sessions ended\n", c.id, c.display()))
}

/// `client set-role ID ROLE`: takes effect on every node at its next request (roles are read with
/// the credentials, never kept).
pub async fn set_role(config: &StoreConfig, id: &str, role: Role) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let c = store.client(id).await?.ok_or_else(|| CredentialError::UnknownClient(id.into()))?;
    if c.role == Role::Agent {
        return Err(CredentialError::AgentClient(id.into()));
    }
    if c.role == role {
        // Nothing to change, nor to revoke (its sockets stay open).
        return Ok(format!("client {} ({}) is {} already: nothing changed\n", c.id, c.display(), role.name()));
    }
    let why = format!("Role changed from {} to {}", c.role.name(), role.name());
    let also = cli_event("client-role", 'U', c.reference(), &why);
    store.set_role(id, role, &mut revocation(ROLE_CHANGED), also).await?;
    Ok(format!("client {} ({}) is now {} (was {})\n", c.id, c.display(), role.name(), c.role.name()))
}

/// `client rotate-secret ID`: the new secret; the old one and its tokens stop at once.
pub async fn rotate_client(config: &StoreConfig, id: &str) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let mut r = revocation(CLIENT_ROTATED);
    let Some(c) = store.client(id).await? else { return Err(CredentialError::UnknownClient(id.into())) };
    let also =
        cli_event("client-rotate", 'U', c.reference(), "Client secret replaced: the old one and its tokens ended");
    let (c, secret) =
        store.rotate_client(id, &mut r, also).await?.ok_or_else(|| CredentialError::UnknownClient(id.into()))?;
    Ok(format!("client_id = \"{}\"\nclient_secret = \"{secret}\"\n", c.id))
}

async fn agent(store: &dyn Store, id: &str) -> Result<AgentRow, CredentialError> {
    match store.find_agent(id).await? {
        Found::Here(row) => Ok(row),
        Found::Removed { name, at } => Err(CredentialError::Removed { id: id.into(), name, at }),
        Found::Unknown => Err(CredentialError::UnknownAgent(id.into())),
    }
}

/// `agent list`: id, status and name of every agent, one a line.
pub async fn list_agents(config: &StoreConfig) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let q = crate::model::query::AgentQuery { count: i64::MAX as usize, skip_total: true, ..Default::default() };
    let (rows, _) = store.search(&q).await?;
    Ok(rows.iter().map(|a| format!("{}  {}  {}\n", a.id, a.status, a.name)).collect())
}

/// `agent show ID`.
pub async fn show_agent(config: &StoreConfig, id: &str) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let a = agent(&*store, id).await?;
    let clients: Vec<String> = store.agent_clients(id).await?.into_iter().map(|c| format!("\"{}\"", c.id)).collect();
    Ok(format!(
        "agent_id = \"{}\"\nname = \"{}\"\nstatus = \"{}\"\nidentifier = {}\nclients = [{}]\n",
        a.id,
        a.name,
        a.status,
        a.identifiers,
        clients.join(", ")
    ))
}

/// `agent remove ID`.
pub async fn remove_agent(config: &StoreConfig, id: &str) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let mut r = revocation(AGENT_REMOVED);
    let entity = Ref { reference: format!("Agent/{id}"), display: None };
    let also = cli_event("agent-remove", 'D', entity, "Agent removed: its socket closed, its credentials revoked");
    match store.remove_agent(id, &mut r, also).await? {
        Found::Here(a) => Ok(format!("removed agent {} ({}); its credentials ended\n", a.id, a.name)),
        Found::Removed { name, at } => Err(CredentialError::Removed { id: id.into(), name, at }),
        Found::Unknown => Err(CredentialError::UnknownAgent(id.into())),
    }
}

/// `agent rotate-secret ID`: the agent's new credentials (made when it had none), to put in its
/// configuration; the old secret and its tokens stop at once.
pub async fn rotate_agent(config: &StoreConfig, id: &str) -> Result<String, CredentialError> {
    let store = store::open(config).await?;
    let a = agent(&*store, id).await?;
    let (client, secret) = match store.agent_clients(id).await?.first() {
        Some(c) => {
            let mut r = revocation(AGENT_ROTATED);
            let entity = Ref { reference: format!("Agent/{}", a.id), display: Some(a.name.clone()) };
            let also = cli_event(
                "agent-rotate",
                'U',
                entity,
                "Agent credentials replaced: the old secret and its tokens revoked",
            );
            store
                .rotate_client(&c.id, &mut r, also)
                .await?
                .ok_or_else(|| CredentialError::UnknownClient(c.id.clone()))?
        }
        None => store.create_client(Role::Agent, Some(&a.id), &a.name).await?,
    };
    Ok(format!("agent_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{secret}\"\n", a.id, client.id))
}
