//! The update policy over REST: `GET Policy` (as set), `PUT Policy` (JSON, or a FHIR
//! `Parameters`), `GET Policy/$status` (every group's state and why, see [`super::policy_status`]),
//! and `POST Policy/$suspend`, `$resume`, `$halt-clear`. A bad value is a 400 that names its
//! field; agents found by several groups are a warning in the answer, with where they belong.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::access::require_client;
use super::app::AppState;
use super::fhir::{parameter_entry, parameter_list, parameters_body, Given};
use super::outcome::{bad_request, error, store_error, ApiError, Pairs};
use super::policy_status::status_json;
use super::rollouts::latest_release;
use super::search::{parse_search, parse_stored_search};
use crate::fleet::policy::engine::PolicyError;
use crate::fleet::policy::plan::iso;
use crate::limits::throttle::shown;
use crate::model::policy::{self, Mode};
use crate::model::policy_run::Stored;
use crate::model::query::AgentQuery;
use crate::params::{known_params, takes_none};

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> ApiError {
        match e {
            PolicyError::NotSet => error(StatusCode::NOT_FOUND, "not-found", e.to_string()),
            PolicyError::Invalid(_) => bad_request(e.to_string()),
            PolicyError::Changed | PolicyError::NotHalted => error(StatusCode::CONFLICT, "conflict", e.to_string()),
            PolicyError::Store(s) => store_error(s),
            PolicyError::Unreadable(_) | PolicyError::Facts(_) => {
                tracing::error!("update policy: {e}");
                error(StatusCode::SERVICE_UNAVAILABLE, "transient", e.to_string())
            }
        }
    }
}

/// A group's selector: an Agent search with the rules of the bulk operations, over every agent
/// it finds (no paging, no sorting).
pub fn parse_selector(text: &str) -> Result<AgentQuery, String> {
    parse_search(&selector_pairs(text)?, &[], usize::MAX).map_err(|e| e.0)
}

/// A stored policy's selector, read as the build that stored it read it ([`parse_stored_search`]).
pub fn read_stored_selector(text: &str) -> Result<AgentQuery, String> {
    parse_stored_search(&selector_pairs(text)?).map_err(|e| e.0)
}

fn selector_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(text).map_err(|e| format!("'{text}' is not a search: {e}"))?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| matches!(k.as_str(), "_count" | "_offset" | "_sort" | "_total")) {
        return Err(format!("{k} does not apply: a group takes every agent its search finds"));
    }
    Ok(pairs)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// The policy as set, with what the server added.
fn policy_json(s: &Stored) -> Value {
    let mut v = policy::to_json(&s.policy);
    v["generation"] = json!(s.generation);
    v["targetSetAt"] = json!(iso(s.set_at));
    v["resolvedFromLatest"] = json!(s.from_latest);
    v
}

/// `GET Policy`: the policy as set (`PUT` takes it back as it is).
pub async fn get(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_client(&app, &headers).await?;
    let stored = app.policy.get().await?.ok_or(PolicyError::NotSet)?;
    Ok(answer(StatusCode::OK, policy::to_json(&stored.policy)))
}

/// `PUT Policy`: sets the policy (the server's own fields of `GET`, if sent back, are ignored).
pub async fn put(State(app): State<AppState>, headers: HeaderMap, body: String) -> Result<Response, ApiError> {
    require_client(&app, &headers).await?;
    let v = crate::params::json_body(&body)?;
    let spec = match v.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => from_parameters(&v)?,
        Some(other) => {
            return Err(bad_request(format!("Expected the policy as JSON or a Parameters resource, not {other}")))
        }
        None => v,
    };
    let latest = || latest_release(&app, "latest");
    let set = app.policy.set(&spec, &latest).await?;
    for w in &set.warnings {
        tracing::info!("update policy: {w}");
    }
    let body = json!({"policy": policy_json(&set.stored), "warnings": set.warnings});
    Ok(answer(StatusCode::OK, body))
}

/// `GET Policy/$status`.
pub async fn op_get(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(op): Path<String>,
) -> Result<Response, ApiError> {
    require_client(&app, &headers).await?;
    if op != "$status" {
        return Err(unsupported(&op));
    }
    status(&app).await
}

async fn status(app: &AppState) -> Result<Response, ApiError> {
    let snap = app.policy.snapshot().await?.ok_or(PolicyError::NotSet)?;
    Ok(answer(StatusCode::OK, status_json(&snap)))
}

/// `POST Policy/$suspend|$resume|$halt-clear`: the status after the change (as it stood).
pub async fn op_post(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(op): Path<String>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    let who = require_client(&app, &headers).await?;
    if matches!(op.as_str(), "$suspend" | "$resume" | "$halt-clear") {
        known_params(pairs.iter().map(|(k, _)| k), &[])?;
        takes_none(&op, &parameters_body(&body)?)?;
    }
    match op.as_str() {
        "$suspend" => app.policy.set_mode(Mode::Suspended).await?,
        "$resume" => app.policy.set_mode(Mode::Enabled).await?,
        "$halt-clear" => app.policy.clear_halts().await?,
        _ => return Err(unsupported(&op)),
    };
    tracing::info!(client_id = who.id, op, "update policy changed");
    let stored = app.policy.get().await?.ok_or(PolicyError::NotSet)?;
    Ok(answer(StatusCode::OK, json!({"policy": policy_json(&stored)})))
}

fn unsupported(op: &str) -> ApiError {
    error(StatusCode::NOT_FOUND, "not-supported", format!("Unsupported operation on Policy: {op}"))
}

/// A `Parameters` resource as the policy's JSON: `mode`, `target`, `allowDowngrade`,
/// `unmatched`, and a `group` (repeated, in order) whose parts are a group's fields, `window`
/// having parts of its own (`days` repeated).
pub fn from_parameters(v: &Value) -> Result<Value, ApiError> {
    let fields = v.as_object().ok_or_else(|| bad_request("Expected a Parameters resource"))?;
    parts_object(parameter_list(fields).map_err(bad_request)?, "parameter")
}

fn parts_object(list: &[Value], at: &str) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for (i, p) in list.iter().enumerate() {
        let (name, given) = parameter_entry(p).map_err(|e| bad_request(format!("{at}[{i}]: {e}")))?;
        let value = match given {
            Given::Parts(parts) => parts_object(parts, &format!("{at}[{i}].part"))?,
            Given::Value(v) => v.clone(),
        };
        match name {
            "group" | "days" => {
                let key = if name == "group" { "groups" } else { "days" };
                match out.entry(key).or_insert_with(|| Value::Array(vec![])) {
                    Value::Array(list) => list.push(value),
                    _ => return Err(twice(at, i, key)),
                }
            }
            // A list is given as its repeated parameters (`group`), never also as one value.
            "groups" if out.contains_key("groups") => return Err(twice(at, i, "groups")),
            _ => {
                if out.insert(name.to_string(), value).is_some() {
                    return Err(bad_request(format!("{at}[{i}]: {} given twice: give it once", shown(name))));
                }
            }
        }
    }
    Ok(Value::Object(out))
}

fn twice(at: &str, i: usize, key: &str) -> ApiError {
    let one = if key == "groups" { "group" } else { "days" };
    bad_request(format!("{at}[{i}]: {key} given twice: give each of them as a repeated '{one}' parameter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `policy` fuzz target: a `groups` parameter with a value, then a `group`, made
    /// the reader panic (a list expected where the value was).
    #[test]
    fn a_list_given_as_a_value_too_is_refused_not_a_panic() {
        for params in [
            json!([{"name": "groups", "valueString": "latest"}, {"name": "group", "part": [{"name": "name", "valueString": "dev"}]}]),
            json!([{"name": "group", "part": [{"name": "name", "valueString": "dev"}]}, {"name": "groups", "valueString": "x"}]),
        ] {
            let err = from_parameters(&json!({"resourceType": "Parameters", "parameter": params})).unwrap_err();
            assert!(
                err.text().contains("groups given twice: give each of them as a repeated 'group' parameter"),
                "{}",
                err.text()
            );
        }
    }

    /// Found by an attacker's probe: the policy's `Parameters` took any field, and a bare `value`,
    /// where every other `Parameters` body refuses them.
    #[test]
    fn a_policys_parameters_are_read_as_strictly_as_any_others() {
        let said = |v: Value| from_parameters(&v).unwrap_err().text().to_string();
        let target = json!({"name": "target", "valueString": "1.4.2"});
        for (v, expected) in [
            (
                json!({"resourceType": "Parameters", "parameters": [target]}),
                "Unknown field in a Parameters resource: parameters",
            ),
            (json!({"resourceType": "Parameters", "parameter": target}), "parameter must be a list"),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "target", "value": "1.4.2"}]}),
                "parameter[0]: Unknown field in parameter 'target': value",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "target", "valueString": "1.4.2", "junk": 1}]}),
                "parameter[0]: Unknown field in parameter 'target': junk",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "group", "valueString": "x", "part": []}]}),
                "parameter[0]: Parameter 'group' has a value and parts: give one or the other",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "group", "part": {"name": "name"}}]}),
                "parameter[0]: Parameter 'group': part must be a list",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "group", "part": [{"name": "name", "valueString": null}]}]}),
                "parameter[0].part[0]: Parameter 'name' has no value",
            ),
        ] {
            assert!(said(v.clone()).contains(expected), "{v}: {}", said(v.clone()));
        }
    }

    #[test]
    fn selectors_are_searches_over_every_agent() {
        assert!(parse_selector("name=clinic-&status=active").is_ok());
        // A selector an earlier build stored with a parameter twice keeps working (the last
        // counts, as it did); a new one is refused.
        let twice = "status=off&status=active";
        assert!(parse_selector(twice).unwrap_err().contains("Search parameter 'status' is given twice"));
        let stored = read_stored_selector(twice).unwrap();
        assert_eq!(stored.status.map(|s| s.any_of), Some(vec!["active".to_string()]));
        assert_eq!(parse_selector("nmae=x").unwrap_err(), "Unknown search parameter: nmae");
        assert_eq!(
            parse_selector("name=x&_count=5").unwrap_err(),
            "_count does not apply: a group takes every agent its search finds"
        );
    }

    #[test]
    fn parameters_become_the_policys_json() {
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "target", "valueString": "1.4.2"},
            {"name": "allowDowngrade", "valueBoolean": true},
            {"name": "group", "part": [{"name": "name", "valueString": "dev"}, {"name": "selector", "valueString": "name=dev-"}]},
            {"name": "group", "part": [{"name": "name", "valueString": "prod"}, {"name": "canary", "valueInteger": 2},
                {"name": "window", "part": [{"name": "days", "valueCode": "sat"}, {"name": "days", "valueCode": "sun"},
                    {"name": "start", "valueTime": "02:00:00"}, {"name": "duration", "valueString": "2h"}]}]}
        ]});
        let v = from_parameters(&p).unwrap();
        assert_eq!(
            v,
            json!({"target": "1.4.2", "allowDowngrade": true, "groups": [
                {"name": "dev", "selector": "name=dev-"},
                {"name": "prod", "canary": 2, "window": {"days": ["sat", "sun"], "start": "02:00:00", "duration": "2h"}}
            ]})
        );
        let bad = json!({"resourceType": "Parameters", "parameter": [{"name": "target"}]});
        assert!(format!("{:?}", from_parameters(&bad).unwrap_err())
            .contains("parameter[0]: Parameter 'target' has no value: give one (a value[x] such as valueString)"));
    }
}
