//! The page's JSON API under `/ui/api/`, for a signed-in admin only: the fleet overview, the agent
//! table, one agent with its upgrade history, its logs and stats on demand, and upgrades of one
//! agent or a selection, whose results come back on the event stream ([`super::events`]).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use edge_agent_wire::{AgentStatus, Message, Target};

use super::sign_in::SignedIn;
use crate::api::app::AppState;
use crate::api::ops::{self, UpgradeParams};
use crate::api::outcome::Said;
use crate::api::search::MAX_OFFSET;
use crate::limits::throttle::shown;
use crate::model::audit::AuditQuery;
use crate::model::fleet::{Sort, TableQuery};
use crate::store::StoreError;

/// How long the page waits for an agent's logs or stats.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// The most agents one upgrade from the page may name (as bulk `$upgrade`).
const MAX_SELECTION: usize = ops::MAX_BULK;

pub(super) fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    let mut answer = (status, Json(json!({"error": message}))).into_response();
    // What the page was told, for the call's audit event.
    answer.extensions_mut().insert(Said(message));
    answer
}

/// A page action that takes nothing refuses a query or a body (the page sends neither, and what
/// another caller sends would be ignored).
pub(super) fn takes_nothing(action: &str, query: Option<&str>, body: &str) -> Option<Response> {
    let given = query.is_some_and(|q| !q.is_empty()) || !body.trim().is_empty();
    given.then(|| {
        problem(StatusCode::BAD_REQUEST, format!("{action} takes no parameter: send it without a query or a body"))
    })
}

pub(super) fn store_failed(e: StoreError) -> Response {
    tracing::error!("web page: {e}");
    problem(StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable, try again")
}

/// `GET /ui/api/overview`: counts by state, the version distribution, the last upgrade results.
pub async fn overview(State(app): State<AppState>, _who: SignedIn) -> Response {
    app.hub.statuses_written().await;
    let counts = match app.store.fleet_counts().await {
        Ok(c) => c,
        Err(e) => return store_failed(e),
    };
    let latest = match app.store.latest_results(20).await {
        Ok(l) => l,
        Err(e) => return store_failed(e),
    };
    let latest: Vec<Value> = latest.into_iter().map(|(name, r)| json!({"name": name, "result": r})).collect();
    Json(json!({"counts": counts, "latest": latest})).into_response()
}

/// The table's search. A parameter it does not know is refused, not dropped: a misspelt filter
/// (`?Q=clinic`) would otherwise start a rollout of every agent.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableParams {
    q: Option<String>,
    state: Option<String>,
    version: Option<String>,
    not_version: Option<String>,
    last_failed: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<usize>,
    size: Option<usize>,
}

pub(super) fn table_query(p: TableParams) -> Result<TableQuery, String> {
    for (name, value, max) in [
        ("q", &p.q, crate::params::MAX_NAME_SEARCH),
        ("version", &p.version, usize::MAX),
        ("notVersion", &p.not_version, usize::MAX),
    ] {
        if let Some(v) = value {
            crate::params::search_value(v, name, max).map_err(|e| e.0)?;
        }
    }
    let some = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let sort = match some(p.sort) {
        None => Sort::Name,
        Some(s) => Sort::parse(&s).ok_or(format!("Unknown sort '{s}': use name, state, version, since or last"))?,
    };
    let state = some(p.state)
        .map(|s| AgentStatus::parse(&s).ok_or(format!("Unknown state '{s}': use connected, disconnected or unknown")))
        .transpose()?;
    let size = p.size.unwrap_or(50);
    if !(1..=200).contains(&size) {
        return Err(format!("Page size {size} is out of range: use 1 to 200"));
    }
    let descending = match p.dir.as_deref().map(str::trim) {
        None | Some("" | "asc") => false,
        Some("desc") => true,
        Some(d) => return Err(format!("Unknown direction '{}': use asc or desc", shown(d))),
    };
    let last_failed = match p.last_failed.as_deref().map(str::trim) {
        None | Some("" | "0" | "false" | "off") => false,
        Some("1" | "true" | "on") => true,
        Some(v) => return Err(format!("Unknown lastFailed '{}': use true or false", shown(v))),
    };
    let page = p.page.unwrap_or(0);
    if page.checked_mul(size).is_none_or(|first| first > MAX_OFFSET) {
        return Err(format!("Page {page} is out of range: the table goes up to row {MAX_OFFSET}"));
    }
    Ok(TableQuery {
        text: some(p.q),
        state,
        version: some(p.version),
        not_version: some(p.not_version),
        last_failed,
        sort,
        descending,
        page,
        size,
    })
}

/// `GET /ui/api/agents?q=&state=&version=&notVersion=&lastFailed=&sort=&dir=&page=&size=`.
pub async fn agents(State(app): State<AppState>, _who: SignedIn, Query(p): Query<TableParams>) -> Response {
    let q = match table_query(p) {
        Ok(q) => q,
        Err(why) => return problem(StatusCode::BAD_REQUEST, why),
    };
    app.hub.statuses_written().await;
    match app.store.fleet_table(&q).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => store_failed(e),
    }
}

/// `GET /ui/api/agents/{id}`: the agent, its status since when, its upgrade history.
pub async fn agent(State(app): State<AppState>, _who: SignedIn, Path(id): Path<String>) -> Response {
    let row = match app.store.agent(&id).await {
        Ok(Some(row)) => row,
        Ok(None) => return problem(StatusCode::NOT_FOUND, format!("No agent with id {id}")),
        Err(e) => return store_failed(e),
    };
    let status = app.results.agent_status(&id).await;
    app.hub.statuses_written().await;
    let since = match app.store.status_since(&id).await {
        Ok(s) => s,
        Err(e) => return store_failed(e),
    };
    let history = match app.store.history(&id, 50).await {
        Ok(h) => h,
        Err(e) => return store_failed(e),
    };
    Json(json!({
        "agent": &row,
        "state": status.as_ref().map_or(AgentStatus::Unknown, |s| s.status).as_str(),
        "version": status.as_ref().map_or("unknown", |s| s.version.as_str()),
        "lastHeard": status.as_ref().map(|s| s.updated.as_str()),
        "added": row.last_updated,
        "since": since,
        "history": history,
    }))
    .into_response()
}

/// `GET /ui/api/agents/{id}/logs` and `…/stats`: asks the live agent and waits for its answer.
pub async fn ask(State(app): State<AppState>, _who: SignedIn, Path((id, what)): Path<(String, String)>) -> Response {
    let msg = match what.as_str() {
        "logs" => Message::LogsRequest { limit: Some(200) },
        "stats" => Message::StatsRequest {},
        other => return problem(StatusCode::NOT_FOUND, format!("Unknown request '{other}': use logs or stats")),
    };
    match app.hub.request(&id, msg, ASK_TIMEOUT).await {
        Ok(env) => match env.msg {
            Message::LogsResponse { logs, .. } => Json(json!({"logs": logs})).into_response(),
            Message::StatsResponse { stats, .. } => Json(json!({"stats": stats})).into_response(),
            Message::Error { body } => problem(StatusCode::BAD_GATEWAY, format!("The agent answered: {body}")),
            other => problem(StatusCode::BAD_GATEWAY, format!("Unexpected answer from the agent: {other:?}")),
        },
        Err(e) => problem(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeBody {
    ids: Vec<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    force: bool,
}

/// `POST /ui/api/upgrade` `{ids, version?, force?}`: starts the upgrades and answers 202 at once;
/// each agent's result is pushed on the event stream as it arrives.
pub async fn upgrade(State(app): State<AppState>, who: SignedIn, body: String) -> Response {
    let b: UpgradeBody = match serde_json::from_str(&body) {
        Ok(b) => b,
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("Invalid upgrade request: {e}")),
    };
    if b.ids.is_empty() || b.ids.len() > MAX_SELECTION {
        return problem(StatusCode::BAD_REQUEST, format!("Select 1 to {MAX_SELECTION} agents"));
    }
    let target = match Target::parse(b.version.as_deref()) {
        Ok(t) => t,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let mut started: Vec<String> = Vec::new();
    for id in b.ids {
        // An agent named twice is asked once.
        if started.contains(&id) {
            continue;
        }
        match app.store.agent(&id).await {
            Ok(Some(_)) => started.push(id),
            Ok(None) => return problem(StatusCode::BAD_REQUEST, format!("No agent with id {id}")),
            Err(e) => return store_failed(e),
        }
    }
    tracing::info!(
        client_id = who.client_id,
        agents = started.len(),
        %target,
        "upgrade from the web page"
    );
    let params = UpgradeParams { target, timeout: Duration::from_millis(ops::DEFAULT_TIMEOUT_MS), force: b.force };
    for id in &started {
        let (app, id, params) = (app.clone(), id.clone(), params.clone());
        tokio::spawn(async move { ops::upgrade_one(&app, &id, &params).await });
    }
    (StatusCode::ACCEPTED, Json(json!({"started": started}))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_paging_arithmetic_is_bounded() {
        let q = |page| table_query(TableParams { page: Some(page), size: Some(200), ..Default::default() });
        assert_eq!(q(5_000).unwrap().page, 5_000);
        assert!(q(5_001).unwrap_err().contains("Page 5001 is out of range"));
        assert!(q(usize::MAX).unwrap_err().contains("out of range"), "page × size would overflow");
    }

    /// Found by an attacker's probe: `dir=sideways&lastFailed=maybe` was taken as ascending and
    /// unfiltered.
    #[test]
    fn the_tables_direction_and_failure_filter_are_what_the_page_sends_or_an_error() {
        let q = |dir: &str, failed: &str| {
            table_query(TableParams { dir: Some(dir.into()), last_failed: Some(failed.into()), ..Default::default() })
        };
        let q = |dir: &str, failed: &str| q(dir, failed).map(|t| (t.descending, t.last_failed));
        assert_eq!(q("asc", "false"), Ok((false, false)));
        assert_eq!(q("desc", "true"), Ok((true, true)));
        assert_eq!(q("", "on"), Ok((false, true)));
        assert_eq!(q("sideways", "true"), Err("Unknown direction 'sideways': use asc or desc".into()));
        assert_eq!(q("desc", "maybe"), Err("Unknown lastFailed 'maybe': use true or false".into()));
    }
}

/// `GET /ui/api/audit?agent=&actor=&outcome=&offset=`: the newest audit events, 50 a page,
/// filtered by the agent acted on, the client who acted and the outcome (admins only, by the
/// table of rules).
pub async fn audit(State(app): State<AppState>, _who: SignedIn, Query(f): Query<AuditFilter>) -> Response {
    let q = AuditQuery {
        entity: f.agent.filter(|a| !a.is_empty()).map(|a| format!("Agent/{a}")),
        agent: f.actor.filter(|a| !a.is_empty()).map(|a| format!("ClientApplication/{a}")),
        outcome: f.outcome.filter(|o| matches!(o.as_str(), "0" | "4" | "8" | "12")),
        newest_first: true,
        count: 50,
        offset: f.offset.unwrap_or(0).min(100_000),
        ..Default::default()
    };
    match app.store.audit_search(&q, false).await {
        Ok((events, _)) => {
            Json(json!({"events": events.iter().map(|e| e.to_fhir()).collect::<Vec<_>>()})).into_response()
        }
        Err(e) => {
            tracing::error!("audit view: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "Storage unavailable, try again"}))).into_response()
        }
    }
}

/// The Audit view's filters.
#[derive(Deserialize)]
pub struct AuditFilter {
    agent: Option<String>,
    actor: Option<String>,
    outcome: Option<String>,
    offset: Option<usize>,
}
