//! The store test suite, on both backends: embedded SQLite, and a real PostgreSQL that the tests
//! start themselves (`edge_agent_e2e::services`). The same calls must give the same answers.

mod audit;
mod guards;
mod policy;
mod results;
mod rollouts;
mod suite;

use std::sync::Arc;

use super::{Store, StoreConfig};

/// A new SQLite store in a scratch directory, which lives as long as the store is used.
async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = super::open(&StoreConfig::Sqlite(dir.path().join("data"))).await.unwrap();
    (dir, store)
}

/// The store on the PostgreSQL the tests share (a database of its own each time).
async fn postgres() -> Arc<dyn Store> {
    super::open(&StoreConfig::Postgres(edge_agent_e2e::services::shared_db().await)).await.unwrap()
}
