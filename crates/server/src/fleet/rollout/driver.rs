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
use std::time::Duration;

use edge_agent_wire::{Callback, Message};
use semver::Version;

use super::engine::{now_ms, Live, Rollouts};
use super::plan::{plan, Decision, Fleet};
use crate::conn::hub::{Hub, RequestError};
use crate::model::member::{self, Member, MemberEvent};
use crate::model::rollout::{self as rollout_model, Rollout, RolloutState};

/// How long a request may wait for room in an agent's socket queue.
const SEND_LIMIT: Duration = Duration::from_secs(2);

/// The fleet as a tick sees it: agents connected to this node (asked at once), and those on
/// other nodes as the bus told at the last check (at most [`CHECK`] old).
struct View<'a> {
    hub: &'a Hub,
    elsewhere: &'a HashMap<String, (bool, Option<Version>)>,
}

impl Fleet for View<'_> {
    fn connected(&self, agent_id: &str) -> bool {
        self.hub.is_connected(agent_id) || self.elsewhere.get(agent_id).is_some_and(|(c, _)| *c)
    }
    fn version(&self, agent_id: &str) -> Option<Version> {
        let local = self.hub.local_version(agent_id).map(|v| edge_agent_wire::parse_version(&v).ok());
        local.unwrap_or_else(|| self.elsewhere.get(agent_id).and_then(|(_, v)| v.clone()))
    }
}

/// What one tick decided for one rollout: what to write, then whom to ask.
struct Step {
    rollout: Rollout,
    expected: RolloutState,
    changed: Vec<Member>,
    asks: Vec<(usize, Member)>,
    timeout: Duration,
}

impl Rollouts {
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
        for (i, event) in d.finish {
            if let Ok(next) = member::transition(&l.members[i], event) {
                l.members[i] = next;
                changed.push(i);
            }
        }
        if let Some(w) = d.next_wave {
            l.rollout.wave = w;
        }
        if let Some((action, reason)) = d.end {
            if let Ok(state) = rollout_model::transition(l.rollout.state, action) {
                (l.rollout.state, l.rollout.reason) = (state, reason);
            }
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
            let callback = Callback::issue(&l.members[i].agent_id);
            let ask = MemberEvent::Ask { wave: l.rollout.wave, callback: callback.clone(), at: now };
            if let Ok(next) = member::transition(&l.members[i], ask) {
                l.members[i] = next;
                l.by_callback.insert(callback, i);
                asks.push((i, l.members[i].clone()));
            }
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
            let msg = Message::UpgradeRequest { version: Some(step.rollout.version.to_string()), force };
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

    /// A member that was not asked after all: back to pending, in memory and in the store.
    async fn unask(&self, rollout_id: &str, index: usize) {
        let member = {
            let mut live = self.live.lock().unwrap();
            let Some(l) = live.get_mut(rollout_id) else { return };
            let Ok(next) = member::transition(&l.members[index], MemberEvent::Unask) else { return };
            if let Some(cb) = &l.members[index].callback {
                l.by_callback.remove(cb);
            }
            l.members[index] = next.clone();
            next
        };
        if let Err(e) = self.store.save_members(rollout_id, &[member]).await {
            tracing::error!(rollout = rollout_id, "cannot save rollout progress: {e}");
        }
    }
}
