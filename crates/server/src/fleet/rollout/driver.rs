//! The rollout engine: holds the live rollouts, applies [`plan`](super::plan::plan) on every tick,
//! asks agents, and files their answers. Every change is written to the store before anything is
//! sent, so a restart resumes where the rollout was, and no member is asked twice: a member is
//! claimed in the store (pending to in-progress, once) before it is asked, with one callback, and
//! its answer is matched by that callback whenever and wherever it comes.
//!
//! With several nodes, one drives every rollout at a time: the holder of the store's lease
//! ([`super::leader`]). Answers that reach another node are routed to the driver by the bus, or
//! written to the store, which the driver reads when it takes over.
//!
//! Requests are registered with the hub ([`Hub::send_tracked`]), which sends them again on the
//! agent's next socket, on any node, while they wait. A request that provably did not leave (the
//! agent not connected, the bus down before publishing) puts its member back to pending; one that
//! may have left stays in flight and is sent again with the same callback.

use std::collections::HashMap;
use std::time::Duration;

use edge_agent_wire::{Callback, Envelope, Message};
use semver::Version;

use super::engine::{now_ms, Idle, Live, Rollouts};
use super::plan::{next_due, plan, plural, Decision, Fleet};
use crate::conn::hub::{Hub, SendError};
use crate::conn::outages::Infra;
use crate::model::audit::{the_server, AuditRecord, Outcome, REST};
use crate::model::member::{self, Member, MemberEvent};
use crate::model::rollout::{self as rollout_model, Rollout, RolloutState};

/// How long a request may wait for room in an agent's socket queue.
const SEND_LIMIT: Duration = Duration::from_secs(2);
/// How much longer than its timeout the hub keeps a request: until the planner has timed it out.
const TRACK_MARGIN: Duration = Duration::from_secs(5);
/// How long a rollout whose plan was empty may go without another look, whatever happens.
const IDLE_LOOK_MS: i64 = 1_000;
/// Why a member whose agent was not connected when asked waits again.
const NOT_CONNECTED: &str = "not connected when asked";

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
    fn tracked(&self, callback: &Callback) -> bool {
        self.hub.tracks(callback)
    }
    fn trouble_since(&self, since: i64) -> Option<&'static str> {
        self.hub.outages().since(since).map(Infra::why)
    }
}

/// What one tick decided for one rollout: what to write, then whom to ask.
struct Step {
    rollout: Rollout,
    expected: RolloutState,
    /// Whether the rollout's row changed (its state, wave or events): a step that only asks
    /// members and files their ends leaves it as it is (the claims check the stored state).
    save_row: bool,
    changed: Vec<Member>,
    asks: Vec<(usize, Member)>,
    /// Members in flight whose request goes out again (same callback).
    resends: Vec<Member>,
    timeout: Duration,
}

impl Rollouts {
    /// One step of every live rollout: decide, write, then ask. A rollout whose last plan was
    /// empty is not planned again before something it depends on changes (an answer, a read from
    /// the store, an agent connecting or going, a timer), or a second has passed: a rollout of
    /// 100,000 offline agents costs a look a second, not ten.
    pub async fn tick(&self) {
        let now = now_ms();
        let (mut answers, steps): (_, Vec<Step>) = {
            let elsewhere = self.elsewhere.lock().unwrap();
            let fleet = View { hub: &self.hub, elsewhere: &elsewhere };
            let mut live = self.live.lock().unwrap();
            let roster = self.hub.roster();
            let steps = live
                .values_mut()
                .filter_map(|l| {
                    if l.idle.is_some_and(|idle| idle.holds(now, roster)) {
                        return None;
                    }
                    let d = plan(&l.rollout, &l.members, now, &fleet);
                    l.idle = (d == Decision::default()).then(|| {
                        let until = next_due(&l.rollout, &l.members, now).unwrap_or(i64::MAX).min(now + IDLE_LOOK_MS);
                        Idle { roster, until }
                    });
                    self.apply(l, d, now)
                })
                .collect();
            live.retain(|_, l| !l.settled());
            (self.take_answers(), steps)
        };
        // The answers the planner saw are written before a step that ends their rollout (which is
        // stored after its members' ends); otherwise after the steps, so that the requests they
        // send wait for their claims only.
        if steps.iter().any(|s| !s.rollout.state.is_open()) {
            self.write(std::mem::take(&mut answers)).await;
        }
        for step in steps {
            // A node that lost the lease starts no further step (one under way completes its
            // writes, which the store's guards and the lease fence keep right).
            if !self.driving() {
                break;
            }
            self.carry_out(step).await;
        }
        self.write(answers).await;
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
        for cb in changed.iter().filter_map(|&i| l.members[i].callback.as_ref()) {
            self.hub.forget(cb);
        }
        let mut resends = Vec::new();
        for (i, why) in d.resend {
            if let Ok(next) = member::transition(&l.members[i], MemberEvent::Resend { why, at: now }) {
                l.members[i] = next;
                changed.push(i);
                resends.push(l.members[i].clone());
            }
        }
        if let Some(w) = d.next_wave {
            l.rollout.wave = w;
            l.unsaved = true;
        }
        if let Some((action, reason)) = d.end {
            if let Ok(state) = rollout_model::transition(l.rollout.state, action) {
                (l.rollout.state, l.rollout.reason) = (state, reason);
                l.unsaved = true;
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
            save_row: std::mem::take(&mut l.unsaved) || expected != l.rollout.state,
            changed: changed.iter().map(|&i| l.members[i].clone()).collect(),
            asks,
            resends,
            timeout: l.rollout.strategy.timeout,
        })
    }

    /// Writes a step (the rollout's row if it changed, the members it finished), then asks the
    /// members it claimed in the store and sends the requests it resends. A step decided on a
    /// rollout that an operator changed meanwhile (on any node) is dropped: its row's write or
    /// its claims find the stored state changed, and the next check reloads it.
    async fn carry_out(&self, step: Step) {
        let id = step.rollout.id.clone();
        if step.save_row {
            let halted = step.rollout.state == RolloutState::Halted && step.expected != RolloutState::Halted;
            let also = if halted { crate::store::audit::record(&[halt_event(&step.rollout)]) } else { Vec::new() };
            match self.store.save_rollout(&step.rollout, step.expected, also).await {
                Ok(true) => {}
                Ok(false) => return self.stale(&id),
                Err(e) => return self.store_failed(&id, &e),
            }
        }
        if !step.changed.is_empty() {
            if let Err(e) = self.store.save_members(&id, &step.changed).await {
                return self.store_failed(&id, &e);
            }
        }
        let msg = Message::UpgradeRequest {
            version: Some(step.rollout.version.to_string()),
            force: step.rollout.strategy.force.then_some(true),
        };
        let wait = step.timeout + TRACK_MARGIN;
        for m in &step.resends {
            let env = msg.clone().reply_to(m.callback.clone());
            if let Err(e) = self.hub.resend_tracked(&m.agent_id, env, wait).await {
                self.quiet.info(&m.agent_id, &format!("rollout request kept to send again: {e}"));
            }
        }
        if step.asks.is_empty() {
            return;
        }
        let members: Vec<Member> = step.asks.iter().map(|(_, m)| m.clone()).collect();
        let claimed = match self.store.claim_members(&id, &members).await {
            Ok(c) => c,
            // Some claims may have been written: the reload finds them in flight, and sends them.
            Err(e) => return self.store_failed(&id, &e),
        };
        let mut back = Vec::new();
        for ((i, m), claimed) in step.asks.into_iter().zip(claimed) {
            if !self.driving() {
                // The lease is gone: the rest stay claimed, in flight, and the node driving now
                // sends them (the same callbacks).
                break;
            }
            if !claimed {
                // Another node asked it, or the rollout stopped: the store knows better.
                self.stale(&id);
                continue;
            }
            let env = msg.clone().reply_to(m.callback.clone());
            if let Some(why) = self.ask(&m, env, wait).await {
                back.push((i, why));
            }
        }
        self.unask(&id, back).await;
    }

    /// Sends one member its request; why it waits again when the request provably did not leave.
    async fn ask(&self, m: &Member, env: Envelope, wait: Duration) -> Option<String> {
        let agent_id = &m.agent_id;
        match tokio::time::timeout(SEND_LIMIT, self.hub.send_tracked(agent_id, env, wait)).await {
            Ok(Ok(())) => None,
            Ok(Err(SendError::NotConnected)) => {
                self.quiet.info(agent_id, "rollout request not sent: the agent is not connected");
                // Not asked again before the next look says where it is.
                self.elsewhere.lock().unwrap().insert(agent_id.clone(), (false, None));
                Some(NOT_CONNECTED.into())
            }
            Ok(Err(e @ SendError::NotSent(_))) => {
                self.quiet.warn(agent_id, &format!("rollout request not sent; the member waits again: {e}"));
                Some(Infra::Bus.why().into())
            }
            // It may have gone out: it stays in flight, and the hub sends it again (same callback).
            Ok(Err(e @ SendError::MaybeSent(_))) => {
                self.quiet.warn(agent_id, &format!("rollout request kept to send again: {e}"));
                None
            }
            Err(_) => {
                self.quiet
                    .warn(agent_id, &format!("rollout request not queued within {SEND_LIMIT:?}; kept to send again"));
                None
            }
        }
    }

    /// The store failed while a step was written: noted as an outage (the members whose wait it
    /// overlaps are not counted as failures), and the rollout reloaded from the store.
    fn store_failed(&self, id: &str, e: &crate::store::StoreError) {
        tracing::error!(rollout = %id, "cannot save rollout progress: {e}");
        self.hub.outages().failed(Infra::Store, now_ms());
        self.stale(id);
    }

    /// Members that were not asked after all: back to pending, in memory and in the store, with
    /// why; the rollout's events say how many waited again for the bus.
    async fn unask(&self, rollout_id: &str, back: Vec<(usize, String)>) {
        if back.is_empty() {
            return;
        }
        let members: Vec<Member> = {
            let mut live = self.live.lock().unwrap();
            let Some(l) = live.get_mut(rollout_id) else { return };
            l.idle = None;
            let requeued = back.iter().filter(|(_, why)| why != NOT_CONNECTED).count();
            if requeued > 0 {
                l.event(format!("{} re-queued: {}", plural(requeued, "member"), Infra::Bus.why()));
            }
            back.into_iter()
                .filter_map(|(i, why)| {
                    let next = member::transition(&l.members[i], MemberEvent::Unask { why }).ok()?;
                    if let Some(cb) = &l.members[i].callback {
                        l.by_callback.remove(cb);
                    }
                    l.members[i] = next.clone();
                    Some(next)
                })
                .collect()
        };
        match self.store.unask_members(rollout_id, &members, (super::leader::LEASE, &self.node)).await {
            Ok(written) if written.contains(&0) => {
                // The lease is gone (or the store knows better): the node driving now has them.
                tracing::warn!(
                    rollout = rollout_id,
                    "requests not taken back: this node no longer holds the rollout lease, or the store knows better"
                );
                self.stale(rollout_id);
            }
            Ok(_) => {}
            // What the store holds is not known: it is read again rather than memory trusted.
            Err(e) => self.store_failed(rollout_id, &e),
        }
    }
}

/// A rollout that halted by itself, in the audit trail: written with its halted state.
fn halt_event(r: &Rollout) -> AuditRecord {
    let mut e = crate::store::audit::event(
        REST,
        rollout_model::Action::Halt.audit_subtype(),
        'U',
        Some(the_server("rollout driver")),
        None,
    );
    e.outcome = Outcome::Serious;
    e.description = format!("Rollout halted by itself: {}", r.reason.as_deref().unwrap_or("no reason given"));
    e.entities = vec![r.audit_ref()];
    e
}
