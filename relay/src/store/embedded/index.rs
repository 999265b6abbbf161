//! The in-memory index of held envelopes, kept compact: per mailbox, a
//! sorted run of 24-byte [`Slot`]s (sequence number, log location, a
//! 32-bit fingerprint of the message id) and the next sequence number.
//! Expiry is not kept per envelope: each segment knows the earliest expiry
//! among its records (`envelope_log`), and the sweeper reads the segments
//! that have something due. Message ids are not kept either: a send is
//! checked for a repeat against the fingerprints of the mailbox's newest
//! [`DEDUP_WINDOW`] held envelopes, and a matching fingerprint is
//! confirmed by reading the record (docs/decisions.md, "Bounded memory").
//!
//! Mailboxes live in shards, each behind its own lock, which also
//! serialises changes to one mailbox. Memory: 24 bytes per held envelope
//! plus at most 1/8 spare capacity, and ~150 bytes per mailbox held in
//! memory (docs/operations.md).

use super::envelope_log::Location;
use super::record::{ENVELOPE_FIXED, HEADER, PAYLOAD_FIXED};
use super::{MailboxId, MessageId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Shards of the index; a mailbox's shard is picked from its (random) id.
const SHARDS: usize = 64;
/// How many of a mailbox's newest held envelopes a send is checked against
/// for a repeat of its message id. A retry comes moments after the send it
/// repeats; 1,024 sends to one mailbox in between is far beyond that, and
/// a repeat the relay misses is dropped by the recipient's de-duplication.
pub const DEDUP_WINDOW: usize = 1024;
/// Marks a slot whose record is a PAYLOAD record (stored once for many
/// mailboxes) rather than an ENVELOPE record.
const SHARED: u32 = 1 << 31;

/// One held envelope, packed: 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Its sequence number in the mailbox.
    pub seq: u64,
    /// Segment id of its record.
    segment: u32,
    /// Offset of its record in the segment.
    offset: u32,
    /// Record length, [`SHARED`] set for a PAYLOAD record; 0 once removed.
    len: u32,
    /// [`fingerprint`] of its message id.
    pub fp: u32,
}

/// 32 bits of a message id, to find candidate repeats without keeping ids.
pub fn fingerprint(id: &MessageId) -> u32 {
    let w = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
    w(0) ^ w(4).rotate_left(7) ^ w(8).rotate_left(13) ^ w(12).rotate_left(21)
}

impl Slot {
    /// A slot for the record at `at`; `None` if the location does not fit
    /// 32 bits (segments are far smaller; see `LogOptions`).
    pub fn new(seq: u64, at: Location, shared: bool, message_id: &MessageId) -> Option<Self> {
        let segment = u32::try_from(at.segment).ok()?;
        let offset = u32::try_from(at.offset).ok()?;
        if at.len == 0 || at.len & SHARED != 0 {
            return None;
        }
        Some(Self {
            seq,
            segment,
            offset,
            len: at.len | if shared { SHARED } else { 0 },
            fp: fingerprint(message_id),
        })
    }

    /// Where its record is.
    pub fn at(&self) -> Location {
        Location {
            segment: u64::from(self.segment),
            offset: u64::from(self.offset),
            len: self.len & !SHARED,
        }
    }

    /// Whether its record is a shared PAYLOAD record.
    pub fn shared(&self) -> bool {
        self.len & SHARED != 0
    }

    /// Payload bytes, for the quota.
    pub fn payload_len(&self) -> u64 {
        let fixed = HEADER
            + if self.shared() {
                PAYLOAD_FIXED
            } else {
                ENVELOPE_FIXED
            };
        u64::from(self.len & !SHARED).saturating_sub(fixed as u64)
    }

    /// Point it at a copy of its record (a PAYLOAD record if `shared`).
    pub fn move_to(&mut self, at: Location, shared: bool) -> bool {
        match Self::new(self.seq, at, shared, &[0; 16]) {
            Some(s) => {
                *self = Slot { fp: self.fp, ..s };
                true
            }
            None => false,
        }
    }

    fn live(&self) -> bool {
        self.len != 0
    }

    /// The raw fields, for the index checkpoint.
    pub fn to_bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..12].copy_from_slice(&self.segment.to_be_bytes());
        b[12..16].copy_from_slice(&self.offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.len.to_be_bytes());
        b[20..24].copy_from_slice(&self.fp.to_be_bytes());
        b
    }

    /// The inverse of [`Self::to_bytes`]; `None` for a removed slot.
    pub fn from_bytes(b: &[u8; 24]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[..8]);
        let s = Self {
            seq: u64::from_be_bytes(seq),
            segment: u32_at(8),
            offset: u32_at(12),
            len: u32_at(16),
            fp: u32_at(20),
        };
        (s.len & !SHARED != 0).then_some(s)
    }
}

/// What the relay holds for one mailbox.
#[derive(Debug, Default)]
pub struct MailboxState {
    /// Sequence number the next envelope gets.
    pub next_seq: u64,
    /// The `next_seq` last written to the mailbox's durable record; the
    /// log must not lose the only trace of a higher one.
    pub persisted_seq: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Envelopes held.
    held: u64,
    /// Held envelopes in sequence order, with removed ones (len 0) among
    /// them until the next compaction.
    slots: VecDeque<Slot>,
}

impl MailboxState {
    /// A mailbox holding nothing, whose durable record says `next_seq`.
    pub fn new(next_seq: u64) -> Self {
        Self {
            next_seq,
            persisted_seq: next_seq,
            ..Self::default()
        }
    }

    /// A mailbox holding `slots` (in sequence order, as the checkpoint
    /// wrote them), sized exactly.
    pub fn from_sorted(next_seq: u64, slots: Vec<Slot>) -> Self {
        let held = slots.len() as u64;
        let bytes = slots.iter().map(Slot::payload_len).sum();
        let next_seq = slots
            .last()
            .map_or(next_seq, |s| next_seq.max(s.seq.saturating_add(1)));
        Self {
            next_seq,
            persisted_seq: next_seq,
            bytes,
            held,
            slots: VecDeque::from(slots),
        }
    }

    /// Keep only the held envelopes `keep` says yes to; returns how many
    /// were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&Slot) -> bool) -> u64 {
        let before = self.held;
        self.slots.retain(|s| s.live() && keep(s));
        self.held = self.slots.len() as u64;
        self.bytes = self.slots.iter().map(Slot::payload_len).sum();
        before - self.held
    }

    /// Envelopes held.
    pub fn len(&self) -> u64 {
        self.held
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&seq, |s| s.seq)
    }

    /// Hold an envelope (replacing an older copy of the same one).
    pub fn insert(&mut self, slot: Slot) {
        self.next_seq = self.next_seq.max(slot.seq.saturating_add(1));
        let at = match self.slots.back() {
            Some(last) if last.seq < slot.seq => Err(self.slots.len()),
            None => Err(0),
            Some(_) => self.position(slot.seq),
        };
        match at {
            Ok(i) => {
                let old = self.slots[i];
                if old.live() {
                    self.bytes = self.bytes.saturating_sub(old.payload_len());
                } else {
                    self.held += 1;
                }
                self.slots[i] = slot;
            }
            Err(i) => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow by an eighth, not double: spare capacity is
                    // memory paid per held envelope.
                    self.slots.reserve_exact((self.slots.len() / 8).max(8));
                }
                self.slots.insert(i, slot);
                self.held += 1;
            }
        }
        self.bytes += slot.payload_len();
    }

    /// The held envelope `seq`.
    pub fn get(&self, seq: u64) -> Option<&Slot> {
        self.position(seq)
            .ok()
            .map(|i| &self.slots[i])
            .filter(|s| s.live())
    }

    /// The held envelope `seq`, to move it.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = self.position(seq).ok()?;
        Some(&mut self.slots[i]).filter(|s| s.live())
    }

    /// Stop holding an envelope.
    pub fn remove(&mut self, seq: u64) -> Option<Slot> {
        let i = self.position(seq).ok()?;
        let old = self.slots[i];
        if !old.live() {
            return None;
        }
        self.slots[i].len = 0;
        self.held -= 1;
        self.bytes = self.bytes.saturating_sub(old.payload_len());
        while self.slots.front().is_some_and(|s| !s.live()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|s| !s.live()) {
            self.slots.pop_back();
        }
        let dead = self.slots.len() as u64 - self.held;
        if dead > 64 && dead > self.held {
            self.slots.retain(|s| s.live());
        }
        if self.slots.capacity() > 64 && self.slots.capacity() > 2 * self.slots.len() {
            self.slots
                .shrink_to(self.slots.len() + self.slots.len() / 8);
        }
        Some(old)
    }

    /// Held envelopes with sequence numbers above `after`, in order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Slot> {
        let from = match self.position(after) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.slots.range(from..).filter(|s| s.live())
    }

    /// Every held envelope, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.live())
    }

    /// Held envelopes among the newest [`DEDUP_WINDOW`] whose message id
    /// has fingerprint `fp`: candidates for a repeat, newest first.
    pub fn recent_with(&self, fp: u32) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .rev()
            .filter(|s| s.live())
            .take(DEDUP_WINDOW)
            .filter(move |s| s.fp == fp)
    }

    /// Nothing held and nothing unsaved: the state can be dropped from
    /// memory and reloaded from the mailbox record when needed.
    pub fn idle(&self) -> bool {
        self.held == 0 && self.next_seq <= self.persisted_seq
    }

    /// Bytes of memory its slots take.
    pub fn slot_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

/// One shard: the mailboxes whose ids map to it.
pub type Shard = HashMap<MailboxId, MailboxState>;

/// All mailboxes with state in memory.
pub struct Index {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Index {
    /// Lock the shard holding `mailbox`.
    pub fn shard(&self, mailbox: &MailboxId) -> Option<MutexGuard<'_, Shard>> {
        self.shards[Self::shard_id(mailbox)].lock().ok()
    }

    /// [`Self::shard`] if no one holds it now.
    pub fn try_shard(
        &self,
        mailbox: &MailboxId,
    ) -> std::sync::TryLockResult<MutexGuard<'_, Shard>> {
        self.shards[Self::shard_id(mailbox)].try_lock()
    }

    /// The number of the shard holding `mailbox`.
    pub fn shard_id(mailbox: &MailboxId) -> usize {
        usize::from(mailbox[0]) % SHARDS
    }

    /// Lock the shards holding `mailboxes`, each once, in ascending order:
    /// the one order every multi-shard lock takes, so two of them cannot
    /// deadlock (everything else holds one shard at a time).
    pub fn lock_many<'a>(
        &self,
        mailboxes: impl IntoIterator<Item = &'a MailboxId>,
    ) -> Option<BTreeMap<usize, MutexGuard<'_, Shard>>> {
        let ids: std::collections::BTreeSet<usize> =
            mailboxes.into_iter().map(Self::shard_id).collect();
        let mut locked = BTreeMap::new();
        for i in ids {
            locked.insert(i, self.shards[i].lock().ok()?);
        }
        Some(locked)
    }

    /// Lock each shard in turn.
    pub fn shards(&self) -> impl Iterator<Item = Option<MutexGuard<'_, Shard>>> {
        self.shards.iter().map(|s| s.lock().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(seq: u64, id: u8, payload: u32) -> Slot {
        let at = Location {
            segment: 1,
            offset: 8,
            len: (HEADER + ENVELOPE_FIXED) as u32 + payload,
        };
        Slot::new(seq, at, false, &[id; 16]).unwrap()
    }

    #[test]
    fn a_slot_is_24_bytes_and_round_trips() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
        let s = slot(7, 3, 10);
        assert_eq!(Slot::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(s.payload_len(), 10);
        let big = Location {
            segment: 1 << 40,
            offset: 0,
            len: 1,
        };
        assert_eq!(Slot::new(1, big, false, &[0; 16]), None);
    }

    #[test]
    fn counts_follow_inserts_replacements_and_removals() {
        let mut m = MailboxState::new(5);
        m.insert(slot(5, 1, 10));
        m.insert(slot(6, 2, 20));
        assert_eq!((m.next_seq, m.bytes, m.len()), (7, 30, 2));
        assert!(!m.idle());
        // A copy of seq 5 written elsewhere replaces it, not adds to it.
        m.insert(slot(5, 1, 10));
        assert_eq!((m.len(), m.bytes), (2, 30));
        assert_eq!(m.recent_with(fingerprint(&[1; 16])).count(), 1);
        assert_eq!(m.remove(5).map(|e| e.payload_len()), Some(10));
        assert_eq!(m.remove(5), None);
        assert_eq!(m.recent_with(fingerprint(&[1; 16])).count(), 0);
        m.remove(6);
        assert_eq!(m.bytes, 0);
        assert!(!m.idle(), "next_seq 7 is not saved yet");
        m.persisted_seq = 7;
        assert!(m.idle());
    }

    #[test]
    fn removals_in_the_middle_are_compacted_and_ranges_skip_them() {
        let mut m = MailboxState::new(1);
        for seq in 1..=1000 {
            m.insert(slot(seq, 0, 1));
        }
        for seq in (2..=1000).step_by(2) {
            m.remove(seq);
        }
        assert_eq!(m.len(), 500);
        let after: Vec<u64> = m.after(10).take(3).map(|s| s.seq).collect();
        assert_eq!(after, [11, 13, 15]);
        for seq in (1..=999).step_by(2).take(499) {
            m.remove(seq);
        }
        assert_eq!(m.iter().map(|s| s.seq).collect::<Vec<_>>(), [999]);
        assert!(m.slot_bytes() < 1000 * 24);
    }
}
