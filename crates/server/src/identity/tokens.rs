//! The opaque bearer tokens the server hands out ([`Tokens`]), and who is calling (a bearer token,
//! or client credentials in HTTP Basic, as Medplum accepts). Tokens are random values kept hashed
//! in the store: valid on every node sharing it, and after restarts. A client keeps at most
//! `--max-tokens-per-client` unexpired tokens: issuing one more revokes its oldest.
//!
//! A node remembers the tokens it validated only while it follows the revocations
//! (`conn::revocations` says [`Tokens::feed_alive`] at every poll of the store): a revocation drops
//! the tokens it names at once, and a node that cannot hear of revocations asks the store every time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use base64::Engine;
use edge_agent_base::id::random_hex;
use edge_agent_base::time::now_ms;

use crate::limits::conns;
use crate::metrics::{AuthFailure, EdgeMetrics, Limit};
use crate::model::agent::Client;
use crate::store::{hash_secret, Store, StoreError};

/// How many validated tokens a node remembers before it forgets the expired ones.
const CACHE_LIMIT: usize = 100_000;
/// How long a node believes a token it validated before it asks the store again, revocations
/// aside (they take effect at once).
const CACHE_RECHECK_MS: i64 = 30_000;
/// How long after the last successful poll of the revocations the cache is still believed.
const FEED_STALE_MS: i64 = 2_000;

/// A validated token: its client, when it expires, and when to ask the store again.
#[derive(Clone)]
struct Known {
    client: Client,
    expires: i64,
    recheck: i64,
}

/// Issued tokens: kept hashed in the store, so that every node accepts them and they survive a
/// restart, and remembered by each node once seen, so that a token costs one database read per
/// node, not one per request.
pub struct Tokens {
    pub(crate) ttl: Duration,
    max_per_client: usize,
    pub(crate) store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, Known>>,
    /// Until when the cache may be believed: the revocations were followed until shortly before.
    trusted_until: AtomicI64,
    issued: AtomicU64,
    metrics: EdgeMetrics,
}

impl Tokens {
    pub fn new(ttl: Duration, max_per_client: usize, store: Arc<dyn Store>, metrics: EdgeMetrics) -> Tokens {
        Tokens {
            ttl,
            max_per_client,
            store,
            cache: Mutex::default(),
            trusted_until: AtomicI64::new(0),
            issued: AtomicU64::new(0),
            metrics,
        }
    }

    /// A new token for `client`, kept (hashed) until its lifetime ends; the client's oldest
    /// tokens beyond the bound are revoked.
    pub async fn issue(&self, client: Client) -> Result<String, StoreError> {
        let token = random_hex(32);
        let hash = hash_secret(&token);
        let now = now_ms();
        let expires = now + self.ttl.as_millis() as i64;
        self.store.save_token(&hash, &client.id, expires).await?;
        let revoked = self.store.revoke_tokens_beyond(&client.id, self.max_per_client).await?;
        if !revoked.is_empty() {
            tracing::info!(client_id = client.id, revoked = revoked.len(), "oldest tokens revoked: too many issued");
            let mut cache = self.cache.lock().unwrap();
            for r in &revoked {
                cache.remove(r);
                self.metrics.hit(Limit::TokensPerClient);
            }
        }
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
            cache.retain(|_, k| k.expires > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(hash, Known { client, expires, recheck: now + CACHE_RECHECK_MS });
    }

    /// The client a valid, unexpired, unrevoked token was issued to, by any node.
    pub async fn client(&self, token: &str) -> Result<Option<Client>, StoreError> {
        self.client_by_hash(&hash_secret(token)).await
    }

    /// The same, by the token's hash (a caller that needs the hash too computes it once).
    pub async fn client_by_hash(&self, hash: &str) -> Result<Option<Client>, StoreError> {
        let now = now_ms();
        let cached = self.cache.lock().unwrap().get(hash).cloned();
        match cached {
            Some(k) if k.expires <= now => {
                self.cache.lock().unwrap().remove(hash);
                return Ok(None);
            }
            Some(k) if k.recheck > now && self.trusted_until.load(Ordering::Relaxed) > now => {
                return Ok(Some(k.client))
            }
            _ => {}
        }
        match self.store.token_client(hash, now).await? {
            Some((client, expires)) => {
                self.remember(hash.to_string(), client.clone(), expires, now);
                Ok(Some(client))
            }
            None => {
                self.cache.lock().unwrap().remove(hash);
                Ok(None)
            }
        }
    }
}

impl Tokens {
    /// The revocations were read at `now_ms`: what the cache holds may be believed a little longer.
    pub fn feed_alive(&self, now_ms: i64) {
        self.trusted_until.store(now_ms + FEED_STALE_MS, Ordering::Relaxed);
    }

    /// Forgets the tokens with these hashes and every token of these clients.
    pub fn forget(&self, hashes: &[String], clients: &[String]) {
        let mut cache = self.cache.lock().unwrap();
        for h in hashes {
            cache.remove(h);
        }
        if !clients.is_empty() {
            cache.retain(|_, k| !clients.contains(&k.client.id));
        }
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim())
}

impl Tokens {
    /// Who calls: the client behind a valid bearer token, or behind client credentials in an
    /// `Authorization: Basic` header; None when neither is valid.
    /// A caller found marks the connection authenticated; credentials refused are counted.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Option<Client>, StoreError> {
        let found = self.credentials_of(headers).await?;
        if let Some(client) = &found {
            conns::authenticated(&client.id);
        } else if headers.contains_key(header::AUTHORIZATION) {
            // Not throttled, so at debug level only: a flood of them cannot flood the log.
            tracing::debug!("credentials refused on the REST API");
            self.metrics.auth_failed(AuthFailure::Api);
        }
        Ok(found)
    }

    async fn credentials_of(&self, headers: &HeaderMap) -> Result<Option<Client>, StoreError> {
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
