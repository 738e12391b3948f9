//! A named lease that this node holds and renews in the background: the way to make sure that one
//! holder at a time does a piece of work across every node sharing the store (creating a rollout,
//! whose overlap check must not run twice at once; giving an agent identifiers, which no other
//! agent may have).
//!
//! ```text
//! if let Some(lease) = Lease::try_acquire(store, "rollout-creation", &holder, ttl).await? {
//!     tokio::select! {
//!         _ = lease.lost() => {}          // stop at once: another holder may take over
//!         _ = do_the_work() => {}
//!     }
//!     lease.release().await;
//! }
//! ```
//!
//! The lease is renewed every third of its TTL. It counts as lost when a renewal is refused (it
//! expired and another node took it), or when the store could not be reached for two thirds of the
//! TTL: the holder stops before the lease can expire under it, so two holders never overlap.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// Held while an agent is given identifiers (created with them, or changed to have them), on any
/// node and by `agent-server agent add`: the check that no other agent has one and the write are
/// then one step, so two writes at once cannot both pass the check ([`Lease::for_identifiers`]).
const AGENT_IDENTIFIERS: &str = "agent-identifiers";
/// Long enough for the check and the write; a holder that dies frees it after this.
const AGENT_IDENTIFIERS_TTL: Duration = Duration::from_secs(10);
/// How long a write waits for another's to end before it is refused as busy.
pub const AGENT_IDENTIFIERS_WAIT: Duration = Duration::from_secs(5);

pub struct Lease {
    store: Arc<dyn Store>,
    name: String,
    holder: String,
    lost: CancellationToken,
    stop: CancellationToken,
    /// Whether a lease dropped without [`Lease::release`] (its work cancelled halfway: a caller
    /// that went away) is given up in the background rather than left to expire. Only for a
    /// holder name unique to this acquisition ([`Lease::released_when_dropped`]): a holder that
    /// takes the lease again under the same name could lose it to the late release.
    release_when_dropped: bool,
}

impl Lease {
    /// Takes `name` for `holder` if it is free (or expired); None when another holder has it.
    pub async fn try_acquire(
        store: Arc<dyn Store>,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        if !store.lease_acquire(name, holder, ttl).await? {
            return Ok(None);
        }
        let lease = Lease {
            store,
            name: name.to_string(),
            holder: holder.to_string(),
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
            release_when_dropped: false,
        };
        tokio::spawn(renew(
            lease.store.clone(),
            (lease.name.clone(), lease.holder.clone()),
            ttl,
            lease.lost.clone(),
            lease.stop.clone(),
        ));
        Ok(Some(lease))
    }

    /// [`Lease::try_acquire`] again every 20 ms for as long as `wait`; None when another holder
    /// kept it all that time.
    pub async fn wait_for(
        store: Arc<dyn Store>,
        name: &str,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(lease) = Lease::try_acquire(store.clone(), name, holder, ttl).await? {
                return Ok(Some(lease));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The lease on giving agents identifiers for `who` (a node, or `agent add`), waited for as
    /// long as [`AGENT_IDENTIFIERS_WAIT`]; None when another write held it all that time. Held
    /// for a check and a write of milliseconds; the write is fenced by it ([`Lease::fence`]): a
    /// store that stalled past its TTL between the check and the write refuses the write rather
    /// than let two agents have one identifier.
    pub async fn for_identifiers(store: Arc<dyn Store>, who: &str) -> Result<Option<Lease>, StoreError> {
        let holder = format!("{who} {}", edge_agent_base::id::uuid());
        let (ttl, wait) = (AGENT_IDENTIFIERS_TTL, AGENT_IDENTIFIERS_WAIT);
        Ok(Lease::wait_for(store, AGENT_IDENTIFIERS, &holder, ttl, wait).await?.map(Lease::released_when_dropped))
    }

    /// The lease, given up in the background if it is dropped without [`Lease::release`]. Only
    /// for a holder name unique to this acquisition.
    pub fn released_when_dropped(mut self) -> Lease {
        self.release_when_dropped = true;
        self
    }

    /// Its name and holder, for a write made only while it is held ([`Store::fence`]).
    pub fn fence(&self) -> (&str, &str) {
        (&self.name, &self.holder)
    }

    /// Cancelled when the lease can no longer be trusted: stop the work it guards.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and gives the lease up, so another node may take it at once.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Err(e) = self.store.lease_release(&self.name, &self.holder).await {
            tracing::warn!(lease = self.name, "cannot release the lease (it expires by itself): {e}");
        }
        // Only once released: a release cancelled halfway is made again when the lease drops.
        self.release_when_dropped = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
        if !self.release_when_dropped || self.lost.is_cancelled() {
            return;
        }
        // Dropped unreleased: its holder's work was cancelled (a caller that went away), and the
        // next holder need not wait out the TTL.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, name, holder) = (self.store.clone(), self.name.clone(), self.holder.clone());
            rt.spawn(async move {
                if let Err(e) = store.lease_release(&name, &holder).await {
                    tracing::warn!(lease = name, "cannot release the lease (it expires by itself): {e}");
                }
            });
        }
    }
}

async fn renew(
    store: Arc<dyn Store>,
    (name, holder): (String, String),
    ttl: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    // When the last renewal that succeeded was sent: the lease runs at least a TTL from then.
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        // A renewal that has not succeeded two thirds of a TTL after the last one gives the lease
        // up, even while the store has not answered yet (found by the fault suite: a renewal held
        // by an unreachable store for its whole call limit let another node take the lease while
        // this one still held it).
        let deadline = last_ok + ttl * 2 / 3;
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, store.lease_acquire(&name, &holder, ttl)).await {
            Ok(Ok(true)) => last_ok = sent,
            Ok(Ok(false)) => {
                tracing::warn!(lease = name, "lease lost: another holder has it");
                break;
            }
            Err(_) => {
                tracing::warn!(lease = name, "lease given up: the store did not renew it in time");
                break;
            }
            Ok(Err(e)) if Instant::now() >= deadline => {
                tracing::warn!(lease = name, "lease given up: the store is unreachable: {e}");
                break;
            }
            Ok(Err(e)) => tracing::warn!(lease = name, "cannot renew the lease yet: {e}"),
        }
    }
    lost.cancel();
}
