//! `POST /oauth2/token` (client credentials in the form body, HTTP Basic, or both), the opaque
//! bearer tokens it hands out, and who is calling the REST API (a bearer token, or client
//! credentials in HTTP Basic, as Medplum accepts). Tokens are opaque random values kept hashed in
//! the store: valid on every node sharing it, and after restarts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;

use super::outcome::{error, store_error, ApiError};
use super::store::{hash_secret, now_ms, Client, Store, StoreError};
use super::AppState;

/// How many validated tokens a node remembers before it forgets the expired ones.
const CACHE_LIMIT: usize = 100_000;

/// Issued tokens: kept hashed in the store, so that every node accepts them and they survive a
/// restart, and remembered by each node once seen, so that a token costs one database read per
/// node, not one per request.
pub struct Tokens {
    ttl: Duration,
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (Client, i64)>>,
    issued: AtomicU64,
}

impl Tokens {
    pub fn new(ttl: Duration, store: Arc<dyn Store>) -> Tokens {
        Tokens { ttl, store, cache: Mutex::default(), issued: AtomicU64::new(0) }
    }

    async fn issue(&self, client: Client) -> Result<String, StoreError> {
        let token = edge_agent_base::id::random_hex(32);
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

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// (id, secret) from an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

pub async fn token(State(app): State<AppState>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap_or_default();
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            )
        }
        None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing grant_type"),
    }
    let basic = basic_credentials(&headers);
    let in_form = form.get("client_id").zip(form.get("client_secret")).map(|(i, s)| (i.clone(), s.clone()));
    let (id, secret) = match (basic.clone(), in_form) {
        (Some(b), Some(f)) if b != f => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Client credentials in the header and the body differ",
            )
        }
        (Some(c), _) | (None, Some(c)) => c,
        (None, None) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing client_id or client_secret")
        }
    };
    let status = if basic.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
    match app.store.authenticate(&id, &secret).await {
        Ok(Some(client)) => {
            // Medplum clients read `profile` and `project` from the answer (`medplum whoami`).
            let profile = json!({"reference": format!("ClientApplication/{}", client.id), "display": client.display()});
            let project =
                json!({"reference": format!("Project/{}", app.store.project_id()), "display": "edge-agent-server"});
            let access_token = match app.tokens.issue(client).await {
                Ok(token) => token,
                Err(e) => return unavailable(e),
            };
            let ttl = app.tokens.ttl.as_secs();
            let body = json!({"access_token": access_token, "token_type": "Bearer", "expires_in": ttl,
                "scope": "openid", "profile": profile, "project": project});
            ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
        }
        Ok(None) => oauth_error(status, "invalid_client", "Invalid client credentials"),
        Err(e) => unavailable(e),
    }
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!("token endpoint: {e}");
    oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "Credential store unavailable, try again")
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim())
}

/// Who calls the REST API: the client behind a valid bearer token, or behind client credentials
/// in an `Authorization: Basic` header; None when neither is valid.
pub async fn caller(app: &AppState, headers: &HeaderMap) -> Result<Option<Client>, StoreError> {
    if let Some(token) = bearer_token(headers) {
        if let Some(client) = app.tokens.client(token).await? {
            return Ok(Some(client));
        }
    }
    match basic_credentials(headers) {
        Some((id, secret)) => app.store.authenticate(&id, &secret).await,
        None => Ok(None),
    }
}

/// Only administrators call the REST API; an agent's own credentials get 403, except for reading
/// their own `Agent` ([`super::fhir::read`]).
pub async fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    let client = require_client(app, headers).await?;
    if !client.admin {
        return Err(forbidden());
    }
    Ok(client)
}

pub async fn require_client(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    caller(app, headers).await.map_err(store_error)?.ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "login",
            "Unauthorized: a valid bearer token or client credentials are required",
        )
    })
}

pub fn forbidden() -> ApiError {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden: agent credentials may only read their own Agent resource on the REST API",
    )
}
