//! Load generator for the benchmark: holds many agent connections open against a real
//! `agent-server`, each handshaking as its own `Agent` and answering heartbeats like an agent.
//!
//! `loadgen --server http://127.0.0.1:8103/ --client-id ID --client-secret SECRET --count 1000`
//! creates the agents it needs (REST, as an admin), connects them, prints `ready <n>` and holds the
//! connections until its standard input closes.
//!
//! Each simulated agent answers heartbeats, and an upgrade request at once with success (so that
//! benchmarks time the server alone), or, with `--upgrade-delay-ms N`, as a real agent does: it
//! drops its socket, reconnects N ms later reporting the new version, and then sends
//! `agent:upgrade:response` with the request's callback. `--version` is the version they start at.
//! A comma-separated `--version` (`--version 1.2.0,1.3.0`) spreads them over those versions.
//!
//! Against a server on loopback, the sockets come from 200 source addresses (127.0.0.2 to
//! 127.0.0.201), as a fleet comes from many hosts: the server caps the connections from one
//! address that have not completed their handshake.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

struct Args {
    server: String,
    client_id: String,
    client_secret: String,
    count: usize,
    prefix: String,
    version: String,
    upgrade_delay: Duration,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut out = Args {
        server: String::new(),
        client_id: String::new(),
        client_secret: String::new(),
        count: 100,
        prefix: "load".into(),
        version: "0.0.1-load".into(),
        upgrade_delay: Duration::ZERO,
    };
    while let Some(k) = a.next() {
        let v = a.next().expect("every flag takes a value");
        match k.as_str() {
            "--server" => out.server = v,
            "--client-id" => out.client_id = v,
            "--client-secret" => out.client_secret = v,
            "--count" => out.count = v.parse().expect("--count takes a number"),
            "--prefix" => out.prefix = v,
            "--version" => out.version = v,
            "--upgrade-delay-ms" => {
                out.upgrade_delay = Duration::from_millis(v.parse().expect("--upgrade-delay-ms takes a number"))
            }
            other => panic!("unknown flag {other}"),
        }
    }
    out
}

async fn token(http: &reqwest::Client, a: &Args) -> String {
    edge_agent_e2e::server::token(http, &a.server, &a.client_id, &a.client_secret).await
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

/// What ended a simulated agent's socket.
enum Next {
    /// The server went away or the input closed: stop.
    Stop,
    /// The socket could not be opened, or closed before the handshake's answer (the server's
    /// limits on sockets not yet authenticated refuse a burst): try again, as an agent would.
    Retry,
    /// An upgrade to this version was asked with this callback: restart as it.
    Upgrade(String, Option<String>),
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The socket of agent `n`: from a loopback address of its own when the server is on loopback.
async fn connect(ws_url: &str, n: usize) -> Option<Socket> {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = reqwest::Url::parse(ws_url).ok()?;
    let server = url.socket_addrs(|| Some(80)).ok()?.into_iter().next()?;
    if !(server.ip().is_loopback() && server.is_ipv4() && url.scheme() == "ws") {
        return tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true).await.ok().map(|(ws, _)| ws);
    }
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 200) as u8)), 0);
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(source).ok()?;
    let tcp = socket.connect(server).await.ok()?;
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(ws_url, MaybeTlsStream::Plain(tcp), Some(config)).await.ok()?;
    Some(ws)
}

/// One simulated agent: connects, answers heartbeats and upgrades, reconnects after an upgrade.
async fn hold(
    ws_url: String,
    token: String,
    (n, agent_id): (usize, String),
    mut version: String,
    delay: Duration,
    ready: Ready,
) {
    let mut report: Option<Option<String>> = None;
    let mut ready = Some(ready);
    let mut attempts = 0u64;
    loop {
        let restart = !delay.is_zero();
        let agent = (n, agent_id.as_str());
        let reporting = report.clone();
        match session(&ws_url, &token, agent, (&version, restart), report.take(), &mut ready).await {
            Next::Stop => return,
            Next::Retry => {
                // Jittered, growing to a second: a burst of refused agents does not come back at once.
                attempts += 1;
                let jitter = (n as u64 * 7919 + attempts * 104_729) % 100;
                tokio::time::sleep(Duration::from_millis((50 * attempts).min(1000) + jitter)).await;
                report = reporting;
            }
            Next::Upgrade(to, callback) => {
                attempts = 0;
                tokio::time::sleep(delay).await;
                version = to;
                report = Some(callback);
            }
        }
    }
}

type Ready = tokio::sync::mpsc::Sender<()>;

async fn session(
    ws_url: &str,
    token: &str,
    (n, agent_id): (usize, &str),
    (version, restart): (&str, bool),
    report: Option<Option<String>>,
    ready: &mut Option<Ready>,
) -> Next {
    let Some(ws) = connect(ws_url, n).await else {
        return Next::Retry;
    };
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": agent_id});
    if sink.send(Frame::text(hello.to_string())).await.is_err() {
        return Next::Retry;
    }
    let mut connected = false;
    while let Some(Ok(frame)) = stream.next().await {
        let Frame::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let reply = match v["type"].as_str() {
            Some("agent:connect:response") => {
                connected = true;
                if let Some(r) = ready.take() {
                    let _ = r.send(()).await;
                }
                match &report {
                    Some(callback) => {
                        json!({"type": "agent:upgrade:response", "statusCode": 200, "callback": callback})
                    }
                    None => continue,
                }
            }
            Some("agent:heartbeat:request") => json!({"type": "agent:heartbeat:response", "version": version}),
            Some("agent:upgrade:request") => {
                let callback = v["callback"].as_str().map(str::to_owned);
                match v["version"].as_str() {
                    Some(to) if to != version && restart => return Next::Upgrade(to.to_string(), callback),
                    _ => json!({"type": "agent:upgrade:response", "statusCode": 200, "callback": callback}),
                }
            }
            _ => continue,
        };
        if sink.send(Frame::text(reply.to_string())).await.is_err() {
            return Next::Stop;
        }
    }
    if connected {
        Next::Stop
    } else {
        Next::Retry
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
    let versions: Vec<&str> = a.version.split(',').collect();
    for (n, chunk) in ids.chunks(200).enumerate() {
        for (i, id) in chunk.iter().enumerate() {
            let (version, delay) = (versions[(n * 200 + i) % versions.len()].to_string(), a.upgrade_delay);
            let agent = (n * 200 + i, id.clone());
            tokio::spawn(hold(ws_url.clone(), token.clone(), agent, version, delay, ready_tx.clone()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every agent connected, or an error that says how many did (a benchmark never waits for ever).
    let wait = Duration::from_secs(300);
    for done in 0..ids.len() {
        if tokio::time::timeout(wait, ready.recv()).await.is_err() {
            eprintln!("loadgen: only {done} of {} agents connected within {wait:?}", ids.len());
            std::process::exit(1);
        }
    }
    println!("ready {}", ids.len());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}
