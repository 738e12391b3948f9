//! What goes to agents and what comes back: a request sent with a fresh callback and its waiter,
//! redelivery to the node an agent came back on, replies matched by callback (here, on the node
//! where the caller waits, or filed with the rollouts), frames from other nodes, and messages
//! nobody waits for.

use std::collections::HashMap;
use std::time::Duration;

use edge_agent_wire::{Callback, Envelope, Message};
use tokio::sync::oneshot;

use super::{Hub, RequestError, Waiter};
use crate::conn::bus::Inbound;

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
