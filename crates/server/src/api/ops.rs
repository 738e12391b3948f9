//! The `Agent` operations (protocol.md §4): `$status`, `$bulk-status` and `$upgrade`, single and
//! bulk. Bulk operations ask every matched agent at once and answer a `collection` Bundle of
//! `Parameters{agent, result}`.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::{json, Value};

use edge_agent_wire::{texts, Message, Target};

use super::app::AppState;
use super::outcome::{all_ok, bad_request, fhir_result, fhir_sized, outcome_json, status_error, store_error, ApiError};
use super::policy_status;
use super::search::{parse_search, MAX_PAGE};
use crate::conn::hub::RequestError;
use crate::model::agent::{AgentRow, StatusRow};
use crate::model::query::AgentQuery;
use crate::model::rollout::LastResult;
use crate::params::{bool_param, int_param, merge_params, string_param, Params, MAX_TIMEOUT_MS};

pub const MAX_BULK: usize = 100;
pub const DEFAULT_TIMEOUT_MS: u64 = 45_000;
const UPGRADE_PARAMS: &[&str] = &["version", "timeout", "force"];

/// `$status` of one agent: `status`, `version`, and `lastUpdated` once it has been seen; ours
/// besides: `lastRollout`, the agent's last rollout result, once it has one, and `policy`, its
/// state with the update policy, when one is set.
pub struct StatusParameters(Option<StatusRow>, Option<LastResult>, Option<Value>);

pub async fn status_parameters(app: &AppState, agent_id: &str) -> Result<StatusParameters, ApiError> {
    let mut found = app.hub.statuses(&[agent_id.to_string()]).await.map_err(status_error)?;
    let snap = policy_snapshot(app).await;
    let policy =
        snap.as_ref().and_then(|s| policy_status::agent_json(s, agent_id)).map(|v| policy_status::agent_part(&v));
    Ok(StatusParameters(found.pop().flatten(), app.rollouts.last_result(agent_id), policy))
}

/// The update policy's latest evaluation, if a policy is set (None, logged, when it cannot be read).
async fn policy_snapshot(app: &AppState) -> Option<std::sync::Arc<crate::fleet::policy::engine::Snapshot>> {
    match app.policy.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("update policy: {e}");
            None
        }
    }
}

/// A rollout result as a `Parameters` part (`$status`) or an extension (search results).
pub fn last_rollout_json(last: &LastResult, as_extension: bool) -> Value {
    let mut fields = vec![
        ("rollout", "valueString", json!(last.rollout_id)),
        ("version", "valueString", json!(last.version)),
        ("result", "valueCode", json!(last.state.name())),
    ];
    if let Some(reason) = &last.reason {
        fields.push(("reason", "valueString", json!(reason)));
    }
    let key = if as_extension { "url" } else { "name" };
    let parts: Vec<Value> = fields.into_iter().map(|(n, ty, v)| json!({key: n, ty: v})).collect();
    if as_extension {
        json!({"url": LAST_ROLLOUT_EXTENSION, "extension": parts})
    } else {
        json!({"name": "lastRollout", "part": parts})
    }
}

/// The extension on `Agent` resources in search results that carries the last rollout result.
pub const LAST_ROLLOUT_EXTENSION: &str = "urn:edge-agent:last-rollout";

/// One `{"name": …, "value<Type>": …}` entry of a `Parameters` resource.
struct Param<'a>(&'a str, &'a str, &'a str);

impl Serialize for Param<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map([("name", self.0), (self.1, self.2)])
    }
}

impl Serialize for StatusParameters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const UNKNOWN: &[Param] =
            &[Param("status", "valueCode", "unknown"), Param("version", "valueString", "unknown")];
        let known;
        let params: &[Param] = match &self.0 {
            Some(st) => {
                known = [
                    Param("status", "valueCode", st.status.as_str()),
                    Param("version", "valueString", &st.version),
                    Param("lastUpdated", "valueInstant", &st.updated),
                ];
                &known
            }
            None => UNKNOWN,
        };
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("resourceType", "Parameters")?;
        match (&self.1, &self.2) {
            (None, None) => m.serialize_entry("parameter", &params)?,
            (last, policy) => {
                let mut all: Vec<Value> = params.iter().map(|p| serde_json::to_value(p).unwrap_or_default()).collect();
                all.extend(last.iter().map(|l| last_rollout_json(l, false)));
                all.extend(policy.iter().cloned());
                m.serialize_entry("parameter", &all)?
            }
        }
        m.end()
    }
}

/// `Parameters{agent, result}`, one entry of a bulk answer.
#[derive(Serialize)]
struct BulkEntry<'a, R: Serialize> {
    resource: BulkParameters<'a, R>,
}

#[derive(Serialize)]
struct BulkParameters<'a, R: Serialize> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    parameter: (NamedResource<'a, AgentRow>, NamedResource<'a, R>),
}

#[derive(Serialize)]
struct NamedResource<'a, R: Serialize> {
    name: &'static str,
    resource: &'a R,
}

/// A collection Bundle of `Parameters{agent, result}`.
pub(super) fn bulk_answer<R: Serialize>(rows: &[AgentRow], results: &[R]) -> Response {
    #[derive(Serialize)]
    struct Collection<'a, R: Serialize> {
        #[serde(rename = "resourceType")]
        resource_type: &'static str,
        #[serde(rename = "type")]
        kind: &'static str,
        entry: Vec<BulkEntry<'a, R>>,
    }
    let entry = rows
        .iter()
        .zip(results)
        .map(|(agent, result)| BulkEntry {
            resource: BulkParameters {
                resource_type: "Parameters",
                parameter: (
                    NamedResource { name: "agent", resource: agent },
                    NamedResource { name: "result", resource: result },
                ),
            },
        })
        .collect();
    // About 500 bytes an entry: the answer is written once into a buffer of its size.
    fhir_sized(StatusCode::OK, Collection { resource_type: "Bundle", kind: "collection", entry }, rows.len() * 512)
}

/// The agents a bulk operation applies to (at most `max` a call), or the error that stops it.
/// One that asks the agents something (`acts`) is refused when its search finds more agents than
/// the page it was given by default (`_count` not given, 20): it would ask the first 20 and say
/// nothing of the others (found by an attacker's probe: "upgrade them all" skipped 12 of 32). A
/// `_count` given asks for that page, as asked.
pub(super) async fn bulk_targets(
    app: &AppState,
    pairs: &[(String, String)],
    op_params: &[&str],
    max: usize,
    acts: bool,
) -> Result<Vec<AgentRow>, ApiError> {
    let mut q = AgentQuery { skip_total: true, ..parse_search(pairs, op_params, max)? };
    let paged_by_default = acts && !pairs.iter().any(|(k, _)| k == "_count");
    let page = q.count;
    if paged_by_default {
        q.count += 1;
    }
    let (rows, _) = app.store.search(&q).await.map_err(store_error)?;
    if rows.is_empty() {
        return Err(bad_request("No agent(s) for given query"));
    }
    if paged_by_default && rows.len() > page {
        return Err(bad_request(format!(
            "This search finds more than {page} agents, the page a bulk operation asks by default: give \
             _count (at most {max}) to ask that many, narrow the search, or upgrade a fleet with a rollout \
             (POST Agent/$upgrade with Prefer: respond-async)"
        )));
    }
    super::audit::entities(rows.iter().map(super::lifecycle::agent_ref));
    Ok(rows)
}

pub async fn bulk_status(app: &AppState, pairs: &[(String, String)]) -> Result<Response, ApiError> {
    // Reading statuses asks no agent anything: a page may be as large as a search's.
    let rows = bulk_targets(app, pairs, &[], MAX_PAGE, false).await?;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let statuses = app.hub.statuses(&ids).await.map_err(status_error)?;
    let snap = policy_snapshot(app).await;
    let policy =
        |id: &str| snap.as_ref().and_then(|s| policy_status::agent_json(s, id)).map(|v| policy_status::agent_part(&v));
    let results: Vec<StatusParameters> = statuses
        .into_iter()
        .zip(&ids)
        .map(|(s, id)| StatusParameters(s, app.rollouts.last_result(id), policy(id)))
        .collect();
    Ok(bulk_answer(&rows, &results))
}

/// What an `$upgrade` call asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeParams {
    pub(crate) target: Target,
    pub(crate) timeout: Duration,
    pub(crate) force: bool,
}

/// Parameters from the query string and a `Parameters` body (each given once).
pub fn upgrade_params(pairs: &[(String, String)], body: Params) -> Result<UpgradeParams, ApiError> {
    let raw = merge_params(pairs, UPGRADE_PARAMS, body)?;
    let timeout_ms = int_param(&raw, "timeout")?.unwrap_or(DEFAULT_TIMEOUT_MS);
    // Where an `$upgrade` request's version becomes a target: no version is the latest; text that
    // is no version is refused here, with the words the agent would use.
    let version = string_param(&raw, "version");
    let target = Target::parse(version.as_deref()).map_err(|e| bad_request(texts::invalid_version(&e.text)))?;
    Ok(UpgradeParams {
        target,
        timeout: Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS)),
        force: bool_param(&raw, "force")?.unwrap_or(false),
    })
}

/// How long the record of an upgrade may hold its caller past the caller's own timeout: reading
/// the version it starts from, and writing its result, when the bus or the store does not answer.
const RECORD_LIMIT: Duration = Duration::from_secs(1);

/// Asks one agent to upgrade; its answer as an HTTP status and an `OperationOutcome`, recorded
/// in the agent's upgrade history. The caller is answered within its timeout and
/// [`RECORD_LIMIT`], whatever the store and the bus do: a record that takes longer is written
/// after the answer.
pub(crate) async fn upgrade_one(app: &AppState, agent_id: &str, p: &UpgradeParams) -> (StatusCode, Value) {
    let deadline = tokio::time::Instant::now() + p.timeout + RECORD_LIMIT;
    let started = app.results.started(agent_id, &p.target, p.force, RECORD_LIMIT).await;
    let (status, outcome) = ask_upgrade(app, agent_id, p).await;
    let (results, recorded) = (app.results.clone(), outcome.clone());
    let record = tokio::spawn(async move { results.finish(started, status.is_success(), &recorded).await });
    if tokio::time::timeout_at(deadline, record).await.is_err() {
        tracing::warn!(agent_id, "upgrade answered before its result was recorded: the store or the bus is slow");
    }
    (status, outcome)
}

async fn ask_upgrade(app: &AppState, agent_id: &str, p: &UpgradeParams) -> (StatusCode, Value) {
    let msg = Message::UpgradeRequest { version: p.target.to_wire(), force: p.force.then_some(true) };
    tracing::info!(agent_id, target = %p.target, force = p.force, "upgrade requested");
    let failed = |text: &str| (StatusCode::BAD_REQUEST, outcome_json("error", "invalid", text));
    match app.hub.request(agent_id, msg, p.timeout).await {
        Ok(env) => match env.msg {
            Message::UpgradeResponse { status_code: 200 } => (StatusCode::OK, all_ok()),
            Message::UpgradeResponse { status_code } => failed(&crate::model::failure::upgrade_not_ok(status_code)),
            Message::Error { body } => failed(&body),
            other => failed(&format!("Unexpected response from agent: {other:?}")),
        },
        Err(e @ RequestError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, outcome_json("error", "transient", &e.to_string()))
        }
        Err(e @ (RequestError::Timeout | RequestError::NotConnected)) => failed(&e.to_string()),
    }
}

pub async fn single_upgrade(
    app: &AppState,
    row: &AgentRow,
    pairs: &[(String, String)],
    body: Params,
) -> Result<Response, ApiError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !UPGRADE_PARAMS.contains(&k.as_str())) {
        return Err(bad_request(format!("Unknown parameter: {k}")));
    }
    let p = upgrade_params(pairs, body)?;
    let (status, outcome) = upgrade_one(app, &row.id, &p).await;
    Ok(fhir_result(status, outcome))
}

pub async fn bulk_upgrade(app: &AppState, pairs: &[(String, String)], body: Params) -> Result<Response, ApiError> {
    let p = upgrade_params(pairs, body)?;
    let rows = bulk_targets(app, pairs, UPGRADE_PARAMS, MAX_BULK, true).await?;
    let results = join_all(rows.iter().map(|r| upgrade_one(app, &r.id, &p))).await;
    let outcomes: Vec<Value> = results.into_iter().map(|(_, outcome)| outcome).collect();
    Ok(bulk_answer(&rows, &outcomes))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn upgrade_parameters_from_query_and_body() {
        let p = upgrade_params(&pairs(&[("version", "1.4.2"), ("timeout", "90000")]), HashMap::new()).unwrap();
        let target = Target::Exact(semver::Version::new(1, 4, 2));
        assert_eq!(p, UpgradeParams { target, timeout: Duration::from_millis(56_000), force: false });
        let body = HashMap::from([("force".to_string(), json!(true)), ("version".to_string(), json!(""))]);
        let p = upgrade_params(&pairs(&[("timeout", "1000")]), body.clone()).unwrap();
        assert_eq!((p.target, p.force, p.timeout), (Target::Latest, true, Duration::from_millis(1_000)));
        let e = upgrade_params(&pairs(&[("version", "1.0.0")]), body).unwrap_err();
        assert_eq!(e.text(), "Parameter 'version' is given in the query string and in the body: give it once");
        assert_eq!(upgrade_params(&pairs(&[("version", "v2.0.0")]), HashMap::new()).unwrap().target.label(), "2.0.0");
        assert!(upgrade_params(&pairs(&[("timeout", "soon")]), HashMap::new()).is_err());
        assert!(upgrade_params(&pairs(&[("force", "maybe")]), HashMap::new()).is_err());
        let e = upgrade_params(&pairs(&[("version", "1.x")]), HashMap::new()).unwrap_err();
        assert!(format!("{e:?}").contains("Error during upgrading to version 'v1.x'. '1.x' is not a valid version"));
    }
}
