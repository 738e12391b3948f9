//! The opaque bearer tokens the server hands out ([`Tokens`]), and who is calling (a bearer token,
//! or client credentials in HTTP Basic, as Medplum accepts). Tokens are random values kept hashed
//! in the store: valid on every node sharing it, and after restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use base64::Engine;
use edge_agent_base::id::random_hex;
use edge_agent_base::time::now_ms;

use crate::model::agent::Client;
use crate::store::{hash_secret, Store, StoreError};

/// How many validated tokens a node remembers before it forgets the expired ones.
const CACHE_LIMIT: usize = 100_000;

/// Issued tokens: kept hashed in the store, so that every node accepts them and they survive a
/// restart, and remembered by each node once seen, so that a token costs one database read per
/// node, not one per request.
pub struct Tokens {
    pub(crate) ttl: Duration,
    pub(crate) store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (Client, i64)>>,
    issued: AtomicU64,
}

impl Tokens {
    pub fn new(ttl: Duration, store: Arc<dyn Store>) -> Tokens {
        Tokens { ttl, store, cache: Mutex::default(), issued: AtomicU64::new(0) }
    }

    /// A new token for `client`, kept (hashed) until its lifetime ends.
    pub async fn issue(&self, client: Client) -> Result<String, StoreError> {
        let token = random_hex(32);
        let hash = hash_secret(&token);
        let now = now_ms();
        let expires = now + self.ttl.as_millis() as i64;
        self.store.save_token(&hash, &client.id, expires).await?;
        self.remember(hash, client, expires, now);
        if self.issued.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
            if let Err(e) = self.store.purge_tokens(now).await {
                tracing::warn!("cannot forget expired tokens: {e}");
            }
        }
        Ok(token)
    }

    fn remember(&self, hash: String, client: Client, expires: i64, now: i64) {
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, e)| *e > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(hash, (client, expires));
    }

    /// The client a valid, unexpired token was issued to, by any node.
    pub async fn client(&self, token: &str) -> Result<Option<Client>, StoreError> {
        let hash = hash_secret(token);
        let now = now_ms();
        let cached = self.cache.lock().unwrap().get(&hash).cloned();
        if let Some((client, expires)) = cached {
            if expires > now {
                return Ok(Some(client));
            }
            self.cache.lock().unwrap().remove(&hash);
            return Ok(None);
        }
        match self.store.token_client(&hash, now).await? {
            Some((client, expires)) => {
                self.remember(hash, client.clone(), expires, now);
                Ok(Some(client))
            }
            None => Ok(None),
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim())
}

impl Tokens {
    /// Who calls: the client behind a valid bearer token, or behind client credentials in an
    /// `Authorization: Basic` header; None when neither is valid.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Option<Client>, StoreError> {
        if let Some(token) = bearer_token(headers) {
            if let Some(client) = self.client(token).await? {
                return Ok(Some(client));
            }
        }
        match basic_credentials(headers) {
            Some((id, secret)) => self.store.authenticate(&id, &secret).await,
            None => Ok(None),
        }
    }
}

/// (id, secret) from an `Authorization: Basic` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}
