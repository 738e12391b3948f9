//! A scripted control server: hands out a token, completes the handshake, and then lets the test
//! read and write every frame, or stay silent.

use std::net::SocketAddr;

use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::handle::{FakeHandle, Panics};

/// One agent socket, after the handshake.
pub struct FakeConn {
    pub to_agent: mpsc::Sender<String>,
    pub from_agent: mpsc::Receiver<String>,
}

impl FakeConn {
    /// The next frame from the agent that is not a heartbeat, as JSON.
    pub async fn next_non_heartbeat(&mut self) -> Value {
        loop {
            let text = tokio::time::timeout(std::time::Duration::from_secs(10), self.from_agent.recv())
                .await
                .expect("agent sent nothing for 10 s")
                .expect("agent socket closed");
            let v: Value = serde_json::from_str(&text).unwrap();
            if !v["type"].as_str().unwrap_or_default().starts_with("agent:heartbeat") {
                return v;
            }
        }
    }
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub conns: mpsc::Receiver<FakeConn>,
    pub handle: FakeHandle,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let (tx, conns) = mpsc::channel(16);
        let panics = Panics::default();
        let guard = panics.clone();
        let app = Router::new()
            .route(
                "/oauth2/token",
                post(|| async {
                    Json(json!({"access_token": "fake-token", "token_type": "Bearer", "expires_in": 3600}))
                }),
            )
            .route(
                "/ws/agent",
                get(|State((tx, panics)): State<(mpsc::Sender<FakeConn>, Panics)>, ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(move |s| async move {
                        panics.guard(serve(s, tx)).await;
                    })
                }),
            )
            .with_state((tx, guard));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeServer { addr, conns, handle: FakeHandle::new(task, panics) }
    }

    pub fn config(&self) -> String {
        format!("base_url = \"http://{}/\"\nclient_id = \"c\"\nclient_secret = \"s\"\nagent_id = \"a\"\n", self.addr)
    }

    pub async fn next_conn(&mut self) -> FakeConn {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.conns.recv())
            .await
            .expect("no agent connected within 10 s")
            .unwrap()
    }
}

async fn serve(socket: WebSocket, conns: mpsc::Sender<FakeConn>) {
    let (mut sink, mut stream) = socket.split();
    // Handshake: the first frame must be the connect request.
    let Some(Ok(Frame::Text(first))) = stream.next().await else { return };
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["type"], "agent:connect:request", "first frame: {v}");
    sink.send(Frame::text(r#"{"type":"agent:connect:response"}"#)).await.unwrap();
    let (to_agent, mut outgoing) = mpsc::channel::<String>(16);
    let (incoming, from_agent) = mpsc::channel(64);
    if conns.send(FakeConn { to_agent, from_agent }).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            Some(text) = outgoing.recv() => if sink.send(Frame::text(text)).await.is_err() { return },
            frame = stream.next() => match frame {
                Some(Ok(Frame::Text(t))) => { let _ = incoming.send(t.to_string()).await; }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}
