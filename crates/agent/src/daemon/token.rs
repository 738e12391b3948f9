//! The client-credentials token (protocol.md §1.1). The agent only presents a token in the
//! connect handshake, so it fetches a fresh one before every new socket: an expired token can
//! never be presented, whatever lifetime the server gives.

use serde::Deserialize;

use crate::config::Config;
use crate::http::BodyError;
use crate::proxy::Route;

/// The most of a token endpoint's answer that is read (an answer is a few hundred bytes).
const TOKEN_ANSWER_LIMIT: usize = 64 * 1024;

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
    let body = match crate::http::body_within(resp, TOKEN_ANSWER_LIMIT).await {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(BodyError::Read(e)) => Err(e),
        Err(BodyError::TooLarge(limit)) => {
            let detail = format!("its answer is larger than {limit} bytes: check that base_url names the agent server (another service, or a proxy, may answer there)");
            return Err(TokenError::Unexpected { url: url.to_string(), status, detail });
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A token endpoint whose answer never ends: a clear error once past the limit, long before
    /// the request's timeout, and the agent stops reading.
    #[tokio::test]
    async fn an_endless_answer_is_refused_at_the_limit() {
        let (addr, server) = crate::http::test_servers::endless().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let file =
            format!("base_url = \"http://{addr}\"\nclient_id = \"c\"\nclient_secret = \"s\"\nagent_id = \"a\"\n");
        std::fs::write(&path, file).unwrap();
        let cfg = crate::config::ConfigSource::new(Some(path), [], Default::default()).load().unwrap();
        let started = std::time::Instant::now();
        let e = fetch(&reqwest::Client::new(), &cfg).await.unwrap_err();
        assert!(matches!(e, TokenError::Unexpected { status: 200, .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("larger than {TOKEN_ANSWER_LIMIT} bytes")), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(8), "cut at the limit, not at the timeout");
        let sent = server.await.unwrap();
        assert!(sent < 64 * 1024 * 1024, "the agent stopped reading: {sent} bytes sent");
    }
}
