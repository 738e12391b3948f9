//! The clients that may call the server (secrets kept hashed) and the access tokens issued to
//! them (kept by their hash), for both backends.

use edge_agent_base::id::{random_hex, uuid};

use sha2::{Digest, Sha256};

use super::db::{Arg, Dialect, Row, Store};
use super::error::StoreError;
use crate::model::access::Role;
use crate::model::agent::Client;

/// The hex SHA-256 under which a secret or a token is kept: they are 256-bit random values, so a
/// fast hash is enough for them to be useless to whoever reads the database.
pub fn hash_secret(secret: &str) -> String {
    edge_agent_base::id::hex(&Sha256::digest(secret.as_bytes()))
}

pub(super) const CLIENT_COLUMNS: &str = "clients.id, clients.admin, clients.agent_id, clients.name, clients.role";

pub(super) fn client_row(r: &Row) -> Result<Client, StoreError> {
    // Clients made before roles have none: admins stay admins.
    let role = match (r.opt_text(4)?, r.boolean(1)?) {
        (Some(role), _) => Role::parse(&role).map_err(|e| StoreError::Decode(e.to_string()))?,
        (None, true) => Role::Admin,
        (None, false) => Role::Agent,
    };
    Ok(Client { id: r.text(0)?, role, agent_id: r.opt_text(2)?, name: r.opt_text(3)? })
}

impl dyn Store + '_ {
    /// Creates a client with a fresh random secret; returns (client, secret).
    pub async fn create_client(
        &self,
        role: Role,
        agent_id: Option<&str>,
        name: &str,
    ) -> Result<(Client, String), StoreError> {
        let client = Client { id: uuid(), role, agent_id: agent_id.map(str::to_owned), name: Some(name.to_string()) };
        let secret = random_hex(32);
        let sql =
            "INSERT INTO clients (id, secret_sha256, admin, agent_id, name, role) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
        let args = vec![
            Arg::text(&client.id),
            Arg::text(hash_secret(&secret)),
            Arg::Bool(role == Role::Admin),
            Arg::opt_text(client.agent_id.clone()),
            Arg::opt_text(client.name.clone()),
            Arg::opt_text((role != Role::Agent).then_some(role.name())),
        ];
        self.exec(sql, args).await?;
        Ok((client, secret))
    }

    /// The client whose id and secret these are, if any.
    pub async fn authenticate(&self, id: &str, secret: &str) -> Result<Option<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = ?1 AND secret_sha256 = ?2");
        self.row(&sql, vec![Arg::text(id), Arg::text(hash_secret(secret))]).await?.as_ref().map(client_row).transpose()
    }

    /// Keeps an issued token (by its hash) for `client_id` until `expires_ms`.
    pub async fn save_token(&self, token_hash: &str, client_id: &str, expires_ms: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO tokens (token_sha256, client_id, expires_ms) VALUES (?1, ?2, ?3)";
        self.exec(sql, vec![Arg::text(token_hash), Arg::text(client_id), Arg::Int(expires_ms)]).await?;
        Ok(())
    }

    /// The client of an unexpired token (by its hash), and when the token expires.
    pub async fn token_client(&self, token_hash: &str, now_ms: i64) -> Result<Option<(Client, i64)>, StoreError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS}, tokens.expires_ms FROM tokens JOIN clients ON clients.id = tokens.client_id \
             WHERE tokens.token_sha256 = ?1 AND tokens.expires_ms > ?2"
        );
        let row = self.row(&sql, vec![Arg::text(token_hash), Arg::Int(now_ms)]).await?;
        row.map(|r| Ok((client_row(&r)?, r.int(5)?))).transpose()
    }

    /// Revokes the tokens of `client_id` beyond its `keep` newest; the hashes revoked.
    pub async fn revoke_tokens_beyond(&self, client_id: &str, keep: usize) -> Result<Vec<String>, StoreError> {
        let all_after = match self.dialect() {
            Dialect::Sqlite => "LIMIT -1 OFFSET ?2",
            Dialect::Postgres => "OFFSET ?2",
        };
        let sql = format!(
            "DELETE FROM tokens WHERE token_sha256 IN (SELECT token_sha256 FROM tokens WHERE client_id = ?1 \
             ORDER BY expires_ms DESC, token_sha256 {all_after}) RETURNING token_sha256"
        );
        let rows = self.rows(&sql, vec![Arg::text(client_id), Arg::Int(keep as i64)]).await?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    /// Forgets tokens that expired before `now_ms`; how many.
    pub async fn purge_tokens(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.exec("DELETE FROM tokens WHERE expires_ms <= ?1", vec![Arg::Int(now_ms)]).await
    }
}
