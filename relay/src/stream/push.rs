//! Pushing a mailbox to its subscribed device: what is stored first, in
//! batches of up to [`DRAIN_BATCH`] within the push window, then
//! `CaughtUp` once, then whatever a wake-up says arrived. Acks free window
//! slots. A failed fetch is retried after [`FETCH_RETRY`], by a timer the
//! driver runs, never by sleeping here.

use crate::store::MailboxId;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tern_protocol::pb;

/// Envelopes fetched from the store per batch while draining a mailbox.
pub const DRAIN_BATCH: usize = 128;
/// How long to wait before fetching again after the store failed.
pub const FETCH_RETRY: Duration = Duration::from_millis(500);

/// Fetch up to `limit` envelopes of `mailbox` after `after_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// The subscribed mailbox.
    pub mailbox: MailboxId,
    /// Highest sequence number already pushed.
    pub after_seq: u64,
    /// Most envelopes wanted.
    pub limit: usize,
}

/// What to do with a stored envelope handed over with a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// It is the next one and the window has room: push it now.
    Take,
    /// Already pushed (fetched first): drop it.
    Pushed,
    /// Not known to be the next one: read the store as for a wake-up.
    Fetch,
}

/// One subscription's push state.
pub struct Push {
    mailbox: MailboxId,
    window: usize,
    /// Pushed and not yet acked.
    in_flight: BTreeSet<u64>,
    last_seq: u64,
    caught_up: bool,
    /// The limit of the fetch under way, if one is.
    fetching: Option<usize>,
    /// The store may hold envelopes not fetched yet: set at the start, by a
    /// wake-up, and by a fetch that came back full. Cleared only when a
    /// fetch is asked for, so a wake-up while the window is shut is kept
    /// until acks open it.
    dirty: bool,
    retry_at: Option<Instant>,
}

impl Push {
    /// Start pushing `mailbox` with at most `window` envelopes unacked.
    pub fn new(mailbox: MailboxId, window: usize) -> Self {
        Self {
            mailbox,
            window,
            in_flight: BTreeSet::new(),
            last_seq: 0,
            caught_up: false,
            fetching: None,
            dirty: true,
            retry_at: None,
        }
    }

    /// The mailbox pushed.
    pub fn mailbox(&self) -> MailboxId {
        self.mailbox
    }

    /// Whether a fetch is due, were there room to queue what it brings.
    pub fn wants_fetch(&self) -> bool {
        self.fetching.is_none()
            && self.dirty
            && self.retry_at.is_none()
            && self.in_flight.len() < self.window
    }

    /// The next fetch to run, if one is due: `queue_room` is how many more
    /// envelopes the stream's outgoing queue should take.
    pub fn poll_fetch(&mut self, queue_room: usize) -> Option<Fetch> {
        let room = self.window.saturating_sub(self.in_flight.len());
        if self.fetching.is_some()
            || !self.dirty
            || self.retry_at.is_some()
            || room == 0
            || queue_room == 0
        {
            return None;
        }
        let limit = room.min(DRAIN_BATCH).min(queue_room);
        self.dirty = false;
        self.fetching = Some(limit);
        Some(Fetch {
            mailbox: self.mailbox,
            after_seq: self.last_seq,
            limit,
        })
    }

    /// A fetch came back: returns the frames to push, in order.
    pub fn fetched(
        &mut self,
        now: Instant,
        result: Result<Vec<pb::Envelope>, tern_protocol::WireError>,
        out: &mut impl Extend<pb::RelayFrame>,
    ) {
        let Some(limit) = self.fetching.take() else {
            return;
        };
        let batch = match result {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("fetch failed: {e}");
                self.retry_at = Some(now + FETCH_RETRY);
                self.dirty = true;
                return;
            }
        };
        let full = batch.len() >= limit;
        for env in batch {
            self.last_seq = self.last_seq.max(env.seq);
            self.in_flight.insert(env.seq);
            out.extend(Some(pb::RelayFrame::of(pb::relay_frame::Frame::Envelope(
                env,
            ))));
        }
        if full {
            self.dirty = true;
        } else if !self.caught_up {
            self.caught_up = true;
            out.extend(Some(pb::RelayFrame::of(pb::relay_frame::Frame::CaughtUp(
                pb::CaughtUp {},
            ))));
        }
    }

    /// A stored envelope `seq` was handed over with a wake-up. It may be
    /// pushed without reading the store only when nothing could come
    /// before it unseen: the mailbox was drained (`CaughtUp` sent), no
    /// fetch is under way or due, and it directly follows the last one
    /// pushed (sequence numbers are assigned one by one per mailbox, so a
    /// gap means another envelope is stored that was not pushed yet).
    pub fn offer(&self, seq: u64) -> Offer {
        if seq <= self.last_seq {
            Offer::Pushed
        } else if self.caught_up
            && !self.dirty
            && self.fetching.is_none()
            && self.retry_at.is_none()
            && seq == self.last_seq + 1
            && self.in_flight.len() < self.window
        {
            Offer::Take
        } else {
            Offer::Fetch
        }
    }

    /// The envelope `seq`, offered as [`Offer::Take`], was queued to push.
    pub fn took(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
        self.in_flight.insert(seq);
    }

    /// Something new is stored for the mailbox.
    pub fn woken(&mut self) {
        self.dirty = true;
    }

    /// These envelopes were acked: their window slots are free.
    pub fn acked(&mut self, seqs: &[u64]) {
        for s in seqs {
            self.in_flight.remove(s);
        }
    }

    /// When the retry timer fires, if one is set.
    pub fn timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Time has moved to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(window: usize) -> Push {
        let mut p = Push::new([1; 16], window);
        let f = p.poll_fetch(10).unwrap();
        let env = |seq| pb::Envelope {
            seq,
            ..Default::default()
        };
        let mut out = Vec::new();
        p.fetched(Instant::now(), Ok(vec![env(4), env(5)]), &mut out);
        assert_eq!(f.limit, window.min(10));
        p
    }

    #[test]
    fn only_the_next_envelope_of_a_drained_mailbox_is_taken() {
        let mut p = drained(3);
        assert_eq!(p.offer(5), Offer::Pushed, "already pushed");
        assert_eq!(p.offer(7), Offer::Fetch, "6 is stored and not pushed");
        assert_eq!(p.offer(6), Offer::Take);
        p.took(6);
        assert_eq!(p.offer(7), Offer::Fetch, "the window (3) is full");
        p.acked(&[4]);
        assert_eq!(p.offer(7), Offer::Take);
        p.woken();
        assert_eq!(p.offer(8), Offer::Fetch, "a wake-up is owed a fetch first");
    }

    #[test]
    fn nothing_is_taken_before_the_mailbox_is_drained_or_while_fetching() {
        let mut p = Push::new([1; 16], 10);
        assert_eq!(p.offer(1), Offer::Fetch, "not drained yet");
        let _ = p.poll_fetch(10);
        assert_eq!(p.offer(1), Offer::Fetch, "a fetch is under way");
    }
}
