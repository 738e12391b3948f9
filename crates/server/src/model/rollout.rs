//! What a rollout is: its states and the one [`transition`] between them, the events it tells,
//! and an agent's last result. Plain data and pure functions, shared by the planner, the store,
//! the driver and the API. Its members are [`super::member`]; how it proceeds is
//! [`super::strategy`].

use semver::Version;
use serde::{Deserialize, Serialize};

use super::member::{counts, Counts, Member, MemberState};
use super::strategy::Strategy;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Active,
    Paused,
    /// Its abort criteria were met; `reason` says which.
    Halted,
    Cancelled,
    Completed,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Active,
        RolloutState::Paused,
        RolloutState::Halted,
        RolloutState::Cancelled,
        RolloutState::Completed,
    ];

    /// Active or paused: it still holds its members (a second rollout may not take them).
    pub fn is_open(self) -> bool {
        matches!(self, RolloutState::Active | RolloutState::Paused)
    }

    /// The stored and shown text: `active`, `paused`, `halted`, `cancelled`, `completed`.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Active => "active",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Cancelled => "cancelled",
            RolloutState::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// What changes a rollout's state: an operator (pause, resume, cancel) or its own planner (halt,
/// complete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
    /// Its abort criteria were met.
    Halt,
    /// Every member is in a final state.
    Complete,
}

/// An action that is not allowed in the rollout's state; `Display` names both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is {}: only {} rollout can be {}", state.name(), allowed(*action), action.done())]
pub struct Refusal {
    pub state: RolloutState,
    pub action: Action,
}

fn allowed(action: Action) -> &'static str {
    match action {
        Action::Pause | Action::Halt | Action::Complete => "an active",
        Action::Resume => "a paused",
        Action::Cancel => "an active or paused",
    }
}

impl Action {
    /// The steps an operator may take, by [`Action::name`].
    pub const BY_OPERATORS: [Action; 3] = [Action::Pause, Action::Resume, Action::Cancel];

    /// Its name: the operation's (`$pause`, `/pause`) and, after "rollout-", its audit subtype's.
    pub fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Halt => "halt",
            Action::Complete => "complete",
        }
    }

    /// An operator's step by its name (without the operation's `$`).
    pub fn by_operator(name: &str) -> Option<Action> {
        Action::BY_OPERATORS.into_iter().find(|a| a.name() == name)
    }

    /// The audit event's subtype of a step taken ("rollout-pause").
    pub fn audit_subtype(self) -> &'static str {
        match self {
            Action::Pause => "rollout-pause",
            Action::Resume => "rollout-resume",
            Action::Cancel => "rollout-cancel",
            Action::Halt => "rollout-halt",
            Action::Complete => "rollout-complete",
        }
    }

    /// What the action did to a rollout, in words ("paused").
    pub fn done(self) -> &'static str {
        match self {
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Cancel => "cancelled",
            Action::Halt => "halted",
            Action::Complete => "completed",
        }
    }
}

/// The one door of a rollout's state: where `action` leads from `state`, or why it may not.
pub fn transition(state: RolloutState, action: Action) -> Result<RolloutState, Refusal> {
    use RolloutState::*;
    match (action, state) {
        (Action::Pause, Active) => Ok(Paused),
        (Action::Resume, Paused) => Ok(Active),
        (Action::Cancel, Active | Paused) => Ok(Cancelled),
        (Action::Halt, Active) => Ok(Halted),
        (Action::Complete, Active) => Ok(Completed),
        _ => Err(Refusal { state, action }),
    }
}

/// Something that happened, for the status page and `rollout show`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at: String,
    pub text: String,
}

/// A rollout, without its members.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: String,
    /// The version every member is to run.
    pub version: Version,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub strategy: Strategy,
    /// The search that chose the members, as given.
    pub selection: String,
    pub created_at: i64,
    /// The wave members are being asked in now.
    pub wave: u32,
    pub events: Vec<Event>,
}

/// The most events a rollout keeps: each save writes them all, and a rollout that re-queues its
/// members for days (a cluster bus that comes and goes) would otherwise tell it without end.
pub const MAX_EVENTS: usize = 200;
/// The first events, kept whatever follows: how the rollout began (its canary, its first waves).
const FIRST_EVENTS: usize = 10;
/// What stands after the first events once some were left out: `"{n}{LEFT_OUT}"`.
const LEFT_OUT: &str = " events left out here: the first and the latest are kept";

impl Rollout {
    /// The rollout as an audit event's entity: its id, and the version it rolls out.
    pub fn audit_ref(&self) -> crate::model::audit::Ref {
        crate::model::audit::Ref {
            reference: format!("Rollout/{}", self.id),
            display: Some(format!("to {}", self.version)),
        }
    }

    /// When offline members expire.
    pub fn deadline(&self) -> i64 {
        self.created_at.saturating_add(self.strategy.offline_deadline.as_millis() as i64)
    }

    /// Tells an event, at `at`. Past [`MAX_EVENTS`], the oldest after the first few are left out,
    /// and one event in their place says how many, at the time of the last of them.
    pub fn record(&mut self, at: String, text: String) {
        let events = &mut self.events;
        events.push(Event { at, text });
        let over = events.len().saturating_sub(MAX_EVENTS);
        if over == 0 {
            return;
        }
        // The line after the first events says how many were left out; without one yet, it takes
        // the place of the event there, which it counts too. (A rollout stored before the bound
        // may be far over it: what is left out goes in one pass.)
        let before = events[FIRST_EVENTS].text.strip_suffix(LEFT_OUT).and_then(|n| n.parse::<usize>().ok());
        let n = before.unwrap_or(1) + over;
        let at = events.drain(FIRST_EVENTS + 1..FIRST_EVENTS + 1 + over).next_back().map(|e| e.at).unwrap_or_default();
        events[FIRST_EVENTS] = Event { at, text: format!("{n}{LEFT_OUT}") };
    }
}

/// What a rollout's status shows: the rollout, how many of its members are in each state, and the
/// members that failed. Read from the store without its other members, however many it has.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub rollout: Rollout,
    pub counts: Counts,
    /// Its members that failed or timed out, in the order they were chosen: the first
    /// [`MAX_FAILURES_SHOWN`] (`counts` says how many there are).
    pub failures: Vec<Member>,
}

/// The most failed members a rollout's status lists: a status is read every second by a page or a
/// script while the rollout runs, and a rollout of 100,000 offline agents that time out would list
/// them all each time.
pub const MAX_FAILURES_SHOWN: usize = 100;

impl Summary {
    /// The summary of `rollout` with all its `members` at hand.
    pub fn of(rollout: &Rollout, members: &[Member]) -> Summary {
        let failures = members.iter().filter(|m| m.state.is_failure()).take(MAX_FAILURES_SHOWN).cloned().collect();
        Summary { rollout: rollout.clone(), counts: counts(members), failures }
    }

    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Members in a final state.
    pub fn done(&self) -> usize {
        self.counts.iter().filter(|(s, _)| s.is_final()).map(|(_, n)| n).sum()
    }
}

/// The last rollout result of an agent, for `$status` and search results.
#[derive(Debug, Clone, PartialEq)]
pub struct LastResult {
    pub rollout_id: String,
    pub version: Version,
    pub state: MemberState,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_past_the_most_kept_leave_out_the_oldest_after_the_first_few_and_say_how_many() {
        let mut r = Rollout {
            id: "r".into(),
            version: Version::new(2, 0, 0),
            state: RolloutState::Active,
            reason: None,
            strategy: Strategy::default(),
            selection: String::new(),
            created_at: 0,
            wave: 0,
            events: vec![],
        };
        for n in 0..MAX_EVENTS {
            r.record(format!("at {n}"), format!("event {n}"));
        }
        assert_eq!(r.events.len(), MAX_EVENTS, "none left out up to the most");
        let told = MAX_EVENTS * 5 + 3;
        for n in MAX_EVENTS..told {
            r.record(format!("at {n}"), format!("event {n}"));
        }
        let texts: Vec<&str> = r.events.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts.len(), MAX_EVENTS);
        let first: Vec<String> = (0..FIRST_EVENTS).map(|n| format!("event {n}")).collect();
        assert_eq!(texts[..FIRST_EVENTS], first.iter().map(String::as_str).collect::<Vec<_>>()[..]);
        let left_out = told - (MAX_EVENTS - 1);
        assert_eq!(texts[FIRST_EVENTS], format!("{left_out}{LEFT_OUT}"));
        assert_eq!(texts[FIRST_EVENTS + 1], format!("event {}", FIRST_EVENTS + left_out));
        assert_eq!(*texts.last().unwrap(), format!("event {}", told - 1));
        // The line in their place has the time of the last it stands for: the times stay in order.
        assert_eq!(r.events[FIRST_EVENTS].at, format!("at {}", FIRST_EVENTS + left_out - 1));
        // A rollout stored before the bound, far over it, is brought under it at its next event.
        r.events = (0..1_000).map(|n| Event { at: format!("at {n}"), text: format!("old {n}") }).collect();
        r.record("now".into(), "new".into());
        assert_eq!(r.events.len(), MAX_EVENTS);
        assert_eq!(r.events[FIRST_EVENTS].text, format!("{}{LEFT_OUT}", 1_001 - (MAX_EVENTS - 1)));
        assert_eq!(
            (r.events[FIRST_EVENTS - 1].text.as_str(), r.events.last().unwrap().text.as_str()),
            ("old 9", "new")
        );
    }

    #[test]
    fn an_operator_steps_by_name_and_each_step_has_its_own_audit_subtype() {
        use Action::*;
        for a in Action::BY_OPERATORS {
            assert_eq!(Action::by_operator(a.name()), Some(a));
        }
        for name in ["halt", "complete", "$pause", "Pause", "", "pause "] {
            assert_eq!(Action::by_operator(name), None, "{name:?}");
        }
        for a in [Pause, Resume, Cancel, Halt, Complete] {
            assert_eq!(a.audit_subtype(), format!("rollout-{}", a.name()));
        }
    }

    #[test]
    fn every_state_and_action() {
        use Action::*;
        use RolloutState::*;
        let x = None;
        // Rows: states in ALL order; columns: pause, resume, cancel, halt, complete.
        let table: [[Option<RolloutState>; 5]; 5] = [
            [Some(Paused), x, Some(Cancelled), Some(Halted), Some(Completed)], // Active
            [x, Some(Active), Some(Cancelled), x, x],                          // Paused
            [x, x, x, x, x],                                                   // Halted
            [x, x, x, x, x],                                                   // Cancelled
            [x, x, x, x, x],                                                   // Completed
        ];
        for (state, row) in RolloutState::ALL.into_iter().zip(table) {
            for (action, want) in [Pause, Resume, Cancel, Halt, Complete].into_iter().zip(row) {
                assert_eq!(transition(state, action).ok(), want, "{state:?} {action:?}");
            }
        }
        let e = transition(Completed, Resume).unwrap_err().to_string();
        assert_eq!(e, "is completed: only a paused rollout can be resumed");
        for s in RolloutState::ALL {
            assert_eq!(RolloutState::parse(s.name()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.name(), "the serde name is the stored name");
        }
    }
}
