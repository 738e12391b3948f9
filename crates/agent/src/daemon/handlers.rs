//! Answers to the server's requests (protocol.md §2). Every request gets a reply carrying its
//! callback: a response, or an `agent:error` that says why not.

use edge_agent_wire::AgentStatus;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::shared::Shared;
use crate::state_dir::StateDir;
use crate::upgrade::store::Store;
use edge_agent_base::build_info::{version_str, TARGET};
use edge_agent_wire::message::{no_channels_error, Envelope, Message};

const DEFAULT_LOG_LIMIT: usize = 100;

/// The reply to one incoming message, if it needs one.
pub fn handle(shared: &Arc<Shared>, env: Envelope) -> Option<Envelope> {
    let Envelope { msg, callback } = env;
    let reply = match msg {
        Message::HeartbeatRequest {} => Message::HeartbeatResponse { version: version_str().into() },
        Message::HeartbeatResponse { .. } | Message::ConnectResponse {} => return None,
        Message::Error { body } => {
            tracing::warn!(callback = callback.as_ref().map_or("", |c| c.as_str()), "server reported an error: {body}");
            return None;
        }
        Message::UpgradeRequest { version, force } => {
            return super::upgrades::request(shared, version, force.unwrap_or(false), callback);
        }
        Message::ReloadConfigRequest {} => match shared.reload() {
            Ok(()) => {
                tracing::info!("configuration reloaded from {}", shared.source.path.display());
                Message::ReloadConfigResponse { status_code: 200 }
            }
            Err(e) => {
                tracing::warn!("configuration not reloaded, the running one stays: {e}");
                Message::error(format!("Failed to reload config: {e}"))
            }
        },
        Message::LogsRequest { limit } => {
            Message::LogsResponse { status_code: 200, logs: shared.logs.recent(limit.unwrap_or(DEFAULT_LOG_LIMIT)) }
        }
        Message::StatsRequest {} => Message::StatsResponse { status_code: 200, stats: stats(shared) },
        Message::TransmitRequest { .. } => no_channels_error(),
        other @ (Message::ConnectRequest { .. }
        | Message::UpgradeResponse { .. }
        | Message::ReloadConfigResponse { .. }
        | Message::LogsResponse { .. }
        | Message::StatsResponse { .. }
        | Message::TransmitResponse { .. }) => {
            let ty = serde_json::to_value(&other)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Message::error(format!("Unexpected message type for an agent: {ty}"))
        }
    };
    Some(reply.reply_to(callback))
}

/// Runtime figures for `agent:stats:response`.
pub fn stats(shared: &Shared) -> Value {
    let link = shared.link.lock().unwrap().clone();
    let trust = shared.config().trust.clone();
    json!({
        "version": version_str(),
        "target": TARGET,
        "pid": std::process::id(),
        "uptimeSeconds": shared.started.elapsed().as_secs(),
        "reconnects": shared.reconnects.load(Ordering::Relaxed),
        "connection": if link.connected { AgentStatus::Connected } else { AgentStatus::Disconnected }.as_str(),
        "connectionSince": edge_agent_base::time::iso8601(link.since),
        "residentBytes": resident_bytes(),
        "upgrades": upgrades(shared),
        "releases": trust.label(),
        "warnings": trust.warning().into_iter().collect::<Vec<_>>(),
    })
}

/// The recent upgrade results and whether one is in flight.
fn upgrades(shared: &Shared) -> Value {
    let store = Store::new(StateDir::new(&shared.config().state_dir));
    let recent: Vec<_> = store.history().into_iter().rev().take(5).collect();
    json!({"inProgress": shared.runner.in_progress(), "recent": recent})
}

/// This process's resident memory (Linux), for stats.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().ok().map(|k| k * 1024)
}
