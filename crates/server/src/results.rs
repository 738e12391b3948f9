//! Upgrade results per agent, as the agents reported them: every `$upgrade` answer (from the REST
//! API or the web page) is recorded here, counted in the metrics and pushed to the open pages.
//! The history is kept by the store ([`super::store::results`]), on either backend; the live
//! events go to the pages open on this node.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

pub use super::store::{Outcome, UpgradeResult};
use super::store::{StatusRow, Store};
use super::AppState;

/// What the open pages are told, as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    /// An upgrade answer, with the agent's last known status after it.
    Result { result: UpgradeResult, status: String, version: String },
}

/// Records upgrade results in the store and tells the pages open on this node as they arrive.
pub struct Results {
    store: Arc<dyn Store>,
    events: broadcast::Sender<Event>,
}

impl Results {
    pub fn new(store: Arc<dyn Store>) -> Results {
        Results { store, events: broadcast::channel(1024).0 }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// An upgrade request on its way: what was asked, of whom, from which version.
pub struct Started {
    agent_id: String,
    requested: Option<String>,
    force: bool,
    from: String,
}

impl Started {
    pub async fn new(app: &AppState, agent_id: &str, requested: Option<&str>, force: bool) -> Started {
        let from = agent_status(app, agent_id).await.map(|s| s.version).unwrap_or_else(|| "unknown".into());
        Started { agent_id: agent_id.to_string(), requested: requested.map(str::to_owned), force, from }
    }

    /// Records the answer (`status`, `OperationOutcome`), counts it, and tells the open pages.
    pub async fn finish(self, app: &AppState, status: StatusCode, outcome: &Value) {
        let text = outcome["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
        let result = UpgradeResult {
            agent_id: self.agent_id,
            at: edge_agent_base::time::now_iso(),
            requested: self.requested,
            force: self.force,
            from: self.from,
            outcome: Outcome::classify(status, &text),
            text,
        };
        app.metrics.upgrade_result(result.outcome);
        if let Err(e) = app.results.store.insert_result(&result).await {
            tracing::error!(agent_id = result.agent_id, "cannot record upgrade result: {e}");
        }
        let now = agent_status(app, &result.agent_id).await;
        let (status, version) = now.map(|s| (s.status, s.version)).unwrap_or(("unknown".into(), "unknown".into()));
        let _ = app.results.events.send(Event::Result { result, status, version });
    }
}

/// The agent's status as `$status` tells it; `None` when unknown or unreadable (logged).
pub async fn agent_status(app: &AppState, agent_id: &str) -> Option<StatusRow> {
    match app.hub.statuses(&[agent_id.to_string()]).await {
        Ok(mut s) => s.pop().flatten(),
        Err(e) => {
            tracing::warn!(agent_id, "cannot read the agent's status: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_answers() {
        let table = [
            (200, "All OK", Outcome::Succeeded),
            (400, "Timeout", Outcome::TimedOut),
            (400, "Agent not connected", Outcome::Failed),
            (400, "Failed to upgrade to version 1.2.0. Agent still running with version 1.1.0", Outcome::RolledBack),
            (400, "Rolled back: rolled back by the operator (agent rollback)", Outcome::RolledBack),
            (400, "Error during upgrading to version 'v9.9.9'. '9.9.9' is not a valid version", Outcome::Failed),
        ];
        for (code, text, want) in table {
            assert_eq!(Outcome::classify(StatusCode::from_u16(code).unwrap(), text), want, "{text}");
        }
    }
}
