//! What a rollout is: its states and its members' states, its strategy, and the events it tells.
//! Plain data, shared by the planner, the store, the driver and the API.

use std::time::Duration;

use edge_agent_wire::Callback;
use serde::{Deserialize, Serialize};

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
    /// Active or paused: it still holds its members (a second rollout may not take them).
    pub fn is_open(self) -> bool {
        matches!(self, RolloutState::Active | RolloutState::Paused)
    }
}

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
    /// No answer within the per-agent timeout.
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

/// A daily time range in a named time zone (`02:00`–`04:00` in `Europe/Berlin`); one that ends
/// before it starts runs over midnight.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: jiff::civil::Time,
    pub end: jiff::civil::Time,
    pub zone: jiff::tz::TimeZone,
    pub zone_name: String,
}

impl Window {
    /// Whether `now` falls inside the window, on the wall clock of its zone.
    pub fn contains(&self, now: jiff::Timestamp) -> bool {
        let t = now.to_zoned_datetime(self.zone.clone()).time();
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    pub fn describe(&self) -> String {
        format!("{}-{} {}", self.start.strftime("%H:%M"), self.end.strftime("%H:%M"), self.zone_name)
    }
}

/// How a rollout proceeds; each value validated, each with a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    /// Agents asked alone first; any failure among them halts the rollout.
    pub canary: usize,
    /// Each wave is this many times the one before (waves are `canary × growth^n`).
    pub growth: f64,
    /// At most this many members upgrading at once.
    pub max_in_flight: usize,
    /// Time between the end of a wave and the start of the next.
    pub bake: Duration,
    /// Halt when more than this many members have failed.
    pub max_failures: Option<usize>,
    /// Halt when more than this percentage of finished members have failed...
    pub max_failure_percent: f64,
    /// ...once at least this many have finished.
    pub min_finished: usize,
    /// Per-agent wait for an answer, as for `$upgrade`.
    pub timeout: Duration,
    /// Members still offline this long after creation count as expired.
    pub offline_deadline: Duration,
    /// Ask members only inside this daily window.
    pub window: Option<Window>,
    /// Passed to each agent's upgrade request.
    pub force: bool,
}

impl Default for Strategy {
    fn default() -> Strategy {
        Strategy {
            canary: 1,
            growth: 2.0,
            max_in_flight: 10,
            bake: Duration::ZERO,
            max_failures: None,
            max_failure_percent: 10.0,
            min_finished: 1,
            timeout: Duration::from_secs(45),
            offline_deadline: Duration::from_secs(24 * 3600),
            window: None,
            force: false,
        }
    }
}

impl Strategy {
    /// How many members wave `n` holds: the canary, then `canary × growth^n`.
    pub fn wave_size(&self, n: u32) -> usize {
        let size = (self.canary as f64) * self.growth.powi(n.min(64) as i32);
        size.ceil().min(1e9) as usize
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
    pub version: String,
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

impl Rollout {
    /// When offline members expire.
    pub fn deadline(&self) -> i64 {
        self.created_at.saturating_add(self.strategy.offline_deadline.as_millis() as i64)
    }
}

/// The last rollout result of an agent, for `$status` and search results.
#[derive(Debug, Clone, PartialEq)]
pub struct LastResult {
    pub rollout_id: String,
    pub version: String,
    pub state: MemberState,
    pub reason: Option<String>,
}
