//! Who holds a connection. Every open connection holds a [`Slot`], taken at accept under two caps
//! (all open connections; those from one address that have not authenticated) and given back
//! when the socket closes, an agent's upgraded socket included. A connection stops counting
//! against its address once a handler accepts credentials on it ([`authenticated`]), up to a
//! share for each client ([`Slot::authenticated_as`]); agent sockets that have not completed
//! their handshake are capped apart ([`AnonymousSocket`]).
//!
//! Both caps on what has not authenticated are shared fairly between client addresses
//! ([`Shares`]): when all places are taken, a newcomer from an address holding fewer takes the
//! oldest place of the address holding the most, whose connection is closed (its `evicted`
//! signal). A few addresses that keep reopening connections without credentials cannot keep an
//! agent or a client from elsewhere out; authenticated connections (within their client's share)
//! never give way.
//!
//! Credentials are checked deep inside handlers, while the slot belongs to the accept loop: a
//! task-local carries the slot of the connection a request came on to them ([`scope`]), so that
//! no handler has to pass it along.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

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
    /// Authenticated connections one client's credentials hold at most (`--max-connections-per-client`).
    max_per_client: usize,
    /// Authenticated connections by the client whose credentials they carried (agents' sockets
    /// apart: an agent keeps three).
    per_client: Mutex<HashMap<String, usize>>,
    /// Connections not yet authenticated, by address.
    per_address: Mutex<Shares>,
    /// Agent sockets waiting for their handshake, by client address.
    waiting: Mutex<Shares>,
    gauges: ConnectionGauges,
    metrics: EdgeMetrics,
}

/// One open connection's place.
pub struct Slot {
    conns: Arc<Conns>,
    pub peer: SocketAddr,
    /// The address it counts under while anonymous; None when exempt (a trusted proxy).
    counted_as: Option<IpAddr>,
    /// Its place among its address's anonymous connections.
    place: u64,
    /// Set when a newcomer from another address took its place: the connection must close.
    pub evicted: Evicted,
    anonymous: AtomicBool,
    /// The client whose share of authenticated connections it holds, once it holds one.
    client: OnceLock<String>,
    /// Bytes it may still read while anonymous; `usize::MAX`: no such limit.
    read_budget: AtomicUsize,
}

impl Conns {
    pub fn new(
        max_open: usize,
        max_per_address: usize,
        max_anonymous_sockets: usize,
        max_per_client: usize,
        metrics: EdgeMetrics,
    ) -> Conns {
        let gauges = metrics.connections.clone();
        Conns {
            max_open,
            max_per_address,
            max_anonymous_sockets,
            max_per_client,
            per_client: Mutex::default(),
            per_address: Mutex::default(),
            waiting: Mutex::default(),
            gauges,
            metrics,
        }
    }

    pub fn max_open(&self) -> usize {
        self.max_open
    }

    pub fn open(&self) -> usize {
        self.gauges.open.get().max(0) as usize
    }

    /// A slot for a new connection from `peer`, or why not; `exempt` peers (trusted proxies)
    /// are not counted by address. At `max_open`, an anonymous connection of the address holding
    /// the most gives way to a newcomer from an address holding fewer (the newcomer is admitted
    /// while the other closes).
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, exempt: bool) -> Result<Arc<Slot>, Refused> {
        let counted_as = (!exempt).then(|| address_key(peer.ip()));
        // Declared before the lock, so dropped after it.
        let gave_way;
        let mut shares = self.per_address.lock().unwrap();
        if let Some(key) = counted_as {
            if shares.held_by(key) >= self.max_per_address {
                drop(shares);
                self.metrics.hit(Limit::AnonymousPerIp);
                return Err(Refused::PerAddress);
            }
        }
        if self.gauges.open.inc() as usize >= self.max_open {
            self.metrics.hit(Limit::Connections);
            gave_way = counted_as.and_then(|key| shares.give_way_to(key));
            if gave_way.is_none() {
                self.gauges.open.dec();
                return Err(Refused::Busy);
            }
        }
        self.gauges.anonymous.inc();
        let slot = Arc::new_cyclic(|me: &Weak<Slot>| Slot {
            conns: self.clone(),
            peer,
            counted_as,
            place: counted_as.map_or(0, |key| shares.take(key, me.clone())),
            evicted: Evicted::default(),
            anonymous: AtomicBool::new(true),
            client: OnceLock::new(),
            read_budget: AtomicUsize::new(usize::MAX),
        });
        Ok(slot)
    }

    /// One of `client`'s authenticated connections closed.
    fn release_client(&self, client: &str) {
        let mut held = self.per_client.lock().unwrap();
        if let Some(n) = held.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                held.remove(client);
            }
        }
    }

    fn release_address(&self, key: IpAddr, place: u64) {
        self.per_address.lock().unwrap().give_back(key, place);
    }

    /// A place for an agent socket from `client` until its handshake completes, or None at the
    /// cap. At the cap, the address holding the most places gives up its oldest when it holds
    /// two more than `client`'s now ([`Shares::give_way_to`]): that socket is told through its
    /// [`AnonymousSocket::evicted`].
    pub fn anonymous_socket(self: &Arc<Self>, client: IpAddr) -> Option<AnonymousSocket> {
        let key = address_key(client);
        // Declared before the lock, so dropped after it.
        let gave_way;
        let mut w = self.waiting.lock().unwrap();
        if w.total >= self.max_anonymous_sockets {
            self.metrics.hit(Limit::AnonymousSockets);
            gave_way = w.give_way_to(key);
            gave_way.as_ref()?;
        }
        let evicted = Arc::new(Evicted::default());
        let id = w.take(key, Arc::downgrade(&evicted) as Weak<dyn Holder>);
        self.gauges.anonymous_sockets.set(w.total as i64);
        Some(AnonymousSocket { conns: self.clone(), key, id, evicted })
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
                self.conns.release_address(key, self.place);
            }
        }
    }

    /// `client`'s credentials were accepted on this connection: it no longer counts against its
    /// address, unless the client holds `--max-connections-per-client` authenticated connections
    /// already. Then it stays counted as anonymous (against its address's cap, and among the
    /// first to give way when the server is full): one client's credentials (an agent's, a
    /// viewer's) held open connection after connection until nobody else could connect.
    pub fn authenticated_as(&self, client: &str) {
        if !self.is_anonymous() {
            return;
        }
        {
            let mut held = self.conns.per_client.lock().unwrap();
            let n = held.entry(client.to_string()).or_default();
            if *n >= self.conns.max_per_client {
                drop(held);
                self.conns.metrics.hit(Limit::ConnectionsPerClient);
                return;
            }
            *n += 1;
        }
        // Two requests at once on one connection: the first keeps the share.
        if self.client.set(client.to_string()).is_err() {
            return self.conns.release_client(client);
        }
        self.authenticated();
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
        if let Some(client) = self.client.get() {
            self.conns.release_client(client);
        }
        if self.anonymous.load(Ordering::Acquire) {
            self.conns.gauges.anonymous.dec();
            if let Some(key) = self.counted_as {
                self.conns.release_address(key, self.place);
            }
        }
    }
}

/// Places shared between client addresses: each address's, oldest first, with whoever holds it
/// (told through its [`Evicted`] when it has to give way), and how many each network holds (an
/// IPv4 address is its own network; IPv6 /64s count together by their /48, see
/// [`Shares::give_way_to`]). The networks' counts are kept as places come and go rather than
/// summed at the cap: under a flood, every refused newcomer would pay for that sum.
#[derive(Default)]
pub struct Shares {
    total: usize,
    next: u64,
    by_address: HashMap<IpAddr, VecDeque<Place>>,
    by_network: HashMap<IpAddr, usize>,
}

/// The network an address key counts in at the cap: an IPv6 /64's /48 (the allocation a site,
/// or an attacker, commonly holds: 65,536 /64s), an IPv4 address itself.
fn network_of(key: IpAddr) -> IpAddr {
    match key {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
        v4 => v4,
    }
}

/// A place's id and its holder.
type Place = (u64, Weak<dyn Holder>);

/// A place given up, with its holder while it is told (see [`Shares::give_way_to`]).
struct GaveWay(#[allow(dead_code)] Option<Arc<dyn Holder>>);

/// The signal that a place was given to a newcomer: a flag and its waiters, held inline (every
/// connected agent's slot has one: no allocation of its own).
#[derive(Default)]
pub struct Evicted {
    flag: AtomicBool,
    woken: Notify,
}

impl Evicted {
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.woken.notify_waiters();
    }

    /// Returns once the holder has to give way (at once if it already has).
    pub async fn wait(&self) {
        // Made before the flag is read: `notify_waiters` wakes it from then on.
        let woken = self.woken.notified();
        if self.is_set() {
            return;
        }
        woken.await
    }
}

/// Who holds a place: a connection's slot, or an agent socket waiting for its handshake.
pub trait Holder: Send + Sync {
    fn evicted(&self) -> &Evicted;
}

impl Holder for Slot {
    fn evicted(&self) -> &Evicted {
        &self.evicted
    }
}

impl Holder for Evicted {
    fn evicted(&self) -> &Evicted {
        self
    }
}

impl Shares {
    fn held_by(&self, key: IpAddr) -> usize {
        self.by_address.get(&key).map_or(0, VecDeque::len)
    }

    /// A new place for `key`, held by `holder`: its id.
    fn take(&mut self, key: IpAddr, holder: Weak<dyn Holder>) -> u64 {
        self.next += 1;
        self.by_address.entry(key).or_default().push_back((self.next, holder));
        *self.by_network.entry(network_of(key)).or_default() += 1;
        self.total += 1;
        self.next
    }

    /// Gives a place back (nothing if it already gave way).
    fn give_back(&mut self, key: IpAddr, id: u64) {
        let Some(queue) = self.by_address.get_mut(&key) else { return };
        let Some(at) = queue.iter().position(|(i, _)| *i == id) else { return };
        queue.remove(at);
        if queue.is_empty() {
            self.by_address.remove(&key);
        }
        self.forget_one(key);
    }

    /// One place fewer for `key` (already out of its queue).
    fn forget_one(&mut self, key: IpAddr) {
        let network = network_of(key);
        if let Some(n) = self.by_network.get_mut(&network) {
            *n -= 1;
            if *n == 0 {
                self.by_network.remove(&network);
            }
        }
        self.total -= 1;
    }

    /// All places taken and `key` wants one. First between networks: the network holding the
    /// most gives up a place when it holds two more than `key`'s network (so that it still holds
    /// as many then), the oldest place of its address holding the most. Else within `key`'s own
    /// network, by address, the same way. None if no one gave way. So an IPv6 /48 spread over
    /// thousands of /64s, one place each, weighs as one network, not as thousands of addresses.
    ///
    /// A scan of the networks and addresses, made only at the cap. What it returns must be
    /// dropped after the lock on these shares: it may be the holder's last reference, and a slot
    /// gives its place back (taking that lock) when dropped.
    fn give_way_to(&mut self, key: IpAddr) -> Option<GaveWay> {
        let network = network_of(key);
        let mine = self.by_network.get(&network).copied().unwrap_or(0);
        let (victim_network, most) = self.by_network.iter().map(|(n, c)| (*n, *c)).max_by_key(|(_, c)| *c)?;
        let (within, mine) = match mine + 1 < most {
            true => (victim_network, None),
            false => (network, Some(self.held_by(key))),
        };
        // Of the addresses holding the most, the one whose oldest place is the oldest.
        let (victim, most) = self
            .by_address
            .iter()
            .filter(|(a, _)| network_of(**a) == within)
            .max_by_key(|(_, q)| (q.len(), std::cmp::Reverse(q.front().map(|(id, _)| *id))))
            .map(|(a, q)| (*a, q.len()))?;
        if mine.is_some_and(|mine| mine + 1 >= most) {
            return None;
        }
        let queue = self.by_address.get_mut(&victim).expect("the address just found");
        let (_, holder) = queue.pop_front().expect("the address holds places");
        if queue.is_empty() {
            self.by_address.remove(&victim);
        }
        self.forget_one(victim);
        let holder = holder.upgrade();
        if let Some(h) = &holder {
            h.evicted().set();
        }
        Some(GaveWay(holder))
    }
}

/// An agent socket's place until its handshake completes.
pub struct AnonymousSocket {
    conns: Arc<Conns>,
    key: IpAddr,
    id: u64,
    /// Set when a newcomer from another address took this place: the socket must close.
    pub evicted: Arc<Evicted>,
}

impl Drop for AnonymousSocket {
    fn drop(&mut self) {
        let mut w = self.conns.waiting.lock().unwrap();
        w.give_back(self.key, self.id);
        self.conns.gauges.anonymous_sockets.set(w.total as i64);
    }
}

tokio::task_local! {
    static CURRENT: Arc<Slot>;
}

/// Runs a request's handling with the slot of its connection at hand.
pub async fn scope<F: Future>(slot: Arc<Slot>, f: F) -> F::Output {
    CURRENT.scope(slot, f).await
}

/// `client`'s credentials were accepted on the connection of the request being handled
/// ([`Slot::authenticated_as`]).
pub fn authenticated(client: &str) {
    let _ = CURRENT.try_with(|s| s.authenticated_as(client));
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
        let conns = Arc::new(Conns::new(4, 2, 1, 64, metrics.clone()));
        let a = conns.admit(addr("192.0.2.1"), false).unwrap();
        let b = conns.admit(addr("192.0.2.1"), false).unwrap();
        assert_eq!(conns.admit(addr("192.0.2.1"), false).err(), Some(Refused::PerAddress));
        a.authenticated();
        let c = conns.admit(addr("192.0.2.1"), false).unwrap();
        let d = conns.admit(addr("10.0.0.1"), true).unwrap();
        assert_eq!(conns.open(), 4);
        // Full: 192.0.2.1 holds two anonymous connections (a authenticated), a newcomer none: the
        // oldest of the two gives way; then 1 to 1, and an exempt peer cannot be weighed.
        let e = conns.admit(addr("198.51.100.1"), false).unwrap();
        assert!(b.evicted.is_set() && !c.evicted.is_set() && !a.evicted.is_set());
        assert_eq!(conns.admit(addr("198.51.100.2"), false).err(), Some(Refused::Busy));
        assert_eq!(conns.admit(addr("10.0.0.1"), true).err(), Some(Refused::Busy));
        assert_eq!(conns.open(), 5, "the newcomer is in while the evicted one closes");
        drop((b, c));
        let f = conns.admit(addr("192.0.2.3"), false).expect("a place again once connections closed");
        drop((d, e, f));
        assert_eq!(conns.open(), 1);
        assert!(
            conns.per_address.lock().unwrap().by_address.is_empty(),
            "no entry is kept for an address without connections"
        );
        assert_eq!((metrics.hits(Limit::AnonymousPerIp), metrics.hits(Limit::Connections)), (1, 3));
        let ip = addr("192.0.2.1").ip();
        let s = conns.anonymous_socket(ip).unwrap();
        assert!(conns.anonymous_socket(addr("192.0.2.2").ip()).is_none(), "one address to one: no one gives way");
        drop(s);
        assert!(conns.anonymous_socket(ip).is_some());
    }

    #[test]
    fn anonymous_sockets_are_shared_fairly_between_addresses() {
        let metrics = EdgeMetrics::default();
        let conns = Arc::new(Conns::new(100, 100, 6, 64, metrics.clone()));
        let (a, b, c) = (addr("192.0.2.1").ip(), addr("192.0.2.2").ip(), addr("2001:db8::1").ip());
        let held: Vec<_> = (0..4).map(|_| conns.anonymous_socket(a).unwrap()).collect();
        let held_b: Vec<_> = (0..2).map(|_| conns.anonymous_socket(b).unwrap()).collect();
        // Full: a newcomer takes the oldest place of the address holding the most.
        let newcomer = conns.anonymous_socket(c).unwrap();
        assert!(held[0].evicted.is_set() && !held[1].evicted.is_set());
        assert!(held_b.iter().all(|s| !s.evicted.is_set()));
        // a holds 3, b 2, c 1: c's second would leave it at 2 beside a's 2, still fair.
        let second = conns.anonymous_socket(addr("2001:db8::2").ip()).expect("the same /64 as c");
        assert!(held[1].evicted.is_set());
        // Now 2, 2, 2: an address of these gives way to no one, a fourth one still gets in.
        assert!(conns.anonymous_socket(a).is_none());
        let fourth = conns.anonymous_socket(addr("198.51.100.7").ip()).unwrap();
        assert_eq!(conns.gauges.anonymous_sockets.get(), 6);
        let places = |v: &[AnonymousSocket]| v.iter().filter(|s| !s.evicted.is_set()).count() as i64;
        assert_eq!(places(&held) + places(&held_b) + places(std::slice::from_ref(&newcomer)), 4);
        // An evicted place dropped late does not give back a place it no longer holds.
        let left = 6 - places(&held);
        drop(held);
        assert_eq!(conns.gauges.anonymous_sockets.get(), left);
        drop((held_b, newcomer, second, fourth));
        assert_eq!(conns.gauges.anonymous_sockets.get(), 0);
        assert!(conns.waiting.lock().unwrap().by_address.is_empty());
        assert_eq!(metrics.hits(Limit::AnonymousSockets), 4);
    }

    /// Found by reading the fair share: keyed by /64, an IPv6 /48 (65,536 /64s) could hold the
    /// whole cap one place per /64, and then no newcomer weighed more than anyone: every one was
    /// refused while the flood lasted. A /48 now weighs as one network.
    #[test]
    fn a_slash_48_spread_over_its_slash_64s_weighs_as_one_network_at_the_cap() {
        let metrics = EdgeMetrics::default();
        let conns = Arc::new(Conns::new(100, 100, 6, 64, metrics.clone()));
        let flood = |n: u32| format!("2001:db8:77:{n:x}::1").parse::<IpAddr>().unwrap();
        let held: Vec<_> = (0..6).map(|n| conns.anonymous_socket(flood(n)).unwrap()).collect();
        // Full, one place per /64: a newcomer from elsewhere still gets in, the flood's oldest
        // place giving way.
        let agent = conns.anonymous_socket(addr("192.0.2.10").ip()).expect("a newcomer weighs against the /48");
        assert!(held[0].evicted.is_set() && !held[1].evicted.is_set());
        let other_site = conns.anonymous_socket(addr("2001:db8:99::5").ip()).expect("another /48");
        assert!(held[1].evicted.is_set());
        // The flood's next /64 weighs as its /48, which holds the most already (4), and within
        // the /48 each /64 holds one place: no one gives way to it.
        assert!(conns.anonymous_socket(flood(100)).is_none(), "a fresh /64 of the /48 gets nothing");
        drop((held, agent, other_site));
        assert_eq!(conns.gauges.anonymous_sockets.get(), 0);

        // Within one network, its addresses share as before: one /64 holding four places gives
        // way to another /64 of its /48 holding none.
        let site: Vec<_> = (0..4).map(|_| conns.anonymous_socket(addr("2001:db8:5::1").ip()).unwrap()).collect();
        let x: Vec<_> = (0..2).map(|_| conns.anonymous_socket(addr("198.51.100.1").ip()).unwrap()).collect();
        let neighbour = conns.anonymous_socket(addr("2001:db8:5:1::1").ip()).expect("its network's other /64");
        assert!(site[0].evicted.is_set() && !site[1].evicted.is_set(), "the /64 holding the most gave way");
        assert!(x.iter().all(|s| !s.evicted.is_set()), "no one outside the network did");
        // And between networks, the /48 (four places over two /64s) gives way to a newcomer.
        let y = conns.anonymous_socket(addr("198.51.100.2").ip()).expect("another network");
        assert!(site[1].evicted.is_set() && !neighbour.evicted.is_set() && x.iter().all(|s| !s.evicted.is_set()));
        drop((site, x, neighbour, y));
        assert_eq!(conns.gauges.anonymous_sockets.get(), 0);
        let w = conns.waiting.lock().unwrap();
        assert!(w.by_address.is_empty() && w.by_network.is_empty(), "nothing kept once every place is back");
    }

    /// Found by an attacker's probe: one agent's token held 40 keep-alive connections of 40, and
    /// nobody else could connect. A client's share of authenticated connections is capped: past
    /// it, they count as anonymous, against their address and first to give way.
    #[test]
    fn one_clients_credentials_keep_at_most_their_share_from_giving_way() {
        let metrics = EdgeMetrics::default();
        let conns = Arc::new(Conns::new(6, 3, 4, 2, metrics.clone()));
        let mut held: Vec<Arc<Slot>> = (0..3).map(|_| conns.admit(addr("192.0.2.1"), false).unwrap()).collect();
        for s in &held {
            s.authenticated_as("viewer");
        }
        assert_eq!(held.iter().map(|s| s.is_anonymous()).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(metrics.hits(Limit::ConnectionsPerClient), 1);
        let other = conns.admit(addr("192.0.2.1"), false).unwrap();
        other.authenticated_as("admin");
        assert!(!other.is_anonymous(), "another client has its own share");
        // The one past its share counts against its address: two more make the cap of three.
        let more: Vec<Arc<Slot>> = (0..2).map(|_| conns.admit(addr("192.0.2.1"), false).unwrap()).collect();
        assert_eq!(conns.admit(addr("192.0.2.1"), false).err(), Some(Refused::PerAddress));
        // Full (6 open): a newcomer takes the oldest anonymous place, the one past the share.
        let newcomer = conns.admit(addr("198.51.100.1"), false).unwrap();
        assert!(held[2].evicted.is_set() && !held[0].evicted.is_set() && !held[1].evicted.is_set());
        drop((more, newcomer));
        // A share is given back when its connection closes.
        held.remove(0);
        let again = conns.admit(addr("203.0.113.1"), false).unwrap();
        again.authenticated_as("viewer");
        assert!(!again.is_anonymous(), "the closed connection's share is free again");
        drop((held, again, other));
        assert!(conns.per_client.lock().unwrap().is_empty(), "nothing kept once every connection closed");
        assert_eq!(conns.open(), 0);
    }

    #[test]
    fn an_anonymous_connection_reads_within_its_budget() {
        let conns = Arc::new(Conns::new(4, 4, 4, 64, EdgeMetrics::default()));
        let slot = conns.admit(addr("192.0.2.1"), false).unwrap();
        assert!(slot.spend(1 << 20), "no budget until one is set");
        slot.limit_anonymous_reads(100);
        assert!(slot.spend(60) && slot.spend(40));
        assert!(!slot.spend(1));
        slot.authenticated();
        assert!(slot.spend(1 << 20), "an authenticated connection reads freely");
    }
}
