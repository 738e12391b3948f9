//! FHIR REST for `Agent` under `/fhir/R4/`: who may call it, read, search, create, and the
//! routing of the operations in [`super::ops`] and [`super::relay`]. Answers are FHIR JSON; every error is an `OperationOutcome`
//! with the right status, never a panic or a 500 for bad input.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::db::{AgentRow, Client, StoreError};
use super::search::{parse_search, public_base, searchset, MAX_PAGE};
use super::{auth, ops, relay, rollout, AppState};

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

/// Errors that axum answers by itself in plain text (a body over the size limit, a wrong method
/// or content type) become `OperationOutcome`s too, so that FHIR clients can read them.
pub async fn plain_errors_as_outcomes(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let mut text = String::from_utf8_lossy(&bytes).trim().to_string();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // axum's default body limit.
        text = "Request body too large: the limit is 2 MiB".into();
    } else if text.is_empty() {
        text = parts.status.canonical_reason().unwrap_or("Error").to_string();
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too-long",
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE => "not-supported",
        s if s.is_server_error() => "exception",
        _ => "invalid",
    };
    let mut answer = fhir(status, outcome_json("error", code, &text));
    for (name, value) in
        parts.headers.iter().filter(|(n, _)| *n != header::CONTENT_TYPE && *n != header::CONTENT_LENGTH)
    {
        answer.headers_mut().insert(name.clone(), value.clone());
    }
    answer
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

/// Only administrators call the REST API; an agent's own credentials get 403, except for reading
/// their own `Agent` ([`read`]).
pub fn require_admin(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    let client = require_client(app, headers)?;
    if !client.admin {
        return Err(forbidden());
    }
    Ok(client)
}

fn require_client(app: &AppState, headers: &HeaderMap) -> Result<Client, ApiError> {
    auth::caller(app, headers).map_err(store_error)?.ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "login",
            "Unauthorized: a valid bearer token or client credentials are required",
        )
    })
}

fn forbidden() -> ApiError {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden: agent credentials may only read their own Agent resource on the REST API",
    )
}

pub fn invalid_value(value: &str, ty: &str, name: &str) -> ApiError {
    bad_request(format!("Invalid value '{value}' provided for {ty} parameter '{name}'"))
}

/// `GET Agent?…`: a searchset.
pub async fn search(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    let q = parse_search(&pairs, &[], MAX_PAGE)?;
    let (rows, total) = app.store.search(&q).map_err(store_error)?;
    let last = |id: &str| app.rollouts.last_result(id).map(|l| ops::last_rollout_json(&l, true));
    Ok(fhir(StatusCode::OK, searchset(&public_base(&app, &headers), &pairs, &q, &rows, total, &last)))
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

/// `GET Agent/<id>` (an admin, or the agent's own credentials), and the type-level operations
/// `GET Agent/$<op>`, which share the path.
pub async fn read(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Response, ApiError> {
    let client = require_client(&app, &headers)?;
    if let Some(op) = id.strip_prefix('$') {
        if !client.admin {
            return Err(forbidden());
        }
        return type_op(&app, op, &pairs, Params::new()).await;
    }
    if !client.admin && client.agent_id.as_deref() != Some(id.as_str()) {
        return Err(forbidden());
    }
    Ok(fhir(StatusCode::OK, find(&app, &id)?.to_fhir()))
}

/// `POST Agent/$<op>` (search in the query, parameters in the body).
pub async fn post_type_op(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(op): Path<String>,
    Query(pairs): Pairs,
    body: String,
) -> Result<Response, ApiError> {
    require_admin(&app, &headers)?;
    let Some(op) = op.strip_prefix('$') else { return Err(not_found()) };
    if op == "upgrade" && rollout::api::wants_async(&headers) {
        return rollout::api::create(&app, &headers, &pairs, parameters_body(&body)?).await;
    }
    type_op(&app, op, &pairs, parameters_body(&body)?).await
}

async fn type_op(app: &AppState, op: &str, pairs: &[(String, String)], body: Params) -> Result<Response, ApiError> {
    match op {
        "bulk-status" => ops::bulk_status(app, pairs),
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
    require_admin(&app, &headers)?;
    instance_op_with(&app, &id, &op, &pairs, Params::new()).await
}

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
    body: Params,
) -> Result<Response, ApiError> {
    let row = find(app, id)?;
    match op.strip_prefix('$').unwrap_or(op) {
        "status" => Ok(fhir(StatusCode::OK, ops::status_parameters(app, &row.id))),
        "upgrade" => ops::single_upgrade(app, &row, pairs, body).await,
        op @ ("reload-config" | "fetch-logs" | "stats") => {
            relay::single(app, relay::Op::parse(op), &row, pairs, body).await
        }
        "push" => relay::push(app, &row, body).await,
        _ => Err(unsupported(op)),
    }
}

fn unsupported(op: &str) -> ApiError {
    let op = op.trim_start_matches('$');
    error(StatusCode::NOT_FOUND, "not-supported", format!("Unsupported operation: ${op}"))
}

fn find(app: &AppState, id: &str) -> Result<AgentRow, ApiError> {
    app.store.agent(id).map_err(store_error)?.ok_or_else(not_found)
}

/// An operation's parameters by name.
pub type Params = HashMap<String, Value>;

/// The parameters of a POST body: a `Parameters` resource (`value[x]` entries), or a plain JSON
/// object of parameters, as Medplum accepts both; an empty body has none.
fn parameters_body(body: &str) -> Result<Params, ApiError> {
    if body.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let v: Value = serde_json::from_str(body).map_err(|e| bad_request(format!("Invalid JSON: {e}")))?;
    let Value::Object(fields) = v else {
        return Err(bad_request("Expected a Parameters resource or a JSON object of parameters"));
    };
    match fields.get("resourceType").and_then(Value::as_str) {
        None => return Ok(fields.into_iter().collect()),
        Some("Parameters") => {}
        Some(other) => return Err(bad_request(format!("Expected a Parameters resource, not {other}"))),
    }
    let mut out = HashMap::new();
    for p in fields.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p["name"].as_str() else { return Err(bad_request("Parameter without a name")) };
        let value = p
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v.clone()))
            .unwrap_or(Value::Null);
        out.insert(name.to_string(), value);
    }
    Ok(out)
}
