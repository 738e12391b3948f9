//! The audit trail's retention: once an hour, the node that holds the store's `audit-retention`
//! lease (taken for an hour, so the same node keeps it while it lives) forgets the events older
//! than `--audit-retention-days`. One node prunes; the others find the lease taken.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::store::Store;

const PERIOD: Duration = Duration::from_secs(3600);

/// Prunes every [`PERIOD`] while this node (`node`) holds the lease, until `shutdown`.
pub async fn prune(store: Arc<dyn Store>, node: String, keep: Duration, shutdown: CancellationToken) {
    loop {
        match store.lease_acquire("audit-retention", &node, PERIOD + Duration::from_secs(60)).await {
            Ok(true) => {
                let before = edge_agent_base::time::iso8601(SystemTime::now() - keep);
                match store.purge_audit(&before).await {
                    Ok(n) => tracing::info!(pruned = n, before, "audit events past their retention forgotten"),
                    Err(e) => tracing::warn!("cannot prune the audit trail: {e}"),
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot take the audit retention lease: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
