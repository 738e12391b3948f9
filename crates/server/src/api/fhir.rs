//! FHIR REST for `Agent` under `/fhir/R4/`: who may call it, read, search, create, and the
//! routing of the operations in [`super::ops`] and [`super::relay`]. Answers are FHIR JSON; every error is an `OperationOutcome`
//! with the right status, never a panic or a 500 for bad input.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value};

use super::access::{forbidden, require_client};
use super::app::AppState;
use super::outcome::{bad_request, error, fhir, not_found, store_error, ApiError, Pairs};
use super::search::{parse_search, public_base, searchset, MAX_PAGE};
use super::{lifecycle, ops, relay, rollouts};
use crate::limits::throttle::shown;
use crate::model::access::Role;
use crate::model::agent::AgentRow;
use crate::model::audit::Ref;
use crate::params::{known_params, merge_params, takes_none, Params};
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
        let fence = lease.as_ref().map(crate::fleet::lease::Lease::fence);
        app.store.create_agent(&name, &status, &identifiers, fence).await.map_err(lifecycle::identifiers_write_error)
    }
    .await;
    lifecycle::release(lease).await;
    let created = created?;
    // The path names no agent: the audit event names the one made.
    super::audit::entities([Ref { reference: format!("Agent/{}", created.id), display: Some(created.name.clone()) }]);
    Ok(fhir(StatusCode::CREATED, created.to_fhir()))
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
    if matches!(op, "status" | "rotate-secret") {
        known_params(pairs.iter().map(|(k, _)| k), &[])?;
        takes_none(&format!("${op}"), &body)?;
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
    match fields.get("resourceType").and_then(Value::as_str) {
        None => {
            if let Some((k, _)) = fields.iter().find(|(_, v)| v.is_null()) {
                return Err(bad_request(no_value(k)));
            }
            return Ok(fields.into_iter().collect());
        }
        Some("Parameters") => {}
        Some(other) => return Err(bad_request(format!("Expected a Parameters resource, not {other}"))),
    }
    let mut out = HashMap::new();
    for p in parameter_list(&fields).map_err(bad_request)? {
        let (name, value) = match parameter_entry(p).map_err(bad_request)? {
            (name, Given::Value(value)) => (name, value),
            (name, Given::Parts(_)) => {
                return Err(bad_request(format!("Parameter '{}' takes a value (a value[x]), not parts", shown(name))))
            }
        };
        if out.insert(name.to_string(), value.clone()).is_some() {
            return Err(bad_request(format!("Parameter '{}' is given twice: give it once", shown(name))));
        }
    }
    Ok(out)
}

/// A `Parameters` resource's entries, its other fields checked: those of a resource, and
/// `parameter`, a list.
pub fn parameter_list(fields: &Map<String, Value>) -> Result<&[Value], String> {
    const FIELDS: &[&str] = &["resourceType", "id", "meta", "implicitRules", "language", "parameter"];
    if let Some(k) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("Unknown field in a Parameters resource: {} (it takes parameter)", shown(k)));
    }
    match fields.get("parameter") {
        None => Ok(&[]),
        Some(Value::Array(list)) => Ok(list),
        Some(_) => Err("A Parameters resource's parameter must be a list".into()),
    }
}

/// What a parameter gives: one value, or parts of its own.
pub enum Given<'a> {
    Value(&'a Value),
    Parts(&'a [Value]),
}

/// One entry of a `Parameters` resource: its name and one `value[x]` (`valueString`) or its
/// `part` list, with nothing beside them but an `id` (a bare `value`, a misspelt field or a
/// second value is refused, not guessed at). Whether parts are taken is the caller's to say.
pub fn parameter_entry(p: &Value) -> Result<(&str, Given<'_>), String> {
    let Some(name) = p["name"].as_str() else { return Err("Parameter without a name".into()) };
    let entry = p.as_object().into_iter().flatten();
    let is_value = |k: &str| k.strip_prefix("value").is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase()));
    if let Some((k, _)) = entry.clone().find(|(k, _)| !is_value(k) && !["name", "id", "part"].contains(&k.as_str())) {
        return Err(format!("Unknown field in parameter '{}': {}", shown(name), shown(k)));
    }
    let values: Vec<&Value> = entry.filter(|(k, _)| is_value(k)).map(|(_, v)| v).collect();
    let parts = match p.get("part") {
        None => None,
        Some(Value::Array(list)) => Some(list.as_slice()),
        Some(_) => return Err(format!("Parameter '{}': part must be a list", shown(name))),
    };
    match (&values[..], parts) {
        ([_, ..], Some(_)) => Err(format!("Parameter '{}' has a value and parts: give one or the other", shown(name))),
        ([], Some(parts)) => Ok((name, Given::Parts(parts))),
        ([v], None) if !v.is_null() => Ok((name, Given::Value(v))),
        ([] | [_], None) => Err(no_value(name)),
        (more, None) => Err(format!("Parameter '{}' has {} values: give one", shown(name), more.len())),
    }
}

fn no_value(name: &str) -> String {
    format!("Parameter '{}' has no value: give one (a value[x] such as valueString), or leave it out", shown(name))
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
        assert!(said(&entry(r#"{"name": "version", "part": []}"#))
            .contains("Parameter 'version' takes a value (a value[x]), not parts"));
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
