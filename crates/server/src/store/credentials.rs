//! The clients that may call the server (secrets kept hashed) and the access tokens issued to
//! them (kept by their hash), for both backends.

use edge_agent_base::id::{random_hex, uuid};

use super::db::{Arg, Row};
use sha2::{Digest, Sha256};

use super::db::Store;
use super::error::StoreError;
use crate::model::agent::Client;

/// The hex SHA-256 under which a secret or a token is kept: they are 256-bit random values, so a
/// fast hash is enough for them to be useless to whoever reads the database.
pub fn hash_secret(secret: &str) -> String {
    edge_agent_base::id::hex(&Sha256::digest(secret.as_bytes()))
}

const CLIENT_COLUMNS: &str = "clients.id, clients.admin, clients.agent_id, clients.name";

fn client_row(r: &Row) -> Result<Client, StoreError> {
    Ok(Client { id: r.text(0)?, admin: r.boolean(1)?, agent_id: r.opt_text(2)?, name: r.opt_text(3)? })
}

impl dyn Store + '_ {
    /// Creates a client with a fresh random secret; returns (client, secret).
    pub async fn create_client(
        &self,
        admin: bool,
        agent_id: Option<&str>,
        name: &str,
    ) -> Result<(Client, String), StoreError> {
        let client = Client { id: uuid(), admin, agent_id: agent_id.map(str::to_owned), name: Some(name.to_string()) };
        let secret = random_hex(32);
        let sql = "INSERT INTO clients (id, secret_sha256, admin, agent_id, name) VALUES (?1, ?2, ?3, ?4, ?5)";
        let args = vec![
            Arg::text(&client.id),
            Arg::text(hash_secret(&secret)),
            Arg::Bool(admin),
            Arg::opt_text(client.agent_id.clone()),
            Arg::opt_text(client.name.clone()),
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
        row.map(|r| Ok((client_row(&r)?, r.int(4)?))).transpose()
    }

    /// Forgets tokens that expired before `now_ms`; how many.
    pub async fn purge_tokens(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.exec("DELETE FROM tokens WHERE expires_ms <= ?1", vec![Arg::Int(now_ms)]).await
    }
}
