//! Envelopes through the log and its index: append, fetch, ack, expire, the
//! relay-wide caps, and the rebuild of the index at start (from the index
//! checkpoint and the segments written since it).
//!
//! Envelopes go to the log, where an append costs a memcpy and a share of
//! one `fdatasync`: with envelopes in sled too (five records per send, three
//! per ack), sled's node copies held the relay to ~5,500 durable messages a
//! second (docs/performance.md). The index maps each mailbox's sequence
//! numbers to log locations, with a fingerprint of each message id for
//! de-duplication (confirmed on disk); expiry is found per segment. A
//! mailbox's next sequence number comes from the log
//! while any record of it is there; before a segment is deleted, every
//! mailbox's number is saved to its sled record (see `reclaim`), so a
//! sequence number is never handed out twice.
//!
//! Every change to a mailbox happens under its index shard's lock, and is
//! counted for the group commit before that lock is released: a retry that
//! finds an envelope and waits for durability then waits for its flush.

use super::envelope_log::{EnvelopeLog, Location};
use super::group_commit::GroupCommit;
use super::index::{fingerprint, MailboxState, Slot};
use super::record::{self, EnvelopeRecord, Record};
use super::{
    poisoned, Appended, Inner, MailboxId, MailboxRecord, MessageId, NewEnvelope, Quota, StoreError,
    StoredEnvelope, Swept,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Most bytes read from the log in one go while fetching a run of envelopes.
const READ_SPAN: u64 = 1 << 20;
/// Widest gap between two envelopes of a mailbox read in one go.
const READ_GAP: u64 = 16 << 10;
/// How often a fetch looks again when segments vanish under it.
const FETCH_ATTEMPTS: usize = 8;
/// Most sequence numbers in one removal record (8 MiB of body, far under
/// `record::MAX_BODY`): a sweep of millions writes several records.
pub(super) const REMOVE_CHUNK: usize = 1 << 20;

/// Per-mailbox state replayed from the log (and the index checkpoint),
/// before it is checked against the mailbox records; and each replayed
/// segment's earliest expiry.
#[derive(Default)]
pub(super) struct Replayed {
    pub(super) mailboxes: HashMap<MailboxId, MailboxState>,
    pub(super) expiries: HashMap<u64, u64>,
}

/// A slot for a record, or the reason it cannot have one.
fn slot(seq: u64, at: Location, shared: bool, id: &MessageId) -> Result<Slot, StoreError> {
    Slot::new(seq, at, shared, id).ok_or(StoreError::Corrupt("log location beyond 32 bits"))
}

/// Open the log in `dir` and replay the segments from `first` on into
/// `replayed` (which may already hold the index checkpoint's state).
pub(super) fn replay(
    dir: &Path,
    segment_bytes: u64,
    first: u64,
    replayed: &mut Replayed,
) -> Result<EnvelopeLog, StoreError> {
    // The PAYLOAD record just read: the REFS record right after it names
    // its holders.
    let mut payload: Option<(Location, MessageId)> = None;
    let Replayed {
        mailboxes,
        expiries,
    } = replayed;
    let mut note = |segment: u64, expires: u64| {
        let e = expiries.entry(segment).or_insert(u64::MAX);
        *e = (*e).min(expires);
    };
    let log = EnvelopeLog::open_from(dir, segment_bytes, first, |r| match r.record {
        Record::Payload(p) => {
            note(r.at.segment, p.expires_ms);
            payload = Some((r.at, p.message_id));
        }
        Record::Refs {
            payload_offset,
            refs,
        } => match payload.take() {
            Some((at, id)) if at.segment == r.at.segment && at.offset == payload_offset => {
                for (mailbox, seq) in refs {
                    if let Some(s) = Slot::new(seq, at, true, &id) {
                        mailboxes
                            .entry(mailbox)
                            .or_insert_with(|| MailboxState::new(1))
                            .insert(s);
                    }
                }
            }
            _ => tracing::warn!(
                segment = r.at.segment,
                offset = r.at.offset,
                "references to a payload that is not before them; ignoring them"
            ),
        },
        Record::Envelope(e) => {
            note(r.at.segment, e.expires_ms);
            if let Some(s) = Slot::new(e.seq, r.at, false, &e.message_id) {
                mailboxes
                    .entry(e.mailbox)
                    .or_insert_with(|| MailboxState::new(1))
                    .insert(s);
            }
        }
        Record::Remove { mailbox, seqs } => {
            let st = mailboxes
                .entry(mailbox)
                .or_insert_with(|| MailboxState::new(1));
            for seq in seqs {
                st.remove(seq);
                st.next_seq = st.next_seq.max(seq.saturating_add(1));
            }
        }
    })?;
    Ok(log)
}

impl Inner {
    /// Take replayed state into the index: each mailbox's next sequence
    /// number is the higher of the log's and its record's. Envelopes of a
    /// mailbox that does not exist are not served, and their segments are
    /// quarantined: kept and reported, never reclaimed.
    pub(super) fn load_index(&self, replayed: Replayed) -> Result<(), StoreError> {
        for (segment, expires) in replayed.expiries {
            self.log.note_expiry(segment, expires);
        }
        let (mut held, mut bytes) = (0u64, 0u64);
        // Segments that exist, by id: a checkpoint may name envelopes in
        // segments deleted since (deleted only once nothing in them was
        // held, so those envelopes are gone).
        let ids = self.log.segment_ids();
        let low = ids.iter().min().copied().unwrap_or(0);
        let high = ids.iter().max().copied().unwrap_or(0);
        let mut present = vec![false; usize::try_from(high - low + 1).unwrap_or(0)];
        for id in &ids {
            if let Some(p) = usize::try_from(id - low)
                .ok()
                .and_then(|i| present.get_mut(i))
            {
                *p = true;
            }
        }
        let exists = |segment: u64| {
            segment >= low
                && usize::try_from(segment - low)
                    .ok()
                    .and_then(|i| present.get(i))
                    .copied()
                    .unwrap_or(false)
        };
        for (id, mut st) in replayed.mailboxes {
            if st.iter().any(|s| !exists(s.at().segment)) {
                let gone = st.retain(|s| exists(s.at().segment));
                tracing::debug!(gone, "checkpointed envelopes in segments deleted since");
            }
            let Some(rec) = self.meta.mailbox(&id)? else {
                if !st.is_empty() {
                    tracing::error!(
                        mailbox = %hex::encode(&id[..4]),
                        envelopes = st.len(),
                        "envelopes for a mailbox that does not exist: their segments are \
                         quarantined (see docs/operations.md, Quarantine)"
                    );
                    let mut segments: Vec<u64> = st.iter().map(|s| s.at().segment).collect();
                    segments.dedup();
                    for segment in segments {
                        self.log
                            .quarantine(segment, "records of an unknown mailbox");
                    }
                }
                continue;
            };
            st.persisted_seq = rec.next_seq;
            st.next_seq = st.next_seq.max(rec.next_seq);
            // Live counts per segment, without a lock per envelope.
            let mut per_segment: Vec<(u64, u64, u64)> = Vec::new();
            for s in st.iter() {
                let at = s.at();
                match per_segment.last_mut() {
                    Some(last) if last.0 == at.segment => {
                        last.1 += 1;
                        last.2 += u64::from(at.len);
                    }
                    _ => per_segment.push((at.segment, 1, u64::from(at.len))),
                }
            }
            for (segment, live, live_bytes) in per_segment {
                self.log.count_live_many(segment, live, live_bytes)?;
            }
            held += st.len();
            bytes += st.bytes;
            if !st.idle() {
                self.index.shard(&id).ok_or_else(poisoned)?.insert(id, st);
            }
        }
        self.held.fetch_add(held, Ordering::SeqCst);
        self.held_bytes.fetch_add(bytes, Ordering::SeqCst);
        Ok(())
    }

    /// Refuse `n` more envelopes of `size` bytes each past the relay-wide
    /// caps; otherwise count them.
    pub(super) fn charge(&self, n: u64, size: u64) -> Result<(), StoreError> {
        let envelopes = self.held.load(Ordering::SeqCst);
        let bytes = self.held_bytes.load(Ordering::SeqCst);
        if envelopes.saturating_add(n) > self.options.max_held_envelopes
            || bytes.saturating_add(n.saturating_mul(size)) > self.options.max_held_bytes
        {
            return Err(StoreError::RelayFull { envelopes, bytes });
        }
        self.held.fetch_add(n, Ordering::SeqCst);
        self.held_bytes
            .fetch_add(n.saturating_mul(size), Ordering::SeqCst);
        Ok(())
    }

    /// Stop counting `n` envelopes of `bytes` in all.
    pub(super) fn release(&self, n: u64, bytes: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        let _ = self
            .held_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    /// The held envelope among `st`'s newest with message id `id`, if any:
    /// fingerprints find candidates, the record on disk confirms.
    pub(super) fn find_repeat(
        &self,
        st: &MailboxState,
        id: &MessageId,
    ) -> Result<Option<u64>, StoreError> {
        for s in st.recent_with(fingerprint(id)) {
            let at = s.at();
            let Some(bytes) = self.log.read(at.segment, at.offset, at.len as usize)? else {
                continue;
            };
            let stored = match self.log.decode(at.segment, &bytes) {
                Ok((Record::Envelope(e), _)) => e.message_id,
                Ok((Record::Payload(p), _)) => p.message_id,
                _ => continue,
            };
            if stored == *id {
                return Ok(Some(s.seq));
            }
        }
        Ok(None)
    }

    /// A mailbox's record with what it holds now, from the index.
    pub(super) fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        let shard = self.index.shard(id).ok_or_else(poisoned)?;
        let Some(mut rec) = self.meta.mailbox(id)? else {
            return Ok(None);
        };
        let (next_seq, envelopes, bytes) = shard
            .get(id)
            .map_or((rec.next_seq, 0, 0), |st| (st.next_seq, st.len(), st.bytes));
        rec.next_seq = next_seq;
        rec.envelopes = envelopes;
        rec.bytes = bytes;
        Ok(Some(rec))
    }

    /// Append an envelope unless its message id is held; quota checked
    /// under the same lock.
    pub(super) fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
        commit: &GroupCommit,
    ) -> Result<Appended, StoreError> {
        let size = env.payload.len() as u64;
        let mut shard = self.index.shard(mailbox).ok_or_else(poisoned)?;
        if !shard.contains_key(mailbox) {
            let rec = self
                .meta
                .mailbox(mailbox)?
                .ok_or(StoreError::UnknownMailbox)?;
            shard.insert(*mailbox, MailboxState::new(rec.next_seq));
        }
        let st = shard.get_mut(mailbox).ok_or(StoreError::UnknownMailbox)?;
        if let Some(seq) = self.find_repeat(st, &env.message_id)? {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        let held = st.len();
        if held >= quota.max_envelopes || st.bytes.saturating_add(size) > quota.max_bytes {
            return Err(StoreError::QuotaExceeded {
                envelopes: held,
                bytes: st.bytes,
            });
        }
        self.charge(1, size)?;
        let seq = st.next_seq;
        let rec = EnvelopeRecord {
            mailbox: *mailbox,
            seq,
            received_ms: env.now_ms,
            expires_ms: env.expires_ms,
            message_id: env.message_id,
            payload: env.payload,
        };
        let at = self
            .log
            .append_envelope(|b| record::put_envelope(b, &rec), env.expires_ms)
            .and_then(|at| slot(seq, at, false, &env.message_id));
        match at {
            Ok(s) => st.insert(s),
            Err(e) => {
                self.release(1, size);
                return Err(e);
            }
        }
        // Counted before the shard is released: a retry that finds this
        // envelope and waits for durability then waits for its flush.
        commit.wrote();
        drop(shard);
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    /// Up to `limit` held envelopes above `after_seq`, in order.
    pub(super) fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        // A segment can vanish between reading the index and reading the
        // log only if its envelopes were acknowledged meanwhile; the next
        // look at the index no longer lists them. A damaged record is
        // skipped (and its segment quarantined), so the reads go on past
        // it until `limit` envelopes are in hand or the mailbox ends.
        let mut out = Vec::new();
        let mut after = after_seq;
        let mut attempts = 0;
        while out.len() < limit {
            let want = limit - out.len();
            let entries: Vec<(u64, Location)> = {
                let shard = self.index.shard(mailbox).ok_or_else(poisoned)?;
                let Some(st) = shard.get(mailbox) else {
                    return Ok(out);
                };
                st.after(after)
                    .take(want)
                    .map(|s| (s.seq, s.at()))
                    .collect()
            };
            let Some(last) = entries.last().map(|(seq, _)| *seq) else {
                break;
            };
            match self.read_envelopes(mailbox, &entries)? {
                Some(found) => {
                    out.extend(found);
                    after = last;
                }
                None => {
                    attempts += 1;
                    if attempts >= FETCH_ATTEMPTS {
                        return Err(StoreError::Unavailable(
                            "envelope log changed under every read".into(),
                        ));
                    }
                }
            }
            if entries.len() < want {
                break;
            }
        }
        Ok(out)
    }

    /// Read the envelopes at `entries` (in sequence order) from the log,
    /// a run of neighbouring records at a time. `None` if a segment went
    /// away meanwhile (its envelopes were acknowledged): look again.
    fn read_envelopes(
        &self,
        mailbox: &MailboxId,
        entries: &[(u64, Location)],
    ) -> Result<Option<Vec<StoredEnvelope>>, StoreError> {
        let mut out = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            let first = entries[i].1;
            let mut end = first.offset + u64::from(first.len);
            let mut j = i + 1;
            while let Some((_, at)) = entries.get(j) {
                let next_end = at.offset + u64::from(at.len);
                if at.segment != first.segment
                    || at.offset < end
                    || at.offset - end > READ_GAP
                    || next_end - first.offset > READ_SPAN
                {
                    break;
                }
                end = next_end;
                j += 1;
            }
            let len =
                usize::try_from(end - first.offset).map_err(|_| StoreError::Corrupt("log span"))?;
            let Some(bytes) = self.log.read(first.segment, first.offset, len)? else {
                return Ok(None);
            };
            for (seq, at) in &entries[i..j] {
                let from = usize::try_from(at.offset - first.offset)
                    .map_err(|_| StoreError::Corrupt("log span"))?;
                let raw = bytes
                    .get(from..from + at.len as usize)
                    .ok_or(StoreError::Corrupt("log span"))?;
                match self.log.decode(at.segment, raw) {
                    // Stored once for many mailboxes: the index says whose.
                    Ok((Record::Payload(p), _)) => {
                        out.push(StoredEnvelope {
                            seq: *seq,
                            message_id: p.message_id,
                            received_ms: p.received_ms,
                            expires_ms: p.expires_ms,
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok((Record::Envelope(e), _)) if e.mailbox == *mailbox && e.seq == *seq => {
                        out.push(StoredEnvelope {
                            seq: *seq,
                            message_id: e.message_id,
                            received_ms: e.received_ms,
                            expires_ms: e.expires_ms,
                            payload: e.payload.to_vec(),
                        });
                    }
                    // Damage found on read (in a segment the checkpoint
                    // covered, so not read at start): not served, not
                    // deleted; the segment is quarantined and reported.
                    _ => {
                        tracing::error!(
                            mailbox = %hex::encode(&mailbox[..4]),
                            seq,
                            segment = at.segment,
                            "envelope record damaged or not the one indexed"
                        );
                        self.log
                            .quarantine(at.segment, "damaged record found on read");
                    }
                }
            }
            i = j;
        }
        Ok(Some(out))
    }

    /// Stop holding acknowledged envelopes; returns how many were held.
    pub(super) fn ack(
        &self,
        mailbox: &MailboxId,
        seqs: &[u64],
        commit: &GroupCommit,
    ) -> Result<u64, StoreError> {
        let mut shard = self.index.shard(mailbox).ok_or_else(poisoned)?;
        let Some(st) = shard.get_mut(mailbox) else {
            return Ok(0);
        };
        let gone = self.remove_held(mailbox, st, seqs.iter().map(|s| (*s, None)))?;
        if gone == 0 {
            return Ok(0);
        }
        // Counted but not waited for: deletes become durable with the next
        // flush (at most ~200 ms later); a redelivered envelope is dropped
        // by the recipient's de-duplication.
        commit.wrote();
        drop(shard);
        Ok(gone)
    }

    /// [`Self::ack`] if the mailbox's index shard is free now (an ack only
    /// edits the index and buffers a removal record; the log's tail lock
    /// is only ever held to copy a buffer), `None` if it is held (by a
    /// multi-recipient append, say).
    pub(super) fn try_ack_now(
        &self,
        mailbox: &MailboxId,
        seqs: &[u64],
        commit: &GroupCommit,
    ) -> Option<Result<u64, StoreError>> {
        let mut shard = match self.index.try_shard(mailbox) {
            Ok(shard) => shard,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(_)) => return Some(Err(poisoned())),
        };
        let Some(st) = shard.get_mut(mailbox) else {
            return Some(Ok(0));
        };
        let gone = match self.remove_held(mailbox, st, seqs.iter().map(|s| (*s, None))) {
            Ok(gone) => gone,
            Err(e) => return Some(Err(e)),
        };
        if gone > 0 {
            // As for `ack`: made durable by the next flush.
            commit.wrote();
        }
        drop(shard);
        Some(Ok(gone))
    }

    /// Remove `seqs` from `st` (each only if its record is at the given
    /// location, when one is given) and log the removal, in records of at
    /// most [`REMOVE_CHUNK`] sequence numbers. Returns how many were held.
    fn remove_held(
        &self,
        mailbox: &MailboxId,
        st: &mut MailboxState,
        seqs: impl Iterator<Item = (u64, Option<Location>)>,
    ) -> Result<u64, StoreError> {
        let mut gone = Vec::new();
        let mut at = Vec::new();
        let (mut total, mut bytes) = (0u64, 0u64);
        let mut seqs = seqs.peekable();
        while seqs.peek().is_some() {
            for (seq, want) in seqs.by_ref() {
                if want.is_some_and(|w| st.get(seq).map(Slot::at) != Some(w)) {
                    continue;
                }
                if let Some(s) = st.remove(seq) {
                    gone.push(seq);
                    at.push(s.at());
                    bytes += s.payload_len();
                }
                if gone.len() >= REMOVE_CHUNK {
                    break;
                }
            }
            if gone.is_empty() {
                continue;
            }
            self.log
                .append_removal(|b| record::put_remove(b, mailbox, &gone), &at)?;
            total += gone.len() as u64;
            gone.clear();
            at.clear();
        }
        self.release(total, bytes);
        Ok(total)
    }

    /// Stop holding every envelope expired at `now_ms`. Only segments
    /// holding something due are read, earliest expiry first, on the
    /// caller's thread (the server's blocking pool); each mailbox's shard
    /// is locked only while its expired envelopes are removed.
    pub(super) fn sweep(&self, now_ms: u64, commit: &GroupCommit) -> Result<Swept, StoreError> {
        let mut total = 0u64;
        for segment in self.log.segments_due(now_ms)? {
            let Some(bytes) = self.log.read_segment(segment)? else {
                continue;
            };
            let mut due: HashMap<MailboxId, Vec<(u64, Option<Location>)>> = HashMap::new();
            let mut next_min = u64::MAX;
            let mut payload: Option<(Location, u64)> = None;
            let mut at = record::MAGIC.len();
            while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
                let Ok((rec, len)) = self.log.decode(segment, rest) else {
                    break;
                };
                let loc = Location {
                    segment,
                    offset: at as u64,
                    len: len as u32,
                };
                match rec {
                    Record::Envelope(e) if e.expires_ms <= now_ms => {
                        due.entry(e.mailbox).or_default().push((e.seq, Some(loc)));
                    }
                    Record::Envelope(e) => next_min = next_min.min(e.expires_ms),
                    Record::Payload(p) => payload = Some((loc, p.expires_ms)),
                    Record::Refs {
                        payload_offset,
                        refs,
                    } => match payload.take() {
                        Some((p, expires)) if p.offset == payload_offset && expires <= now_ms => {
                            for (m, seq) in refs {
                                due.entry(m).or_default().push((seq, Some(p)));
                            }
                        }
                        Some((_, expires)) => next_min = next_min.min(expires),
                        None => {}
                    },
                    Record::Remove { .. } => {}
                }
                at += len;
            }
            for (mailbox, seqs) in due {
                let mut shard = self.index.shard(&mailbox).ok_or_else(poisoned)?;
                if let Some(st) = shard.get_mut(&mailbox) {
                    total += self.remove_held(&mailbox, st, seqs.into_iter())?;
                }
            }
            self.log.set_min_expires(segment, next_min);
        }
        if total > 0 {
            commit.wrote();
        }
        Ok(Swept { envelopes: total })
    }
}
