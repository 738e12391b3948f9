//! The rollout engine's state: the rollouts it holds in memory ([`Live`]) on the node that drives
//! them, every agent's last rollout result, and what the other nodes' agents looked like at the
//! last check. What it does is in the files beside: [`super::driver`] (each tick),
//! [`super::answers`] (agents' answers), [`super::operate`] (operators' actions) and
//! [`super::leader`] (who drives).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent_wire::Callback;
use semver::Version;
use tokio::sync::Notify;

use crate::conn::hub::Hub;
use crate::model::member::{Member, MemberState};
use crate::model::rollout::{LastResult, Refusal, Rollout, RolloutState};
use crate::quiet::Quiet;
use crate::store::{Store, StoreError};

/// Why an operator's request about a rollout failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("no rollout {0}")]
    NotFound(String),
    #[error("rollout {id} {refusal}")]
    NotAllowed { id: String, refusal: Refusal },
    #[error(
        "this rollout (to {version}) would overlap rollout {other} (to {other_version}, {other_state}) on agent \
         {agent}; cancel that rollout or leave the agent out"
    )]
    Overlap { version: Version, other: String, other_version: Version, other_state: &'static str, agent: String },
    #[error("no agent(s) for given query: a rollout needs at least one member")]
    Empty,
    #[error("rollout {0} was changed at the same time; look at it again and retry")]
    Changed(String),
    #[error("another rollout is being created; try again in a moment")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rollout the engine holds, with its members and their callbacks.
pub(super) struct Live {
    pub(super) rollout: Rollout,
    /// The rollout's state as last stored (saves are conditional on it).
    pub(super) stored_state: RolloutState,
    pub(super) members: Vec<Member>,
    pub(super) by_callback: HashMap<Callback, usize>,
    /// Each member's index, by agent id.
    pub(super) by_agent: HashMap<String, usize>,
    /// When its members were last read from the store (ms).
    pub(super) read_at: i64,
    /// The rollout's row has changed in memory (an event, a wave) since it was last written.
    pub(super) unsaved: bool,
    /// The planner found nothing to do at its last look: until when nothing it reads changes.
    /// Cleared by whatever changes the members (an answer, a read from the store, a request
    /// taken back) or the view of other nodes' agents.
    pub(super) idle: Option<Idle>,
}

/// Until when a rollout's plan stays empty if nothing else changes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Idle {
    /// The hub's [`crate::conn::hub::Hub::roster`] at the look: an agent that connects or goes
    /// may change who is asked.
    pub(super) roster: u64,
    /// When time alone changes the plan (a timeout, the deadline, the end of a bake, a
    /// window), or a second after the look, whichever is first (ms).
    pub(super) until: i64,
}

impl Idle {
    /// Whether the planner may skip this rollout at `now` with the hub's roster at `roster`.
    pub(super) fn holds(&self, now: i64, roster: u64) -> bool {
        self.roster == roster && now < self.until
    }
}

impl Live {
    pub(super) fn new(rollout: Rollout, members: Vec<Member>) -> Live {
        let by_callback = members.iter().enumerate().filter_map(|(i, m)| m.callback.clone().map(|c| (c, i))).collect();
        let by_agent = members.iter().enumerate().map(|(i, m)| (m.agent_id.clone(), i)).collect();
        Live {
            stored_state: rollout.state,
            rollout,
            members,
            by_callback,
            by_agent,
            read_at: now_ms(),
            unsaved: false,
            idle: None,
        }
    }

    pub(super) fn event(&mut self, text: String) {
        self.rollout.record(edge_agent_base::time::now_iso(), text);
        self.unsaved = true;
    }

    /// Done with: ended, and nobody in flight.
    pub(super) fn settled(&self) -> bool {
        !self.rollout.state.is_open() && self.members.iter().all(|m| m.state != MemberState::InProgress)
    }
}

/// Milliseconds since the epoch: the engine's clock.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub struct Rollouts {
    pub(super) store: Arc<dyn Store>,
    pub(super) hub: Arc<Hub>,
    pub(super) node: String,
    pub(super) driving: AtomicBool,
    pub(super) live: Mutex<HashMap<String, Live>>,
    /// Each agent's last rollout result, for `$status` and search results.
    /// Each agent's last rollout result, with when its member finished (ms).
    pub(super) last: Mutex<HashMap<String, (i64, LastResult)>>,
    /// When the agents' last results were last read from the store (ms): the next read asks only
    /// for what finished since (less a margin).
    pub(super) last_read: Mutex<Option<i64>>,
    /// Members not connected to this node: (connected elsewhere, version), as of the last check.
    pub(super) elsewhere: Mutex<HashMap<String, (bool, Option<Version>)>>,
    pub(super) creating: tokio::sync::Mutex<()>,
    /// Checks since the agents' last results were read from the store.
    pub(super) checks: std::sync::atomic::AtomicU32,
    pub(super) wake: Notify,
    /// Answers filed in memory on the driving node, not written yet: the next tick writes them
    /// together, before a step that ends their rollout and otherwise after its requests went
    /// out (or the next check, or the end of driving).
    pub(super) answered: Mutex<Vec<(String, Member)>>,
    /// Lines about one agent that would repeat at every tick.
    pub(super) quiet: Quiet,
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
            last_read: Mutex::default(),
            elsewhere: Mutex::default(),
            creating: tokio::sync::Mutex::new(()),
            checks: std::sync::atomic::AtomicU32::new(0),
            wake: Notify::new(),
            answered: Mutex::default(),
            quiet: Quiet::new(Duration::from_secs(60)),
        })
    }

    /// The rollout's stored state differs from memory: reload it on the next check.
    pub(super) fn stale(&self, id: &str) {
        self.live.lock().unwrap().remove(id);
    }

    /// Remembers the final results among `members` as their agents' last results.
    pub(super) fn remember(&self, rollout: &Rollout, members: &[&Member]) {
        let mut last = self.last.lock().unwrap();
        for m in members.iter().filter(|m| m.state.is_final()) {
            let at = m.finished_at.unwrap_or_else(now_ms);
            let result = LastResult {
                rollout_id: rollout.id.clone(),
                version: rollout.version.clone(),
                state: m.state,
                reason: m.reason.clone(),
            };
            last.insert(m.agent_id.clone(), (at, result));
        }
    }

    /// The last rollout result of an agent.
    pub fn last_result(&self, agent_id: &str) -> Option<LastResult> {
        self.last.lock().unwrap().get(agent_id).map(|(_, l)| l.clone())
    }

    /// Whether this node drives the rollouts now (it holds the lease).
    pub fn driving(&self) -> bool {
        self.driving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The rollouts driven here now: open ones, and ended ones with members in flight.
    pub fn driven(&self) -> Vec<String> {
        self.live.lock().unwrap().keys().cloned().collect()
    }
}
