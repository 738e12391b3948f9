//! FHIR REST for `Agent` under `/fhir/R4/`: who may call it, read, search, create, and the
//! routing of the operations in [`super::ops`] and [`super::relay`]. Answers are FHIR JSON; every error is an `OperationOutcome`
//! with the right status, never a panic or a 500 for bad input.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::access::{forbidden, require_client};
use super::app::AppState;
use super::outcome::{bad_request, error, fhir, not_found, store_error, ApiError, Pairs};
use super::search::{parse_search, public_base, searchset, MAX_PAGE};
use super::{lifecycle, ops, relay, rollouts};
use crate::limits::throttle::shown;
use crate::model::access::Role;
use crate::model::agent::AgentRow;
use crate::params::{merge_params, Params};
use crate::proxy::Peer;

/// `GET Agent?…`: a searchset.
pub async fn search(
    State(app): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    let q = parse_search(&pairs, &[], MAX_PAGE)?;
    let (rows, total) = app.store.search(&q).await.map_err(store_error)?;
    let last = |id: &str| app.rollouts.last_result(id).map(|l| ops::last_rollout_json(&l, true));
    Ok(fhir(StatusCode::OK, searchset(&public_base(&app, peer, &headers), &pairs, &q, &rows, total, &last)))
}

/// `POST Agent`: create from an `Agent` resource (`name` required).
pub async fn create(State(app): State<AppState>, body: String) -> Result<Response, ApiError> {
    let v = crate::params::json_body(&body)?;
    let (name, status, identifiers) = lifecycle::agent_fields(&v)?;
    let lease = lifecycle::identifiers_lease(&app, &identifiers).await?;
    let created = async {
        lifecycle::identifiers_free(&app, &identifiers, &Value::Null, None).await?;
        app.store.create_agent(&name, &status, &identifiers).await.map_err(store_error)
    }
    .await;
    lifecycle::release(lease).await;
    Ok(fhir(StatusCode::CREATED, created?.to_fhir()))
}

/// `GET Agent/<id>` (an admin, or the agent's own credentials), and the type-level operations
/// `GET Agent/$<op>`, which share the path.
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    // The table of rules let only viewers and above through to a type-level operation.
    if let Some(op) = id.strip_prefix('$') {
        if op == "upgrade" && rollouts::wants_async(&headers) {
            return Err(bad_request(ASYNC_NEEDS_POST));
        }
        return type_op(&app, op, &pairs, Params::new()).await;
    }
    let client = require_client(&app, &headers).await?;
    super::audit::actor(client.reference());
    if client.role < Role::Viewer && client.agent_id.as_deref() != Some(id.as_str()) {
        return Err(forbidden());
    }
    Ok(fhir(StatusCode::OK, find(&app, &id).await?.to_fhir()))
}

const ASYNC_NEEDS_POST: &str =
    "Prefer: respond-async starts a rollout, with POST Agent/$upgrade?<search> (version and strategy in the body)";

/// `POST Agent/$<op>` (search in the query, parameters in the body).
pub async fn post_type_op(
    State(app): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Path(op): Path<String>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    let Some(op) = op.strip_prefix('$') else { return Err(not_found()) };
    if op == "upgrade" && rollouts::wants_async(&headers) {
        return rollouts::create(&app, (peer, &headers), &pairs, parameters_body(&body)?).await;
    }
    type_op(&app, op, &pairs, parameters_body(&body)?).await
}

async fn type_op(app: &AppState, op: &str, pairs: &[(String, String)], body: Params) -> Result<Response, ApiError> {
    match op {
        "bulk-status" if !body.is_empty() => {
            Err(bad_request("$bulk-status takes no parameter in its body: give the search in the query string"))
        }
        "bulk-status" => ops::bulk_status(app, pairs).await,
        "upgrade" => ops::bulk_upgrade(app, pairs, body).await,
        "reload-config" | "fetch-logs" | "stats" => relay::bulk(app, relay::Op::parse(op), pairs, body).await,
        "push" => relay::push_by_search(app, pairs, body).await,
        _ => Err(unsupported(op)),
    }
}

/// `GET|POST Agent/<id>/$<op>`.
pub async fn instance_op(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    if rollouts::wants_async(&headers) {
        return Err(bad_request(ASYNC_NEEDS_POST));
    }
    instance_op_with(&app, &id, &op, &pairs, Params::new()).await
}

pub async fn post_instance_op(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    if rollouts::wants_async(&headers) {
        return Err(bad_request(ASYNC_NEEDS_POST));
    }
    instance_op_with(&app, &id, &op, &pairs, parameters_body(&body)?).await
}

async fn instance_op_with(
    app: &AppState,
    id: &str,
    op: &str,
    pairs: &[(String, String)],
    body: Params,
) -> Result<Response, ApiError> {
    let row = find(app, id).await?;
    let op = op.strip_prefix('$').unwrap_or(op);
    if matches!(op, "status" | "rotate-secret") && !body.is_empty() {
        return Err(bad_request(format!("${op} takes no parameter: send it with an empty body")));
    }
    match op {
        "status" => Ok(fhir(StatusCode::OK, ops::status_parameters(app, &row.id).await?)),
        "upgrade" => ops::single_upgrade(app, &row, pairs, body).await,
        op @ ("reload-config" | "fetch-logs" | "stats") => {
            relay::single(app, relay::Op::parse(op), &row, pairs, body).await
        }
        "push" => relay::push(app, &row, merge_params(pairs, relay::PUSH_PARAMS, body)?).await,
        "rotate-secret" => lifecycle::rotate(app, &row.id).await,
        _ => Err(unsupported(op)),
    }
}

fn unsupported(op: &str) -> ApiError {
    let op = op.trim_start_matches('$');
    error(StatusCode::NOT_FOUND, "not-supported", format!("Unsupported operation: ${op}"))
}

async fn find(app: &AppState, id: &str) -> Result<AgentRow, ApiError> {
    lifecycle::present(app, id).await
}

/// The parameters of a POST body: a `Parameters` resource (`value[x]` entries), or a plain JSON
/// object of parameters, as Medplum accepts both; an empty body has none.
pub fn parameters_body(body: &str) -> Result<Params, ApiError> {
    if body.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let v = crate::params::json_body(body)?;
    let Value::Object(fields) = v else {
        return Err(bad_request("Expected a Parameters resource or a JSON object of parameters"));
    };
    let no_value = |name: &str| {
        bad_request(format!(
            "Parameter '{}' has no value: give one (a value[x] such as valueString), or leave it out",
            shown(name)
        ))
    };
    match fields.get("resourceType").and_then(Value::as_str) {
        None => {
            if let Some((k, _)) = fields.iter().find(|(_, v)| v.is_null()) {
                return Err(no_value(k));
            }
            return Ok(fields.into_iter().collect());
        }
        Some("Parameters") => {}
        Some(other) => return Err(bad_request(format!("Expected a Parameters resource, not {other}"))),
    }
    const FIELDS: &[&str] = &["resourceType", "id", "meta", "implicitRules", "language", "parameter"];
    if let Some(k) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad_request(format!("Unknown field in a Parameters resource: {} (it takes parameter)", shown(k))));
    }
    let list = match fields.get("parameter") {
        None => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad_request("A Parameters resource's parameter must be a list")),
    };
    let mut out = HashMap::new();
    for p in list {
        let Some(name) = p["name"].as_str() else { return Err(bad_request("Parameter without a name")) };
        let entry = p.as_object().into_iter().flatten();
        // `value` then a type (`valueString`): one, and nothing beside it but the name.
        let is_value =
            |k: &str| k.strip_prefix("value").is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()));
        if let Some((k, _)) = entry.clone().find(|(k, _)| !is_value(k) && !["name", "id"].contains(&k.as_str())) {
            return Err(bad_request(format!("Unknown field in parameter '{}': {}", shown(name), shown(k))));
        }
        let values: Vec<&Value> = entry.filter(|(k, _)| is_value(k)).map(|(_, v)| v).collect();
        let value = match values[..] {
            [v] if !v.is_null() => v.clone(),
            [] | [_] => return Err(no_value(name)),
            _ => return Err(bad_request(format!("Parameter '{}' has {} values: give one", shown(name), values.len()))),
        };
        if out.insert(name.to_string(), value).is_some() {
            return Err(bad_request(format!("Parameter '{name}' is given twice: give it once")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(body: &str) -> String {
        format!("{:?}", parameters_body(body).unwrap_err())
    }

    #[test]
    fn a_parameters_body_is_read_strictly() {
        assert!(parameters_body("  ").unwrap().is_empty());
        let plain = parameters_body(r#"{"version": "1.2.3"}"#).unwrap();
        assert_eq!(plain["version"], "1.2.3");
        let resource = r#"{"resourceType": "Parameters", "id": "p", "meta": {}, "language": "en",
            "parameter": [{"name": "version", "valueString": "1.2.3"}, {"name": "force", "valueBoolean": true}]}"#;
        let read = parameters_body(resource).unwrap();
        assert_eq!((&read["version"], &read["force"]), (&Value::from("1.2.3"), &Value::from(true)));
        assert!(said(r#"{"resourceType": "Parameters", "parameters": []}"#)
            .contains("Unknown field in a Parameters resource: parameters"));
        assert!(said(r#"{"resourceType": "Parameters", "parameter": {"name": "version", "valueString": "1"}}"#)
            .contains("parameter must be a list"));
        assert!(said(r#"{"resourceType": "Parameters", "parameter": [{"name": "version"}]}"#)
            .contains("Parameter 'version' has no value"));
        let entry = |e: &str| format!(r#"{{"resourceType": "Parameters", "parameter": [{e}]}}"#);
        assert!(
            said(&entry(r#"{"name": "version", "valueString": null}"#)).contains("Parameter 'version' has no value")
        );
        for bare in [r#"{"name": "version", "value": "1.0.0"}"#, r#"{"name": "version", "valuebogus": "1"}"#] {
            assert!(said(&entry(bare)).contains("Unknown field in parameter 'version': value"), "{bare}");
        }
        let two = r#"{"resourceType": "Parameters", "parameter": [{"name": "version", "valueString": "1.0.0", "valueCode": "9.9.9"}]}"#;
        assert!(said(two).contains("Parameter 'version' has 2 values: give one"));
        let junk =
            r#"{"resourceType": "Parameters", "parameter": [{"name": "version", "valueString": "1", "junk": {}}]}"#;
        assert!(said(junk).contains("Unknown field in parameter 'version': junk"));
        assert!(said(r#"{"version": null}"#).contains("Parameter 'version' has no value"));
        assert!(said(r#"{"resourceType": "Parameters", "parameter": [{"valueString": "1"}]}"#)
            .contains("Parameter without a name"));
        assert!(said(r#"{"resourceType": "Agent"}"#).contains("Expected a Parameters resource, not Agent"));
        assert!(said("[1]").contains("Expected a Parameters resource or a JSON object"));
    }
}
