//! The message stream's answers, in the order their frames arrived. A
//! stored send's `SendResult` is held until a durability wait begun after
//! its write resolves: one wait covers every reply stored by then (up to
//! [`REPLY_BATCH`]), and if the flush fails the held results are rewritten
//! to `StorageUnavailable`. Everything else (refusals, errors, ephemeral
//! results) is ready at once, but still leaves in order. Recipients are
//! woken when the write is stored, not here (see
//! [`super::MessageStream::handle_stored`]).

use crate::core::storage_unavailable;
use std::collections::VecDeque;
use tern_protocol::pb::{self, relay_frame::Frame as Out};

/// Most replies released by one durability wait.
pub const REPLY_BATCH: usize = 1024;

/// Names one durability wait, so its result finds the replies it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(pub(crate) u64);

/// Where one frame's answer stands.
enum Slot {
    /// Its store operation has not come back yet.
    Pending,
    /// Stored; leaves after a durability wait begun after the write.
    Held(pb::RelayFrame),
    /// May leave.
    Ready(pb::RelayFrame),
    /// Nothing to say (an ack that was applied).
    Silent,
}

/// Replies in arrival order. Slots are numbered from the first frame on;
/// `base` is the number of the one at the front.
#[derive(Default)]
pub struct Replies {
    slots: VecDeque<Slot>,
    base: u64,
    /// Held slots no wait covers yet, oldest first.
    unsynced: VecDeque<u64>,
    /// The wait under way and the slots it covers.
    syncing: Option<(Ticket, Vec<u64>)>,
    next_ticket: u64,
}

/// A slot's number, for filling it in later.
pub type SlotId = u64;

impl Replies {
    /// Reserve the next slot for an answer still to come.
    pub fn pending(&mut self) -> SlotId {
        self.push(Slot::Pending)
    }

    /// Queue an answer that may leave as soon as those before it have.
    pub fn ready(&mut self, frame: pb::RelayFrame) {
        self.push(Slot::Ready(frame));
    }

    fn push(&mut self, slot: Slot) -> SlotId {
        let id = self.base + self.slots.len() as u64;
        self.slots.push_back(slot);
        id
    }

    fn slot(&mut self, id: SlotId) -> Option<&mut Slot> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)
    }

    /// Fill a pending slot with an answer that may leave in order.
    pub fn fill_ready(&mut self, id: SlotId, frame: pb::RelayFrame) {
        if let Some(s) = self.slot(id) {
            *s = Slot::Ready(frame);
        }
    }

    /// Fill a pending slot with nothing to send.
    pub fn fill_silent(&mut self, id: SlotId) {
        if let Some(s) = self.slot(id) {
            *s = Slot::Silent;
        }
        self.trim_silent();
    }

    /// Drop answered-with-nothing slots from the front at once: nothing
    /// would pop them while no answer is ready (a run of acks alone), and
    /// they count against the bound that pauses reading.
    fn trim_silent(&mut self) {
        while matches!(self.slots.front(), Some(Slot::Silent)) {
            self.base += 1;
            self.slots.pop_front();
        }
    }

    /// Fill a pending slot with a stored send's result, held for durability.
    pub fn fill_held(&mut self, id: SlotId, frame: pb::RelayFrame) {
        if let Some(s) = self.slot(id) {
            *s = Slot::Held(frame);
            self.unsynced.push_back(id);
        }
    }

    /// Start a durability wait if none is under way and some results are
    /// held: the caller must begin the wait now, after their writes.
    pub fn start_wait(&mut self) -> Option<Ticket> {
        if self.syncing.is_some() || self.unsynced.is_empty() {
            return None;
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        let n = self.unsynced.len().min(REPLY_BATCH);
        let covered = self.unsynced.drain(..n).collect();
        self.syncing = Some((ticket, covered));
        Some(ticket)
    }

    /// Whether a durability wait is under way.
    pub fn waiting(&self) -> bool {
        self.syncing.is_some()
    }

    /// The wait `ticket` ended. Its replies may leave; `durable` says
    /// whether the writes reached the disk: if not, each is rewritten to
    /// say so.
    pub fn finish_wait(&mut self, ticket: Ticket, durable: bool) {
        let covered = match self.syncing.take() {
            Some((t, covered)) if t == ticket => covered,
            other => {
                // Not the wait under way: a driver bug, but not a reason to
                // lose the one that is.
                self.syncing = other;
                return;
            }
        };
        for id in covered {
            let Some(slot) = self.slot(id) else { continue };
            let Slot::Held(mut frame) = std::mem::replace(slot, Slot::Silent) else {
                continue;
            };
            if !durable {
                match &mut frame.frame {
                    Some(Out::SendResult(r)) => {
                        r.seq = 0;
                        r.duplicate = false;
                        r.error = Some(storage_unavailable().into());
                    }
                    // Every target that was stored is now unknown to be so;
                    // those refused already keep their own reason.
                    Some(Out::SendManyResult(r)) => {
                        for t in r.results.iter_mut().filter(|t| t.error.is_none()) {
                            t.duplicate = false;
                            t.error = Some(storage_unavailable().into());
                        }
                    }
                    _ => {}
                }
            }
            *slot = Slot::Ready(frame);
        }
    }

    /// The next answer that may leave now, if any.
    pub fn pop_ready(&mut self) -> Option<pb::RelayFrame> {
        loop {
            match self.slots.front() {
                Some(Slot::Ready(_)) => {
                    self.base += 1;
                    if let Some(Slot::Ready(f)) = self.slots.pop_front() {
                        self.trim_silent();
                        return Some(f);
                    }
                }
                Some(Slot::Silent) => {
                    self.base += 1;
                    self.slots.pop_front();
                }
                _ => return None,
            }
        }
    }

    /// Whether an answer may leave now.
    pub fn has_ready(&self) -> bool {
        matches!(
            self.slots.iter().find(|s| !matches!(s, Slot::Silent)),
            Some(Slot::Ready(_))
        )
    }

    /// Answers queued and not covered by the wait under way; reading
    /// pauses when this reaches the stream's bound.
    pub fn queued(&self) -> usize {
        let syncing = self.syncing.as_ref().map_or(0, |(_, c)| c.len());
        self.slots.len().saturating_sub(syncing)
    }

    /// Whether every answer has left.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
