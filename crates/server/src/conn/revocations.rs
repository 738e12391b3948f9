//! Revocations reach every node within a second, two ways: the node that makes one applies it and
//! tells every other node on the bus ([`Revocations::announce`]), and every node polls the store
//! for the ones it has not applied ([`Revocations::follow`]: those the command line wrote, those a
//! lost bus message carried). Applying one drops the tokens it names from this node's cache and
//! closes the sockets of the agents it names; each is applied once per node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_agent_base::time::now_ms;
use tokio_util::sync::CancellationToken;

use super::bus::Inbound;
use super::hub::Hub;
use crate::identity::tokens::Tokens;
use crate::model::revocation::Revocation;
use crate::store::Store;

/// How often the store is asked for revocations.
pub const POLL: Duration = Duration::from_millis(250);
/// How far back each poll looks: writers' clocks may differ by this much.
const WINDOW_MS: i64 = 30_000;
/// How long revocations stay in the store.
const KEEP_MS: i64 = 10 * 60_000;

pub struct Revocations {
    store: Arc<dyn Store>,
    tokens: Arc<Tokens>,
    hub: Arc<Hub>,
    /// The ids applied here, and when each was written.
    applied: Mutex<HashMap<String, i64>>,
}

impl Revocations {
    pub fn new(store: Arc<dyn Store>, tokens: Arc<Tokens>, hub: Arc<Hub>) -> Revocations {
        Revocations { store, tokens, hub, applied: Mutex::default() }
    }

    /// Applies `r` on this node, unless it was already.
    pub fn apply(&self, r: &Revocation) {
        if self.applied.lock().unwrap().insert(r.id.clone(), r.at_ms).is_some() {
            return;
        }
        self.tokens.forget(&r.tokens, &r.clients);
        let closed = self.hub.revoke(r);
        tracing::info!(
            tokens = r.tokens.len(),
            clients = r.clients.len(),
            agents = r.agents.len(),
            sockets_closed = closed,
            "revocation applied"
        );
    }

    /// Applies `r` here and tells every other node; a node the bus misses finds it in the store.
    pub async fn announce(&self, r: &Revocation) {
        self.apply(r);
        if let Err(e) = self.hub.broadcast(&Inbound::Revoke { revocation: r.clone() }).await {
            tracing::warn!("cannot tell the other nodes of a revocation (they read it from the store): {e}");
        }
    }

    /// Polls the store for revocations every [`POLL`] until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: CancellationToken) {
        let mut polls = 0u64;
        loop {
            let now = now_ms();
            match self.store.revocations_since(now - WINDOW_MS).await {
                Ok(found) => {
                    found.iter().for_each(|r| self.apply(r));
                    self.tokens.feed_alive(now);
                    self.applied.lock().unwrap().retain(|_, at| *at >= now - 2 * WINDOW_MS);
                }
                Err(e) => tracing::warn!("cannot read revocations (tokens are checked in the store meanwhile): {e}"),
            }
            polls += 1;
            if polls.is_multiple_of(1200) {
                if let Err(e) = self.store.purge_revocations(now - KEEP_MS).await {
                    tracing::warn!("cannot forget old revocations: {e}");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
