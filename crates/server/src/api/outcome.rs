//! How the REST API answers: FHIR JSON bodies, `OperationOutcome`s, and the [`ApiError`] every
//! handler returns, with the HTTP status that goes with each kind of failure. A leaf under the
//! handlers ([`super::fhir`], [`super::ops`], [`super::relay`], the rollout API).

use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::conn::hub::StatusError;
use crate::params::ParamError;
use crate::store::StoreError;

pub type Pairs = Query<Vec<(String, String)>>;

/// A FHIR JSON answer.
pub fn fhir(status: StatusCode, body: impl serde::Serialize) -> Response {
    fhir_sized(status, body, 0)
}

/// As [`fhir`], written into a buffer of about `size` bytes from the start (not grown and copied
/// as it fills).
pub fn fhir_sized(status: StatusCode, body: impl serde::Serialize, size: usize) -> Response {
    // Written straight into the buffer; Display (to_string) goes through fmt and is several times
    // slower on a bulk answer of a hundred agents.
    let mut bytes = Vec::with_capacity(size);
    serde_json::to_writer(&mut bytes, &body).expect("a JSON value serializes");
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

impl ApiError {
    /// What the `OperationOutcome` will say.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut answer = fhir(self.status, outcome_json("error", self.code, &self.text));
        answer.extensions_mut().insert(Said(self.text));
        answer
    }
}

/// What a refused or failed call was told (its `OperationOutcome`'s text), kept with the answer
/// for the call's audit event.
#[derive(Clone, Debug)]
pub struct Said(pub String);

/// A FHIR answer of one agent's result ([`fhir`]); when it failed, what its `OperationOutcome`
/// says is kept for the call's audit event, as an [`ApiError`]'s is.
pub fn fhir_result(status: StatusCode, body: Value) -> Response {
    let said = body["issue"][0]["details"]["text"].as_str().filter(|_| !status.is_success()).map(str::to_owned);
    let mut answer = fhir(status, &body);
    if let Some(said) = said {
        answer.extensions_mut().insert(Said(said));
    }
    answer
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

/// A status that cannot be read now (the store or the cluster bus is down): 503, never a guess.
pub fn status_error(e: StatusError) -> ApiError {
    tracing::error!("{e}");
    match e {
        StatusError::Store(_) => error(StatusCode::SERVICE_UNAVAILABLE, "transient", "Storage unavailable, try again"),
        StatusError::Bus(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "transient", "Cluster bus unavailable, try again")
        }
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        bad_request(e.0)
    }
}

/// The `OperationOutcome` of a success, as Medplum answers it (`id: ok`).
pub fn all_ok() -> Value {
    let mut ok = outcome_json("information", "informational", "All OK");
    ok["id"] = json!("ok");
    ok
}
