//! One agent of a rollout: where it stands ([`MemberState`]), and the one door through which it
//! moves ([`transition`]), a pure table. The driver, the answers and the operator's actions all
//! go through it, and the store's guards are written from it ([`sources_of`]), so that a write
//! the table refuses is refused by the database too, on every node.

use std::collections::HashMap;

use edge_agent_wire::Callback;
use serde::{Deserialize, Serialize};

/// Where one agent stands in a rollout. Every member ends in exactly one final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberState {
    /// Not asked yet.
    Pending,
    /// Asked; its answer has not come.
    InProgress,
    Succeeded,
    /// Already on the target version at creation: never asked.
    Already,
    /// The agent answered with an error (its own text is the reason).
    Failed,
    /// No answer within the per-agent timeout (a late answer still counts).
    TimedOut,
    /// Offline until the rollout's deadline for offline members.
    Expired,
    /// Never asked: the rollout was halted or cancelled first.
    Skipped,
}

impl MemberState {
    pub const ALL: [MemberState; 8] = [
        MemberState::Pending,
        MemberState::InProgress,
        MemberState::Succeeded,
        MemberState::Already,
        MemberState::Failed,
        MemberState::TimedOut,
        MemberState::Expired,
        MemberState::Skipped,
    ];

    pub fn is_final(self) -> bool {
        !matches!(self, MemberState::Pending | MemberState::InProgress)
    }

    /// A failure for the abort criteria.
    pub fn is_failure(self) -> bool {
        matches!(self, MemberState::Failed | MemberState::TimedOut)
    }

    /// Finished after being asked: the members the failure percentage is taken over.
    pub fn is_finished(self) -> bool {
        matches!(self, MemberState::Succeeded | MemberState::Failed | MemberState::TimedOut)
    }

    /// The stored and shown text (`pending`, `in-progress`, …).
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Pending => "pending",
            MemberState::InProgress => "in-progress",
            MemberState::Succeeded => "succeeded",
            MemberState::Already => "already",
            MemberState::Failed => "failed",
            MemberState::TimedOut => "timed-out",
            MemberState::Expired => "expired",
            MemberState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<MemberState> {
        MemberState::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// One agent of a rollout, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub agent_id: String,
    pub name: String,
    pub state: MemberState,
    /// The wave it was asked in.
    pub wave: Option<u32>,
    /// The callback of the one request it was sent; its answer is matched by it, even after a
    /// restart of the server or of the agent.
    pub callback: Option<Callback>,
    /// Milliseconds since the epoch.
    pub asked_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The agent's own words for a failure, or why a member ended as it did.
    pub reason: Option<String>,
}

impl Member {
    /// A member as a rollout is created: pending, or, when its agent already runs the target
    /// version, `already` (at `now`).
    pub fn new(agent_id: &str, name: &str, already: bool, now: i64) -> Member {
        Member {
            agent_id: agent_id.to_string(),
            name: name.to_string(),
            state: if already { MemberState::Already } else { MemberState::Pending },
            wave: None,
            callback: None,
            asked_at: None,
            finished_at: already.then_some(now),
            reason: None,
        }
    }
}

/// Something that happens to a member (times in milliseconds since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    /// It is asked, in `wave`, by the one request carrying `callback`.
    Ask { wave: u32, callback: Callback, at: i64 },
    /// The request did not leave after all (the agent was not connected, or the bus between nodes
    /// was unavailable before it was sent): it waits again, for this reason.
    Unask { why: String },
    /// Its request is sent again with the same callback (the agent acts once per callback), and its
    /// timeout starts again at `at`: what was in the way was not the agent (the bus or the store
    /// was unavailable during its wait, or another node took over the rollout).
    Resend { why: String, at: i64 },
    /// Its agent answered: the upgrade's response, or the text of its `agent:error`.
    Answer { result: Result<(), String>, at: i64 },
    /// No answer within the per-agent timeout; `on_target` when the agent runs the target version
    /// all the same (only its report was lost).
    TimeOut { on_target: bool, at: i64 },
    /// Offline until the rollout's deadline.
    Expire { at: i64 },
    /// Never asked: the rollout ended first, for this reason.
    Skip { why: String, at: i64 },
}

impl MemberEvent {
    pub fn name(&self) -> &'static str {
        match self {
            MemberEvent::Ask { .. } => "ask",
            MemberEvent::Unask { .. } => "take back the request of",
            MemberEvent::Resend { .. } => "send again the request of",
            MemberEvent::Answer { .. } => "file the answer of",
            MemberEvent::TimeOut { .. } => "time out",
            MemberEvent::Expire { .. } => "expire",
            MemberEvent::Skip { .. } => "skip",
        }
    }
}

/// An event that is not allowed in the member's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a member that is {}", state.name())]
pub struct Refusal {
    pub state: MemberState,
    pub event: &'static str,
}

/// Why a member whose request went unanswered is done with, when its agent runs the target.
pub const ON_TARGET_WITHOUT_REPORT: &str = "no report received, but the agent runs the target version";

/// The one door: the member after `event`, or why `event` is not allowed now. Pure.
pub fn transition(m: &Member, event: MemberEvent) -> Result<Member, Refusal> {
    use MemberState::*;
    let refuse = Refusal { state: m.state, event: event.name() };
    let mut next = m.clone();
    let mut finish = |state, reason: Option<String>, at| {
        (next.state, next.reason, next.finished_at) = (state, reason, Some(at));
    };
    match (m.state, event) {
        (Pending, MemberEvent::Ask { wave, callback, at }) => {
            (next.state, next.wave, next.callback, next.asked_at) = (InProgress, Some(wave), Some(callback), Some(at));
        }
        (InProgress, MemberEvent::Unask { why }) => {
            (next.state, next.wave, next.callback, next.asked_at) = (Pending, None, None, None);
            next.reason = Some(why);
        }
        (InProgress, MemberEvent::Resend { why, at }) => (next.asked_at, next.reason) = (Some(at), Some(why)),
        (InProgress | TimedOut, MemberEvent::Answer { result: Ok(()), at }) => finish(Succeeded, None, at),
        (InProgress | TimedOut, MemberEvent::Answer { result: Err(text), at }) => finish(Failed, Some(text), at),
        (InProgress, MemberEvent::TimeOut { on_target: true, at }) => {
            finish(Succeeded, Some(ON_TARGET_WITHOUT_REPORT.into()), at)
        }
        (InProgress, MemberEvent::TimeOut { on_target: false, at }) => finish(TimedOut, Some("Timeout".into()), at),
        (Pending, MemberEvent::Expire { at }) => finish(Expired, Some("offline until the deadline".into()), at),
        (Pending, MemberEvent::Skip { why, at }) => finish(Skipped, Some(why), at),
        _ => return Err(refuse),
    }
    Ok(next)
}

/// One event of each kind, for deriving what the table allows.
fn sample_events() -> Vec<MemberEvent> {
    vec![
        MemberEvent::Ask { wave: 0, callback: Callback::from("c"), at: 0 },
        MemberEvent::Unask { why: "w".into() },
        MemberEvent::Resend { why: "w".into(), at: 0 },
        MemberEvent::Answer { result: Ok(()), at: 0 },
        MemberEvent::Answer { result: Err("e".into()), at: 0 },
        MemberEvent::TimeOut { on_target: true, at: 0 },
        MemberEvent::TimeOut { on_target: false, at: 0 },
        MemberEvent::Expire { at: 0 },
        MemberEvent::Skip { why: "w".into(), at: 0 },
    ]
}

/// Whether some event leads a member in `from` to `to`.
fn leads(from: MemberState, to: MemberState) -> bool {
    let m = Member { state: from, ..Member::new("a", "a", false, 0) };
    sample_events().into_iter().any(|e| transition(&m, e).is_ok_and(|n| n.state == to))
}

/// The other states from which some event leads a member to `target`: the only states a write of
/// a member in `target` may replace in the store (none for `already`, which only a creation
/// makes). A claim (an ask) is a write of `in-progress` from these.
pub fn sources_of(target: MemberState) -> Vec<MemberState> {
    MemberState::ALL.into_iter().filter(|&from| from != target && leads(from, target)).collect()
}

/// Whether a member may be written again in the state it is stored in: only `in-progress`, whose
/// request is sent again, and then only with the callback it was asked with.
pub fn renewable(state: MemberState) -> bool {
    leads(state, state)
}

/// How many members are in each state (every state present, zero or more).
pub type Counts = HashMap<MemberState, usize>;

/// Counts the members by state: in an array, then as a map (a rollout's status, asked for while
/// it runs, counts every member under the engine's lock: a hash per member was most of it).
pub fn counts(members: &[Member]) -> Counts {
    let mut n = [0usize; MemberState::ALL.len()];
    for m in members {
        n[m.state as usize] += 1;
    }
    MemberState::ALL.iter().map(|&s| (s, n[s as usize])).collect()
}

#[cfg(test)]
#[path = "member_tests.rs"]
mod tests;
