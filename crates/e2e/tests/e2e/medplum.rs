//! agent-server as a drop-in for Medplum's clients: the real `medplum` CLI (from npm) and what
//! Medplum's agent does at start-up, against a real server with real agents; `$stats` to an agent
//! that ignores `agent:stats`, as Medplum's does.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent_base::build_info::SOURCE_VERSION;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

use edge_agent_e2e::medplum::{medplum_agent_startup, MedplumCli, Socket};
use edge_agent_e2e::rig::{rig, LIMIT};
use edge_agent_e2e::{next_build, next_version, toml_value, AgentHome};

/// `(id, status, version)` of each agent in a `$bulk-status` answer.
fn statuses(bundle: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let p = &e["resource"]["parameter"];
            let result = &p[1]["resource"]["parameter"];
            (
                p[0]["resource"]["id"].as_str().unwrap().to_string(),
                result[0]["valueCode"].as_str().unwrap().to_string(),
                result[1]["valueString"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_medplum_cli_signs_in_reads_status_and_upgrades() {
    let rig = rig().await;
    let (a, home_a, _pa) = rig.agent("mp-alpha", Path::new(edge_agent_e2e::agent_bin()), "").await;
    let (b, _home_b, _pb) = rig.agent("mp-beta", Path::new(edge_agent_e2e::agent_bin()), "").await;
    let cli = MedplumCli::new(&rig.server);
    let (admin_id, admin_secret) = rig.server.admin();
    cli.login(&admin_id, &admin_secret);

    let me = cli.ok(&["whoami"]).stdout;
    assert!(me.contains(&format!("Profile: Administrator (ClientApplication/{admin_id})")), "{me}");
    assert!(me.contains("Project: edge-agent-server (Project/"), "{me}");
    let token = cli.ok(&["token"]).stdout.trim().to_string();
    let resp = rig.server.http.get(rig.server.url(&format!("fhir/R4/Agent/{a}"))).bearer_auth(&token).send().await;
    assert_eq!(resp.unwrap().status().as_u16(), 200, "the CLI's token works on the REST API");

    let table = cli.ok(&["agent", "status", &a]).stdout;
    assert!(
        table.contains("1 successful response(s)") && table.contains(&a) && table.contains("'connected'"),
        "{table}"
    );
    let both = cli.ok(&["agent", "status", &a, &b, "--output", "json"]).json();
    let (_, held) = rig.server.get(&format!("fhir/R4/Agent/$bulk-status?_id={a},{b}")).await;
    assert_eq!(statuses(&both), statuses(&held), "the CLI shows what the server holds");
    assert_eq!(statuses(&both).len(), 2);
    let by_criteria = cli.ok(&["agent", "status", "--criteria", "Agent?name=mp-", "--output", "json"]).json();
    assert_eq!(statuses(&by_criteria), statuses(&held));

    let reload = cli.ok(&["agent", "reload-config", &a, &b]).stdout;
    assert!(reload.contains("2 successful response(s)"), "{reload}");

    let next = next_version();
    let upgraded = cli.ok(&["agent", "upgrade", &a, "--agentVersion", &next]).stdout;
    assert!(upgraded.contains("1 successful response(s)") && !upgraded.contains("failed"), "{upgraded}");
    rig.server.wait_status(&a, "connected", &next, LIMIT).await;
    assert!(edge_agent_e2e::rig::same_bytes(&home_a.bin(), next_build()), "the next build is installed");
    let forced = cli.ok(&["agent", "upgrade", &a, "--agentVersion", &next, "--force"]).stdout;
    assert!(forced.contains("1 successful response(s)") && !forced.contains("failed"), "{forced}");
    rig.server.wait_status(&a, "connected", &next, LIMIT).await;

    let status = cli.ok(&["get", &format!("Agent/{a}/$status")]).json();
    assert_eq!(status["parameter"][1]["valueString"], next.as_str());
    let bulk = cli.ok(&["get", &format!("Agent/$bulk-status?_id={a},{b}")]).json();
    assert_eq!(statuses(&bulk), statuses(&rig.server.get(&format!("fhir/R4/Agent/$bulk-status?_id={a},{b}")).await.1));
    let noop = cli.ok(&["get", &format!("Agent/{b}/$upgrade?version={SOURCE_VERSION}")]).json();
    assert_eq!(noop["id"], "ok", "already on that version: {noop}");
    let exact = cli.ok(&["get", "Agent?name:exact=mp-beta"]).json();
    assert_eq!((exact["total"].as_u64(), exact["entry"][0]["resource"]["id"].as_str()), (Some(1), Some(b.as_str())));
    let sorted = cli.ok(&["get", "Agent?name=mp-&_sort=-name"]).json();
    let names: Vec<&str> =
        sorted["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["name"].as_str()).collect();
    assert_eq!(names, ["mp-beta", "mp-alpha"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_credentials_read_their_own_agent_and_nothing_else() {
    let server = edge_agent_e2e::Server::start(&[]).await;
    let (own, cfg) = server.add_agent("medplum-agent");
    let (other, _) = server.add_agent("someone-else");
    let (client_id, secret) = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));

    let (agent, _socket) = medplum_agent_startup(&server, &client_id, &secret, &own).await;
    assert_eq!((agent["resourceType"].as_str(), agent["id"].as_str()), (Some("Agent"), Some(own.as_str())));
    server.wait_status(&own, "connected", "unknown", Duration::from_secs(10)).await;

    // The real Medplum client, signed in with the agent's credentials, reads the same resource.
    let cli = MedplumCli::new(&server);
    let env = [
        ("MEDPLUM_BASE_URL", server.url("/")),
        ("MEDPLUM_CLIENT_ID", client_id.clone()),
        ("MEDPLUM_CLIENT_SECRET", secret.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let read = cli.run_with(&["get", &format!("Agent/{own}")], &env);
    assert_eq!(read.code, Some(0), "{read:?}");
    assert_eq!(read.json()["id"], own.as_str());
    let refused = cli.run_with(&["get", &format!("Agent/{other}")], &env);
    assert_ne!(refused.code, Some(0), "{refused:?}");

    let http = reqwest::Client::new();
    let token = server.token_for(&client_id, &secret).await;
    let forbidden = [
        ("GET", format!("fhir/R4/Agent/{other}")),
        ("GET", "fhir/R4/Agent".to_string()),
        ("GET", format!("fhir/R4/Agent/{own}/$status")),
        ("GET", format!("fhir/R4/Agent/$bulk-status?_id={own}")),
        ("GET", format!("fhir/R4/Agent/{own}/$upgrade")),
        ("POST", "fhir/R4/Agent".to_string()),
        ("POST", format!("fhir/R4/Agent/{own}/$reload-config")),
        ("POST", format!("fhir/R4/Agent/{own}/$push")),
        ("GET", format!("fhir/R4/Agent/{own}/$fetch-logs")),
        ("GET", format!("fhir/R4/Agent/{own}/$stats")),
        ("POST", format!("fhir/R4/Agent/$upgrade?_id={own}")),
        ("GET", "fhir/R4/Rollout".to_string()),
        ("POST", "fhir/R4/Rollout/some-id/$cancel".to_string()),
    ];
    for (method, path) in forbidden {
        for basic in [false, true] {
            let req = http.request(method.parse().unwrap(), server.url(&path));
            let req = if basic { req.basic_auth(&client_id, Some(&secret)) } else { req.bearer_auth(&token) };
            let resp = req.body(r#"{"resourceType":"Agent","name":"sneaky"}"#).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 403, "{method} {path}");
            let outcome: Value = resp.json().await.unwrap();
            assert_eq!(outcome["issue"][0]["code"], "forbidden", "{outcome}");
        }
    }
    let (_, search) = server.get("fhir/R4/Agent?name=sneaky").await;
    assert_eq!(search["total"], 0, "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn version_is_known_as_soon_as_an_agent_connects() {
    // The agent's own heartbeats are every 10 s here: the version must come from the server's
    // heartbeat request right after the handshake, not from the next tick.
    let server = edge_agent_e2e::Server::start(&[]).await;
    let (id, cfg) = server.add_agent("fresh");
    let home = AgentHome::new(&format!("{cfg}heartbeat_interval = 10\n"));
    let _agent = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, Duration::from_secs(8)).await;
}

/// Plays Medplum's agent on `socket`: answers heartbeats with its version, and ignores
/// `agent:stats` (which it does not implement), counting the ones it was sent.
fn ignore_stats(mut socket: Socket, asked: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(frame)) = socket.next().await {
            let Frame::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            match v["type"].as_str() {
                Some("agent:heartbeat:request") => {
                    let reply =
                        json!({"type": "agent:heartbeat:response", "version": "4.2.0", "callback": v["callback"]});
                    if socket.send(Frame::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
                Some("agent:stats:request") => {
                    asked.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    })
}

/// `$stats` on `path`: (status, the outcome's text, how long the answer took).
async fn stats(server: &edge_agent_e2e::Server, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (code, body) = server.get(path).await;
    let text = body["issue"][0]["details"]["text"].as_str().map(str::to_owned);
    let text = text.unwrap_or_else(|| body.to_string());
    (code, text, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_unanswered_once_is_refused_at_once_until_the_agent_reconnects() {
    let server = edge_agent_e2e::Server::start(&[]).await;
    let (id, cfg) = server.add_agent("medplum-no-stats");
    let (client_id, secret) = (toml_value(&cfg, "client_id"), toml_value(&cfg, "client_secret"));
    let asked = Arc::new(AtomicUsize::new(0));
    let (_, socket) = medplum_agent_startup(&server, &client_id, &secret, &id).await;
    let fake = ignore_stats(socket, asked.clone());
    server.wait_status(&id, "connected", "4.2.0", LIMIT).await;

    // The first one waits for its timeout, as a request to any agent that does not answer.
    let (code, text, took) = stats(&server, &format!("fhir/R4/Agent/{id}/$stats?timeout=1000")).await;
    assert_eq!((code, text.as_str()), (400, "Timeout"));
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);

    // The next ones (default timeout: 10 s) are answered at once, single and bulk, and not sent.
    let (code, text, took) = stats(&server, &format!("fhir/R4/Agent/{id}/$stats")).await;
    assert_eq!(code, 400);
    assert!(text.starts_with("Agent does not answer agent:stats"), "{text}");
    assert!(text.contains("asked again once it reconnects"), "{text}");
    assert!(took < Duration::from_secs(3), "answered at once, not after the timeout: {took:?}");
    let (code, bulk) = server.get(&format!("fhir/R4/Agent/$stats?_id={id}")).await;
    assert_eq!(code, 200);
    assert!(bulk.to_string().contains("Agent does not answer agent:stats"), "{bulk}");
    // Other requests still go to it.
    let (code, logs, _) = stats(&server, &format!("fhir/R4/Agent/{id}/$fetch-logs?timeout=500")).await;
    assert_eq!((code, logs.as_str()), (400, "Timeout"));
    assert_eq!(asked.load(Ordering::SeqCst), 1, "no $stats was sent again on the same socket");

    // Reconnected (a restart, say): it is asked again.
    fake.abort();
    let _ = fake.await;
    server.wait_status(&id, "disconnected", "4.2.0", LIMIT).await;
    let (_, socket) = medplum_agent_startup(&server, &client_id, &secret, &id).await;
    let _fake = ignore_stats(socket, asked.clone());
    server.wait_status(&id, "connected", "4.2.0", LIMIT).await;
    let (code, text, took) = stats(&server, &format!("fhir/R4/Agent/{id}/$stats?timeout=1000")).await;
    assert_eq!((code, text.as_str()), (400, "Timeout"));
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 2);
}
