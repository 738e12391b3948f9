//! The one table of who may call what ([`RULES`]): every endpoint of the REST API, the page's API
//! and `/metrics`, with the role it needs. [`guard`] enforces it in front of every handler: an
//! endpoint without a rule is refused to everyone (and the role-matrix test, which reads this
//! table, fails), a caller without valid credentials gets 401 and one without the role a 403 whose
//! `OperationOutcome` names the role it lacks. Handlers narrow it further where the table says
//! [`Need::Client`] (an agent reads only its own `Agent`).

use std::borrow::Cow;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::app::AppState;
use super::audit;
use super::outcome::{error, store_error, Said};
use crate::identity::tokens::basic_credentials;
use crate::limits::throttle::{shown, shown_at_most, Throttled};
use crate::model::access::{Need, Role};
use crate::model::agent::Client;
use crate::model::audit::{AuditRecord, Ref, LOGIN};
use crate::proxy::Peer;

/// An endpoint (method, and path template with the operation named) and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub need: Need,
}

const fn rule(method: &'static str, path: &'static str, need: Need) -> Rule {
    Rule { method, path, need }
}

const VIEWER: Need = Need::Role(Role::Viewer);
const OPERATOR: Need = Need::Role(Role::Operator);
const ADMIN: Need = Need::Role(Role::Admin);

/// Every endpoint behind the guard. Operations appear by name; GET and POST alike where both
/// are served.
pub const RULES: &[Rule] = &[
    rule("POST", "/oauth2/revoke", Need::Public),
    rule("GET", "/healthcheck", Need::Public),
    rule("GET", "/metrics", VIEWER),
    rule("GET", "/fhir/R4/Agent", VIEWER),
    rule("POST", "/fhir/R4/Agent", ADMIN),
    rule("GET", "/fhir/R4/Agent/{id}", Need::Client),
    rule("PUT", "/fhir/R4/Agent/{id}", ADMIN),
    rule("DELETE", "/fhir/R4/Agent/{id}", ADMIN),
    rule("GET", "/fhir/R4/Agent/$bulk-status", VIEWER),
    rule("POST", "/fhir/R4/Agent/$bulk-status", VIEWER),
    rule("GET", "/fhir/R4/Agent/$upgrade", OPERATOR),
    rule("POST", "/fhir/R4/Agent/$upgrade", OPERATOR),
    rule("GET", "/fhir/R4/Agent/$reload-config", OPERATOR),
    rule("POST", "/fhir/R4/Agent/$reload-config", OPERATOR),
    rule("GET", "/fhir/R4/Agent/$fetch-logs", OPERATOR),
    rule("POST", "/fhir/R4/Agent/$fetch-logs", OPERATOR),
    rule("GET", "/fhir/R4/Agent/$stats", OPERATOR),
    rule("POST", "/fhir/R4/Agent/$stats", OPERATOR),
    rule("GET", "/fhir/R4/Agent/$push", OPERATOR),
    rule("POST", "/fhir/R4/Agent/$push", OPERATOR),
    rule("GET", "/fhir/R4/Agent/{id}/$status", VIEWER),
    rule("POST", "/fhir/R4/Agent/{id}/$status", VIEWER),
    rule("GET", "/fhir/R4/Agent/{id}/$upgrade", OPERATOR),
    rule("POST", "/fhir/R4/Agent/{id}/$upgrade", OPERATOR),
    rule("GET", "/fhir/R4/Agent/{id}/$reload-config", OPERATOR),
    rule("POST", "/fhir/R4/Agent/{id}/$reload-config", OPERATOR),
    rule("GET", "/fhir/R4/Agent/{id}/$fetch-logs", OPERATOR),
    rule("POST", "/fhir/R4/Agent/{id}/$fetch-logs", OPERATOR),
    rule("GET", "/fhir/R4/Agent/{id}/$stats", OPERATOR),
    rule("POST", "/fhir/R4/Agent/{id}/$stats", OPERATOR),
    rule("GET", "/fhir/R4/Agent/{id}/$push", OPERATOR),
    rule("POST", "/fhir/R4/Agent/{id}/$push", OPERATOR),
    rule("POST", "/fhir/R4/Agent/{id}/$rotate-secret", ADMIN),
    rule("GET", "/fhir/R4/AuditEvent", ADMIN),
    rule("GET", "/fhir/R4/ClientApplication", ADMIN),
    rule("GET", "/fhir/R4/ClientApplication/{id}", ADMIN),
    rule("DELETE", "/fhir/R4/ClientApplication/{id}", ADMIN),
    rule("POST", "/fhir/R4/ClientApplication/{id}/$rotate-secret", ADMIN),
    rule("POST", "/fhir/R4/ClientApplication/{id}/$set-role", ADMIN),
    rule("GET", "/fhir/R4/Policy", VIEWER),
    rule("PUT", "/fhir/R4/Policy", OPERATOR),
    rule("GET", "/fhir/R4/Policy/$status", VIEWER),
    rule("POST", "/fhir/R4/Policy/$suspend", OPERATOR),
    rule("POST", "/fhir/R4/Policy/$resume", OPERATOR),
    rule("POST", "/fhir/R4/Policy/$halt-clear", OPERATOR),
    rule("GET", "/fhir/R4/Rollout", VIEWER),
    rule("GET", "/fhir/R4/Rollout/{id}", VIEWER),
    rule("POST", "/fhir/R4/Rollout/{id}/$pause", OPERATOR),
    rule("POST", "/fhir/R4/Rollout/{id}/$resume", OPERATOR),
    rule("POST", "/fhir/R4/Rollout/{id}/$cancel", OPERATOR),
    rule("GET", "/", Need::Public),
    rule("GET", "/ui/app.js", Need::Public),
    rule("GET", "/ui/app.css", Need::Public),
    rule("GET", "/ui/policy.js", Need::Public),
    rule("POST", "/ui/api/login", Need::Public),
    rule("POST", "/ui/api/logout", Need::Client),
    rule("GET", "/ui/api/session", Need::Client),
    rule("GET", "/ui/api/overview", VIEWER),
    rule("GET", "/ui/api/agents", VIEWER),
    rule("GET", "/ui/api/agents/{id}", VIEWER),
    rule("GET", "/ui/api/agents/{id}/logs", OPERATOR),
    rule("GET", "/ui/api/agents/{id}/stats", OPERATOR),
    rule("POST", "/ui/api/upgrade", OPERATOR),
    rule("GET", "/ui/api/rollouts", VIEWER),
    rule("POST", "/ui/api/rollouts", OPERATOR),
    rule("GET", "/ui/api/rollouts/{id}", VIEWER),
    rule("POST", "/ui/api/rollouts/{id}/pause", OPERATOR),
    rule("POST", "/ui/api/rollouts/{id}/resume", OPERATOR),
    rule("POST", "/ui/api/rollouts/{id}/cancel", OPERATOR),
    rule("GET", "/ui/api/policy", VIEWER),
    rule("POST", "/ui/api/policy/suspend", OPERATOR),
    rule("POST", "/ui/api/policy/resume", OPERATOR),
    rule("POST", "/ui/api/policy/halt-clear", OPERATOR),
    rule("GET", "/ui/api/events", VIEWER),
    rule("GET", "/ui/api/audit", ADMIN),
];

/// Path parameters that name an operation or an action, kept as sent in the endpoint's key.
const NAMED: &[&str] = &["{op}", "{what}", "{action}"];
/// The route whose `{id}` may be a type-level operation (`Agent/$bulk-status`): kept as sent
/// when it starts with `$`. No other id is (on another route, `$x` is an id like any).
const TYPE_OPS: &str = "/fhir/R4/Agent/{id}";

/// The key of a request in [`RULES`]: its route's template, with operations and actions (and
/// `Agent/{id}` when it is a type-level operation, `$…`) as the handlers read them,
/// percent-decoded (`%24upgrade` is `$upgrade` to the handler, so it is to the rules too).
pub fn endpoint(template: &str, path: &str) -> String {
    let sent: Vec<Cow<str>> = path.split('/').map(decoded).collect();
    let type_op = template == TYPE_OPS;
    let parts = template.split('/').enumerate().map(|(i, t)| match sent.get(i) {
        Some(s) if NAMED.contains(&t) || (type_op && t == "{id}" && s.starts_with('$')) => s.as_ref(),
        _ => t,
    });
    parts.collect::<Vec<_>>().join("/")
}

/// A path segment as a handler's path parameter reads it (one not UTF-8 once decoded is refused by
/// the handler; here its lossy form never names an endpoint).
fn decoded(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

/// How the guard treats a request, by its method and endpoint.
#[derive(Debug, PartialEq)]
pub enum Gate {
    /// The endpoint's rule for this method.
    Rule(&'static Rule),
    /// An operation (`$…`, by GET or POST) no endpoint serves: a viewer's credentials, then the
    /// handler's 404 naming it.
    UnknownOp,
    /// An endpoint with rules, none for this method: 405, and no handler runs.
    NotAllowed,
    /// No rule at all: refused to everyone (after a 401 to a caller without credentials).
    NoRule,
}

/// The [`Gate`] of `method` on endpoint `key`.
pub fn gate(method: &str, key: &str) -> Gate {
    // HEAD is GET without the body, so a GET that acts (asks an agent something) is not one to
    // answer a HEAD with: a bare `HEAD Agent/$upgrade` asked every agent it found to upgrade.
    if method == "HEAD" && super::audit::audited("GET", key).is_some() {
        return Gate::NotAllowed;
    }
    if let Some(rule) = rule_for(method, key) {
        return Gate::Rule(rule);
    }
    if RULES.iter().any(|r| r.path == key) {
        return Gate::NotAllowed;
    }
    let op = key.rsplit('/').next().is_some_and(|s| s.starts_with('$'));
    match op && matches!(method, "GET" | "HEAD" | "POST") {
        true => Gate::UnknownOp,
        false => Gate::NoRule,
    }
}

/// The methods endpoint `key` serves, for a 405's `Allow`.
fn allowed(key: &str) -> String {
    let methods: Vec<&str> = RULES.iter().filter(|r| r.path == key).map(|r| r.method).collect();
    methods.join(", ")
}

/// The rule of `method` on endpoint `key`, if there is one.
pub fn rule_for(method: &str, key: &str) -> Option<&'static Rule> {
    let method = if method == "HEAD" { "GET" } else { method };
    RULES.iter().find(|r| r.method == method && r.path == key)
}

/// 403 naming the role missing.
pub fn missing_role(needed: Role, had: Role) -> String {
    match had {
        Role::Agent => format!(
            "Forbidden: this needs the {} role; agent credentials may only read their own Agent resource",
            needed.name()
        ),
        _ => format!("Forbidden: this needs the {} role, and this client has the {} role", needed.name(), had.name()),
    }
}

/// The agents or rollout a request's path names.
fn path_entities(template: &str, path: &str) -> Vec<Ref> {
    let sent: Vec<&str> = path.split('/').collect();
    let parts: Vec<&str> = template.split('/').collect();
    let Some(i) = parts.iter().position(|p| *p == "{id}") else { return vec![] };
    let Some(id) = sent.get(i).map(|id| decoded(id)).filter(|id| !id.starts_with('$')) else { return vec![] };
    // Anyone may send a path: an id past any an agent or a rollout has is recorded cut short.
    let id = shown(&id);
    let kind = match parts.get(i - 1) {
        Some(&"Agent") | Some(&"agents") => "Agent",
        Some(&"Rollout") | Some(&"rollouts") => "Rollout",
        _ => return vec![],
    };
    vec![Ref { reference: format!("{kind}/{id}"), display: None }]
}

/// 429 with `Retry-After`, for an address past its budget of refused credentials.
fn too_many_refused(t: Throttled) -> Response {
    let secs = t.retry_after_secs();
    let why = format!("Too many refused credentials from your address: try again in {secs} s");
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "throttled", why).into_response();
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
    resp
}

fn shown_ip(ip: Option<std::net::IpAddr>) -> String {
    ip.map_or_else(|| "an unknown address".into(), |ip| ip.to_string())
}

/// Who calls an endpoint that needs a role, or the refusal to answer (and why).
async fn authorize(
    app: &AppState,
    page: bool,
    need: Need,
    headers: &HeaderMap,
) -> Result<Option<Client>, (Response, String, Option<Ref>)> {
    let caller = match page {
        true => app.sessions.client_of(headers).await.map_err(store_error),
        false => app.tokens.caller(headers).await.map_err(store_error),
    };
    match caller {
        Err(e) => Err((e.into_response(), "Storage unavailable".into(), None)),
        // The page's handlers say "please sign in" themselves.
        Ok(None) if page => Ok(None),
        Ok(None) => {
            let why = "401 Unauthorized: no valid credentials".to_string();
            Err((super::access::unauthorized().into_response(), why, None))
        }
        Ok(Some(client)) => match need.check(client.role) {
            Ok(()) => Ok(Some(client)),
            Err(needed) => {
                let why = missing_role(needed, client.role);
                tracing::info!(client_id = client.id, "{why}");
                let resp = match page {
                    true => (StatusCode::FORBIDDEN, Json(json!({"error": why}))).into_response(),
                    false => error(StatusCode::FORBIDDEN, "forbidden", why.clone()).into_response(),
                };
                Err((resp, why, Some(client.reference())))
            }
        },
    }
}

/// Enforces [`RULES`] in front of every handler of the routes it layers, and records the audit
/// event of every call that changes something or asks an agent something, and of every refusal.
pub async fn guard(
    State(app): State<AppState>,
    peer: Peer,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let template = matched.as_ref().map_or("", |m| m.as_str()).to_string();
    let key = endpoint(&template, req.uri().path());
    let method = req.method().as_str().to_string();
    let address = app.config.proxies.client_ip(peer, req.headers()).map(|ip| ip.to_string());
    let spec = audit::audited(&method, &key);
    let (subtype, action) = spec.unwrap_or(("refused", 'R'));
    let kind = if key.starts_with("/ui/api/log") { LOGIN } else { audit::KIND };
    let mut event = audit::event(kind, subtype, action, None, address);
    event.entities = path_entities(&template, req.uri().path());
    // None: no rule names the endpoint, and who asks is checked before it is refused.
    let need = match gate(&method, &key) {
        Gate::Rule(rule) => Some(rule.need),
        Gate::UnknownOp => Some(VIEWER),
        Gate::NotAllowed => return not_allowed(&method, &key),
        Gate::NoRule => None,
    };
    let page = key.starts_with("/ui/");
    // Client credentials in HTTP Basic are a secret tried: each is taken from the address's
    // budget of token requests before it is checked (here, by the handler, or before a refusal),
    // and given back once accepted; past the budget, none is tried.
    let ip = app.config.proxies.client_ip(peer, req.headers());
    let basic = match need {
        Some(Need::Public) => None,
        _ if page => None,
        _ => basic_credentials(req.headers()),
    };
    if basic.is_some() {
        if let Err(t) = app.throttle.try_basic(ip) {
            let why = format!("429 Too Many Requests: too many refused credentials from {}", shown_ip(ip));
            let resp = too_many_refused(t);
            event.subtype = "refused".into();
            audit::Audit::new(event).finish(&*app.store, resp.status().as_u16(), Some(why)).await;
            return resp;
        }
    }
    let basic_checked = |status: StatusCode| {
        if let Some((id, _)) = &basic {
            match status == StatusCode::UNAUTHORIZED {
                true => app.throttle.basic_refused(id, ip),
                false => app.throttle.basic_accepted(ip),
            }
        }
    };
    let Some(need) = need else {
        let resp = no_rule(&app, (&method, &key), req.headers(), event).await;
        basic_checked(resp.status());
        return resp;
    };
    if let Need::Role(_) = need {
        match authorize(&app, page, need, req.headers()).await {
            Ok(who) => event.who = who.as_ref().map(Client::reference),
            Err((resp, why, who)) => {
                basic_checked(resp.status());
                (event.subtype, event.who) = ("refused".into(), who);
                audit::Audit::new(event).finish(&*app.store, resp.status().as_u16(), Some(why)).await;
                return resp;
            }
        }
    }
    let ctx = audit::Audit::new(event);
    let resp = ctx.clone().scope(next.run(req)).await;
    // A route open to any client checks the credentials in its handler.
    basic_checked(resp.status());
    let status = resp.status().as_u16();
    if spec.is_some() || matches!(status, 401 | 403) {
        if spec.is_none() {
            ctx.refused();
        }
        // Written before the answer while the store answers; when it does not, the answer goes
        // out after AUDIT_WAIT and the write goes on (its failure is logged).
        let store = app.store.clone();
        let why = resp.extensions().get::<Said>().map(|said| audit::failed_because(status, &said.0));
        let write = tokio::spawn(async move { ctx.finish(&*store, status, why).await });
        if tokio::time::timeout(AUDIT_WAIT, write).await.is_err() {
            tracing::warn!(status, "answered before its audit event was written: the store is slow");
        }
    }
    resp
}

/// 405 for a method an endpoint does not serve, answered here: a route may serve several
/// endpoints (`Agent/{id}` and `Agent/$…`), so the router's handler for this method may be
/// another endpoint's.
fn not_allowed(method: &str, key: &str) -> Response {
    let allow = allowed(key);
    let why = format!("Method not allowed: {} on this endpoint (it takes {allow})", shown_at_most(method, 16));
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "not-supported", why).into_response();
    if let Ok(v) = allow.parse() {
        resp.headers_mut().insert(axum::http::header::ALLOW, v);
    }
    resp
}

/// A request no rule names (an unknown action, a junk operation name): who asks first, so that no
/// one without credentials makes the server log or record at will (a 401, whose events are
/// budgeted); then a 403, recorded, with what was asked cut short.
async fn no_rule(app: &AppState, (method, key): (&str, &str), headers: &HeaderMap, mut event: AuditRecord) -> Response {
    let who = match authorize(app, key.starts_with("/ui/"), Need::Client, headers).await {
        Ok(Some(client)) => client.reference(),
        Ok(None) => {
            let why = "401 Unauthorized: no valid credentials".to_string();
            audit::Audit::new(event).finish(&*app.store, 401, Some(why)).await;
            return super::access::unauthorized().into_response();
        }
        Err((resp, why, who)) => {
            (event.subtype, event.who) = ("refused".into(), who);
            audit::Audit::new(event).finish(&*app.store, resp.status().as_u16(), Some(why)).await;
            return resp;
        }
    };
    let (method, endpoint) = (shown_at_most(method, 16), shown_at_most(key, 200));
    tracing::warn!(method, endpoint, "no access rule for this endpoint: refused");
    let why = format!("Forbidden: no access rule for {method} {endpoint}");
    (event.subtype, event.who) = ("refused".into(), Some(who));
    audit::Audit::new(event).finish(&*app.store, 403, Some(why.clone())).await;
    error(StatusCode::FORBIDDEN, "forbidden", why).into_response()
}

/// How long an answer waits for its audit event to be written.
const AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_keyed_by_template_and_operation() {
        assert_eq!(endpoint("/fhir/R4/Agent/{id}/{op}", "/fhir/R4/Agent/a-1/$upgrade"), "/fhir/R4/Agent/{id}/$upgrade");
        assert_eq!(endpoint("/fhir/R4/Agent/{id}", "/fhir/R4/Agent/$bulk-status"), "/fhir/R4/Agent/$bulk-status");
        assert_eq!(endpoint("/fhir/R4/Agent/{id}", "/fhir/R4/Agent/a-1"), "/fhir/R4/Agent/{id}");
        assert_eq!(endpoint("/ui/api/agents/{id}/{what}", "/ui/api/agents/a/logs"), "/ui/api/agents/{id}/logs");
        assert_eq!(rule_for("HEAD", "/").map(|r| r.need), Some(Need::Public));
        assert_eq!(rule_for("GET", "/fhir/R4/Agent/{id}/$nothing"), None, "an unknown operation has no rule");
    }

    /// Found by an attacker's probe: a HEAD on `$upgrade` upgraded the agent (a bare
    /// `HEAD Agent/$upgrade` every agent found). HEAD is answered where GET only reads.
    #[test]
    fn head_is_refused_where_get_acts_and_answered_where_it_reads() {
        for acts in [
            "/fhir/R4/Agent/{id}/$upgrade",
            "/fhir/R4/Agent/$upgrade",
            "/fhir/R4/Agent/$reload-config",
            "/fhir/R4/Agent/{id}/$fetch-logs",
            "/fhir/R4/Agent/{id}/$stats",
            "/ui/api/agents/{id}/logs",
        ] {
            assert_eq!(gate("HEAD", acts), Gate::NotAllowed, "{acts}");
            assert!(matches!(gate("GET", acts), Gate::Rule(_)), "{acts}");
        }
        for reads in
            ["/fhir/R4/Agent/{id}", "/fhir/R4/Agent", "/fhir/R4/Agent/{id}/$status", "/fhir/R4/Agent/$bulk-status", "/"]
        {
            assert!(matches!(gate("HEAD", reads), Gate::Rule(_)), "{reads}");
        }
    }

    /// Found by an attacker's probe: the key was read from the raw path while handlers read it
    /// decoded, so `%24upgrade` (the handler's `$upgrade`) had the rule of reading an Agent, and
    /// `$%73et-role` that of an unknown operation (any viewer).
    #[test]
    fn keys_are_read_decoded_as_the_handlers_read_them() {
        let op = "/fhir/R4/Agent/{id}";
        assert_eq!(endpoint(op, "/fhir/R4/Agent/%24upgrade"), "/fhir/R4/Agent/$upgrade");
        assert_eq!(endpoint(op, "/fhir/R4/Agent/%24upgr%61de"), "/fhir/R4/Agent/$upgrade");
        let set_role = endpoint("/fhir/R4/ClientApplication/{id}/{op}", "/fhir/R4/ClientApplication/c/$%73et-role");
        assert!(matches!(gate("POST", &set_role), Gate::Rule(r) if r.need == ADMIN));
        let upgrade = endpoint(op, "/fhir/R4/Agent/%24upgrade");
        assert!(matches!(gate("GET", &upgrade), Gate::Rule(r) if r.need == OPERATOR));
        assert_eq!(endpoint(op, "/fhir/R4/Agent/%ff%24x"), "/fhir/R4/Agent/{id}", "not UTF-8: no operation");
        let junk = endpoint("/ui/api/agents/{id}/{what}", "/ui/api/agents/a/%6Cogs");
        assert_eq!(junk, "/ui/api/agents/{id}/logs");
        // Only `Agent/{id}` may be an operation: elsewhere `$x` is an id, under its route's rule.
        let client = endpoint("/fhir/R4/ClientApplication/{id}", "/fhir/R4/ClientApplication/%24x");
        assert!(matches!(gate("GET", &client), Gate::Rule(r) if r.need == ADMIN));
        let rotate = endpoint("/fhir/R4/Agent/{id}/{op}", "/fhir/R4/Agent/$x/$rotate-secret");
        assert!(matches!(gate("POST", &rotate), Gate::Rule(r) if r.need == ADMIN));
    }

    #[test]
    fn a_method_an_endpoint_does_not_serve_never_reaches_a_handler() {
        assert_eq!(gate("POST", "/fhir/R4/Agent/{id}"), Gate::NotAllowed);
        assert_eq!(gate("PUT", "/fhir/R4/Agent/$upgrade"), Gate::NotAllowed);
        assert_eq!(allowed("/fhir/R4/Agent/$upgrade"), "GET, POST");
        assert_eq!(gate("GET", "/fhir/R4/Agent/{id}/$nothing"), Gate::UnknownOp);
        assert_eq!(gate("PUT", "/fhir/R4/Agent/$nothing"), Gate::NoRule, "an unknown operation by PUT");
        assert_eq!(gate("GET", "/fhir/R4/Agent/{id}/nothing"), Gate::NoRule);
    }

    #[test]
    fn each_endpoint_has_one_rule() {
        for (i, r) in RULES.iter().enumerate() {
            assert!(!RULES[..i].iter().any(|o| o.method == r.method && o.path == r.path), "{r:?} twice");
        }
    }
}
