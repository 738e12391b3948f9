//! Where the update policy stands, as the store keeps it: the policy as set ([`Stored`]: its
//! target's generation, when it was set, how many halts an operator cleared), the progress of each
//! group for the current target ([`Run`]), and each agent's attempts at the current target
//! ([`Record`]), folded from the members of the policy's rollouts by [`fold`], with the retry
//! schedule of transient failures ([`retry_delay`]). Times are milliseconds since the epoch on
//! the policy's clock. Plain data and pure functions.

use serde::{Deserialize, Serialize};

use super::failure::{classify, FailureKind};
use super::member::{Member, MemberState};
use super::policy::Policy;

/// The policy as set, with what the server adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub policy: Policy,
    /// Grows each time the target changes: the progress of the groups and the agents' attempts
    /// belong to one generation.
    pub generation: i64,
    /// When the target was set (milliseconds since the epoch, real time): a manual `$upgrade`
    /// since then pins its agent.
    pub set_at: i64,
    /// How many times an operator cleared the halts.
    pub clears: i64,
    /// The target was given as `latest`, and resolved to the policy's target when it was set.
    pub from_latest: bool,
    /// Grows at each change (a change is written only over the revision it read).
    pub revision: i64,
}

/// Why a group halted: the rollout's reason and its failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Halt {
    pub reason: String,
    pub at: i64,
    pub rollout: String,
    pub failures: Vec<Failure>,
}

/// A member that failed, with its agent's words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub agent_id: String,
    pub name: String,
    pub reason: String,
}

/// One group's progress at the current target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRun {
    pub name: String,
    pub started_at: Option<i64>,
    /// When it first converged (the next group's wait counts from it).
    pub converged_at: Option<i64>,
    pub halt: Option<Halt>,
    /// The group's rollout, until its members are folded into the agents' records.
    pub rollout: Option<String>,
    /// The policy paused that rollout (outside the window, suspended, or an earlier group halted).
    pub paused: bool,
    /// A halted rollout whose halt an operator cleared (it halts the group no more).
    pub cleared: Option<String>,
}

/// The groups' progress at the current target (one generation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub generation: i64,
    /// The halts cleared so far ([`Stored::clears`] when the run last caught up with it).
    pub clears: i64,
    pub groups: Vec<GroupRun>,
}

impl Run {
    /// The run for `stored`: this one, with its groups lined up with the policy's by name (a group
    /// added starts afresh), or a new one for a new target.
    pub fn aligned(&self, stored: &Stored) -> Run {
        let same = self.generation == stored.generation;
        let groups = stored
            .policy
            .groups
            .iter()
            .map(|g| {
                let kept = same.then(|| self.groups.iter().find(|r| r.name == g.name).cloned()).flatten();
                kept.unwrap_or_else(|| GroupRun { name: g.name.clone(), ..GroupRun::default() })
            })
            .collect();
        let clears = if same { self.clears } else { stored.clears };
        Run { generation: stored.generation, clears, groups }
    }

    /// The rollouts the run holds, one at most for each group.
    pub fn rollouts(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().filter_map(|g| g.rollout.as_deref())
    }
}

/// How one agent's last attempt at the current target ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Succeeded,
    Failed(FailureKind),
}

impl Attempt {
    pub fn name(self) -> &'static str {
        match self {
            Attempt::Succeeded => "succeeded",
            Attempt::Failed(FailureKind::Definite) => "definite",
            Attempt::Failed(FailureKind::Transient) => "transient",
        }
    }

    pub fn parse(text: &str) -> Option<Attempt> {
        [Attempt::Succeeded, Attempt::Failed(FailureKind::Definite), Attempt::Failed(FailureKind::Transient)]
            .into_iter()
            .find(|a| a.name() == text)
    }
}

/// One agent's attempts at the target of `generation`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub agent_id: String,
    pub generation: i64,
    /// Failed attempts so far (transient ones; a definite one ends the attempts).
    pub failures: u32,
    pub last: Attempt,
    /// The agent's words for the last failure.
    pub reason: Option<String>,
    /// When the last attempt ended.
    pub at: i64,
    /// After a transient failure: not asked again before this time.
    pub retry_at: Option<i64>,
    /// The rollout the last attempt was made in (a rollout is folded once).
    pub rollout: String,
}

/// The waits before asking again after 1, 2, … transient failures, in minutes (Elastic Fleet's
/// schedule); after the sixth, every hour.
pub const RETRY_MINUTES: [i64; 6] = [1, 5, 10, 15, 30, 60];

/// The wait after the `failures`-th transient failure, in milliseconds.
pub fn retry_delay(failures: u32) -> i64 {
    let i = (failures.max(1) as usize - 1).min(RETRY_MINUTES.len() - 1);
    RETRY_MINUTES[i] * 60_000
}

/// Why an agent that answered success twice without reporting the target is not asked again.
pub const SUCCESS_WITHOUT_TARGET: &str =
    "answered with success a second time and still does not report the target version: not asked again for this target";

/// The agent's record once `member` (of the policy's rollout `rollout`, in `generation`) ended,
/// at `now`, its agent reporting the target then or not (`on_target`); None when its end changes
/// nothing (it was skipped, or is not over, or this rollout was folded into the record already).
pub fn fold(
    old: Option<&Record>,
    generation: i64,
    rollout: &str,
    member: &Member,
    on_target: bool,
    now: i64,
) -> Option<Record> {
    let old = old.filter(|r| r.generation == generation);
    if old.is_some_and(|r| r.rollout == rollout) {
        return None;
    }
    let failures = old.map_or(0, |r| r.failures);
    let record = |last, failures, reason, retry_at| Record {
        agent_id: member.agent_id.clone(),
        generation,
        failures,
        last,
        reason,
        at: now,
        retry_at,
        rollout: rollout.to_string(),
    };
    match member.state {
        // A second success, and the agent still does not report the target: not believed, and not
        // asked again for this target (an agent answering success without upgrading would be asked
        // in every rollout, and its group, and every later one, never converge). One back on the
        // target (it had left it: rolled back by itself, reinstalled) succeeded.
        MemberState::Succeeded if !on_target && old.is_some_and(|r| r.last == Attempt::Succeeded) => {
            let why = Some(SUCCESS_WITHOUT_TARGET.to_string());
            Some(record(Attempt::Failed(FailureKind::Definite), failures + 1, why, None))
        }
        MemberState::Succeeded | MemberState::Already => Some(record(Attempt::Succeeded, failures, None, None)),
        state => {
            let kind = classify(state, member.reason.as_deref())?;
            let reason = member.reason.clone().or_else(|| Some(state.name().to_string()));
            let failures = failures + 1;
            let retry_at = (kind == FailureKind::Transient).then(|| now + retry_delay(failures));
            Some(record(Attempt::Failed(kind), failures, reason, retry_at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(state: MemberState, reason: &str) -> Member {
        Member { state, reason: Some(reason.into()), ..Member::new("a", "agent a", false, 0) }
    }

    #[test]
    fn the_retry_schedule_is_elastics_then_hourly() {
        let minutes: Vec<i64> = (1..=9).map(|n| retry_delay(n) / 60_000).collect();
        assert_eq!(minutes, [1, 5, 10, 15, 30, 60, 60, 60, 60]);
    }

    #[test]
    fn transient_failures_are_counted_and_scheduled_definite_ones_end_the_attempts() {
        let timed_out = ended(MemberState::TimedOut, "Timeout");
        let first = fold(None, 3, "r1", &timed_out, false, 1_000).unwrap();
        assert_eq!(
            (first.failures, first.last, first.retry_at),
            (1, Attempt::Failed(FailureKind::Transient), Some(61_000))
        );
        assert_eq!(fold(Some(&first), 3, "r1", &timed_out, false, 2_000), None, "a rollout is folded once");
        let second =
            fold(Some(&first), 3, "r2", &ended(MemberState::Failed, "download of x failed"), false, 70_000).unwrap();
        assert_eq!((second.failures, second.retry_at), (2, Some(70_000 + 5 * 60_000)));
        let definite =
            fold(Some(&second), 3, "r3", &ended(MemberState::Failed, "self-check failed: 3"), false, 9).unwrap();
        assert_eq!((definite.last, definite.retry_at), (Attempt::Failed(FailureKind::Definite), None));
        assert_eq!(definite.reason.as_deref(), Some("self-check failed: 3"));
        let ok = fold(Some(&second), 3, "r4", &ended(MemberState::Succeeded, ""), false, 10).unwrap();
        assert_eq!((ok.last, ok.reason.clone(), ok.failures), (Attempt::Succeeded, None, 2));
        // Found by an attacker's probe: asked again after a success (it never reported the
        // target), a second success is not believed, and it is not asked again for this target.
        let again = fold(Some(&ok), 3, "r7", &ended(MemberState::Succeeded, ""), false, 11).unwrap();
        assert_eq!((again.last, again.failures), (Attempt::Failed(FailureKind::Definite), 3));
        assert_eq!(again.reason.as_deref(), Some(SUCCESS_WITHOUT_TARGET));
        let back = fold(Some(&ok), 3, "r9", &ended(MemberState::Succeeded, ""), true, 11).unwrap();
        assert_eq!(back.last, Attempt::Succeeded, "on the target again after it had left it: believed");
        let already = fold(Some(&ok), 3, "r8", &ended(MemberState::Already, ""), false, 12).unwrap();
        assert_eq!(already.last, Attempt::Succeeded, "found on the target: believed");
        assert_eq!(fold(None, 3, "r5", &ended(MemberState::Skipped, "the rollout halted first"), false, 10), None);
        let new_target = fold(Some(&second), 4, "r6", &timed_out, false, 0).unwrap();
        assert_eq!(new_target.failures, 1, "a new target starts the count again");
        for a in ["succeeded", "definite", "transient"] {
            assert_eq!(Attempt::parse(a).unwrap().name(), a);
        }
    }
}
