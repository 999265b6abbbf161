//! One relay message stream (kind byte [`tern_protocol::STREAM_MESSAGES`])
//! as a state machine without I/O, the way quinn-proto's `Connection` is
//! driven by quinn. Every rule of the stream lives here: replies leave in
//! arrival order, a stored send's result only after a durability wait begun
//! after its write (one wait per batch), results rewritten to
//! `StorageUnavailable` after a failed flush, over-rate frames, the push
//! window, the drain → `CaughtUp` → wake loop, one subscription per
//! connection, ephemeral pass-through, and bounded queues.
//!
//! The driver ([`crate::connection`]) feeds it events (`handle_*`, each
//! with the time where time matters), then runs what [`MessageStream::poll`]
//! asks for (store work through the core off the async workers, durability
//! waits, fetches, hub calls), writes what [`MessageStream::poll_transmit`]
//! gives, reads frames only while [`MessageStream::wants_frames`], and calls
//! [`MessageStream::handle_timeout`] at [`MessageStream::poll_timeout`].
//! The machine never touches a store, a socket or a clock, so its tests run
//! without any.

mod apply;
mod budget;
mod push;
mod replies;

pub use apply::{run_store, try_store_now};
pub use budget::{PushBudget, PushLimits};
pub use push::{Fetch, DRAIN_BATCH, FETCH_RETRY};
pub use replies::{Ticket, REPLY_BATCH};

use crate::conn_state::ConnState;
use crate::core::{Accepted, SentMany};
use crate::store::{MailboxId, StoreError};
use bytes::Bytes;
use prost::Message;
use push::Push;
use replies::{Replies, SlotId};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_protocol::frame::FrameError;
use tern_protocol::io::ReadFrameError;
use tern_protocol::pb::{self, client_frame::Frame as In, relay_frame::Frame as Out};
use tern_protocol::{limits, ErrorCode, WireError};

/// Answers queued (not counting those in the durability wait under way)
/// before the stream stops asking for frames.
pub const DURABILITY_QUEUE: usize = 1024;
/// Frames the stream queues for writing before it stops fetching and
/// stops taking ephemeral envelopes.
pub const PUSH_QUEUE: usize = 256;
/// Most store operations handed out in one batch.
pub const STORE_BATCH: usize = 256;
/// Longest pause of reading after a frame over the connection's rate.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// One piece of store work, run through the core in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Check and store (or pass on) a send: `RelayCore::send`.
    Send(pb::Send),
    /// Delete acknowledged envelopes: `RelayCore::ack`.
    Ack(Vec<u64>),
    /// Check and store (or pass on) a multi-recipient send:
    /// `RelayCore::send_many`.
    SendMany(pb::SendMany),
}

/// What one [`StoreOp`] came to, in the machine's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOutcome {
    /// A send was accepted.
    Sent {
        /// The send's request id.
        request_id: u64,
        /// Stored, or ephemeral.
        accepted: Accepted,
        /// For an ephemeral send, the envelope to pass to the recipient.
        ephemeral: Option<pb::Envelope>,
    },
    /// A send was refused.
    SendRefused {
        /// The send's request id.
        request_id: u64,
        /// Why.
        error: WireError,
    },
    /// An ack was applied.
    Acked {
        /// The acknowledged sequence numbers, handed back.
        seqs: Vec<u64>,
    },
    /// An ack was refused.
    AckRefused(WireError),
    /// A multi-recipient send was taken (some targets may be refused).
    SentMany {
        /// The send's request id.
        request_id: u64,
        /// Per-target results and the mailboxes it reached.
        sent: SentMany,
        /// For an ephemeral send, the envelope to pass to each recipient.
        ephemeral: Option<pb::Envelope>,
    },
    /// A multi-recipient send was refused as a whole.
    SendManyRefused {
        /// The send's request id.
        request_id: u64,
        /// Why.
        error: WireError,
    },
}

/// Which answer a queued store operation owes, should its outcome go
/// missing.
#[derive(Debug, Clone, Copy)]
enum Owed {
    Send(u64),
    SendMany(u64),
    Ack,
}

impl Owed {
    fn for_op(op: &StoreOp) -> Self {
        match op {
            StoreOp::Send(s) => Self::Send(s.request_id),
            StoreOp::SendMany(s) => Self::SendMany(s.request_id),
            StoreOp::Ack(_) => Self::Ack,
        }
    }
}

/// What the machine asks its driver to do, from [`MessageStream::poll`].
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Subscribe to the mailbox in the hub: its wake-ups come back as
    /// [`MessageStream::handle_wake`], its ephemeral envelopes as
    /// [`MessageStream::handle_ephemeral`].
    Subscribe(MailboxId),
    /// Drop the hub subscription: the stream is ending.
    Unsubscribe,
    /// Run these operations in order through the core, off the async
    /// workers, and hand one outcome each to
    /// [`MessageStream::handle_stored`]. One batch is out at a time.
    Store(Vec<StoreOp>),
    /// Begin a durability wait now and hand its result to
    /// [`MessageStream::handle_durable`].
    AwaitDurable(Ticket),
    /// Stored sends reached this mailbox: wake its subscribers.
    Notify(MailboxId),
    /// A stored multi-recipient send reached these mailboxes: wake their
    /// subscribers and hand each the envelope as stored there, so one that
    /// has pushed everything before it need not fetch it
    /// ([`MessageStream::handle_handed`]). One output for the whole send,
    /// so the hub is locked once for all its members.
    Hand {
        /// Each recipient mailbox with the envelope's sequence number there.
        targets: Vec<(MailboxId, u64)>,
        /// The envelope, with `seq` 0.
        envelope: pb::Envelope,
    },
    /// Pass an ephemeral envelope to the mailbox's subscribers.
    Ephemeral {
        /// The recipient mailbox.
        mailbox: MailboxId,
        /// The envelope.
        envelope: pb::Envelope,
    },
    /// Fetch envelopes and hand them to [`MessageStream::handle_fetched`].
    Fetch(Fetch),
    /// Nothing more will be asked or written: finish the stream.
    Close,
}

/// A message stream's state.
pub struct MessageStream {
    conn: Arc<ConnState>,
    default_window: u32,
    replies: Replies,
    /// Store operations not yet handed out, and their answers' slots
    /// (with the request id of a send).
    ops: Vec<StoreOp>,
    op_slots: VecDeque<(SlotId, Owed)>,
    /// Slots of the batch out with the driver.
    batch_slots: Vec<(SlotId, Owed)>,
    store_busy: bool,
    push: Option<Push>,
    /// Envelopes and `CaughtUp` to write, beside the replies.
    pushes: VecDeque<pb::RelayFrame>,
    /// Outputs waiting for [`Self::poll`].
    events: VecDeque<Output>,
    paused_until: Option<Instant>,
    /// False once the peer finished sending or the read failed.
    reading: bool,
    /// Alternates writes between replies and pushes.
    replies_next: bool,
    closed: bool,
    /// What bounds the pushes' bytes, per stream and relay-wide.
    limits: PushLimits,
    /// Bytes of the frames in `pushes`.
    queued_bytes: usize,
    /// Bytes of push frames handed out and not yet reported written.
    unwritten_bytes: usize,
    /// Bytes reserved in the relay-wide budget for the fetch under way.
    fetch_reserved: usize,
    /// A fetch was due but the relay-wide budget had no room.
    starved: bool,
    /// The subscription was replaced by a newer one on the same mailbox.
    replaced: bool,
}

impl MessageStream {
    /// A new stream on a connection whose shared state is `conn`;
    /// `default_window` is the push window granted to a subscription that
    /// asks for none.
    pub fn new(conn: Arc<ConnState>, default_window: u32) -> Self {
        Self {
            conn,
            default_window,
            replies: Replies::default(),
            ops: Vec::new(),
            op_slots: VecDeque::new(),
            batch_slots: Vec::new(),
            store_busy: false,
            push: None,
            pushes: VecDeque::new(),
            events: VecDeque::new(),
            paused_until: None,
            reading: true,
            replies_next: true,
            closed: false,
            limits: PushLimits::default(),
            queued_bytes: 0,
            unwritten_bytes: 0,
            fetch_reserved: 0,
            starved: false,
            replaced: false,
        }
    }

    /// The same stream with its pushes bounded by `limits`.
    pub fn with_limits(mut self, limits: PushLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Bytes of pushes this stream holds unwritten, or reserved for the
    /// fetch under way.
    pub fn push_bytes(&self) -> usize {
        self.queued_bytes + self.unwritten_bytes + self.fetch_reserved
    }

    /// Room left in the stream's own bound, in bytes.
    fn byte_room(&self) -> usize {
        self.limits.stream_bytes.saturating_sub(self.push_bytes())
    }

    /// Queue a push frame of `len` bytes already reserved relay-wide.
    fn queue_push(&mut self, frame: pb::RelayFrame, len: usize) {
        self.queued_bytes += len;
        self.pushes.push_back(frame);
    }

    /// One frame body arrived at `now`. Every frame counts against the
    /// connection's rate, garbage too; over it, reading pauses.
    pub fn handle_frame(&mut self, now: Instant, body: Bytes) {
        let limited = self.conn.rate.check_at(now).err();
        if let Some(e) = &limited {
            let pause = Duration::from_millis(e.retry_after_ms.max(1)).min(MAX_PAUSE);
            self.paused_until = Some(now + pause);
        }
        let frame = match pb::ClientFrame::decode(body) {
            Ok(pb::ClientFrame { frame: Some(f) }) => f,
            Ok(pb::ClientFrame { frame: None }) => {
                let e = WireError::new(ErrorCode::Unsupported, "unknown or empty frame");
                self.replies.ready(pb::RelayFrame::error(e));
                return;
            }
            Err(e) => {
                let e = FrameError::Malformed(e.to_string());
                let e = WireError::new(ErrorCode::Malformed, e.to_string());
                self.replies.ready(pb::RelayFrame::error(e));
                return;
            }
        };
        // A multi-recipient send costs the connection's rate one unit per
        // target (the frame itself paid one above), so its token checks
        // cannot outrun what single sends could ask of the store.
        let limited = match (&frame, limited) {
            (In::SendMany(m), None) if m.targets.len() > 1 => {
                let extra = u32::try_from(m.targets.len() - 1).unwrap_or(u32::MAX);
                let e = self.conn.rate.check_n_at(now, extra).err();
                if let Some(e) = &e {
                    let pause = Duration::from_millis(e.retry_after_ms.max(1)).min(MAX_PAUSE);
                    self.paused_until = Some(now + pause);
                }
                e
            }
            (_, limited) => limited,
        };
        match (frame, limited) {
            // Over the rate a send is refused (its sender retries later);
            // acks and subscriptions are still applied, since dropping an
            // ack would only shrink the window and redeliver.
            (In::Send(s), Some(e)) => self
                .replies
                .ready(pb::RelayFrame::send_result(s.request_id, Err(e))),
            (In::Send(s), None) => self.queue_op(StoreOp::Send(s)),
            // Refused whole over the connection's rate; otherwise the core
            // also charges each target's token its own send.
            (In::SendMany(s), Some(e)) => self
                .replies
                .ready(pb::RelayFrame::send_many_result(s.request_id, Err(e))),
            (In::SendMany(s), None) => self.queue_op(StoreOp::SendMany(s)),
            (In::Ack(a), _) => self.queue_op(StoreOp::Ack(a.seqs)),
            (In::Subscribe(sub), _) => self.subscribe(sub.window),
        }
    }

    fn queue_op(&mut self, op: StoreOp) {
        let slot = self.replies.pending();
        self.op_slots.push_back((slot, Owed::for_op(&op)));
        self.ops.push(op);
    }

    fn subscribe(&mut self, window: u32) {
        let Some(mailbox) = self.conn.mailbox() else {
            let e = WireError::new(ErrorCode::NotAuthenticated, "authenticate first");
            self.replies.ready(pb::RelayFrame::error(e));
            return;
        };
        if self.push.is_some() {
            // Already subscribed on this stream: nothing changes.
            return;
        }
        if !self.conn.claim_subscription() {
            let e = WireError::new(
                ErrorCode::Unsupported,
                "this connection is already subscribed on another stream",
            );
            self.replies.ready(pb::RelayFrame::error(e));
            return;
        }
        let size = match window {
            0 => self.default_window,
            n => n.min(limits::MAX_PUSH_WINDOW),
        };
        self.push = Some(Push::new(mailbox, size as usize));
        self.events.push_back(Output::Subscribe(mailbox));
    }

    /// The peer finished its side of the stream: answer what arrived, then
    /// close.
    pub fn handle_eof(&mut self) {
        self.reading = false;
        self.stop_push();
    }

    /// Reading failed. A bad frame is answered in order; after an oversize
    /// length the stream cannot be resynced, so either way reading ends.
    pub fn handle_read_error(&mut self, e: &ReadFrameError) {
        let w = match e {
            ReadFrameError::Frame(FrameError::TooLarge { size, max }) => Some(WireError::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {size} bytes exceeds the maximum of {max}"),
            )),
            ReadFrameError::Frame(FrameError::Malformed(m)) => {
                Some(WireError::new(ErrorCode::Malformed, m.clone()))
            }
            _ => None,
        };
        if let Some(w) = w {
            self.replies.ready(pb::RelayFrame::error(w));
        }
        self.handle_eof();
    }

    fn stop_push(&mut self) {
        if self.push.take().is_some() {
            self.pushes.clear();
            self.limits
                .relay
                .release(self.queued_bytes + self.fetch_reserved);
            self.queued_bytes = 0;
            self.fetch_reserved = 0;
            self.conn.release_subscription();
            self.events.push_back(Output::Unsubscribe);
        }
    }

    /// The store batch out with the driver came back: one outcome per
    /// operation, in order. A missing outcome is answered as a storage
    /// failure rather than left hanging.
    pub fn handle_stored(&mut self, outcomes: Vec<StoreOutcome>) {
        self.store_busy = false;
        let mut outcomes = outcomes.into_iter();
        let slots = std::mem::take(&mut self.batch_slots);
        // Mailboxes this batch already woke with a plain wake-up.
        let mut woken = HashSet::new();
        for &(slot, owed) in &slots {
            match outcomes.next() {
                Some(StoreOutcome::Sent {
                    request_id,
                    accepted,
                    ephemeral,
                }) => match accepted {
                    Accepted::Stored { mailbox, .. } => {
                        // The sender learns that its envelope is stored and
                        // nothing else: the seq would count the recipient's
                        // mail, and `duplicate` would tell a re-send whether
                        // the recipient has acked yet (threat-model.md).
                        let frame = pb::RelayFrame::send_result(request_id, Ok((0, false)));
                        self.replies.fill_held(slot, frame);
                        self.wake(mailbox, &mut woken);
                    }
                    Accepted::Ephemeral { mailbox } => {
                        if let Some(envelope) = ephemeral {
                            self.events
                                .push_back(Output::Ephemeral { mailbox, envelope });
                        }
                        self.replies.fill_ready(
                            slot,
                            pb::RelayFrame::send_result(request_id, Ok((0, false))),
                        );
                    }
                    // A blocked sender's send: the same answer on the same
                    // path as its kind (a stored one waits for the same
                    // durability batch), and nobody to wake.
                    Accepted::Discarded { ephemeral } => {
                        let frame = pb::RelayFrame::send_result(request_id, Ok((0, false)));
                        if ephemeral {
                            self.replies.fill_ready(slot, frame);
                        } else {
                            self.replies.fill_held(slot, frame);
                        }
                    }
                },
                Some(StoreOutcome::SendRefused { request_id, error }) => {
                    self.replies
                        .fill_ready(slot, pb::RelayFrame::send_result(request_id, Err(error)));
                }
                Some(StoreOutcome::Acked { seqs }) => {
                    if let Some(p) = &mut self.push {
                        p.acked(&seqs);
                    }
                    self.replies.fill_silent(slot);
                }
                Some(StoreOutcome::AckRefused(e)) => {
                    tracing::debug!("ack refused: {e}");
                    self.replies.fill_ready(slot, pb::RelayFrame::error(e));
                }
                Some(StoreOutcome::SentMany {
                    request_id,
                    sent,
                    ephemeral,
                }) => self.sent_many(slot, request_id, sent, ephemeral, &mut woken),
                Some(StoreOutcome::SendManyRefused { request_id, error }) => {
                    self.replies.fill_ready(
                        slot,
                        pb::RelayFrame::send_many_result(request_id, Err(error)),
                    );
                }
                None => {
                    let e = crate::core::storage_unavailable();
                    let frame = match owed {
                        Owed::Send(id) => pb::RelayFrame::send_result(id, Err(e)),
                        Owed::SendMany(id) => pb::RelayFrame::send_many_result(id, Err(e)),
                        Owed::Ack => pb::RelayFrame::error(e),
                    };
                    self.replies.fill_ready(slot, frame);
                }
            }
        }
        // Kept for the next batch's slots.
        self.batch_slots = slots;
        self.batch_slots.clear();
    }

    /// A multi-recipient send came back: if it stored anything, its answer
    /// waits for one durability wait, and every mailbox it reached is woken
    /// now (handed the envelope where it is new there); an ephemeral one is
    /// passed to each recipient at once.
    fn sent_many(
        &mut self,
        slot: SlotId,
        request_id: u64,
        sent: SentMany,
        ephemeral: Option<pb::Envelope>,
        woken: &mut HashSet<MailboxId>,
    ) {
        if let Some(envelope) = ephemeral {
            for mailbox in sent.ephemeral {
                self.events.push_back(Output::Ephemeral {
                    mailbox,
                    envelope: envelope.clone(),
                });
            }
        }
        let frame = pb::RelayFrame::send_many_result(request_id, Ok(sent.results));
        if sent.stored.is_empty() && sent.discarded == 0 {
            self.replies.fill_ready(slot, frame);
            return;
        }
        self.replies.fill_held(slot, frame);
        match sent.handoff {
            Some(h) if h.seqs.len() == sent.stored.len() => {
                let mut targets = Vec::with_capacity(h.seqs.len());
                for (mailbox, seq) in sent.stored.into_iter().zip(h.seqs) {
                    match seq {
                        // Not marked woken: a plain wake of the same
                        // mailbox after it may be for more.
                        Some(seq) => targets.push((mailbox, seq)),
                        None => self.wake(mailbox, woken),
                    }
                }
                if !targets.is_empty() {
                    self.events.push_back(Output::Hand {
                        targets,
                        envelope: h.envelope,
                    });
                }
            }
            _ => sent.stored.into_iter().for_each(|m| self.wake(m, woken)),
        }
    }

    /// Wake `mailbox`'s subscribers: a write to it is stored. Not waiting
    /// for the write's flush costs nothing in safety: if the relay dies
    /// before it, the sender got no answer and sends again, and the
    /// recipient drops the repeat by message id (protocol.md).
    fn wake(&mut self, mailbox: MailboxId, woken: &mut HashSet<MailboxId>) {
        if woken.insert(mailbox) {
            self.events.push_back(Output::Notify(mailbox));
        }
    }

    /// The durability wait `ticket` ended with `result`.
    pub fn handle_durable(&mut self, ticket: Ticket, result: Result<(), StoreError>) {
        if let Err(e) = &result {
            tracing::warn!("sends not durable: {e}");
        }
        self.replies.finish_wait(ticket, result.is_ok());
    }

    /// A fetch came back at `now`.
    pub fn handle_fetched(&mut self, now: Instant, result: Result<Vec<pb::Envelope>, WireError>) {
        let reserved = std::mem::take(&mut self.fetch_reserved);
        let Some(p) = &mut self.push else {
            self.limits.relay.release(reserved);
            return;
        };
        let mut frames = Vec::new();
        p.fetched(now, result, &mut frames);
        // What the fetch brought replaces what was reserved for it: its
        // envelopes were sized to fit, so this stays within the bounds
        // (a frame of CaughtUp aside).
        let len: usize = frames.iter().map(Message::encoded_len).sum();
        self.limits.relay.release(reserved);
        self.limits.relay.force(len);
        for f in frames {
            let n = f.encoded_len();
            self.queue_push(f, n);
        }
    }

    /// The subscribed mailbox has something new stored.
    pub fn handle_wake(&mut self) {
        if let Some(p) = &mut self.push {
            p.woken();
        }
    }

    /// A stored envelope handed over with a wake-up
    /// ([`Output::Hand`] on some stream). Pushed as it is when it is the
    /// next one this subscription would fetch and there is room for it in
    /// the window and the push bounds; one already pushed is dropped; any
    /// other is a plain wake-up, and the store is read as usual.
    pub fn handle_handed(&mut self, env: pb::Envelope) {
        let seq = env.seq;
        let Some(p) = &mut self.push else { return };
        match p.offer(seq) {
            push::Offer::Pushed => {}
            push::Offer::Fetch => p.woken(),
            push::Offer::Take => {
                let frame = pb::RelayFrame::of(Out::Envelope(env));
                let len = frame.encoded_len();
                // Within the same bounds a fetch is held to; over them,
                // the store is read once there is room.
                let fits = self.pushes.len() < PUSH_QUEUE
                    && len <= self.byte_room()
                    && self.limits.relay.try_reserve(len);
                let Some(p) = &mut self.push else { return };
                if fits {
                    p.took(seq);
                    self.queue_push(frame, len);
                } else {
                    p.woken();
                }
            }
        }
    }

    /// An ephemeral envelope for the subscribed mailbox: pushed as it is,
    /// outside the window, never stored.
    pub fn handle_ephemeral(&mut self, env: pb::Envelope) {
        if self.push.is_none() {
            return;
        }
        let frame = pb::RelayFrame::of(Out::Envelope(env));
        let len = frame.encoded_len();
        // Over either bound an ephemeral envelope is dropped, as the hub
        // drops one for a backed-up subscriber.
        if len <= self.byte_room() && self.limits.relay.try_reserve(len) {
            self.queue_push(frame, len);
        }
    }

    /// The writer wrote `bytes` of push frames to QUIC: that room is free
    /// again, here and relay-wide.
    pub fn handle_written(&mut self, bytes: usize) {
        let bytes = bytes.min(self.unwritten_bytes);
        self.unwritten_bytes -= bytes;
        self.limits.relay.release(bytes);
    }

    /// A newer subscription to the same mailbox replaced this one: the
    /// peer is told so, pushing stops, and the stream finishes once what
    /// it already took is answered.
    pub fn handle_replaced(&mut self) {
        if self.push.is_none() || self.replaced {
            return;
        }
        self.replaced = true;
        let e = WireError::new(
            ErrorCode::SubscriptionReplaced,
            "a newer subscription to this mailbox replaced this one",
        );
        self.stop_push();
        self.replies.ready(pb::RelayFrame::error(e));
        self.reading = false;
    }

    /// Time moved to `now`: timers due by then fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        if let Some(p) = &mut self.push {
            p.handle_timeout(now);
        }
    }

    /// The next thing the driver must do, if any.
    pub fn poll(&mut self) -> Option<Output> {
        // The flush first: recipients woken below are pushed while it runs.
        if let Some(t) = self.replies.start_wait() {
            return Some(Output::AwaitDurable(t));
        }
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        if !self.store_busy && !self.ops.is_empty() {
            let n = self.ops.len().min(STORE_BATCH);
            let batch: Vec<StoreOp> = if n == self.ops.len() {
                // Sized for the next batch, so it does not regrow op by op.
                std::mem::replace(&mut self.ops, Vec::with_capacity(n))
            } else {
                self.ops.drain(..n).collect()
            };
            self.batch_slots.clear();
            self.batch_slots.extend(self.op_slots.drain(..n));
            self.store_busy = true;
            return Some(Output::Store(batch));
        }
        self.starved = false;
        if self.push.as_ref().is_some_and(Push::wants_fetch) {
            // Sized to what fits the stream's own bound and the relay-wide
            // budget, counting every envelope at its largest.
            let unit = self.limits.envelope_frame_bytes.max(1);
            let room = PUSH_QUEUE
                .saturating_sub(self.pushes.len())
                .min(self.byte_room() / unit);
            let mut granted = if room == 0 {
                0
            } else {
                self.limits.relay.reserve_units(room.min(DRAIN_BATCH), unit)
            };
            // A stream holding nothing may always fetch one envelope, so
            // streams that never read cannot starve every other
            // subscriber by spending the relay-wide budget; each can go
            // over it by one envelope at most, once.
            if room > 0 && granted == 0 && self.push_bytes() == 0 {
                self.limits.relay.force(unit);
                granted = 1;
            }
            self.starved = room > 0 && granted == 0;
            let fetch = self.push.as_mut().and_then(|p| p.poll_fetch(granted));
            let used = fetch.map_or(0, |f| f.limit);
            self.limits
                .relay
                .release(granted.saturating_sub(used) * unit);
            if let Some(f) = fetch {
                self.fetch_reserved = used * unit;
                return Some(Output::Fetch(f));
            }
        }
        if !self.closed && self.is_drained() {
            self.closed = true;
            return Some(Output::Close);
        }
        None
    }

    /// Reading has ended and every answer has been handed out.
    fn is_drained(&self) -> bool {
        !self.reading
            && !self.store_busy
            && self.ops.is_empty()
            && self.replies.is_empty()
            && self.events.is_empty()
    }

    /// The next frame to write, if one may leave now. Replies and pushes
    /// take turns, so neither starves the other.
    pub fn poll_transmit(&mut self) -> Option<pb::RelayFrame> {
        self.replies_next = !self.replies_next;
        if self.replies_next {
            self.replies.pop_ready().or_else(|| self.pop_push())
        } else {
            self.pop_push().or_else(|| self.replies.pop_ready())
        }
    }

    /// The next push frame; its bytes now count as handed to the writer
    /// until [`Self::handle_written`].
    fn pop_push(&mut self) -> Option<pb::RelayFrame> {
        let f = self.pushes.pop_front()?;
        let len = f.encoded_len();
        self.queued_bytes = self.queued_bytes.saturating_sub(len);
        self.unwritten_bytes += len;
        Some(f)
    }

    /// Whether `frame` is a push (its bytes count against the push bounds
    /// until written); replies never are.
    pub fn is_push(frame: &pb::RelayFrame) -> bool {
        matches!(frame.frame, Some(Out::Envelope(_) | Out::CaughtUp(_)))
    }

    /// Whether push frames handed out are still waiting for
    /// [`Self::handle_written`].
    pub fn awaiting_written(&self) -> bool {
        self.unwritten_bytes > 0
    }

    /// A fetch is due but the relay-wide push budget has no room now: the
    /// driver should poll again a little later.
    pub fn starved(&self) -> bool {
        self.starved
    }

    /// Whether [`Self::poll_transmit`] has a frame now.
    pub fn has_transmit(&self) -> bool {
        !self.pushes.is_empty() || self.replies.has_ready()
    }

    /// Whether the driver should read another frame: not after the end,
    /// not while paused for the rate, and not while the answers queued
    /// are at their bound.
    pub fn wants_frames(&self) -> bool {
        self.reading && self.paused_until.is_none() && self.replies.queued() < DURABILITY_QUEUE
    }

    /// Whether the driver should take an ephemeral envelope from the hub
    /// now; while not, the hub's own small buffer fills and drops.
    pub fn wants_ephemeral(&self) -> bool {
        self.push.is_some() && self.pushes.len() < PUSH_QUEUE && self.byte_room() > 0
    }

    /// When [`Self::handle_timeout`] is next due: the end of a rate pause
    /// or a fetch retry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.push.as_ref().and_then(Push::timeout);
        match (self.paused_until, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The mailbox this stream pushes, if it holds the subscription.
    pub fn subscribed(&self) -> Option<MailboxId> {
        self.push.as_ref().map(Push::mailbox)
    }

    /// The peer can no longer be answered (its stream died): stop reading
    /// and pushing, and hand back the wake-ups (and ephemeral envelopes)
    /// not yet carried out, which the driver must still carry out: what
    /// the stream stored is in the store whatever became of its answers,
    /// and an online recipient must hear of it as it would have had the
    /// sender stayed.
    pub fn abandon(&mut self) -> Vec<Output> {
        self.reading = false;
        self.stop_push();
        self.events
            .drain(..)
            .filter(|o| {
                matches!(
                    o,
                    Output::Notify(_) | Output::Hand { .. } | Output::Ephemeral { .. }
                )
            })
            .collect()
    }

    /// Whether a durability wait is under way.
    pub fn awaiting_durability(&self) -> bool {
        self.replies.waiting()
    }
}

impl Drop for MessageStream {
    fn drop(&mut self) {
        // A stream dropped mid-way (its peer stopped reading) must not keep
        // the connection's one subscription.
        if self.push.is_some() {
            self.conn.release_subscription();
        }
        self.limits
            .relay
            .release(self.queued_bytes + self.unwritten_bytes + self.fetch_reserved);
    }
}

#[cfg(test)]
mod fanout_tests;
#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod pair_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
