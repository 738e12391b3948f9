//! Revocations in the store, for both backends: each is written in the same transaction as the
//! change it announces (a removal, a rotation, a token revoked), so that a node that missed it on
//! the bus still finds it when it polls; they are kept for a few minutes only.

use edge_agent_base::id::random_hex;
use edge_agent_base::time::now_ms;

use super::db::{Arg, Stmt, Store};
use super::error::StoreError;
use crate::model::revocation::Revocation;

/// A new revocation, with a fresh id, stamped now.
pub fn revocation(reason: impl Into<String>) -> Revocation {
    Revocation { id: random_hex(16), at_ms: now_ms(), reason: reason.into(), ..Default::default() }
}

/// The statement that records `r`, to run in the transaction of the change.
pub fn record(r: &Revocation) -> Stmt {
    let body = serde_json::to_string(r).expect("a revocation serializes");
    (
        "INSERT INTO revocations (id, at_ms, body) VALUES (?1, ?2, ?3)".into(),
        vec![Arg::text(&r.id), Arg::Int(r.at_ms), Arg::text(body)],
    )
}

impl dyn Store + '_ {
    /// The revocations written at or after `since_ms`, oldest first.
    pub async fn revocations_since(&self, since_ms: i64) -> Result<Vec<Revocation>, StoreError> {
        let sql = "SELECT body FROM revocations WHERE at_ms >= ?1 ORDER BY at_ms, id";
        let rows = self.rows(sql, vec![Arg::Int(since_ms)]).await?;
        rows.iter()
            .map(|r| serde_json::from_str(&r.text(0)?).map_err(|e| StoreError::Decode(format!("revocation: {e}"))))
            .collect()
    }

    /// Forgets revocations written before `before_ms`; how many.
    pub async fn purge_revocations(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.exec("DELETE FROM revocations WHERE at_ms < ?1", vec![Arg::Int(before_ms)]).await
    }
}
