//! Agents changed and taken back over REST (admin only): `PUT Agent/<id>` (name, identifier,
//! status; `off` closes its sockets and refuses its connects), `DELETE Agent/<id>` (its sockets
//! close on whichever node holds them, its credentials end, a later read answers 410), and
//! `POST Agent/<id>/$rotate-secret` (new credentials; the old ones stop at once). Each change is
//! written with its revocation in one transaction and announced to every node.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::app::AppState;
use super::audit;
use super::outcome::{all_ok, bad_request, error, fhir, not_found, store_error, ApiError};
use crate::fleet::lease::{Lease, AGENT_IDENTIFIERS_WAIT};
use crate::model::access::Role;
use crate::model::agent::{fits_text, AgentRow, MAX_TEXT};
use crate::model::audit::Ref;
use crate::model::revocation::{AGENT_REMOVED, AGENT_ROTATED, AGENT_SWITCHED_OFF};
use crate::store::lifecycle::Found;
use crate::store::revocations::revocation;

/// The agent, or 404 for an unknown id and 410 for a removed one.
pub async fn present(app: &AppState, id: &str) -> Result<AgentRow, ApiError> {
    match app.store.find_agent(id).await.map_err(store_error)? {
        Found::Here(row) => {
            audit::entities([agent_ref(&row)]);
            Ok(row)
        }
        Found::Removed { name, at } => Err(gone(id, &name, &at)),
        Found::Unknown => Err(not_found()),
    }
}

/// An agent as an audit event's entity.
pub fn agent_ref(row: &AgentRow) -> Ref {
    Ref { reference: format!("Agent/{}", row.id), display: Some(row.name.clone()) }
}

fn gone(id: &str, name: &str, at: &str) -> ApiError {
    error(StatusCode::GONE, "deleted", format!("Agent/{id} ({name}) was removed at {at}"))
}

/// `DELETE Agent/<id>`.
pub async fn delete(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let mut r = revocation(AGENT_REMOVED);
    let also = audit::in_transaction("Agent removed: its socket closed, its credentials revoked");
    match app.store.remove_agent(&id, &mut r, also).await.map_err(store_error)? {
        Found::Here(row) => {
            audit::entities([agent_ref(&row)]);
            app.revocations.announce(&r).await;
            tracing::info!(agent_id = row.id, name = row.name, "agent removed");
            Ok(fhir(StatusCode::OK, all_ok()))
        }
        Found::Removed { name, at } => Err(gone(&id, &name, &at)),
        Found::Unknown => Err(not_found()),
    }
}

/// `PUT Agent/<id>`: a whole `Agent` resource; `name`, `identifier` and `status` are kept.
pub async fn update(State(app): State<AppState>, Path(id): Path<String>, body: String) -> Result<Response, ApiError> {
    let v = crate::params::json_body(&body)?;
    let mut row = present(&app, &id).await?;
    let (name, status, identifiers) = agent_fields(&v)?;
    if v.get("id").is_some_and(|given| given != id.as_str()) {
        return Err(bad_request(format!("The resource's id must be the one in the URL ({id})")));
    }
    let switched_off = status == "off" && row.status != "off";
    let mut r = revocation(AGENT_SWITCHED_OFF);
    r.agents.push(id.clone());
    let lease = identifiers_lease(&app, &identifiers).await?;
    let updated = async {
        // What the agent has needs no check: as read under the lease, not before it.
        let has = match lease {
            Some(_) => present(&app, &id).await?.identifiers,
            None => Value::Null,
        };
        identifiers_free(&app, &identifiers, &has, Some(&id)).await?;
        (row.name, row.status, row.identifiers) = (name, status, identifiers);
        let also = audit::in_transaction(&format!("Agent updated: name {:?}, status {}", row.name, row.status));
        let fence = lease.as_ref().map(Lease::fence);
        app.store.update_agent(&mut row, switched_off.then_some(&r), also, fence).await.map_err(identifiers_write_error)
    }
    .await;
    release(lease).await;
    if !updated? {
        return Err(present(&app, &id).await.err().unwrap_or_else(not_found));
    }
    if switched_off {
        app.revocations.announce(&r).await;
    }
    Ok(fhir(StatusCode::OK, row.to_fhir()))
}

/// The `name`, `status` and `identifier` of an `Agent` resource, checked.
pub fn agent_fields(v: &Value) -> Result<(String, String, Value), ApiError> {
    if v["resourceType"] != "Agent" {
        return Err(bad_request("Expected resourceType 'Agent'"));
    }
    // What this server keeps, and what it answers with (a resource read may be written back);
    // anything else (Medplum's `channel`, `setting`, `device`, …) would be dropped unsaid.
    let kept = ["resourceType", "id", "meta", "name", "status", "identifier"];
    if let Some(field) = v.as_object().into_iter().flatten().map(|(k, _)| k).find(|k| !kept.contains(&k.as_str())) {
        return Err(bad_request(format!(
            "Agent field '{}' is not kept by this server: remove it (an Agent here has name, status and identifier; an agent's settings are its own configuration file)",
            crate::limits::throttle::shown(field)
        )));
    }
    if v.get("name").is_some_and(|n| !n.is_string() && !n.is_null()) {
        return Err(bad_request("Invalid name: expected text"));
    }
    let Some(name) = v["name"].as_str().filter(|n| !n.trim().is_empty()) else {
        return Err(bad_request("Missing required property: name"));
    };
    if !fits_text(name.trim()) {
        return Err(bad_request(format!(
            "Invalid name: at most {MAX_TEXT} characters, without control or invisible characters"
        )));
    }
    // A field given with the wrong type is refused, never read as left out (`"status": ["off"]`
    // would have switched an agent that was off back on).
    let wrong = |field: &str, expected: &str| bad_request(format!("Invalid {field}: expected {expected}"));
    if v.get("id").is_some_and(|id| !id.is_string()) {
        return Err(wrong("id", "text"));
    }
    if v.get("meta").is_some_and(|m| !m.is_object()) {
        return Err(wrong("meta", "an object"));
    }
    let status = match v.get("status") {
        None => "active",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(wrong("status", "active, error or off, as text")),
    };
    if !matches!(status, "active" | "error" | "off") {
        let status = crate::limits::throttle::shown(status);
        return Err(bad_request(format!("Invalid status '{status}': expected active, error or off")));
    }
    let identifiers = v.get("identifier").cloned().unwrap_or(json!([]));
    // Each exactly {system, value}, both text (system optional): what the store keeps and searches.
    let pair = |i: &Value| {
        i.as_object().is_some_and(|o| {
            o.iter().all(|(k, v)| matches!(k.as_str(), "system" | "value") && v.is_string()) && o.contains_key("value")
        })
    };
    let Some(list) = identifiers.as_array().filter(|a| a.iter().all(pair)) else {
        return Err(bad_request("Invalid identifier: expected an array of {system, value}, both text, nothing else"));
    };
    if list.len() > MAX_IDENTIFIERS {
        return Err(bad_request(format!(
            "Too many identifiers: {} given, an Agent has at most {MAX_IDENTIFIERS}",
            list.len()
        )));
    }
    let text = |i: &Value, key: &str| i[key].as_str().unwrap_or_default().to_string();
    for (n, i) in list.iter().enumerate() {
        let (system, value) = (text(i, "system"), text(i, "value"));
        if !fits_text(&system) || !fits_text(&value) {
            return Err(bad_request(format!(
                "Identifier {n} is invalid: system and value have at most {MAX_TEXT} characters each, without control or invisible characters"
            )));
        }
        if let Some(why) = crate::model::agent::unsearchable_identifier(&system, &value) {
            return Err(bad_request(format!("Identifier {n} is invalid: {why}")));
        }
        if list[..n].iter().any(|j| text(j, "system") == system && text(j, "value") == value) {
            return Err(bad_request(format!("Identifier {system}|{value} is given twice")));
        }
    }
    Ok((name.trim().to_string(), status.to_string(), identifiers))
}

/// Refuses an identifier that an agent other than `except` has (409): identifiers are unique, so
/// that a search by one finds one agent (`$push?identifier=…` goes to exactly one). Asked before
/// the write, as `agent-server agent add` does. Only `identifiers` not in `kept` (what the agent
/// has now) are asked: a change to an agent is never blocked by a clash it already had.
pub async fn identifiers_free(
    app: &AppState,
    identifiers: &Value,
    kept: &Value,
    except: Option<&str>,
) -> Result<(), ApiError> {
    let pair = |i: &Value| {
        let system = i["system"].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        (system, i["value"].as_str().unwrap_or_default().to_string())
    };
    let had: Vec<_> = kept.as_array().into_iter().flatten().map(pair).collect();
    let new: Vec<_> = identifiers.as_array().into_iter().flatten().map(pair).filter(|p| !had.contains(p)).collect();
    match app.store.identifier_clash(&new, except).await.map_err(store_error)? {
        Some((holder, given)) => Err(error(
            StatusCode::CONFLICT,
            "duplicate",
            format!("Identifier {given}: Agent/{holder} has it already: identifiers are unique"),
        )),
        None => Ok(()),
    }
}

/// The store's lease on giving agents identifiers ([`Lease::for_identifiers`]), when
/// `identifiers` has any: held from the check ([`identifiers_free`]) to the end of the write, so
/// that two writes at once cannot both pass the check; 503 when another write held it for the
/// whole wait.
pub async fn identifiers_lease(app: &AppState, identifiers: &Value) -> Result<Option<Lease>, ApiError> {
    if identifiers.as_array().is_none_or(Vec::is_empty) {
        return Ok(None);
    }
    match Lease::for_identifiers(app.store.clone(), &app.node).await.map_err(store_error)? {
        Some(lease) => Ok(Some(lease)),
        None => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            format!("Another write of agent identifiers held them for {AGENT_IDENTIFIERS_WAIT:?}: try again"),
        )),
    }
}

/// A write of identifiers that failed: 503 either way, saying so when the lease was lost.
pub fn identifiers_write_error(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::LeaseLost(_) => {
            tracing::warn!("{e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "The store was too slow to write the agent while its identifiers were checked: nothing was written; try again",
            )
        }
        e => store_error(e),
    }
}

/// Gives the lease of [`identifiers_lease`] back, if one was taken.
pub async fn release(lease: Option<Lease>) {
    if let Some(lease) = lease {
        lease.release().await;
    }
}

/// The most identifiers an `Agent` has: a search by identifier looks at each.
pub const MAX_IDENTIFIERS: usize = 20;

/// `POST Agent/<id>/$rotate-secret`: the agent's new client id and secret, as `Parameters`.
pub async fn rotate(app: &AppState, id: &str) -> Result<Response, ApiError> {
    let row = present(app, id).await?;
    let (client, secret) = rotate_agent(app, &row).await?;
    let p = |name: &str, value: &str| json!({"name": name, "valueString": value});
    let body = json!({"resourceType": "Parameters", "parameter": [
        p("agent_id", &row.id), p("client_id", &client), p("client_secret", &secret)]});
    Ok(fhir(StatusCode::OK, body))
}

/// New credentials for an agent (made when it had none); the client id and secret.
async fn rotate_agent(app: &AppState, row: &AgentRow) -> Result<(String, String), ApiError> {
    let existing = app.store.agent_clients(&row.id).await.map_err(store_error)?;
    let Some(client) = existing.first() else {
        let (client, secret) =
            app.store.create_client(Role::Agent, Some(&row.id), &row.name).await.map_err(store_error)?;
        return Ok((client.id, secret));
    };
    let mut r = revocation(AGENT_ROTATED);
    let also = audit::in_transaction("Agent credentials replaced: the old secret and its tokens revoked");
    let rotated = app.store.rotate_client(&client.id, &mut r, also).await.map_err(store_error)?;
    let (client, secret) = rotated.ok_or_else(not_found)?;
    app.revocations.announce(&r).await;
    Ok((client.id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_few_short_and_not_repeated() {
        let agent = |ids: Value| json!({"resourceType": "Agent", "name": "a", "identifier": ids});
        let id = |v: String| json!({"system": "urn:s", "value": v});
        let ok: Vec<Value> = (0..MAX_IDENTIFIERS).map(|n| id(n.to_string())).collect();
        assert_eq!(agent_fields(&agent(json!(ok))).unwrap().2, json!(ok));

        let refused = |ids: Value| format!("{:?}", agent_fields(&agent(ids)).unwrap_err());
        let many: Vec<Value> = (0..=MAX_IDENTIFIERS).map(|n| id(n.to_string())).collect();
        assert!(refused(json!(many)).contains("Too many identifiers: 21 given, an Agent has at most 20"));
        assert!(refused(json!([id("x".repeat(257))])).contains("Identifier 0 is invalid"));
        assert!(refused(json!([id("a\u{0}b".into())])).contains("without control or invisible characters"));
        assert!(refused(json!([{"system": "urn:s|x", "value": "v"}]))
            .contains("Identifier 0 is invalid: a system may not hold '|' or ',' (a search splits on them)"));
        // Found by an attacker's probe: stored as given, a value with a trailing space was found
        // by the search for the one without it (a search trims), another agent's.
        for (system, value) in [("urn:s", "clinic-7 "), ("urn:s", " clinic-7"), (" urn:s", "clinic-7")] {
            assert!(refused(json!([{"system": system, "value": value}]))
                .contains("Identifier 0 is invalid: a system or value may not begin or end with spaces"));
        }
        assert!(refused(json!([id("a".into()), id("b,c".into())]))
            .contains("Identifier 1 is invalid: a value may not hold ',' (a search splits lists on it)"));
        assert_eq!(
            agent_fields(&agent(json!([id("v|1".into())]))).unwrap().2,
            json!([id("v|1".into())]),
            "a value may hold '|'"
        );
        assert!(refused(json!([id("a".into()), id("b".into()), id("a".into())])).contains("urn:s|a is given twice"));
        assert!(refused(json!([{"system": "urn:s"}])).contains("expected an array of {system, value}"));
        assert!(refused(json!([{"system": {"x": 1}, "value": "v"}])).contains("both text, nothing else"));
        assert!(
            refused(json!([{"system": "urn:s", "value": "v", "junk": "x".repeat(100_000)}])).contains("nothing else")
        );
        assert_eq!(agent_fields(&agent(json!([{"value": "v"}]))).unwrap().2, json!([{"value": "v"}]));
    }

    #[test]
    fn an_agent_read_is_written_back_and_a_field_not_kept_is_refused() {
        let row = AgentRow {
            id: "a1".into(),
            name: "Lab".into(),
            status: "active".into(),
            identifiers: json!([{"system": "urn:s", "value": "v"}]),
            last_updated: "2026-12-07T00:00:00Z".into(),
        };
        let (name, status, identifiers) = agent_fields(&row.to_fhir()).unwrap();
        assert_eq!((name.as_str(), status.as_str(), identifiers), ("Lab", "active", row.identifiers.clone()));
        for (field, value, said) in [
            ("status", json!(["off"]), "Invalid status: expected active, error or off, as text"),
            ("status", json!(null), "Invalid status"),
            ("status", json!(false), "Invalid status"),
            ("meta", json!("junk"), "Invalid meta: expected an object"),
            ("id", json!(5), "Invalid id: expected text"),
            ("name", json!(["Lab"]), "Invalid name: expected text"),
            (
                "status",
                json!("x".repeat(100_000)),
                "Invalid status 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'",
            ),
        ] {
            let mut v = row.to_fhir();
            v[field] = value;
            assert!(format!("{:?}", agent_fields(&v).unwrap_err()).contains(said), "{field}");
        }
        for field in ["channel", "setting", "device", "extension", "text"] {
            let mut v = row.to_fhir();
            v[field] = json!([]);
            let said = format!("{:?}", agent_fields(&v).unwrap_err());
            assert!(said.contains(&format!("Agent field '{field}' is not kept by this server")), "{said}");
        }
    }
}
