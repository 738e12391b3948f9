//! `POST /oauth2/token` (client credentials in the form body, HTTP Basic, or both), the opaque
//! bearer tokens it hands out, and who is calling the REST API (a bearer token, or client
//! credentials in HTTP Basic, as Medplum accepts). Tokens live in memory: after a restart clients
//! simply ask again, which agents do before every new socket anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;

use super::db::{Client, StoreError};
use super::AppState;
use crate::util;

pub struct Tokens {
    ttl: Duration,
    map: Mutex<HashMap<String, (Client, Instant)>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens { ttl, map: Mutex::default() }
    }

    fn issue(&self, client: Client) -> String {
        let token = util::random_hex(32);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, (_, expires)| *expires > now);
        }
        map.insert(token.clone(), (client, now + self.ttl));
        token
    }

    /// The client a valid, unexpired token was issued to.
    pub fn client(&self, token: &str) -> Option<Client> {
        let mut map = self.map.lock().unwrap();
        match map.get(token) {
            Some((client, expires)) if *expires > Instant::now() => Some(client.clone()),
            Some(_) => {
                map.remove(token);
                None
            }
            None => None,
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
    match app.store.authenticate(&id, &secret) {
        Ok(Some(client)) => {
            // Medplum clients read `profile` and `project` from the answer (`medplum whoami`).
            let profile = json!({"reference": format!("ClientApplication/{}", client.id), "display": client.display()});
            let project =
                json!({"reference": format!("Project/{}", app.store.project_id()), "display": "edge-agent-server"});
            let access_token = app.tokens.issue(client);
            let ttl = app.tokens.ttl.as_secs();
            let body = json!({"access_token": access_token, "token_type": "Bearer", "expires_in": ttl,
                "scope": "openid", "profile": profile, "project": project});
            ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
        }
        Ok(None) => oauth_error(status, "invalid_client", "Invalid client credentials"),
        Err(e) => {
            tracing::error!("token endpoint: {e}");
            oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "Credential store unavailable")
        }
    }
}

/// The client behind an `Authorization: Bearer` header, if the token is valid.
pub fn bearer_client(app: &AppState, headers: &HeaderMap) -> Option<Client> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    app.tokens.client(token.trim())
}

/// Who calls the REST API: the client behind a valid bearer token, or behind client credentials
/// in an `Authorization: Basic` header; None when neither is valid.
pub fn caller(app: &AppState, headers: &HeaderMap) -> Result<Option<Client>, StoreError> {
    if let Some(client) = bearer_client(app, headers) {
        return Ok(Some(client));
    }
    match basic_credentials(headers) {
        Some((id, secret)) => app.store.authenticate(&id, &secret),
        None => Ok(None),
    }
}
