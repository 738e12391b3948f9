//! One WebSocket at a time to the control server (protocol.md §1): fresh token, connect,
//! handshake, then serve frames and heartbeats until the socket is lost; reconnect with jittered
//! backoff, for ever, until shutdown or restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{interval_at, timeout, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{client_async_tls_with_config, Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::shared::{Exit, Shared};
use super::{handlers, token};
use crate::config::Config;
use crate::proxy::tunnel;
use crate::state_dir::StateDir;
use crate::upgrade::journal::Event;
use crate::upgrade::report;
use crate::upgrade::store::Store;
use edge_agent_base::backoff::Backoff;
use edge_agent_base::error::error_chain;
use edge_agent_wire::message::{Envelope, Message, HARD_MAX_MESSAGE_BYTES};

type Ws = WebSocketStream<MaybeTlsStream<tunnel::Stream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("the server refused the handshake: {0}")]
    Refused(String),
    #[error("handshake failed: {0}")]
    Handshake(String),
}

impl ConnectError {
    /// The server answered, and said that it cannot serve now (its store is down): it is up, and
    /// the way to it works.
    fn server_unavailable(&self) -> bool {
        match self {
            ConnectError::Token(token::TokenError::Unexpected { status, .. }) => *status == 503,
            ConnectError::Refused(text) => text == edge_agent_wire::texts::STORE_UNAVAILABLE,
            _ => false,
        }
    }
}

/// During a trial, tells the supervisor (through the journal) that the server answered but cannot
/// confirm the new version yet: it waits for the server instead of rolling the version back.
fn note_server_unavailable(cfg: &Config) {
    let store = Store::new(StateDir::new(&cfg.state_dir));
    if !store.on_trial() {
        return;
    }
    match store.apply(Event::ServerUnavailable(edge_agent_base::time::now_ms())) {
        Ok(_) => tracing::info!("on trial: the server is up but cannot serve yet; the trial waits for it"),
        Err(e) => tracing::debug!("cannot note the server unavailable in the journal: {e}"),
    }
}

/// The WebSocket could not be opened: where to, by which route, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {url} {route}: {detail}")]
pub struct SocketError {
    url: String,
    route: String,
    detail: String,
}

/// How a live session ended.
enum End {
    Exit(Exit),
    Lost(String),
}

/// Connects, serves, reconnects; returns only on shutdown or restart.
pub async fn run(shared: Arc<Shared>, mut outbox: mpsc::Receiver<Envelope>, shutdown: CancellationToken) -> Exit {
    let mut backoff: Option<Backoff> = None;
    loop {
        let cfg = shared.config();
        let backoff = backoff.get_or_insert_with(|| Backoff::new(cfg.reconnect_min_delay, cfg.reconnect_max_delay));
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Exit::Shutdown,
            _ = shared.restart.cancelled() => return Exit::Restart,
            r = connect(&shared, &cfg) => r,
        };
        match connected {
            Ok(ws) => {
                let live_at = Instant::now();
                shared.set_link(true);
                let url = cfg.ws_url();
                tracing::info!(%url, route = %cfg.proxy.route(&url), "connected");
                let end = serve(ws, &shared, &cfg, &mut outbox, &shutdown).await;
                shared.set_link(false);
                match end {
                    End::Exit(exit) => return exit,
                    End::Lost(why) => {
                        tracing::warn!(after_secs = live_at.elapsed().as_secs(), "connection lost: {why}")
                    }
                }
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(attempt = backoff.attempts() + 1, "connect failed: {e}");
                if e.server_unavailable() {
                    note_server_unavailable(&cfg);
                }
            }
        }
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return Exit::Shutdown,
            _ = shared.restart.cancelled() => return Exit::Restart,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(HARD_MAX_MESSAGE_BYTES))
        .max_frame_size(Some(HARD_MAX_MESSAGE_BYTES))
}

/// Token, socket, `agent:connect:request`, and the wait for `agent:connect:response`.
async fn connect(shared: &Shared, cfg: &Config) -> Result<Ws, ConnectError> {
    let token = token::fetch(&shared.http, cfg).await?;
    let mut ws = open(cfg, shared.tls.as_ref()).await?;
    let hello = Message::ConnectRequest { access_token: token, agent_id: cfg.agent_id.clone() }.plain();
    ws.send(Frame::text(hello.to_json())).await.map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let answer = timeout(HANDSHAKE_TIMEOUT, async {
        while let Some(frame) = ws.next().await {
            let Frame::Text(text) = frame.map_err(|e| ConnectError::Handshake(e.to_string()))? else { continue };
            match Envelope::parse(&text, cfg.max_message_bytes).map(|e| e.msg) {
                Ok(Message::ConnectResponse {}) => return Ok(()),
                Ok(Message::Error { body }) => return Err(ConnectError::Refused(body)),
                // Nothing else is expected before the handshake completes; it is not answered.
                other => tracing::debug!(?other, "ignored before handshake"),
            }
        }
        Err(ConnectError::Handshake("the server closed the socket".into()))
    })
    .await
    .map_err(|_| ConnectError::Handshake(format!("no connect response within {HANDSHAKE_TIMEOUT:?}")))?;
    answer.map(|()| ws)
}

/// The WebSocket to the server, by the route the configuration gives it (direct, or through a
/// proxy's tunnel), up to the end of its HTTP upgrade.
pub async fn open(cfg: &Config, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Ws, SocketError> {
    let url = cfg.ws_url();
    let connector = match tls {
        Some(tls) => Connector::Rustls(tls.clone()),
        None => Connector::Plain,
    };
    let route = cfg.proxy.route(&url);
    let socket_error = |detail: String| SocketError { url: url.to_string(), route: route.to_string(), detail };
    let open = async {
        let stream = tunnel::open(&url, route, tls).await.map_err(|e| socket_error(error_chain(&e)))?;
        client_async_tls_with_config(url.as_str(), stream, Some(ws_config()), Some(connector))
            .await
            .map_err(|e| socket_error(error_chain(&e)))
    };
    let (ws, _) = timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| socket_error(format!("no answer within {CONNECT_TIMEOUT:?}")))??;
    Ok(ws)
}

/// Serves a live socket: incoming requests, queued outgoing messages, heartbeats.
async fn serve(
    ws: Ws,
    shared: &Arc<Shared>,
    cfg: &Config,
    outbox: &mut mpsc::Receiver<Envelope>,
    shutdown: &CancellationToken,
) -> End {
    let (mut sink, mut stream) = ws.split();
    let period = cfg.heartbeat_interval;
    let mut heartbeat = interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut outstanding = 0u32;
    // A result left by the previous process (upgrade or rollback) goes first, once live.
    let store = Store::new(StateDir::new(&cfg.state_dir));
    let journal = store.load();
    if let Some((report, ending)) = report::pending(&journal) {
        crate::upgrade::failpoint("before-confirm");
        // An upgrade started on the host has no callback: nobody on the server waits for it.
        let send = if report.callback.is_some() { sink.send(Frame::text(report.to_json())).await } else { Ok(()) };
        if let Err(e) = send {
            return End::Lost(e.to_string());
        }
        report::reported(&store, &journal, ending);
    }
    loop {
        let out: Option<Envelope> = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = sink.send(Frame::Close(None)).await;
                return End::Exit(Exit::Shutdown);
            }
            _ = shared.restart.cancelled() => {
                let _ = sink.send(Frame::Close(None)).await;
                return End::Exit(Exit::Restart);
            }
            frame = stream.next() => match frame {
                None => return End::Lost("the server closed the socket".into()),
                Some(Err(e)) => return End::Lost(e.to_string()),
                Some(Ok(Frame::Close(_))) => return End::Lost("the server closed the socket".into()),
                Some(Ok(Frame::Text(text))) => {
                    match Envelope::parse(&text, cfg.max_message_bytes) {
                        Ok(env) => {
                            if matches!(env.msg, Message::HeartbeatRequest {} | Message::HeartbeatResponse { .. }) {
                                outstanding = 0;
                            }
                            handlers::handle(shared, env)
                        }
                        Err(e) => {
                            tracing::warn!("bad frame from server: {e}");
                            Some(e.reply())
                        }
                    }
                }
                Some(Ok(Frame::Binary(bytes))) => Some(Message::error(format!("Binary frames are not supported ({} bytes received)", bytes.len())).plain()),
                Some(Ok(_)) => None, // ping/pong: answered by the WebSocket layer
            },
            Some(env) = outbox.recv() => Some(env),
            _ = heartbeat.tick() => {
                if outstanding > 1 {
                    return End::Lost(format!("no heartbeat from the server for {outstanding} intervals of {period:?}"));
                }
                outstanding += 1;
                Some(Message::HeartbeatRequest {}.plain())
            }
        };
        if let Some(env) = out {
            if let Err(e) = sink.send(Frame::text(env.to_json())).await {
                return End::Lost(e.to_string());
            }
        }
    }
}
