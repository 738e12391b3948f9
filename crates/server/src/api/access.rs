//! Who may call what on the REST API: a bearer token or client credentials are required, and only
//! administrators may call it, except that an agent's own credentials may read their own `Agent`
//! ([`super::fhir::read`]).

use axum::http::{HeaderMap, StatusCode};

use super::app::AppState;
use super::outcome::{error, store_error, ApiError};
use crate::model::agent::Client;

/// An administrator, or a refusal: 401 without valid credentials, 403 for an agent's.
pub async fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    let client = require_client(app, headers).await?;
    if !client.admin {
        return Err(forbidden());
    }
    Ok(client)
}

pub async fn require_client(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    app.tokens.caller(headers).await.map_err(store_error)?.ok_or_else(|| {
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
