//! Web page sessions in the store, for both backends, so that a session made on one node is good
//! on every node behind the load balancer, and signing out on one ends it on all. Kept by the hash
//! of the session id, as tokens are: a copy of the database holds no live cookie.

use super::db::{Arg, Store};
use super::error::StoreError;

/// A stored session: who signed in, and the CSRF token the page must send with every change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub client_id: String,
    pub csrf: String,
}

impl dyn Store + '_ {
    /// Keeps a session (by the hash of its id) until `expires_ms`.
    pub async fn save_session(&self, id_hash: &str, s: &StoredSession, expires_ms: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO sessions (id_sha256, client_id, csrf, expires_ms) VALUES (?1, ?2, ?3, ?4)";
        let args = vec![Arg::text(id_hash), Arg::text(&s.client_id), Arg::text(&s.csrf), Arg::Int(expires_ms)];
        self.exec(sql, args).await?;
        Ok(())
    }

    /// The session, if it stands at `now_ms`.
    pub async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<StoredSession>, StoreError> {
        let sql = "SELECT client_id, csrf FROM sessions WHERE id_sha256 = ?1 AND expires_ms > ?2";
        let row = self.row(sql, vec![Arg::text(id_hash), Arg::Int(now_ms)]).await?;
        row.map(|r| Ok(StoredSession { client_id: r.text(0)?, csrf: r.text(1)? })).transpose()
    }

    /// Ends a session; whether it stood.
    pub async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self.exec("DELETE FROM sessions WHERE id_sha256 = ?1", vec![Arg::text(id_hash)]).await? > 0)
    }

    /// Forgets sessions that expired before `now_ms`; how many.
    pub async fn purge_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.exec("DELETE FROM sessions WHERE expires_ms <= ?1", vec![Arg::Int(now_ms)]).await
    }
}
