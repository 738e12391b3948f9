//! `GET /fhir/R4/AuditEvent` (admin only): the audit trail searched by `date` (with prefixes),
//! `agent` (who acted), `entity` (what it acted on), `type`, `subtype` and `outcome`, newest
//! first unless `_sort=date`, paged with `_count` and `_offset` as `Agent` searches are. An
//! unknown parameter is a 400 that names it. The total is counted only when `_total=accurate`
//! asks for it: a page of a long trail is an index read, a count is not.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::app::AppState;
use super::outcome::{bad_request, fhir, store_error, ApiError};
use super::search::{instant_filter, page_within, paging_links, public_base, MAX_PAGE};
use crate::model::audit::AuditQuery;
use crate::params::ParamError;
use crate::proxy::Peer;

const DEFAULT_COUNT: usize = 20;

/// A search from query pairs; whether the total is asked.
pub fn parse(pairs: &[(String, String)]) -> Result<(AuditQuery, bool), ParamError> {
    let mut q = AuditQuery { newest_first: true, count: DEFAULT_COUNT, ..Default::default() };
    let mut total = false;
    let int = |k: &str, v: &str| v.parse::<usize>().map_err(|_| crate::params::invalid_value(v, "integer", k));
    for (key, value) in pairs {
        if value.is_empty() {
            return Err(ParamError(format!("Empty value for search parameter: {key}")));
        }
        match key.as_str() {
            "date" => q.date.push(instant_filter(value, "date")?),
            "agent" => q.agent = Some(reference(value, "ClientApplication")),
            "entity" => q.entity = Some(reference(value, "Agent")),
            "type" => q.kind = Some(value.clone()),
            "subtype" => q.subtype = Some(value.clone()),
            "outcome" if ["0", "4", "8", "12"].contains(&value.as_str()) => q.outcome = Some(value.clone()),
            "outcome" => return Err(crate::params::invalid_value(value, "outcome (0, 4, 8 or 12)", key)),
            "_sort" => {
                q.newest_first = match value.as_str() {
                    "-date" => true,
                    "date" => false,
                    other => return Err(ParamError(format!("Unknown sort key '{other}': expected date or -date"))),
                }
            }
            "_count" => q.count = int(key, value)?,
            "_offset" => q.offset = int(key, value)?,
            "_total" => total = value == "accurate",
            other => {
                let shown = crate::params::quoted(other);
                return Err(ParamError(format!(
                    "Unknown search parameter: {shown} (AuditEvent takes date, agent, entity, type, subtype, outcome, _sort, _count, _offset, _total)"
                )));
            }
        }
    }
    page_within(q.count, MAX_PAGE, q.offset)?;
    Ok((q, total))
}

/// A reference as searched: `Type/id` as given, or a bare id as a `default` one.
fn reference(value: &str, default: &str) -> String {
    match value.contains('/') {
        true => value.to_string(),
        false => format!("{default}/{value}"),
    }
}

/// `GET AuditEvent?…`: a searchset.
pub async fn search(
    State(app): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (q, with_total) = parse(&pairs).map_err(|e| bad_request(e.0))?;
    let (events, total) = app.store.audit_search(&q, with_total).await.map_err(store_error)?;
    let base = public_base(&app, peer, &headers);
    let more = q.count > 0 && events.len() == q.count && total.is_none_or(|t| q.offset + q.count < t);
    let link = paging_links(&format!("{base}fhir/R4/AuditEvent"), &pairs, q.count, q.offset, more);
    let entry: Vec<Value> = events
        .iter()
        .map(|e| json!({"fullUrl": format!("{base}fhir/R4/AuditEvent/{}", e.id), "resource": e.to_fhir(), "search": {"mode": "match"}}))
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "link": link, "entry": entry});
    if let Some(t) = total {
        bundle["total"] = json!(t);
    }
    Ok(fhir(StatusCode::OK, bundle))
}
