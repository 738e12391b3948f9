//! The `Agent` operations (protocol.md §4): `$status`, `$bulk-status` and `$upgrade`, single and
//! bulk. Bulk operations ask every matched agent at once and answer a `collection` Bundle of
//! `Parameters{agent, result}`.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::{json, Value};

use super::db::{AgentRow, StatusRow};
use super::fhir::{bad_request, fhir, invalid_value, outcome_json, parse_search, store_error, ApiError};
use super::hub::RequestError;
use super::AppState;
use crate::protocol::Message;

pub const MAX_BULK: usize = 100;
pub const DEFAULT_TIMEOUT_MS: u64 = 45_000;
pub const MAX_TIMEOUT_MS: u64 = 56_000;
const UPGRADE_PARAMS: &[&str] = &["version", "timeout", "force"];

/// `$status` of one agent: `status`, `version`, and `lastUpdated` once it has been seen.
pub struct StatusParameters(Option<StatusRow>);

pub fn status_parameters(app: &AppState, agent_id: &str) -> StatusParameters {
    StatusParameters(app.hub.status(agent_id))
}

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
        let params = match &self.0 {
            Some(st) => vec![
                Param("status", "valueCode", &st.status),
                Param("version", "valueString", &st.version),
                Param("lastUpdated", "valueInstant", &st.updated),
            ],
            None => vec![Param("status", "valueCode", "unknown"), Param("version", "valueString", "unknown")],
        };
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("resourceType", "Parameters")?;
        m.serialize_entry("parameter", &params)?;
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
fn bulk_answer<R: Serialize>(rows: &[AgentRow], results: &[R]) -> Response {
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
    fhir(StatusCode::OK, Collection { resource_type: "Bundle", kind: "collection", entry })
}

/// The agents a bulk operation applies to, or the error that stops it.
fn bulk_targets(app: &AppState, pairs: &[(String, String)], op_params: &[&str]) -> Result<Vec<AgentRow>, ApiError> {
    let q = parse_search(pairs, op_params, MAX_BULK)?;
    let (rows, _) = app.store.search(&q).map_err(store_error)?;
    if rows.is_empty() {
        return Err(bad_request("No agent(s) for given query"));
    }
    Ok(rows)
}

pub fn bulk_status(app: &AppState, pairs: &[(String, String)]) -> Result<Response, ApiError> {
    let rows = bulk_targets(app, pairs, &[])?;
    let results: Vec<StatusParameters> = rows.iter().map(|r| status_parameters(app, &r.id)).collect();
    Ok(bulk_answer(&rows, &results))
}

/// What an `$upgrade` call asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpgradeParams {
    pub(crate) version: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) force: bool,
}

/// Parameters from the query string, overridden by a `Parameters` body.
fn upgrade_params(pairs: &[(String, String)], body: HashMap<String, Value>) -> Result<UpgradeParams, ApiError> {
    let mut raw: HashMap<String, Value> = pairs
        .iter()
        .filter(|(k, _)| UPGRADE_PARAMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    raw.extend(body);
    let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let version = match raw.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(text(v).trim().to_string()).filter(|v| !v.is_empty()),
    };
    let timeout_ms = match raw.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| invalid_value(&text(v), "integer", "timeout"))?,
    };
    let force = match raw.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => match text(v).as_str() {
            "true" => true,
            "false" => false,
            other => return Err(invalid_value(other, "boolean", "force")),
        },
    };
    Ok(UpgradeParams { version, timeout: Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS)), force })
}

/// Asks one agent to upgrade; its answer as an HTTP status and an `OperationOutcome`, recorded
/// in the agent's upgrade history.
pub(crate) async fn upgrade_one(app: &AppState, agent_id: &str, p: &UpgradeParams) -> (StatusCode, Value) {
    let started = super::results::Started::new(app, agent_id, p.version.as_deref(), p.force);
    let (status, outcome) = ask_upgrade(app, agent_id, p).await;
    started.finish(app, status, &outcome);
    (status, outcome)
}

async fn ask_upgrade(app: &AppState, agent_id: &str, p: &UpgradeParams) -> (StatusCode, Value) {
    let msg = Message::UpgradeRequest { version: p.version.clone(), force: p.force.then_some(true) };
    tracing::info!(agent_id, version = p.version.as_deref().unwrap_or("latest"), force = p.force, "upgrade requested");
    let failed = |text: &str| (StatusCode::BAD_REQUEST, outcome_json("error", "invalid", text));
    match app.hub.request(agent_id, msg, p.timeout).await {
        Ok(env) => match env.msg {
            Message::UpgradeResponse { .. } => {
                let mut ok = outcome_json("information", "informational", "All OK");
                ok["id"] = json!("ok");
                (StatusCode::OK, ok)
            }
            Message::Error { body } => failed(&body),
            other => failed(&format!("Unexpected response from agent: {other:?}")),
        },
        Err(e @ (RequestError::Timeout | RequestError::NotConnected)) => failed(&e.to_string()),
    }
}

pub async fn single_upgrade(
    app: &AppState,
    row: &AgentRow,
    pairs: &[(String, String)],
    body: HashMap<String, Value>,
) -> Result<Response, ApiError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !UPGRADE_PARAMS.contains(&k.as_str())) {
        return Err(bad_request(format!("Unknown parameter: {k}")));
    }
    let p = upgrade_params(pairs, body)?;
    let (status, outcome) = upgrade_one(app, &row.id, &p).await;
    Ok(fhir(status, outcome))
}

pub async fn bulk_upgrade(
    app: &AppState,
    pairs: &[(String, String)],
    body: HashMap<String, Value>,
) -> Result<Response, ApiError> {
    let p = upgrade_params(pairs, body)?;
    let rows = bulk_targets(app, pairs, UPGRADE_PARAMS)?;
    let results = join_all(rows.iter().map(|r| upgrade_one(app, &r.id, &p))).await;
    let outcomes: Vec<Value> = results.into_iter().map(|(_, outcome)| outcome).collect();
    Ok(bulk_answer(&rows, &outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn upgrade_parameters_from_query_and_body() {
        let p = upgrade_params(&pairs(&[("version", "1.4.2"), ("timeout", "90000")]), HashMap::new()).unwrap();
        assert_eq!(
            p,
            UpgradeParams { version: Some("1.4.2".into()), timeout: Duration::from_millis(56_000), force: false }
        );
        let body = HashMap::from([("force".to_string(), json!(true)), ("version".to_string(), json!(""))]);
        let p = upgrade_params(&pairs(&[("version", "1.0.0")]), body).unwrap();
        assert_eq!((p.version, p.force, p.timeout), (None, true, Duration::from_millis(45_000)));
        assert!(upgrade_params(&pairs(&[("timeout", "soon")]), HashMap::new()).is_err());
        assert!(upgrade_params(&pairs(&[("force", "maybe")]), HashMap::new()).is_err());
    }
}
