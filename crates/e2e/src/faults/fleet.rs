//! The agents of a fault run. Simulated ones: a real WebSocket each, through nginx, that answers
//! heartbeats and upgrades as an agent does, records every upgrade request it receives, and
//! reconnects (with jitter) whenever its socket is lost. Real ones: the `agent` binary, installed
//! from the current build and upgraded to the next.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as Frame;

use super::history::{Event, History};
use super::schedule::Rng;
use crate::home::AgentHome;
use crate::process::Proc;

pub struct Sim {
    pub id: String,
    pub name: String,
    /// The version it runs now.
    pub version: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates the agent `name` through `base` (an admin `token`), and runs it against `ws`.
pub async fn sim(
    http: &reqwest::Client,
    (base, ws, token): (&str, &str, &str),
    name: &str,
    version: &str,
    history: &History,
    seed: u64,
) -> Sim {
    let body = json!({"resourceType": "Agent", "name": name});
    let mut tries = 0;
    let id = loop {
        let resp = http.post(format!("{base}fhir/R4/Agent")).bearer_auth(token).body(body.to_string()).send().await;
        let v: Value = match resp {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        match v["id"].as_str() {
            Some(id) => break id.to_string(),
            None if tries < 20 => tries += 1,
            None => panic!("agent {name} not created: {v}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let version = Arc::new(Mutex::new(version.to_string()));
    let task = tokio::spawn(run(
        (ws.to_string(), token.to_string(), id.clone()),
        version.clone(),
        history.clone(),
        Rng::new(seed),
    ));
    Sim { id, name: name.to_string(), version, task }
}

async fn run((url, token, id): (String, String, String), version: Arc<Mutex<String>>, history: History, mut rng: Rng) {
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(3600), session(&url, &token, &id, &version, &history)).await;
        // Lost: back in a moment, spread out as real agents' backoff spreads them.
        tokio::time::sleep(Duration::from_millis(rng.between(200, 1500))).await;
    }
}

/// One connection, until it is lost.
async fn session(url: &str, token: &str, id: &str, version: &Mutex<String>, history: &History) {
    let Ok(Ok((ws, _))) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url)).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": id});
    if sink.send(Frame::text(hello.to_string())).await.is_err() {
        return;
    }
    while let Some(Ok(frame)) = stream.next().await {
        let Frame::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let callback = v["callback"].clone();
        let reply = match v["type"].as_str() {
            Some("agent:heartbeat:request") => {
                json!({"type": "agent:heartbeat:response", "version": *version.lock().unwrap()})
            }
            Some("agent:upgrade:request") => {
                let cb = callback.as_str().unwrap_or_default().to_string();
                history.record(Event::Asked { agent: id.to_string(), callback: cb });
                let want = v["version"].as_str().unwrap_or("latest").to_string();
                if semver::Version::parse(&want).is_ok() && !want.ends_with("-missing") {
                    *version.lock().unwrap() = want;
                    json!({"type": "agent:upgrade:response", "statusCode": 200, "callback": callback})
                } else {
                    let body = format!("Error during upgrading to version 'v{want}'. '{want}' is not a valid version");
                    json!({"type": "agent:error", "body": body, "callback": callback})
                }
            }
            _ => continue,
        };
        let upgraded = reply["type"] == "agent:upgrade:response";
        if sink.send(Frame::text(reply.to_string())).await.is_err() {
            return;
        }
        if upgraded {
            // A real agent reports its new version on its next heartbeat; do so now.
            let hb = json!({"type": "agent:heartbeat:response", "version": *version.lock().unwrap()});
            if sink.send(Frame::text(hb.to_string())).await.is_err() {
                return;
            }
        }
    }
}

/// A real agent: its id, home and process.
pub struct Real {
    pub id: String,
    pub name: String,
    pub home: AgentHome,
    pub proc: Proc,
}

impl Real {
    /// The upgrade requests its log shows it received (every process of it writes there).
    pub fn asked(&self) -> Vec<String> {
        self.proc
            .log()
            .lines()
            .filter(|l| l.contains("upgrade requested by the server"))
            .filter_map(|l| {
                let rest = l.split("callback=").nth(1)?;
                let value = rest.split_whitespace().next()?.trim_matches('"');
                (!value.is_empty()).then(|| value.to_string())
            })
            .collect()
    }

    /// Its journal's state, if it has one.
    fn journal_state(&self) -> Option<String> {
        self.home.journal().map(|j| j["state"].as_str().unwrap_or_default().to_string())
    }

    /// Whether its journal holds an upgrade that has not finished.
    pub fn upgrading(&self) -> bool {
        self.before_swap() || self.journal_state().as_deref() == Some("trial")
    }

    /// Whether it is upgrading and has not swapped its binary yet (accepted, downloading,
    /// verifying): a worker killed now leaves an upgrade the next worker takes over.
    pub fn before_swap(&self) -> bool {
        matches!(self.journal_state().as_deref(), Some("accepted" | "downloading" | "verifying"))
    }
}
