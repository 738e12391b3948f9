//! The server's metrics in the Prometheus text format (`prometheus-client` writes it): agents by
//! state and by version, members of the open rollouts by state, upgrade results by outcome, HTTP
//! request durations by route, agent WebSocket connections and messages, and the process's
//! resident memory and open file descriptors. Counted here as things happen; read fresh and
//! served at `/metrics` by `operator::metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
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
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    agents: Family<StateLabel, Gauge>,
    versions: Family<VersionLabel, Gauge>,
    members: Family<StateLabel, Gauge>,
    upgrades: Family<OutcomeLabel, Counter>,
    http: Durations,
    ws_connections: Gauge,
    ws_messages: Family<DirectionLabel, Counter>,
    rss: Gauge,
    fds: Gauge,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
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
            http: Durations::new_with_constructor(duration_histogram),
            ws_connections: Gauge::default(),
            ws_messages: Family::default(),
            rss: Gauge::default(),
            fds: Gauge::default(),
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
        for o in Outcome::ALL {
            let _ = m.upgrades.get_or_create(&OutcomeLabel { outcome: o.as_str() });
        }
        for d in ["received", "sent"] {
            let _ = m.ws_messages.get_or_create(&DirectionLabel { direction: d });
        }
        Metrics { registry, ..m }
    }

    pub fn upgrade_result(&self, outcome: Outcome) {
        self.upgrades.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
    }

    /// An agent socket opened; the connection count drops when the guard does.
    pub fn ws_open(&self) -> WsGuard<'_> {
        self.ws_connections.inc();
        WsGuard(&self.ws_connections)
    }

    /// A text message received on an agent socket.
    pub fn ws_received(&self) {
        self.ws_messages.get_or_create(&DirectionLabel { direction: "received" }).inc();
    }

    /// `n` messages sent on an agent socket.
    pub fn ws_sent(&self, n: u64) {
        self.ws_messages.get_or_create(&DirectionLabel { direction: "sent" }).inc_by(n);
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

/// Middleware: times every request by its route pattern (not its path, so ids do not explode the
/// label set); unmatched requests count as `unmatched`.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = route.unwrap_or_else(|| "unmatched".into());
    metrics.http.get_or_create(&RouteLabels { method, route }).observe(start.elapsed().as_secs_f64());
    resp
}
