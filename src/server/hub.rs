//! Live agent connections, each agent's status, and the callbacks that route replies to the HTTP
//! request waiting for them. A reply is matched by callback, not by socket: the answer to an
//! upgrade arrives on the new process's socket.
//!
//! Delivery is at least once (protocol.md §4.4): a request whose socket closes before a reply
//! carrying its callback is sent again, with the same callback, on the agent's next socket, for
//! as long as its caller waits. The agent acts once per callback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::db::{StatusRow, Store};
use crate::protocol::{Envelope, Message};
use crate::util;

/// Why a request to an agent got no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("Agent not connected")]
    NotConnected,
    #[error("Timeout")]
    Timeout,
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

/// A live socket: its queue carries ready JSON text (a `String` per slot keeps the queue of each
/// of thousands of idle connections small).
struct Conn {
    id: u64,
    tx: mpsc::Sender<String>,
}

/// A request waiting for its reply: where the reply goes, and what to send again if the socket
/// that carried it closes first.
struct Waiter {
    done: oneshot::Sender<Envelope>,
    agent_id: String,
    json: String,
    /// The socket that carries it; None while the agent has none.
    conn: Option<u64>,
}

pub struct Hub {
    store: Arc<Store>,
    next_id: AtomicU64,
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    waiters: Mutex<HashMap<String, Waiter>>,
    status: Mutex<HashMap<String, StatusRow>>,
}

/// Removes a waiter when the request that registered it ends, however it ends.
struct WaiterGuard<'a> {
    hub: &'a Hub,
    callback: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.hub.waiters.lock().unwrap().remove(&self.callback);
    }
}

impl Hub {
    pub fn new(store: Arc<Store>) -> Hub {
        Hub {
            store,
            next_id: AtomicU64::new(1),
            conns: Default::default(),
            waiters: Default::default(),
            status: Default::default(),
        }
    }

    /// A new live socket for `agent_id`; returns its id and the queue of messages to send on it.
    /// Requests that wait for an answer and lost their socket go out on it first.
    pub fn register(&self, agent_id: &str) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(16);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let again = {
            let mut conns = self.conns.lock().unwrap();
            conns.entry(agent_id.to_string()).or_default().push(Conn { id, tx: tx.clone() });
            self.move_waiters(agent_id, None, Some(id))
        };
        send_again(agent_id, id, tx, again);
        let version = self.status(agent_id).map(|s| s.version).unwrap_or_else(|| "unknown".into());
        self.set_status(agent_id, "connected", version);
        (id, rx)
    }

    /// The socket closed: what it carried and is still unanswered goes to the agent's newest other
    /// socket, or waits for its next one. The agent is disconnected when it was its last socket.
    pub fn unregister(&self, agent_id: &str, conn_id: u64) {
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
        match newest {
            Some(((to, tx), again)) => send_again(agent_id, to, tx, again),
            None => {
                let version = self.status(agent_id).map(|s| s.version).unwrap_or_else(|| "unknown".into());
                self.set_status(agent_id, "disconnected", version);
            }
        }
    }

    /// Moves the waiting requests of `agent_id` carried by socket `from` to socket `to`; the ones
    /// to send on `to`. Called with the sockets locked, so that no socket comes or goes meanwhile.
    fn move_waiters(&self, agent_id: &str, from: Option<u64>, to: Option<u64>) -> Vec<String> {
        let mut waiters = self.waiters.lock().unwrap();
        let moved = waiters.values_mut().filter(|w| w.agent_id == agent_id && w.conn == from && !w.done.is_closed());
        moved
            .map(|w| {
                w.conn = to;
                w.json.clone()
            })
            .filter(|_| to.is_some())
            .collect()
    }

    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.conns.lock().unwrap().contains_key(agent_id)
    }

    /// A heartbeat response: the agent's version, as of now.
    pub fn heartbeat(&self, agent_id: &str, version: &str) {
        self.set_status(agent_id, "connected", version.to_string());
    }

    /// Records a status in memory; the database is written when status or version change, so a
    /// heartbeat every 10 s from each of thousands of agents costs no disk write.
    fn set_status(&self, agent_id: &str, status: &str, version: String) {
        let row = StatusRow { status: status.to_string(), version, updated: util::now_iso() };
        let changed = {
            let mut map = self.status.lock().unwrap();
            let changed = map.get(agent_id).is_none_or(|old| old.status != row.status || old.version != row.version);
            map.insert(agent_id.to_string(), row.clone());
            changed
        };
        if changed {
            if let Err(e) = self.store.save_status(agent_id, &row) {
                tracing::error!(agent_id, "cannot save agent status: {e}");
            }
        }
    }

    /// The last known status: in memory since this server started, else as stored.
    pub fn status(&self, agent_id: &str) -> Option<StatusRow> {
        if let Some(s) = self.status.lock().unwrap().get(agent_id) {
            return Some(s.clone());
        }
        self.store.status(agent_id).ok().flatten()
    }

    /// Sends `msg` to the agent's newest socket with a fresh callback and waits for the first
    /// reply carrying that callback, from whichever socket of the agent it comes.
    pub async fn request(&self, agent_id: &str, msg: Message, wait: Duration) -> Result<Envelope, RequestError> {
        let callback = format!("Agent/{agent_id}-{}", util::uuid());
        let json = msg.reply_to(Some(callback.clone())).to_json();
        let (done, reply) = oneshot::channel();
        // Registered under the lock of the sockets, so that a socket closing now either is not
        // chosen or finds the request to send again.
        let tx = {
            let conns = self.conns.lock().unwrap();
            let newest = conns.get(agent_id).and_then(|l| l.last());
            let (conn, tx) = newest.map(|c| (c.id, c.tx.clone())).ok_or(RequestError::NotConnected)?;
            let waiter = Waiter { done, agent_id: agent_id.to_string(), json: json.clone(), conn: Some(conn) };
            self.waiters.lock().unwrap().insert(callback.clone(), waiter);
            tx
        };
        let _guard = WaiterGuard { hub: self, callback: callback.clone() };
        // A closed queue means the socket is going: its unregistering sends the request again.
        let _ = tx.send(json).await;
        match tokio::time::timeout(wait, reply).await {
            Ok(Ok(env)) => Ok(env),
            _ => Err(RequestError::Timeout),
        }
    }

    /// Hands a reply from `agent_id` to the request waiting for its callback; false when nobody
    /// waits any more (or the callback was issued to another agent).
    pub fn complete(&self, agent_id: &str, env: Envelope) -> bool {
        let Some(cb) = env.callback.as_deref() else { return false };
        if !cb.strip_prefix("Agent/").and_then(|r| r.strip_prefix(agent_id)).is_some_and(|r| r.starts_with('-')) {
            return false;
        }
        let waiter = self.waiters.lock().unwrap().remove(cb);
        match waiter {
            Some(w) => w.done.send(env).is_ok(),
            None => false,
        }
    }
}
