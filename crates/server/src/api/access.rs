//! Who is calling on the REST API: a bearer token or client credentials are required. What each
//! role may call is [`super::rules`]'s table, enforced before any handler runs; handlers only
//! narrow it (an agent's own credentials may read their own `Agent`, [`super::fhir::read`]).

use axum::http::{HeaderMap, StatusCode};

use super::app::AppState;
use super::outcome::{error, store_error, ApiError};
use crate::model::agent::Client;

pub async fn require_client(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    app.tokens.caller(headers).await.map_err(store_error)?.ok_or_else(unauthorized)
}

pub fn unauthorized() -> ApiError {
    error(StatusCode::UNAUTHORIZED, "login", "Unauthorized: a valid bearer token or client credentials are required")
}

pub fn forbidden() -> ApiError {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden: this needs the viewer role; agent credentials may only read their own Agent resource",
    )
}
