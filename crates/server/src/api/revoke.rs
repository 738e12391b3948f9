//! `POST /oauth2/revoke` (RFC 7009): a client ends one of its tokens before it expires; an
//! administrator may end any. The client authenticates as at the token endpoint (HTTP Basic or the
//! form body), throttled the same way. A token that is unknown, already ended, or another
//! client's (for a non-administrator) is answered 200 all the same, as the RFC asks, so that the
//! answer tells nothing about other tokens.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::app::AppState;
use crate::identity::oauth::{client_credentials, form_fields, oauth_error, throttled};
use crate::metrics::AuthFailure;
use crate::proxy::Peer;
use crate::store::revocations::revocation;
use crate::store::{hash_secret, StoreError};

/// What the owner of a revoked token's socket is told.
const REVOKED: &str = "Access token revoked: request a new one";

/// `POST /oauth2/revoke`.
pub async fn revoke(State(app): State<AppState>, peer: Peer, headers: HeaderMap, body: String) -> Response {
    let ip = app.config.proxies.client_ip(peer, &headers);
    if let Err(t) = app.throttle.attempt(ip) {
        return throttled(t);
    }
    let form = match form_fields(&headers, &body) {
        Ok(form) => form,
        Err(e) => return e.into_response(),
    };
    let (id, secret) = match client_credentials(&headers, &form) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let client = match app.store.authenticate(&id, &secret).await {
        Ok(Some(client)) => {
            super::audit::actor(client.reference());
            client
        }
        Ok(None) => {
            app.throttle.refused(AuthFailure::Token, &id, ip);
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client credentials");
        }
        Err(e) => return unavailable(e),
    };
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Missing token: the token to revoke");
    };
    let hash = hash_secret(token);
    let owner = match app.store.token_owner(&hash).await {
        Ok(owner) => owner,
        Err(e) => return unavailable(e),
    };
    if owner.is_some_and(|o| o == client.id || client.is_admin()) {
        let mut r = revocation(REVOKED);
        match app.store.revoke_token(&hash, &mut r, vec![]).await {
            Ok(Some(_)) => app.revocations.announce(&r).await,
            Ok(None) => {}
            Err(e) => return unavailable(e),
        }
        tracing::info!(client_id = client.id, "access token revoked");
    }
    StatusCode::OK.into_response()
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!("revocation endpoint: {e}");
    oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "Credential store unavailable, try again")
}
