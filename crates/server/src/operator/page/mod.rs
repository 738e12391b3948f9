//! The operator's web page, served by agent-server at `/`: a small hand-written page (HTML, CSS,
//! JavaScript in `assets/`, embedded in the binary; no build step, no CDN) over a JSON API
//! ([`api`]) whose fleet queries the store answers ([`crate::store::fleet`]), rollouts
//! ([`rollouts`]), the update policy ([`policy`]) and Server-Sent Events for what happens live
//! ([`events`]). Sign-in and CSRF
//! protection are in [`sign_in`].

pub mod api;
pub mod events;
pub mod policy;
pub mod rollouts;
pub mod sign_in;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::app::AppState;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const POLICY_SCRIPT: &str = include_str!("assets/policy.js");
const STYLE: &str = include_str!("assets/app.css");

/// Only this server's own scripts and styles; no frames, no foreign connections.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        body,
    )
        .into_response()
}

/// The page and its API, to be merged into the server's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/policy.js", get(|| async { asset("text/javascript; charset=utf-8", POLICY_SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/ui/api/login", post(sign_in::login))
        .route("/ui/api/logout", post(sign_in::logout))
        .route("/ui/api/session", get(sign_in::current))
        .route("/ui/api/overview", get(api::overview))
        .route("/ui/api/agents", get(api::agents))
        .route("/ui/api/agents/{id}", get(api::agent))
        .route("/ui/api/agents/{id}/{what}", get(api::ask))
        .route("/ui/api/upgrade", post(api::upgrade))
        .route("/ui/api/rollouts", get(rollouts::list).post(rollouts::start))
        .route("/ui/api/rollouts/{id}", get(rollouts::show))
        .route("/ui/api/rollouts/{id}/{action}", post(rollouts::act))
        .route("/ui/api/policy", get(policy::show))
        .route("/ui/api/policy/{action}", post(policy::act))
        .route("/ui/api/events", get(events::events))
        .route("/ui/api/audit", get(api::audit))
}

/// The total bytes of the page: its document, script and style.
pub fn page_bytes() -> usize {
    INDEX.len() + SCRIPT.len() + POLICY_SCRIPT.len() + STYLE.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_weight_is_within_budget() {
        assert!(super::page_bytes() <= 150 * 1024, "page weight {} bytes is over 150 KB", super::page_bytes());
    }
}
