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
//!
//! For a server restart (`bench/storm.py`), two more flags. `--reconnect 1`: an agent whose
//! connected socket closes reconnects as a real agent does, after jittered, growing delays, and the
//! attempts are counted (answers with an HTTP status instead of the upgrade, 5xx apart; sockets
//! refused or lost before the handshake's answer; `agent:error` answers to the connect request).
//! `--heartbeat-every SECONDS`: each connected agent also sends heartbeats of its own and times the
//! server's answers. With either, standard input takes commands, one a line: `stats` prints
//!
//! `stats connected=C reconnected=R refused=F http5xx=H http_other=O connect_errors=E hb=N
//! hb_p50_us=P hb_p99_us=Q hb_max_us=M` (on one line)
//!
//! where the counts are since the start and the heartbeat round trips (N of them, in microseconds)
//! those since the previous `stats`, which it forgets; the end of the input still stops it.
//!
//! `--floor URL` sends the sockets to the `floor` server (`bench/storm.py`'s baseline) instead:
//! with made-up agent ids and token, which it does not check, so no agent is made anywhere and
//! `--server` and the credentials are not needed.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use edge_agent_base::backoff::Backoff;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

struct Args {
    server: String,
    /// The floor server's WebSocket URL (`--floor`): sockets go there, with made-up credentials.
    floor: Option<String>,
    client_id: String,
    client_secret: String,
    count: usize,
    prefix: String,
    version: String,
    upgrade_delay: Duration,
    mode: Mode,
}

/// How the simulated agents behave beyond answering: both off unless asked.
#[derive(Clone, Copy)]
struct Mode {
    /// Reconnect after a connected socket closes (`--reconnect 1`), instead of stopping.
    reconnect: bool,
    /// Send a heartbeat every this long and time its answer (`--heartbeat-every SECONDS`).
    heartbeat: Option<Duration>,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mut out = Args {
        server: String::new(),
        floor: None,
        client_id: String::new(),
        client_secret: String::new(),
        count: 100,
        prefix: "load".into(),
        version: "0.0.1-load".into(),
        upgrade_delay: Duration::ZERO,
        mode: Mode { reconnect: false, heartbeat: None },
    };
    while let Some(k) = a.next() {
        let v = a.next().expect("every flag takes a value");
        match k.as_str() {
            "--server" => out.server = v,
            "--floor" => out.floor = Some(v),
            "--client-id" => out.client_id = v,
            "--client-secret" => out.client_secret = v,
            "--count" => out.count = v.parse().expect("--count takes a number"),
            "--prefix" => out.prefix = v,
            "--version" => out.version = v,
            "--upgrade-delay-ms" => {
                out.upgrade_delay = Duration::from_millis(v.parse().expect("--upgrade-delay-ms takes a number"))
            }
            "--reconnect" => {
                out.mode.reconnect = match v.as_str() {
                    "1" => true,
                    "0" => false,
                    _ => panic!("--reconnect takes 1 or 0"),
                }
            }
            "--heartbeat-every" => {
                let secs: f64 = v.parse().expect("--heartbeat-every takes a number of seconds");
                assert!(secs > 0.0, "--heartbeat-every takes a positive number of seconds");
                out.mode.heartbeat = Some(Duration::from_secs_f64(secs));
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
    /// A connected socket closed and `--reconnect` is on: back off and reconnect.
    Lost,
    /// An upgrade to this version was asked with this callback: restart as it.
    Upgrade(String, Option<String>),
}

/// What `stats` reports. The counters run from the start (whoever reads them takes differences);
/// the failures are those of reconnect attempts only, as the first connections are ramped and
/// retried by the load generator itself, not by an agent's backoff.
struct Stats {
    /// Agents whose socket is open and answered by `agent:connect:response`.
    connected: AtomicI64,
    /// Connect responses received after a connected socket was lost.
    reconnected: AtomicU64,
    /// Sockets refused, unanswered within the timeouts, or closed before the connect response
    /// (during a restart, mostly the server not listening yet).
    refused: AtomicU64,
    /// WebSocket upgrades answered with a 5xx status instead of 101.
    http5xx: AtomicU64,
    /// WebSocket upgrades answered with another status.
    http_other: AtomicU64,
    /// Connect requests answered with `agent:error`.
    connect_errors: AtomicU64,
    /// Heartbeat round trips in microseconds since the last `stats`.
    heartbeats: Mutex<Vec<u32>>,
}

static STATS: Stats = Stats {
    connected: AtomicI64::new(0),
    reconnected: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    http5xx: AtomicU64::new(0),
    http_other: AtomicU64::new(0),
    connect_errors: AtomicU64::new(0),
    heartbeats: Mutex::new(Vec::new()),
};

/// Heartbeat samples kept between two `stats` at most (4 MB): a reader that never asks does not
/// make the process grow without end.
const MAX_HEARTBEAT_SAMPLES: usize = 1_000_000;

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    fn failed(&self, why: Failed) {
        match why {
            Failed::Io => count(&self.refused),
            Failed::Http(status) if (500..600).contains(&status) => count(&self.http5xx),
            Failed::Http(_) => count(&self.http_other),
        }
    }

    fn heartbeat(&self, round_trip: Duration) {
        let mut samples = self.heartbeats.lock().unwrap();
        if samples.len() < MAX_HEARTBEAT_SAMPLES {
            samples.push(round_trip.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    /// The `stats` line; forgets the heartbeat samples it covers.
    fn line(&self) -> String {
        let mut hb = std::mem::take(&mut *self.heartbeats.lock().unwrap());
        hb.sort_unstable();
        // Nearest rank: the smallest sample that at least this share of the samples do not exceed.
        let at = |q: f64| match hb.len() {
            0 => 0,
            len => hb[((q * len as f64).ceil() as usize).clamp(1, len) - 1],
        };
        format!(
            "stats connected={} reconnected={} refused={} http5xx={} http_other={} connect_errors={} hb={} \
             hb_p50_us={} hb_p99_us={} hb_max_us={}",
            self.connected.load(Ordering::Relaxed),
            self.reconnected.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.http5xx.load(Ordering::Relaxed),
            self.http_other.load(Ordering::Relaxed),
            self.connect_errors.load(Ordering::Relaxed),
            hb.len(),
            at(0.50),
            at(0.99),
            hb.last().copied().unwrap_or(0),
        )
    }
}

/// An agent counted as connected while this lives.
struct Live;

impl Live {
    fn new() -> Live {
        STATS.connected.fetch_add(1, Ordering::Relaxed);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        STATS.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a reconnect attempt waits for its socket and upgrade, and then for the connect
/// response: a real agent's limits (`daemon/session.rs`), so that an attempt lost in a full
/// backlog is given up and retried rather than waited on for the kernel's SYN retries.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A real agent's backoff with its default settings (`reconnect_min_delay` 1 s,
/// `reconnect_max_delay` 10 s): the first attempt after a lost socket in 1-5 s, each next one
/// 1.3 times later, jittered over [base, 5 x base), never above 10 s.
fn agent_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(1), Duration::from_secs(10))
}

/// Why a socket could not be opened.
enum Failed {
    /// Refused, reset, timed out, or any other failure below HTTP.
    Io,
    /// The upgrade was answered with this status instead of 101.
    Http(u16),
}

fn failed(e: WsError) -> Failed {
    match e {
        WsError::Http(response) => Failed::Http(response.status().as_u16()),
        _ => Failed::Io,
    }
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The socket of agent `n`: from a loopback address of its own when the server is on loopback.
async fn connect(ws_url: &str, n: usize) -> Result<Socket, Failed> {
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = reqwest::Url::parse(ws_url).map_err(|_| Failed::Io)?;
    let server = url.socket_addrs(|| Some(80)).ok().and_then(|a| a.into_iter().next()).ok_or(Failed::Io)?;
    if !(server.ip().is_loopback() && server.is_ipv4() && url.scheme() == "ws") {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true).await.map_err(failed)?;
        return Ok(ws);
    }
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 200) as u8)), 0);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|_| Failed::Io)?;
    socket.bind(source).map_err(|_| Failed::Io)?;
    let tcp = socket.connect(server).await.map_err(|_| Failed::Io)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(ws_url, MaybeTlsStream::Plain(tcp), Some(config))
        .await
        .map_err(failed)?;
    Ok(ws)
}

/// One simulated agent: connects, answers heartbeats and upgrades, reconnects after an upgrade
/// (and, with `--reconnect`, after its socket was lost).
async fn hold(
    ws_url: String,
    token: String,
    (n, agent_id): (usize, String),
    mut version: String,
    delay: Duration,
    ready: Ready,
    mode: Mode,
) {
    let mut report: Option<Option<String>> = None;
    let mut ready = Some(ready);
    let mut attempts = 0u64;
    // Reconnecting after a lost socket (not a first connection, nor one after an upgrade).
    let mut lost = false;
    let mut backoff = agent_backoff();
    loop {
        let restart = !delay.is_zero();
        let agent = (n, agent_id.as_str());
        let reporting = report.clone();
        let how = (mode, lost);
        match session(&ws_url, &token, agent, (&version, restart), report.take(), &mut ready, how).await {
            Next::Stop => return,
            Next::Retry => match lost {
                true => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    report = reporting;
                }
                false => {
                    // Jittered, growing to a second: a burst of refused agents does not come back at once.
                    attempts += 1;
                    let jitter = (n as u64 * 7919 + attempts * 104_729) % 100;
                    tokio::time::sleep(Duration::from_millis((50 * attempts).min(1000) + jitter)).await;
                    report = reporting;
                }
            },
            Next::Lost => {
                // As a real agent: the backoff starts over after a session that was up, with a
                // wait before the first attempt too.
                backoff.reset();
                tokio::time::sleep(backoff.next_delay()).await;
                lost = true;
            }
            Next::Upgrade(to, callback) => {
                attempts = 0;
                lost = false;
                tokio::time::sleep(delay).await;
                version = to;
                report = Some(callback);
            }
        }
    }
}

type Ready = tokio::sync::mpsc::Sender<()>;

/// One socket of agent `n`, from its opening to its end. `reconnecting`: after a lost socket,
/// where failures are counted and waited on as a real agent does.
async fn session(
    ws_url: &str,
    token: &str,
    (n, agent_id): (usize, &str),
    (version, restart): (&str, bool),
    report: Option<Option<String>>,
    ready: &mut Option<Ready>,
    (mode, reconnecting): (Mode, bool),
) -> Next {
    let ws = if reconnecting {
        tokio::time::timeout(CONNECT_TIMEOUT, connect(ws_url, n)).await.unwrap_or(Err(Failed::Io))
    } else {
        connect(ws_url, n).await
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(why) => {
            if reconnecting {
                STATS.failed(why);
            }
            return Next::Retry;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"type": "agent:connect:request", "accessToken": token, "agentId": agent_id});
    if sink.send(Frame::text(hello.to_string())).await.is_err() {
        if reconnecting {
            STATS.failed(Failed::Io);
        }
        return Next::Retry;
    }
    // Set once the connect response came: the agent counts as connected while it is.
    let mut live: Option<Live> = None;
    // A connected socket that fails: lost, and reconnected with --reconnect.
    let gone = |live: &Option<Live>| if live.is_some() && mode.reconnect { Next::Lost } else { Next::Stop };
    // With --heartbeat-every, once connected: when the next heartbeat goes, and when each one
    // not yet answered went (the server answers a socket's frames in order).
    let mut beat: Option<tokio::time::Interval> = None;
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let next = match beat.as_mut() {
            Some(beat) => tokio::select! {
                next = stream.next() => next,
                _ = beat.tick() => {
                    sent.push_back(Instant::now());
                    let request = json!({"type": "agent:heartbeat:request"});
                    if sink.send(Frame::text(request.to_string())).await.is_err() {
                        return gone(&live);
                    }
                    continue;
                }
            },
            None if reconnecting && live.is_none() => {
                tokio::time::timeout_at(handshake_deadline, stream.next()).await.unwrap_or_default()
            }
            None => stream.next().await,
        };
        let Some(Ok(frame)) = next else { break };
        let Frame::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let reply = match v["type"].as_str() {
            Some("agent:connect:response") => {
                if live.is_none() {
                    live = Some(Live::new());
                    if reconnecting {
                        count(&STATS.reconnected);
                    }
                    if let Some(period) = mode.heartbeat {
                        // The first at an offset of its own within the period: the fleet's spread.
                        let first = Instant::now() + period.mul_f64((n % 1000) as f64 / 1000.0);
                        let mut every = tokio::time::interval_at(first, period);
                        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        beat = Some(every);
                    }
                }
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
            Some("agent:heartbeat:response") => {
                if let Some(at) = sent.pop_front() {
                    STATS.heartbeat(at.elapsed());
                }
                continue;
            }
            // The connect request refused (with the new flags only: before, it was left to the
            // server's handshake timeout): as a real agent, drop the socket and try again.
            Some("agent:error") if live.is_none() && (mode.reconnect || mode.heartbeat.is_some()) => {
                if reconnecting {
                    count(&STATS.connect_errors);
                }
                return Next::Retry;
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
            return gone(&live);
        }
    }
    if live.is_some() {
        gone(&live)
    } else {
        if reconnecting {
            STATS.failed(Failed::Io);
        }
        Next::Retry
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let (token, ids, ws_url) = match &a.floor {
        Some(url) => ("floor".to_string(), (0..a.count).map(|n| format!("{}-{n:05}", a.prefix)).collect(), url.clone()),
        None => {
            let http = reqwest::Client::new();
            let token = token(&http, &a).await;
            let ids = agents(&http, &a, &token).await;
            (token, ids, format!("{}ws/agent", a.server.replacen("http", "ws", 1)))
        }
    };
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1024);
    let versions: Vec<&str> = a.version.split(',').collect();
    for (n, chunk) in ids.chunks(200).enumerate() {
        for (i, id) in chunk.iter().enumerate() {
            let (version, delay) = (versions[(n * 200 + i) % versions.len()].to_string(), a.upgrade_delay);
            let agent = (n * 200 + i, id.clone());
            tokio::spawn(hold(ws_url.clone(), token.clone(), agent, version, delay, ready_tx.clone(), a.mode));
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
    if a.mode.reconnect || a.mode.heartbeat.is_some() {
        // Commands, one a line, until the input closes.
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "stats" => println!("{}", STATS.line()),
                "" => {}
                other => eprintln!("loadgen: unknown command {other:?} (known: stats)"),
            }
        }
    } else {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    }
}
