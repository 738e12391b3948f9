//! The update policy on the page: its status (every group in order with its state, why, its
//! window, counts by version and by state, the failures, the next action), suspend, resume and
//! clear its halts. The policy itself is the fleet's ([`crate::fleet::policy`]); changes are
//! pushed on the event stream ([`super::events`]) as `policy` events.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::api::{problem, takes_nothing};
use super::sign_in::SignedIn;
use crate::api::app::AppState;
use crate::api::policy_status::status_json;
use crate::model::policy::Mode;

/// The status as the page shows it (`{"policy": null}` when none is set).
async fn current(app: &AppState) -> Result<Value, String> {
    let snap = app.policy.snapshot().await.map_err(|e| e.to_string())?;
    Ok(json!({"policy": snap.map(|s| status_json(&s))}))
}

/// What the event stream compares to tell a change: the status without the clock.
pub fn summary(status: &Value) -> Value {
    let mut v = status.clone();
    if let Some(p) = v["policy"].as_object_mut() {
        p.remove("now");
    }
    v
}

/// The policy's status if it changed since `last` (which is updated), for the event stream.
pub async fn changed(app: &AppState, last: &mut Option<Value>) -> Option<Value> {
    let now = summary(&current(app).await.ok()?);
    if last.as_ref() == Some(&now) {
        return None;
    }
    *last = Some(now.clone());
    Some(now)
}

/// `GET /ui/api/policy`.
pub async fn show(State(app): State<AppState>, _who: SignedIn) -> Response {
    match current(&app).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `POST /ui/api/policy/{suspend|resume|halt-clear}`.
pub async fn act(
    State(app): State<AppState>,
    who: SignedIn,
    Path(what): Path<String>,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    if matches!(what.as_str(), "suspend" | "resume" | "halt-clear") {
        if let Some(refused) = takes_nothing(&what, query.as_deref(), &body) {
            return refused;
        }
    }
    let done = match what.as_str() {
        "suspend" => app.policy.set_mode(Mode::Suspended).await,
        "resume" => app.policy.set_mode(Mode::Enabled).await,
        "halt-clear" => app.policy.clear_halts().await,
        other => {
            return problem(
                StatusCode::NOT_FOUND,
                format!("Unknown action '{other}': use suspend, resume or halt-clear"),
            )
        }
    };
    if let Err(e) = done {
        return problem(StatusCode::CONFLICT, e.to_string());
    }
    tracing::info!(client_id = who.client_id, action = what, "update policy changed from the web page");
    show(State(app), who).await
}
