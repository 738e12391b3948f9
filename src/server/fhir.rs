//! FHIR REST for `Agent` under `/fhir/R4/`: read, search, create, and the routing of the
//! operations in [`super::ops`]. Answers are FHIR JSON; every error is an `OperationOutcome`
//! with the right status, never a panic or a 500 for bad input.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::db::{AgentQuery, AgentRow, StoreError};
use super::{auth, ops, AppState};

pub type Pairs = Query<Vec<(String, String)>>;

/// A FHIR JSON answer.
pub fn fhir(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/fhir+json")], body.to_string()).into_response()
}

pub fn outcome_json(severity: &str, code: &str, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "details": {"text": text}}]})
}

/// An error `OperationOutcome`.
pub fn error(status: StatusCode, code: &str, text: &str) -> Response {
    fhir(status, outcome_json("error", code, text))
}

pub fn bad_request(text: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid", text)
}

pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not-found", "Not found")
}

pub fn store_error(e: StoreError) -> Response {
    tracing::error!("{e}");
    error(StatusCode::SERVICE_UNAVAILABLE, "transient", "Storage unavailable, try again")
}

/// Only administrators call the REST API; an agent's own credentials get 403.
pub fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match auth::bearer_client(app, headers) {
        Some(c) if c.admin => Ok(()),
        Some(_) => Err(error(StatusCode::FORBIDDEN, "forbidden", "Forbidden: agent credentials cannot call the REST API")),
        None => Err(error(StatusCode::UNAUTHORIZED, "login", "Unauthorized: a valid bearer token is required")),
    }
}

pub fn invalid_value(value: &str, ty: &str, name: &str) -> Response {
    bad_request(&format!("Invalid value '{value}' provided for {ty} parameter '{name}'"))
}

/// An `Agent` search from query pairs. Pairs named in `op_params` are left for the operation;
/// any other unknown name is an error, so that a typo never widens a bulk operation to the fleet.
pub fn parse_search(pairs: &[(String, String)], op_params: &[&str], max_count: usize) -> Result<AgentQuery, Response> {
    let mut q = AgentQuery { count: 20, ..Default::default() };
    for (key, value) in pairs {
        let int = |v: &str| v.parse::<usize>().map_err(|_| invalid_value(v, "integer", key));
        match key.as_str() {
            "_id" => q.ids = Some(value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
            "name" => q.name = Some(value.clone()),
            "status" => q.status = Some(value.clone()),
            "identifier" => {
                q.identifier = Some(match value.split_once('|') {
                    Some((system, v)) => (Some(system.to_string()).filter(|s| !s.is_empty()), v.to_string()),
                    None => (None, value.clone()),
                })
            }
            "_count" => q.count = int(value)?,
            "_offset" => q.offset = int(value)?,
            k if op_params.contains(&k) => {}
            k => return Err(bad_request(&format!("Unknown search parameter: {k}"))),
        }
    }
    if q.count > max_count {
        return Err(bad_request(&format!("'_count' of {} is greater than max of {max_count}", q.count)));
    }
    Ok(q)
}

fn bundle(kind: &str, entries: Vec<Value>, total: Option<usize>) -> Value {
    let mut b = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
    if let Some(t) = total {
        b["total"] = json!(t);
    }
    b
}

pub fn collection(entries: Vec<Value>) -> Value {
    bundle("collection", entries, None)
}

/// `GET Agent?…`: a searchset.
pub async fn search(State(app): State<AppState>, headers: HeaderMap, Query(pairs): Pairs) -> Response {
    if let Err(r) = require_admin(&app, &headers) {
        return r;
    }
    let q = match parse_search(&pairs, &[], 1000) {
        Ok(q) => q,
        Err(r) => return r,
    };
    match app.store.search(&q) {
        Ok((rows, total)) => {
            let entries = rows.iter().map(|r| json!({"fullUrl": format!("Agent/{}", r.id), "resource": r.to_fhir()})).collect();
            fhir(StatusCode::OK, bundle("searchset", entries, Some(total)))
        }
        Err(e) => store_error(e),
    }
}

/// `POST Agent`: create from an `Agent` resource (`name` required).
pub async fn create(State(app): State<AppState>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = require_admin(&app, &headers) {
        return r;
    }
    let v: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("Invalid JSON: {e}")),
    };
    if v["resourceType"] != "Agent" {
        return bad_request("Expected resourceType 'Agent'");
    }
    let Some(name) = v["name"].as_str().filter(|n| !n.trim().is_empty()) else {
        return bad_request("Missing required property: name");
    };
    let status = v["status"].as_str().unwrap_or("active");
    if !matches!(status, "active" | "error" | "off") {
        return bad_request(&format!("Invalid status '{status}': expected active, error or off"));
    }
    let identifiers = v.get("identifier").cloned().unwrap_or(json!([]));
    let valid_ident = identifiers.as_array().is_some_and(|a| a.iter().all(|i| i["value"].is_string()));
    if !valid_ident {
        return bad_request("Invalid identifier: expected an array of {system, value}");
    }
    match app.store.create_agent(name.trim(), status, &identifiers) {
        Ok(row) => fhir(StatusCode::CREATED, row.to_fhir()),
        Err(e) => store_error(e),
    }
}

/// `GET Agent/<id>`, and `GET Agent/$bulk-status` / `GET Agent/$upgrade`, which share the path.
pub async fn read(State(app): State<AppState>, headers: HeaderMap, Path(id): Path<String>, Query(pairs): Pairs) -> Response {
    if let Err(r) = require_admin(&app, &headers) {
        return r;
    }
    match id.as_str() {
        "$bulk-status" => ops::bulk_status(&app, &pairs).await,
        "$upgrade" => ops::bulk_upgrade(&app, &pairs, HashMap::new()).await,
        op if op.starts_with('$') => error(StatusCode::NOT_FOUND, "not-supported", &format!("Unsupported operation: {op}")),
        _ => match find(&app, &id) {
            Ok(row) => fhir(StatusCode::OK, row.to_fhir()),
            Err(r) => r,
        },
    }
}

/// `POST Agent/$upgrade` (search in the query, parameters in a `Parameters` body).
pub async fn post_type_op(State(app): State<AppState>, headers: HeaderMap, Path(op): Path<String>, Query(pairs): Pairs, body: String) -> Response {
    if let Err(r) = require_admin(&app, &headers) {
        return r;
    }
    if op != "$upgrade" {
        return error(StatusCode::NOT_FOUND, "not-supported", &format!("Unsupported operation: POST Agent/{op}"));
    }
    match parameters_body(&body) {
        Ok(params) => ops::bulk_upgrade(&app, &pairs, params).await,
        Err(r) => r,
    }
}

/// `GET Agent/<id>/$status`, `GET Agent/<id>/$upgrade`.
pub async fn instance_op(State(app): State<AppState>, headers: HeaderMap, Path((id, op)): Path<(String, String)>, Query(pairs): Pairs) -> Response {
    if let Err(r) = require_admin(&app, &headers) {
        return r;
    }
    instance_op_with(&app, &id, &op, &pairs, HashMap::new()).await
}

/// `POST Agent/<id>/$upgrade`.
pub async fn post_instance_op(State(app): State<AppState>, headers: HeaderMap, Path((id, op)): Path<(String, String)>, Query(pairs): Pairs, body: String) -> Response {
    if let Err(r) = require_admin(&app, &headers) {
        return r;
    }
    match parameters_body(&body) {
        Ok(params) => instance_op_with(&app, &id, &op, &pairs, params).await,
        Err(r) => r,
    }
}

async fn instance_op_with(app: &AppState, id: &str, op: &str, pairs: &[(String, String)], body: HashMap<String, Value>) -> Response {
    let row = match find(app, id) {
        Ok(row) => row,
        Err(r) => return r,
    };
    match op {
        "$status" => fhir(StatusCode::OK, ops::status_parameters(app, &row.id)),
        "$upgrade" => ops::single_upgrade(app, &row, pairs, body).await,
        _ => error(StatusCode::NOT_FOUND, "not-supported", &format!("Unsupported operation: {op}")),
    }
}

fn find(app: &AppState, id: &str) -> Result<AgentRow, Response> {
    match app.store.agent(id) {
        Ok(Some(row)) => Ok(row),
        Ok(None) => Err(not_found()),
        Err(e) => Err(store_error(e)),
    }
}

/// The `parameter` entries of a `Parameters` body, by name (an empty body has none).
fn parameters_body(body: &str) -> Result<HashMap<String, Value>, Response> {
    if body.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let v: Value = serde_json::from_str(body).map_err(|e| bad_request(&format!("Invalid JSON: {e}")))?;
    if v["resourceType"] != "Parameters" {
        return Err(bad_request("Expected a Parameters resource"));
    }
    let mut out = HashMap::new();
    for p in v["parameter"].as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else { return Err(bad_request("Parameter without a name")) };
        let value = ["valueString", "valueInteger", "valueBoolean", "valueCode"].iter().find_map(|k| p.get(*k)).cloned();
        out.insert(name.to_string(), value.unwrap_or(Value::Null));
    }
    Ok(out)
}
