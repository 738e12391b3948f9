//! What the server remembers, behind one interface with two backends: embedded SQLite (the
//! default, one file in the data directory, [`sqlite`]) and PostgreSQL for several nodes
//! ([`postgres`]). Both keep `Agent` resources, the client credentials that may act for them
//! (secrets hashed), each agent's last known status, the access tokens issued (hashed), named
//! leases, rollouts ([`rollouts`]) and upgrade results with the web page's fleet queries
//! ([`results`], [`fleet`]); both run the same store test suite (`tests/e2e/store.rs`).
//!
//! Growing the store: a new table is one migration per backend (SQLite: `sqlite::SCHEMA`,
//! PostgreSQL: `postgres::MIGRATIONS`, numbered, applied once at start) and the methods that use
//! it, added to [`Store`] with their implementations side by side.

pub mod fleet;
pub mod postgres;
pub mod results;
pub mod rollouts;
mod rollouts_pg;
pub mod sessions;
pub mod sql;
pub mod sqlite;
pub mod types;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use types::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL URL {url}: {why}")]
    Url { url: String, why: String },
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("migration {version} failed: {source}")]
    Migrate { version: usize, source: tokio_postgres::Error },
}

/// Where the data lives: a SQLite file in a directory, or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Opens the configured store, creating or migrating its schema.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite(dir) => Arc::new(sqlite::SqliteStore::open(dir)?),
        StoreConfig::Postgres(url) => Arc::new(postgres::PgStore::connect(url).await?),
    })
}

/// The hex SHA-256 under which a secret or a token is kept: they are 256-bit random values, so a
/// fast hash is enough for them to be useless to whoever reads the database.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch, the unit of token expiry.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The one store interface. Every method is one short transaction; none holds a lock across
/// another call.
#[async_trait]
pub trait Store: rollouts::RolloutStore + results::ResultsStore + sessions::SessionStore + Send + Sync {
    /// The id of this server's `Project` (what Medplum clients expect a login to be in), made once.
    fn project_id(&self) -> &str;

    async fn create_agent(&self, name: &str, status: &str, identifiers: &Value) -> Result<AgentRow, StoreError>;
    async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError>;
    /// One page of matching agents, and how many match in all.
    async fn search(&self, q: &AgentQuery) -> Result<(Vec<AgentRow>, usize), StoreError>;

    /// Creates a client with a fresh random secret; returns (client, secret).
    async fn create_client(
        &self,
        admin: bool,
        agent_id: Option<&str>,
        name: &str,
    ) -> Result<(Client, String), StoreError>;
    /// The client whose id and secret these are, if any.
    async fn authenticate(&self, id: &str, secret: &str) -> Result<Option<Client>, StoreError>;

    /// The last stored status of each agent, in the order asked (None: never seen, or no agent).
    async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<StatusRow>>, StoreError>;
    async fn save_status(&self, id: &str, status: &StatusRow) -> Result<(), StoreError>;

    /// Keeps an issued token (by its hash) for `client_id` until `expires_ms`.
    async fn save_token(&self, token_hash: &str, client_id: &str, expires_ms: i64) -> Result<(), StoreError>;
    /// The client of an unexpired token (by its hash), and when the token expires.
    async fn token_client(&self, token_hash: &str, now_ms: i64) -> Result<Option<(Client, i64)>, StoreError>;
    /// Forgets tokens that expired before `now_ms`; how many.
    async fn purge_tokens(&self, now_ms: i64) -> Result<u64, StoreError>;

    /// Takes the lease `name` for `holder` for `ttl`, or extends it when `holder` has it already.
    /// True when `holder` holds it now; false when another holder's lease has not expired. Across
    /// every node sharing the store, at most one holder has an unexpired lease at any instant.
    async fn lease_acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Gives the lease up at once if `holder` has it; true when it did.
    async fn lease_release(&self, name: &str, holder: &str) -> Result<bool, StoreError>;
}
