//! Who holds a connection. Every open connection holds a [`Slot`], taken at accept under two caps
//! (all open connections; those from one address that have not authenticated) and given back
//! when the socket closes, an agent's upgraded socket included. A connection stops counting
//! against its address once a handler accepts credentials on it ([`authenticated`]); agent
//! sockets that have not completed their handshake are capped apart ([`AnonymousSocket`]).
//!
//! Credentials are checked deep inside handlers, while the slot belongs to the accept loop: a
//! task-local carries the slot of the connection a request came on to them ([`scope`]), so that
//! no handler has to pass it along.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::address_key;
use crate::metrics::edge::ConnectionGauges;
use crate::metrics::{EdgeMetrics, Limit};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    /// `--max-connections` connections are open.
    Busy,
    /// `--max-anonymous-per-ip` connections from this address have not authenticated.
    PerAddress,
}

/// The open connections, counted.
pub struct Conns {
    max_open: usize,
    max_per_address: usize,
    max_anonymous_sockets: usize,
    /// Connections not yet authenticated, by address (an entry only while there is one).
    per_address: Mutex<HashMap<IpAddr, usize>>,
    gauges: ConnectionGauges,
    metrics: EdgeMetrics,
}

/// One open connection's place.
pub struct Slot {
    conns: Arc<Conns>,
    pub peer: SocketAddr,
    /// The address it counts under while anonymous; None when exempt (a trusted proxy).
    counted_as: Option<IpAddr>,
    anonymous: AtomicBool,
    /// Bytes it may still read while anonymous; `usize::MAX`: no such limit.
    read_budget: AtomicUsize,
}

impl Conns {
    pub fn new(max_open: usize, max_per_address: usize, max_anonymous_sockets: usize, metrics: EdgeMetrics) -> Conns {
        let gauges = metrics.connections.clone();
        Conns { max_open, max_per_address, max_anonymous_sockets, per_address: Mutex::default(), gauges, metrics }
    }

    pub fn max_open(&self) -> usize {
        self.max_open
    }

    pub fn open(&self) -> usize {
        self.gauges.open.get().max(0) as usize
    }

    /// A slot for a new connection from `peer`, or why not; `exempt` peers (trusted proxies)
    /// are not counted by address.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, exempt: bool) -> Result<Arc<Slot>, Refused> {
        if self.gauges.open.inc() as usize >= self.max_open {
            self.gauges.open.dec();
            self.metrics.hit(Limit::Connections);
            return Err(Refused::Busy);
        }
        let counted_as = (!exempt).then(|| address_key(peer.ip()));
        if let Some(key) = counted_as {
            let mut map = self.per_address.lock().unwrap();
            let n = map.entry(key).or_default();
            if *n >= self.max_per_address {
                drop(map);
                self.gauges.open.dec();
                self.metrics.hit(Limit::AnonymousPerIp);
                return Err(Refused::PerAddress);
            }
            *n += 1;
        }
        self.gauges.anonymous.inc();
        let slot = Slot {
            conns: self.clone(),
            peer,
            counted_as,
            anonymous: AtomicBool::new(true),
            read_budget: AtomicUsize::new(usize::MAX),
        };
        Ok(Arc::new(slot))
    }

    fn release_address(&self, key: IpAddr) {
        let mut map = self.per_address.lock().unwrap();
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }

    /// A place for an agent socket until its handshake completes, or None at the cap.
    pub fn anonymous_socket(self: &Arc<Self>) -> Option<AnonymousSocket> {
        if self.gauges.anonymous_sockets.inc() as usize >= self.max_anonymous_sockets {
            self.gauges.anonymous_sockets.dec();
            self.metrics.hit(Limit::AnonymousSockets);
            return None;
        }
        Some(AnonymousSocket(self.clone()))
    }

    pub fn metrics(&self) -> &EdgeMetrics {
        &self.metrics
    }
}

impl Slot {
    /// Credentials were accepted on this connection: it no longer counts against its address.
    pub fn authenticated(&self) {
        if self.anonymous.swap(false, Ordering::AcqRel) {
            self.conns.gauges.anonymous.dec();
            if let Some(key) = self.counted_as {
                self.conns.release_address(key);
            }
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.anonymous.load(Ordering::Acquire)
    }

    /// From now on, at most `bytes` more may be read while the connection is anonymous.
    pub fn limit_anonymous_reads(&self, bytes: usize) {
        self.read_budget.store(bytes, Ordering::Release);
    }

    /// Counts `n` bytes read; false when an anonymous connection went past its budget.
    pub fn spend(&self, n: usize) -> bool {
        // One task reads a connection at a time: a load and a store are enough.
        let left = self.read_budget.load(Ordering::Acquire);
        if left == usize::MAX || !self.is_anonymous() {
            return true;
        }
        if n <= left {
            self.read_budget.store(left - n, Ordering::Release);
            return true;
        }
        self.read_budget.store(0, Ordering::Release);
        self.conns.metrics.hit(Limit::AnonymousFrame);
        false
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.gauges.open.dec();
        if self.anonymous.load(Ordering::Acquire) {
            self.conns.gauges.anonymous.dec();
            if let Some(key) = self.counted_as {
                self.conns.release_address(key);
            }
        }
    }
}

/// An agent socket's place until its handshake completes.
pub struct AnonymousSocket(Arc<Conns>);

impl Drop for AnonymousSocket {
    fn drop(&mut self) {
        self.0.gauges.anonymous_sockets.dec();
    }
}

tokio::task_local! {
    static CURRENT: Arc<Slot>;
}

/// Runs a request's handling with the slot of its connection at hand.
pub async fn scope<F: Future>(slot: Arc<Slot>, f: F) -> F::Output {
    CURRENT.scope(slot, f).await
}

/// Credentials were accepted on the connection of the request being handled.
pub fn authenticated() {
    let _ = CURRENT.try_with(|s| s.authenticated());
}

/// The slot of the connection of the request being handled (None outside the accept loop).
pub fn current() -> Option<Arc<Slot>> {
    CURRENT.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40_000)
    }

    #[test]
    fn caps_count_until_authenticated_or_closed() {
        let metrics = EdgeMetrics::default();
        let conns = Arc::new(Conns::new(4, 2, 1, metrics.clone()));
        let a = conns.admit(addr("192.0.2.1"), false).unwrap();
        let b = conns.admit(addr("192.0.2.1"), false).unwrap();
        assert_eq!(conns.admit(addr("192.0.2.1"), false).err(), Some(Refused::PerAddress));
        a.authenticated();
        let c = conns.admit(addr("192.0.2.1"), false).unwrap();
        let d = conns.admit(addr("10.0.0.1"), true).unwrap();
        assert_eq!(conns.open(), 4);
        assert_eq!(conns.admit(addr("198.51.100.1"), false).err(), Some(Refused::Busy));
        drop((b, c, d));
        assert_eq!(conns.open(), 1);
        assert!(conns.per_address.lock().unwrap().is_empty(), "no entry is kept for an address without connections");
        assert_eq!((metrics.hits(Limit::AnonymousPerIp), metrics.hits(Limit::Connections)), (1, 1));
        let s = conns.anonymous_socket().unwrap();
        assert!(conns.anonymous_socket().is_none());
        drop(s);
        assert!(conns.anonymous_socket().is_some());
    }

    #[test]
    fn an_anonymous_connection_reads_within_its_budget() {
        let conns = Arc::new(Conns::new(4, 4, 4, EdgeMetrics::default()));
        let slot = conns.admit(addr("192.0.2.1"), false).unwrap();
        assert!(slot.spend(1 << 20), "no budget until one is set");
        slot.limit_anonymous_reads(100);
        assert!(slot.spend(60) && slot.spend(40));
        assert!(!slot.spend(1));
        slot.authenticated();
        assert!(slot.spend(1 << 20), "an authenticated connection reads freely");
    }
}
