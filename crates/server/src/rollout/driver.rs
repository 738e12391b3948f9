//! The rollout engine: holds the live rollouts, applies [`plan`](super::plan::plan) on every tick,
//! asks agents, and files their answers. Every change is written to the store before anything is
//! sent, so a restart resumes where the rollout was, and no member is asked twice: a member is
//! claimed in the store (pending to in-progress, once) before it is asked, with one callback, and
//! its answer is matched by that callback whenever and wherever it comes.
//!
//! With several nodes, one drives every rollout at a time: the holder of the store's lease
//! ([`super::leader`]). Answers that reach another node are routed to the driver by the bus, or
//! written to the store, which the driver reads when it takes over.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent_wire::Callback;
use tokio::sync::Notify;

use super::model::{Event, LastResult, Member, MemberState, Rollout, RolloutState};
use super::plan::{plan, Decision, Fleet};
use crate::hub::{Hub, RequestError};
use crate::store::Store;
use edge_agent_wire::message::Message;

/// How long a request may wait for room in an agent's socket queue.
const SEND_LIMIT: Duration = Duration::from_secs(2);

pub use super::operate::{counts, state_text, transition, Action, Counts, RolloutError};

/// A rollout the engine holds, with its members and their callbacks.
pub(super) struct Live {
    pub(super) rollout: Rollout,
    /// The rollout's state as last stored (saves are conditional on it).
    pub(super) stored_state: RolloutState,
    pub(super) members: Vec<Member>,
    pub(super) by_callback: HashMap<Callback, usize>,
}

impl Live {
    pub(super) fn new(rollout: Rollout, members: Vec<Member>) -> Live {
        let by_callback = members.iter().enumerate().filter_map(|(i, m)| m.callback.clone().map(|c| (c, i))).collect();
        Live { stored_state: rollout.state, rollout, members, by_callback }
    }

    pub(super) fn event(&mut self, text: String) {
        self.rollout.events.push(Event { at: edge_agent_base::time::now_iso(), text });
    }

    /// Done with: ended, and nobody in flight.
    fn settled(&self) -> bool {
        !self.rollout.state.is_open() && self.members.iter().all(|m| m.state != MemberState::InProgress)
    }
}

/// The fleet as a tick sees it: agents connected to this node (asked at once), and those on
/// other nodes as the bus told at the last check (at most [`CHECK`] old).
struct View<'a> {
    hub: &'a Hub,
    elsewhere: &'a HashMap<String, (bool, String)>,
}

impl Fleet for View<'_> {
    fn connected(&self, agent_id: &str) -> bool {
        self.hub.is_connected(agent_id) || self.elsewhere.get(agent_id).is_some_and(|(c, _)| *c)
    }
    fn version(&self, agent_id: &str) -> Option<String> {
        self.hub.local_version(agent_id).or_else(|| self.elsewhere.get(agent_id).map(|(_, v)| v.clone()))
    }
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// What one tick decided for one rollout: what to write, then whom to ask.
struct Step {
    rollout: Rollout,
    expected: RolloutState,
    changed: Vec<Member>,
    asks: Vec<(usize, Member)>,
    timeout: Duration,
}

pub struct Rollouts {
    pub(super) store: Arc<dyn Store>,
    pub(super) hub: Arc<Hub>,
    pub(super) node: String,
    pub(super) driving: AtomicBool,
    pub(super) live: Mutex<HashMap<String, Live>>,
    /// Each agent's last rollout result, for `$status` and search results.
    pub(super) last: Mutex<HashMap<String, LastResult>>,
    /// Members not connected to this node: (connected elsewhere, version), as of the last check.
    pub(super) elsewhere: Mutex<HashMap<String, (bool, String)>>,
    pub(super) creating: tokio::sync::Mutex<()>,
    /// Checks since the agents' last results were read from the store.
    pub(super) checks: std::sync::atomic::AtomicU32,
    pub(super) wake: Notify,
}

impl Rollouts {
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, node: &str) -> Arc<Rollouts> {
        Arc::new(Rollouts {
            store,
            hub,
            node: node.to_string(),
            driving: AtomicBool::new(false),
            live: Mutex::default(),
            last: Mutex::default(),
            elsewhere: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
            checks: std::sync::atomic::AtomicU32::new(0),
            wake: Notify::new(),
        })
    }

    /// One step of every live rollout: decide, write, then ask.
    pub async fn tick(&self) {
        let now = now_ms();
        let steps: Vec<Step> = {
            let elsewhere = self.elsewhere.lock().unwrap();
            let fleet = View { hub: &self.hub, elsewhere: &elsewhere };
            let mut live = self.live.lock().unwrap();
            let steps = live
                .values_mut()
                .filter_map(|l| {
                    let d = plan(&l.rollout, &l.members, now, &fleet);
                    self.apply(l, d, now)
                })
                .collect();
            live.retain(|_, l| !l.settled());
            steps
        };
        for step in steps {
            self.carry_out(step).await;
        }
    }

    /// Applies a decision in memory; what must be written and sent, if anything.
    fn apply(&self, l: &mut Live, d: Decision, now: i64) -> Option<Step> {
        if d == Decision::default() {
            return None;
        }
        let mut changed = Vec::new();
        for (i, state, reason) in d.finish {
            let m = &mut l.members[i];
            (m.state, m.reason, m.finished_at) = (state, reason, Some(now));
            changed.push(i);
        }
        if let Some(w) = d.next_wave {
            l.rollout.wave = w;
        }
        if let Some((state, reason)) = d.end {
            (l.rollout.state, l.rollout.reason) = (state, reason);
        }
        for text in d.events {
            l.event(text);
        }
        if !d.ask.is_empty() && l.members.iter().all(|m| m.wave.is_none()) {
            let names: Vec<&str> = d.ask.iter().map(|&i| l.members[i].name.as_str()).collect();
            l.event(format!("canary started: {}", names.join(", ")));
        }
        let mut asks = Vec::new();
        for i in d.ask {
            let m = &mut l.members[i];
            let callback = Callback::issue(&m.agent_id);
            (m.state, m.wave, m.asked_at) = (MemberState::InProgress, Some(l.rollout.wave), Some(now));
            m.callback = Some(callback.clone());
            l.by_callback.insert(callback, i);
            asks.push((i, m.clone()));
        }
        let finals: Vec<&Member> = changed.iter().map(|&i| &l.members[i]).filter(|m| m.state.is_final()).collect();
        self.remember(&l.rollout, &finals);
        let expected = l.stored_state;
        l.stored_state = l.rollout.state;
        Some(Step {
            rollout: l.rollout.clone(),
            expected,
            changed: changed.iter().map(|&i| l.members[i].clone()).collect(),
            asks,
            timeout: l.rollout.strategy.timeout,
        })
    }

    /// Writes a step, then asks the members it claimed in the store. A step decided on a rollout
    /// that an operator changed meanwhile (on any node) is dropped: the next check reloads it.
    async fn carry_out(&self, step: Step) {
        let id = step.rollout.id.clone();
        match self.store.save_rollout(&step.rollout, step.expected).await {
            Ok(true) => {}
            Ok(false) => return self.stale(&id),
            Err(e) => {
                tracing::error!(rollout = %id, "cannot save rollout progress: {e}");
                return self.stale(&id);
            }
        }
        if let Err(e) = self.store.save_members(&id, &step.changed).await {
            tracing::error!(rollout = %id, "cannot save rollout progress: {e}");
            return self.stale(&id);
        }
        if step.asks.is_empty() {
            return;
        }
        let members: Vec<Member> = step.asks.iter().map(|(_, m)| m.clone()).collect();
        let claimed = match self.store.claim_members(&id, &members).await {
            Ok(c) => c,
            Err(e) => {
                // Some claims may have been written: the members stay in flight and time out.
                tracing::error!(rollout = %id, "cannot record whom the rollout asks; asking nobody: {e}");
                return;
            }
        };
        let force = step.rollout.strategy.force.then_some(true);
        for ((i, m), claimed) in step.asks.into_iter().zip(claimed) {
            if !claimed {
                // Another node asked it, or the rollout stopped: the store knows better.
                self.stale(&id);
                continue;
            }
            let msg = Message::UpgradeRequest { version: Some(step.rollout.version.clone()), force };
            let env = msg.reply_to(m.callback.clone());
            let sent = tokio::time::timeout(SEND_LIMIT, self.hub.send_envelope(&m.agent_id, env, Some(step.timeout)));
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(RequestError::NotConnected)) => {
                    tracing::info!(agent_id = %m.agent_id, "rollout request not sent: the agent is not connected");
                    self.unask(&id, i).await;
                }
                // It may have gone out: the member stays in flight rather than risk a second ask.
                Ok(Err(e)) => tracing::warn!(agent_id = %m.agent_id, "rollout request may not have been sent: {e}"),
                Err(_) => tracing::warn!(agent_id = %m.agent_id, "rollout request not queued within {SEND_LIMIT:?}"),
            }
        }
    }

    /// The rollout's stored state differs from memory: reload it on the next check.
    pub(super) fn stale(&self, id: &str) {
        self.live.lock().unwrap().remove(id);
    }

    /// A member that was not asked after all: back to pending, in memory and in the store.
    async fn unask(&self, rollout_id: &str, index: usize) {
        let member = {
            let mut live = self.live.lock().unwrap();
            let Some(l) = live.get_mut(rollout_id) else { return };
            let m = &mut l.members[index];
            if m.state != MemberState::InProgress {
                return;
            }
            if let Some(cb) = m.callback.take() {
                l.by_callback.remove(&cb);
            }
            (m.state, m.wave, m.asked_at) = (MemberState::Pending, None, None);
            m.clone()
        };
        if let Err(e) = self.store.save_members(rollout_id, &[member]).await {
            tracing::error!(rollout = rollout_id, "cannot save rollout progress: {e}");
        }
    }

    /// Remembers the final results among `members` as their agents' last results.
    pub(super) fn remember(&self, rollout: &Rollout, members: &[&Member]) {
        let mut last = self.last.lock().unwrap();
        for m in members.iter().filter(|m| m.state.is_final()) {
            let result = LastResult {
                rollout_id: rollout.id.clone(),
                version: rollout.version.clone(),
                state: m.state,
                reason: m.reason.clone(),
            };
            last.insert(m.agent_id.clone(), result);
        }
    }

    /// The last rollout result of an agent.
    pub fn last_result(&self, agent_id: &str) -> Option<LastResult> {
        self.last.lock().unwrap().get(agent_id).cloned()
    }
}
