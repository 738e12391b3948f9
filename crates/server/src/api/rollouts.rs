//! Rollouts over REST. `POST Agent/$upgrade` with `Prefer: respond-async` starts one and answers
//! `202 Accepted` with a `Content-Location` to poll (the FHIR asynchronous request pattern);
//! `GET Rollout` lists them, a page at a time; `GET Rollout/<id>` is the status (202 while it runs, 200 once it has
//! ended); `POST Rollout/<id>/$pause|$resume|$cancel` steer it.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use edge_agent_wire::Target;
use semver::Version;

use super::app::AppState;
use super::outcome::{bad_request, error, store_error, ApiError, Pairs};
use super::search::{page_within, paging_links, parse_search, public_base, MAX_PAGE};
use crate::fleet::rollout::engine::RolloutError;
use crate::fleet::rollout::operate::NewRollout;
use crate::model::member::{Counts, MemberState};
use crate::model::rollout::{Action, Rollout, Summary};
use crate::model::strategy;
use crate::params::{invalid_value, known_params, merge_params, string_param, takes_none, ParamError, Params};
use crate::proxy::Peer;

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> ApiError {
        match e {
            RolloutError::NotFound(_) => error(StatusCode::NOT_FOUND, "not-found", e.to_string()),
            RolloutError::NotAllowed { .. } | RolloutError::Overlap { .. } | RolloutError::Changed(_) => {
                error(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RolloutError::Empty => bad_request(e.to_string()),
            RolloutError::Busy => error(StatusCode::SERVICE_UNAVAILABLE, "transient", e.to_string()),
            RolloutError::Store(s) => store_error(s),
        }
    }
}

/// A rollout's own JSON (not a FHIR resource, so not served as one).
fn answer(status: StatusCode, body: Value) -> Response {
    use axum::response::IntoResponse;
    (status, axum::Json(body)).into_response()
}

/// Whether a request asks for the asynchronous pattern (`Prefer: respond-async`).
pub fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("respond-async")))
}

/// The version a rollout goes to: an explicit one, or `latest` when this server hosts releases,
/// resolved now and recorded (so that "latest" never moves under a running rollout).
fn target_version(app: &AppState, params: &Params) -> Result<Version, ApiError> {
    let asked = string_param(params, "version").unwrap_or_else(|| "latest".into());
    match Target::from_label(&asked).map_err(|e| bad_request(e.to_string()))? {
        Target::Exact(v) => Ok(v),
        Target::Latest => latest_release(app, "version=latest").map_err(bad_request),
    }
}

/// The latest release this server hosts (`--releases`), for `asked` (`version=latest`, say).
pub fn latest_release(app: &AppState, asked: &str) -> Result<Version, String> {
    let Some(dir) = &app.config.releases else {
        return Err(format!("{asked} needs this server to host releases (--releases); otherwise name the version"));
    };
    let path = dir.join("latest.json");
    let manifest: Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("no latest release: {} is missing or unreadable", path.display()))?;
    manifest["version"]
        .as_str()
        .and_then(|v| edge_agent_wire::parse_version(v).ok())
        .ok_or_else(|| format!("{} names no valid version", path.display()))
}

/// `POST Agent/$upgrade` + `Prefer: respond-async`: a new rollout of every agent the search finds.
pub async fn create(
    app: &AppState,
    (peer, headers): (Peer, &HeaderMap),
    pairs: &[(String, String)],
    body: Params,
) -> Result<Response, ApiError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k == "_count" || k == "_offset") {
        return Err(bad_request(format!("{k} does not apply: a rollout takes every agent the search finds")));
    }
    if let Some(k) = body.keys().find(|k| !strategy::PARAMS.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "Unknown rollout parameter: {} (expected one of: {})",
            crate::limits::throttle::shown(k),
            strategy::PARAMS.join(", ")
        )));
    }
    let params = merge_params(pairs, strategy::PARAMS, body)?;
    let version = target_version(app, &params)?;
    let strategy = strategy::parse(&params)?;
    let mut q = parse_search(pairs, strategy::PARAMS, usize::MAX)?;
    q.count = i64::MAX as usize;
    let (agents, _) = app.store.search(&q).await.map_err(store_error)?;
    let selection: Vec<&(String, String)> =
        pairs.iter().filter(|(k, _)| !strategy::PARAMS.contains(&k.as_str())).collect();
    let selection = serde_urlencoded::to_string(&selection).unwrap_or_default();
    let new = NewRollout { version: &version, strategy, selection: &selection, agents: &agents };
    super::audit::subtype("rollout-create", 'C');
    let rollout = app
        .rollouts
        .create(new, |r| {
            let started =
                format!("Rollout started: {} chosen", crate::fleet::rollout::plan::plural(agents.len(), "agent"));
            super::audit::in_transaction_on(Some(vec![r.audit_ref()]), &started)
        })
        .await?;
    // Made: the answer says so even if its status cannot be read back now.
    let body = match app.rollouts.summary(&rollout.id).await {
        Ok(s) => status_json(&s),
        Err(e) => {
            tracing::warn!(rollout = rollout.id, "rollout started; its status cannot be read: {e}");
            summary(&rollout)
        }
    };
    let location = format!("{}fhir/R4/Rollout/{}", public_base(app, peer, headers), rollout.id);
    let mut resp = answer(StatusCode::ACCEPTED, body);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

/// Rollouts a `GET Rollout` page holds unless `_count` says otherwise.
pub const DEFAULT_ROLLOUT_PAGE: usize = 100;

/// `GET Rollout`'s paging: (`_offset`, `_count`); any other parameter is refused by name.
pub fn list_page(pairs: &[(String, String)]) -> Result<(usize, usize), ParamError> {
    let (mut offset, mut count) = (0, DEFAULT_ROLLOUT_PAGE);
    for (key, value) in pairs {
        let int = || value.parse::<usize>().map_err(|_| invalid_value(value, "integer", key));
        match key.as_str() {
            "_count" => count = int()?,
            "_offset" => offset = int()?,
            other => {
                let shown = crate::params::quoted(other);
                return Err(ParamError(format!("Unknown parameter: {shown} (Rollout takes _count and _offset)")));
            }
        }
    }
    page_within(count, MAX_PAGE, offset)?;
    Ok((offset, count))
}

/// `GET Rollout?_count&_offset`: a page of the rollouts, newest first, with counts, how many
/// there are in all, and links to the pages beside it.
pub async fn list(
    State(app): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    let (offset, count) = list_page(&pairs)?;
    let (page, total) = app.rollouts.list(offset, count).await?;
    let all: Vec<Value> = page
        .iter()
        .map(|(r, counts)| {
            let mut v = summary(r);
            v["counts"] = counts_json(counts);
            v
        })
        .collect();
    let url = format!("{}fhir/R4/Rollout", public_base(&app, peer, &headers));
    let link = paging_links(&url, &pairs, count, offset, offset + count < total);
    Ok(answer(StatusCode::OK, json!({"rollouts": all, "total": total, "link": link})))
}

/// `GET Rollout/<id>`: 202 with `X-Progress` while it runs, 200 once it has ended.
pub async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let s = app.rollouts.summary(&id).await?;
    let (running, body) = (s.rollout.state.is_open(), status_json(&s));
    let progress = format!("wave {}: {} of {} members done", s.rollout.wave, s.done(), s.total());
    let mut resp = answer(if running { StatusCode::ACCEPTED } else { StatusCode::OK }, body);
    if running {
        if let Ok(v) = HeaderValue::from_str(&progress) {
            resp.headers_mut().insert("x-progress", v);
        }
    }
    Ok(resp)
}

/// `POST Rollout/<id>/$pause|$resume|$cancel`.
pub async fn act(
    State(app): State<AppState>,
    Path((id, op)): Path<(String, String)>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    let Some(action) = op.strip_prefix('$').and_then(Action::by_operator) else {
        return Err(error(StatusCode::NOT_FOUND, "not-supported", format!("Unsupported operation: {op}")));
    };
    known_params(pairs.iter().map(|(k, _)| k), &[])?;
    takes_none(&op, &super::fhir::parameters_body(&body)?)?;
    let also = super::audit::in_transaction(&format!("Rollout {}", action.done()));
    let rollout = app.rollouts.act(&id, action, also).await?;
    Ok(answer(StatusCode::OK, status_json(&app.rollouts.summary(&rollout.id).await?)))
}

fn summary(r: &Rollout) -> Value {
    let created = jiff::Timestamp::from_millisecond(r.created_at).map(|t| t.to_string()).unwrap_or_default();
    let mut v = json!({
        "id": r.id,
        "version": r.version,
        "state": r.state.name(),
        "selection": r.selection,
        "createdAt": created,
        "wave": r.wave,
        "strategy": strategy::to_json(&r.strategy),
    });
    if let Some(reason) = &r.reason {
        v["reason"] = json!(reason);
    }
    v
}

/// Counts by member state, every state named.
pub fn counts_json(counts: &Counts) -> Value {
    let map: serde_json::Map<String, Value> =
        MemberState::ALL.iter().map(|s| (s.name().to_string(), json!(counts.get(s).copied().unwrap_or(0)))).collect();
    Value::Object(map)
}

/// The status document: counts by member state, the wave, events, and failures with reasons.
pub fn status_json(s: &Summary) -> Value {
    let mut v = summary(&s.rollout);
    v["total"] = json!(s.total());
    v["counts"] = counts_json(&s.counts);
    v["events"] = json!(s.rollout.events);
    let failures: Vec<Value> = s
        .failures
        .iter()
        .map(|m| json!({"agentId": m.agent_id, "name": m.name, "state": m.state.name(), "reason": m.reason}))
        .collect();
    v["failures"] = json!(failures);
    v
}
