//! Two nodes' hubs over a real Redis: a rollout's request reaches an agent whose socket is on the
//! other node; with the bus lost, a first request is not sent and not kept, while a request sent
//! again is kept and goes out, with its callback, once the bus is back; its reply then finds the
//! node that sent it, although the restarted Redis had forgotten where it waits. A caller's
//! request to an agent on the other node ends within its own wait when Redis stops answering.

use std::sync::Arc;
use std::time::Duration;

use edge_agent_e2e::services::Redis;
use edge_agent_wire::{AgentStatus, Callback, Envelope, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Grant, Hub, ReplySink, RequestError, SendError};
use crate::conn::bus::redis::RedisBus;
use crate::conn::outages::Outages;
use crate::conn::presence;
use crate::model::revocation::Revocation;
use crate::store::{self, Store, StoreConfig};

const WAIT: Duration = Duration::from_secs(20);

struct Sink(mpsc::UnboundedSender<(String, Envelope)>);

impl ReplySink for Sink {
    fn deliver(self: Arc<Self>, agent_id: String, env: Envelope) {
        let _ = self.0.send((agent_id, env));
    }
}

/// A node's hub on `redis`, with its loops, and the replies nobody waits for on it.
async fn node(redis: &str, stop: &CancellationToken) -> (Arc<Hub>, mpsc::UnboundedReceiver<(String, Envelope)>) {
    let dir = tempfile::tempdir().unwrap().keep();
    let store = store::open(&StoreConfig::Sqlite(dir)).await.unwrap();
    node_on(store, redis, Duration::from_secs(30), stop).await
}

/// [`node`] on `store`, its records on the bus lasting `ttl` unless renewed (every 10 s).
async fn node_on(
    store: Arc<dyn Store>,
    redis: &str,
    ttl: Duration,
    stop: &CancellationToken,
) -> (Arc<Hub>, mpsc::UnboundedReceiver<(String, Envelope)>) {
    let id = edge_agent_base::id::random_hex(8);
    let (bus, mut inbound) = RedisBus::connect(redis, &id, ttl).await.unwrap();
    let lost = bus.reconnected.clone();
    let hub = Arc::new(Hub::new(store, Arc::new(bus), Arc::new(Outages::default())));
    let (tx, orphans) = mpsc::unbounded_channel();
    hub.set_orphan_replies(Arc::new(Sink(tx)));
    let to = hub.clone();
    tokio::spawn(async move {
        while let Some(msg) = inbound.recv().await {
            to.inbound(msg).await;
        }
    });
    tokio::spawn(presence::keep(hub.clone(), Duration::from_secs(10), Some(lost), stop.clone()));
    tokio::spawn(presence::redeliver(hub.clone(), stop.clone()));
    (hub, orphans)
}

/// Waits until `done` holds, for a few seconds at most.
async fn until(done: impl Fn() -> bool, what: &str) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("waited 5 s for {what}");
}

fn ask(callback: &Callback) -> Envelope {
    Message::UpgradeRequest { version: Some("2.0.0".into()), force: None }.reply_to(Some(callback.clone()))
}

/// The next frame on the agent's socket, within a few seconds.
async fn next_frame(socket: &mut super::Inbox) -> String {
    tokio::time::timeout(Duration::from_secs(10), socket.recv()).await.expect("a frame on the socket").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_request_waits_out_a_lost_bus_and_goes_out_when_it_is_back() {
    let mut redis = Redis::start();
    let stop = CancellationToken::new();
    let (a, mut replies_on_a) = node(&redis.url(), &stop).await;
    let (b, _) = node(&redis.url(), &stop).await;
    let mut socket = b.register("agent-1", None, Grant::default(), 0).await.queue;

    let first = Callback::issue("agent-1");
    a.send_tracked("agent-1", ask(&first), WAIT).await.unwrap();
    assert!(next_frame(&mut socket).await.contains(first.as_str()), "through the bus to the other node");
    assert!(a.tracks(&first));

    redis.stop();
    until(|| a.outages().bus_down(), "node A to see the bus lost").await;
    let second = Callback::issue("agent-1");
    let refused = a.send_tracked("agent-1", ask(&second), WAIT).await;
    assert!(matches!(refused, Err(SendError::NotSent(_))), "{refused:?}");
    assert!(!a.tracks(&second), "nothing went out: nothing is kept");
    let third = Callback::issue("agent-1");
    assert!(a.resend_tracked("agent-1", ask(&third), WAIT).await.is_err());
    assert!(a.tracks(&third), "a request sent again is kept whatever happens now");

    redis.start_again();
    let frame = next_frame(&mut socket).await;
    assert!(frame.contains(third.as_str()), "sent once the bus is back: {frame}");
    assert!(!frame.contains(second.as_str()));
    until(|| !a.outages().bus_down(), "node A to see the bus back").await;

    let reply = Message::UpgradeResponse { status_code: 200 }.reply_to(Some(third.clone()));
    b.complete("agent-1", reply).await;
    let (agent, env) = tokio::time::timeout(Duration::from_secs(5), replies_on_a.recv()).await.unwrap().unwrap();
    assert_eq!((agent.as_str(), env.callback), ("agent-1", Some(third)), "the reply found node A");
    let nothing = tokio::time::timeout(Duration::from_millis(200), socket.recv()).await;
    assert!(nothing.is_err(), "nothing else reached the agent: {nothing:?}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_request_to_another_node_ends_within_its_wait_when_redis_stops_answering() {
    let redis = Redis::start();
    let stop = CancellationToken::new();
    let (a, _) = node(&redis.url(), &stop).await;
    let (b, _) = node(&redis.url(), &stop).await;
    let _socket = b.register("agent-1", None, Grant::default(), 0).await.queue;

    // Up, but answering nothing for 8 s: every bus call node A makes to send the request hangs.
    redis.pause(8_000);
    let wait = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let asked =
        a.request("agent-1", Message::UpgradeRequest { version: Some("2.0.0".into()), force: None }, wait).await;
    let took = started.elapsed();
    assert!(matches!(asked, Err(RequestError::Timeout)), "{asked:?}");
    // The wait (1 s) bounds it, not Redis (8 s): a margin for a loaded machine, far below 8 s.
    assert!(took < Duration::from_secs(4), "the caller waited {took:?} for a request with a 1 s wait");
    stop.cancel();
}

/// A node whose calls on the bus failed since it last renewed its records, or that stalled for
/// two thirds of their TTL (one may have lapsed, and another node's sweep stored its agent as
/// disconnected), writes its agents' statuses again, as of now, at its first renewal that works;
/// a renewal in time with no failure before it writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_bus_calls_failed_or_that_stalled_writes_its_agents_statuses_again_once_it_renews_its_records() {
    let redis = Redis::start();
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let (hub, _) = node_on(store.clone(), &redis.url(), Duration::from_secs(3), &stop).await;
    let agent = store.create_agent("lab", "active", &serde_json::json!([]), None).await.unwrap().id;
    let socket = hub.register(&agent, None, Grant::default(), 0).await;
    hub.heartbeat(&agent, socket.id, "1.0.0").await;
    hub.statuses_written().await;
    let stored = || async { store.statuses(std::slice::from_ref(&agent)).await.unwrap()[0].clone().unwrap() };
    let connected = stored().await;
    assert_eq!((connected.status, connected.version.as_str()), (AgentStatus::Connected, "1.0.0"));
    hub.refresh().await.unwrap();
    // Another node's sweep found the agent held nowhere.
    assert_eq!(store.store_gone(&[(agent.clone(), connected.updated.clone())]).await.unwrap(), 1);

    hub.refresh().await.unwrap();
    hub.statuses_written().await;
    assert_eq!(stored().await.status, AgentStatus::Disconnected, "no call failed: nothing written again");

    // Answering nothing past a call's limit (3 s): the renewal fails, and the next that works
    // writes the status again.
    redis.pause(4_000);
    assert!(hub.refresh().await.is_err(), "Redis paused");
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.refresh().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "Redis answers again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.statuses_written().await;
    let again = stored().await;
    assert_eq!((again.status, again.version.as_str()), (AgentStatus::Connected, "1.0.0"));
    assert!(again.updated > connected.updated, "as of now: {} after {}", again.updated, connected.updated);

    assert_eq!(store.store_gone(&[(agent.clone(), again.updated.clone())]).await.unwrap(), 1);
    hub.refresh().await.unwrap();
    hub.statuses_written().await;
    assert_eq!(stored().await.status, AgentStatus::Disconnected, "renewed in time: nothing written again");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    hub.refresh().await.unwrap();
    hub.statuses_written().await;
    assert_eq!(stored().await.status, AgentStatus::Connected, "written again after a stall of 2.5 s");
    stop.cancel();
}

/// A single node's bus on which a socket of the agent registers during one call (which then
/// answers as a single node's does: "no node holds it").
/// The third field logs the records held and released on it (`hold <conn>`, `release <conn>`).
/// The fourth says the moment came.
struct ConnectsDuring(
    std::sync::OnceLock<Arc<Hub>>,
    Call,
    std::sync::Mutex<Vec<String>>,
    std::sync::atomic::AtomicBool,
);

#[derive(Clone, Copy, PartialEq)]
enum Call {
    /// The moment a socket opens while a request to the agent is on its way.
    Forward,
    /// The moment a socket opens while the agent's last one here is let go.
    Release,
    /// The same, the new socket reporting version 2.0.0 and closing again at once.
    ReleaseComesAndGoes,
}

impl ConnectsDuring {
    fn new(call: Call) -> Arc<ConnectsDuring> {
        Arc::new(ConnectsDuring(std::sync::OnceLock::new(), call, Default::default(), Default::default()))
    }

    /// Registers a socket of `agent` at the first `call` that is the moment, keeping its queue
    /// for the test (or closing it again).
    async fn connect_during(&self, call: Call, agent: &str) {
        let moment = if self.1 == Call::ReleaseComesAndGoes { Call::Release } else { self.1 };
        if call != moment || self.3.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let hub = self.0.get().unwrap().clone();
        if self.1 == Call::ReleaseComesAndGoes {
            // Later than the old socket's leaving by the clock the rows carry (milliseconds).
            tokio::time::sleep(Duration::from_millis(5)).await;
            let new = hub.register(agent, None, Grant::default(), 0).await;
            hub.heartbeat(agent, new.id, "2.0.0").await;
            Box::pin(hub.unregister(agent, new.id)).await;
        } else {
            let registered = hub.register(agent, None, Grant::default(), 0).await;
            REGISTERED.lock().unwrap().push((agent.to_string(), registered));
        }
    }
}

#[async_trait::async_trait]
impl crate::conn::bus::Bus for ConnectsDuring {
    async fn hold(&self, h: &crate::conn::bus::Held) -> Result<(), crate::conn::bus::BusError> {
        self.2.lock().unwrap().push(format!("hold {}", h.conn));
        crate::conn::bus::local::LocalBus.hold(h).await
    }
    async fn release(&self, a: &str, c: u64) -> Result<bool, crate::conn::bus::BusError> {
        self.2.lock().unwrap().push(format!("release {c}"));
        self.connect_during(Call::Release, a).await;
        crate::conn::bus::local::LocalBus.release(a, c).await
    }
    async fn refresh(&self, h: &[crate::conn::bus::Held]) -> Result<(), crate::conn::bus::BusError> {
        crate::conn::bus::local::LocalBus.refresh(h).await
    }
    /// As a bus that keeps records (Redis), so that the hub keeps them right.
    fn record_ttl(&self) -> Option<Duration> {
        Some(Duration::from_secs(30))
    }
    async fn presence(
        &self,
        ids: &[String],
    ) -> Result<Vec<Option<crate::model::agent::StatusRow>>, crate::conn::bus::BusError> {
        crate::conn::bus::local::LocalBus.presence(ids).await
    }
    async fn where_held(&self, ids: &[String]) -> Result<Vec<Option<String>>, crate::conn::bus::BusError> {
        crate::conn::bus::local::LocalBus.where_held(ids).await
    }
    async fn forward(&self, agent: &str, _: &str) -> Result<bool, crate::conn::bus::BusError> {
        self.connect_during(Call::Forward, agent).await;
        Ok(false)
    }
    async fn expect_reply(&self, _: &Callback, _: Duration) -> Result<(), crate::conn::bus::BusError> {
        Ok(())
    }
    async fn route_reply(&self, _: &Callback, _: &str) -> Result<bool, crate::conn::bus::BusError> {
        Ok(false)
    }
    async fn broadcast(&self, _: &crate::conn::bus::Inbound) -> Result<(), crate::conn::bus::BusError> {
        Ok(())
    }
}

/// The sockets [`ConnectsDuring`] registered, by agent (tests run in parallel), with their
/// queues: what was sent on them is read by the tests.
static REGISTERED: std::sync::Mutex<Vec<(String, super::Registered)>> = std::sync::Mutex::new(Vec::new());

fn registered_during(agent: &str) -> Option<super::Registered> {
    let mut all = REGISTERED.lock().unwrap();
    let i = all.iter().position(|(a, _)| a == agent)?;
    Some(all.remove(i).1)
}

/// Found by the fault suite (long mode, seed 116): a rollout's request was declared not sent (no
/// node held the agent) although a socket of the agent that opened meanwhile had taken it and
/// sent it; the member was asked again with a new callback, and the agent got both. A request
/// that a socket took is sent, and stays registered for its reply.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_taken_by_a_socket_that_opened_while_it_was_forwarded_counts_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let bus = ConnectsDuring::new(Call::Forward);
    let hub = Arc::new(Hub::new(store, bus.clone(), Arc::new(Outages::default())));
    let _ = bus.0.set(hub.clone());
    let callback = Callback::issue("agent-late");
    let env = Message::UpgradeRequest { version: Some("2.0.0".into()), force: None }.reply_to(Some(callback.clone()));
    let sent = hub.send_tracked("agent-late", env, WAIT).await;
    assert!(sent.is_ok(), "the socket that opened took it: {sent:?}");
    assert!(hub.tracks(&callback), "its reply is still waited for");
    let mut registered = registered_during("agent-late").expect("the socket registered");
    let frame = tokio::time::timeout(WAIT, registered.queue.recv()).await.ok().flatten();
    let frame = frame.expect("the request went out on the new socket");
    assert!(frame.contains(callback.as_str()), "{frame}");
}

/// A hub over a [`ConnectsDuring`] bus at `call`, on a SQLite store (in the directory returned,
/// which the caller keeps), and the id of an agent of the store's.
async fn hub_over(call: Call) -> (tempfile::TempDir, Arc<dyn Store>, Arc<ConnectsDuring>, Arc<Hub>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let bus = ConnectsDuring::new(call);
    let hub = Arc::new(Hub::new(store.clone(), bus.clone(), Arc::new(Outages::default())));
    let _ = bus.0.set(hub.clone());
    let agent = store.create_agent("turn", "active", &serde_json::json!([]), None).await.unwrap().id;
    (dir, store, bus, hub, agent)
}

/// An agent whose last socket here closes as a new one opens (an upgrade's restart): the new
/// socket's status, connected, is the one kept, told and stored, not the old socket's leaving;
/// and its record on the bus, which the old socket's release may have removed (Redis lets a
/// node's records go by agent), is made again.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_that_opens_as_the_agents_last_one_closes_keeps_the_agent_connected() {
    let (_dir, store, bus, hub, agent) = hub_over(Call::Release).await;
    let agent = agent.as_str();
    let mut told = hub.subscribe();
    let old = hub.register(agent, Some("1.0.0".into()), Grant::default(), 0).await;
    hub.heartbeat(agent, old.id, "1.0.0").await;
    hub.unregister(agent, old.id).await;
    let new = registered_during(agent).expect("a socket opened as the old one was let go");

    assert!(hub.is_connected(agent));
    let log = bus.2.lock().unwrap().clone();
    let (o, n) = (old.id, new.id);
    assert_eq!(log, [format!("hold {o}"), format!("release {o}"), format!("hold {n}"), format!("hold {n}")]);
    assert_eq!(status_of(&hub, agent).await.map(|s| s.status), Some(AgentStatus::Connected));
    hub.heartbeat(agent, new.id, "1.0.0").await;
    hub.statuses_written().await;
    let stored = store.statuses(&[agent.to_string()]).await.unwrap().pop().flatten().unwrap();
    assert_eq!(stored.status, AgentStatus::Connected, "{stored:?}");
    while let Ok((told, row)) = told.try_recv() {
        assert_eq!((told.as_str(), row.status), (agent, AgentStatus::Connected), "told {row:?}");
    }
}

/// An agent's last socket here is let go while a new one opens, reports a new version and closes
/// again: the new socket's leaving, the later, is the one told and stored, at its version.
#[tokio::test(flavor = "multi_thread")]
async fn the_later_of_two_leavings_is_the_one_stored() {
    let (_dir, store, _bus, hub, agent) = hub_over(Call::ReleaseComesAndGoes).await;
    let agent = agent.as_str();
    let old = hub.register(agent, Some("1.0.0".into()), Grant::default(), 0).await;
    hub.heartbeat(agent, old.id, "1.0.0").await;
    let mut told = hub.subscribe();
    hub.unregister(agent, old.id).await;

    assert!(!hub.is_connected(agent));
    let told: Vec<(AgentStatus, String)> =
        std::iter::from_fn(|| told.try_recv().ok()).map(|(_, row)| (row.status, row.version)).collect();
    assert_eq!(told.last(), Some(&(AgentStatus::Disconnected, "2.0.0".to_string())), "told {told:?}");
    hub.flush_statuses(WAIT).await.unwrap();
    let stored = store.statuses(&[agent.to_string()]).await.unwrap().pop().flatten().unwrap();
    assert_eq!((stored.status, stored.version.as_str()), (AgentStatus::Disconnected, "2.0.0"), "{stored:?}");
}

/// A sink that notes, as each reply reaches it, whether the hub still holds its request.
struct Noting(std::sync::OnceLock<Arc<Hub>>, mpsc::UnboundedSender<bool>);

impl ReplySink for Noting {
    fn deliver(self: Arc<Self>, _: String, env: Envelope) {
        let held = env.callback.as_ref().is_some_and(|cb| self.0.get().unwrap().tracks(cb));
        let _ = self.1.send(held);
    }
}

/// Found in a rollout of 10,000 on one node: about 20 of its members were sent their request
/// again, with an event saying another node had driven the rollout. The hub let a rollout's
/// request go before the rollout had filed the answer (filed in a task of its own), and a look at
/// the members between the two found one in flight with no request held. The sink now has the
/// answer while the request is still held, and the request goes after.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_has_the_answer_before_its_request_is_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let hub = Arc::new(Hub::new(store, Arc::new(crate::conn::bus::local::LocalBus), Arc::new(Outages::default())));
    let (tx, mut held) = mpsc::unbounded_channel();
    let sink = Arc::new(Noting(std::sync::OnceLock::new(), tx));
    let _ = sink.0.set(hub.clone());
    hub.set_orphan_replies(sink);
    let mut socket = hub.register("agent-1", None, Grant::default(), 0).await.queue;
    let callback = Callback::issue("agent-1");
    hub.send_tracked("agent-1", ask(&callback), WAIT).await.unwrap();
    assert!(next_frame(&mut socket).await.contains(callback.as_str()));

    let answer = Message::UpgradeResponse { status_code: 200 }.reply_to(Some(callback.clone()));
    hub.complete("agent-1", answer).await;
    assert_eq!(held.recv().await, Some(true), "the request was still held when the answer was handed over");
    assert!(!hub.tracks(&callback), "and let go after");
}

/// The roster count the rollout planner watches: it changes with each socket an agent opens, and
/// when the agent loses its last socket here, not when one of two sockets (an upgrade's) goes.
#[tokio::test(flavor = "multi_thread")]
async fn the_roster_changes_when_an_agent_comes_or_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let hub = Hub::new(store, Arc::new(crate::conn::bus::local::LocalBus), Arc::new(Outages::default()));
    let start = hub.roster();
    let first = hub.register("agent-1", None, Grant::default(), 0).await;
    let connected = hub.roster();
    assert_ne!(connected, start, "connected");
    let second = hub.register("agent-1", None, Grant::default(), 0).await;
    let both = hub.roster();
    hub.unregister("agent-1", first.id).await;
    assert_eq!(hub.roster(), both, "the agent keeps a socket here");
    hub.unregister("agent-1", second.id).await;
    assert_ne!(hub.roster(), both, "gone");
    assert!(!hub.is_connected("agent-1"));
}

/// An agent's own heartbeat, recorded by its socket where the hub gave it ([`Hub::heard`]),
/// freshens its live status as an answer to the server's does (the server does not ask an agent
/// it has just heard from), and changes nothing else; a status set later starts afresh, and the
/// place stays the same; an agent with no status here has no place to record one.
#[tokio::test(flavor = "multi_thread")]
async fn an_agents_own_heartbeat_freshens_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let hub = Hub::new(store, Arc::new(crate::conn::bus::local::LocalBus), Arc::new(Outages::default()));
    let socket = hub.register("agent-1", Some("1.0.0".into()), Grant::default(), 0).await;
    let connected = status_of(&hub, "agent-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let heard_at = hub.heard("agent-1").expect("a place to record the agent's heartbeats");
    heard_at.record(edge_agent_base::time::now_ms());
    let heard = status_of(&hub, "agent-1").await.unwrap();
    assert!(heard.updated > connected.updated, "{} after {}", heard.updated, connected.updated);
    assert_eq!((heard.status, heard.version.as_str()), (connected.status, connected.version.as_str()));
    assert_eq!(status_of(&hub, "agent-1").await.unwrap(), heard, "read twice, the same");

    tokio::time::sleep(Duration::from_millis(5)).await;
    heard_at.record(edge_agent_base::time::now_ms() - 60_000);
    hub.heartbeat("agent-1", socket.id, "1.1.0").await;
    let answered = status_of(&hub, "agent-1").await.unwrap();
    assert!(answered.updated > heard.updated, "a status set later starts afresh: {answered:?}");
    assert_eq!(answered.version, "1.1.0");
    assert!(Arc::ptr_eq(&heard_at, &hub.heard("agent-1").unwrap()), "the same place");
    assert!(!heard_at.gone());
    assert!(hub.heard("agent-2").is_none(), "no status made up");

    // The agent's last socket here closes: the place is let go, and a new socket's is another.
    hub.unregister("agent-1", socket.id).await;
    assert!(heard_at.gone(), "a socket still recording there takes the new place");
    let _again = hub.register("agent-1", Some("1.1.0".into()), Grant::default(), 0).await;
    let new_place = hub.heard("agent-1").unwrap();
    assert!(!Arc::ptr_eq(&heard_at, &new_place) && !new_place.gone());
}

async fn status_of(hub: &Hub, agent_id: &str) -> Option<crate::model::agent::StatusRow> {
    hub.statuses(&[agent_id.to_string()]).await.unwrap().pop().flatten()
}

/// A revocation closes the sockets opened with the clients or tokens it names, whichever agent
/// they speak as, and no other; a socket whose credentials were checked before a revocation and
/// that registers after it is closed as it registers.
#[tokio::test(flavor = "multi_thread")]
async fn sockets_close_by_the_credentials_they_were_opened_with() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open(&StoreConfig::Sqlite(dir.path().to_path_buf())).await.unwrap();
    let hub = Hub::new(store, Arc::new(crate::conn::bus::local::LocalBus), Arc::new(Outages::default()));
    let revocation = |clients: &[&str], tokens: &[&str], agents: &[&str], why: &str| Revocation {
        clients: clients.iter().map(|c| c.to_string()).collect(),
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        agents: agents.iter().map(|a| a.to_string()).collect(),
        reason: why.into(),
        ..Default::default()
    };
    let mut own = hub.register("agent-1", None, Grant::of("client-of-1", "hash-a"), 0).await;
    let mut admins = hub.register("agent-1", None, Grant::of("admin", "hash-b"), 0).await;
    let mut admins_other = hub.register("agent-2", None, Grant::of("admin", "hash-c"), 0).await;
    let mut kept = hub.register("agent-3", None, Grant::of("client-of-3", "hash-d"), 0).await;
    assert_eq!(hub.revoke(&revocation(&[], &[], &[], "nothing")), 0);
    let checked = hub.revocation_epoch();
    assert_eq!(hub.revoke(&revocation(&["admin"], &[], &[], "Client removed")), 2);
    assert_eq!(admins.kicked.try_recv().unwrap(), "Client removed");
    assert_eq!(admins_other.kicked.try_recv().unwrap(), "Client removed");
    assert!(own.kicked.try_recv().is_err() && kept.kicked.try_recv().is_err());
    assert_eq!(hub.revoke(&revocation(&[], &["hash-a"], &[], "Access token revoked")), 1);
    assert_eq!(own.kicked.try_recv().unwrap(), "Access token revoked");
    assert_eq!(hub.revoke(&revocation(&[], &[], &["agent-3"], "Agent removed")), 1);
    assert_eq!(kept.kicked.try_recv().unwrap(), "Agent removed");

    // The admin's token was checked before its removal, and the socket registers after it.
    let mut late = hub.register("agent-4", None, Grant::of("admin", "hash-e"), checked).await;
    assert_eq!(late.kicked.try_recv().unwrap(), "Client removed");
    let mut later = hub.register("agent-4", None, Grant::of("admin", "hash-f"), hub.revocation_epoch()).await;
    assert!(later.kicked.try_recv().is_err(), "checked after the revocation: the credentials were good then");
}
