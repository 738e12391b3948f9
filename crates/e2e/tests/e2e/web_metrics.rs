//! `/metrics`: the admin token on the main listener, none on `--metrics-listen`; `promtool check
//! metrics` accepts the exposition; the agent gauges match `$bulk-status` for the same fleet; the
//! upgrade, WebSocket, HTTP and process figures move with what happened.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use edge_agent_e2e::{eventually, sim, Server};

/// Samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// `prefix{label="x"}` samples as x → value.
fn by_label(s: &BTreeMap<String, f64>, prefix: &str) -> BTreeMap<String, u64> {
    s.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.split('"').nth(1)?.to_string(), *v as u64)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Counts by status and by version, from `$bulk-status` pages.
async fn bulk_counts(server: &Server) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut states, mut versions) = (BTreeMap::new(), BTreeMap::new());
    for offset in (0..).step_by(100) {
        let (code, v) = server.get(&format!("fhir/R4/Agent/$bulk-status?_count=100&_offset={offset}")).await;
        if code != 200 {
            break;
        }
        for e in v["entry"].as_array().unwrap() {
            let params = e["resource"]["parameter"][1]["resource"]["parameter"].as_array().unwrap();
            let get = |n: &str| params.iter().find(|p| p["name"] == n).unwrap();
            *states.entry(get("status")["valueCode"].as_str().unwrap().to_string()).or_insert(0) += 1;
            *versions.entry(get("version")["valueString"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    (states, versions)
}

pub(crate) fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_gauges_match_bulk_status() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server::start(&["--metrics-listen", &format!("127.0.0.1:{port}")]).await;
    let mut fleet = sim::fleet(&server, "m", &["2.0.0", "2.1.0", "2.2.0"], 40, true).await;
    let _spare = sim::fleet(&server, "spare", &["2.0.0"], 6, false).await;
    let token = server.admin_token().await;
    for (agent, version) in [(&fleet[10], "2.3.0"), (&fleet[11], "2.3.0-bad"), (&fleet[12], "2.4.0-missing")] {
        let url = server.url(&format!("fhir/R4/Agent/{}/$upgrade?version={version}", agent.id));
        server.http.get(url).bearer_auth(&token).send().await.unwrap();
    }
    for a in fleet.iter_mut().take(5) {
        a.stop();
    }
    eventually(Duration::from_secs(30), "35 connected, 5 disconnected", || async {
        let (states, _) = bulk_counts(&server).await;
        (states.get("connected") == Some(&35) && states.get("disconnected") == Some(&5)).then_some(())
    })
    .await;

    let url = server.url("metrics");
    assert_eq!(server.http.get(&url).send().await.unwrap().status().as_u16(), 401, "no token, no metrics");
    let (_, config) = server.add_agent("metrics-agent-creds");
    let field = |k: &str| config.lines().find(|l| l.starts_with(k)).unwrap().split('"').nth(1).unwrap().to_string();
    let agent_token = server.token_for(&field("client_id"), &field("client_secret")).await;
    let resp = server.http.get(&url).bearer_auth(&agent_token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403, "agent credentials get no metrics");
    let resp = server.http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    promtool_accepts(&text);

    // The scraper's own address needs no token, and tells the same.
    let open = server.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(open.status().as_u16(), 200);
    let open = open.text().await.unwrap();
    promtool_accepts(&open);

    let s = samples(&open);
    let (states, versions) = bulk_counts(&server).await;
    assert_eq!(by_label(&s, "agent_server_agents{"), states, "state gauges match $bulk-status");
    assert_eq!(by_label(&s, "agent_server_agents_by_version{"), versions, "version gauges match $bulk-status");
    assert_eq!(versions.get("2.3.0"), Some(&1));
    let upgrades = by_label(&s, "agent_server_upgrade_results_total{");
    let want: BTreeMap<String, u64> =
        [("succeeded", 1), ("rolled_back", 1), ("failed", 1)].map(|(k, v)| (k.to_string(), v)).into();
    assert_eq!(upgrades, want);
    assert_eq!(s["agent_server_upgrade_results_total{outcome=\"timed_out\"}"], 0.0);
    assert_eq!(s["agent_server_websocket_connections"], 35.0);
    assert!(s["agent_server_websocket_messages_total{direction=\"received\"}"] >= 40.0);
    assert!(s["agent_server_websocket_messages_total{direction=\"sent\"}"] >= 40.0);
    let route = "agent_server_http_request_duration_seconds_count{method=\"GET\",route=\"/fhir/R4/Agent/{id}/{op}\"}";
    assert_eq!(s[route], 3.0, "three $upgrade calls timed by their route");
    assert!(s["process_resident_memory_bytes"] > 1_000_000.0);
    assert!(s["process_open_fds"] >= 35.0, "at least one descriptor per agent socket");

    // Members of an open rollout, by state, as the rollout itself counts them.
    let start = server.http.post(server.url("fhir/R4/Agent/$upgrade?name=m-000")).bearer_auth(&token);
    let resp = start.header("prefer", "respond-async").body(json!({"version": "2.4.0"}).to_string()).send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let pause = server.http.post(server.url(&format!("fhir/R4/Rollout/{id}/$pause"))).bearer_auth(&token);
    assert_eq!(pause.send().await.unwrap().status().as_u16(), 200);
    let counts = eventually(Duration::from_secs(30), "the paused rollout to settle", || async {
        let (_, st) = server.get(&format!("fhir/R4/Rollout/{id}")).await;
        (st["state"] == "paused" && st["counts"]["in-progress"] == 0).then(|| st["counts"].clone())
    })
    .await;
    let want: BTreeMap<String, u64> = counts
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, v)| *v > 0)
        .collect();
    assert_eq!(want.values().sum::<u64>(), 10, "{counts}");
    let text = server.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(by_label(&samples(&text), "agent_server_rollout_members{"), want);
}
