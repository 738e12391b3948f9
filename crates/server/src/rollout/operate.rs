//! What operators do to rollouts: start one, pause, resume or cancel it, and read it. Any node
//! may be asked; what it changes is written to the store, where the driving node picks it up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::driver::{now_ms, Live, Rollouts};
use super::model::{Event, Member, MemberState, Rollout, RolloutState, Strategy};
use crate::lease::Lease;
use crate::store::{AgentRow, StoreError};

/// The store's lease held while a rollout is checked for overlaps and written, on any node.
const CREATION: &str = "rollout-creation";
/// Long enough for the check and the write; a node that dies holding it frees it after this.
const CREATION_TTL: Duration = Duration::from_secs(10);
/// How long a creation waits for another node's to end before answering "busy".
const CREATION_WAIT: Duration = Duration::from_secs(5);

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
    #[error("another rollout is being created; try again in a moment")]
    Busy,
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

impl Rollouts {
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
        // One creation at a time on every node sharing the store, so that two overlapping requests
        // cannot both pass the check.
        let _one = self.creating.lock().await;
        let lease = self.creation_lease().await?;
        let made = self.check_and_insert(version, strategy, selection, agents).await;
        lease.release().await;
        made
    }

    /// The store's lease on creating rollouts, waited for as long as [`CREATION_WAIT`].
    async fn creation_lease(&self) -> Result<Lease, RolloutError> {
        let holder = format!("{} {}", self.node, edge_agent_base::id::uuid());
        let deadline = tokio::time::Instant::now() + CREATION_WAIT;
        loop {
            if let Some(lease) = Lease::try_acquire(self.store.clone(), CREATION, &holder, CREATION_TTL).await? {
                return Ok(lease);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RolloutError::Busy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn check_and_insert(
        &self,
        version: &str,
        strategy: Strategy,
        selection: &str,
        agents: &[AgentRow],
    ) -> Result<Rollout, RolloutError> {
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
                id: edge_agent_base::id::uuid(),
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
            self.live.lock().unwrap().entry(rollout.id.clone()).or_insert(l);
            self.wake.notify_one();
        }
        Ok(rollout)
    }

    /// Pauses, resumes or cancels a rollout. Cancelling skips the members not yet asked; those in
    /// flight finish.
    pub async fn act(&self, id: &str, action: Action) -> Result<Rollout, RolloutError> {
        let (mut rollout, members) = self.get(id).await?;
        let before = rollout.state;
        let next = transition(id, before, action)?;
        rollout.state = next;
        rollout.events.push(Event {
            at: edge_agent_base::time::now_iso(),
            text: format!("{} by the operator", state_text(next)),
        });
        // Once the state is written, no node can claim a member of this rollout any more.
        if !self.store.save_rollout(&rollout, before).await? {
            return Err(RolloutError::Changed(id.to_string()));
        }
        if next == RolloutState::Cancelled {
            self.store.skip_pending(id, "the rollout was cancelled first", now_ms()).await?;
            let skipped: Vec<&Member> = members.iter().filter(|m| m.state == MemberState::Pending).collect();
            let skipped: Vec<Member> =
                skipped.into_iter().map(|m| Member { state: MemberState::Skipped, ..m.clone() }).collect();
            let finals: Vec<&Member> = skipped.iter().collect();
            self.remember(&rollout, &finals);
        }
        // The driver (this node or another) picks the change up from the store.
        self.stale(id);
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
