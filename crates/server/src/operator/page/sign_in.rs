//! Signing in to the web page: an admin client signs in with its id and secret and gets an
//! `HttpOnly`, `SameSite=Strict` cookie naming a session kept in the store
//! ([`crate::identity::sessions`]), so that every node behind a load balancer knows it. Every
//! state-changing request must also carry the session's CSRF token in a header and, when the
//! browser sends one, an `Origin` equal to the server's own. Signing out removes the session on
//! every node, so the cookie is dead even if it was copied.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::api::app::AppState;

pub const COOKIE: &str = "edge_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Why a page request is refused; the page shows `message` and, for 401, the sign-in form.
#[derive(Debug)]
pub struct Refused {
    status: StatusCode,
    message: &'static str,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

/// The host (and port) part of an absolute URL.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    rest.split('/').next()
}

/// A cross-site request: an `Origin` (or, without one, a `Referer`) that is not this server as the
/// browser knows it: its `Host`, the `X-Forwarded-Host` of a proxy in front, or `--base-url`.
fn foreign_origin(headers: &HeaderMap, base_url: Option<&str>) -> bool {
    let origin = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER));
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else { return false };
    let Some(from) = url_host(origin) else { return true };
    let text = |name| headers.get(name).and_then(|h: &axum::http::HeaderValue| h.to_str().ok());
    let ours = [text(header::HOST.as_str()), text("x-forwarded-host"), base_url.and_then(url_host)];
    !ours.into_iter().flatten().any(|h| h.eq_ignore_ascii_case(from))
}

/// A signed-in admin: the extractor every page API handler takes. Requests other than GET/HEAD
/// must pass the CSRF checks.
pub struct SignedIn {
    pub client_id: String,
    pub csrf: String,
    session: String,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Refused> {
        let refuse = |status, message| Refused { status, message };
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD);
        if unsafe_method && foreign_origin(&parts.headers, app.config.base_url.as_deref()) {
            return Err(refuse(StatusCode::FORBIDDEN, "Cross-site request refused"));
        }
        let id = cookie_value(&parts.headers).ok_or(refuse(StatusCode::UNAUTHORIZED, "Please sign in"))?;
        let s = app
            .sessions
            .get(&id)
            .await
            .map_err(|e| {
                tracing::error!("session: {e}");
                refuse(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable, try again")
            })?
            .ok_or(refuse(StatusCode::UNAUTHORIZED, "Your session has expired or ended: please sign in again"))?;
        if unsafe_method {
            let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if sent != Some(s.csrf.as_str()) {
                return Err(refuse(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page"));
            }
        }
        Ok(SignedIn { client_id: s.client_id, csrf: s.csrf, session: id })
    }
}

impl SignedIn {
    pub fn session_id(&self) -> &str {
        &self.session
    }
}

/// The session cookie. It has no lifetime of its own: the server decides when the session ends,
/// so the page can say why it must sign in again. Behind a TLS proxy (`X-Forwarded-Proto: https`)
/// it is also `Secure`.
fn set_cookie(value: &str, headers: &HeaderMap) -> String {
    let https = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https");
    let secure = if https { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[derive(Deserialize)]
pub struct Credentials {
    client_id: String,
    client_secret: String,
}

/// `POST /ui/api/login`: an admin client's id and secret, as JSON.
pub async fn login(State(app): State<AppState>, headers: HeaderMap, body: String) -> Response {
    let refuse = |status, message| Refused { status, message }.into_response();
    if foreign_origin(&headers, app.config.base_url.as_deref()) {
        return refuse(StatusCode::FORBIDDEN, "Cross-site request refused");
    }
    let Ok(c) = serde_json::from_str::<Credentials>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "Enter a client id and a client secret");
    };
    match app.store.authenticate(c.client_id.trim(), &c.client_secret).await {
        Ok(Some(client)) if client.admin => {
            let (id, s) = match app.sessions.create(&client.id).await {
                Ok(made) => made,
                Err(e) => {
                    tracing::error!("sign-in: {e}");
                    return refuse(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable, try again");
                }
            };
            tracing::info!(client_id = client.id, "signed in to the web page");
            let cookie = set_cookie(&id, &headers);
            let body = Json(json!({"clientId": s.client_id, "csrf": s.csrf}));
            ([(header::SET_COOKIE, cookie), (header::CACHE_CONTROL, "no-store".into())], body).into_response()
        }
        Ok(Some(_)) => refuse(
            StatusCode::FORBIDDEN,
            "These are an agent's credentials: agents cannot sign in. Use an admin client (agent-server client add --admin)",
        ),
        Ok(None) => refuse(StatusCode::UNAUTHORIZED, "Wrong client id or secret"),
        Err(e) => {
            tracing::error!("sign-in: {e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "Credential store unavailable, try again")
        }
    }
}

/// `GET /ui/api/session`: who is signed in, and the CSRF token the page must send.
pub async fn current(who: SignedIn) -> Response {
    Json(json!({"clientId": who.client_id, "csrf": who.csrf})).into_response()
}

/// `POST /ui/api/logout`: ends the session on the server and clears the cookie.
pub async fn logout(State(app): State<AppState>, who: SignedIn) -> Response {
    if let Err(e) = app.sessions.remove(&who.session).await {
        tracing::error!("sign-out: {e}");
        return Refused { status: StatusCode::SERVICE_UNAVAILABLE, message: "Session store unavailable, try again" }
            .into_response();
    }
    tracing::info!(client_id = who.client_id, "signed out of the web page");
    ([(header::SET_COOKIE, clear_cookie())], Json(json!({"signedOut": true}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cookies_and_origins() {
        assert_eq!(cookie_value(&headers(&[("cookie", "a=1; edge_session=abc; b=2")])).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&headers(&[("cookie", "edge_sessionx=abc")])), None);
        let foreign = |h: &[(&'static str, &str)]| foreign_origin(&headers(h), None);
        assert!(!foreign(&[("host", "127.0.0.1:80"), ("origin", "http://127.0.0.1:80")]));
        assert!(foreign(&[("host", "127.0.0.1:80"), ("origin", "http://evil.example")]));
        assert!(foreign(&[("host", "127.0.0.1:80"), ("origin", "null")]));
        assert!(!foreign(&[("host", "h:1"), ("referer", "https://h:1/#/agents")]));
        assert!(!foreign(&[("host", "h:1")]), "no Origin, no Referer: not a browser's cross-site request");
        // Behind a proxy that rewrites Host.
        let proxied = [("host", "127.0.0.1:8103"), ("origin", "https://agents.example.org")];
        assert!(foreign(&proxied));
        assert!(!foreign(&[proxied[0], proxied[1], ("x-forwarded-host", "agents.example.org")]));
        assert!(!foreign_origin(&headers(&proxied), Some("https://agents.example.org/")));
    }

    #[test]
    fn the_cookie_is_secure_behind_tls() {
        assert_eq!(set_cookie("s", &headers(&[])), "edge_session=s; Path=/; HttpOnly; SameSite=Strict");
        assert!(set_cookie("s", &headers(&[("x-forwarded-proto", "https")])).ends_with("; Secure"));
    }
}
