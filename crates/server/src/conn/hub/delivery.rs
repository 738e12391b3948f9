//! What goes to agents and what comes back: a request sent with a fresh callback and its waiter
//! (a caller, or the rollouts' sink), redelivery to the node an agent came back on, replies
//! matched by callback (here, on the node where the caller waits, or filed with the rollouts),
//! frames from other nodes, and messages nobody waits for.

use std::collections::HashMap;
use std::time::Duration;

use edge_agent_wire::{Callback, Envelope, Message};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Hub, RequestError, SendError, Taker, Waiter};
use crate::conn::bus::{Bus, Inbound};
use crate::limits::throttle::{shown, shown_at_most};

/// Removes a waiter when the request that registered it ends, however it ends.
struct WaiterGuard<'a> {
    hub: &'a Hub,
    callback: Callback,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.hub.forget(&self.callback);
    }
}

impl Hub {
    /// Sends `msg` to the agent's newest socket, on this node or another, with a fresh callback,
    /// and waits for the first reply carrying that callback, from whichever socket it comes. The
    /// caller's `wait` covers it all, the bus calls that send it to another node included: a bus
    /// that stops answering (Redis cut off) makes it a timeout within `wait`, never a longer one.
    pub async fn request(&self, agent_id: &str, msg: Message, wait: Duration) -> Result<Envelope, RequestError> {
        let callback = Callback::issue(agent_id);
        let (done, reply) = oneshot::channel();
        let frame = msg.reply_to(Some(callback.clone())).to_json();
        let _guard = WaiterGuard { hub: self, callback: callback.clone() };
        let asked = async {
            self.dispatch(agent_id, &callback, frame, Taker::Caller(done), wait, false).await?;
            reply.await.map_err(|_| RequestError::Timeout)
        };
        tokio::time::timeout(wait, asked).await.unwrap_or(Err(RequestError::Timeout))
    }

    /// Sends a rollout's request (`env`, carrying its callback) to the agent's newest socket, on
    /// this node or another, and keeps it registered for `wait`: sent again like a caller's
    /// request when its socket goes, its reply handed to the sink of replies nobody waits for.
    /// On [`SendError::NotConnected`] and [`SendError::NotSent`] nothing went out and nothing is
    /// kept; on [`SendError::MaybeSent`] it is kept, and sent again once the bus answers.
    pub async fn send_tracked(&self, agent_id: &str, env: Envelope, wait: Duration) -> Result<(), SendError> {
        self.track(agent_id, env, wait, false).await
    }

    /// Sends a rollout's request again (the same callback), and keeps it registered for `wait`
    /// whatever happens now: it may have reached the agent before, so it is never taken back, and
    /// goes out on the agent's next socket, here or on another node.
    pub async fn resend_tracked(&self, agent_id: &str, env: Envelope, wait: Duration) -> Result<(), SendError> {
        self.track(agent_id, env, wait, true).await
    }

    async fn track(&self, agent_id: &str, env: Envelope, wait: Duration, keep: bool) -> Result<(), SendError> {
        let Some(callback) = env.callback.clone() else { return Err(SendError::NotSent("no callback".into())) };
        self.dispatch(agent_id, &callback, env.to_json(), Taker::Sink, wait, keep).await
    }

    /// Whether a rollout's request with this callback is registered here.
    pub fn tracks(&self, callback: &Callback) -> bool {
        self.waiters.lock().unwrap().get(callback).is_some_and(|w| matches!(w.taker, Taker::Sink))
    }

    /// Nobody wants the reply to this request any more (its member finished some other way).
    pub fn forget(&self, callback: &Callback) {
        self.waiters.lock().unwrap().remove(callback);
    }

    /// Registers the waiter, then sends the frame: on this node's newest socket of the agent, or
    /// through the bus to the node holding it. Unless `keep`, the waiter is removed again when
    /// nothing went out.
    async fn dispatch(
        &self,
        agent_id: &str,
        callback: &Callback,
        frame: String,
        taker: Taker,
        wait: Duration,
        keep: bool,
    ) -> Result<(), SendError> {
        let expected = self.bus.expect_reply(callback, wait).await;
        // Registered under the lock of the sockets, so that a socket closing now either is not
        // chosen or finds the request to send again.
        let local = {
            let conns = self.conns.lock().unwrap();
            let newest = conns.get(agent_id).and_then(|l| l.last()).map(|c| (c.id, c.tx.clone()));
            let waiter = Waiter {
                taker,
                until: Instant::now() + wait,
                agent_id: agent_id.to_string(),
                json: frame.clone(),
                conn: newest.as_ref().map(|n| n.0),
                remote: None,
            };
            self.waiters.lock().unwrap().insert(callback.clone(), waiter);
            newest.map(|n| n.1)
        };
        if let Some(tx) = local {
            if let Err(e) = expected {
                // The reply most likely comes back on this node's socket anyway.
                tracing::warn!(agent_id, "cannot record the callback on the bus: {e}");
            }
            // A closed queue means the socket is going: its unregistering sends the request again.
            let _ = tx.send(frame).await;
            return Ok(());
        }
        let sent = match expected {
            // Nothing was published: the agent cannot have it.
            Err(e) => Err(SendError::NotSent(e.to_string())),
            Ok(()) => {
                let at = self.bus.where_held(&[agent_id.to_string()]).await.ok().and_then(|mut v| v.pop().flatten());
                self.forward(agent_id, &frame).await.map(|()| self.handed(callback, at))
            }
        };
        if !keep && matches!(sent, Err(SendError::NotConnected | SendError::NotSent(_))) {
            let mut waiters = self.waiters.lock().unwrap();
            // Found by the fault suite: a socket of the agent that registered here meanwhile took
            // the waiting request and sent it (register moves waiters under this lock). Then it
            // went out, and a caller told otherwise would ask again with another callback.
            if waiters.get(callback).is_some_and(|w| w.conn.is_some()) {
                return Ok(());
            }
            waiters.remove(callback);
        }
        sent
    }

    /// Records the socket on another node that a waiting request was handed to.
    fn handed(&self, callback: &Callback, socket: Option<String>) {
        if let Some(w) = self.waiters.lock().unwrap().get_mut(callback).filter(|w| w.conn.is_none()) {
            w.remote = socket;
        }
    }

    /// Sends again, through the bus, the requests that wait here without a socket here, to the
    /// agent's socket on another node when it is not the one they were handed to: the socket that
    /// carried them closed, the agent came back on another node (protocol.md §4.4), or the bus
    /// failed while they were handed over (their replies are then expected here again first).
    /// Forgets the rollouts' requests past their deadline. Called every
    /// [`REDELIVERY_PERIOD`](super::REDELIVERY_PERIOD); one bus lookup, and only when such
    /// requests wait.
    pub async fn redeliver(&self) {
        let lost: Vec<(Callback, String, Option<String>, String, Instant)> = {
            let mut waiters = self.waiters.lock().unwrap();
            waiters.retain(|w| w.wanted() || matches!(w.taker, Taker::Caller(_)));
            let lost = waiters.iter().filter(|(_, w)| w.conn.is_none() && w.wanted());
            lost.map(|(cb, w)| (cb.clone(), w.agent_id.clone(), w.remote.clone(), w.json.clone(), w.until)).collect()
        };
        if lost.is_empty() {
            return;
        }
        let mut agents: Vec<String> = lost.iter().map(|l| l.1.clone()).collect();
        agents.sort();
        agents.dedup();
        let sockets: HashMap<String, String> = match self.bus.where_held(&agents).await {
            Ok(found) => agents.into_iter().zip(found).filter_map(|(a, s)| Some((a, s?))).collect(),
            Err(e) => return tracing::debug!("cannot tell where agents with unanswered requests are: {e}"),
        };
        for (callback, agent_id, remote, json, until) in lost {
            let Some(socket) = sockets.get(&agent_id).filter(|s| remote.as_ref() != Some(*s)) else { continue };
            tracing::info!(agent_id, %callback, socket, "sending an unanswered request again on another node");
            if remote.is_none()
                && self.bus.expect_reply(&callback, until.saturating_duration_since(Instant::now())).await.is_err()
            {
                continue;
            }
            if self.forward(&agent_id, &json).await.is_ok() {
                self.handed(&callback, Some(socket.clone()));
            }
        }
    }

    /// Records again on the bus where the replies to every request waiting here go: a restarted
    /// Redis has forgotten them. Called when the bus is back.
    pub async fn expect_again(&self) {
        let waiting: Vec<(Callback, Instant)> = {
            let waiters = self.waiters.lock().unwrap();
            waiters.iter().filter(|(_, w)| w.wanted()).map(|(cb, w)| (cb.clone(), w.until)).collect()
        };
        for (callback, until) in waiting {
            if let Err(e) = self.bus.expect_reply(&callback, until.saturating_duration_since(Instant::now())).await {
                return tracing::warn!("cannot record on the bus where replies go: {e}");
            }
        }
    }

    async fn forward(&self, agent_id: &str, frame: &str) -> Result<(), SendError> {
        match self.bus.forward(agent_id, frame).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendError::NotConnected),
            Err(e) if e.not_sent() => Err(SendError::NotSent(e.to_string())),
            Err(e) => Err(SendError::MaybeSent(e.to_string())),
        }
    }

    /// Hands a reply from `agent_id` to the request waiting for its callback, here or on the node
    /// where it waits; when nobody waits any more (or the callback was issued to another agent),
    /// to the sink of orphan replies (the rollouts, which know the callbacks they sent).
    pub async fn complete(&self, agent_id: &str, env: Envelope) {
        let Some(cb) = env.callback.clone() else { return };
        if !cb.is_for(agent_id) {
            return self.orphan(agent_id.to_string(), env);
        }
        let Some(env) = self.to_sink_first(agent_id, &cb, env) else { return };
        let waiter = self.waiters.lock().unwrap().remove(&cb);
        let env = match waiter.map(|w| w.taker) {
            Some(Taker::Caller(done)) => match done.send(env) {
                Ok(()) => return,
                Err(env) => env,
            },
            Some(Taker::Sink) => return self.orphan(agent_id.to_string(), env),
            None => env,
        };
        match self.bus.route_reply(&cb, &env.to_json()).await {
            Ok(true) => return,
            Ok(false) => {}
            // Each reply would say it again while the bus is down (an agent may send many).
            Err(e) => self.quiet.warn(agent_id, &format!("cannot route a reply to its node: {e}")),
        }
        self.orphan(agent_id.to_string(), env)
    }

    /// The reply to a request sent for the rollouts, to their sink, before the request is let go:
    /// the rollout files the answer first, so that no look at its members finds this one in
    /// flight with no request held (it would send it again). The reply back when no such
    /// request waits.
    fn to_sink_first(&self, agent_id: &str, callback: &Callback, env: Envelope) -> Option<Envelope> {
        let sink = self.waiters.lock().unwrap().get(callback).is_some_and(|w| matches!(w.taker, Taker::Sink));
        if !sink {
            return Some(env);
        }
        self.orphan(agent_id.to_string(), env);
        self.waiters.lock().unwrap().remove(callback);
        None
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
            // Applied by `conn::revocations`, which the node's dispatcher hands it to.
            Inbound::Revoke { .. } => {}
            Inbound::Reply { callback, frame } => {
                let env = match Envelope::parse(&frame, edge_agent_wire::message::HARD_MAX_MESSAGE_BYTES) {
                    Ok(env) => env,
                    Err(e) => {
                        self.waiters.lock().unwrap().remove(&callback);
                        let (callback, e) = (shown(callback.as_str()), shown_at_most(&e.to_string(), 200));
                        return tracing::warn!(callback, "unreadable reply from another node: {e}");
                    }
                };
                // The node that routed it here checked that the callback is its agent's.
                let agent = callback.agent_id().unwrap_or_default().to_string();
                let Some(env) = self.to_sink_first(&agent, &callback, env) else { return };
                let waiter = self.waiters.lock().unwrap().remove(&callback);
                let env = match waiter.map(|w| w.taker) {
                    Some(Taker::Caller(done)) => match done.send(env) {
                        Ok(()) => return,
                        Err(env) => env,
                    },
                    _ => env,
                };
                match callback.agent_id() {
                    Some(agent) => self.orphan(agent.to_string(), env),
                    None => {
                        let callback = shown(callback.as_str());
                        tracing::info!(callback, "late reply dropped: nobody waits for it any more")
                    }
                }
            }
        }
    }

    /// Sends `msg` to the agent's newest socket, here or on another node, without a callback:
    /// nobody waits for a reply.
    pub async fn send(&self, agent_id: &str, msg: Message) -> Result<(), RequestError> {
        let frame = msg.plain().to_json();
        let sent = match self.newest_tx(agent_id) {
            Some(tx) => tx.send(frame).await.map_err(|_| SendError::NotConnected),
            None => self.forward(agent_id, &frame).await,
        };
        Ok(sent?)
    }
}
