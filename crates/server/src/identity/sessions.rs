//! Web page sessions, kept in the store so that every node behind a load balancer knows them:
//! made at sign-in, each with its CSRF token, ended by signing out on any node. The page's
//! sign-in itself (cookie, CSRF and origin checks) is `operator::page::sign_in`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_agent_base::id::random_hex;
use edge_agent_base::time::now_ms;

use axum::http::{header, HeaderMap};

use crate::model::agent::Client;
use crate::store::sessions::StoredSession;
use crate::store::{hash_secret, Store, StoreError};

/// The name of the page's session cookie.
pub const COOKIE: &str = "edge_session";

/// The session cookie's value in a request's headers.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

/// The sessions, kept in the store so that every node knows them.
pub struct Sessions {
    ttl: Duration,
    store: Arc<dyn Store>,
    made: AtomicU64,
}

impl Sessions {
    pub fn new(ttl: Duration, store: Arc<dyn Store>) -> Sessions {
        Sessions { ttl, store, made: AtomicU64::new(0) }
    }

    /// A new session for `client_id`: its id (the cookie's value) and what is stored.
    pub async fn create(&self, client_id: &str) -> Result<(String, StoredSession), StoreError> {
        let id = random_hex(32);
        let s = StoredSession { client_id: client_id.to_string(), csrf: random_hex(32) };
        let now = now_ms();
        self.store.save_session(&hash_secret(&id), &s, now + self.ttl.as_millis() as i64).await?;
        if self.made.fetch_add(1, Ordering::Relaxed) % 64 == 63 {
            if let Err(e) = self.store.purge_sessions(now).await {
                tracing::warn!("cannot forget expired sessions: {e}");
            }
        }
        Ok((id, s))
    }

    pub async fn get(&self, id: &str) -> Result<Option<StoredSession>, StoreError> {
        self.store.session(&hash_secret(id), now_ms()).await
    }

    /// Whether the session still stands (not expired, not signed out). A store that cannot be
    /// read now does not end it.
    pub async fn alive(&self, id: &str) -> bool {
        self.get(id).await.map_or(true, |s| s.is_some())
    }

    /// The client signed in with the session named by the request's cookie, if it stands.
    pub async fn client_of(&self, headers: &HeaderMap) -> Result<Option<Client>, StoreError> {
        let Some(id) = cookie_value(headers) else { return Ok(None) };
        match self.get(&id).await? {
            Some(s) => self.store.client(&s.client_id).await,
            None => Ok(None),
        }
    }

    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        self.store.end_session(&hash_secret(id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_expire_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::open(dir.path()).unwrap());
        let (client, _) = store.create_client(crate::model::access::Role::Admin, None, "admin").await.unwrap();
        let s = Sessions::new(Duration::from_millis(30), store.clone());
        let (id, made) = s.create(&client.id).await.unwrap();
        assert_eq!(s.get(&id).await.unwrap(), Some(made));
        assert!(s.remove(&id).await.unwrap());
        assert!(!s.alive(&id).await, "a session signed out is gone");
        let (id, _) = s.create(&client.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!s.alive(&id).await, "an expired session is gone");
        assert_eq!(store.purge_sessions(now_ms()).await.unwrap(), 1);
    }
}
