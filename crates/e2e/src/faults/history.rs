//! The recorded history of a fault run: one JSON object a line, each with `t`, milliseconds since
//! the run started. What the workload did and saw is written as it happens; what only the end can
//! tell (the store's rows, each real agent's binary, how long every node took to agree) is written
//! after the faults stop. The checker ([`super::check`]) reads nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "kebab-case")]
pub enum Event {
    /// The run's shape and the bounds the checker holds it to.
    Setup {
        seed: u64,
        nodes: usize,
        /// The two versions a real agent may run.
        builds: Vec<String>,
        presence_ttl_ms: u64,
        lease_ms: u64,
        /// Slack on every bound, for a loaded machine.
        margin_ms: u64,
    },
    /// A fault injected (`phase` start) or healed (`phase` end).
    Fault { fault: String, phase: Phase },
    /// A client's call: `op` is `upgrade`, `bulk-upgrade` or `status`; `agents` those it names.
    Invoke { id: u64, op: String, node: String, agents: Vec<String>, timeout_ms: u64 },
    /// Its end: the HTTP status, or none when no answer came (`text` says what happened).
    Complete { id: u64, status: Option<u16>, text: String },
    /// An agent received an upgrade request with this callback.
    Asked { agent: String, callback: String },
    /// A rollout was created over these agents.
    Rollout { id: String, agents: Vec<String> },
    /// A rollout as a node showed it.
    RolloutState { id: String, state: String, counts: BTreeMap<String, u64> },
    /// A new holder of the rollout lease, as the store says: the node (index into the nodes), in
    /// a run of it that did not hold it just before (a restarted node is a new holder).
    Leader { node: usize },
    /// What the store held at one moment while the faults ran: rollouts, finished members, and
    /// audit events (a sample of ids).
    Persisted { rollouts: Vec<String>, finished: Vec<Finished>, audit: Vec<String> },
    /// The last fault has healed.
    FaultsOver,
    /// Every agent is connected again on some node, at its real version.
    Reconnected,
    /// Node `node` showed every agent at its real version, `ms` after [`Event::Reconnected`]
    /// (none: it never did within the run's limit).
    Converged { node: usize, ms: Option<u64> },
    /// A real agent at the end: its process alive, and the version whose build its installed
    /// binary is (none: a binary of neither build).
    RealAgent { agent: String, alive: bool, binary: Option<String> },
    /// The store's rows at the end.
    Stored { rollouts: Vec<String>, members: Vec<Member>, audit: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Start,
    End,
}

/// A rollout member that had reached a final state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finished {
    pub rollout: String,
    pub agent: String,
    pub state: String,
}

/// A rollout member as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub rollout: String,
    pub agent: String,
    pub state: String,
    pub callback: Option<String>,
    /// Why it failed, or was skipped, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub t: u64,
    #[serde(flatten)]
    pub ev: Event,
}

/// The history being written: shared by every task of the run.
#[derive(Clone)]
pub struct History {
    start: Instant,
    out: Arc<Mutex<std::fs::File>>,
}

impl History {
    pub fn create(path: &Path) -> History {
        let out = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        History { start: Instant::now(), out: Arc::new(Mutex::new(out)) }
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn record(&self, ev: Event) {
        let line = serde_json::to_string(&Line { t: self.now(), ev }).unwrap();
        let mut out = self.out.lock().unwrap();
        writeln!(out, "{line}").unwrap();
    }
}

/// Reads a history file; an unreadable line is an error naming it.
pub fn read(path: &Path) -> Result<Vec<Line>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}
