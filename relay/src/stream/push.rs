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
