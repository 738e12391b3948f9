//! The stored statuses of agents no node holds, set right. An agent stored as connected whose
//! node was killed (or lost the store before writing its leaving), and that never came back,
//! would stay connected in the fleet's table, counts and metrics, which read the store, while
//! `$status` says disconnected. Once every presence TTL, the node that holds the store's
//! `status-sweep` lease reads the agents stored as connected, a page at a time, and looks for
//! each (on itself, else on the bus); one that no live node held at two sweeps in a row, its
//! stored status unchanged in between, is stored as disconnected. Two looks a period apart let a
//! record that lapsed for a moment (a failed renewal, a restarted Redis) be renewed first; a
//! node whose records may have lapsed for longer (its calls on the bus failed, or it stalled)
//! writes its agents' statuses again once it renews them ([`Hub::refresh`]). A sweep is skipped,
//! and the lease given up, when this node's own calls on the bus failed since the last one.
//!
//! It runs where the bus keeps records (Redis), or on SQLite, which only one node opens. Nodes
//! on PostgreSQL without Redis each know only their own sockets, so none sweeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edge_agent_base::time::now_ms;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, StatusError};
use super::outages::Infra;
use crate::metrics::Metrics;
use crate::store::db::Dialect;
use crate::store::Store;

const LEASE: &str = "status-sweep";
/// Agents read, looked up on the bus and written at a time.
const PAGE: usize = 1000;
/// Agents found held nowhere kept for the next sweep's second look at most (about 120 bytes
/// each); past them, the rest wait for a later sweep.
const MAX_SUSPECTS: usize = 100_000;

/// Sweeps every `every` while this node (`node`) holds the lease, counting in `metrics` the
/// agents it stores as disconnected, until `shutdown`, and gives
/// the lease up then if it can (a sweep under way finishes first; else the lease lapses within
/// a period and a half). The first look is one period after the start, when agents reconnecting
/// after a restart are back.
pub async fn run(
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    node: String,
    every: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if !hub.keeps_records() && store.dialect() != Dialect::Sqlite {
        return;
    }
    // Agent → the status time stored when it was found held nowhere.
    let mut suspects: HashMap<String, String> = HashMap::new();
    let mut last = now_ms();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let started = now_ms();
        // Taken for a period and a half: renewed each period while the node lives, free soon
        // after it dies.
        match store.lease_acquire(LEASE, &node, every * 3 / 2).await {
            Ok(true) if hub.outages().since(last) == Some(Infra::Bus) => {
                // Another node, whose bus may work, can sweep meanwhile.
                suspects.clear();
                let _ = store.lease_release(LEASE, &node).await;
            }
            Ok(true) => match sweep(&hub, &*store, &suspects).await {
                Ok((n, next)) => {
                    suspects = next;
                    if n > 0 {
                        metrics.swept(n);
                        tracing::info!(
                            agents = n,
                            "agents stored as connected that no node holds: stored as disconnected"
                        );
                    }
                }
                Err(e) => {
                    suspects.clear();
                    tracing::warn!("cannot sweep the stored statuses (tried again in {every:?}): {e}");
                }
            },
            Ok(false) => suspects.clear(),
            Err(e) => tracing::warn!("cannot take the status sweep lease: {e}"),
        }
        last = started;
    }
    let _ = store.lease_release(LEASE, &node).await;
}

/// One sweep: how many agents were stored as disconnected (those among `suspects` still held
/// nowhere, their stored status unchanged), and the agents held nowhere this time, for the next.
pub async fn sweep(
    hub: &Hub,
    store: &dyn Store,
    suspects: &HashMap<String, String>,
) -> Result<(u64, HashMap<String, String>), StatusError> {
    let (mut after, mut gone, mut next) = (String::new(), 0, HashMap::new());
    loop {
        let page = store.stored_connected(&after, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        let full = page.len() == PAGE;
        let ids: Vec<String> = page.iter().map(|(id, _)| id.clone()).collect();
        let held = hub.held(&ids).await?;
        let mut confirmed = Vec::new();
        for ((id, at), held) in page.into_iter().zip(held) {
            if held {
                continue;
            }
            if suspects.get(&id) == Some(&at) {
                confirmed.push((id, at));
            } else if next.len() < MAX_SUSPECTS {
                next.insert(id, at);
            }
        }
        if !confirmed.is_empty() {
            gone += store.store_gone(&confirmed).await?;
        }
        if !full {
            break;
        }
    }
    Ok((gone, next))
}
