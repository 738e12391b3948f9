//! The client-credentials token (protocol.md §1.1). The agent only presents a token in the
//! connect handshake, so it fetches a fresh one before every new socket: an expired token can
//! never be presented, whatever lifetime the server gives.

use serde::Deserialize;

use crate::config::Config;
use crate::proxy::Route;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token request to {url} failed, {route}: {detail}")]
    Unreachable { url: String, route: String, detail: String },
    #[error("token request to {url} failed, {route}: the proxy answered {status}: {hint}")]
    Proxy { url: String, route: String, status: u16, hint: &'static str },
    #[error(
        "the server refused this agent's client credentials ({status}: {detail}): check client_id and client_secret"
    )]
    Refused { status: u16, detail: String },
    #[error("token endpoint {url} answered {status}: {detail}")]
    Unexpected { url: String, status: u16, detail: String },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

/// `POST {base}/oauth2/token` with the client credentials in the form body and in HTTP Basic,
/// as Medplum's own client does.
pub async fn fetch(http: &reqwest::Client, cfg: &Config) -> Result<String, TokenError> {
    let url = cfg.token_url();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", cfg.client_id.as_str()),
        ("client_secret", cfg.client_secret.expose()),
    ];
    let route = cfg.proxy.route(&url);
    let unreachable = |e: reqwest::Error| TokenError::Unreachable {
        url: url.to_string(),
        route: route.to_string(),
        detail: edge_agent_base::error::error_chain(&e),
    };
    let resp = http
        .post(url.clone())
        .basic_auth(&cfg.client_id, Some(cfg.client_secret.expose()))
        .form(&form)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status().as_u16();
    let body = resp.text().await;
    // A proxy that wants credentials answers 407 (some, such as tinyproxy, 401 for wrong ones,
    // without an OAuth error body, and close at once).
    let oauth_body = body
        .as_deref()
        .is_ok_and(|b| serde_json::from_str::<serde_json::Value>(b).is_ok_and(|v| v.get("error").is_some()));
    if matches!(route, Route::Via(_)) && (status == 407 || (status == 401 && !oauth_body)) {
        let hint = "give the proxy's credentials in proxy_url (http://user:password@host:port) or in the file proxy_auth names";
        return Err(TokenError::Proxy { url: url.to_string(), route: route.to_string(), status, hint });
    }
    let body = body.map_err(unreachable)?;
    if status == 200 {
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|e| TokenError::Unexpected {
            url: url.to_string(),
            status,
            detail: format!("no access_token in the answer ({e})"),
        })?;
        return Ok(parsed.access_token);
    }
    let detail = oauth_error(&body);
    if status == 400 || status == 401 {
        Err(TokenError::Refused { status, detail })
    } else {
        Err(TokenError::Unexpected { url: url.to_string(), status, detail })
    }
}

/// The `error_description` (or `error`) of an OAuth error answer, else the start of the body.
fn oauth_error(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v.get("error_description")
        .or_else(|| v.get("error"))
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(200).collect())
}
