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
pub fn fhir(status: StatusCode, body: impl serde::Serialize) -> Response {
    // to_vec writes straight into the buffer; Display (to_string) goes through fmt and is several
    // times slower on a bulk answer of a hundred agents.
    let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
    (status, [(header::CONTENT_TYPE, "application/fhir+json")], bytes).into_response()
}

pub fn outcome_json(severity: &str, code: &str, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "details": {"text": text}}]})
}

/// A failed request: its HTTP status and the `OperationOutcome` that says why.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    text: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        fhir(self.status, outcome_json("error", self.code, &self.text))
    }
}

pub fn error(status: StatusCode, code: &'static str, text: impl Into<String>) -> ApiError {
    ApiError { status, code, text: text.into() }
}

pub fn bad_request(text: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, "invalid", text)
}

pub fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "not-found", "Not found")
}

pub fn store_error(e: StoreError) -> ApiError {
    tracing::error!("{e}");
    error(StatusCode::SERVICE_UNAVAILABLE, "transient", "Storage unavailable, try again")
}

/// Only administrators call the REST API; an agent's own credentials get 403.
pub fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match auth::bearer_client(app, headers) {
        Some(c) if c.admin => Ok(()),
        Some(_) => {
            Err(error(StatusCode::FORBIDDEN, "forbidden", "Forbidden: agent credentials cannot call the REST API"))
        }
        None => Err(error(StatusCode::UNAUTHORIZED, "login", "Unauthorized: a valid bearer token is required")),
    }
}

pub fn invalid_value(value: &str, ty: &str, name: &str) -> ApiError {
    bad_request(format!("Invalid value '{value}' provided for {ty} parameter '{name}'"))
}

/// An `Agent` search from query pairs. Pairs named in `op_params` are left for the operation;
/// any other unknown name is an error, so that a typo never widens a bulk operation to the fleet.
pub fn parse_search(pairs: &[(String, String)], op_params: &[&str], max_count: usize) -> Result<AgentQuery, ApiError> {
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
            k => return Err(bad_request(format!("Unknown search parameter: {k}"))),
        }
    }
    if q.count > max_count {
        return Err(bad_request(format!("'_count' of {} is greater than max of {max_count}", q.count)));
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

/// `GET Agent?…`: a searchset.
pub async fn search(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    let q = parse_search(&pairs, &[], 1000)?;
    let (rows, total) = app.store.search(&q).map_err(store_error)?;
    let entries = rows.iter().map(|r| json!({"fullUrl": format!("Agent/{}", r.id), "resource": r.to_fhir()})).collect();
    Ok(fhir(StatusCode::OK, bundle("searchset", entries, Some(total))))
}

/// `POST Agent`: create from an `Agent` resource (`name` required).
pub async fn create(State(app): State<AppState>, headers: HeaderMap, body: String) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    let v: Value = serde_json::from_str(&body).map_err(|e| bad_request(format!("Invalid JSON: {e}")))?;
    if v["resourceType"] != "Agent" {
        return Err(bad_request("Expected resourceType 'Agent'"));
    }
    let Some(name) = v["name"].as_str().filter(|n| !n.trim().is_empty()) else {
        return Err(bad_request("Missing required property: name"));
    };
    let status = v["status"].as_str().unwrap_or("active");
    if !matches!(status, "active" | "error" | "off") {
        return Err(bad_request(format!("Invalid status '{status}': expected active, error or off")));
    }
    let identifiers = v.get("identifier").cloned().unwrap_or(json!([]));
    if !identifiers.as_array().is_some_and(|a| a.iter().all(|i| i["value"].is_string())) {
        return Err(bad_request("Invalid identifier: expected an array of {system, value}"));
    }
    let row = app.store.create_agent(name.trim(), status, &identifiers).map_err(store_error)?;
    Ok(fhir(StatusCode::CREATED, row.to_fhir()))
}

/// `GET Agent/<id>`, and `GET Agent/$bulk-status` / `GET Agent/$upgrade`, which share the path.
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    match id.as_str() {
        "$bulk-status" => ops::bulk_status(&app, &pairs),
        "$upgrade" => ops::bulk_upgrade(&app, &pairs, HashMap::new()).await,
        op if op.starts_with('$') => Err(unsupported(op)),
        _ => Ok(fhir(StatusCode::OK, find(&app, &id)?.to_fhir())),
    }
}

/// `POST Agent/$upgrade` (search in the query, parameters in a `Parameters` body).
pub async fn post_type_op(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(op): Path<String>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    if op != "$upgrade" {
        return Err(unsupported(&op));
    }
    ops::bulk_upgrade(&app, &pairs, parameters_body(&body)?).await
}

/// `GET Agent/<id>/$status`, `GET Agent/<id>/$upgrade`.
pub async fn instance_op(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    instance_op_with(&app, &id, &op, &pairs, HashMap::new()).await
}

/// `POST Agent/<id>/$upgrade`.
pub async fn post_instance_op(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path((id, op)): Path<(String, String)>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    instance_op_with(&app, &id, &op, &pairs, parameters_body(&body)?).await
}

async fn instance_op_with(
    app: &AppState,
    id: &str,
    op: &str,
    pairs: &[(String, String)],
    body: HashMap<String, Value>,
) -> Result<Response, ApiError> {
    let row = find(app, id)?;
    match op {
        "$status" => Ok(fhir(StatusCode::OK, ops::status_parameters(app, &row.id))),
        "$upgrade" => ops::single_upgrade(app, &row, pairs, body).await,
        _ => Err(unsupported(op)),
    }
}

fn unsupported(op: &str) -> ApiError {
    error(StatusCode::NOT_FOUND, "not-supported", format!("Unsupported operation: {op}"))
}

fn find(app: &AppState, id: &str) -> Result<AgentRow, ApiError> {
    app.store.agent(id).map_err(store_error)?.ok_or_else(not_found)
}

/// The `parameter` entries of a `Parameters` body, by name (an empty body has none).
fn parameters_body(body: &str) -> Result<HashMap<String, Value>, ApiError> {
    if body.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let v: Value = serde_json::from_str(body).map_err(|e| bad_request(format!("Invalid JSON: {e}")))?;
    if v["resourceType"] != "Parameters" {
        return Err(bad_request("Expected a Parameters resource"));
    }
    let mut out = HashMap::new();
    for p in v["parameter"].as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else { return Err(bad_request("Parameter without a name")) };
        let value =
            ["valueString", "valueInteger", "valueBoolean", "valueCode"].iter().find_map(|k| p.get(*k)).cloned();
        out.insert(name.to_string(), value.unwrap_or(Value::Null));
    }
    Ok(out)
}
