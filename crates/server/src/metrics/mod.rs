//! The server's metrics in the Prometheus text format (`prometheus-client` writes it): agents by
//! state and by version, members of the open rollouts by state, the update policy's agents by
//! group and state and its evaluations, upgrade results by outcome, HTTP request durations by
//! method and route ([`http`]), agent WebSocket connections and messages, the limits as they bite
//! and the open connections ([`edge`]), and the process's resident memory and open file
//! descriptors. Counted here as things happen; read fresh and served at `/metrics` by
//! `operator::metrics`. Every label value comes from a fixed set (the policy's group names are
//! capped in number and length).

pub mod edge;
pub mod http;

pub use edge::{AuthFailure, EdgeMetrics, Limit};
pub use http::track;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::model::fleet::FleetCounts;
use crate::model::member::{Counts, MemberState};
use crate::model::result::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

pub struct Metrics {
    registry: Registry,
    agents: Family<StateLabel, Gauge>,
    versions: Family<VersionLabel, Gauge>,
    members: Family<StateLabel, Gauge>,
    upgrades: Family<OutcomeLabel, Counter>,
    http: http::Durations,
    ws_connections: Gauge,
    ws_messages: Family<DirectionLabel, Counter>,
    /// The family's two counters, held: a socket's every message counts without a lookup.
    ws_received: Counter,
    ws_sent: Counter,
    rss: Gauge,
    fds: Gauge,
    policy_agents: Family<GroupLabels, Gauge>,
    policy_groups: Family<GroupLabels, Gauge>,
    policy_evaluations: Counter,
    policy_durations: Histogram,
    /// Agents the status sweep stored as disconnected ([`crate::conn::sweep`]).
    swept: Counter,
    /// The limits as they bite, failed authentications, open connections.
    pub edge: EdgeMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            agents: Family::default(),
            versions: Family::default(),
            members: Family::default(),
            upgrades: Family::default(),
            http: http::durations(),
            ws_connections: Gauge::default(),
            ws_messages: Family::default(),
            ws_received: Counter::default(),
            ws_sent: Counter::default(),
            rss: Gauge::default(),
            fds: Gauge::default(),
            policy_agents: Family::default(),
            policy_groups: Family::default(),
            policy_evaluations: Counter::default(),
            // 1 ms to about 4 s.
            policy_durations: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            swept: Counter::default(),
            edge: EdgeMetrics::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("agent_server_agents", "Agents by connection state", m.agents.clone());
        r.register("agent_server_agents_by_version", "Agents by last reported version", m.versions.clone());
        r.register(
            "agent_server_rollout_members",
            "Members of the open (active or paused) rollouts, by state",
            m.members.clone(),
        );
        r.register("agent_server_upgrade_results", "Upgrade results by outcome", m.upgrades.clone());
        r.register(
            "agent_server_http_request_duration_seconds",
            "HTTP request durations by route, until the answer's head",
            m.http.clone(),
        );
        r.register(
            "agent_server_websocket_connections",
            "Live agent WebSocket connections (after the handshake)",
            m.ws_connections.clone(),
        );
        r.register("agent_server_websocket_messages", "Agent WebSocket messages", m.ws_messages.clone());
        r.register("process_resident_memory_bytes", "Resident memory size in bytes", m.rss.clone());
        r.register("process_open_fds", "Number of open file descriptors", m.fds.clone());
        r.register(
            "agent_server_policy_agents",
            "Agents of the update policy, by group and state",
            m.policy_agents.clone(),
        );
        r.register(
            "agent_server_policy_groups",
            "The update policy's groups: 1 for each group's state",
            m.policy_groups.clone(),
        );
        r.register(
            "agent_server_policy_evaluations",
            "Evaluations of the update policy by the node that drives it",
            m.policy_evaluations.clone(),
        );
        r.register(
            "agent_server_policy_evaluation_duration_seconds",
            "How long each evaluation of the update policy took, gathering, deciding and acting",
            m.policy_durations.clone(),
        );
        r.register(
            "agent_server_status_sweep_disconnected",
            "Agents stored as connected that no node held at two sweeps in a row, stored as disconnected by this node",
            m.swept.clone(),
        );
        m.edge.register(r);
        for o in Outcome::ALL {
            let _ = m.upgrades.get_or_create(&OutcomeLabel { outcome: o.as_str() });
        }
        let ws_received = m.ws_messages.get_or_create(&DirectionLabel { direction: "received" }).clone();
        let ws_sent = m.ws_messages.get_or_create(&DirectionLabel { direction: "sent" }).clone();
        Metrics { registry, ws_received, ws_sent, ..m }
    }

    pub fn upgrade_result(&self, outcome: Outcome) {
        self.upgrades.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
    }

    /// The update policy as of its latest evaluation: agents by group and state, and each group's
    /// state. Group names come from the policy (at most 20, each at most 40 characters), states
    /// from a fixed list: the label set stays small.
    pub fn policy(&self, agents: &[(String, &'static str, usize)], groups: &[(String, &'static str)]) {
        self.policy_agents.clear();
        for (group, state, n) in agents {
            self.policy_agents.get_or_create(&GroupLabels { group: group.clone(), state }).set(*n as i64);
        }
        self.policy_groups.clear();
        for (group, state) in groups {
            self.policy_groups.get_or_create(&GroupLabels { group: group.clone(), state }).set(1);
        }
    }

    /// An evaluation that drove the update policy took `took` (gathering, deciding and acting).
    pub fn policy_evaluated(&self, took: std::time::Duration) {
        self.policy_evaluations.inc();
        self.policy_durations.observe(took.as_secs_f64());
    }

    /// The status sweep stored `n` agents as disconnected.
    pub fn swept(&self, n: u64) {
        self.swept.inc_by(n);
    }

    /// An agent socket opened; the connection count drops when the guard does.
    pub fn ws_open(&self) -> WsGuard<'_> {
        self.ws_connections.inc();
        WsGuard(&self.ws_connections)
    }

    /// A text message received on an agent socket.
    pub fn ws_received(&self) {
        self.ws_received.inc();
    }

    /// `n` messages sent on an agent socket.
    pub fn ws_sent(&self, n: u64) {
        self.ws_sent.inc_by(n);
    }

    /// The exposition: the counters as they stand, the gauges set from `fleet` (agents by state
    /// and version), `members` (of the open rollouts, by state) and the process.
    pub fn render(&self, fleet: &FleetCounts, members: &Counts) -> String {
        self.agents.clear();
        for (state, n) in &fleet.states {
            self.agents.get_or_create(&StateLabel { state: state.clone() }).set(*n as i64);
        }
        self.versions.clear();
        for (version, n) in &fleet.versions {
            self.versions.get_or_create(&VersionLabel { version: version.clone() }).set(*n as i64);
        }
        for state in MemberState::ALL {
            let n = members.get(&state).copied().unwrap_or(0);
            self.members.get_or_create(&StateLabel { state: state.name().to_string() }).set(n as i64);
        }
        let (rss, fds) = process_figures();
        self.rss.set(rss);
        self.fds.set(fds);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

pub struct WsGuard<'a>(&'a Gauge);

impl Drop for WsGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Resident memory (bytes) and open file descriptors of this process, from `/proc`.
fn process_figures() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0);
    (rss_kib * 1024, fds)
}
