//! Web page sessions in the store, for both backends, so that a session made on one node is good
//! on every node behind the load balancer, and signing out on one ends it on all. Kept by the hash
//! of the session id, as tokens are: a copy of the database holds no live cookie.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::StoreError;

/// A stored session: who signed in, and the CSRF token the page must send with every change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub client_id: String,
    pub csrf: String,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Keeps a session (by the hash of its id) until `expires_ms`.
    async fn save_session(&self, id_hash: &str, s: &StoredSession, expires_ms: i64) -> Result<(), StoreError>;
    /// The session, if it stands at `now_ms`.
    async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<StoredSession>, StoreError>;
    /// Ends a session; whether it stood.
    async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError>;
    /// Forgets sessions that expired before `now_ms`; how many.
    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, StoreError>;
}

const SAVE: &str = "INSERT INTO sessions (id_sha256, client_id, csrf, expires_ms) VALUES (?1, ?2, ?3, ?4)";
const GET: &str = "SELECT client_id, csrf FROM sessions WHERE id_sha256 = ?1 AND expires_ms > ?2";
const END: &str = "DELETE FROM sessions WHERE id_sha256 = ?1";
const PURGE: &str = "DELETE FROM sessions WHERE expires_ms <= ?1";

/// `?n` placeholders become PostgreSQL's `$n`.
fn pg(sql: &str) -> String {
    sql.replace('?', "$")
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn save_session(&self, id_hash: &str, s: &StoredSession, expires_ms: i64) -> Result<(), StoreError> {
        self.conn.lock().unwrap().execute(SAVE, params![id_hash, s.client_id, s.csrf, expires_ms])?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<StoredSession>, StoreError> {
        let conn = self.conn.lock().unwrap();
        let row = conn
            .query_row(GET, params![id_hash, now_ms], |r| Ok(StoredSession { client_id: r.get(0)?, csrf: r.get(1)? }));
        Ok(row.optional()?)
    }

    async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self.conn.lock().unwrap().execute(END, [id_hash])? > 0)
    }

    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        Ok(self.conn.lock().unwrap().execute(PURGE, [now_ms])? as u64)
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn save_session(&self, id_hash: &str, s: &StoredSession, expires_ms: i64) -> Result<(), StoreError> {
        self.execute(&pg(SAVE), &[&id_hash, &s.client_id, &s.csrf, &expires_ms]).await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str, now_ms: i64) -> Result<Option<StoredSession>, StoreError> {
        let rows = self.query(&pg(GET), &[&id_hash, &now_ms]).await?;
        Ok(rows.first().map(|r| StoredSession { client_id: r.get(0), csrf: r.get(1) }))
    }

    async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self.execute(&pg(END), &[&id_hash]).await? > 0)
    }

    async fn purge_sessions(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.execute(&pg(PURGE), &[&now_ms]).await
    }
}
