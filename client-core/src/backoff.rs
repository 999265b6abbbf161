//! Reconnect delays: exponential with full jitter, so thousands of clients
//! returning after a relay restart spread out instead of arriving together.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff with full jitter between `base` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start near `base` and grow to at most `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; honours a relay's `retry_after`.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
        jittered
            .max(retry_after.unwrap_or(Duration::ZERO))
            .max(self.base / 2)
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..40 {
            let d = b.next_delay(None);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_secs(5));
        }
        assert!(b.next_delay(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        b.reset();
        assert!(b.next_delay(None) <= Duration::from_millis(100));
    }
}
