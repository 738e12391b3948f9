//! Jittered exponential backoff for reconnects and retries: the jitter keeps a fleet that lost its
//! server at the same instant from coming back at the same instant.

use std::time::Duration;

/// Delays start as a random value in `[min, min + spread)`, grow by `factor` per try, and are
/// capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f64,
    attempt: u32,
}

impl Backoff {
    /// Panics on parameters that cannot make sense; config validation guarantees `min <= max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        assert!(!min.is_zero() && min <= max, "backoff needs 0 < min <= max");
        Backoff { min, max, factor: 1.3, attempt: 0 }
    }

    /// The next delay to wait, jittered.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.min.as_secs_f64() * self.factor.powi(self.attempt.min(60) as i32);
        self.attempt = self.attempt.saturating_add(1);
        // Full jitter over [base, 5 × base) on the first tries, never above max.
        let jittered = base * (1.0 + 4.0 * unit_random());
        Duration::from_secs_f64(jittered.min(self.max.as_secs_f64()))
    }

    /// After a session that stayed up, start over from the smallest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A uniform random number in [0, 1).
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random generator failed");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert!(first >= min && first <= Duration::from_secs(5), "{first:?}");
        for _ in 0..40 {
            assert!(b.next_delay() <= max);
        }
        assert_eq!(b.next_delay(), max, "late tries sit at the cap");
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(5));
        let firsts: std::collections::BTreeSet<_> = (0..20).map(|_| Backoff::new(min, max).next_delay()).collect();
        assert!(firsts.len() > 10, "first delays are spread out, not identical: {firsts:?}");
    }

    #[test]
    #[should_panic(expected = "min <= max")]
    fn nonsense_bounds_are_refused() {
        Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
    }
}
