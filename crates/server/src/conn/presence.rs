//! This node's share of the fleet's presence on the bus, kept up by two loops: the records of
//! the agents whose sockets it holds are renewed every third of the presence TTL, and, from the
//! moment the connection to the bus is lost, retried every few hundred milliseconds until the bus
//! takes them again (a restarted Redis has forgotten them all, and where the replies to the
//! requests waiting here go), and the agents' statuses are then written to the store again
//! ([`Hub::refresh`]: another node's [`super::sweep`] may have stored them as disconnected);
//! and the requests that lost their socket are sent again where the
//! agent came back ([`Hub::redeliver`]).

use std::sync::Arc;
use std::time::Duration;

use edge_agent_base::backoff::Backoff;
use edge_agent_base::time::now_ms;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::hub::{self, Hub};

/// The first and the longest pause between two tries to renew the records after the bus was lost.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// Renews this node's records every `period`, and, each time `lost` says the connection to the
/// bus dropped, until they are renewed again, until `shutdown`.
pub async fn keep(hub: Arc<Hub>, period: Duration, lost: Option<Arc<Notify>>, shutdown: CancellationToken) {
    let lost = lost.unwrap_or_default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {
                if let Err(e) = hub.refresh().await {
                    tracing::warn!("cannot renew this node's agent records (retried in {period:?}): {e}");
                }
            }
            _ = lost.notified() => {
                hub.outages().bus_lost(now_ms());
                recover(&hub, &shutdown).await;
            }
        }
    }
}

/// Tries to renew the records with a short backoff until the bus takes them.
async fn recover(hub: &Hub, shutdown: &CancellationToken) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
        if hub.refresh().await.is_ok() {
            hub.outages().bus_back(now_ms());
            hub.expect_again().await;
            let tries = backoff.attempts();
            return tracing::info!(tries, "the bus is back: this node's agent records are renewed");
        }
    }
}

/// Sends again the requests that lost their socket, every [`hub::REDELIVERY_PERIOD`], until
/// `shutdown`.
pub async fn redeliver(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(hub::REDELIVERY_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tokio::select! { _ = every.tick() => true, _ = shutdown.cancelled() => false } {
        hub.redeliver().await;
    }
}
