//! The rollout engine: holds the live rollouts, applies [`plan`](super::plan::plan) on every tick,
//! asks agents, and files their answers. Every change is written to the store before anything is
//! sent, so a restart resumes where the rollout was, and no member is asked twice: a member is
//! asked once, with one callback, and its answer is matched by that callback whenever it comes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::model::{Event, Member, MemberState, Rollout, RolloutState, Strategy};
use super::plan::{plan, Decision, Fleet};
use super::store::LastResult;
use crate::protocol::{Envelope, Message};
use crate::server::db::{AgentRow, Store, StoreError};
use crate::server::hub::Hub;
use crate::util;

/// How often the engine looks at its rollouts when nothing wakes it earlier.
const TICK: Duration = Duration::from_millis(100);

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
    members: Vec<Member>,
    by_callback: HashMap<String, usize>,
    /// Members whose answers are filed in memory and written on the next tick, in one transaction.
    unsaved: Vec<usize>,
}

impl Live {
    fn new(rollout: Rollout, members: Vec<Member>) -> Live {
        let by_callback = members.iter().enumerate().filter_map(|(i, m)| m.callback.clone().map(|c| (c, i))).collect();
        Live { rollout, members, by_callback, unsaved: Vec::new() }
    }

    fn event(&mut self, text: String) {
        self.rollout.events.push(Event { at: util::now_iso(), text });
    }

    /// Done with: ended, and nobody in flight.
    fn settled(&self) -> bool {
        !self.rollout.state.is_open() && self.members.iter().all(|m| m.state != MemberState::InProgress)
    }
}

struct HubFleet<'a>(&'a Hub);

impl Fleet for HubFleet<'_> {
    fn connected(&self, agent_id: &str) -> bool {
        self.0.is_connected(agent_id)
    }
    fn version(&self, agent_id: &str) -> Option<String> {
        self.0.status(agent_id).map(|s| s.version)
    }
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A request to send once the engine's lock is released.
struct Send {
    rollout_id: String,
    index: usize,
    agent_id: String,
    envelope: Envelope,
}

pub struct Rollouts {
    store: Arc<Store>,
    hub: Arc<Hub>,
    live: Mutex<HashMap<String, Live>>,
    /// Each agent's last rollout result, for `$status` and search results.
    last: Mutex<HashMap<String, LastResult>>,
    wake: Notify,
}

impl Rollouts {
    /// The engine, holding every rollout the store says is live.
    pub fn load(store: Arc<Store>, hub: Arc<Hub>) -> Result<Arc<Rollouts>, StoreError> {
        let mut live = HashMap::new();
        for id in store.live_rollout_ids()? {
            if let Some((r, members)) = store.rollout(&id)? {
                live.insert(id, Live::new(r, members));
            }
        }
        let last = Mutex::new(store.last_results()?.into_iter().collect());
        Ok(Arc::new(Rollouts { store, hub, live: Mutex::new(live), last, wake: Notify::new() }))
    }

    /// Writes members of `rollout`, and remembers the final results among them.
    fn save(&self, rollout: &Rollout, members: &[&Member]) -> Result<(), StoreError> {
        self.store.save_members(&rollout.id, members)?;
        self.remember(rollout, members);
        Ok(())
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

    /// Runs the engine until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return self.flush(),
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
            }
            self.tick().await;
        }
    }

    /// Writes the answers filed since the last tick.
    fn flush(&self) {
        let mut live = self.live.lock().unwrap();
        for l in live.values_mut() {
            let unsaved = std::mem::take(&mut l.unsaved);
            let members: Vec<&Member> = unsaved.iter().map(|&i| &l.members[i]).collect();
            if let Err(e) = self.store.save_members(&l.rollout.id, &members) {
                tracing::error!(rollout = %l.rollout.id, "cannot save rollout progress: {e}");
            }
        }
    }

    /// One step of every live rollout.
    pub async fn tick(&self) {
        let now = now_ms();
        let sends = {
            let mut live = self.live.lock().unwrap();
            let mut sends = Vec::new();
            for l in live.values_mut() {
                let decision = plan(&l.rollout, &l.members, now, &HubFleet(&self.hub));
                if let Err(e) = self.apply(l, decision, now, &mut sends) {
                    tracing::error!(rollout = %l.rollout.id, "cannot save rollout progress: {e}");
                }
            }
            live.retain(|_, l| !l.settled());
            sends
        };
        for s in sends {
            if let Err(e) = self.hub.send_envelope(&s.agent_id, s.envelope).await {
                // Not sent: the agent was not asked, and stays pending.
                tracing::info!(agent_id = %s.agent_id, "rollout request not sent: {e}");
                self.unask(&s.rollout_id, s.index);
            }
        }
    }

    fn apply(&self, l: &mut Live, d: Decision, now: i64, sends: &mut Vec<Send>) -> Result<(), StoreError> {
        if d == Decision::default() && l.unsaved.is_empty() {
            return Ok(());
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
        let force = l.rollout.strategy.force.then_some(true);
        for i in d.ask {
            let m = &mut l.members[i];
            let callback = format!("Agent/{}-{}", m.agent_id, util::uuid());
            (m.state, m.wave, m.asked_at) = (MemberState::InProgress, Some(l.rollout.wave), Some(now));
            m.callback = Some(callback.clone());
            l.by_callback.insert(callback.clone(), i);
            let msg = Message::UpgradeRequest { version: Some(l.rollout.version.clone()), force };
            let envelope = msg.reply_to(Some(callback));
            sends.push(Send { rollout_id: l.rollout.id.clone(), index: i, agent_id: m.agent_id.clone(), envelope });
            changed.push(i);
        }
        let members: Vec<&Member> = changed.iter().map(|&i| &l.members[i]).collect();
        self.save(&l.rollout, &members)?;
        self.store.save_rollout(&l.rollout)
    }

    /// A request that could not be sent: the member was not asked after all.
    fn unask(&self, rollout_id: &str, index: usize) {
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
        if let Err(e) = self.store.save_members(rollout_id, &[&l.members[index]]) {
            tracing::error!(rollout = rollout_id, "cannot save rollout progress: {e}");
        }
    }

    /// An agent's answer that no HTTP request waits for: a rollout member's, if its callback is one.
    /// True when it was.
    pub fn on_reply(&self, agent_id: &str, env: &Envelope) -> bool {
        let Some(cb) = env.callback.as_deref() else { return false };
        let (state, reason) = match &env.msg {
            Message::UpgradeResponse { .. } => (MemberState::Succeeded, None),
            Message::Error { body } => (MemberState::Failed, Some(body.clone())),
            _ => return false,
        };
        let filed = {
            let mut live = self.live.lock().unwrap();
            let found = live.values_mut().find_map(|l| l.by_callback.get(cb).copied().map(|i| (l, i)));
            match found {
                Some((l, i)) if l.members[i].agent_id == agent_id => Some(self.file(l, i, state, reason.clone())),
                Some(_) => return false,
                None => None,
            }
        };
        let filed = match filed {
            Some(r) => r,
            None => match self.store.member_by_callback(cb) {
                Ok(Some((rollout_id, mut m))) if m.agent_id == agent_id => {
                    if !matches!(m.state, MemberState::TimedOut | MemberState::InProgress) {
                        return true;
                    }
                    tracing::info!(rollout = %rollout_id, agent_id, "late answer: {}", state.name());
                    (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
                    match self.store.rollout(&rollout_id) {
                        Ok(Some((r, _))) => self.save(&r, &[&m]),
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                Ok(_) => return false,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = filed {
            tracing::error!(agent_id, "cannot save a rollout result: {e}");
        }
        self.wake.notify_one();
        true
    }

    /// Files the answer of member `i`: in flight, or timed out and answering late.
    fn file(&self, l: &mut Live, i: usize, state: MemberState, reason: Option<String>) -> Result<(), StoreError> {
        let m = &mut l.members[i];
        match m.state {
            MemberState::InProgress => {}
            MemberState::TimedOut => {
                let text = format!("late answer from {}: {}", m.name, state.name());
                (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
                l.event(text);
                self.store.save_rollout(&l.rollout)?;
                return self.save(&l.rollout, &[&l.members[i]]);
            }
            // Answered already: a repeated answer changes nothing.
            _ => return Ok(()),
        }
        // Written with the next tick's changes (at most one tick later): a kill in between leaves
        // the member in flight, and its timeout finds the agent on the target version.
        (m.state, m.reason, m.finished_at) = (state, reason, Some(now_ms()));
        self.remember(&l.rollout, &[&l.members[i]]);
        l.unsaved.push(i);
        Ok(())
    }

    /// Starts a rollout of `agents` to `version`: members already on it count as `already`.
    pub fn create(
        &self,
        version: &str,
        strategy: Strategy,
        selection: &str,
        agents: &[AgentRow],
    ) -> Result<Rollout, RolloutError> {
        if agents.is_empty() {
            return Err(RolloutError::Empty);
        }
        let now = now_ms();
        let mut live = self.live.lock().unwrap();
        for l in live.values().filter(|l| l.rollout.state.is_open()) {
            let ids: std::collections::HashSet<&str> = l.members.iter().map(|m| m.agent_id.as_str()).collect();
            if let Some(a) = agents.iter().find(|a| ids.contains(a.id.as_str())) {
                return Err(RolloutError::Overlap {
                    version: version.to_string(),
                    other: l.rollout.id.clone(),
                    other_version: l.rollout.version.clone(),
                    other_state: state_text(l.rollout.state),
                    agent: format!("{} ({})", a.name, a.id),
                });
            }
        }
        let members: Vec<Member> = agents
            .iter()
            .map(|a| {
                let already = self.hub.status(&a.id).is_some_and(|s| s.version == version);
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
        self.store.insert_rollout(&l.rollout, &l.members)?;
        let already: Vec<&Member> = l.members.iter().filter(|m| m.state.is_final()).collect();
        self.save(&l.rollout, &already)?;
        let rollout = l.rollout.clone();
        live.insert(rollout.id.clone(), l);
        drop(live);
        self.wake.notify_one();
        Ok(rollout)
    }

    /// Pauses, resumes or cancels a rollout. Cancelling skips the members not yet asked; those in
    /// flight finish.
    pub fn act(&self, id: &str, action: Action) -> Result<Rollout, RolloutError> {
        let mut live = self.live.lock().unwrap();
        let Some(l) = live.get_mut(id) else {
            return match self.store.rollout(id)? {
                Some((r, _)) => transition(id, r.state, action).map(|_| r),
                None => Err(RolloutError::NotFound(id.to_string())),
            };
        };
        let next = transition(id, l.rollout.state, action)?;
        l.rollout.state = next;
        let mut skipped = Vec::new();
        if next == RolloutState::Cancelled {
            let now = now_ms();
            for (i, m) in l.members.iter_mut().enumerate() {
                if m.state == MemberState::Pending {
                    (m.state, m.reason, m.finished_at) =
                        (MemberState::Skipped, Some("the rollout was cancelled first".into()), Some(now));
                    skipped.push(i);
                }
            }
        }
        l.event(format!("{} by the operator", state_text(next)));
        let members: Vec<&Member> = skipped.iter().map(|&i| &l.members[i]).collect();
        self.save(&l.rollout, &members)?;
        self.store.save_rollout(&l.rollout)?;
        let r = l.rollout.clone();
        drop(live);
        self.wake.notify_one();
        Ok(r)
    }

    /// A rollout and its members: from memory while live, else from the store.
    pub fn get(&self, id: &str) -> Result<(Rollout, Vec<Member>), RolloutError> {
        if let Some(l) = self.live.lock().unwrap().get(id) {
            return Ok((l.rollout.clone(), l.members.clone()));
        }
        self.store.rollout(id)?.ok_or_else(|| RolloutError::NotFound(id.to_string()))
    }

    /// Every rollout, newest first, with its members' counts by state.
    pub fn list(&self) -> Result<Vec<(Rollout, Counts)>, RolloutError> {
        let mut out = Vec::new();
        for r in self.store.rollouts()? {
            let (r, members) = self.get(&r.id)?;
            out.push((r, counts(&members)));
        }
        Ok(out)
    }

    /// Members by state across the open rollouts (for metrics and the fleet page).
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
