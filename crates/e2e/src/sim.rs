//! Simulated agents for fleet-sized tests: each is a real `Agent` on the real server with a real
//! WebSocket that handshakes, answers heartbeats with its version, and answers upgrades the way
//! an agent does (a valid version: `agent:upgrade:response` and the new version from then on;
//! `…-bad`: the rollback error; `…-missing`, or anything else: the error for a version no release
//! source publishes).

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::cluster::Api;
use crate::server::Server;

pub struct SimAgent {
    pub id: String,
    pub name: String,
    pub version: String,
    task: Option<JoinHandle<()>>,
}

impl SimAgent {
    /// Closes its socket: the agent becomes disconnected.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates `n` agents named `<prefix>-<i>`, the i-th on `versions[i % len]`, and connects each
/// unless `connect` is false (then it stays `unknown`: never seen).
pub async fn fleet(server: &Server, prefix: &str, versions: &[&str], n: usize, connect: bool) -> Vec<SimAgent> {
    let token = server.admin_token().await;
    let ws = format!("ws://{}/ws/agent", server.addr);
    create(&server.http, &server.url(""), &ws, &token, (prefix, versions, n, connect)).await
}

/// The same through any node of a cluster, or its load balancer (`api`).
pub async fn fleet_via(api: &Api, prefix: &str, versions: &[&str], n: usize, connect: bool) -> Vec<SimAgent> {
    let token = api.token().await;
    let ws = format!("{}ws/agent", api.base.replacen("http", "ws", 1));
    create(&api.http, &api.base, &ws, &token, (prefix, versions, n, connect)).await
}

async fn create(
    http: &reqwest::Client,
    base: &str,
    ws: &str,
    token: &str,
    (prefix, versions, n, connect): (&str, &[&str], usize, bool),
) -> Vec<SimAgent> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}-{i:04}");
        let body = json!({"resourceType": "Agent", "name": name, "identifier": [{"system": "urn:site", "value": format!("{prefix}-site-{i}")}]});
        let resp = http.post(format!("{base}fhir/R4/Agent")).bearer_auth(token).body(body.to_string());
        let v: Value = resp.send().await.unwrap().json().await.unwrap();
        let id = v["id"].as_str().unwrap_or_else(|| panic!("agent not created: {v}")).to_string();
        let version = versions[i % versions.len()].to_string();
        let task = connect.then(|| tokio::spawn(run(ws.to_string(), token.to_string(), id.clone(), version.clone())));
        out.push(SimAgent { id, name, version, task });
    }
    out
}

fn answer(v: &Value, version: &mut String) -> Option<Value> {
    let callback = v.get("callback").cloned().unwrap_or(Value::Null);
    match v["type"].as_str()? {
        "agent:heartbeat:request" => Some(json!({"type": "agent:heartbeat:response", "version": version})),
        "agent:upgrade:request" => {
            let want = v["version"].as_str().unwrap_or("latest").to_string();
            if want.ends_with("-bad") {
                let body = format!("Failed to upgrade to version {want}. Agent still running with version {version}");
                Some(json!({"type": "agent:error", "body": body, "callback": callback}))
            } else if semver::Version::parse(&want).is_ok() && !want.ends_with("-missing") {
                *version = want;
                Some(json!({"type": "agent:upgrade:response", "statusCode": 200, "callback": callback}))
            } else {
                // What an agent answers for a version no release source publishes.
                let body = format!("Error during upgrading to version 'v{want}'. '{want}' is not a valid version");
                Some(json!({"type": "agent:error", "body": body, "callback": callback}))
            }
        }
        _ => None,
    }
}

async fn run(url: String, token: String, id: String, mut version: String) {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("simulated agent connects");
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": id});
    sink.send(Frame::text(hello.to_string())).await.unwrap();
    while let Some(Ok(frame)) = stream.next().await {
        let Frame::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(reply) = answer(&v, &mut version) {
            let new_version = v["type"] == "agent:upgrade:request" && reply["type"] == "agent:upgrade:response";
            if sink.send(Frame::text(reply.to_string())).await.is_err() {
                return;
            }
            if new_version {
                // A real agent reports its new version on its next heartbeat; do so now.
                let hb = json!({"type": "agent:heartbeat:response", "version": version});
                if sink.send(Frame::text(hb.to_string())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An agent that answers heartbeats and records every other message the server sends it.
pub struct Recorder {
    pub agent: SimAgent,
    pub received: Arc<Mutex<Vec<Value>>>,
}

/// Creates the agent `name` and connects it as a [`Recorder`] on `version`.
pub async fn recorder(server: &Server, name: &str, version: &str) -> Recorder {
    let mut made = fleet(server, name, &[version], 1, false).await;
    let mut agent = made.pop().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let ws = format!("ws://{}/ws/agent", server.addr);
    let (token, id, log) = (server.admin_token().await, agent.id.clone(), received.clone());
    let version = version.to_string();
    agent.task = Some(tokio::spawn(async move {
        let (ws, _) = tokio_tungstenite::connect_async(ws).await.expect("recording agent connects");
        let (mut sink, mut stream) = ws.split();
        let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": id});
        sink.send(Frame::text(hello.to_string())).await.unwrap();
        while let Some(Ok(Frame::Text(text))) = stream.next().await {
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            match v["type"].as_str() {
                Some("agent:heartbeat:request") => {
                    let hb = json!({"type": "agent:heartbeat:response", "version": version});
                    if sink.send(Frame::text(hb.to_string())).await.is_err() {
                        return;
                    }
                }
                Some("agent:connect:response") => {}
                _ => log.lock().unwrap().push(v),
            }
        }
    }));
    Recorder { agent, received }
}
