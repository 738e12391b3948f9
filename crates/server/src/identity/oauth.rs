//! `POST /oauth2/token` (protocol.md §1.1): client credentials in the form body, in HTTP Basic,
//! or both (Medplum's own client sends both), answered with an opaque bearer token, or with an
//! OAuth error.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::tokens::{basic_credentials, Tokens};
use crate::store::StoreError;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// `POST /oauth2/token`.
pub async fn token(State(tokens): State<Arc<Tokens>>, headers: HeaderMap, body: String) -> Response {
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
    match tokens.store.authenticate(&id, &secret).await {
        Ok(Some(client)) => {
            // Medplum clients read `profile` and `project` from the answer (`medplum whoami`).
            let profile = json!({"reference": format!("ClientApplication/{}", client.id), "display": client.display()});
            let project =
                json!({"reference": format!("Project/{}", tokens.store.project_id()), "display": "edge-agent-server"});
            let access_token = match tokens.issue(client).await {
                Ok(token) => token,
                Err(e) => return unavailable(e),
            };
            let ttl = tokens.ttl.as_secs();
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
