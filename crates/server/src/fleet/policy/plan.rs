//! The policy's decision, a pure function of (the policy, where it stands, the fleet, the time):
//! what to do now ([`Action`]: start a group's rollout, pause, resume or cancel one, record the
//! results of one that ended), and why every group and every agent is where it is
//! ([`GroupStatus`], [`AgentStatus`]). No I/O and no clock inside: the driver gathers the facts,
//! calls [`plan`], and carries the actions out with the rollout machinery.
//!
//! The rules: groups go in order; a group starts once the one before it converged (every agent
//! it could ask is on the target, or failed for good, waits for a retry, or is offline; one that
//! reported success is waited for until it reports the target's version, for
//! [`REPORTED_GRACE_MS`] at most) and its
//! wait has passed; agents are asked only inside the group's window, one rollout per group at a
//! time, so agents that connect later (new, or back from offline) go into the group's next
//! rollout; a halt stops every later group until an operator clears it or sets a new target.

use super::standing::{standing, AgentFacts, Standing};
use crate::model::policy::Mode;
use crate::model::policy_run::{Failure, Halt, Run, Stored};
use crate::model::rollout::RolloutState;

/// How long after its success was recorded a group waits for an agent to report the target
/// before it converges without it (the policy's clock).
pub const REPORTED_GRACE_MS: i64 = 120_000;

/// A group's rollout as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRollout {
    pub id: String,
    pub state: RolloutState,
    pub wave: u32,
    /// Members asked whose answer has not come.
    pub in_flight: usize,
    pub reason: Option<String>,
    pub failures: Vec<Failure>,
}

/// A policy rollout the run does not hold: made before a crash (adopted), or for an earlier
/// target or a group taken out (cancelled).
#[derive(Debug, Clone, PartialEq)]
pub struct Stray {
    pub id: String,
    pub generation: i64,
    pub group: String,
    pub open: bool,
}

/// What the driver does, in this order: records first, then the rest.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The rollout ended and nobody is in flight: its members' results go into their records.
    Fold {
        group: usize,
        rollout: String,
    },
    /// A rollout of these agents (indices into the facts) for the group.
    Start {
        group: usize,
        agents: Vec<usize>,
    },
    Pause(String),
    Resume(String),
    Cancel(String),
}

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    WaitingForPrevious,
    WaitingForWindow,
    WaitingDelay,
    Canary,
    Rolling,
    Halted,
    Converged,
    Suspended,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::WaitingForPrevious => "waiting-for-previous",
            GroupState::WaitingForWindow => "waiting-for-window",
            GroupState::WaitingDelay => "waiting-delay",
            GroupState::Canary => "canary",
            GroupState::Rolling => "rolling",
            GroupState::Halted => "halted",
            GroupState::Converged => "converged",
            GroupState::Suspended => "suspended",
        }
    }
}

/// A group's state, why, and what the policy does next and when.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStatus {
    pub state: GroupState,
    pub reason: String,
    /// The next action in words, and when (the policy's clock); None: nothing is planned.
    pub next: Option<(String, i64)>,
    /// The group's rollout now, if any.
    pub rollout: Option<String>,
}

/// Where an agent stands, with its group's progress taken into account.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    pub standing: Standing,
    /// For a [`Standing::Ready`] or [`Standing::Offline`] agent: why it is not asked now (its
    /// group's state); None once it is asked.
    pub waiting: Option<GroupState>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Where the policy stands after the actions.
    pub run: Run,
    pub actions: Vec<Action>,
    pub groups: Vec<GroupStatus>,
    /// One per agent of the facts, in their order.
    pub agents: Vec<AgentStatus>,
}

/// What the planner is given: the policy as set, where it stood (as stored), each group's rollout
/// (by group, in the policy's order), the fleet, and the time.
pub struct Input<'a> {
    pub stored: &'a Stored,
    pub run: &'a Run,
    pub rollouts: &'a [Option<GroupRollout>],
    /// The policy's rollouts that the run does not hold.
    pub strays: &'a [Stray],
    pub agents: &'a [AgentFacts],
    pub now: i64,
}

/// An instant on the policy's clock as RFC 3339 (`2026-03-02T06:00:00Z`).
pub fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

/// `1 agent`, `3 agents`.
pub fn agents(n: usize) -> String {
    format!("{n} agent{}", if n == 1 { "" } else { "s" })
}

/// Decides what to do now.
pub fn plan(input: &Input<'_>) -> Plan {
    let Input { stored, rollouts, agents: facts, now, .. } = *input;
    let policy = &stored.policy;
    let mut actions = Vec::new();
    let mut run = input.run.aligned(stored);
    strays(&mut run, input.strays, stored.generation, &mut actions);
    let standings: Vec<Standing> =
        facts.iter().map(|a| standing(a, &policy.target, policy.allow_downgrade, now)).collect();
    note_halts(&mut run, rollouts, stored, now);
    let mut walk = Walk { input, run: &mut run, actions: &mut actions, standings: &standings, blocked: None };
    let groups: Vec<GroupStatus> = (0..policy.groups.len()).map(|g| walk.group(g)).collect();
    let agents = facts
        .iter()
        .zip(standings)
        .map(|(a, standing)| {
            let waiting = matches!(standing, Standing::Ready | Standing::Offline)
                .then(|| a.group.map(|g| groups[g].state))
                .flatten();
            AgentStatus { standing, waiting }
        })
        .collect();
    Plan { run, actions, groups, agents }
}

/// The policy's rollouts the run does not hold: one made for a group just before a crash (before
/// the run recorded it) is the group's again; one for an earlier target or a group taken out is
/// cancelled (its members already asked finish).
fn strays(run: &mut Run, strays: &[Stray], generation: i64, actions: &mut Vec<Action>) {
    for s in strays {
        let adopt = run.groups.iter_mut().find(|g| g.name == s.group && g.rollout.is_none());
        match adopt {
            Some(g) if s.generation == generation => g.rollout = Some(s.id.clone()),
            _ if s.open => actions.push(Action::Cancel(s.id.clone())),
            _ => {}
        }
    }
}

/// Halts the groups whose rollout halted (or an operator cancelled), and clears the halts when an
/// operator asked to.
fn note_halts(run: &mut Run, rollouts: &[Option<GroupRollout>], stored: &Stored, now: i64) {
    if stored.clears > run.clears {
        run.clears = stored.clears;
        for g in &mut run.groups {
            if let Some(h) = g.halt.take() {
                g.cleared = Some(h.rollout);
            }
        }
        return;
    }
    for (g, r) in run.groups.iter_mut().zip(rollouts) {
        let mine = |r: &&GroupRollout| g.rollout.as_deref() == Some(&r.id) && g.cleared.as_deref() != Some(&r.id);
        let Some(r) = r.as_ref().filter(mine).filter(|_| g.halt.is_none()) else { continue };
        let reason = match r.state {
            RolloutState::Halted => r.reason.clone().unwrap_or_else(|| "halted".into()),
            RolloutState::Cancelled => format!("its rollout {} was cancelled by an operator", r.id),
            _ => continue,
        };
        g.halt = Some(Halt { reason, at: now, rollout: r.id.clone(), failures: r.failures.clone() });
    }
}

/// The walk through the groups, in order.
struct Walk<'a, 'b> {
    input: &'b Input<'a>,
    run: &'b mut Run,
    actions: &'b mut Vec<Action>,
    standings: &'b [Standing],
    /// Why later groups cannot go on (an earlier one has not converged, or halted).
    blocked: Option<String>,
}

fn status(state: GroupState, reason: String, next: Option<(String, i64)>) -> GroupStatus {
    GroupStatus { state, reason, next, rollout: None }
}

impl Walk<'_, '_> {
    fn group(&mut self, g: usize) -> GroupStatus {
        let rollout = self
            .input
            .rollouts
            .get(g)
            .cloned()
            .flatten()
            .filter(|r| self.run.groups[g].rollout.as_ref() == Some(&r.id));
        let mut s = self.decide(g, rollout.as_ref());
        s.rollout = self.run.groups[g].rollout.clone();
        let name = &self.input.stored.policy.groups[g].name;
        if self.blocked.is_none() && self.run.groups[g].converged_at.is_none() {
            self.blocked = Some(match s.state {
                GroupState::Halted => format!("{name} is halted"),
                _ => format!("waiting for {name} to converge"),
            });
        }
        s
    }

    fn decide(&mut self, g: usize, r: Option<&GroupRollout>) -> GroupStatus {
        let mode = self.input.stored.policy.mode;
        if let Some(recording) = self.fold(g, r) {
            return recording;
        }
        let open = r.filter(|r| r.state.is_open());
        if mode != Mode::Enabled {
            return self.stopped(g, open, mode);
        }
        if let Some(h) = &self.run.groups[g].halt {
            let why = format!("halted: {} ({} failed)", h.reason, h.failures.len());
            self.blocked = Some(format!("{} is halted", self.input.stored.policy.groups[g].name));
            return status(GroupState::Halted, why, None);
        }
        if let Some(why) = self.blocked.clone() {
            self.pause(g, open);
            return status(GroupState::WaitingForPrevious, why, None);
        }
        if let Some(wait) = self.not_started(g) {
            return wait;
        }
        self.started(g, r, open)
    }

    /// A rollout that ended with nobody in flight: its results go into the records before a new
    /// rollout may take its agents. The group's state while they do, unless another applies.
    fn fold(&mut self, g: usize, r: Option<&GroupRollout>) -> Option<GroupStatus> {
        let r = r.filter(|r| !r.state.is_open() && r.in_flight == 0)?;
        self.actions.push(Action::Fold { group: g, rollout: r.id.clone() });
        let kept = self.run.groups[g].halt.is_some();
        let run = &mut self.run.groups[g];
        (run.rollout, run.paused) = (None, false);
        let enabled = self.input.stored.policy.mode == Mode::Enabled;
        (!kept && enabled && self.blocked.is_none())
            .then(|| status(GroupState::Rolling, format!("rollout {} ended; recording its results", r.id), None))
    }

    /// A group that has started: its rollout steered, one started, or it has converged.
    fn started(&mut self, g: usize, r: Option<&GroupRollout>, open: Option<&GroupRollout>) -> GroupStatus {
        let now = self.input.now;
        let group = &self.input.stored.policy.groups[g];
        let window = group.window.as_ref();
        let ts = jiff::Timestamp::from_millisecond(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let in_window = window.is_none_or(|w| w.contains(ts));
        let ready: Vec<usize> = self.members(g).filter(|&i| self.standings[i] == Standing::Ready).collect();
        if !in_window {
            let w = window.expect("outside a window: there is one");
            self.pause(g, open);
            let opens = w.next_opening(ts).map(|t| t.as_millisecond());
            let asked = r.map_or(String::new(), |r| format!("; agents already asked in {} finish", r.id));
            let why = format!("outside its window ({}){asked}", w.describe());
            let what = format!("ask {}", agents(ready.len() + open.map_or(0, |_| 1)));
            return status(GroupState::WaitingForWindow, why, opens.map(|at| (what, at)));
        }
        if let Some(r) = r {
            return self.rolling(g, r);
        }
        if let Some(id) = &self.run.groups[g].rollout {
            // Recorded, not read yet (made or found again just now): looked at the next time.
            return status(GroupState::Canary, format!("rollout {id} starts"), None);
        }
        if !ready.is_empty() {
            let n = ready.len();
            self.actions.push(Action::Start { group: g, agents: ready });
            let canary = group.strategy.canary.min(n);
            return status(
                GroupState::Canary,
                format!("starting a rollout of {}, canary first ({canary})", agents(n)),
                None,
            );
        }
        // Agents that reported success come back on the target in seconds; one that has not
        // within the grace (its host went off, or its new version never connected) is left.
        let coming: Vec<i64> = self
            .members(g)
            .filter_map(|i| match self.standings[i] {
                Standing::Reported(at) if now < at + REPORTED_GRACE_MS => Some(at + REPORTED_GRACE_MS),
                _ => None,
            })
            .collect();
        if let Some(&until) = coming.iter().max() {
            let target = &self.input.stored.policy.target;
            let why = format!("waiting for {} that reported success to report {target}", agents(coming.len()));
            return status(GroupState::Rolling, why, Some(("converge without them".into(), until)));
        }
        self.converged(g)
    }

    /// Suspended or disabled: its rollout paused, or cancelled.
    fn stopped(&mut self, g: usize, open: Option<&GroupRollout>, mode: Mode) -> GroupStatus {
        if mode == Mode::Disabled {
            if let Some(r) = open {
                self.actions.push(Action::Cancel(r.id.clone()));
                let run = &mut self.run.groups[g];
                (run.rollout, run.paused) = (None, false);
            }
            return status(GroupState::Suspended, "the policy is disabled: it asks nothing".into(), None);
        }
        self.pause(g, open);
        status(GroupState::Suspended, "the policy is suspended: nothing new is asked until it is resumed".into(), None)
    }

    /// Pauses the group's rollout if it is active; the policy will resume it.
    fn pause(&mut self, g: usize, open: Option<&GroupRollout>) {
        if let Some(r) = open.filter(|r| r.state == RolloutState::Active) {
            self.actions.push(Action::Pause(r.id.clone()));
            self.run.groups[g].paused = true;
        }
    }

    /// Why the group has not started, or None once it has (it starts now when it may).
    fn not_started(&mut self, g: usize) -> Option<GroupStatus> {
        if self.run.groups[g].started_at.is_some() {
            return None;
        }
        if g > 0 {
            let prev = &self.input.stored.policy.groups[g - 1].name;
            let wait = self.input.stored.policy.groups[g].wait_after_previous;
            let Some(converged) = self.run.groups[g - 1].converged_at else {
                let why = format!("waiting for {prev} to converge");
                return Some(status(GroupState::WaitingForPrevious, why, None));
            };
            let due = converged + wait.as_millis() as i64;
            if self.input.now < due {
                let why = format!("waiting {} after {prev} converged", crate::model::policy::duration_text(wait));
                self.blocked = Some(why.clone());
                return Some(status(GroupState::WaitingDelay, why, Some(("start".into(), due))));
            }
        }
        self.run.groups[g].started_at = Some(self.input.now);
        None
    }

    /// The group's rollout runs (or finishes with the agents it asked).
    fn rolling(&mut self, g: usize, r: &GroupRollout) -> GroupStatus {
        let state = if r.wave == 0 { GroupState::Canary } else { GroupState::Rolling };
        if r.state == RolloutState::Paused {
            if !self.run.groups[g].paused {
                let why = format!("its rollout {} was paused by an operator; resume it to go on", r.id);
                return status(GroupState::Rolling, why, None);
            }
            self.actions.push(Action::Resume(r.id.clone()));
            self.run.groups[g].paused = false;
        }
        let why = match (state, r.state.is_open()) {
            (_, false) => format!("rollout {} ended; waiting for {} asked", r.id, agents(r.in_flight)),
            (GroupState::Canary, true) => format!("rollout {}: the canary is asked", r.id),
            _ => format!("rollout {}: wave {}", r.id, r.wave),
        };
        status(state, why, None)
    }

    fn converged(&mut self, g: usize) -> GroupStatus {
        let now = self.input.now;
        let since = *self.run.groups[g].converged_at.get_or_insert(now);
        let retry = self
            .members(g)
            .filter_map(|i| match self.standings[i] {
                Standing::Retrying(at) => Some(at),
                _ => None,
            })
            .min();
        let why = format!("converged at {}", iso(since));
        status(GroupState::Converged, why, retry.map(|at| ("retry agents whose last attempt failed".into(), at)))
    }

    /// The indices of the group's agents.
    fn members(&self, g: usize) -> impl Iterator<Item = usize> + '_ {
        self.input.agents.iter().enumerate().filter(move |(_, a)| a.group == Some(g)).map(|(i, _)| i)
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
