//! Envelopes through the log and its index: append, fetch, ack, expire, and
//! the rebuild of the index from the log at start.
//!
//! Envelopes go to the log, where an append costs a memcpy and a share of
//! one `fdatasync`: with envelopes in sled too (five records per send, three
//! per ack), sled's node copies held the relay to ~5,500 durable messages a
//! second (docs/performance.md). The index, rebuilt from the log at start,
//! maps each mailbox's sequence numbers to log locations and message ids to
//! sequence numbers. A mailbox's next sequence number comes from the log
//! while any record of it is there; before a segment is deleted, every
//! mailbox's number is saved to its sled record (see `reclaim`), so a
//! sequence number is never handed out twice.
//!
//! Every change to a mailbox happens under its index shard's lock, and is
//! counted for the group commit before that lock is released: a retry that
//! finds an envelope and waits for durability then waits for its flush.

use super::envelope_log::{EnvelopeLog, Location};
use super::group_commit::GroupCommit;
use super::index::{Entry, MailboxState};
use super::record::{self, EnvelopeRecord, Record};
use super::{
    poisoned, Appended, Inner, MailboxId, MailboxRecord, NewEnvelope, Quota, StoreError,
    StoredEnvelope, Swept,
};
use std::collections::HashMap;
use std::path::Path;

/// Most bytes read from the log in one go while fetching a run of envelopes.
const READ_SPAN: u64 = 1 << 20;
/// Widest gap between two envelopes of a mailbox read in one go.
const READ_GAP: u64 = 16 << 10;
/// How often a fetch looks again when segments vanish under it.
const FETCH_ATTEMPTS: usize = 8;

/// Per-mailbox state replayed from the log, before it is checked against
/// the mailbox records.
pub(super) type Replayed = HashMap<MailboxId, MailboxState>;

/// Open the log in `dir` and replay it into per-mailbox state.
pub(super) fn replay(
    dir: &Path,
    segment_bytes: u64,
) -> Result<(EnvelopeLog, Replayed), StoreError> {
    let mut replayed = Replayed::default();
    // The PAYLOAD record just read: the REFS record right after it names
    // its holders.
    let mut payload: Option<(Location, Entry)> = None;
    let log = EnvelopeLog::open(dir, segment_bytes, |r| match r.record {
        Record::Payload(p) => {
            let entry = Entry {
                at: r.at,
                message_id: p.message_id,
                expires_ms: p.expires_ms,
                payload_len: u32::try_from(p.payload.len()).unwrap_or(u32::MAX),
            };
            payload = Some((r.at, entry));
        }
        Record::Refs {
            payload_offset,
            refs,
        } => match payload.take() {
            Some((at, entry)) if at.segment == r.at.segment && at.offset == payload_offset => {
                for (mailbox, seq) in refs {
                    replayed
                        .entry(mailbox)
                        .or_insert_with(|| MailboxState::new(1))
                        .insert(seq, entry);
                }
            }
            _ => tracing::warn!(
                segment = r.at.segment,
                offset = r.at.offset,
                "references to a payload that is not before them; ignoring them"
            ),
        },
        Record::Envelope(e) => {
            let entry = Entry {
                at: r.at,
                message_id: e.message_id,
                expires_ms: e.expires_ms,
                payload_len: u32::try_from(e.payload.len()).unwrap_or(u32::MAX),
            };
            replayed
                .entry(e.mailbox)
                .or_insert_with(|| MailboxState::new(1))
                .insert(e.seq, entry);
        }
        Record::Remove { mailbox, seqs } => {
            let st = replayed
                .entry(mailbox)
                .or_insert_with(|| MailboxState::new(1));
            for seq in seqs {
                st.remove(seq);
                st.next_seq = st.next_seq.max(seq.saturating_add(1));
            }
        }
    })?;
    Ok((log, replayed))
}

impl Inner {
    /// Take replayed state into the index: each mailbox's next sequence
    /// number is the higher of the log's and its record's; envelopes of a
    /// mailbox that does not exist are left out (and reported).
    pub(super) fn load_index(&self, replayed: Replayed) -> Result<(), StoreError> {
        for (id, mut st) in replayed {
            let Some(rec) = self.meta.mailbox(&id)? else {
                tracing::warn!(
                    mailbox = %hex::encode(&id[..4]),
                    "envelopes for a mailbox that does not exist; ignoring them"
                );
                continue;
            };
            st.persisted_seq = rec.next_seq;
            st.next_seq = st.next_seq.max(rec.next_seq);
            for entry in st.envelopes.values() {
                self.log.count_live(entry.at)?;
            }
            if !st.idle() {
                self.index.shard(&id).ok_or_else(poisoned)?.insert(id, st);
            }
        }
        Ok(())
    }

    /// A mailbox's record with what it holds now, from the index.
    pub(super) fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        let shard = self.index.shard(id).ok_or_else(poisoned)?;
        let Some(mut rec) = self.meta.mailbox(id)? else {
            return Ok(None);
        };
        let (next_seq, envelopes, bytes) = shard.get(id).map_or((rec.next_seq, 0, 0), |st| {
            (st.next_seq, st.envelopes.len() as u64, st.bytes)
        });
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
        if let Some(&seq) = st.by_message.get(&env.message_id) {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        let held = st.envelopes.len() as u64;
        if held >= quota.max_envelopes || st.bytes.saturating_add(size) > quota.max_bytes {
            return Err(StoreError::QuotaExceeded {
                envelopes: held,
                bytes: st.bytes,
            });
        }
        let payload_len = u32::try_from(env.payload.len())
            .map_err(|_| StoreError::Unavailable("envelope too large for the log".into()))?;
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
            .append_envelope(|b| record::put_envelope(b, &rec))?;
        st.insert(
            seq,
            Entry {
                at,
                message_id: env.message_id,
                expires_ms: env.expires_ms,
                payload_len,
            },
        );
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
        use std::ops::Bound::{Excluded, Unbounded};
        // A segment can vanish between reading the index and reading the
        // log only if its envelopes were acknowledged meanwhile; the next
        // look at the index no longer lists them.
        for _ in 0..FETCH_ATTEMPTS {
            let entries: Vec<(u64, Location)> = {
                let shard = self.index.shard(mailbox).ok_or_else(poisoned)?;
                let Some(st) = shard.get(mailbox) else {
                    return Ok(Vec::new());
                };
                st.envelopes
                    .range((Excluded(after_seq), Unbounded))
                    .take(limit)
                    .map(|(seq, e)| (*seq, e.at))
                    .collect()
            };
            if let Some(found) = self.read_envelopes(mailbox, &entries)? {
                return Ok(found);
            }
        }
        Err(StoreError::Unavailable(
            "envelope log changed under every read".into(),
        ))
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
                match record::decode(raw) {
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
                    _ => {
                        return Err(StoreError::Corrupt(
                            "envelope record does not match the index",
                        ))
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
        let mut gone = Vec::new();
        let mut at = Vec::new();
        for &seq in seqs {
            if let Some(e) = st.remove(seq) {
                gone.push(seq);
                at.push(e.at);
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.log
            .append_removal(|b| record::put_remove(b, mailbox, &gone), &at)?;
        // Counted but not waited for: deletes become durable with the next
        // flush (at most ~200 ms later); a redelivered envelope is dropped
        // by the recipient's de-duplication.
        commit.wrote();
        drop(shard);
        Ok(gone.len() as u64)
    }

    /// Stop holding every envelope expired at `now_ms`.
    pub(super) fn sweep(&self, now_ms: u64, commit: &GroupCommit) -> Result<Swept, StoreError> {
        let mut total = 0u64;
        for shard in self.index.shards() {
            let mut shard = shard.ok_or_else(poisoned)?;
            for (id, st) in shard.iter_mut() {
                let expired: Vec<u64> = st
                    .envelopes
                    .iter()
                    .filter(|(_, e)| e.expires_ms <= now_ms)
                    .map(|(seq, _)| *seq)
                    .collect();
                if expired.is_empty() {
                    continue;
                }
                let at: Vec<_> = expired
                    .iter()
                    .filter_map(|seq| st.remove(*seq).map(|e| e.at))
                    .collect();
                self.log
                    .append_removal(|b| record::put_remove(b, id, &expired), &at)?;
                total += expired.len() as u64;
            }
        }
        if total > 0 {
            commit.wrote();
        }
        Ok(Swept { envelopes: total })
    }
}
