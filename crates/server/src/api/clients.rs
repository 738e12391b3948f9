//! Clients over REST (admin only), as FHIR `ClientApplication` resources: searched
//! (`GET ClientApplication` with `role`, `_count`, `_offset`), read, removed (`DELETE`: its secret,
//! tokens and page sessions end on every node within a second), given a new secret
//! (`POST ClientApplication/<id>/$rotate-secret`) or a new role (`POST …/$set-role` with `role`).
//! The same changes as `agent-server client …`, each written with its revocation and its audit
//! event in one transaction. A client's role, and the agent an agent's client acts for, are
//! extensions of the resource.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::app::AppState;
use super::audit;
use super::fhir::parameters_body;
use super::outcome::{bad_request, error, fhir, not_found, store_error, ApiError};
use super::search::{page_within, paging_links, public_base, MAX_PAGE};
use crate::model::access::Role;
use crate::model::agent::Client;
use crate::model::revocation::{CLIENT_REMOVED, CLIENT_ROTATED, ROLE_CHANGED};
use crate::params::{known_params, merge_params, string_param, takes_none};
use crate::proxy::Peer;
use crate::store::revocations::revocation;

/// The extension that holds a client's role (`viewer`, `operator`, `admin`, `agent`).
pub const ROLE_EXTENSION: &str = "urn:edge-agent:role";
/// The extension that names the agent an agent's client acts for.
pub const AGENT_EXTENSION: &str = "urn:edge-agent:agent";
/// Clients in a page when `_count` is not given.
const DEFAULT_COUNT: usize = 100;

/// A client as a FHIR `ClientApplication` (never its secret: only its hash is kept).
pub fn to_fhir(c: &Client) -> Value {
    let mut extension = vec![json!({"url": ROLE_EXTENSION, "valueCode": c.role.name()})];
    if let Some(agent) = &c.agent_id {
        extension.push(json!({"url": AGENT_EXTENSION, "valueReference": {"reference": format!("Agent/{agent}")}}));
    }
    json!({"resourceType": "ClientApplication", "id": c.id, "name": c.display(), "extension": extension})
}

/// `role` as a search or an operation parameter: the four roles, or a 400 that names them.
fn role(text: &str) -> Result<Role, ApiError> {
    match text {
        "agent" => Ok(Role::Agent),
        other => Role::parse(other).map_err(|e| bad_request(format!("Invalid role: {e} (or agent, to search)"))),
    }
}

/// A `ClientApplication` search as the query string gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSearch {
    pub role: Option<Role>,
    pub count: usize,
    pub offset: usize,
}

/// Reads a `ClientApplication` search: `role`, `_count` (at most [`MAX_PAGE`]) and `_offset`
/// (bounded); any other parameter, or an empty value, is a 400 that names it.
pub fn parse_client_search(pairs: &[(String, String)]) -> Result<ClientSearch, ApiError> {
    let mut q = ClientSearch { role: None, count: DEFAULT_COUNT, offset: 0 };
    let int =
        |k: &str, v: &str| v.parse::<usize>().map_err(|_| bad_request(crate::params::invalid_value(v, "integer", k).0));
    for (key, value) in pairs {
        if value.is_empty() {
            let shown = crate::params::quoted(key);
            return Err(bad_request(format!("Empty value for search parameter: {shown}")));
        }
        match key.as_str() {
            "role" => q.role = Some(role(value)?),
            "_count" => q.count = int(key, value)?,
            "_offset" => q.offset = int(key, value)?,
            other => {
                let shown = crate::params::quoted(other);
                return Err(bad_request(format!(
                    "Unknown search parameter: {shown} (ClientApplication takes role, _count, _offset)"
                )));
            }
        }
    }
    page_within(q.count, MAX_PAGE, q.offset).map_err(|e| bad_request(e.0))?;
    Ok(q)
}

/// `GET ClientApplication?…`: a searchset of clients, by name then id.
pub async fn search(
    State(app): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ClientSearch { role: wanted, count, offset } = parse_client_search(&pairs)?;
    let (clients, total) = app.store.clients_page(wanted, count, offset).await.map_err(store_error)?;
    let base = public_base(&app, peer, &headers);
    let url = format!("{base}fhir/R4/ClientApplication");
    let link = paging_links(&url, &pairs, count, offset, offset + clients.len() < total);
    let entry: Vec<Value> = clients
        .iter()
        .map(|c| json!({"fullUrl": format!("{url}/{}", c.id), "resource": to_fhir(c), "search": {"mode": "match"}}))
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": link, "entry": entry});
    Ok(fhir(StatusCode::OK, bundle))
}

/// The client, or 404.
async fn present(app: &AppState, id: &str) -> Result<Client, ApiError> {
    let c = app.store.client(id).await.map_err(store_error)?.ok_or_else(not_found)?;
    audit::entities([c.reference()]);
    Ok(c)
}

/// `GET ClientApplication/<id>`.
pub async fn read(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(fhir(StatusCode::OK, to_fhir(&present(&app, &id).await?)))
}

/// `DELETE ClientApplication/<id>`: its secret, tokens and page sessions end (an agent's client:
/// its agent's sockets close too, and it cannot connect until given new credentials).
pub async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let c = present(&app, &id).await?;
    let mut r = revocation(CLIENT_REMOVED);
    let also = audit::in_transaction("Client removed: its secret, tokens and sessions ended");
    let removed = app.store.remove_client(&c.id, &mut r, also).await.map_err(store_error)?;
    let c = removed.ok_or_else(not_found)?;
    app.revocations.announce(&r).await;
    tracing::info!(client_id = c.id, name = c.display(), "client removed");
    Ok(fhir(StatusCode::OK, super::outcome::all_ok()))
}

/// `POST ClientApplication/<id>/$rotate-secret` and `$set-role`.
pub async fn op(
    State(app): State<AppState>,
    Path((id, op)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    body: String,
) -> Result<Response, ApiError> {
    let takes: &[&str] = if op == "$set-role" { &["role"] } else { &[] };
    known_params(pairs.iter().map(|(k, _)| k), takes)?;
    let params = merge_params(&pairs, takes, parameters_body(&body)?)?;
    match op.as_str() {
        "$rotate-secret" => {
            takes_none("$rotate-secret", &params)?;
            rotate(&app, &id).await
        }
        "$set-role" => {
            let Some(text) = string_param(&params, "role") else {
                return Err(bad_request("Missing parameter: role (viewer, operator or admin)"));
            };
            set_role(&app, &id, &text).await
        }
        other => {
            let shown = crate::params::quoted(other.trim_start_matches('$'));
            Err(error(StatusCode::NOT_FOUND, "not-supported", format!("Unsupported operation: ${shown}")))
        }
    }
}

/// A new secret: the old one and every token and page session it gave stop at once.
async fn rotate(app: &AppState, id: &str) -> Result<Response, ApiError> {
    let c = present(app, id).await?;
    let mut r = revocation(CLIENT_ROTATED);
    let also = audit::in_transaction("Client secret replaced: the old one and its tokens ended");
    let rotated = app.store.rotate_client(&c.id, &mut r, also).await.map_err(store_error)?;
    let (c, secret) = rotated.ok_or_else(not_found)?;
    app.revocations.announce(&r).await;
    let p = |name: &str, value: &str| json!({"name": name, "valueString": value});
    let body = json!({"resourceType": "Parameters", "parameter": [p("client_id", &c.id), p("client_secret", &secret)]});
    Ok(fhir(StatusCode::OK, body))
}

/// An operator client's new role, in effect on every node at its next request.
async fn set_role(app: &AppState, id: &str, text: &str) -> Result<Response, ApiError> {
    let c = present(app, id).await?;
    let new = Role::parse(text).map_err(|e| bad_request(format!("Invalid role: {e}")))?;
    if c.role == Role::Agent {
        return Err(bad_request(format!("ClientApplication/{id} is an agent's: its role is fixed")));
    }
    if new == c.role {
        // Nothing changes: its tokens and the sockets they opened stay (a revocation would close
        // an admin's sockets speaking as agents). The request is audited as every one is.
        return Ok(fhir(StatusCode::OK, to_fhir(&c)));
    }
    let why = format!("Role changed from {} to {}", c.role.name(), new.name());
    let mut r = revocation(ROLE_CHANGED);
    let changed = app.store.set_role(&c.id, new, &mut r, audit::in_transaction(&why)).await.map_err(store_error)?;
    if !changed {
        return Err(not_found());
    }
    app.revocations.announce(&r).await;
    Ok(fhir(StatusCode::OK, to_fhir(&Client { role: new, ..c })))
}
