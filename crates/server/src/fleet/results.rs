//! Upgrade results per agent, as the agents reported them: every `$upgrade` answer (from the REST
//! API or the web page) is recorded here, counted in the metrics and pushed to the open pages.
//! The history is kept by the store (`store::results`), on either backend; the live events go to
//! the pages open on this node.

use std::sync::Arc;
use std::time::Duration;

use edge_agent_base::time::now_iso;
use edge_agent_wire::Target;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::conn::hub::Hub;
use crate::metrics::Metrics;
use crate::model::agent::StatusRow;
use crate::model::result::{Outcome, UpgradeResult};
use crate::store::Store;

/// What the open pages are told, as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    /// An upgrade answer, with the agent's last known status after it and the time of that
    /// status (a page shows it unless it already shows a newer one: the agent's new version may
    /// have come, as a status change, just before this was sent with the one read before it).
    Result { result: UpgradeResult, status: String, version: String, since: String },
}

/// Records upgrade results in the store, counts them, and tells the pages open on this node as
/// they arrive.
pub struct Results {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
}

/// An upgrade request on its way: what was asked, of whom, from which version.
pub struct Started {
    agent_id: String,
    requested: Target,
    force: bool,
    from: String,
}

impl Results {
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Results {
        Results { store, hub, metrics, events: broadcast::channel(1024).0 }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// An upgrade of `agent_id` to `requested` starts: from the version the agent runs now, as
    /// read within `limit` ("unknown" when the bus does not say by then: the caller's time is not
    /// spent on the record).
    pub async fn started(&self, agent_id: &str, requested: &Target, force: bool, limit: Duration) -> Started {
        let read = tokio::time::timeout(limit, self.agent_status(agent_id)).await.ok().flatten();
        let from = read.map(|s| s.version).unwrap_or_else(|| "unknown".into());
        Started { agent_id: agent_id.to_string(), requested: requested.clone(), force, from }
    }

    /// Records the answer (whether it was a success, its `OperationOutcome`), counts it, and
    /// tells the open pages.
    pub async fn finish(&self, started: Started, success: bool, outcome: &Value) {
        let text = outcome["issue"][0]["details"]["text"].as_str().unwrap_or_default().to_string();
        let result = UpgradeResult {
            agent_id: started.agent_id,
            at: now_iso(),
            requested: started.requested,
            force: started.force,
            from: started.from,
            outcome: Outcome::classify(success, &text),
            text,
        };
        self.metrics.upgrade_result(result.outcome);
        if let Err(e) = self.store.insert_result(&result).await {
            tracing::error!(agent_id = result.agent_id, "cannot record upgrade result: {e}");
        }
        let now = self.agent_status(&result.agent_id).await;
        let (status, version, since) = now.map(|s| (s.status.to_string(), s.version, s.updated)).unwrap_or((
            "unknown".into(),
            "unknown".into(),
            String::new(),
        ));
        let _ = self.events.send(Event::Result { result, status, version, since });
    }

    /// The agent's status as `$status` tells it; `None` when unknown or unreadable (logged).
    pub async fn agent_status(&self, agent_id: &str) -> Option<StatusRow> {
        match self.hub.statuses(&[agent_id.to_string()]).await {
            Ok(mut s) => s.pop().flatten(),
            Err(e) => {
                tracing::warn!(agent_id, "cannot read the agent's status: {e}");
                None
            }
        }
    }
}
