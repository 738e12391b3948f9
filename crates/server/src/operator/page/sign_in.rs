//! Signing in to the web page: an admin client signs in with its id and secret and gets an
//! `HttpOnly`, `SameSite=Strict` cookie naming a session kept in the store
//! ([`crate::identity::sessions`]), so that every node behind a load balancer knows it. Every
//! state-changing request must also carry the session's CSRF token in a header and, when the
//! browser sends one, an `Origin` equal to the server's own, as [`crate::proxy`] resolves it
//! (forwarded headers count only from a trusted proxy). Signing out removes the session on
//! every node, so the cookie is dead even if it was copied. Sign-ins are throttled as the token
//! endpoint's are, and refused ones logged with the client id and the address.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::api::app::AppState;
use crate::limits::conns;
use crate::limits::throttle::Throttled;
use crate::metrics::AuthFailure;
use crate::model::access::Role;
use crate::proxy::{Origin, Peer};

pub use crate::identity::sessions::{cookie_value, COOKIE};
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

/// 429 with `Retry-After`.
fn throttled(t: Throttled) -> Response {
    let secs = t.retry_after_secs();
    let message = format!("Too many sign-ins: try again in {secs} s");
    (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs.to_string())], Json(json!({"error": message})))
        .into_response()
}

/// This server's origin as the browser should know it.
fn origin_of(app: &AppState, peer: Peer, headers: &HeaderMap) -> Origin {
    app.config.proxies.origin(peer, headers, &app.config.listen.to_string())
}

/// The host (and port) part of an absolute URL.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    rest.split('/').next()
}

/// A cross-site request: an `Origin` (or, without one, a `Referer`) whose host is not `ours`:
/// this server's host as resolved once for the request (`--base-url`, a trusted proxy's
/// forwarded host, or `Host`).
fn foreign_origin(headers: &HeaderMap, ours: &Origin) -> bool {
    let origin = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER));
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else { return false };
    url_host(origin).is_none_or(|from| !from.eq_ignore_ascii_case(&ours.host))
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
        if unsafe_method && foreign_origin(&parts.headers, &origin_of(app, Peer::of(parts), &parts.headers)) {
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
        conns::authenticated(&s.client_id);
        Ok(SignedIn { client_id: s.client_id, csrf: s.csrf, session: id })
    }
}

impl SignedIn {
    pub fn session_id(&self) -> &str {
        &self.session
    }
}

/// The session cookie. It has no lifetime of its own: the server decides when the session ends,
/// so the page can say why it must sign in again. Served over HTTPS (`--base-url https://…`, or a
/// trusted TLS proxy's `X-Forwarded-Proto: https`) it is also `Secure`.
fn set_cookie(value: &str, origin: &Origin) -> String {
    let secure = if origin.scheme == "https" { "; Secure" } else { "" };
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
/// What a sign-in that is not a JSON object is told.
const SIGN_IN_SHAPE: &str =
    "Send the sign-in as a JSON object (Content-Type: application/json): {\"client_id\": …, \"client_secret\": …}";

pub async fn login(State(app): State<AppState>, peer: Peer, headers: HeaderMap, body: String) -> Response {
    let refuse = |status, message| Refused { status, message }.into_response();
    let origin = origin_of(&app, peer, &headers);
    if foreign_origin(&headers, &origin) {
        return refuse(StatusCode::FORBIDDEN, "Cross-site request refused");
    }
    let ip = app.config.proxies.client_ip(peer, &headers);
    if let Err(t) = app.throttle.attempt(ip) {
        return throttled(t);
    }
    // The page sends a JSON object; a form, or an array (which a struct would also be read from),
    // is told what to send rather than to fill in fields it may well have.
    let json = headers.get(header::CONTENT_TYPE).is_none_or(|t| {
        t.to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    let object = serde_json::from_str::<serde_json::Value>(&body).ok().filter(serde_json::Value::is_object);
    let Some(object) = object.filter(|_| json) else {
        return refuse(StatusCode::BAD_REQUEST, SIGN_IN_SHAPE);
    };
    let Ok(c) = serde_json::from_value::<Credentials>(object) else {
        return refuse(StatusCode::BAD_REQUEST, "Enter a client id and a client secret");
    };
    let client_id = c.client_id.trim();
    let claimed = format!("ClientApplication/{}", crate::limits::throttle::shown(client_id));
    crate::api::audit::actor(crate::model::audit::Ref { reference: claimed, display: None });
    match app.store.authenticate(client_id, &c.client_secret).await {
        Ok(Some(client)) if client.role >= Role::Viewer => {
            crate::api::audit::actor(client.reference());
            conns::authenticated(&client.id);
            if let Err(t) = app.throttle.issue(&client.id) {
                return throttled(t);
            }
            let (id, s) = match app.sessions.create(&client.id).await {
                Ok(made) => made,
                Err(e) => {
                    tracing::error!("sign-in: {e}");
                    return refuse(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable, try again");
                }
            };
            tracing::info!(client_id = client.id, "signed in to the web page");
            let cookie = set_cookie(&id, &origin);
            let body = Json(json!({"clientId": s.client_id, "csrf": s.csrf, "name": client.display(),
                "role": client.role.name()}));
            ([(header::SET_COOKIE, cookie), (header::CACHE_CONTROL, "no-store".into())], body).into_response()
        }
        Ok(Some(_)) => refuse(
            StatusCode::FORBIDDEN,
            "These are an agent's credentials: agents cannot sign in. Use an operator's client (agent-server client add --role viewer|operator|admin)",
        ),
        Ok(None) => {
            app.throttle.refused(AuthFailure::SignIn, client_id, ip);
            refuse(StatusCode::UNAUTHORIZED, "Wrong client id or secret")
        }
        Err(e) => {
            tracing::error!("sign-in: {e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "Credential store unavailable, try again")
        }
    }
}

/// `GET /ui/api/session`: who is signed in, and the CSRF token the page must send.
pub async fn current(State(app): State<AppState>, who: SignedIn) -> Response {
    let client = match app.store.client(&who.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Refused { status: StatusCode::UNAUTHORIZED, message: "Please sign in" }.into_response(),
        Err(e) => {
            tracing::error!("session: {e}");
            let message = "Session store unavailable, try again";
            return Refused { status: StatusCode::SERVICE_UNAVAILABLE, message }.into_response();
        }
    };
    let (name, role) = (client.display(), client.role.name());
    Json(json!({"clientId": who.client_id, "csrf": who.csrf, "name": name, "role": role})).into_response()
}

/// `POST /ui/api/logout`: ends the session on the server and clears the cookie.
pub async fn logout(State(app): State<AppState>, who: SignedIn) -> Response {
    let reference = format!("ClientApplication/{}", who.client_id);
    crate::api::audit::actor(crate::model::audit::Ref { reference, display: None });
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
        let ours = |host: &str| Origin { scheme: "http", host: host.into() };
        let foreign = |h: &[(&'static str, &str)], host| foreign_origin(&headers(h), &ours(host));
        assert!(!foreign(&[("origin", "http://127.0.0.1:80")], "127.0.0.1:80"));
        assert!(foreign(&[("origin", "http://evil.example")], "127.0.0.1:80"));
        assert!(foreign(&[("origin", "null")], "127.0.0.1:80"));
        assert!(!foreign(&[("referer", "https://h:1/#/agents")], "h:1"));
        assert!(!foreign(&[], "h:1"), "no Origin, no Referer: not a browser's cross-site request");
        assert!(foreign(&[("origin", "https://agents.example.org")], "127.0.0.1:8103"));
        assert!(!foreign(&[("origin", "https://agents.example.org")], "agents.example.org"));
    }

    #[test]
    fn the_cookie_is_secure_over_https() {
        let http = Origin { scheme: "http", host: "h".into() };
        assert_eq!(set_cookie("s", &http), "edge_session=s; Path=/; HttpOnly; SameSite=Strict");
        assert!(set_cookie("s", &Origin { scheme: "https", host: "h".into() }).ends_with("; Secure"));
    }
}
