//! The rollout engine: holds the live rollouts, applies [`plan`](super::plan::plan) on every tick,
//! asks agents, and files their answers. Every change is written to the store before anything is
//! sent, so a restart resumes where the rollout was, and no member is asked twice: a member is
//! claimed in the store (pending to in-progress, once) before it is asked, with one callback, and
//! its answer is matched by that callback whenever and wherever it comes.
//!
//! With several nodes, one drives every rollout at a time: the holder of the store's lease
//! `rollouts`, renewed every second. When it stops, another node takes the lease within
//! [`LEASE_TTL`] and loads the rollouts from the store. Answers that reach another node are routed
//! to the driver by the bus, or written to the store, which the driver reads when it takes over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::model::{Event, LastResult, Member, MemberState, Rollout, RolloutState, Strategy};
use super::plan::{plan, Decision, Fleet};
use crate::protocol::{Envelope, Message};
use crate::server::hub::{Hub, ReplySink};
use crate::server::store::{AgentRow, Store, StoreError};
use crate::util;

/// How often the engine looks at its rollouts when nothing wakes it earlier.
const TICK: Duration = Duration::from_millis(100);
/// The least time between two ticks: answers that come together are planned together.
const MIN_GAP: Duration = Duration::from_millis(10);
/// How often the engine renews its lease and looks for rollouts made or steered elsewhere.
const CHECK: Duration = Duration::from_secs(1);
/// The driver's lease: another node takes over at most this long after the driver stopped.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
const LEASE: &str = "rollouts";

/// What an operator can do to a rollout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no rollout {0}")]
    NotFound(String),
    #[error("rollout {id} is {state}: only {allowed} rollout can be {done}")]
    NotAllowed { id: String, state: String, allowed: &'static str, done: &'static str },
    #[error(
        "this rollout (to {version}) would overlap rollout {other} (to {other_version}, {other_state}) on agent \
         {agent}; cancel that rollout or leave the agent out"
    )]
    Overlap { version: String, other: String, other_version: String, other_state: String, agent: String },
    #[error("no agent(s) for given query: a rollout needs at least one member")]
    Empty,
    #[error("rollout {0} was changed at the same time; look at it again and retry")]
    Changed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The state an action leads to from `state`, or why it is not allowed.
pub fn transition(id: &str, state: RolloutState, action: Action) -> Result<RolloutState, RolloutError> {
    use RolloutState::*;
    let refuse =
        |allowed, done| RolloutError::NotAllowed { id: id.to_string(), state: state_text(state), allowed, done };
    match (action, state) {
        (Action::Pause, Active) => Ok(Paused),
        (Action::Pause, _) => Err(refuse("an active", "paused")),
        (Action::Resume, Paused) => Ok(Active),
        (Action::Resume, _) => Err(refuse("a paused", "resumed")),
        (Action::Cancel, Active | Paused) => Ok(Cancelled),
        (Action::Cancel, _) => Err(refuse("an active or paused", "cancelled")),
    }
}

pub fn state_text(s: RolloutState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// A rollout the engine holds, with its members and their callbacks.
struct Live {
    rollout: Rollout,
    /// The rollout's state as last stored (saves are conditional on it).
    stored_state: RolloutState,
    members: Vec<Member>,
    by_callback: HashMap<String, usize>,
    /// Members changed in memory and not yet written.
    unsaved: Vec<usize>,
}

impl Live {
    fn new(rollout: Rollout, members: Vec<Member>) -> Live {
        let by_callback = members.iter().enumerate().filter_map(|(i, m)| m.callback.clone().map(|c| (c, i))).collect();
        Live { stored_state: rollout.state, rollout, members, by_callback, unsaved: Vec::new() }
    }

    fn event(&mut self, text: String) {
        self.rollout.events.push(Event { at: util::now_iso(), text });
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
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    node: String,
    driving: AtomicBool,
    live: Mutex<HashMap<String, Live>>,
    /// Each agent's last rollout result, for `$status` and search results.
    last: Mutex<HashMap<String, LastResult>>,
    /// Members not connected to this node: (connected elsewhere, version), as of the last check.
    elsewhere: Mutex<HashMap<String, (bool, String)>>,
    wake: Notify,
}

impl ReplySink for Rollouts {
    fn deliver(self: Arc<Self>, env: Envelope) {
        let agent = env.callback.as_deref().and_then(agent_of_callback).map(str::to_owned);
        if let Some(agent) = agent {
            tokio::spawn(async move { self.on_reply(&agent, &env).await });
        }
    }
}

/// The agent a callback was issued for (`Agent/<id>-<uuid>`).
fn agent_of_callback(cb: &str) -> Option<&str> {
    let rest = cb.strip_prefix("Agent/")?;
    // A uuid is 36 characters, after the dash.
    rest.len().checked_sub(37).map(|n| &rest[..n])
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
            wake: Notify::new(),
        })
    }

    /// Runs the engine until `shutdown`: renews the lease, and drives the rollouts while it holds it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_check = Instant::now();
        loop {
            if Instant::now() >= next_check {
                self.check().await;
                next_check = Instant::now() + CHECK;
            }
            if self.driving.load(Ordering::Relaxed) {
                self.tick().await;
            }
            tokio::time::sleep(MIN_GAP).await;
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.flush().await;
                    if self.driving.load(Ordering::Relaxed) {
                        let _ = self.store.lease_release(LEASE, &self.node).await;
                    }
                    return;
                }
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Renews (or takes) the lease; while held, picks up rollouts made or steered on other nodes.
    async fn check(&self) {
        let held = match self.store.lease_acquire(LEASE, &self.node, LEASE_TTL).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!("cannot renew the rollout lease: {e}");
                false
            }
        };
        let was = self.driving.swap(held, Ordering::Relaxed);
        if held != was {
            tracing::info!(node = %self.node, "{}", if held { "driving rollouts" } else { "no longer driving rollouts" });
        }
        if !held {
            self.live.lock().unwrap().clear();
        }
        if let Err(e) = self.sync(held).await {
            tracing::warn!("cannot read rollouts from the store: {e}");
        }
        if held {
            self.look_elsewhere().await;
        }
    }

    /// Loads the rollouts this node should drive, adopts state changes made elsewhere, and reads
    /// the agents' last results.
    async fn sync(&self, driving: bool) -> Result<(), StoreError> {
        if driving {
            let ids = self.store.live_rollout_ids().await?;
            let missing: Vec<String> = {
                let live = self.live.lock().unwrap();
                ids.into_iter().filter(|id| !live.contains_key(id)).collect()
            };
            for id in missing {
                if let Some((r, members)) = self.store.rollout(&id).await? {
                    self.live.lock().unwrap().entry(id).or_insert_with(|| Live::new(r, members));
                }
            }
            let stored = self.store.rollouts().await?;
            let mut live = self.live.lock().unwrap();
            for r in stored {
                if let Some(l) = live.get_mut(&r.id) {
                    if r.state != l.stored_state {
                        adopt(l, r);
                    }
                }
            }
        }
        let last: HashMap<String, LastResult> = self.store.last_results().await?.into_iter().collect();
        let mut mine = self.last.lock().unwrap();
        for (agent, result) in last {
            mine.insert(agent, result);
        }
        Ok(())
    }

    /// Writes the answers filed since the last tick.
    async fn flush(&self) {
        let pending: Vec<(String, Vec<Member>)> = {
            let mut live = self.live.lock().unwrap();
            live.values_mut()
                .map(|l| {
                    let unsaved = std::mem::take(&mut l.unsaved);
                    (l.rollout.id.clone(), unsaved.iter().map(|&i| l.members[i].clone()).collect())
                })
                .collect()
        };
        for (id, members) in pending {
            if let Err(e) = self.store.save_members(&id, &members).await {
                tracing::error!(rollout = %id, "cannot save rollout progress: {e}");
            }
        }
    }

    /// Asks where the members waited on that are not connected here are (one bulk lookup).
    async fn look_elsewhere(&self) {
        let ids: Vec<String> = {
            let live = self.live.lock().unwrap();
            let mut ids: Vec<String> = live
                .values()
                .flat_map(|l| l.members.iter().filter(|m| !m.state.is_final()))
                .filter(|m| !self.hub.is_connected(&m.agent_id))
                .map(|m| m.agent_id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let mut found = HashMap::with_capacity(ids.len());
        match self.hub.statuses(&ids).await {
            Ok(statuses) => {
                for (id, s) in ids.into_iter().zip(statuses) {
                    if let Some(s) = s {
                        found.insert(id, (s.status == "connected", s.version));
                    }
                }
            }
            Err(e) => tracing::warn!("cannot tell where agents are connected: {e}"),
        }
        *self.elsewhere.lock().unwrap() = found;
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
        if d == Decision::default() && l.unsaved.is_empty() {
            return None;
        }
        let mut changed = std::mem::take(&mut l.unsaved);
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
            let callback = format!("Agent/{}-{}", m.agent_id, util::uuid());
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

    /// Writes a step, then asks the members it claimed in the store.
    async fn carry_out(&self, step: Step) {
        let id = step.rollout.id.clone();
        if let Err(e) = self.store.save_members(&id, &step.changed).await {
            tracing::error!(rollout = %id, "cannot save rollout progress: {e}");
        }
        match self.store.save_rollout(&step.rollout, step.expected).await {
            Ok(true) => {}
            // Steered on another node meanwhile: the next check adopts what is stored.
            Ok(false) => self.stale(&id).await,
            Err(e) => tracing::error!(rollout = %id, "cannot save rollout progress: {e}"),
        }
        if step.asks.is_empty() {
            return;
        }
        let members: Vec<Member> = step.asks.iter().map(|(_, m)| m.clone()).collect();
        let claimed = match self.store.claim_members(&id, &members).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(rollout = %id, "cannot record whom the rollout asks; asking nobody: {e}");
                vec![false; members.len()]
            }
        };
        let force = step.rollout.strategy.force.then_some(true);
        for ((i, m), claimed) in step.asks.into_iter().zip(claimed) {
            if !claimed {
                self.unask(&id, i, false);
                continue;
            }
            let msg = Message::UpgradeRequest { version: Some(step.rollout.version.clone()), force };
            let env = msg.reply_to(m.callback.clone());
            if let Err(e) = self.hub.send_envelope(&m.agent_id, env, Some(step.timeout)).await {
                tracing::info!(agent_id = %m.agent_id, "rollout request not sent: {e}");
                self.unask(&id, i, true);
            }
        }
    }

    /// The rollout's stored state differs from memory: reload it on the next check, after writing
    /// the answers filed since the last tick (they would go with the entry, and their members
    /// would wait in flight for their timeout).
    async fn stale(&self, id: &str) {
        let unsaved: Vec<Member> = match self.live.lock().unwrap().remove(id) {
            Some(l) => l.unsaved.iter().map(|&i| l.members[i].clone()).collect(),
            None => return,
        };
        if unsaved.is_empty() {
            return;
        }
        if let Err(e) = self.store.save_members(id, &unsaved).await {
            tracing::error!(rollout = %id, "cannot save rollout progress: {e}");
        }
    }

    /// A member that was not asked after all: back to pending (and written so when `write`).
    fn unask(&self, rollout_id: &str, index: usize, write: bool) {
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
        if write {
            l.unsaved.push(index);
        } else {
            // Another node asked it, or a cancel skipped it: the store knows better.
            live.remove(rollout_id);
        }
    }

    /// Remembers the final results among `members` as their agents' last results.
    fn remember(&self, rollout: &Rollout, members: &[&Member]) {
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

    /// An agent's answer that no HTTP request waits for: a rollout member's, if its callback is one.
    /// True when it was.
    pub async fn on_reply(&self, agent_id: &str, env: &Envelope) -> bool {
        let Some(cb) = env.callback.as_deref() else { return false };
        let (state, reason) = match &env.msg {
            Message::UpgradeResponse { .. } => (MemberState::Succeeded, None),
            Message::Error { body } => (MemberState::Failed, Some(body.clone())),
            _ => return false,
        };
        {
            let mut live = self.live.lock().unwrap();
            let found = live.values_mut().find_map(|l| l.by_callback.get(cb).copied().map(|i| (l, i)));
            match found {
                Some((l, i)) if l.members[i].agent_id == agent_id => {
                    self.file(l, i, state, reason);
                    drop(live);
                    self.wake.notify_one();
                    return true;
                }
                Some(_) => return false,
                None => {}
            }
        }
        // Not driven here (or no longer in memory): the store is the record.
        match self.store.member_by_callback(cb).await {
            Ok(Some((rollout_id, mut m))) if m.agent_id == agent_id => {
                if matches!(m.state, MemberState::InProgress | MemberState::TimedOut) {
                    tracing::info!(rollout = %rollout_id, agent_id, "answer filed in the store: {}", state.name());
                    (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
                    if let Err(e) = self.store.save_members(&rollout_id, std::slice::from_ref(&m)).await {
                        tracing::error!(agent_id, "cannot save a rollout result: {e}");
                    }
                }
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::error!(agent_id, "cannot look up a rollout callback: {e}");
                false
            }
        }
    }

    /// Files the answer of member `i`: in flight, or timed out and answering late.
    fn file(&self, l: &mut Live, i: usize, state: MemberState, reason: Option<String>) {
        let m = &mut l.members[i];
        let late = match m.state {
            MemberState::InProgress => false,
            MemberState::TimedOut => true,
            // Answered already: a repeated answer changes nothing.
            _ => return,
        };
        let name = m.name.clone();
        (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
        self.remember(&l.rollout, &[&l.members[i]]);
        if late {
            l.event(format!("late answer from {name}: {}", state.name()));
        }
        // Written with the next tick's changes (at most one tick later): a kill in between leaves
        // the member in flight, and its timeout finds the agent on the target version.
        l.unsaved.push(i);
    }

    /// The open rollouts as stored (any node may be asked to start or steer one).
    async fn open_rollouts(&self) -> Result<Vec<(Rollout, Vec<Member>)>, StoreError> {
        let mut out = Vec::new();
        for id in self.store.live_rollout_ids().await? {
            if let Some((r, members)) = self.store.rollout(&id).await? {
                if r.state.is_open() {
                    out.push((r, members));
                }
            }
        }
        Ok(out)
    }

    /// Starts a rollout of `agents` to `version`: members already on it count as `already`.
    pub async fn create(
        &self,
        version: &str,
        strategy: Strategy,
        selection: &str,
        agents: &[AgentRow],
    ) -> Result<Rollout, RolloutError> {
        if agents.is_empty() {
            return Err(RolloutError::Empty);
        }
        for (other, members) in self.open_rollouts().await? {
            let ids: std::collections::HashSet<&str> = members.iter().map(|m| m.agent_id.as_str()).collect();
            if let Some(a) = agents.iter().find(|a| ids.contains(a.id.as_str())) {
                return Err(RolloutError::Overlap {
                    version: version.to_string(),
                    other: other.id.clone(),
                    other_version: other.version.clone(),
                    other_state: state_text(other.state),
                    agent: format!("{} ({})", a.name, a.id),
                });
            }
        }
        let now = now_ms();
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        let statuses = self.hub.statuses(&ids).await.unwrap_or_else(|_| vec![None; ids.len()]);
        let members: Vec<Member> = agents
            .iter()
            .zip(statuses)
            .map(|(a, s)| {
                let already = s.is_some_and(|s| s.version == version);
                Member {
                    agent_id: a.id.clone(),
                    name: a.name.clone(),
                    state: if already { MemberState::Already } else { MemberState::Pending },
                    wave: None,
                    callback: None,
                    asked_at: None,
                    finished_at: already.then_some(now),
                    reason: None,
                }
            })
            .collect();
        let already = members.iter().filter(|m| m.state == MemberState::Already).count();
        let mut l = Live::new(
            Rollout {
                id: util::uuid(),
                version: version.to_string(),
                state: RolloutState::Active,
                reason: None,
                strategy,
                selection: selection.to_string(),
                created_at: now,
                wave: 0,
                events: vec![],
            },
            members,
        );
        l.event(format!("created: {} agents, {already} already on {version}", l.members.len()));
        self.store.insert_rollout(&l.rollout, &l.members).await?;
        let finals: Vec<&Member> = l.members.iter().filter(|m| m.state.is_final()).collect();
        self.remember(&l.rollout, &finals);
        let rollout = l.rollout.clone();
        if self.driving.load(Ordering::Relaxed) {
            self.live.lock().unwrap().insert(rollout.id.clone(), l);
            self.wake.notify_one();
        }
        Ok(rollout)
    }

    /// Pauses, resumes or cancels a rollout. Cancelling skips the members not yet asked; those in
    /// flight finish.
    pub async fn act(&self, id: &str, action: Action) -> Result<Rollout, RolloutError> {
        let (mut rollout, mut members) = self.get(id).await?;
        let before = rollout.state;
        let next = transition(id, before, action)?;
        rollout.state = next;
        let mut skipped = Vec::new();
        if next == RolloutState::Cancelled {
            let now = now_ms();
            for m in members.iter_mut().filter(|m| m.state == MemberState::Pending) {
                (m.state, m.reason, m.finished_at) =
                    (MemberState::Skipped, Some("the rollout was cancelled first".into()), Some(now));
                skipped.push(m.clone());
            }
        }
        rollout.events.push(Event { at: util::now_iso(), text: format!("{} by the operator", state_text(next)) });
        if !self.store.save_rollout(&rollout, before).await? {
            return Err(RolloutError::Changed(id.to_string()));
        }
        self.store.save_members(id, &skipped).await?;
        let finals: Vec<&Member> = skipped.iter().collect();
        self.remember(&rollout, &finals);
        // The driver (this node or another) picks the change up from the store.
        self.stale(id).await;
        self.wake.notify_one();
        Ok(rollout)
    }

    /// `f` of a rollout and its members, without copying them while it is driven here.
    pub async fn view<T>(&self, id: &str, f: impl FnOnce(&Rollout, &[Member]) -> T) -> Result<T, RolloutError> {
        if let Some(l) = self.live.lock().unwrap().get(id) {
            return Ok(f(&l.rollout, &l.members));
        }
        let (r, members) = self.store.rollout(id).await?.ok_or_else(|| RolloutError::NotFound(id.to_string()))?;
        Ok(f(&r, &members))
    }

    /// A rollout and its members: from memory while driven here, else from the store.
    pub async fn get(&self, id: &str) -> Result<(Rollout, Vec<Member>), RolloutError> {
        if let Some(l) = self.live.lock().unwrap().get(id) {
            return Ok((l.rollout.clone(), l.members.clone()));
        }
        self.store.rollout(id).await?.ok_or_else(|| RolloutError::NotFound(id.to_string()))
    }

    /// Every rollout, newest first, with its members' counts by state.
    pub async fn list(&self) -> Result<Vec<(Rollout, Counts)>, RolloutError> {
        let mut out = Vec::new();
        for r in self.store.rollouts().await? {
            out.push(self.view(&r.id, |r, members| (r.clone(), counts(members))).await?);
        }
        Ok(out)
    }

    /// Members by state across the rollouts driven here (for metrics and the fleet page).
    pub fn open_counts(&self) -> Counts {
        let live = self.live.lock().unwrap();
        let mut total = HashMap::new();
        for l in live.values().filter(|l| l.rollout.state.is_open()) {
            for (s, n) in counts(&l.members) {
                *total.entry(s).or_default() += n;
            }
        }
        total
    }
}

/// Takes a rollout's stored state, as an operator changed it on another node.
fn adopt(l: &mut Live, stored: Rollout) {
    (l.rollout.state, l.rollout.reason, l.rollout.events) = (stored.state, stored.reason, stored.events);
    l.stored_state = stored.state;
    if stored.state == RolloutState::Cancelled {
        for m in l.members.iter_mut().filter(|m| m.state == MemberState::Pending) {
            m.state = MemberState::Skipped;
        }
    }
}

/// How many members are in each state.
pub type Counts = HashMap<MemberState, usize>;

/// Counts the members by state.
pub fn counts(members: &[Member]) -> Counts {
    let mut out: HashMap<MemberState, usize> = MemberState::ALL.iter().map(|s| (*s, 0)).collect();
    for m in members {
        *out.entry(m.state).or_default() += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_every_cell() {
        use RolloutState::*;
        let table = [
            (Active, Action::Pause, Some(Paused)),
            (Active, Action::Resume, None),
            (Active, Action::Cancel, Some(Cancelled)),
            (Paused, Action::Pause, None),
            (Paused, Action::Resume, Some(Active)),
            (Paused, Action::Cancel, Some(Cancelled)),
        ];
        for (state, action, want) in table {
            assert_eq!(transition("r", state, action).ok(), want, "{state:?} {action:?}");
        }
        for state in [Halted, Cancelled, Completed] {
            for action in [Action::Pause, Action::Resume, Action::Cancel] {
                assert!(transition("r", state, action).is_err(), "{state:?} {action:?}");
            }
        }
        let e = transition("r1", Completed, Action::Resume).unwrap_err().to_string();
        assert_eq!(e, "rollout r1 is completed: only a paused rollout can be resumed");
    }
}
