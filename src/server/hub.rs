//! Live agent connections, each agent's status, and the callbacks that route replies to the HTTP
//! request waiting for them. A reply is matched by callback, not by socket: the answer to an
//! upgrade arrives on the new process's socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

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

/// A live socket: its queue carries ready JSON text (a `String` per slot keeps the queue of each
/// of thousands of idle connections small).
struct Conn {
    id: u64,
    tx: mpsc::Sender<String>,
}

pub struct Hub {
    store: Arc<Store>,
    next_id: AtomicU64,
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    waiters: Mutex<HashMap<String, oneshot::Sender<Envelope>>>,
    status: Mutex<HashMap<String, StatusRow>>,
    /// Status or version changes, for the open web pages.
    changes: broadcast::Sender<(String, StatusRow)>,
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
            changes: broadcast::channel(1024).0,
        }
    }

    /// A new live socket for `agent_id`; returns its id and the queue of messages to send on it.
    pub fn register(&self, agent_id: &str) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(16);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap().entry(agent_id.to_string()).or_default().push(Conn { id, tx });
        let version = self.status(agent_id).map(|s| s.version).unwrap_or_else(|| "unknown".into());
        self.set_status(agent_id, "connected", version);
        (id, rx)
    }

    /// The socket closed; the agent is disconnected when it was its last one.
    pub fn unregister(&self, agent_id: &str, conn_id: u64) {
        let last = {
            let mut conns = self.conns.lock().unwrap();
            let list = conns.entry(agent_id.to_string()).or_default();
            list.retain(|c| c.id != conn_id);
            let empty = list.is_empty();
            if empty {
                conns.remove(agent_id);
            }
            empty
        };
        if last {
            let version = self.status(agent_id).map(|s| s.version).unwrap_or_else(|| "unknown".into());
            self.set_status(agent_id, "disconnected", version);
        }
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
            let _ = self.changes.send((agent_id.to_string(), row.clone()));
            if let Err(e) = self.store.save_status(agent_id, &row) {
                tracing::error!(agent_id, "cannot save agent status: {e}");
            }
        }
    }

    /// Every later change of an agent's status or version.
    pub fn subscribe(&self) -> broadcast::Receiver<(String, StatusRow)> {
        self.changes.subscribe()
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
        let tx = {
            let conns = self.conns.lock().unwrap();
            conns.get(agent_id).and_then(|l| l.last()).map(|c| c.tx.clone()).ok_or(RequestError::NotConnected)?
        };
        let callback = format!("Agent/{agent_id}-{}", util::uuid());
        let (done, reply) = oneshot::channel();
        self.waiters.lock().unwrap().insert(callback.clone(), done);
        let _guard = WaiterGuard { hub: self, callback: callback.clone() };
        tx.send(msg.reply_to(Some(callback)).to_json()).await.map_err(|_| RequestError::NotConnected)?;
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
            Some(w) => w.send(env).is_ok(),
            None => false,
        }
    }

    /// Sends `msg` to the agent's newest socket without a callback: nobody waits for a reply.
    pub async fn send(&self, agent_id: &str, msg: Message) -> Result<(), RequestError> {
        self.send_envelope(agent_id, msg.plain()).await
    }

    /// Sends a message (with the callback it carries) to the agent's newest socket, waiting for
    /// nothing: whoever sent it files the reply (see `Rollouts::on_reply`).
    pub async fn send_envelope(&self, agent_id: &str, env: Envelope) -> Result<(), RequestError> {
        let tx = {
            let conns = self.conns.lock().unwrap();
            conns.get(agent_id).and_then(|l| l.last()).map(|c| c.tx.clone()).ok_or(RequestError::NotConnected)?
        };
        tx.send(env.to_json()).await.map_err(|_| RequestError::NotConnected)
    }
}
