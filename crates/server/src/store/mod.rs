//! What the server remembers, behind one interface with two backends: embedded SQLite (the
//! default, one file in the data directory, [`sqlite`]) and PostgreSQL for several nodes
//! ([`postgres`]). Both run SQL through [`db::Db`], so every store method is written once, in
//! the file of its concern, for both: [`agents`] (`Agent` resources and their last status),
//! [`credentials`] (clients and tokens, hashed), [`leases`], [`rollouts`] and their
//! [`members`], [`results`] (upgrade results and the page's [`fleet`] queries) and [`sessions`].
//! [`sql`] writes the SQL of an `Agent` search. Both backends run the same store test suite.
//!
//! Growing the store: a new table is one migration per backend (SQLite: `sqlite::SCHEMA`,
//! PostgreSQL: `postgres::MIGRATIONS`, numbered, applied once at start), and the methods that use
//! it in the file of their concern, written once over [`db::Db`].

pub mod agents;
pub mod credentials;
pub mod db;
pub mod fleet;
pub mod leases;
pub mod members;
pub mod postgres;
pub mod results;
pub mod rollouts;
pub mod sessions;
pub mod sql;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

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
    #[error("unexpected value in the database: {0}")]
    Decode(String),
}

/// Where the data lives: a SQLite file in a directory, or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    Sqlite(PathBuf),
    Postgres(String),
}

/// The store: a backend that runs SQL ([`db::Db`]); every method on `dyn Store` is written once,
/// in the file of its concern. Each is one short statement or transaction; none holds a lock
/// across another call.
pub trait Store: db::Db {
    /// The id of this server's `Project` (what Medplum clients expect a login to be in), made once.
    fn project_id(&self) -> &str;
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
    edge_agent_base::id::hex(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests;
