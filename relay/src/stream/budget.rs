//! Bounds on what pushing a mailbox may make the relay hold: per stream,
//! the bytes of envelopes fetched and not yet taken by QUIC (queued in the
//! machine or handed to the stream's writer); relay-wide, the same bytes
//! summed over every stream. A stream that cannot reserve room does not
//! fetch, so a peer that never reads pins at most its own stream's bound,
//! and all such peers together at most the relay-wide one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The relay-wide budget for pushes: bytes fetched for subscribers and not
/// yet written to QUIC, summed over every stream.
#[derive(Debug)]
pub struct PushBudget {
    limit: usize,
    used: AtomicUsize,
}

impl PushBudget {
    /// A budget of `limit` bytes (0: unlimited).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Reserve as many whole `unit`s as fit, at most `want` of them;
    /// returns how many were reserved (possibly 0).
    pub fn reserve_units(&self, want: usize, unit: usize) -> usize {
        if self.limit == 0 {
            self.used
                .fetch_add(want.saturating_mul(unit), Ordering::Relaxed);
            return want;
        }
        let unit = unit.max(1);
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let n = (self.limit.saturating_sub(used) / unit).min(want);
            if n == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(
                used,
                used + n * unit,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return n,
                Err(now) => used = now,
            }
        }
    }

    /// Reserve exactly `bytes` if they fit.
    pub fn try_reserve(&self, bytes: usize) -> bool {
        if self.limit == 0 {
            self.used.fetch_add(bytes, Ordering::Relaxed);
            return true;
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(bytes) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Count `bytes` whether or not they fit (what a fetch sized to fit
    /// brought, replacing its reservation).
    pub fn force(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Give back `bytes` reserved earlier.
    pub fn release(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Bytes reserved now, over every stream.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What bounds one stream's pushes.
#[derive(Debug, Clone)]
pub struct PushLimits {
    /// Most bytes of pushes one stream holds unwritten (queued in the
    /// machine or handed to its writer).
    pub stream_bytes: usize,
    /// The size a fetched envelope's frame may reach at most: fetches are
    /// sized so that this many bytes per envelope fit what is left.
    pub envelope_frame_bytes: usize,
    /// The relay-wide budget the stream draws on.
    pub relay: Arc<PushBudget>,
}

impl Default for PushLimits {
    /// Generous bounds, for tests that do not look at memory.
    fn default() -> Self {
        Self {
            stream_bytes: usize::MAX / 4,
            envelope_frame_bytes: 1,
            relay: PushBudget::new(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_come_back() {
        let b = PushBudget::new(1000);
        assert_eq!(b.reserve_units(5, 300), 3);
        assert_eq!(b.reserve_units(5, 300), 0);
        assert!(b.try_reserve(100));
        assert!(!b.try_reserve(1));
        b.release(400);
        assert_eq!(b.used(), 600);
        assert_eq!(b.reserve_units(1, 300), 1);
        let unlimited = PushBudget::new(0);
        assert_eq!(unlimited.reserve_units(7, 1 << 20), 7);
    }
}
