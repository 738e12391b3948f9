//! What the server remembers, behind one interface with two backends: embedded SQLite (the
//! default, one file in the data directory, [`sqlite`]) and PostgreSQL for several nodes
//! ([`postgres`], over TLS as [`pg_tls`] says). Both run SQL through [`db::Db`], so every store method is written once, in
//! the file of its concern, for both: [`agents`] (`Agent` resources and their last status),
//! [`audit`] (the audit trail), [`credentials`] (clients and tokens, hashed), [`lifecycle`]
//! (clients and agents removed, rotated, changed) with their [`revocations`], [`leases`],
//! [`rollouts`] and their [`members`], [`results`] (upgrade results and the page's [`fleet`]
//! queries), [`sessions`] and the update [`policy`].
//! [`sql`] writes the SQL of an `Agent` search. Both backends run the same store test suite.
//!
//! Growing the store: a new table is one migration per backend (SQLite: `sqlite::SCHEMA`,
//! PostgreSQL: `postgres::MIGRATIONS`, numbered, applied once at start), and the methods that use
//! it in the file of their concern, written once over [`db::Db`].

pub mod agents;
pub mod audit;
pub mod credentials;
pub mod db;
pub mod error;
pub mod fleet;
pub mod leases;
pub mod lifecycle;
pub mod members;
pub mod pg_tls;
pub mod policy;
pub mod postgres;
pub mod results;
pub mod revocations;
pub mod rollouts;
pub mod sessions;
pub mod sql;
pub mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

pub use credentials::hash_secret;
pub use db::Store;
pub use error::StoreError;

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

#[cfg(test)]
mod tests;
