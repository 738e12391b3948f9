//! `$reload-config`, `$fetch-logs`, `$stats` and `$push`: requests relayed to real agents, single
//! and bulk, and what the caller hears back.

use std::time::Duration;

use edge_agent_base::build_info::SOURCE_VERSION;
use serde_json::{json, Value};

use edge_agent_e2e::{AgentHome, Proc, Server, FAST};

async fn connected_agent(server: &Server, name: &str) -> (String, AgentHome, Proc) {
    let (id, cfg) = server.add_agent(name);
    let home = AgentHome::new(&format!("{cfg}{FAST}"));
    let proc = home.run();
    server.wait_status(&id, "connected", SOURCE_VERSION, Duration::from_secs(15)).await;
    (id, home, proc)
}

fn text(outcome: &Value) -> &str {
    outcome["issue"][0]["details"]["text"].as_str().unwrap_or_default()
}

/// The `result` of each agent in a bulk answer, by agent id.
fn results(bundle: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = bundle["entry"]
        .as_array()
        .unwrap_or_else(|| panic!("not a bundle: {bundle}"))
        .iter()
        .map(|e| {
            let p = &e["resource"]["parameter"];
            (p[0]["resource"]["id"].as_str().unwrap().to_string(), p[1]["resource"].clone())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_config_fetch_logs_and_stats_single_and_bulk() {
    let server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    let (a, _home_a, _pa) = connected_agent(&server, "relay-a").await;
    let (b, _home_b, _pb) = connected_agent(&server, "relay-b").await;
    let (offline, _) = server.add_agent("relay-offline");

    let (code, ok) = server.get(&format!("fhir/R4/Agent/{a}/$reload-config")).await;
    assert_eq!((code, ok["id"].as_str(), text(&ok)), (200, Some("ok"), "All OK"), "{ok}");
    let (code, bulk) = server.get("fhir/R4/Agent/$reload-config?name=relay-").await;
    assert_eq!(code, 200);
    let by_agent = results(&bulk);
    assert_eq!(by_agent.len(), 3);
    for (id, result) in &by_agent {
        if *id == offline {
            assert_eq!(text(result), "Agent not connected");
        } else {
            assert_eq!(result["id"], "ok", "{id}: {result}");
        }
    }

    let (code, logs) = server.get(&format!("fhir/R4/Agent/{a}/$fetch-logs?limit=5")).await;
    assert_eq!(code, 200, "{logs}");
    assert_eq!(logs["parameter"][0]["name"], "logs");
    let lines: Vec<Value> = logs["parameter"][0]["valueString"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines.len() <= 5, "{lines:?}");
    assert!(lines.iter().all(|l| l["msg"].is_string() && l["level"].is_string()), "{lines:?}");
    let (code, bulk) = server
        .post(
            &format!("fhir/R4/Agent/$fetch-logs?_id={a},{b}"),
            json!({"resourceType": "Parameters",
        "parameter": [{"name": "limit", "valueInteger": 2}]}),
        )
        .await;
    assert_eq!(code, 200, "{bulk}");
    for (_, result) in results(&bulk) {
        let text = result["parameter"][0]["valueString"].as_str().unwrap();
        assert!((1..=2).contains(&text.lines().count()), "{text}");
    }
    let (code, bad) = server.get(&format!("fhir/R4/Agent/{a}/$fetch-logs?limit=many")).await;
    assert_eq!((code, text(&bad)), (400, "Invalid value 'many' provided for integer parameter 'limit'"));

    let (code, stats) = server.get(&format!("fhir/R4/Agent/{b}/$stats")).await;
    assert_eq!(code, 200, "{stats}");
    let inner: Value = serde_json::from_str(stats["parameter"][0]["valueString"].as_str().unwrap()).unwrap();
    assert_eq!(inner["version"], SOURCE_VERSION);
    let (code, gone) = server.get(&format!("fhir/R4/Agent/{offline}/$stats")).await;
    assert_eq!((code, text(&gone)), (400, "Agent not connected"));
}

#[tokio::test(flavor = "multi_thread")]
async fn push_relays_a_transmit_request_and_the_agents_answer_reaches_the_caller() {
    let server = Server::start(&["--heartbeat-interval", "0.3"]).await;
    let (id, _home, _agent) = connected_agent(&server, "pusher").await;
    let path = format!("fhir/R4/Agent/{id}/$push");
    let message = |wait: bool| {
        json!({"destination": "mllp://127.0.0.1:2575", "contentType": "x-application/hl7-v2+er7",
               "body": "MSH|^~\\&|ADT1|MCM|LABADT|MCM|198808181126|SECURITY|ADT^A01|MSG00001|P|2.5", "waitForResponse": wait})
    };

    // The agent has no channels: its answer, not a timeout, reaches the caller.
    let (code, answer) = server.post(&path, message(true)).await;
    assert_eq!(code, 400, "{answer}");
    assert_eq!(text(&answer), "This agent has no channels: agent:transmit:request is not supported");
    // The same as a Parameters resource.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "destination", "valueString": "mllp://127.0.0.1:2575"},
        {"name": "contentType", "valueString": "x-application/hl7-v2+er7"},
        {"name": "body", "valueString": "MSH|^~\\&|"},
        {"name": "waitForResponse", "valueBoolean": true}]});
    let (code, answer) = server.post(&path, params).await;
    assert_eq!((code, text(&answer)), (400, "This agent has no channels: agent:transmit:request is not supported"));
    // By identifier search at the type level, as Medplum allows.
    let (code, answer) = server.post(&format!("fhir/R4/Agent/$push?_id={id}"), message(true)).await;
    assert_eq!(code, 400, "{answer}");
    assert!(text(&answer).contains("no channels"), "{answer}");

    let (code, sent) = server.post(&path, message(false)).await;
    assert_eq!((code, sent["id"].as_str()), (200, Some("ok")), "not waiting: sent is enough");

    let mut device = message(true);
    device["destination"] = json!("Device/123");
    let (code, refused) = server.post(&path, device).await;
    assert_eq!(code, 400);
    assert!(text(&refused).contains("this server keeps no Device resources"), "{refused}");
    let (code, missing) = server.post(&path, json!({"destination": "mllp://h:1", "contentType": "text/plain"})).await;
    assert_eq!((code, text(&missing)), (400, "Missing body parameter"));
    let mut slow = message(true);
    slow["waitTimeout"] = json!(61_000);
    assert_eq!(server.post(&path, slow).await.0, 400);
    let (code, wrong) = server.post(&path, json!(["not", "parameters"])).await;
    assert_eq!((code, text(&wrong)), (400, "Expected a Parameters resource or a JSON object of parameters"));
}
