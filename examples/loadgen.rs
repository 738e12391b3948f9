//! Load generator for the benchmark: holds many agent connections open against a real
//! `agent-server`, each handshaking as its own `Agent` and answering heartbeats like an agent.
//!
//! `loadgen --server http://127.0.0.1:8103/ --client-id ID --client-secret SECRET --count 1000`
//! creates the agents it needs (REST, as an admin), connects them, prints `ready <n>` and holds the
//! connections until its standard input closes. `--versions 1.2.0,1.3.0` spreads the agents over
//! those versions (round robin), as their heartbeats report them.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;

struct Args {
    server: String,
    client_id: String,
    client_secret: String,
    count: usize,
    prefix: String,
    versions: Vec<String>,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut out = Args {
        server: String::new(),
        client_id: String::new(),
        client_secret: String::new(),
        count: 100,
        prefix: "load".into(),
        versions: vec!["0.0.1-load".into()],
    };
    while let Some(k) = a.next() {
        let v = a.next().expect("every flag takes a value");
        match k.as_str() {
            "--server" => out.server = v,
            "--client-id" => out.client_id = v,
            "--client-secret" => out.client_secret = v,
            "--count" => out.count = v.parse().expect("--count takes a number"),
            "--prefix" => out.prefix = v,
            "--versions" => out.versions = v.split(',').map(str::to_owned).collect(),
            other => panic!("unknown flag {other}"),
        }
    }
    out
}

async fn token(http: &reqwest::Client, a: &Args) -> String {
    let v: Value = http
        .post(format!("{}oauth2/token", a.server))
        .form(&[("grant_type", "client_credentials"), ("client_id", &a.client_id), ("client_secret", &a.client_secret)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().expect("admin token").to_string()
}

/// The ids of `count` agents named `<prefix>-<n>`, created as needed.
async fn agents(http: &reqwest::Client, a: &Args, token: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(a.count);
    for n in 0..a.count {
        let body = json!({"resourceType": "Agent", "name": format!("{}-{n:05}", a.prefix)});
        let v: Value = http
            .post(format!("{}fhir/R4/Agent", a.server))
            .bearer_auth(token)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(v["id"].as_str().expect("created agent").to_string());
    }
    ids
}

async fn hold(ws_url: String, token: String, agent_id: String, version: String, ready: tokio::sync::mpsc::Sender<()>) {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true).await.expect("connect");
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": agent_id});
    sink.send(Frame::text(hello.to_string())).await.unwrap();
    let mut live = false;
    while let Some(Ok(frame)) = stream.next().await {
        let Frame::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        match v["type"].as_str() {
            Some("agent:connect:response") if !live => {
                live = true;
                let _ = ready.send(()).await;
            }
            Some("agent:heartbeat:request") => {
                let reply = json!({"type": "agent:heartbeat:response", "version": version});
                if sink.send(Frame::text(reply.to_string())).await.is_err() {
                    return;
                }
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let http = reqwest::Client::new();
    let token = token(&http, &a).await;
    let ids = agents(&http, &a, &token).await;
    let ws_url = format!("{}ws/agent", a.server.replacen("http", "ws", 1));
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1024);
    for (n, chunk) in ids.chunks(200).enumerate() {
        for (i, id) in chunk.iter().enumerate() {
            let version = a.versions[(n * 200 + i) % a.versions.len()].clone();
            tokio::spawn(hold(ws_url.clone(), token.clone(), id.clone(), version, ready_tx.clone()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..ids.len() {
        ready.recv().await;
    }
    println!("ready {}", ids.len());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}
