//! The audit trail of a scripted session, on SQLite and on PostgreSQL: sign-in, a failed sign-in,
//! an upgrade, a rollout that halts at its canary, a 403, a rotation and a removal each leave
//! exactly one `AuditEvent`, in order, with its outcome; no secret or token appears in any of
//! them; `medplum get` reads them, `audit export` writes them, a bad search is a 400.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::medplum::MedplumCli;
use edge_agent_e2e::releases::ReleaseServer;
use edge_agent_e2e::services::shared_db;
use edge_agent_e2e::{agent_bin, eventually, next_version, server_bin, toml_value, AgentHome, Server};

const LIMIT: Duration = Duration::from_secs(60);

/// `agent-server ARGS` on the server's store; its stdout.
fn cli(server: &Server, db: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new(server_bin());
    cmd.args(args);
    match db {
        Some(db) => cmd.args(["--database", db]),
        None => cmd.arg("--data").arg(server.data()),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every event, oldest first: (subtype, outcome, actor reference, entity references).
pub async fn trail(
    server: &Server,
    token: &str,
    query: &str,
) -> (Vec<Value>, Vec<(String, String, String, Vec<String>)>) {
    let url = server.url(&format!("fhir/R4/AuditEvent?_sort=date&_count=1000{query}"));
    let v: Value = server.http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    let events: Vec<Value> = v["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    let rows = events
        .iter()
        .map(|e| {
            let entities = e["entity"].as_array().into_iter().flatten();
            (
                e["subtype"][0]["code"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["agent"][0]["who"]["reference"].as_str().unwrap_or("").to_string(),
                entities.map(|x| x["what"]["reference"].as_str().unwrap().to_string()).collect(),
            )
        })
        .collect();
    (events, rows)
}

async fn scripted_session(server: Server, db: Option<&str>) {
    let (admin_id, admin_secret) = server.admin();
    let viewer = cli(&server, db, &["client", "add", "--role", "viewer", "--name", "Night desk"]);
    let (viewer_id, viewer_secret) = (toml_value(&viewer, "client_id"), toml_value(&viewer, "client_secret"));
    let releases = ReleaseServer::start().await;
    releases.publish_file(SOURCE_VERSION, Path::new(agent_bin()));
    releases.publish(&next_version(), b"#!/bin/sh\necho 'this build is broken' >&2\nexit 3\n");
    let (agent, cfg) = match db {
        None => server.add_agent("clinic-7"),
        Some(_) => {
            let cfg = cli(&server, db, &["agent", "add", "--name", "clinic-7", "--base-url", &server.url("/")]);
            (toml_value(&cfg, "agent_id"), cfg)
        }
    };
    let agent_secret = toml_value(&cfg, "client_secret");
    let agent_client = format!("ClientApplication/{}", toml_value(&cfg, "client_id"));
    let (_home, _proc) = AgentHome::started(&cfg, &releases, 10);
    server.wait_status(&agent, "connected", SOURCE_VERSION, LIMIT).await;
    let (server, http) = (&server, &server.http);

    // The session: a token, a sign-in, a failed sign-in, an upgrade, a rollout halting at its canary.
    let token = server.token_for(&admin_id, &admin_secret).await;
    let admin_ref = &admin_id;
    let login = |secret: String| {
        let body = json!({"client_id": admin_ref, "client_secret": secret});
        async move { http.post(server.url("ui/api/login")).json(&body).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(login(admin_secret.clone()).await, 200);
    assert_eq!(login("not-the-secret".into()).await, 401);
    let upgrade = http.get(server.url(&format!("fhir/R4/Agent/{agent}/$upgrade?version=9.9.9"))).bearer_auth(&token);
    let upgraded = upgrade.send().await.unwrap().status().as_u16();
    let upgrade_outcome = if upgraded < 400 {
        "0"
    } else if upgraded < 500 {
        "4"
    } else {
        "8"
    };
    let start = http
        .post(server.url("fhir/R4/Agent/$upgrade?name=clinic-7"))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .body(json!({"version": next_version()}).to_string());
    let created: Value = start.send().await.unwrap().json().await.unwrap();
    let rollout = created["id"].as_str().unwrap_or_else(|| panic!("{created}")).to_string();
    eventually(LIMIT, "the rollout to halt at its canary", || async {
        let (_, s) = server.get(&format!("fhir/R4/Rollout/{rollout}")).await;
        (s["state"] == "halted").then_some(())
    })
    .await;
    // A 403, a rotation, a removal.
    let viewer_token = server.token_for(&viewer_id, &viewer_secret).await;
    let refused = http.post(server.url("fhir/R4/Agent/$upgrade?name=clinic-7")).bearer_auth(&viewer_token);
    assert_eq!(refused.send().await.unwrap().status().as_u16(), 403);
    let rotated = http.post(server.url(&format!("fhir/R4/Agent/{agent}/$rotate-secret"))).bearer_auth(&token);
    let rotated: Value = rotated.send().await.unwrap().json().await.unwrap();
    let new_secret = rotated["parameter"][2]["valueString"].as_str().unwrap().to_string();
    let removed = http.delete(server.url(&format!("fhir/R4/Agent/{agent}"))).bearer_auth(&token);
    assert_eq!(removed.send().await.unwrap().status().as_u16(), 200);
    // An agent made over REST: its event names it (found by an attacker's probe: it named none).
    let (_, made) = server.post("fhir/R4/Agent", json!({"resourceType": "Agent", "name": "made-over-rest"})).await;
    let made = format!("Agent/{}", made["id"].as_str().unwrap());

    let (events, rows) = trail(server, &token, "").await;
    let (admin, viewer) = (format!("ClientApplication/{admin_id}"), format!("ClientApplication/{viewer_id}"));
    let (cli_user, driver) = ("Device/agent-server-cli".to_string(), "Device/edge-agent-server".to_string());
    let (on_agent, on_rollout) = (vec![format!("Agent/{agent}")], vec![format!("Rollout/{rollout}")]);
    let e =
        |s: &str, o: &str, who: &String, what: &[String]| (s.to_string(), o.to_string(), who.clone(), what.to_vec());
    let expected = vec![
        e("client-create", "0", &cli_user, std::slice::from_ref(&admin)),
        e("client-create", "0", &cli_user, std::slice::from_ref(&viewer)),
        e("agent-create", "0", &cli_user, &on_agent),
        // The first is the test helper's, which waited for the agent to connect.
        e("token", "0", &admin, &[]),
        e("token", "0", &admin, &[]),
        e("sign-in", "0", &admin, &[]),
        e("sign-in", "4", &admin, &[]),
        e("upgrade", upgrade_outcome, &admin, &on_agent),
        e("rollout-create", "0", &admin, &on_rollout),
        e("rollout-halt", "8", &driver, &on_rollout),
        e("token", "0", &viewer, &[]),
        e("refused", "4", &viewer, &[]),
        e("agent-rotate", "0", &admin, &on_agent),
        e("agent-remove", "0", &admin, &on_agent),
        e("agent-create", "0", &admin, std::slice::from_ref(&made)),
    ];
    // The agent's own token requests (at each connect, refused once it was rotated) are its own.
    let (by_agent, others): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.2 == agent_client);
    assert_eq!(others, expected, "the session's events, in order");
    assert!(by_agent.iter().all(|r| r.0 == "token") && by_agent.iter().any(|r| r.1 == "0"), "{by_agent:?}");
    let text = serde_json::to_string(&events).unwrap();
    for secret in [&admin_secret, &viewer_secret, &agent_secret, &new_secret, &token, &viewer_token] {
        assert!(!text.contains(secret.as_str()), "a secret or token in the trail");
    }
    // A failed call's event says what its caller was told: here the agent's answer (no 9.9.9 is
    // published).
    let asked = events.iter().find(|e| e["subtype"][0]["code"] == "upgrade").unwrap();
    let said = asked["outcomeDesc"].as_str().unwrap();
    assert!(said.starts_with("400 Bad Request: ") && said.contains("9.9.9"), "{asked}");
    let created = events.iter().find(|e| e["subtype"][0]["code"] == "rollout-create").unwrap();
    assert_eq!(created["outcomeDesc"], "Rollout started: 1 agent chosen", "{created}");
    let halt = events.iter().find(|e| e["subtype"][0]["code"] == "rollout-halt").unwrap();
    assert!(halt["outcomeDesc"].as_str().unwrap().contains("the canary clinic-7 failed"), "{halt}");
    assert!(events.iter().all(|e| e["recorded"].as_str().is_some_and(|r| r.ends_with('Z'))));
    assert_eq!(events[5]["agent"][0]["network"]["address"], "127.0.0.1", "{}", events[5]);

    // Searches: by entity, outcome, type and date; newest first by default; a bad parameter is a 400.
    let (_, on) = trail(server, &token, &format!("&entity=Agent/{agent}&agent={admin_id}")).await;
    let subtypes: Vec<&str> = on.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(subtypes, ["upgrade", "agent-rotate", "agent-remove"]);
    let (_, failed) = trail(server, &token, "&outcome=4&type=110114").await;
    assert!(failed.iter().any(|r| r.0 == "sign-in") && failed.iter().all(|r| r.1 == "4"), "{failed:?}");
    let (_, future) = trail(server, &token, "&date=gt2100-01-01").await;
    assert!(future.is_empty());
    let newest: Value = server.get("fhir/R4/AuditEvent?_count=1").await.1;
    assert_eq!(newest["entry"].as_array().unwrap().len(), 1);
    assert_eq!(newest["link"].as_array().unwrap().iter().filter(|l| l["relation"] == "next").count(), 1);
    let (code, bad) = server.get("fhir/R4/AuditEvent?actor=me").await;
    assert_eq!(code, 400, "{bad}");
    assert!(bad["issue"][0]["details"]["text"].as_str().unwrap().contains("Unknown search parameter: actor"));
    let (code, bad) = server.get("fhir/R4/AuditEvent?outcome=99").await;
    assert_eq!(
        (code, bad["issue"][0]["details"]["text"].as_str()),
        (400, Some("Invalid value '99' provided for outcome (0, 4, 8 or 12) parameter 'outcome'")),
        "an outcome no event can have is an error, not an empty page"
    );

    // The export writes them all, one AuditEvent a line.
    let exported = cli(server, db, &["audit", "export", "--since", "2000-01-01"]);
    let lines: Vec<Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= events.len() && lines.iter().all(|l| l["resourceType"] == "AuditEvent"));
    assert!(!exported.contains(&admin_secret) && !exported.contains(&new_secret));

    if db.is_none() {
        let medplum = MedplumCli::new(server);
        medplum.login(&admin_id, &admin_secret);
        let got = medplum.ok(&["get", &format!("AuditEvent?entity=Agent/{agent}&_sort=date")]).json();
        let codes: Vec<&str> = got["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["subtype"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["agent-create", "upgrade", "agent-rotate", "agent-remove"], "{got}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_of_a_session_is_complete_on_sqlite() {
    scripted_session(Server::start(&["--heartbeat-interval", "0.3"]).await, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_of_a_session_is_complete_on_postgres() {
    let db = shared_db().await;
    let server = Server::start_on_postgres(&db, &["--heartbeat-interval", "0.3"]).await;
    scripted_session(server, Some(&db)).await;
}

/// A flood of calls without valid credentials: each is a 401, the store is written at most the
/// budget a second (not once a call), the server stays healthy, and the trail still counts every
/// refusal (the ones not written one by one are counted in the next event written).
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_without_credentials_is_counted_in_the_trail_not_written_call_by_call() {
    let server = Server::start(&[]).await;
    let token = server.admin_token().await;
    const CALLS: usize = 2_000;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for chunk in (0..CALLS).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|_| {
            let req = server.http.get(server.url("fhir/R4/Agent")).bearer_auth("not-a-token");
            async move { req.send().await.unwrap().status().as_u16() }
        });
        statuses.extend(futures_util::future::join_all(calls).await);
    }
    // The calendar seconds the flood touched (the budget is per second of the clock).
    let seconds = started.elapsed().as_secs() + 2;
    assert!(statuses.iter().all(|s| *s == 401), "every call refused");
    assert_eq!(server.get("healthcheck").await.0, 200);
    // One more, in a later second, carries the count of those not written one by one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let last = server.http.get(server.url("fhir/R4/Agent")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(last.status().as_u16(), 401);
    let (events, _) = trail(&server, &token, "&subtype=refused").await;
    let anonymous: Vec<&Value> = events.iter().filter(|e| e["agent"][0]["who"].is_null()).collect();
    let written = anonymous.len() as u64;
    assert!(written <= 50 * seconds + 1, "{written} events written for {CALLS} calls over {seconds} clock seconds");
    let counted = counted_in(&anonymous);
    assert_eq!(written + counted, CALLS as u64 + 1, "every refusal counted: {written} written, {counted} in counts");
}

/// The calls the events say were not recorded one by one (`… (and N more calls … before it …)`).
fn counted_in(events: &[&Value]) -> u64 {
    let more = |e: &&Value| {
        let n = e["outcomeDesc"].as_str()?.split(" (and ").nth(1)?.split(' ').next()?;
        n.parse::<u64>().ok()
    };
    events.iter().filter_map(more).sum()
}

/// Found by an attacker's probe: an agent's (or a viewer's) token looping on a call it may not make
/// wrote an event a call (4,783 in 5 s, kept for a year). A known caller's failed calls are written
/// 60 at once, then one a second, and those not written one by one are counted in the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_known_callers_flood_of_refused_calls_is_counted_not_written_call_by_call() {
    let server = Server::start(&[]).await;
    let admin = server.admin_token().await;
    let (_, cfg) = server.add_agent("nosy");
    let agent = server.token_for(&toml_value(&cfg, "client_id"), &toml_value(&cfg, "client_secret")).await;
    const CALLS: usize = 600;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for chunk in (0..CALLS).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|_| {
            let req = server.http.get(server.url("fhir/R4/AuditEvent")).bearer_auth(&agent);
            async move { req.send().await.unwrap().status().as_u16() }
        });
        statuses.extend(futures_util::future::join_all(calls).await);
    }
    let seconds = started.elapsed().as_secs() + 2;
    assert!(statuses.iter().all(|s| *s == 403), "every call refused");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let last = server.http.get(server.url("fhir/R4/AuditEvent")).bearer_auth(&agent).send().await.unwrap();
    assert_eq!(last.status().as_u16(), 403);
    let (events, _) = trail(&server, &admin, "&subtype=refused").await;
    let known: Vec<&Value> = events.iter().filter(|e| !e["agent"][0]["who"].is_null()).collect();
    let written = known.len() as u64;
    assert!(written <= 60 + seconds + 1, "{written} events written for {CALLS} calls over {seconds} s");
    let counted = counted_in(&known);
    assert_eq!(written + counted, CALLS as u64 + 1, "every refusal counted: {written} written, {counted} in counts");
}

/// Found by an attacker's probe: a cross-site sign-in is refused before the sign-in throttle, and
/// each wrote its event (1,000 in 0.2 s). Events of calls refused before their caller is known
/// share the budget of those without credentials.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_cross_site_sign_ins_is_counted_in_the_trail_not_written_call_by_call() {
    let server = Server::start(&[]).await;
    let token = server.admin_token().await;
    const CALLS: usize = 500;
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for chunk in (0..CALLS).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|_| {
            let req = server
                .http
                .post(server.url("ui/api/login"))
                .header("origin", "http://elsewhere.example")
                .json(&serde_json::json!({"client_id": "x", "client_secret": "y"}));
            async move { req.send().await.unwrap().status().as_u16() }
        });
        statuses.extend(futures_util::future::join_all(calls).await);
    }
    let seconds = started.elapsed().as_secs() + 2;
    assert!(statuses.iter().all(|s| *s == 403), "every sign-in refused as cross-site");
    let (events, _) = trail(&server, &token, "&subtype=sign-in").await;
    let written = events.iter().filter(|e| e["agent"][0]["who"].is_null()).count() as u64;
    assert!(written >= 1, "the flood is in the trail");
    assert!(written <= 50 * seconds, "{written} events written for {CALLS} calls over {seconds} clock seconds");
}
