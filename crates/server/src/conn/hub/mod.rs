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

mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use edge_agent_wire::AgentStatus;

use super::bus::{Bus, BusError, Inbound};
use crate::model::agent::StatusRow;
use crate::store::{Store, StoreError};
use edge_agent_wire::{Callback, Envelope, Message};

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
fn send_again(agent_id: &str, conn_id: u64, tx: mpsc::Sender<String>, again: Vec<String>) {
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

/// A request waiting for its reply: where the reply goes, and what to send again if the socket
/// that carried it closes first.
struct Waiter {
    done: oneshot::Sender<Envelope>,
    agent_id: String,
    json: String,
    /// The socket on this node that carries it; None while it has none here.
    conn: Option<u64>,
    /// While `conn` is None: the socket on another node it was last handed to (`<node> <conn>`).
    remote: Option<String>,
}

/// A live socket: its queue carries ready JSON text (a `String` per slot keeps the queue of each
/// of thousands of idle connections small).
struct Conn {
    id: u64,
    tx: mpsc::Sender<String>,
}

pub struct Hub {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    next_id: AtomicU64,
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    /// The live status of every agent with a socket here.
    live: Mutex<HashMap<String, StatusRow>>,
    waiters: Mutex<HashMap<Callback, Waiter>>,
    /// Status writes the store refused (it was down), retried by [`Hub::refresh`].
    unsaved: Mutex<HashMap<String, StatusRow>>,
    orphans: std::sync::OnceLock<Arc<dyn ReplySink>>,
    /// Status or version changes of the agents on this node, for the open web pages.
    changes: broadcast::Sender<(String, StatusRow)>,
}

/// Removes a waiter when the request that registered it ends, however it ends.
struct WaiterGuard<'a> {
    hub: &'a Hub,
    callback: Callback,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.hub.waiters.lock().unwrap().remove(&self.callback);
    }
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Hub {
        Hub {
            store,
            bus,
            next_id: AtomicU64::new(1),
            conns: Default::default(),
            live: Default::default(),
            waiters: Default::default(),
            unsaved: Default::default(),
            orphans: Default::default(),
            changes: broadcast::channel(1024).0,
        }
    }

    /// Where replies routed here that nobody waits for go.
    pub fn set_orphan_replies(&self, sink: Arc<dyn ReplySink>) {
        let _ = self.orphans.set(sink);
    }

    fn newest_tx(&self, agent_id: &str) -> Option<mpsc::Sender<String>> {
        self.conns.lock().unwrap().get(agent_id).and_then(|l| l.last()).map(|c| c.tx.clone())
    }

    /// A new live socket for `agent_id`; returns its id and the queue of messages to send on it.
    /// Requests that wait for an answer and lost their socket go out on it first.
    pub async fn register(&self, agent_id: &str) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(16);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let again = {
            let mut conns = self.conns.lock().unwrap();
            conns.entry(agent_id.to_string()).or_default().push(Conn { id, tx: tx.clone() });
            self.move_waiters(agent_id, None, Some(id))
        };
        send_again(agent_id, id, tx, again);
        let known = self.live.lock().unwrap().get(agent_id).map(|s| s.version.clone());
        let version = match known {
            Some(v) => v,
            None => match self.store.statuses(&[agent_id.to_string()]).await {
                Ok(mut rows) => rows.pop().flatten().map(|s| s.version).unwrap_or_else(|| "unknown".into()),
                Err(e) => {
                    tracing::warn!(agent_id, "cannot read the agent's last version: {e}");
                    "unknown".into()
                }
            },
        };
        self.set_status(agent_id, id, AgentStatus::Connected, version, true).await;
        (id, rx)
    }

    /// The socket closed; the agent is disconnected when it was its last one here.
    pub async fn unregister(&self, agent_id: &str, conn_id: u64) {
        let newest = {
            let mut conns = self.conns.lock().unwrap();
            let list = conns.entry(agent_id.to_string()).or_default();
            list.retain(|c| c.id != conn_id);
            let newest = list.last().map(|c| (c.id, c.tx.clone()));
            if newest.is_none() {
                conns.remove(agent_id);
            }
            let again = self.move_waiters(agent_id, Some(conn_id), newest.as_ref().map(|n| n.0));
            newest.map(|n| (n, again))
        };
        if let Some(((to, tx), again)) = newest {
            return send_again(agent_id, to, tx, again);
        }
        let version = self.live.lock().unwrap().remove(agent_id).map(|s| s.version).unwrap_or_else(|| "unknown".into());
        if let Err(e) = self.bus.release(agent_id, conn_id).await {
            tracing::warn!(agent_id, "cannot release the agent's record on the bus: {e}");
        }
        let row = StatusRow { status: AgentStatus::Disconnected, version, updated: edge_agent_base::time::now_iso() };
        let _ = self.changes.send((agent_id.to_string(), row.clone()));
        self.save(agent_id, row).await;
    }

    /// Moves the waiting requests of `agent_id` carried by socket `from` to socket `to`; the ones
    /// to send on `to`. Called with the sockets locked, so that no socket comes or goes meanwhile.
    fn move_waiters(&self, agent_id: &str, from: Option<u64>, to: Option<u64>) -> Vec<String> {
        let mut waiters = self.waiters.lock().unwrap();
        let moved = waiters.values_mut().filter(|w| w.agent_id == agent_id && w.conn == from && !w.done.is_closed());
        moved
            .map(|w| {
                w.conn = to;
                w.remote = None;
                w.json.clone()
            })
            .filter(|_| to.is_some())
            .collect()
    }

    /// How many agents have a socket on this node.
    pub fn local_agents(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.conns.lock().unwrap().contains_key(agent_id)
    }

    /// The version an agent connected to this node reports, without asking the bus or the store.
    pub fn local_version(&self, agent_id: &str) -> Option<String> {
        self.live.lock().unwrap().get(agent_id).map(|s| s.version.clone())
    }

    /// Sends `msg` to the agent's newest socket, on this node or another, with a fresh callback,
    /// and waits for the first reply carrying that callback, from whichever socket it comes.
    pub async fn request(&self, agent_id: &str, msg: Message, wait: Duration) -> Result<Envelope, RequestError> {
        let callback = Callback::issue(agent_id);
        let (done, reply) = oneshot::channel();
        let frame = msg.reply_to(Some(callback.clone())).to_json();
        let expected = self.bus.expect_reply(&callback, wait).await;
        // Registered under the lock of the sockets, so that a socket closing now either is not
        // chosen or finds the request to send again.
        let local = {
            let conns = self.conns.lock().unwrap();
            let newest = conns.get(agent_id).and_then(|l| l.last()).map(|c| (c.id, c.tx.clone()));
            let waiter = Waiter {
                done,
                agent_id: agent_id.to_string(),
                json: frame.clone(),
                conn: newest.as_ref().map(|n| n.0),
                remote: None,
            };
            self.waiters.lock().unwrap().insert(callback.clone(), waiter);
            newest.map(|n| n.1)
        };
        let _guard = WaiterGuard { hub: self, callback: callback.clone() };
        match local {
            Some(tx) => {
                if let Err(e) = expected {
                    // The reply most likely comes back on this node's socket anyway.
                    tracing::warn!(agent_id, "cannot record the callback on the bus: {e}");
                }
                // A closed queue means the socket is going: its unregistering sends the request again.
                let _ = tx.send(frame).await;
            }
            None => {
                expected.map_err(|e| RequestError::Unavailable(e.to_string()))?;
                let at = self.bus.where_held(&[agent_id.to_string()]).await.ok().and_then(|mut v| v.pop().flatten());
                self.forward(agent_id, &frame).await?;
                self.handed(&callback, at);
            }
        }
        match tokio::time::timeout(wait, reply).await {
            Ok(Ok(env)) => Ok(env),
            _ => Err(RequestError::Timeout),
        }
    }

    /// Records the socket on another node that a waiting request was handed to.
    fn handed(&self, callback: &Callback, socket: Option<String>) {
        if let Some(w) = self.waiters.lock().unwrap().get_mut(callback).filter(|w| w.conn.is_none()) {
            w.remote = socket;
        }
    }

    /// Sends again, through the bus, the requests that wait here without a socket here, to the
    /// agent's socket on another node when it is not the one they were handed to: the socket that
    /// carried them closed, and the agent came back on another node (protocol.md §4.4). Called
    /// every [`REDELIVERY_PERIOD`]; one bus lookup, and only when such requests wait.
    pub async fn redeliver(&self) {
        let lost: Vec<(Callback, String, Option<String>, String)> = {
            let waiters = self.waiters.lock().unwrap();
            let lost = waiters.iter().filter(|(_, w)| w.conn.is_none() && !w.done.is_closed());
            lost.map(|(cb, w)| (cb.clone(), w.agent_id.clone(), w.remote.clone(), w.json.clone())).collect()
        };
        if lost.is_empty() {
            return;
        }
        let mut agents: Vec<String> = lost.iter().map(|l| l.1.clone()).collect();
        agents.sort();
        agents.dedup();
        let sockets: HashMap<String, String> = match self.bus.where_held(&agents).await {
            Ok(found) => agents.into_iter().zip(found).filter_map(|(a, s)| Some((a, s?))).collect(),
            Err(e) => return tracing::warn!("cannot tell where agents with unanswered requests are: {e}"),
        };
        for (callback, agent_id, remote, json) in lost {
            let Some(socket) = sockets.get(&agent_id).filter(|s| remote.as_ref() != Some(*s)) else { continue };
            tracing::info!(agent_id, %callback, socket, "sending an unanswered request again on another node");
            if self.forward(&agent_id, &json).await.is_ok() {
                self.handed(&callback, Some(socket.clone()));
            }
        }
    }

    async fn forward(&self, agent_id: &str, frame: &str) -> Result<(), RequestError> {
        match self.bus.forward(agent_id, frame).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(RequestError::NotConnected),
            Err(e) => Err(RequestError::Unavailable(e.to_string())),
        }
    }

    /// Hands a reply from `agent_id` to the request waiting for its callback, here or on the node
    /// where it waits; when nobody waits any more (or the callback was issued to another agent),
    /// to the sink of orphan replies (the rollouts, which know the callbacks they sent).
    pub async fn complete(&self, agent_id: &str, env: Envelope) {
        let Some(cb) = env.callback.clone() else { return };
        if cb.is_for(agent_id) {
            let waiter = self.waiters.lock().unwrap().remove(&cb);
            let env = match waiter {
                Some(w) => match w.done.send(env) {
                    Ok(()) => return,
                    Err(env) => env,
                },
                None => env,
            };
            match self.bus.route_reply(&cb, &env.to_json()).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(agent_id, callback = %cb, "cannot route the reply to its node: {e}"),
            }
            return self.orphan(agent_id.to_string(), env);
        }
        self.orphan(agent_id.to_string(), env)
    }

    /// A reply nobody waits for, to the sink of orphan replies.
    fn orphan(&self, agent_id: String, env: Envelope) {
        match self.orphans.get() {
            Some(sink) => sink.clone().deliver(agent_id, env),
            None => tracing::info!(agent_id, "late reply dropped: nobody waits for it any more"),
        }
    }

    /// What another node sent: a frame for a socket here, or a reply to a request waiting here.
    pub async fn inbound(&self, msg: Inbound) {
        match msg {
            Inbound::Deliver { agent, frame } => match self.newest_tx(&agent) {
                Some(tx) => {
                    let _ = tx.send(frame).await;
                }
                None => tracing::info!(agent_id = agent, "frame for an agent no longer connected here dropped"),
            },
            Inbound::Reply { callback, frame } => {
                let waiter = self.waiters.lock().unwrap().remove(&callback);
                match (waiter, Envelope::parse(&frame, edge_agent_wire::message::HARD_MAX_MESSAGE_BYTES)) {
                    (Some(w), Ok(env)) => {
                        let _ = w.done.send(env);
                    }
                    // The node that routed it here checked that the callback is its agent's.
                    (None, Ok(env)) => match callback.agent_id() {
                        Some(agent) => self.orphan(agent.to_string(), env),
                        None => tracing::info!(%callback, "late reply dropped: nobody waits for it any more"),
                    },
                    (_, Err(e)) => tracing::warn!(%callback, "unreadable reply from another node: {e}"),
                }
            }
        }
    }

    /// Sends `msg` to the agent's newest socket, here or on another node, without a callback:
    /// nobody waits for a reply.
    pub async fn send(&self, agent_id: &str, msg: Message) -> Result<(), RequestError> {
        self.send_envelope(agent_id, msg.plain(), None).await
    }

    /// Sends a message (with the callback it carries) to the agent's newest socket, here or on
    /// another node, waiting for nothing: whoever sent it files the reply (see
    /// `Rollouts::on_reply`). With `expect`, replies carrying the callback are routed back to this
    /// node for that long, from whichever node the agent answers on.
    pub async fn send_envelope(
        &self,
        agent_id: &str,
        env: Envelope,
        expect: Option<Duration>,
    ) -> Result<(), RequestError> {
        if let (Some(wait), Some(callback)) = (expect, env.callback.as_ref()) {
            if let Err(e) = self.bus.expect_reply(callback, wait).await {
                tracing::warn!(agent_id, "cannot record the callback on the bus: {e}");
            }
        }
        let frame = env.to_json();
        match self.newest_tx(agent_id) {
            Some(tx) => tx.send(frame).await.map_err(|_| RequestError::NotConnected),
            None => self.forward(agent_id, &frame).await,
        }
    }
}
