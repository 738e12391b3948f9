//! The operations that relay one request to agents and answer with what they said:
//! `$reload-config`, `$fetch-logs` and `$stats` (one agent, or every agent a search finds), and
//! `$push` (one agent: an `agent:transmit:request`). A reply is an agent's answer, its
//! `agent:error` text, `Agent not connected` or `Timeout`, never silence.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::app::AppState;
use super::ops::{bulk_answer, bulk_targets, MAX_BULK};
use super::outcome::{all_ok, bad_request, error, fhir, fhir_result, outcome_json, ApiError};
use crate::conn::hub::RequestError;
use crate::model::agent::AgentRow;
use crate::params::{bool_param, int_param, merge_params, string_param, Params, MAX_TIMEOUT_MS};
use edge_agent_wire::Message;

/// How long a relayed request waits for the agent by default.
pub const DEFAULT_RELAY_TIMEOUT_MS: u64 = 10_000;
/// `$push` waits as Medplum's does: 10 s by default, at most 60 s.
const DEFAULT_PUSH_TIMEOUT_MS: u64 = 10_000;
const MAX_PUSH_TIMEOUT_MS: u64 = 60_000;

/// A request that asks an agent for something and answers with its reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    ReloadConfig,
    FetchLogs,
    Stats,
}

impl Op {
    /// The operation named in a URL (`reload-config`, `fetch-logs`, `stats`).
    pub fn parse(name: &str) -> Op {
        match name {
            "reload-config" => Op::ReloadConfig,
            "fetch-logs" => Op::FetchLogs,
            _ => Op::Stats,
        }
    }

    /// The parameters this operation takes besides the search.
    fn params(self) -> &'static [&'static str] {
        match self {
            Op::FetchLogs => &["limit", "timeout"],
            Op::ReloadConfig | Op::Stats => &["timeout"],
        }
    }

    fn request(self, params: &Params) -> Result<Message, ApiError> {
        Ok(match self {
            Op::ReloadConfig => Message::ReloadConfigRequest {},
            Op::FetchLogs => {
                let limit = int_param(params, "limit")?.map(|l| l as usize);
                Message::LogsRequest { limit }
            }
            Op::Stats => Message::StatsRequest {},
        })
    }

    /// The FHIR result of an agent's successful reply, or None when the reply is of another kind.
    fn result(self, reply: Message) -> Option<Value> {
        let text = |name: &str, value: String| json!({"resourceType": "Parameters", "parameter": [{"name": name, "valueString": value}]});
        match (self, reply) {
            (Op::ReloadConfig, Message::ReloadConfigResponse { .. }) => Some(all_ok()),
            (Op::FetchLogs, Message::LogsResponse { logs, .. }) => {
                let lines: Vec<String> = logs.iter().map(Value::to_string).collect();
                Some(text("logs", lines.join("\n")))
            }
            (Op::Stats, Message::StatsResponse { stats, .. }) => Some(text("stats", stats.to_string())),
            _ => None,
        }
    }
}

fn timeout(params: &Params) -> Result<Duration, ApiError> {
    let ms = int_param(params, "timeout")?.unwrap_or(DEFAULT_RELAY_TIMEOUT_MS);
    Ok(Duration::from_millis(ms.min(MAX_TIMEOUT_MS)))
}

/// The request type an agent may ignore (Medplum's agent does not implement it).
const STATS: &str = "agent:stats";

/// The answer to `$stats` for an agent that left the last one on its socket unanswered.
pub const NO_STATS: &str = "Agent does not answer agent:stats: it left the last $stats unanswered on this \
     connection (Medplum's agent does not implement it); it is asked again once it reconnects";

/// Asks one agent; its answer as an HTTP status and a FHIR result. An agent that left a `$stats`
/// unanswered on the socket it still has is not asked again: the answer is at once.
async fn ask(app: &AppState, agent_id: &str, op: Op, msg: Message, wait: Duration) -> (StatusCode, Value) {
    let failed = |text: &str| (StatusCode::BAD_REQUEST, outcome_json("error", "invalid", text));
    let socket = if op == Op::Stats { app.hub.socket_of(agent_id).await } else { None };
    if socket.as_deref().is_some_and(|s| app.hub.ignores(agent_id, STATS, s)) {
        return failed(NO_STATS);
    }
    match app.hub.request(agent_id, msg, wait).await {
        Ok(env) => match env.msg {
            Message::Error { body } => failed(&body),
            reply => match op.result(reply.clone()) {
                Some(result) => (StatusCode::OK, result),
                None => failed(&format!("Unexpected response from agent: {}", reply_type(&reply))),
            },
        },
        Err(e @ RequestError::Unavailable(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, outcome_json("error", "transient", &e.to_string()))
        }
        Err(e) => {
            if let (RequestError::Timeout, Some(socket)) = (&e, socket) {
                app.hub.note_ignored(agent_id, STATS, socket);
            }
            failed(&e.to_string())
        }
    }
}

fn reply_type(msg: &Message) -> String {
    serde_json::to_value(msg).ok().and_then(|v| v["type"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// `Agent/<id>/$<op>`: the agent's answer, or 400 with why there is none.
pub async fn single(
    app: &AppState,
    op: Op,
    row: &AgentRow,
    pairs: &[(String, String)],
    body: Params,
) -> Result<Response, ApiError> {
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !op.params().contains(&k.as_str())) {
        return Err(bad_request(format!("Unknown parameter: {k}")));
    }
    let params = merge_params(pairs, op.params(), body)?;
    let (msg, wait) = (op.request(&params)?, timeout(&params)?);
    let (status, result) = ask(app, &row.id, op, msg, wait).await;
    Ok(fhir_result(status, result))
}

/// `Agent/$<op>?<search>`: every matched agent asked at once; a collection Bundle of their answers.
pub async fn bulk(app: &AppState, op: Op, pairs: &[(String, String)], body: Params) -> Result<Response, ApiError> {
    let params = merge_params(pairs, op.params(), body)?;
    let (msg, wait) = (op.request(&params)?, timeout(&params)?);
    let rows = bulk_targets(app, pairs, op.params(), MAX_BULK, true).await?;
    let answers = join_all(rows.iter().map(|r| ask(app, &r.id, op, msg.clone(), wait))).await;
    let results: Vec<Value> = answers.into_iter().map(|(_, result)| result).collect();
    Ok(bulk_answer(&rows, &results))
}

/// The policy of an agent's answer relayed by `$push`: shown, never run as this server's page.
const SANDBOX: HeaderValue = HeaderValue::from_static("sandbox; default-src 'none'");

pub const PUSH_PARAMS: &[&str] = &["body", "contentType", "destination", "waitForResponse", "waitTimeout"];

/// `POST Agent/<id>/$push`: an `agent:transmit:request` to the destination's address. With
/// `waitForResponse`, the agent's `agent:transmit:response` body is the answer (with its content
/// type), and an `agent:error` a 400 that carries its text.
pub async fn push(app: &AppState, row: &AgentRow, params: Params) -> Result<Response, ApiError> {
    let required =
        |name: &str| string_param(&params, name).ok_or_else(|| bad_request(format!("Missing {name} parameter")));
    let (body, content_type, destination) = (required("body")?, required("contentType")?, required("destination")?);
    if destination.starts_with("Device/") || destination.starts_with("Device?") {
        return Err(bad_request(format!(
            "Destination '{destination}': this server keeps no Device resources; give the remote address itself, \
             for example mllp://10.0.0.5:2575"
        )));
    }
    let wait_ms = int_param(&params, "waitTimeout")?.unwrap_or(DEFAULT_PUSH_TIMEOUT_MS);
    if wait_ms > MAX_PUSH_TIMEOUT_MS {
        return Err(bad_request(format!("Invalid wait timeout: {wait_ms} ms is more than {MAX_PUSH_TIMEOUT_MS}")));
    }
    let msg = Message::TransmitRequest { channel: None, remote: destination, content_type, body };
    if !bool_param(&params, "waitForResponse")?.unwrap_or(false) {
        return Ok(match app.hub.send(&row.id, msg).await {
            Ok(()) => fhir(StatusCode::OK, all_ok()),
            Err(e @ RequestError::Unavailable(_)) => {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "transient", e.to_string()))
            }
            Err(e) => fhir(StatusCode::BAD_REQUEST, outcome_json("error", "invalid", &e.to_string())),
        });
    }
    let failed = |text: &str| fhir(StatusCode::BAD_REQUEST, outcome_json("error", "invalid", text));
    Ok(match app.hub.request(&row.id, msg, Duration::from_millis(wait_ms)).await {
        Ok(env) => match env.msg {
            Message::TransmitResponse { body, content_type, status_code, .. } => {
                let status = match status_code {
                    Some(code) if code >= 400 => StatusCode::BAD_REQUEST,
                    _ => StatusCode::OK,
                };
                // The agent's body as its destination answered it. Its content type is the agent's
                // word, so it must be a header value, and what it names is never run as this
                // server's page: `sandbox` gives an HTML answer an origin of its own.
                let content_type =
                    if content_type.trim().is_empty() { "application/octet-stream" } else { &content_type };
                let Ok(content_type) = HeaderValue::from_str(content_type) else {
                    let shown = crate::limits::throttle::shown(content_type);
                    return Err(error(
                        StatusCode::BAD_GATEWAY,
                        "invalid",
                        format!("The agent answered with a content type that is no header value: {shown}"),
                    ));
                };
                let headers = [(header::CONTENT_TYPE, content_type), (header::CONTENT_SECURITY_POLICY, SANDBOX)];
                (status, headers, body).into_response()
            }
            Message::Error { body } => failed(&body),
            other => failed(&format!("Unexpected response from agent: {}", reply_type(&other))),
        },
        Err(e @ RequestError::Unavailable(_)) => {
            return Err(error(StatusCode::SERVICE_UNAVAILABLE, "transient", e.to_string()))
        }
        Err(e) => failed(&e.to_string()),
    })
}

/// `POST Agent/$push?identifier=…`: the one agent with that identifier.
pub async fn push_by_search(app: &AppState, pairs: &[(String, String)], body: Params) -> Result<Response, ApiError> {
    if !pairs.iter().any(|(k, _)| k == "identifier" || k == "_id") {
        return Err(bad_request("Must specify agent ID or identifier"));
    }
    let rows = bulk_targets(app, pairs, PUSH_PARAMS, MAX_BULK, true).await?;
    if rows.len() > 1 {
        return Err(bad_request(format!("{} agents match; $push goes to exactly one", rows.len())));
    }
    push(app, &rows[0], merge_params(pairs, PUSH_PARAMS, body)?).await
}
