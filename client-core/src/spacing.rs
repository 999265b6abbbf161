//! Keeps a device's sends apart in time from its authentication and token
//! minting, so a relay that sees both cannot pair them by timing: "mailbox
//! B authenticated (or minted a token) and, milliseconds later, someone sent
//! to A" would tie B to the sender, whatever sockets were used.
//!
//! Every authenticated connection and every send connection a client opens
//! goes through one [`Spacing`] (the [`crate::transport::Dialer`]'s): a send
//! waits until a fresh random delay has passed since the last
//! authentication, and an authentication waits the same way after the last
//! send. The delay is drawn anew each time from a bounded range (default
//! 300 ms to 3 s); tests and scripts may narrow it
//! ([`crate::Client::set_send_spacing`], or `TERN_SEND_SPACING_MS` for
//! the `tern` binary). Zero turns spacing off.

use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default shortest gap between an authentication and a send.
pub const DEFAULT_MIN: Duration = Duration::from_millis(300);
/// The default longest gap.
pub const DEFAULT_MAX: Duration = Duration::from_secs(3);

/// When the last authentication and the last send happened, and the range
/// the gap between them is drawn from. Clones share the record.
#[derive(Clone, Debug)]
pub struct Spacing {
    inner: Arc<Mutex<Record>>,
}

#[derive(Debug)]
struct Record {
    min: Duration,
    max: Duration,
    last_auth: Option<Instant>,
    last_send: Option<Instant>,
}

impl Default for Spacing {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Record {
                min: DEFAULT_MIN,
                max: DEFAULT_MAX,
                last_auth: None,
                last_send: None,
            })),
        }
    }
}

/// How long to wait at `now` so that at least `gap` separates this event
/// from the last one of the other kind (at `last`).
pub fn wait_needed(now: Instant, last: Option<Instant>, gap: Duration) -> Duration {
    match last {
        Some(t) => (t + gap).saturating_duration_since(now),
        None => Duration::ZERO,
    }
}

impl Spacing {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Draw gaps from `min..=max` from now on (`max` below `min` is taken
    /// as `min`; both zero turn spacing off).
    pub fn set_range(&self, min: Duration, max: Duration) {
        let mut r = self.record();
        r.min = min;
        r.max = max.max(min);
    }

    fn gap(r: &Record) -> Duration {
        if r.max.is_zero() {
            return Duration::ZERO;
        }
        let (lo, hi) = (r.min.as_millis() as u64, r.max.as_millis() as u64);
        Duration::from_millis(rand::thread_rng().gen_range(lo..=hi))
    }

    /// A delay drawn from the current range (zero when spacing is off):
    /// how long the running client holds receipts after a fetch, so they
    /// do not answer each push at once.
    pub fn draw(&self) -> Duration {
        Self::gap(&self.record())
    }

    /// Wait until a send may go, and record it as the last send.
    pub async fn before_send(&self) {
        self.wait(|r| r.last_auth, |r, t| r.last_send = Some(t))
            .await;
    }

    /// Wait until an authentication (or a token minted on it) may go, and
    /// record it as the last authentication.
    pub async fn before_auth(&self) {
        self.wait(|r| r.last_send, |r, t| r.last_auth = Some(t))
            .await;
    }

    /// Note that an authenticated connection was just used (a token was
    /// minted, say): sends keep their distance from this moment too.
    pub fn note_auth(&self) {
        self.record().last_auth = Some(Instant::now());
    }

    async fn wait(&self, other: fn(&Record) -> Option<Instant>, mark: fn(&mut Record, Instant)) {
        // The slot is taken under the lock, before sleeping: an operation of
        // the other kind that starts meanwhile keeps its distance from the
        // moment this one will go, not from when it began waiting.
        let pause = {
            let mut r = self.record();
            let now = Instant::now();
            let pause = wait_needed(now, other(&r), Self::gap(&r));
            mark(&mut r, now + pause);
            pause
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_covers_the_gap_since_the_other_kind() {
        let t0 = Instant::now();
        let gap = Duration::from_millis(500);
        assert_eq!(wait_needed(t0, None, gap), Duration::ZERO);
        assert_eq!(wait_needed(t0 + gap * 2, Some(t0), gap), Duration::ZERO);
        assert_eq!(
            wait_needed(t0 + Duration::from_millis(200), Some(t0), gap),
            Duration::from_millis(300)
        );
    }

    #[tokio::test]
    async fn a_send_after_an_authentication_waits_within_the_range() {
        let s = Spacing::default();
        s.set_range(Duration::from_millis(40), Duration::from_millis(80));
        s.before_auth().await;
        let t = Instant::now();
        s.before_send().await;
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(35), "{waited:?}");
        // And an authentication after that send waits too.
        let t = Instant::now();
        s.before_auth().await;
        assert!(t.elapsed() >= Duration::from_millis(35));
        // Two sends in a row do not wait for each other.
        s.set_range(Duration::from_millis(40), Duration::from_millis(80));
        tokio::time::sleep(Duration::from_millis(90)).await;
        let t = Instant::now();
        s.before_send().await;
        s.before_send().await;
        assert!(t.elapsed() < Duration::from_millis(35));
    }

    #[tokio::test]
    async fn zero_turns_it_off() {
        let s = Spacing::default();
        s.set_range(Duration::ZERO, Duration::ZERO);
        s.before_auth().await;
        let t = Instant::now();
        s.before_send().await;
        assert!(t.elapsed() < Duration::from_millis(20));
    }
}
