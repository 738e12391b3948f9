//! The rates of the token endpoint and the page's sign-in, kept by each node in memory: attempts
//! per client address (`--auth-rate-per-ip`, counted before any credential is checked), and
//! tokens and sessions issued per client (`--issue-rate-per-client`, counted once the secret was
//! right, so that nobody without it can use up a client's rate and lock it out). Each rate is a
//! bucket of N a minute that holds at most N; [`gcra`] decides, a pure function of the time.
//!
//! Refused credentials are logged here, with the client id as given (shortened) and the
//! address, never the secret.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::address_key;
use crate::metrics::{AuthFailure, EdgeMetrics, Limit};

/// Keys a bucket map holds at most; past it, buckets that are full again are forgotten first.
const MAX_KEYS: usize = 100_000;

/// A refusal: what limit, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Throttled {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)).max(1)
    }
}

/// The generic cell rate algorithm: with `tat` the bucket's theoretical arrival time (None: a
/// full bucket), one more event at `now` is allowed (the new `tat`) or refused (how long until it
/// would be). `interval` is the time one event costs, and `burst` how many fit at once.
pub fn gcra(tat: Option<Instant>, now: Instant, interval: Duration, burst: u32) -> Result<Instant, Duration> {
    let tat = tat.map_or(now, |t| t.max(now));
    let tolerance = interval * burst.saturating_sub(1);
    let allowed_at = tat.checked_sub(tolerance).unwrap_or(now);
    if allowed_at > now {
        return Err(allowed_at - now);
    }
    Ok(tat + interval)
}

/// A bucket for each key, of `per_minute` events a minute, at most `per_minute` at once.
struct Buckets<K> {
    interval: Duration,
    burst: u32,
    tats: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq> Buckets<K> {
    fn new(per_minute: u32) -> Buckets<K> {
        let per_minute = per_minute.max(1);
        Buckets { interval: Duration::from_secs(60) / per_minute, burst: per_minute, tats: Mutex::default() }
    }

    fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut tats = self.tats.lock().unwrap();
        if tats.len() >= MAX_KEYS && !tats.contains_key(&key) {
            tats.retain(|_, tat| *tat > now);
            if tats.len() >= MAX_KEYS {
                return Err(self.interval);
            }
        }
        let tat = gcra(tats.get(&key).copied(), now, self.interval, self.burst)?;
        tats.insert(key, tat);
        Ok(())
    }

    /// Gives back one taken from `key` (what it was taken for turned out not to count).
    fn give_back(&self, key: &K) {
        if let Some(tat) = self.tats.lock().unwrap().get_mut(key) {
            *tat = tat.checked_sub(self.interval).unwrap_or(*tat);
        }
    }
}

/// The token endpoint's and the sign-in's rates.
pub struct Throttle {
    per_address: Buckets<IpAddr>,
    per_client: Buckets<String>,
    metrics: EdgeMetrics,
}

impl Throttle {
    pub fn new(auth_per_minute: u32, issue_per_minute: u32, metrics: EdgeMetrics) -> Throttle {
        Throttle { per_address: Buckets::new(auth_per_minute), per_client: Buckets::new(issue_per_minute), metrics }
    }

    /// One more attempt from `ip` (None: not from a network peer, not counted).
    pub fn attempt(&self, ip: Option<IpAddr>) -> Result<(), Throttled> {
        let Some(ip) = ip else { return Ok(()) };
        self.per_address.take(address_key(ip), Instant::now()).map_err(|retry_after| {
            self.metrics.hit(Limit::AuthRatePerIp);
            Throttled { limit: Limit::AuthRatePerIp, retry_after }
        })
    }

    /// Client credentials in HTTP Basic on the API are about to be checked: taken from `ip`'s
    /// budget of token requests first (so that Basic is no way around it for guessing a secret,
    /// however many guesses are sent at once), and given back once accepted
    /// ([`Throttle::basic_accepted`]: a script may send right ones with every call).
    pub fn try_basic(&self, ip: Option<IpAddr>) -> Result<(), Throttled> {
        self.attempt(ip)
    }

    /// The Basic credentials tried from `ip` were right: what they took is given back.
    pub fn basic_accepted(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.per_address.give_back(&address_key(ip));
        }
    }

    /// The Basic credentials tried from `ip` were refused: logged as a token endpoint's refusal
    /// is (as often as the budget lets them come).
    pub fn basic_refused(&self, client_id: &str, ip: Option<IpAddr>) {
        log_refused(AuthFailure::Api, client_id, ip);
    }

    /// One more token or session for the client `client_id`, whose secret was right.
    pub fn issue(&self, client_id: &str) -> Result<(), Throttled> {
        self.per_client.take(client_id.to_string(), Instant::now()).map_err(|retry_after| {
            self.metrics.hit(Limit::IssueRatePerClient);
            Throttled { limit: Limit::IssueRatePerClient, retry_after }
        })
    }

    /// Logs and counts credentials refused at `at`, with the client id as given and the address.
    pub fn refused(&self, at: AuthFailure, client_id: &str, ip: Option<IpAddr>) {
        self.metrics.auth_failed(at);
        log_refused(at, client_id, ip);
    }
}

fn log_refused(at: AuthFailure, client_id: &str, ip: Option<IpAddr>) {
    let client_id = shown(client_id);
    let ip = ip.map_or_else(|| "none".to_string(), |ip| ip.to_string());
    tracing::warn!(client_id, ip, at = at.as_str(), "authentication failed: wrong client id or secret");
}

/// A client id as given by anyone, fit for a log line: at most 64 characters, control characters
/// escaped.
pub fn shown(id: &str) -> String {
    shown_at_most(id, 64)
}

/// Text given by anyone, fit for a log line: at most `max` characters, control characters
/// escaped.
pub fn shown_at_most(text: &str, max: usize) -> String {
    let short: String = text.chars().take(max).collect();
    let escaped = short.escape_default().to_string();
    if text.chars().nth(max).is_some() {
        format!("{escaped}…")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_a_burst_then_the_rate() {
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        // 60 a minute: one a second, 3 at once.
        let mut tat = None;
        for i in 0..3 {
            tat = Some(gcra(tat, t0, second, 3).unwrap_or_else(|_| panic!("event {i} of the burst")));
        }
        assert_eq!(gcra(tat, t0, second, 3), Err(second), "the fourth at once waits one interval");
        let later = t0 + second;
        assert!(gcra(tat, later, second, 3).is_ok(), "one interval later, one more fits");
        let long_after = t0 + Duration::from_secs(3600);
        assert_eq!(gcra(tat, long_after, second, 3), Ok(long_after + second), "an old bucket is full again");
    }

    #[test]
    fn addresses_and_clients_have_buckets_of_their_own() {
        let m = EdgeMetrics::default();
        let t = Throttle::new(2, 1, m.clone());
        let (a, b) = (Some("192.0.2.1".parse().unwrap()), Some("192.0.2.2".parse().unwrap()));
        assert!(t.attempt(a).is_ok() && t.attempt(a).is_ok());
        let refused = t.attempt(a).unwrap_err();
        assert_eq!(refused.limit, Limit::AuthRatePerIp);
        assert!((1..=30).contains(&refused.retry_after_secs()), "{refused:?}");
        assert!(t.attempt(b).is_ok());
        assert!(t.attempt(None).is_ok());
        assert!(t.issue("c1").is_ok() && t.issue("c2").is_ok());
        assert_eq!(t.issue("c1").unwrap_err().limit, Limit::IssueRatePerClient);
        assert_eq!((m.hits(Limit::AuthRatePerIp), m.hits(Limit::IssueRatePerClient)), (1, 1));
    }

    #[test]
    fn client_ids_are_shortened_and_escaped_for_logs() {
        assert_eq!(shown("abc"), "abc");
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown(&"x".repeat(1000)).chars().count(), 65);
    }
}
