//! Rollouts on the page: start one of every agent the agent table's current search finds, list
//! them, show one (counts by state, the current wave, events, failures with reasons), and pause,
//! resume or cancel it. The rollout itself is the fleet's ([`crate::fleet::rollout`]); changes
//! are pushed on the event stream ([`super::events`]).

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::api::{problem, store_failed, table_query, takes_nothing, TableParams};
use super::sign_in::SignedIn;
use crate::api::app::AppState;
use crate::api::rollouts::{counts_json, create, status_json, DEFAULT_ROLLOUT_PAGE};
use crate::model::member::Counts;
use crate::model::rollout::{Action, Rollout};
use crate::model::strategy;
use crate::params::known_params;
use crate::proxy::Peer;

/// What the list and the event stream tell of a rollout.
pub fn summary(r: &Rollout, counts: &Counts) -> Value {
    json!({
        "id": r.id, "version": r.version.to_string(), "state": r.state.name(), "wave": r.wave,
        "reason": r.reason, "events": r.events.len(), "counts": counts_json(counts),
    })
}

/// `GET /ui/api/rollouts`: the newest rollouts (a page as `GET Rollout` gives), and how many
/// there are in all.
pub async fn list(State(app): State<AppState>, _who: SignedIn) -> Response {
    match app.rollouts.list(0, DEFAULT_ROLLOUT_PAGE).await {
        Ok((page, total)) => {
            let shown: Vec<Value> = page.iter().map(|(r, c)| summary(r, c)).collect();
            Json(json!({"rollouts": shown, "total": total})).into_response()
        }
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /ui/api/rollouts/{id}`: the rollout's status document.
pub async fn show(State(app): State<AppState>, _who: SignedIn, Path(id): Path<String>) -> Response {
    match app.rollouts.summary(&id).await.map(|s| status_json(&s)) {
        Ok(status) => Json(status).into_response(),
        Err(e) => problem(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// `POST /ui/api/rollouts/{id}/{pause|resume|cancel}`.
pub async fn act(
    State(app): State<AppState>,
    who: SignedIn,
    Path((id, what)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: String,
) -> Response {
    let Some(action) = Action::by_operator(&what) else {
        return problem(StatusCode::NOT_FOUND, format!("Unknown action '{what}': use pause, resume or cancel"));
    };
    if let Some(refused) = takes_nothing(&what, query.as_deref(), &body) {
        return refused;
    }
    tracing::info!(client_id = who.client_id, rollout = id, action = what, "rollout steered from the web page");
    let also = crate::api::audit::in_transaction(&format!("Rollout {} from the web page", action.done()));
    if let Err(e) = app.rollouts.act(&id, action, also).await {
        return problem(StatusCode::CONFLICT, e.to_string());
    }
    match app.rollouts.summary(&id).await.map(|s| status_json(&s)) {
        Ok(status) => Json(status).into_response(),
        Err(e) => problem(StatusCode::CONFLICT, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The strategy's parameters, as `POST Agent/$upgrade` takes them (`version`, `canary`, …).
    params: Map<String, Value>,
}

/// `POST /ui/api/rollouts?<the table's search>` `{params}`: a rollout of every agent the search
/// finds, on every page of the table.
pub async fn start(
    State(app): State<AppState>,
    who: SignedIn,
    peer: Peer,
    headers: HeaderMap,
    Query(search): Query<TableParams>,
    body: String,
) -> Response {
    let b: StartBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("Invalid rollout request: {e}")),
    };
    let q = match table_query(search) {
        Ok(q) => q,
        Err(why) => return problem(StatusCode::BAD_REQUEST, why),
    };
    if let Err(e) = known_params(b.params.keys(), strategy::PARAMS) {
        return problem(StatusCode::BAD_REQUEST, e.0);
    }
    app.hub.statuses_written().await;
    let ids = match app.store.fleet_ids(&q).await {
        Ok(ids) if ids.is_empty() => return problem(StatusCode::BAD_REQUEST, "No agent matches this search"),
        Ok(ids) => ids,
        Err(e) => return store_failed(e),
    };
    // The form's fields left empty are the strategy's defaults.
    let params = b.params.into_iter().filter(|(_, v)| !v.is_null() && v.as_str() != Some("")).collect();
    tracing::info!(client_id = who.client_id, agents = ids.len(), "rollout started from the web page");
    match create(&app, (peer, &headers), &[("_id".to_string(), ids.join(","))], params).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}
