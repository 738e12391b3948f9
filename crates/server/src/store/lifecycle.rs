//! Credentials and agents taken back or changed, for both backends: clients listed, removed and
//! given a new secret; agents changed, removed (remembered as removed, so that they answer 410)
//! and given new credentials. Each change runs in one transaction with its [`Revocation`] (and
//! whatever the caller adds, such as its audit event), so that what the store says is what every
//! node enforces.

use edge_agent_base::id::random_hex;
use edge_agent_base::time::now_iso;

use super::credentials::{client_row, hash_secret, CLIENT_COLUMNS};
use super::db::{Arg, Stmt, Store};
use super::error::StoreError;
use super::revocations::record;
use crate::model::access::Role;
use crate::model::agent::{AgentRow, Client};
use crate::model::revocation::Revocation;

/// What became of an agent asked for by id.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<T> {
    Here(T),
    /// It was removed: its name and when.
    Removed {
        name: String,
        at: String,
    },
    Unknown,
}

fn by_client(sql: &str, id: &str) -> Stmt {
    (sql.to_string(), vec![Arg::text(id)])
}

/// Every token and page session of client `id` ends.
fn end_client_access(id: &str) -> Vec<Stmt> {
    vec![
        by_client("DELETE FROM tokens WHERE client_id = ?1", id),
        by_client("DELETE FROM sessions WHERE client_id = ?1", id),
    ]
}

impl dyn Store + '_ {
    /// Every client, by name then id.
    pub async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY coalesce(name, ''), id");
        self.rows(&sql, vec![]).await?.iter().map(client_row).collect()
    }

    /// A page of clients (of one role, when given), by name then id, and how many there are.
    pub async fn clients_page(
        &self,
        role: Option<Role>,
        count: usize,
        offset: usize,
    ) -> Result<(Vec<Client>, usize), StoreError> {
        // Clients made before roles have none (see `client_row`): admins by their flag.
        let (filter, args) = match role {
            None => ("", vec![]),
            Some(Role::Agent) => ("WHERE agent_id IS NOT NULL", vec![]),
            Some(Role::Admin) => {
                ("WHERE agent_id IS NULL AND (role = 'admin' OR (role IS NULL AND admin = ?1))", vec![Arg::Bool(true)])
            }
            Some(r) => ("WHERE role = ?1", vec![Arg::text(r.name())]),
        };
        let total = match self.row(&format!("SELECT count(*) FROM clients {filter}"), args.clone()).await? {
            Some(r) => r.int(0)?.max(0) as usize,
            None => 0,
        };
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM clients {filter} ORDER BY coalesce(name, ''), id LIMIT {count} OFFSET {offset}"
        );
        let rows = self.rows(&sql, args).await?.iter().map(client_row).collect::<Result<_, _>>()?;
        Ok((rows, total))
    }

    pub async fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = ?1");
        self.row(&sql, vec![Arg::text(id)]).await?.as_ref().map(client_row).transpose()
    }

    /// The clients that act for agent `agent_id`.
    pub async fn agent_clients(&self, agent_id: &str) -> Result<Vec<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE agent_id = ?1 ORDER BY id");
        self.rows(&sql, vec![Arg::text(agent_id)]).await?.iter().map(client_row).collect()
    }

    /// Removes a client with its tokens and sessions; the client it was, if there was one.
    pub async fn remove_client(
        &self,
        id: &str,
        r: &mut Revocation,
        also: Vec<Stmt>,
    ) -> Result<Option<Client>, StoreError> {
        let Some(client) = self.client(id).await? else { return Ok(None) };
        r.clients.push(client.id.clone());
        r.agents.extend(client.agent_id.clone());
        let mut stmts = end_client_access(id);
        stmts.push(by_client("DELETE FROM clients WHERE id = ?1", id));
        stmts.push(record(r));
        stmts.extend(also);
        self.batch(stmts).await?;
        Ok(Some(client))
    }

    /// Gives a client a new secret; its tokens and sessions end. The client and its new secret.
    pub async fn rotate_client(
        &self,
        id: &str,
        r: &mut Revocation,
        also: Vec<Stmt>,
    ) -> Result<Option<(Client, String)>, StoreError> {
        let Some(client) = self.client(id).await? else { return Ok(None) };
        let secret = random_hex(32);
        r.clients.push(client.id.clone());
        r.agents.extend(client.agent_id.clone());
        let update = "UPDATE clients SET secret_sha256 = ?2 WHERE id = ?1";
        let mut stmts = vec![(update.to_string(), vec![Arg::text(id), Arg::text(hash_secret(&secret))])];
        stmts.extend(end_client_access(id));
        stmts.push(record(r));
        stmts.extend(also);
        self.batch(stmts).await?;
        Ok(Some((client, secret)))
    }

    /// Sets an operator client's role; with `r`, which makes every node forget what it remembers
    /// of the client's tokens (and so read the new role at the next request).
    pub async fn set_role(
        &self,
        id: &str,
        role: Role,
        r: &mut Revocation,
        also: Vec<Stmt>,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE clients SET role = ?2, admin = ?3 WHERE id = ?1 AND agent_id IS NULL";
        let args = vec![Arg::text(id), Arg::text(role.name()), Arg::Bool(role == Role::Admin)];
        r.clients.push(id.to_string());
        let mut stmts = vec![(sql.to_string(), args), record(r)];
        stmts.extend(also);
        Ok(self.batch(stmts).await?[0] == 1)
    }

    /// The agent, or what became of it.
    pub async fn find_agent(&self, id: &str) -> Result<Found<AgentRow>, StoreError> {
        if let Some(row) = self.agent(id).await? {
            return Ok(Found::Here(row));
        }
        let sql = "SELECT name, removed_at FROM removed_agents WHERE id = ?1";
        Ok(match self.row(sql, vec![Arg::text(id)]).await? {
            Some(r) => Found::Removed { name: r.text(0)?, at: r.text(1)? },
            None => Found::Unknown,
        })
    }

    /// Removes an agent and its credentials, remembering that it was removed; its upgrade results
    /// and rollout records stay. The agent it was, or what became of it.
    pub async fn remove_agent(
        &self,
        id: &str,
        r: &mut Revocation,
        also: Vec<Stmt>,
    ) -> Result<Found<AgentRow>, StoreError> {
        let row = match self.find_agent(id).await? {
            Found::Here(row) => row,
            other => return Ok(other),
        };
        r.agents.push(row.id.clone());
        r.clients.extend(self.agent_clients(id).await?.into_iter().map(|c| c.id));
        let of_agent = "client_id IN (SELECT id FROM clients WHERE agent_id = ?1)";
        let insert = "INSERT INTO removed_agents (id, name, removed_at) VALUES (?1, ?2, ?3)";
        let mut stmts = vec![
            (insert.to_string(), vec![Arg::text(id), Arg::text(&row.name), Arg::text(now_iso())]),
            by_client(&format!("DELETE FROM tokens WHERE {of_agent}"), id),
            by_client(&format!("DELETE FROM sessions WHERE {of_agent}"), id),
            by_client("DELETE FROM clients WHERE agent_id = ?1", id),
            by_client("DELETE FROM agents WHERE id = ?1", id),
            record(r),
        ];
        stmts.extend(also);
        self.batch(stmts).await?;
        Ok(Found::Here(row))
    }

    /// Writes an agent's name, status and identifiers (its `lastUpdated` set now); with `r`, the
    /// revocation that goes with it (its sockets close when it is switched off); with `lease`,
    /// only while that lease is held ([`Self::fence`]), else [`StoreError::LeaseLost`].
    pub async fn update_agent(
        &self,
        row: &mut AgentRow,
        r: Option<&Revocation>,
        also: Vec<Stmt>,
        lease: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        row.last_updated = now_iso();
        let identifiers = super::agents::identifiers_arg(self.dialect());
        let sql = format!(
            "UPDATE agents SET name = ?2, status = ?3, identifiers = {identifiers}, last_updated = ?5 WHERE id = ?1"
        );
        let args = super::agents::agent_args(row);
        let mut stmts = vec![(sql, args)];
        stmts.extend(r.map(record));
        stmts.extend(also);
        let changed = match lease {
            None => self.batch(stmts).await?,
            Some((lease, holder)) => self
                .batch_if(self.fence(lease, holder), stmts)
                .await?
                .ok_or_else(|| StoreError::LeaseLost(lease.to_string()))?,
        };
        Ok(changed[0] == 1)
    }

    /// Revokes one token (by its hash); the client it was issued to, if it was valid.
    pub async fn revoke_token(
        &self,
        hash: &str,
        r: &mut Revocation,
        also: Vec<Stmt>,
    ) -> Result<Option<String>, StoreError> {
        let Some(client) = self.token_owner(hash).await? else { return Ok(None) };
        r.tokens.push(hash.to_string());
        let mut stmts = vec![("DELETE FROM tokens WHERE token_sha256 = ?1".to_string(), vec![Arg::text(hash)])];
        stmts.push(record(r));
        stmts.extend(also);
        self.batch(stmts).await?;
        Ok(Some(client))
    }

    /// The client a token (by its hash) was issued to, expired or not.
    pub async fn token_owner(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT client_id FROM tokens WHERE token_sha256 = ?1";
        self.row(sql, vec![Arg::text(hash)]).await?.map(|r| r.text(0)).transpose()
    }
}
