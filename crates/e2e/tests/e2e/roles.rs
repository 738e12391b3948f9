//! The role matrix: every endpoint of the server's table of rules × viewer, operator, admin and
//! agent credentials, against a real server. The cases here must be exactly the server's rules, so
//! an endpoint added without a rule (refused to everyone by the guard) or a rule without a case
//! fails this test.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::{eventually, server_bin, toml_value, Server};
use edge_agent_server::api::rules::{rule_for, RULES};
use edge_agent_server::model::access::{Need, Role};

/// One request per endpoint: (method, the rule's path, the path sent, the body). `AGENT` stands for
/// the agent's own id; other ids are unknown (an allowed caller gets 404, never a change).
const CASES: &[(&str, &str, &str, &str)] = &[
    ("POST", "/oauth2/revoke", "/oauth2/revoke", "token=unknown"),
    ("GET", "/healthcheck", "/healthcheck", ""),
    ("GET", "/metrics", "/metrics", ""),
    ("GET", "/fhir/R4/Agent", "/fhir/R4/Agent?_count=1", ""),
    ("POST", "/fhir/R4/Agent", "/fhir/R4/Agent", r#"{"resourceType":"Agent","name":"made by the matrix"}"#),
    ("GET", "/fhir/R4/Agent/{id}", "/fhir/R4/Agent/AGENT", ""),
    ("PUT", "/fhir/R4/Agent/{id}", "/fhir/R4/Agent/none", r#"{"resourceType":"Agent","name":"x"}"#),
    ("DELETE", "/fhir/R4/Agent/{id}", "/fhir/R4/Agent/none", ""),
    ("GET", "/fhir/R4/Agent/$bulk-status", "/fhir/R4/Agent/$bulk-status?_id=none", ""),
    ("POST", "/fhir/R4/Agent/$bulk-status", "/fhir/R4/Agent/$bulk-status?_id=none", ""),
    ("GET", "/fhir/R4/Agent/$upgrade", "/fhir/R4/Agent/$upgrade?_id=none", ""),
    ("POST", "/fhir/R4/Agent/$upgrade", "/fhir/R4/Agent/$upgrade?_id=none", ""),
    ("GET", "/fhir/R4/Agent/$reload-config", "/fhir/R4/Agent/$reload-config?_id=none", ""),
    ("POST", "/fhir/R4/Agent/$reload-config", "/fhir/R4/Agent/$reload-config?_id=none", ""),
    ("GET", "/fhir/R4/Agent/$fetch-logs", "/fhir/R4/Agent/$fetch-logs?_id=none", ""),
    ("POST", "/fhir/R4/Agent/$fetch-logs", "/fhir/R4/Agent/$fetch-logs?_id=none", ""),
    ("GET", "/fhir/R4/Agent/$stats", "/fhir/R4/Agent/$stats?_id=none", ""),
    ("POST", "/fhir/R4/Agent/$stats", "/fhir/R4/Agent/$stats?_id=none", ""),
    ("GET", "/fhir/R4/Agent/$push", "/fhir/R4/Agent/$push?_id=none", ""),
    ("POST", "/fhir/R4/Agent/$push", "/fhir/R4/Agent/$push?_id=none", ""),
    ("GET", "/fhir/R4/Agent/{id}/$status", "/fhir/R4/Agent/none/$status", ""),
    ("POST", "/fhir/R4/Agent/{id}/$status", "/fhir/R4/Agent/none/$status", ""),
    ("GET", "/fhir/R4/Agent/{id}/$upgrade", "/fhir/R4/Agent/none/$upgrade", ""),
    ("POST", "/fhir/R4/Agent/{id}/$upgrade", "/fhir/R4/Agent/none/$upgrade", ""),
    ("GET", "/fhir/R4/Agent/{id}/$reload-config", "/fhir/R4/Agent/none/$reload-config", ""),
    ("POST", "/fhir/R4/Agent/{id}/$reload-config", "/fhir/R4/Agent/none/$reload-config", ""),
    ("GET", "/fhir/R4/Agent/{id}/$fetch-logs", "/fhir/R4/Agent/none/$fetch-logs", ""),
    ("POST", "/fhir/R4/Agent/{id}/$fetch-logs", "/fhir/R4/Agent/none/$fetch-logs", ""),
    ("GET", "/fhir/R4/Agent/{id}/$stats", "/fhir/R4/Agent/none/$stats", ""),
    ("POST", "/fhir/R4/Agent/{id}/$stats", "/fhir/R4/Agent/none/$stats", ""),
    ("GET", "/fhir/R4/Agent/{id}/$push", "/fhir/R4/Agent/none/$push", ""),
    ("POST", "/fhir/R4/Agent/{id}/$push", "/fhir/R4/Agent/none/$push", ""),
    ("POST", "/fhir/R4/Agent/{id}/$rotate-secret", "/fhir/R4/Agent/none/$rotate-secret", ""),
    ("GET", "/fhir/R4/AuditEvent", "/fhir/R4/AuditEvent?_count=1", ""),
    ("GET", "/fhir/R4/ClientApplication", "/fhir/R4/ClientApplication?_count=1", ""),
    ("GET", "/fhir/R4/ClientApplication/{id}", "/fhir/R4/ClientApplication/none", ""),
    ("DELETE", "/fhir/R4/ClientApplication/{id}", "/fhir/R4/ClientApplication/none", ""),
    ("POST", "/fhir/R4/ClientApplication/{id}/$rotate-secret", "/fhir/R4/ClientApplication/none/$rotate-secret", ""),
    (
        "POST",
        "/fhir/R4/ClientApplication/{id}/$set-role",
        "/fhir/R4/ClientApplication/none/$set-role",
        r#"{"role":"viewer"}"#,
    ),
    ("GET", "/fhir/R4/Policy", "/fhir/R4/Policy", ""),
    ("PUT", "/fhir/R4/Policy", "/fhir/R4/Policy", "{}"),
    ("GET", "/fhir/R4/Policy/$status", "/fhir/R4/Policy/$status", ""),
    ("POST", "/fhir/R4/Policy/$suspend", "/fhir/R4/Policy/$suspend", ""),
    ("POST", "/fhir/R4/Policy/$resume", "/fhir/R4/Policy/$resume", ""),
    ("POST", "/fhir/R4/Policy/$halt-clear", "/fhir/R4/Policy/$halt-clear", ""),
    ("GET", "/fhir/R4/Rollout", "/fhir/R4/Rollout", ""),
    ("GET", "/fhir/R4/Rollout/{id}", "/fhir/R4/Rollout/none", ""),
    ("POST", "/fhir/R4/Rollout/{id}/$pause", "/fhir/R4/Rollout/none/$pause", ""),
    ("POST", "/fhir/R4/Rollout/{id}/$resume", "/fhir/R4/Rollout/none/$resume", ""),
    ("POST", "/fhir/R4/Rollout/{id}/$cancel", "/fhir/R4/Rollout/none/$cancel", ""),
    ("GET", "/", "/", ""),
    ("GET", "/ui/app.js", "/ui/app.js", ""),
    ("GET", "/ui/app.css", "/ui/app.css", ""),
    ("GET", "/ui/policy.js", "/ui/policy.js", ""),
    ("POST", "/ui/api/login", "/ui/api/login", "{}"),
    ("GET", "/ui/api/session", "/ui/api/session", ""),
    ("GET", "/ui/api/overview", "/ui/api/overview", ""),
    ("GET", "/ui/api/agents", "/ui/api/agents", ""),
    ("GET", "/ui/api/agents/{id}", "/ui/api/agents/none", ""),
    ("GET", "/ui/api/agents/{id}/logs", "/ui/api/agents/none/logs", ""),
    ("GET", "/ui/api/agents/{id}/stats", "/ui/api/agents/none/stats", ""),
    ("POST", "/ui/api/upgrade", "/ui/api/upgrade", "{}"),
    ("GET", "/ui/api/rollouts", "/ui/api/rollouts", ""),
    ("POST", "/ui/api/rollouts", "/ui/api/rollouts", "{}"),
    ("GET", "/ui/api/rollouts/{id}", "/ui/api/rollouts/none", ""),
    ("POST", "/ui/api/rollouts/{id}/pause", "/ui/api/rollouts/none/pause", ""),
    ("POST", "/ui/api/rollouts/{id}/resume", "/ui/api/rollouts/none/resume", ""),
    ("POST", "/ui/api/rollouts/{id}/cancel", "/ui/api/rollouts/none/cancel", ""),
    ("GET", "/ui/api/policy", "/ui/api/policy", ""),
    ("POST", "/ui/api/policy/suspend", "/ui/api/policy/suspend", ""),
    ("POST", "/ui/api/policy/resume", "/ui/api/policy/resume", ""),
    ("POST", "/ui/api/policy/halt-clear", "/ui/api/policy/halt-clear", ""),
    ("GET", "/ui/api/events", "/ui/api/events", ""),
    ("GET", "/ui/api/audit", "/ui/api/audit?outcome=4", ""),
    // Last: it ends the session.
    ("POST", "/ui/api/logout", "/ui/api/logout", ""),
];

/// A caller: its role, its client id and secret, its bearer token, and its page session (cookie,
/// CSRF token) when it may sign in.
struct Caller {
    role: Role,
    id: String,
    secret: String,
    token: String,
    session: Option<(String, String)>,
}

fn add_client(server: &Server, role: &str) -> (String, String) {
    let out = Command::new(server_bin())
        .args(["client", "add", "--role", role, "--name", &format!("{role} desk"), "--data"])
        .arg(server.data())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    (toml_value(&text, "client_id"), toml_value(&text, "client_secret"))
}

async fn caller(server: &Server, role: Role, (id, secret): (String, String)) -> Caller {
    let token = server.token_for(&id, &secret).await;
    let login = server.http.post(server.url("ui/api/login")).json(&json!({"client_id": id, "client_secret": secret}));
    let login = login.send().await.unwrap();
    let session = (login.status() == 200).then(|| {
        let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        cookie
    });
    let session = match session {
        Some(cookie) => Some((cookie, login.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string())),
        None => None,
    };
    assert_eq!(session.is_some(), role != Role::Agent, "{role:?} signs in to the page, agents do not");
    Caller { role, id, secret, token, session }
}

/// (status, body) of one case for one caller.
async fn call(server: &Server, c: &Caller, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut req = server.http.request(method.parse().unwrap(), server.url(path)).body(body.to_string());
    if path.starts_with("/ui/") {
        if let Some((cookie, csrf)) = &c.session {
            req = req.header("cookie", cookie).header("x-csrf-token", csrf);
        }
        if method == "POST" {
            req = req.header("content-type", "application/json");
        }
    } else if path == "/oauth2/revoke" {
        req = req.basic_auth(&c.id, Some(&c.secret)).header("content-type", "application/x-www-form-urlencoded");
    } else {
        req = req.bearer_auth(&c.token);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    // The event stream never ends: its status is all there is to read.
    let text = if path == "/ui/api/events" { String::new() } else { resp.text().await.unwrap_or_default() };
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_each_role_as_the_table_of_rules_says() {
    let server = Server::start(&[]).await;
    let (agent_id, cfg) = server.add_agent("matrix-agent");
    let agent_creds = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));
    let mut callers = vec![caller(&server, Role::Agent, agent_creds).await];
    for role in Role::OPERATOR_ROLES {
        callers.push(caller(&server, role, add_client(&server, role.name())).await);
    }

    let cases: BTreeSet<(&str, &str)> = CASES.iter().map(|c| (c.0, c.1)).collect();
    let rules: BTreeSet<(&str, &str)> = RULES.iter().map(|r| (r.method, r.path)).collect();
    assert_eq!(cases.len(), CASES.len(), "each endpoint is tried once");
    assert_eq!(cases, rules, "every rule has its case here, and every case its rule");

    let mut failures = Vec::new();
    for c in &callers {
        for &(method, rule_path, path, body) in CASES {
            let need = rule_for(method, rule_path).unwrap().need;
            let path = path.replace("AGENT", &agent_id);
            let (status, text) = call(&server, c, method, &path, body).await;
            if !answered_as_the_rule_says(need, c.role, path.starts_with("/ui/api/"), status, &text) {
                failures.push(format!(
                    "{:?} {method} {path}: {status} {}",
                    c.role,
                    text.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} unexpected answers:\n{}", failures.len(), failures.join("\n"));
}

/// Whether a caller in `role` was answered as an endpoint that needs `need` answers it.
fn answered_as_the_rule_says(need: Need, role: Role, page: bool, status: u16, text: &str) -> bool {
    match (need, need.check(role)) {
        (Need::Public, _) => !matches!(status, 401 | 403),
        (_, Ok(())) if page && role == Role::Agent => status == 401,
        (_, Ok(())) => !matches!(status, 401 | 403),
        (_, Err(_)) if page && role == Role::Agent => status == 401,
        (_, Err(needed)) => status == 403 && text.contains(&format!("needs the {} role", needed.name())),
    }
}

/// The page's endpoints whose last segment is an action read from the path.
const ACTIONS: &[&str] = &["/ui/api/agents/{id}/", "/ui/api/rollouts/{id}/", "/ui/api/policy/"];

/// `path` with its operation or action percent-encoded as a client may send it: `$` as `%24` and
/// the next letter escaped too (`%24%75pgrade`), or an action's first letter (`%6Cogs`).
fn encoded(rule_path: &str, path: &str) -> Option<String> {
    let at = match path.find('$') {
        Some(at) => {
            let rest = &path[at + 1..];
            let letter = rest.chars().next()?;
            return Some(format!("{}%24%{:02X}{}", &path[..at], letter as u32, &rest[1..]));
        }
        None if ACTIONS.iter().any(|a| rule_path.starts_with(a)) => path.rfind('/')? + 1,
        None => return None,
    };
    let letter = path[at..].chars().next()?;
    Some(format!("{}%{:02X}{}", &path[..at], letter as u32, &path[at + 1..]))
}

/// Found by an attacker's probe: the rules were looked up on the raw path while handlers read it
/// decoded, so `Agent/%24upgrade` needed no credentials at all and a viewer could make itself an
/// admin with `$%73et-role`. Each endpoint's operation or action, percent-encoded, answers every
/// caller (none, viewer, operator) as the plain one does; a method an endpoint does not serve is a
/// 405 that reaches no handler; and a path anyone sends makes at most a small audit event.
#[tokio::test(flavor = "multi_thread")]
async fn encoded_operations_get_the_rules_of_the_operations_they_name() {
    let server = Server::start(&[]).await;
    let (agent_id, _) = server.add_agent("encoded-agent");
    let nobody =
        Caller { role: Role::Agent, id: String::new(), secret: String::new(), token: String::new(), session: None };
    let viewer = caller(&server, Role::Viewer, add_client(&server, "viewer")).await;
    let operator = caller(&server, Role::Operator, add_client(&server, "operator")).await;
    let mut failures = Vec::new();
    let mut tried = 0;
    for &(method, rule_path, path, body) in CASES {
        let need = rule_for(method, rule_path).unwrap().need;
        let Some(path) = encoded(rule_path, &path.replace("AGENT", &agent_id)) else { continue };
        tried += 1;
        let (status, text) = call(&server, &nobody, method, &path, body).await;
        if need != Need::Public && status != 401 {
            failures.push(format!(
                "no credentials: {method} {path}: {status} {}",
                text.chars().take(200).collect::<String>()
            ));
        }
        for c in [&viewer, &operator] {
            let (status, text) = call(&server, c, method, &path, body).await;
            if !answered_as_the_rule_says(need, c.role, path.starts_with("/ui/api/"), status, &text) {
                let shown: String = text.chars().take(200).collect();
                failures.push(format!("{:?} {method} {path}: {status} {shown}", c.role));
            }
        }
    }
    assert!(tried >= 40, "only {tried} endpoints have an operation or action to encode");
    assert!(failures.is_empty(), "{} unexpected answers:\n{}", failures.len(), failures.join("\n"));
    // The viewer is still a viewer.
    let (status, _) = call(&server, &viewer, "POST", "/fhir/R4/Agent/$upgrade?_id=none", "").await;
    assert_eq!(status, 403);

    // A method an endpoint does not serve: 405 naming what it takes, before any credentials.
    for (method, path, allow) in [
        ("POST", "/fhir/R4/Agent/none", "GET, PUT, DELETE"),
        ("PUT", "/fhir/R4/Agent/%24upgrade", "GET, POST"),
        ("DELETE", "/fhir/R4/Rollout/none/%24cancel", "POST"),
    ] {
        let resp = server.http.request(method.parse().unwrap(), server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
    }

    // A path of 60 KB without credentials, in a second of its own (the calls above spent the
    // budget of theirs): a 401, and its event, small, with the id it names cut short.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let long = "x".repeat(30_000);
    let resp = server.http.get(server.url(&format!("fhir/R4/Agent/{long}/{long}"))).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let (admin_id, admin_secret) = server.admin();
    let token = server.token_for(&admin_id, &admin_secret).await;
    let entity = format!("Agent/{}…", "x".repeat(64));
    let search = server.http.get(server.url("fhir/R4/AuditEvent")).query(&[("entity", entity.as_str())]);
    let events: Value = search.bearer_auth(token).send().await.unwrap().json().await.unwrap();
    let entries = events["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{events}");
    let size = entries[0].to_string().len();
    assert!(size < 2_000, "an event of {size} bytes: {}", entries[0].to_string().chars().take(300).collect::<String>());
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_are_named_set_and_changed_and_an_unknown_one_is_refused() {
    let server = Server::start(&[]).await;
    let out = Command::new(server_bin())
        .args(["client", "add", "--role", "root", "--data"])
        .arg(server.data())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown role \"root\": expected viewer, operator or admin"), "{err}");

    let (id, secret) = add_client(&server, "viewer");
    let listed = Command::new(server_bin()).args(["client", "list", "--data"]).arg(server.data()).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.lines().any(|l| l.starts_with(&id) && l.contains("viewer") && l.contains("viewer desk")),
        "{listed}"
    );
    let (admin_id, _) = server.admin();
    assert!(listed.lines().any(|l| l.starts_with(&admin_id) && l.contains("admin")), "existing admins stay admin");
    // Without --name, a client is named for its role (a viewer was "Administrator" in the trail).
    let args = ["client", "add", "--role", "operator", "--data"];
    let out = Command::new(server_bin()).args(args).arg(server.data()).output().unwrap();
    let made = String::from_utf8(out.stdout).unwrap();
    let operator = toml_value(&made, "client_id");
    let listed = Command::new(server_bin()).args(["client", "list", "--data"]).arg(server.data()).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.lines().any(|l| l.starts_with(&operator) && l.ends_with("Operator")), "{listed}");

    let token = server.token_for(&id, &secret).await;
    let server = &server;
    let upgrade = |t: String| {
        let url = server.url("fhir/R4/Agent/$upgrade?_id=none");
        async move { server.http.post(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(upgrade(token.clone()).await, 403);
    let to_operator = || {
        let args = ["client", "set-role", &id, "operator", "--data"];
        Command::new(server_bin()).args(args).arg(server.data()).output().unwrap()
    };
    let out = to_operator();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is now operator (was viewer)"));
    // Every node reads the change within a second, for the same token too.
    eventually(Duration::from_secs(1), "the new role applied", || {
        let t = token.clone();
        async move { (upgrade(t).await != 403).then_some(()) }
    })
    .await;
    // The role it has: nothing changes, and it says so.
    let again = to_operator();
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("is operator already: nothing changed"), "{again:?}");
}
