//! What can go wrong in the store, on either backend.

use std::time::Duration;

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
    #[error("cannot connect to PostgreSQL at {url}: {why}")]
    Connect { url: String, why: String },
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("migration {version} failed: {source}")]
    Migrate { version: usize, source: tokio_postgres::Error },
    #[error("unexpected value in the database: {0}")]
    Decode(String),
    /// A write held by a lease found it lost (expired while the write waited on the store, and
    /// maybe taken by another writer): nothing was written.
    #[error("the lease {0:?} was lost before the write was made (the store was slow): nothing was written; try again")]
    LeaseLost(String),
}
