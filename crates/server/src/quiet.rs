//! Log lines that would repeat: one line per key (an agent) per period, however often the thing
//! happens. A rollout retrying an agent that is not connected, or a bus that is down, says so
//! once a minute per agent instead of at every tick.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The keys remembered at most; past it, keys whose period ended are forgotten.
const MAX_KEYS: usize = 10_000;

pub struct Quiet {
    period: Duration,
    /// The keys remembered at most (past it, a key not remembered is always due).
    max_keys: usize,
    last: Mutex<HashMap<String, Instant>>,
    /// When the full map was last swept of keys whose period ended: at most once a period (a
    /// storm of connects past the bound would otherwise sweep it at each one).
    swept: Mutex<Option<Instant>>,
}

impl Quiet {
    pub fn new(period: Duration) -> Quiet {
        Quiet::remembering(period, MAX_KEYS)
    }

    /// One that remembers up to `max_keys` keys.
    pub fn remembering(period: Duration, max_keys: usize) -> Quiet {
        Quiet { period, max_keys, last: Mutex::default(), swept: Mutex::default() }
    }

    /// Whether a line about `key` is due now (and, if it is, that it was written).
    pub fn due(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap();
        if last.get(key).is_some_and(|&at| now.duration_since(at) < self.period) {
            return false;
        }
        if last.len() >= self.max_keys {
            let mut swept = self.swept.lock().unwrap();
            if swept.is_none_or(|at| now.duration_since(at) >= self.period) {
                last.retain(|_, at| now.duration_since(*at) < self.period);
                *swept = Some(now);
            }
        }
        if last.len() < self.max_keys {
            last.insert(key.to_string(), now);
        }
        true
    }

    /// `text` about agent `key` at info level, once per period.
    pub fn info(&self, key: &str, text: &str) {
        if self.due(key) {
            tracing::info!(agent_id = key, "{text}");
        }
    }

    /// `text` about agent `key` at warn level, once per period.
    pub fn warn(&self, key: &str, text: &str) {
        if self.due(key) {
            tracing::warn!(agent_id = key, "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_per_period() {
        let q = Quiet::new(Duration::from_secs(60));
        assert!(q.due("a"));
        assert!(!q.due("a"), "the same key within the period");
        assert!(q.due("b"), "another key");
        let q = Quiet::new(Duration::ZERO);
        assert!(q.due("a") && q.due("a"), "a zero period lets every line through");
    }

    #[test]
    fn the_keys_it_remembers_are_bounded() {
        let q = Quiet::new(Duration::from_secs(60));
        for i in 0..MAX_KEYS + 10 {
            q.due(&i.to_string());
        }
        assert!(q.last.lock().unwrap().len() <= MAX_KEYS);
        assert!(q.due("new"), "a new key past the bound is still logged");
    }
}
