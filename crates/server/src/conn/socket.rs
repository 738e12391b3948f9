//! `/ws/agent`: the agent side of the protocol on the server (protocol.md §1–2). A socket is
//! anonymous until a valid `agent:connect:request`: until then it is capped in number
//! (`--max-anonymous-sockets`, shared fairly between client addresses), in time (`--handshake-timeout`) and in bytes
//! (`--max-anonymous-frame`, counted on its connection). Then it is registered in the hub,
//! heartbeats flow both ways, frames may be as large as any agent's, and replies with a callback
//! go to whoever waits for them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use edge_agent_wire::message::{Envelope, Message, ParseError, HARD_MAX_MESSAGE_BYTES};
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::CancellationToken;

use super::hub::{Grant, Heard, Hub};
use crate::identity::tokens::Tokens;
use crate::limits::conns::{self, AnonymousSocket, Conns, Evicted, Slot};
use crate::limits::throttle::gcra;
use crate::metrics::{AuthFailure, Limit, Metrics};
use crate::model::audit::{Ref, LOGIN};
use crate::proxy::{Peer, Proxies};
use crate::quiet::Quiet;
use crate::store::{audit, hash_secret, Store};

/// What the agents' sockets work with.
#[derive(Clone)]
pub struct Sockets {
    pub tokens: Arc<Tokens>,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub conns: Arc<Conns>,
    /// Whose forwarded client address counts for the anonymous sockets' fair share.
    pub proxies: Arc<Proxies>,
    pub heartbeat_interval: Duration,
    /// How long an anonymous socket has to send a valid connect request.
    pub handshake_timeout: Duration,
    /// How many bytes it may send before.
    pub max_anonymous_frame: usize,
    pub max_message_bytes: usize,
    /// Messages a second a connected agent's socket is read at, past a burst of ten times that
    /// (`--agent-message-rate`).
    pub message_rate: u32,
    /// The lines a socket writes when it connects and closes, at most once a second for each
    /// agent (one token reused to connect and close in a loop wrote two lines at each turn).
    pub quiet: Arc<Quiet>,
    /// Admin clients' sockets speaking as agents, audited once an hour for each admin and agent.
    pub admin_sockets: Arc<Quiet>,
    pub admin_audits: Arc<AuditBatch>,
    /// The lines each agent made the server write, counted across its sockets.
    pub noise: Arc<Noise>,
    pub shutdown: CancellationToken,
}

impl Sockets {
    /// How long an agent may stay silent, or leave what it is sent unread: [`SILENT_INTERVALS`]
    /// heartbeat intervals.
    fn silent_limit(&self) -> Duration {
        self.heartbeat_interval * SILENT_INTERVALS
    }
}

/// What agents made the server log, counted for each agent across its sockets (an agent that
/// reconnected in a loop started each socket's count again), for [`worth_a_line`]. Only agents
/// that sent something amiss are in it.
#[derive(Default)]
pub struct Noise(Mutex<HashMap<String, [u32; 3]>>);

/// The kinds of line [`Noise`] counts.
#[derive(Clone, Copy)]
enum Noisy {
    /// A frame that is not a message.
    BadFrame,
    /// An error the agent reported on its own (no callback).
    Error,
    /// A frame read later than it came, for `--agent-message-rate`.
    Paced,
}

/// The agents [`Noise`] counts for at most; past it, the counts start again.
const NOISY_AGENTS: usize = 10_000;

impl Noise {
    /// One more of `kind` from `agent_id`: how many there have been.
    fn count(&self, agent_id: &str, kind: Noisy) -> u32 {
        let mut counts = self.0.lock().unwrap();
        if counts.len() >= NOISY_AGENTS && !counts.contains_key(agent_id) {
            counts.clear();
        }
        let n = &mut counts.entry(agent_id.to_string()).or_default()[kind as usize];
        *n = n.saturating_add(1);
        *n
    }
}

/// The most characters of an agent's error text the server keeps: it becomes a caller's answer,
/// a rollout's reason and events, an upgrade's history and an audit event (a 1 MiB text was each
/// of them, whole).
pub const MAX_ERROR_TEXT: usize = 1_000;

/// An agent's error text cut to [`MAX_ERROR_TEXT`] characters, as soon as it is read.
fn cut_error_text(mut env: Envelope) -> Envelope {
    if let Message::Error { body } = &mut env.msg {
        if let Some((at, _)) = body.char_indices().nth(MAX_ERROR_TEXT) {
            body.truncate(at);
            body.push('…');
        }
    }
    env
}

/// Whether the `n`th line of a kind a socket's agent causes is written: the first ten, then one
/// at each power of two, so that an agent cannot flood the log.
fn worth_a_line(n: u32) -> bool {
    n <= 10 || n.is_power_of_two()
}

/// Bytes a socket reads at a time, and the read buffer an idle agent holds: room for the frames
/// agents send (heartbeats, answers); a larger frame grows it while it is read.
const READ_BUFFER: usize = 256;
/// How long a socket closed by the server has to take the reason.
const FAREWELL: Duration = Duration::from_secs(2);
/// The step of the grid the sockets' heartbeat ticks fall on (the default interval, 10 s, is a
/// multiple of it, so they stay on it; another interval's later ticks leave it): a node holding
/// many agents wakes for their ticks four times a second, each time for a quarter of them, rather
/// than at nearly every millisecond for one or two. (The agents' own heartbeats, arriving one at a
/// time, are most of an idle node's wakes: `perf stat` counted 8 % fewer with the grid.) An
/// interval under a second has a grid of a quarter of it, so that its ticks stay near its pace.
const TICK_GRID: Duration = Duration::from_millis(250);

/// The first instant at or after `due` of the tick grid for sockets of heartbeat `interval`. The
/// grid starts at the node's first socket.
fn on_the_grid(due: Instant, interval: Duration) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let step = TICK_GRID.min(interval / 4).max(Duration::from_millis(1));
    grid_after(*ORIGIN.get_or_init(Instant::now), due, step)
}

/// Heartbeat intervals a socket may stay silent (nothing received) before it is dropped.
const SILENT_INTERVALS: u32 = 3;

/// When an agent heard from at `at` is late with its next heartbeat: a quarter of an interval
/// after it would come, on the tick grid.
fn late_after(at: Instant, interval: Duration) -> Instant {
    on_the_grid(at + interval + interval / 4, interval)
}

/// The first instant at or after `due` of the grid of `step` through `origin` (before or after it).
fn grid_after(origin: Instant, due: Instant, step: Duration) -> Instant {
    let step = step.as_nanos();
    // How far `due` is past the grid's last instant before it.
    let past = match due.checked_duration_since(origin) {
        Some(after) => after.as_nanos() % step,
        None => (step - origin.duration_since(due).as_nanos() % step) % step,
    };
    due + Duration::from_nanos(((step - past) % step) as u64)
}

/// `/ws/agent`, to be merged into the server's router.
pub fn routes(sockets: Sockets) -> Router {
    Router::new().route("/ws/agent", get(upgrade)).with_state(Arc::new(sockets))
}

async fn upgrade(State(app): State<Arc<Sockets>>, peer: Peer, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let client = app.proxies.client_ip(peer, &headers).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let Some(place) = app.conns.anonymous_socket(client) else {
        return crate::limits::busy("Too many agent sockets waiting for their handshake: try again later");
    };
    // The connection's slot: its bytes are counted until the handshake, and it is marked
    // authenticated after.
    let slot = conns::current();
    if let Some(s) = &slot {
        s.limit_anonymous_reads(app.max_anonymous_frame);
    }
    // A message past `max_message_bytes` is answered with an error (up to four times that is read
    // to say so); a larger one closes the socket. What waits to be written to an agent that does
    // not read (answers to its pings, say) is bounded too: past that, the pings' answers wait
    // one at a time.
    let largest = app.max_message_bytes.saturating_mul(4).clamp(64 * 1024, HARD_MAX_MESSAGE_BYTES);
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(HARD_MAX_MESSAGE_BYTES)
        .max_message_size(largest)
        .max_frame_size(largest)
        .on_upgrade(move |socket| serve(app, socket, place, slot, client))
}

async fn send(socket: &mut WebSocket, env: Envelope) -> bool {
    socket.send(Frame::text(env.to_json())).await.is_ok()
}

/// Sends `frame` to a live agent, waiting for it to read for at most as long as it may stay
/// silent ([`SILENT_INTERVALS`] heartbeat intervals); why the socket must close if it could not.
/// Its ticks wait meanwhile, but not a kick (`kicked`) or the shutdown, which close it at once:
/// an agent that stopped reading would otherwise hold its socket, and a connected status, for
/// ever, and a revoked credential's socket would stay open while a send waited.
async fn send_live(
    app: &Sockets,
    ws: &mut WebSocket,
    frame: Frame,
    kicked: &mut oneshot::Receiver<String>,
) -> Result<(), String> {
    let wait = app.silent_limit();
    // The send first: one that goes at once leaves the others unpolled.
    tokio::select! {
        biased;
        sent = tokio::time::timeout(wait, ws.send(frame)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("send failed".into()),
            Err(_) => Err(format!("the agent read nothing sent to it for {SILENT_INTERVALS} heartbeat intervals")),
        },
        Ok(why) = kicked => Err(format!("closed by the server: {why}")),
        _ = app.shutdown.cancelled() => Err("server shutting down".into()),
    }
}

/// Who a socket speaks as.
struct Admitted {
    agent_id: String,
    /// Its last stored version.
    version: Option<String>,
    /// The admin client whose credentials it connected with when they are not the agent's own
    /// (as Medplum, an admin's token may act as any agent; the log and the audit trail say whose
    /// they were).
    by_admin: Option<String>,
    /// The credentials it connected with, closed when they are revoked.
    grant: Grant,
    /// [`Hub::revocation_epoch`] before they were checked.
    since: u64,
}

/// Checks a connect request; who the socket speaks as ([`Admitted`]), or the error text to send.
async fn authorize(app: &Sockets, access_token: &str, agent_id: &str) -> Result<Admitted, &'static str> {
    if access_token.is_empty() {
        return Err("Missing access token");
    }
    if agent_id.is_empty() {
        return Err("Missing agent ID");
    }
    let unavailable = |e| {
        tracing::error!(agent_id, "cannot check an agent's token: {e}");
        edge_agent_wire::texts::STORE_UNAVAILABLE
    };
    let refused = || {
        app.metrics.edge.auth_failed(AuthFailure::Socket);
        tracing::debug!(
            agent_id = crate::limits::throttle::shown(agent_id),
            "agent socket refused: invalid access token"
        );
        "Invalid access token"
    };
    // Revocations applied from here on are checked again as the socket registers.
    let since = app.hub.revocation_epoch();
    let token_hash = hash_secret(access_token);
    let client = app.tokens.client_by_hash(&token_hash).await.map_err(unavailable)?.ok_or_else(refused)?;
    let allowed = client.is_admin() || client.agent_id.as_deref() == Some(agent_id);
    match app.store.connecting(agent_id).await.map_err(unavailable)? {
        Some((status, _)) if allowed && status == "off" => {
            app.metrics.edge.auth_failed(AuthFailure::Socket);
            Err(SWITCHED_OFF)
        }
        Some((_, version)) if allowed => {
            let grant = Grant::of(&client.id, &token_hash);
            let by_admin = (client.agent_id.as_deref() != Some(agent_id)).then_some(client.id);
            Ok(Admitted { agent_id: agent_id.to_string(), version, by_admin, grant, since })
        }
        // The token is good, the agent is the matter (it was "Invalid access token", which sent
        // operators after the token). Only an admin learns whether an agent exists.
        None if allowed => {
            app.metrics.edge.auth_failed(AuthFailure::Socket);
            Err(UNKNOWN_AGENT)
        }
        _ => {
            app.metrics.edge.auth_failed(AuthFailure::Socket);
            Err(NOT_THIS_AGENT)
        }
    }
}

/// What an admin's token asking for an agent no one has is told.
pub const UNKNOWN_AGENT: &str = "Unknown agent ID: no agent has it (removed, or never added)";
/// What a valid token asking for an agent it may not speak as is told.
pub const NOT_THIS_AGENT: &str =
    "This token may not connect as this agent: an agent connects with its own credentials (or an admin's)";

/// An admin's credentials opened an agent's socket: audited, once an hour for each admin and
/// agent on a node (a fleet of Medplum's agents may share one admin client, and reconnect often).
/// Written beside the connect, which a slow store does not hold up.
fn audit_admin_socket(app: &Sockets, admin: &str, agent_id: &str, client: IpAddr) {
    if !app.admin_sockets.due(&format!("{admin} {agent_id}")) {
        return;
    }
    let who = Ref { reference: format!("ClientApplication/{admin}"), display: None };
    let mut e = audit::event(LOGIN, "agent-socket", 'E', Some(who), Some(client.to_string()));
    e.description = "An admin client's credentials opened the agent's socket, speaking as the agent".into();
    e.entities = vec![Ref { reference: format!("Agent/{agent_id}"), display: None }];
    app.admin_audits.push(e);
}

/// Audit events of admins' sockets speaking as agents, written together: a node restarted under
/// a fleet of Medplum's agents sharing one admin client has one for each agent at once (one
/// transaction each cost a reconnection 84 µs more, 176 against 260 µs in `bench/storm.py`).
#[derive(Default)]
pub struct AuditBatch {
    pending: Mutex<Vec<crate::model::audit::AuditRecord>>,
    wake: tokio::sync::Notify,
}

/// How long the first event of a batch waits for others: what a crash may lose of them.
const BATCH_WAIT: Duration = Duration::from_millis(100);

impl AuditBatch {
    fn push(&self, e: crate::model::audit::AuditRecord) {
        let mut pending = self.pending.lock().unwrap();
        pending.push(e);
        if pending.len() == 1 {
            self.wake.notify_one();
        }
    }

    /// Writes what was pushed, a batch at most every [`BATCH_WAIT`], until `shutdown` (and what
    /// is left then). The node awaits it as it stops, and calls [`AuditBatch::flush`] once more
    /// after its sockets closed.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                _ = self.wake.notified() => false,
                _ = shutdown.cancelled() => true,
            };
            if !stopping {
                tokio::select! {
                    _ = tokio::time::sleep(BATCH_WAIT) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            self.flush(&*store).await;
            if stopping || shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Writes what was pushed and not written yet.
    pub async fn flush(&self, store: &dyn Store) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        if batch.is_empty() {
            return;
        }
        if let Err(err) = store.record_audit(&batch).await {
            tracing::error!(events = batch.len(), "cannot record the audit events of admins' agent sockets: {err}");
        }
    }
}

/// What an agent whose `Agent` has `status: off` is told when it connects.
pub const SWITCHED_OFF: &str =
    "Agent is switched off (status off): an administrator must set its status to active before it may connect";

/// An agent's socket, for its life. Every connected agent holds this task, so it is kept to the
/// size of its idle loop: what an idle socket does not do (the handshake, registering, handling
/// a frame, sending) is boxed while it runs, and the future is a block rather than an `async fn`
/// (which keeps room for its arguments besides its locals). The socket is not split: it is read
/// and written by turns, so a lock between two halves would be taken at every frame for nothing.
#[allow(clippy::manual_async_fn)]
fn serve(
    app: Arc<Sockets>,
    mut ws: WebSocket,
    place: AnonymousSocket,
    slot: Option<Arc<Slot>>,
    client: IpAddr,
) -> impl std::future::Future<Output = ()> {
    async move {
        let Some(Admitted { agent_id, version: stored_version, by_admin, grant, since }) =
            Box::pin(handshake(&app, &mut ws, &place.evicted, slot.as_deref())).await
        else {
            return;
        };
        drop(place);
        if let Some(s) = &slot {
            s.authenticated();
        }
        let registered = Box::pin(app.hub.register(&agent_id, stored_version, grant, since)).await;
        let (conn_id, mut outgoing) = (registered.id, registered.queue);
        let _counted = app.metrics.ws_open();
        // An admin's credentials speaking as the agent are always said.
        if by_admin.is_some() || app.quiet.due(&format!("connected {agent_id}")) {
            tracing::info!(agent_id, conn_id, by_admin, "agent connected");
        }
        if let Some(admin) = &by_admin {
            audit_admin_socket(&app, admin, &agent_id, client);
        }
        // The first is due as if the agent's own heartbeat were late ([`Live::heard_now`]).
        let mut heartbeat = interval_at(late_after(Instant::now(), app.heartbeat_interval), app.heartbeat_interval);
        // Skip keeps the ticks on the grid after a late one (Delay would move them off it).
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut live = Live {
            agent_id: &agent_id,
            conn_id,
            last_frame: Instant::now(),
            read_at: None,
            heard: false,
            versioned: false,
            heartbeat,
            heard_at: None,
            kicked: registered.kicked,
        };
        let greeted = Box::pin(async {
            for hello in [Message::ConnectResponse {}, Message::HeartbeatRequest {}] {
                send_live(&app, &mut ws, Frame::text(hello.plain().to_json()), &mut live.kicked).await?;
            }
            Ok(())
        })
        .await;
        app.metrics.ws_sent(2);
        // Made once: a `cancelled()` made at each event would join and leave the token's list of
        // waiters, which every socket shares, at each event.
        let shutdown = app.shutdown.cancelled();
        tokio::pin!(shutdown);
        // A frame the agent sent past its rate, held until its time; meanwhile nothing more is
        // read, and the socket's other events (a shutdown, a kick, what is sent to the agent, the
        // heartbeat) go on.
        let mut paced: Option<(Pin<Box<Sleep>>, Event)> = None;
        let why = if let Err(why) = greeted {
            why
        } else {
            loop {
                let event = tokio::select! {
                    _ = &mut shutdown => Event::Shutdown,
                    Ok(why) = &mut live.kicked => Event::Kicked(why),
                    frame = ws.next(), if paced.is_none() => Event::Frame(frame),
                    () = async { paced.as_mut().expect("a held frame").0.as_mut().await }, if paced.is_some() => {
                        paced.take().expect("a held frame").1
                    }
                    Some(json) = outgoing.recv() => Event::Out(json),
                    _ = live.heartbeat.tick() => Event::Tick,
                };
                if let Event::Frame(Some(Ok(_))) = &event {
                    if let Some(wait) = live.wait_to_read(&app) {
                        paced = Some((Box::pin(tokio::time::sleep(wait)), event));
                        continue;
                    }
                }
                if let Some(why) = Box::pin(live.on(&app, &mut ws, event)).await {
                    break why;
                }
            }
        };
        Box::pin(app.hub.unregister(&agent_id, conn_id)).await;
        if app.quiet.due(&format!("disconnected {agent_id}")) {
            tracing::info!(agent_id, conn_id, "agent disconnected: {why}");
        }
    }
}

/// Anonymous until a valid connect request: who it speaks as ([`Admitted`]); `None` when the
/// socket closed, timed out, gave its place to a socket from another address (`evicted`) or the
/// server shuts down first.
async fn handshake(app: &Sockets, ws: &mut WebSocket, evicted: &Evicted, slot: Option<&Slot>) -> Option<Admitted> {
    let deadline = Instant::now() + app.handshake_timeout;
    // The connection's own place (among anonymous connections) may be given way too.
    let never = Evicted::default();
    let connection_evicted = slot.map_or(&never, |s| &s.evicted);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, ws.next()) => next,
            _ = app.shutdown.cancelled() => return None,
            _ = evicted.wait() => return None,
            _ = connection_evicted.wait() => return None,
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Err(_) => {
                app.metrics.edge.hit(Limit::HandshakeTimeout);
                return None;
            }
            _ => return None,
        };
        let Frame::Text(text) = frame else { continue };
        let reply = match Envelope::parse(&text, app.max_message_bytes) {
            Ok(Envelope { msg: Message::ConnectRequest { access_token, agent_id }, .. }) => {
                match authorize(app, &access_token, &agent_id).await {
                    Ok(id) => return Some(id),
                    Err(why) => Message::error(why).plain(),
                }
            }
            Ok(env) => Message::error("Not connected: send agent:connect:request first").reply_to(env.callback),
            Err(e) => e.reply(),
        };
        // A peer that does not read its errors is not waited for past its deadline or its place.
        let sent = tokio::select! {
            ok = send(ws, reply) => ok,
            _ = tokio::time::sleep_until(deadline) => {
                app.metrics.edge.hit(Limit::HandshakeTimeout);
                false
            }
            _ = evicted.wait() => false,
            _ = connection_evicted.wait() => false,
        };
        if !sent {
            return None;
        }
    }
}

/// What woke a live socket.
enum Event {
    Shutdown,
    Kicked(String),
    Frame(Option<Result<Frame, axum::Error>>),
    Out(String),
    Tick,
}

/// A live socket's state between events.
struct Live<'a> {
    agent_id: &'a str,
    conn_id: u64,
    /// When the agent last sent anything: a socket silent for more than [`SILENT_INTERVALS`]
    /// heartbeat intervals is dropped at the next tick.
    last_frame: Instant,
    /// When the agent's next message may be read without waiting ([`gcra`]'s arrival time).
    read_at: Option<std::time::Instant>,
    /// Whether the agent sent a heartbeat of its own since the last tick before it had answered
    /// one of the server's: the tick after its answer sends nothing.
    heard: bool,
    /// Whether the agent answered a heartbeat on this socket: the version the server asks for
    /// changes only with a new process, hence a new socket, so from then on the server asks only
    /// when the agent's own heartbeat is late ([`Live::heard_now`]).
    versioned: bool,
    /// The server's own heartbeat: due an interval after the last, or put off past the agent's
    /// next heartbeat by each one it sends ([`Live::heard_now`]).
    heartbeat: Interval,
    /// Where the agent's own heartbeats are recorded for its live status (the hub's, taken at
    /// the first one after the status is set, and again once the hub let it go).
    heard_at: Option<Heard>,
    /// Why the hub closes the socket (a revocation, newer sockets of the agent), when it does.
    kicked: oneshot::Receiver<String>,
}

impl Live<'_> {
    /// Handles one event; why the socket must close, if it must.
    async fn on(&mut self, app: &Sockets, ws: &mut WebSocket, event: Event) -> Option<String> {
        let agent_id = self.agent_id;
        let out = match event {
            Event::Shutdown => {
                let _ = tokio::time::timeout(FAREWELL, ws.send(Frame::Close(None))).await;
                return Some("server shutting down".into());
            }
            Event::Kicked(why) => {
                // The agent is told why, unless it does not read: it is closed either way.
                let farewell = async {
                    send(ws, Message::error(why.as_str()).plain()).await && ws.send(Frame::Close(None)).await.is_ok()
                };
                let _ = tokio::time::timeout(FAREWELL, farewell).await;
                return Some(format!("closed by the server: {why}"));
            }
            Event::Frame(frame) => {
                let now = Instant::now();
                self.last_frame = now;
                if matches!(frame, Some(Ok(_))) {
                    self.count_read(app, now.into_std());
                }
                if matches!(frame, Some(Ok(Frame::Text(_)))) {
                    app.metrics.ws_received();
                }
                match frame {
                    None | Some(Ok(Frame::Close(_))) => return Some("closed by the agent".into()),
                    Some(Err(e)) => return Some(e.to_string()),
                    Some(Ok(Frame::Text(text))) => match Envelope::parse(&text, app.max_message_bytes) {
                        Ok(env) => {
                            if matches!(env.msg, Message::HeartbeatRequest {}) {
                                self.heard_now(app);
                            }
                            self.versioned |= matches!(env.msg, Message::HeartbeatResponse { .. });
                            let env = cut_error_text(env);
                            let log = match (&env.msg, &env.callback) {
                                (Message::Error { .. }, None) => worth_a_line(app.noise.count(agent_id, Noisy::Error)),
                                _ => false,
                            };
                            on_message(app, agent_id, self.conn_id, env, log).await
                        }
                        Err(e) => {
                            if let ParseError::TooLarge { len, max, callback: Some(cb) } = &e {
                                // Whoever waits for the answer it meant to be is told at once.
                                let why = format!(
                                    "The agent's answer is too large: {len} bytes (limit {max}): ask it for less (for $fetch-logs, a smaller limit)"
                                );
                                app.hub.complete(agent_id, Message::error(why).reply_to(Some(cb.clone()))).await;
                            }
                            let n = app.noise.count(agent_id, Noisy::BadFrame);
                            if worth_a_line(n) {
                                let e = crate::limits::throttle::shown_at_most(&e.to_string(), 200);
                                tracing::warn!(agent_id, bad_frames = n, "bad frame: {e}");
                            }
                            Some(e.reply())
                        }
                    },
                    Some(Ok(Frame::Binary(_))) => Some(Message::error("Binary frames are not supported").plain()),
                    Some(Ok(_)) => None,
                }
            }
            Event::Out(json) => {
                app.metrics.ws_sent(1);
                return send_live(app, ws, Frame::text(json), &mut self.kicked).await.err();
            }
            Event::Tick => {
                if self.last_frame.elapsed() > app.silent_limit() {
                    return Some(format!("nothing received for more than {SILENT_INTERVALS} heartbeat intervals"));
                }
                let skip = std::mem::take(&mut self.heard) && self.versioned;
                (!skip).then(|| Message::HeartbeatRequest {}.plain())
            }
        };
        if let Some(env) = out {
            app.metrics.ws_sent(1);
            return send_live(app, ws, Frame::text(env.to_json()), &mut self.kicked).await.err();
        }
        None
    }

    /// The agent sent a heartbeat of its own. Once it has answered one of the server's, the
    /// server's next is due only when the agent's next is late (a quarter of an interval after it
    /// would come at the same interval), and then asks: an agent that keeps its heartbeats wakes
    /// its socket once an interval, for its own, and not again for a tick that would send
    /// nothing. (Putting a timer off is an atomic store in the runtime; its old instant is
    /// skipped without waking the socket.)
    fn heard_now(&mut self, app: &Sockets) {
        if self.heard_at.as_ref().is_none_or(|h| h.gone()) {
            self.heard_at = app.hub.heard(self.agent_id);
        }
        if let Some(h) = &self.heard_at {
            h.record(edge_agent_base::time::now_ms());
        }
        if self.versioned {
            // One heard before the agent answered must not make its late tick send nothing.
            self.heard = false;
            self.heartbeat.reset_at(late_after(Instant::now(), app.heartbeat_interval));
        } else {
            self.heard = true;
        }
    }

    /// Paces the agent's frames (messages, pings) to the socket's rate: past it, the next is read
    /// later (what the agent sends meanwhile waits in its socket, and its sends wait in turn), so
    /// that nothing an agent makes the server do per frame (a log line, a store read, an answer)
    /// is done faster. How long a frame just read must wait, if it came too soon.
    fn wait_to_read(&self, app: &Sockets) -> Option<Duration> {
        let (interval, burst) = rate_of(app);
        let wait = gcra(self.read_at, std::time::Instant::now(), interval, burst).err()?;
        app.metrics.edge.hit(Limit::AgentMessageRate);
        let (agent_id, paced) = (self.agent_id, app.noise.count(self.agent_id, Noisy::Paced));
        if worth_a_line(paced) {
            tracing::warn!(
                agent_id,
                paced,
                "agent sends faster than --agent-message-rate {}: its messages are read at that rate",
                app.message_rate
            );
        }
        Some(wait)
    }

    /// A frame is handled at `now` (when [`Live::wait_to_read`] let it be).
    fn count_read(&mut self, app: &Sockets, now: std::time::Instant) {
        let (interval, burst) = rate_of(app);
        if let Ok(next) = gcra(self.read_at, now, interval, burst) {
            self.read_at = Some(next);
        }
    }
}

/// The interval between an agent's frames at its rate, and the burst it may send at once.
fn rate_of(app: &Sockets) -> (Duration, u32) {
    (Duration::from_secs(1) / app.message_rate.max(1), app.message_rate.saturating_mul(10))
}

/// What a live agent's message means to the server, and the reply if it needs one; `log` says
/// whether an error the agent reports on its own is worth a line.
async fn on_message(app: &Sockets, agent_id: &str, conn_id: u64, env: Envelope, log: bool) -> Option<Envelope> {
    match env.msg {
        Message::HeartbeatRequest {} => {
            // Recorded by the socket ([`Live::heard_now`]).
            Some(
                Message::HeartbeatResponse { version: edge_agent_base::build_info::version_str().into() }
                    .reply_to(env.callback),
            )
        }
        Message::HeartbeatResponse { ref version } => {
            app.hub.heartbeat(agent_id, conn_id, version).await;
            None
        }
        Message::ConnectRequest { ref access_token, agent_id: ref asked } => {
            match authorize(app, access_token, asked).await {
                Ok(admitted) if admitted.agent_id == agent_id => {
                    Some(Message::ConnectResponse {}.reply_to(env.callback))
                }
                Ok(_) => Some(Message::error("Cannot change agent ID on a live connection").reply_to(env.callback)),
                Err(why) => Some(Message::error(why).reply_to(env.callback)),
            }
        }
        Message::TransmitRequest { .. } => Some(
            Message::error("This server runs no bots: agent:transmit:request is not supported").reply_to(env.callback),
        ),
        Message::Error { ref body } if env.callback.is_none() => {
            if log {
                let body = crate::limits::throttle::shown_at_most(body, 500);
                tracing::warn!(agent_id, "agent reported an error: {body}");
            }
            None
        }
        _ if env.callback.is_some() => {
            app.hub.complete(agent_id, env).await;
            None
        }
        _ => Some(Message::error("Unexpected message without a callback").plain()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agents_error_text_is_cut_on_a_character_and_says_so() {
        let error = |body: String| Message::Error { body }.reply_to(None);
        let text = |env: Envelope| match env.msg {
            Message::Error { body } => body,
            other => panic!("{other:?}"),
        };
        assert_eq!(text(cut_error_text(error("é".repeat(MAX_ERROR_TEXT)))), "é".repeat(MAX_ERROR_TEXT));
        assert_eq!(
            text(cut_error_text(error("é".repeat(MAX_ERROR_TEXT + 1)))),
            format!("{}…", "é".repeat(MAX_ERROR_TEXT))
        );
        let other = Message::HeartbeatResponse { version: "x".repeat(5_000) }.reply_to(None);
        assert_eq!(cut_error_text(other.clone()), other, "only error texts are cut");
    }

    #[test]
    fn what_an_agent_makes_the_server_log_is_counted_across_its_sockets_for_a_bounded_number_of_agents() {
        let noise = Noise::default();
        assert_eq!((noise.count("a", Noisy::Error), noise.count("a", Noisy::Error)), (1, 2));
        assert_eq!((noise.count("a", Noisy::BadFrame), noise.count("b", Noisy::Error)), (1, 1));
        for i in 0..NOISY_AGENTS {
            noise.count(&format!("x{i}"), Noisy::Paced);
        }
        assert!(noise.0.lock().unwrap().len() <= NOISY_AGENTS);
        assert_eq!(noise.count("a", Noisy::Error), 1, "past the bound, the counts start again");
    }

    #[test]
    fn lines_an_agent_causes_are_the_first_ten_then_one_at_each_power_of_two() {
        let written: Vec<u32> = (1..=1_500).filter(|&n| worth_a_line(n)).collect();
        assert_eq!(written, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64, 128, 256, 512, 1024]);
    }

    #[test]
    fn ticks_fall_on_one_grid_at_or_after_their_due_time() {
        let now = Instant::now();
        for (interval, step) in [(10_000, 250), (1_000, 250), (300, 75), (2, 1)] {
            let (interval, step) = (Duration::from_millis(interval), Duration::from_millis(step));
            let first = on_the_grid(now, interval);
            for ms in [0, 1, 249, 250, 251, 9_999, 10_000, 10_123] {
                let due = now + Duration::from_millis(ms);
                let tick = on_the_grid(due, interval);
                assert!(tick >= due && tick < due + step, "{ms} ms: {:?} after", tick - due);
                let apart = tick.duration_since(first.min(tick)).as_nanos();
                assert_eq!(apart % step.as_nanos(), 0, "{ms} ms: {apart} ns from the first tick of {interval:?}");
            }
        }
    }

    #[test]
    fn the_grid_runs_both_ways_from_its_origin_whatever_its_step() {
        let origin = Instant::now() + Duration::from_secs(10);
        let ms = Duration::from_millis;
        for (step, from_origin_ms, expected_ms) in [
            (ms(250), 0, 0),
            (ms(250), 1, 250),
            (ms(250), 250, 250),
            (ms(250), -1, 0),
            (ms(250), -250, -250),
            (ms(250), -251, -250),
            (ms(250), -499, -250),
            (ms(300), 301, 600),
            (ms(300), -301, -300),
        ] {
            let at = |offset: i64| match offset >= 0 {
                true => origin + ms(offset as u64),
                false => origin - ms(offset.unsigned_abs()),
            };
            assert_eq!(
                grid_after(origin, at(from_origin_ms), step),
                at(expected_ms),
                "{from_origin_ms} ms from the origin, step {step:?}"
            );
        }
    }
}
