//! `POST /oauth2/token` (protocol.md §1.1): client credentials in the form body, in HTTP Basic,
//! or both (Medplum's own client sends both), answered with an opaque bearer token, or with an
//! OAuth error. Attempts are throttled per client address before anything is checked, tokens per
//! client once the secret was right (429 with `Retry-After`); refused credentials are logged with
//! the client id and the address.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::tokens::{basic_credentials, Tokens};
use crate::limits::conns;
use crate::limits::throttle::shown;
use crate::limits::throttle::{Throttle, Throttled};
use crate::metrics::{AuthFailure, Limit};
use crate::model::audit::{Outcome, Ref, LOGIN};
use crate::proxy::{Peer, Proxies};
use crate::store::{audit, StoreError};

/// The only body the token and revocation endpoints take.
const FORM: &str = "application/x-www-form-urlencoded";

/// What the token endpoint works with.
#[derive(Clone)]
pub struct TokenEndpoint {
    pub tokens: Arc<Tokens>,
    pub throttle: Arc<Throttle>,
    pub proxies: Arc<Proxies>,
}

/// An OAuth error answer: its status, `error` code and description.
pub struct OAuthError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "error_description": self.2}))).into_response()
    }
}

pub fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    OAuthError(status, error, description.to_string()).into_response()
}

/// 429 with `Retry-After`, in OAuth's words.
pub fn throttled(t: Throttled) -> Response {
    let secs = t.retry_after_secs();
    let why = match t.limit {
        Limit::IssueRatePerClient => {
            format!("Too many tokens issued to this client: reuse the one you have until it expires, or try again in {secs} s")
        }
        _ => format!("Too many token requests from your address: try again in {secs} s"),
    };
    let mut resp = oauth_error(StatusCode::TOO_MANY_REQUESTS, "temporarily_unavailable", &why);
    resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
    resp
}

/// The client credentials of a token request: (id, secret), or the OAuth error to answer.
fn credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<(String, String), OAuthError> {
    let invalid = |why: &str| OAuthError(StatusCode::BAD_REQUEST, "invalid_request", why.to_string());
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            let why = format!("Unsupported grant type: {}", crate::limits::throttle::shown(other));
            return Err(OAuthError(StatusCode::BAD_REQUEST, "unsupported_grant_type", why));
        }
        None => return Err(invalid("Missing grant_type")),
    }
    client_credentials(headers, form)
}

/// The fields of a token or revocation request's form body. A field given twice is refused, as
/// OAuth requires (RFC 6749 §3.1): which of the two was meant cannot be known. So is a body said
/// to be anything but a form (JSON, say): read as a form, it would be refused for a field it may
/// well hold ("Missing grant_type"). A body without a `Content-Type` is read as a form.
pub fn form_fields(headers: &HeaderMap, body: &str) -> Result<HashMap<String, String>, OAuthError> {
    let invalid = |why: String| OAuthError(StatusCode::BAD_REQUEST, "invalid_request", why);
    if let Some(given) = headers.get(header::CONTENT_TYPE) {
        let essence = given.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case(FORM) {
            let given = shown(&String::from_utf8_lossy(given.as_bytes()));
            return Err(invalid(format!("The body must be a form (Content-Type: {FORM}), not {given}")));
        }
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(body).map_err(|_| invalid(format!("The body is not a form ({FORM})")))?;
    let mut form = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if form.contains_key(&k) {
            return Err(invalid(format!("The field {} is given twice: give it once", shown(&k))));
        }
        form.insert(k, v);
    }
    Ok(form)
}

/// The client credentials of a request to the token or revocation endpoint: in HTTP Basic, in the
/// form body, or both when they agree.
pub fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<(String, String), OAuthError> {
    let invalid = |why: &str| OAuthError(StatusCode::BAD_REQUEST, "invalid_request", why.to_string());
    let basic = basic_credentials(headers);
    let in_form = form.get("client_id").zip(form.get("client_secret")).map(|(i, s)| (i.clone(), s.clone()));
    match (basic, in_form) {
        (Some(b), Some(f)) if b != f => Err(invalid("Client credentials in the header and the body differ")),
        (Some(c), _) | (None, Some(c)) => Ok(c),
        (None, None) => Err(invalid("Missing client_id or client_secret")),
    }
}

/// `POST /oauth2/token`.
pub async fn token(State(endpoint): State<TokenEndpoint>, peer: Peer, headers: HeaderMap, body: String) -> Response {
    let TokenEndpoint { tokens, throttle, proxies } = endpoint;
    let ip = proxies.client_ip(peer, &headers);
    if let Err(t) = throttle.attempt(ip) {
        return throttled(t);
    }
    let form = match form_fields(&headers, &body) {
        Ok(form) => form,
        Err(answer) => return answer.into_response(),
    };
    let (id, secret) = match credentials(&headers, &form) {
        Ok(c) => c,
        Err(answer) => return answer.into_response(),
    };
    let status = if basic_credentials(&headers).is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
    let client = match tokens.store.authenticate(&id, &secret).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            throttle.refused(AuthFailure::Token, &id, ip);
            let who = Ref { reference: format!("ClientApplication/{}", shown(&id)), display: None };
            record(&tokens, who, ip, Outcome::Minor, "Token refused: invalid client credentials").await;
            return oauth_error(status, "invalid_client", "Invalid client credentials");
        }
        Err(e) => return unavailable(e),
    };
    let who = Ref { reference: format!("ClientApplication/{}", client.id), display: Some(client.display()) };
    record(&tokens, who, ip, Outcome::Success, "Token issued").await;
    conns::authenticated(&client.id);
    if let Err(t) = throttle.issue(&client.id) {
        return throttled(t);
    }
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

/// Records a token request in the audit trail (never its secret, nor the token).
async fn record(tokens: &Tokens, who: Ref, ip: Option<std::net::IpAddr>, outcome: Outcome, why: &str) {
    let mut e = audit::event(LOGIN, "token", 'E', Some(who), ip.map(|i| i.to_string()));
    (e.outcome, e.description) = (outcome, why.to_string());
    if let Err(err) = tokens.store.record_audit(&[e]).await {
        tracing::error!("cannot record an audit event: {err}");
    }
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!("token endpoint: {e}");
    oauth_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "Credential store unavailable, try again")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(content_type: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(t) = content_type {
            headers.insert(header::CONTENT_TYPE, t.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_token_request_is_a_form_and_says_so_when_it_is_not() {
        let body = "grant_type=client_credentials&client_id=a&client_secret=b";
        for form in [None, Some(FORM), Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8")] {
            let fields = form_fields(&typed(form), body).unwrap_or_else(|e| panic!("{form:?}: {}", e.2));
            assert_eq!(fields["grant_type"], "client_credentials", "{form:?}");
        }
        let json = r#"{"grant_type":"client_credentials"}"#;
        let OAuthError(status, error, why) = form_fields(&typed(Some("application/json")), json).err().unwrap();
        assert_eq!((status, error), (StatusCode::BAD_REQUEST, "invalid_request"));
        assert_eq!(
            why,
            "The body must be a form (Content-Type: application/x-www-form-urlencoded), not application/json"
        );
        let twice = form_fields(&typed(None), "client_id=a&client_id=b").err().unwrap();
        assert_eq!(twice.2, "The field client_id is given twice: give it once");
    }
}
