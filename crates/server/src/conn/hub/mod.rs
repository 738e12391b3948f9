//! Live agent connections on this node, each agent's status, and the callbacks that route replies
//! to the HTTP request waiting for them. A reply is matched by callback, not by socket: the answer
//! to an upgrade arrives on the new process's socket, on whichever node that socket is. What other
//! nodes hold is reached through the [`Bus`]; what outlives a connection is in the [`Store`].
//!
//! Status writes: the store is written when an agent connects, disconnects or changes version,
//! never on a plain heartbeat; the bus record is renewed on a timer ([`Hub::refresh`]).
//!
//! Delivery is at least once (protocol.md §4.4): a request whose socket closes before a reply
//! carrying its callback is sent again, with the same callback, on the agent's next socket, for as
//! long as its caller waits: at once when that socket is on this node, else within
//! [`REDELIVERY_PERIOD`] through the bus to the node that holds it. The agent acts once per callback.
//! The rollouts' requests are delivered the same way ([`Hub::send_tracked`]), their replies going
//! to the sink of replies nobody waits for. Requests an agent ignores (Medplum's agent and
//! `agent:stats`) are noted per socket ([`Hub::ignores`]), so that they are not asked again there.

mod delivery;
mod ignored;
mod outbox;
mod status;
pub use status::Heard;
mod waiters;
mod writes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent_wire::AgentStatus;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

pub use outbox::Inbox;
use outbox::Outbox;

use super::bus::watched::Watched;
use super::bus::{Bus, BusError};
use super::outages::Outages;
use crate::model::agent::StatusRow;
use crate::model::revocation::Revocation;
use crate::store::{Store, StoreError};
use edge_agent_wire::Envelope;

/// How often requests that lost their socket look for the agent on other nodes.
pub const REDELIVERY_PERIOD: Duration = Duration::from_millis(500);

/// Why a request to an agent got no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("Agent not connected")]
    NotConnected,
    #[error("Timeout")]
    Timeout,
    /// Redis could not be asked where the agent is; the caller should try again.
    #[error("Cluster bus unavailable, try again: {0}")]
    Unavailable(String),
}

/// Why a rollout's request did not go out, or may not have.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// No node holds a socket of the agent: nothing was sent.
    #[error("the agent is not connected")]
    NotConnected,
    /// The bus failed before anything was published: nothing was sent.
    #[error("cluster bus unavailable, nothing sent: {0}")]
    NotSent(String),
    /// The bus failed while publishing: the request may have gone out. It stays registered, and is
    /// sent again (same callback) once the bus tells where the agent is.
    #[error("cluster bus unavailable, the request may have gone out: {0}")]
    MaybeSent(String),
}

impl From<SendError> for RequestError {
    /// To a caller, a request that did not or may not have gone out is one to try again.
    fn from(e: SendError) -> RequestError {
        match e {
            SendError::NotConnected => RequestError::NotConnected,
            SendError::NotSent(why) | SendError::MaybeSent(why) => RequestError::Unavailable(why),
        }
    }
}

/// Why a status cannot be read right now.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Who files replies that no request on this node waits for (the rollouts' answers).
pub trait ReplySink: Send + Sync {
    /// `agent_id`'s reply `env`, whose callback names a request that nobody here waits for.
    fn deliver(self: Arc<Self>, agent_id: String, env: Envelope);
}

/// Queues requests again on a socket (outside any lock: the queue may be full for a moment).
fn send_again(agent_id: &str, conn_id: u64, tx: Outbox, again: Vec<String>) {
    if again.is_empty() {
        return;
    }
    tracing::info!(agent_id, conn_id, requests = again.len(), "sending unanswered requests again");
    tokio::spawn(async move {
        for json in again {
            let _ = tx.send(json).await;
        }
    });
}

/// Who takes the reply to a request: the caller waiting for it, or, for a request sent for the
/// rollouts, the sink of replies nobody waits for.
enum Taker {
    Caller(oneshot::Sender<Envelope>),
    Sink,
}

impl Waiter {
    /// Whether a reply is still wanted (and the request worth sending again).
    fn wanted(&self) -> bool {
        match &self.taker {
            Taker::Caller(done) => !done.is_closed(),
            Taker::Sink => Instant::now() < self.until,
        }
    }
}

/// A request waiting for its reply: where the reply goes, and what to send again if the socket
/// that carried it closes first.
struct Waiter {
    taker: Taker,
    /// Until when its reply is expected (and routed back to this node by the bus).
    until: Instant,
    agent_id: String,
    json: String,
    /// The socket on this node that carries it; None while it has none here.
    conn: Option<u64>,
    /// While `conn` is None: the socket on another node it was last handed to (`<node> <conn>`).
    remote: Option<String>,
}

/// A live socket: its queue carries ready JSON text, and holds nothing while empty.
struct Conn {
    id: u64,
    tx: Outbox,
    /// Fired (with the reason to tell the agent) when its credentials are taken back.
    kick: Option<oneshot::Sender<String>>,
    grant: Grant,
}

/// The credentials a socket was opened with, as fingerprints (two words for every socket, rather
/// than two strings): the client whose they were (the agent's own, or an admin's speaking as the
/// agent) and the token's hash. Revoking either closes the socket ([`Hub::revoke`]); a
/// fingerprint shared by chance closes a socket that then connects again.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Grant {
    pub client: u64,
    pub token: u64,
}

impl Grant {
    /// The grant of `client`'s token whose hash is `token_hash`.
    pub fn of(client: &str, token_hash: &str) -> Grant {
        Grant { client: fingerprint(client), token: fingerprint(token_hash) }
    }
}

fn fingerprint(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A socket just registered: its id, its queue, and what fires when it must close.
pub struct Registered {
    pub id: u64,
    pub queue: Inbox,
    pub kicked: oneshot::Receiver<String>,
}

/// The most sockets one agent keeps open on a node: its own, the new process's while it
/// upgrades, and one more for a reconnection that overtakes the close of the old one.
pub const SOCKETS_PER_AGENT: usize = 3;
/// What the oldest socket of an agent over [`SOCKETS_PER_AGENT`] is told as it is closed.
fn replaced() -> String {
    format!("Closed: this agent opened newer sockets (at most {SOCKETS_PER_AGENT} at once)")
}

pub struct Hub {
    store: Arc<dyn Store>,
    /// The bus, every failure of which is noted in [`Hub::outages`].
    bus: Watched,
    outages: Arc<Outages>,
    next_id: AtomicU64,
    /// How many times an agent gained or lost its sockets here ([`Hub::roster`]).
    roster: AtomicU64,
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    /// The live status of every agent with a socket here.
    live: Mutex<HashMap<String, status::Live>>,
    waiters: Mutex<waiters::Waiters>,
    /// Status writes, gathered (and those the store refused, retried by [`Hub::refresh`]).
    writes: Arc<writes::StatusWrites>,
    orphans: std::sync::OnceLock<Arc<dyn ReplySink>>,
    /// Status or version changes of the agents on this node, for the open web pages.
    changes: broadcast::Sender<(String, StatusRow)>,
    /// (agent, request type) → the socket on which the agent left such a request unanswered.
    ignored: Mutex<HashMap<(String, &'static str), String>>,
    /// Lines about the bus that an agent's replies would repeat (one a minute per agent).
    quiet: crate::quiet::Quiet,
    /// How many revocations were applied here ([`Hub::revoke`]), and the latest of them: a
    /// socket authorized before one and registered after it is closed as it registers.
    epoch: AtomicU64,
    revoked: Mutex<std::collections::VecDeque<Revoked>>,
    /// When the last renewal of this node's records on the bus that succeeded started (ms since
    /// the epoch): a bus call failing after it may have let a record lapse ([`Hub::refresh`]).
    renewed_at: std::sync::atomic::AtomicI64,
}

/// A revocation applied on this node, as [`Hub::register`] checks a new socket against it.
struct Revoked {
    epoch: u64,
    agents: Vec<String>,
    clients: Vec<u64>,
    tokens: Vec<u64>,
    why: String,
}

/// The revocations remembered for sockets registering just after them (far more than a socket's
/// moment between its token's check and its registering sees).
const RECENT_REVOCATIONS: usize = 64;

impl Revoked {
    fn names(&self, agent_id: &str, grant: &Grant) -> bool {
        self.agents.iter().any(|a| a == agent_id)
            || self.clients.contains(&grant.client)
            || self.tokens.contains(&grant.token)
    }
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, outages: Arc<Outages>) -> Hub {
        Hub {
            writes: writes::StatusWrites::new(store.clone()),
            store,
            bus: Watched::new(bus, outages.clone()),
            outages,
            next_id: AtomicU64::new(1),
            roster: AtomicU64::new(0),
            conns: Default::default(),
            live: Default::default(),
            waiters: Default::default(),
            orphans: Default::default(),
            changes: broadcast::channel(1024).0,
            ignored: Default::default(),
            quiet: crate::quiet::Quiet::new(std::time::Duration::from_secs(60)),
            epoch: AtomicU64::new(0),
            revoked: Default::default(),
            renewed_at: std::sync::atomic::AtomicI64::new(edge_agent_base::time::now_ms()),
        }
    }

    /// Where replies routed here that nobody waits for go.
    pub fn set_orphan_replies(&self, sink: Arc<dyn ReplySink>) {
        let _ = self.orphans.set(sink);
    }

    fn newest_tx(&self, agent_id: &str) -> Option<Outbox> {
        self.conns.lock().unwrap().get(agent_id).and_then(|l| l.last()).map(|c| c.tx.clone())
    }

    /// A new live socket for `agent_id`, whose version was `stored` as last written (read with
    /// its credentials); returns the socket's id, the queue of messages to send on it, and what
    /// fires when it must close. Requests that wait for an answer and lost their socket go out on
    /// it first.
    /// `since`: [`Hub::revocation_epoch`] before the socket's credentials were checked; a
    /// revocation applied here since then that names them closes the socket at once.
    pub async fn register(&self, agent_id: &str, stored: Option<String>, grant: Grant, since: u64) -> Registered {
        let (tx, rx) = outbox::queue();
        let (kick, kicked) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let again = {
            let mut conns = self.conns.lock().unwrap();
            // Room for one: an agent has a second socket only for a moment, while it upgrades.
            let list = conns.entry(agent_id.to_string()).or_insert_with(|| Vec::with_capacity(1));
            // Checked in the same hold of the lock as `revoke` closes sockets: none slips between.
            let revoked = self.revoked.lock().unwrap();
            match revoked.iter().find(|r| r.epoch > since && r.names(agent_id, &grant)) {
                Some(r) => {
                    let _ = kick.send(r.why.clone());
                    list.push(Conn { id, tx: tx.clone(), kick: None, grant });
                }
                None => list.push(Conn { id, tx: tx.clone(), kick: Some(kick), grant }),
            }
            drop(revoked);
            // More than that is not an agent upgrading but one credential taking the node's
            // sockets: the oldest are closed.
            let open = list.iter().filter(|c| c.kick.is_some()).count();
            for c in list.iter_mut().filter(|c| c.kick.is_some()).take(open.saturating_sub(SOCKETS_PER_AGENT)) {
                let _ = c.kick.take().map(|k| k.send(replaced()));
            }
            self.roster.fetch_add(1, Ordering::Relaxed);
            self.move_waiters(agent_id, None, Some(id))
        };
        send_again(agent_id, id, tx, again);
        // The newest known: live here, waiting to be written, or as stored.
        let live = self.live.lock().unwrap().get(agent_id).map(|s| s.version().to_string());
        let version = live
            .or_else(|| self.writes.waiting(agent_id).map(|s| s.version))
            .or(stored)
            .unwrap_or_else(|| "unknown".into());
        self.set_status(agent_id, id, AgentStatus::Connected, version, true).await;
        Registered { id, queue: rx, kicked }
    }

    /// How many revocations were applied here: read before a socket's credentials are checked,
    /// and given to [`Hub::register`].
    pub fn revocation_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Applies a revocation to the sockets here: closes those of the agents it names and those
    /// opened with the credentials of a client it names or with a token it names (by its hash),
    /// whichever agent they speak as (an admin's token speaking as an agent is not the agent's),
    /// telling each why; how many. Remembered for sockets registering just after.
    pub fn revoke(&self, r: &Revocation) -> usize {
        let clients = r.clients.iter().map(|c| fingerprint(c)).collect();
        let tokens = r.tokens.iter().map(|t| fingerprint(t)).collect();
        let mut conns = self.conns.lock().unwrap();
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        let revoked = Revoked { epoch, agents: r.agents.clone(), clients, tokens, why: r.reason.clone() };
        let mut closed = 0;
        for (agent_id, list) in conns.iter_mut() {
            for c in list.iter_mut().filter(|c| revoked.names(agent_id, &c.grant)) {
                closed += c.kick.take().is_some_and(|k| k.send(revoked.why.clone()).is_ok()) as usize;
            }
        }
        let mut recent = self.revoked.lock().unwrap();
        if recent.len() == RECENT_REVOCATIONS {
            recent.pop_front();
        }
        recent.push_back(revoked);
        closed
    }

    /// Tells every node `msg` on the bus.
    pub async fn broadcast(&self, msg: &super::bus::Inbound) -> Result<(), BusError> {
        self.bus.broadcast(msg).await
    }

    /// The socket closed; the agent is disconnected when it was its last one here.
    pub async fn unregister(&self, agent_id: &str, conn_id: u64) {
        let (newest, leaving) = {
            let mut conns = self.conns.lock().unwrap();
            let list = conns.entry(agent_id.to_string()).or_default();
            list.retain(|c| c.id != conn_id);
            let newest = list.last().map(|c| (c.id, c.tx.clone()));
            // The agent's live status ends with its last socket, in the same hold of the lock: a
            // new socket registering just after starts its own. The leaving is as of now, before
            // any such socket's status.
            let mut leaving = None;
            if newest.is_none() {
                conns.remove(agent_id);
                self.roster.fetch_add(1, Ordering::Relaxed);
                let version = self.live.lock().unwrap().remove(agent_id).map(|s| {
                    s.end();
                    s.version().to_string()
                });
                leaving = Some(StatusRow {
                    status: AgentStatus::Disconnected,
                    version: version.unwrap_or_else(|| "unknown".into()),
                    updated: edge_agent_base::time::now_iso(),
                });
            }
            let again = self.move_waiters(agent_id, Some(conn_id), newest.as_ref().map(|n| n.0));
            (newest.map(|n| (n, again)), leaving)
        };
        if let Some(((to, tx), again)) = newest {
            return send_again(agent_id, to, tx, again);
        }
        match self.bus.release(agent_id, conn_id).await {
            // Its socket is on another node now (an upgraded agent's new process may reach one
            // before its old socket here closes): that node's row, connected, stays the stored
            // one (this one, newer, would say disconnected until the agent's next change).
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => tracing::warn!(agent_id, "cannot release the agent's record on the bus: {e}"),
        }
        let Some(row) = leaving else { return };
        // Said and queued only while no new socket of the agent registered here meanwhile (its
        // status, connected, is newer), and under the lock a new one takes first: its row, put
        // after this one, replaces it. Nor over a newer row that waits (a new socket that came
        // and went meanwhile; one already written is newer than this in the store, which keeps
        // it).
        let again = {
            let conns = self.conns.lock().unwrap();
            match conns.get(agent_id).filter(|l| !l.is_empty()) {
                None => {
                    if self.writes.waiting(agent_id).is_none_or(|w| w.updated <= row.updated) {
                        let _ = self.changes.send((agent_id.to_string(), row.clone()));
                        self.writes.put_disconnected(agent_id, row);
                    }
                    None
                }
                // The release may have removed the new socket's record on the bus (a node's
                // records are let go by agent): it is made again.
                Some(list) if self.bus.record_ttl().is_some() => {
                    status::held(agent_id, list, &mut self.live.lock().unwrap())
                }
                Some(_) => None,
            }
        };
        let Some(held) = again else { return };
        if let Err(e) = self.bus.hold(&held).await {
            tracing::warn!(agent_id, "cannot record the agent on the bus (retried on the next refresh): {e}");
        }
        // Unless the agent's sockets here closed meanwhile, their releases done: it goes again.
        let gone = !self.conns.lock().unwrap().contains_key(agent_id);
        if gone {
            let _ = self.bus.release(agent_id, held.conn).await;
        }
    }

    /// Moves the waiting requests of `agent_id` carried by socket `from` to socket `to`; the ones
    /// to send on `to`. Called with the sockets locked, so that no socket comes or goes meanwhile.
    fn move_waiters(&self, agent_id: &str, from: Option<u64>, to: Option<u64>) -> Vec<String> {
        self.waiters.lock().unwrap().move_agent(agent_id, from, to)
    }

    /// A count that changes whenever an agent connects here or loses its last socket here: what
    /// lets the rollout planner skip a look at the fleet when nobody came or went.
    pub fn roster(&self) -> u64 {
        self.roster.load(Ordering::Relaxed)
    }

    /// How many agents have a socket on this node.
    pub fn local_agents(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.conns.lock().unwrap().contains_key(agent_id)
    }

    /// When the bus or the store last failed, as this node saw it.
    pub fn outages(&self) -> &Arc<Outages> {
        &self.outages
    }

    /// The version an agent connected to this node reports, without asking the bus or the store.
    pub fn local_version(&self, agent_id: &str) -> Option<String> {
        self.live.lock().unwrap().get(agent_id).map(|s| s.version().to_string())
    }
}

#[cfg(test)]
mod tests;
