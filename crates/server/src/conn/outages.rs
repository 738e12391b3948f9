//! When what stands between this node and the agents failed: the bus between nodes (Redis) or the
//! store. Every failed bus call is noted here (by [`super::bus::watched`]), and so are the store
//! errors of the rollout engine. The rollouts read it to tell an agent's silence from ours: a
//! member whose wait overlapped an outage is sent its request again, never counted as a failure.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::watch;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Infra {
    Bus,
    Store,
}

impl Infra {
    /// Why a member waits again, in the rollout's events and the member's reason.
    pub fn why(self) -> &'static str {
        match self {
            Infra::Bus => "cluster bus unavailable",
            Infra::Store => "store unavailable",
        }
    }
}

/// The last failure of each, and whether the bus is down now.
pub struct Outages {
    bus: AtomicI64,
    store: AtomicI64,
    /// The connection to the bus is lost, until a call on it succeeds again.
    bus_down: AtomicBool,
    /// Becomes true when the bus is lost and false when it is back, for whoever follows it.
    changes: watch::Sender<bool>,
}

impl Default for Outages {
    fn default() -> Self {
        Outages {
            bus: AtomicI64::new(i64::MIN),
            store: AtomicI64::new(i64::MIN),
            bus_down: AtomicBool::new(false),
            changes: watch::channel(false).0,
        }
    }
}

impl Outages {
    /// `what` failed at `at` (milliseconds since the epoch).
    pub fn failed(&self, what: Infra, at: i64) {
        let last = match what {
            Infra::Bus => &self.bus,
            Infra::Store => &self.store,
        };
        last.fetch_max(at, Ordering::Relaxed);
    }

    /// What failed at `since` or later, if anything (the bus first: it is the likelier cause of a
    /// lost request). A bus that is down now counts as failing now.
    pub fn since(&self, since: i64) -> Option<Infra> {
        if self.bus_down.load(Ordering::Relaxed) || self.bus.load(Ordering::Relaxed) >= since {
            return Some(Infra::Bus);
        }
        (self.store.load(Ordering::Relaxed) >= since).then_some(Infra::Store)
    }

    /// The connection to the bus was lost at `at`.
    pub fn bus_lost(&self, at: i64) {
        self.failed(Infra::Bus, at);
        if !self.bus_down.swap(true, Ordering::Relaxed) {
            self.changes.send_replace(true);
        }
    }

    /// A call on the bus succeeded after it was lost.
    pub fn bus_back(&self, at: i64) {
        if self.bus_down.swap(false, Ordering::Relaxed) {
            self.failed(Infra::Bus, at);
            self.changes.send_replace(false);
        }
    }

    pub fn bus_down(&self) -> bool {
        self.bus_down.load(Ordering::Relaxed)
    }

    /// Follows the bus: true while it is down.
    pub fn watch_bus(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_counts_for_every_wait_it_overlaps() {
        let o = Outages::default();
        assert_eq!(o.since(0), None);
        o.failed(Infra::Store, 100);
        assert_eq!((o.since(50), o.since(100), o.since(101)), (Some(Infra::Store), Some(Infra::Store), None));
        o.bus_lost(200);
        assert!(o.bus_down());
        assert_eq!(o.since(10_000), Some(Infra::Bus), "down now: every wait overlaps it");
        o.bus_back(300);
        assert!(!o.bus_down());
        assert_eq!((o.since(300), o.since(301)), (Some(Infra::Bus), None));
        o.failed(Infra::Bus, 250);
        assert_eq!(o.since(301), None, "an older failure noted late moves nothing back");
    }

    #[test]
    fn whoever_follows_the_bus_sees_it_go_and_come_back() {
        let o = Outages::default();
        let w = o.watch_bus();
        o.bus_lost(1);
        o.bus_lost(2);
        assert!(*w.borrow());
        o.bus_back(3);
        assert!(!*w.borrow());
    }
}
