//! The floor for the socket benchmarks: the least a server on the same stack (tokio, tungstenite,
//! the kernel's TCP over loopback) can do for a fleet of agents, measured beside `agent-server` in
//! the same run (`bench/storm.py`), so that its figures read as a ratio to what the machine allows.
//!
//! `floor [--listen 127.0.0.1:0]` prints `listening <address>` and then, on one single-threaded
//! runtime, takes any WebSocket: it answers `agent:connect:request` with `agent:connect:response`
//! and `agent:heartbeat:request` with `agent:heartbeat:response`, and nothing else. No token is
//! checked, nothing is recorded, no timer runs per socket: an agent's heartbeat costs it one
//! read and one write. `loadgen --floor ws://<address>/ws/agent` points simulated agents at it
//! (made-up agent ids and token: it checks neither, and no server's store is touched).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;

fn main() {
    let mut address = "127.0.0.1:0".to_string();
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        match (k.as_str(), a.next()) {
            ("--listen", Some(v)) => address = v,
            _ => {
                eprintln!("usage: floor [--listen ADDRESS]");
                std::process::exit(2);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let listener = match listen(&address) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("floor: cannot listen on {address}: {e}");
                std::process::exit(1);
            }
        };
        println!("listening {}", listener.local_addr().expect("a bound address"));
        let mut warned: Option<std::time::Instant> = None;
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(serve(tcp));
                }
                // Out of file descriptors, say: the benchmark sees agents not connecting.
                Err(e) => {
                    if warned.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(1)) {
                        eprintln!("floor: accept: {e}");
                        warned = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

/// A listener with agent-server's backlog (its `limits::accept::BACKLOG`): a fleet reconnecting
/// at once after a restart waits in the kernel's queue for both alike.
fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4_096)
}

async fn serve(tcp: TcpStream) {
    // As agent-server does: no delayed answer waits on Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(256).write_buffer_size(0);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else { return };
    let (mut sink, mut stream) = ws.split();
    while let Some(Ok(frame)) = stream.next().await {
        let Frame::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let mut reply = match v["type"].as_str() {
            Some("agent:connect:request") => json!({"type": "agent:connect:response"}),
            Some("agent:heartbeat:request") => json!({"type": "agent:heartbeat:response", "version": "0.0.0-floor"}),
            _ => continue,
        };
        if let Some(callback) = v.get("callback") {
            reply["callback"] = callback.clone();
        }
        if sink.send(Frame::text(reply.to_string())).await.is_err() {
            return;
        }
    }
}
