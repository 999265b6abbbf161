//! Envelopes stored once for many mailboxes (multi-recipient sends): one
//! PAYLOAD record and one REFS record listing (mailbox, seq) for every
//! holder, instead of a whole record per mailbox. Measured for 1,000
//! targets and a 1 KiB payload: 25 KB on disk against 1.09 MB
//! (docs/decisions.md, "Multi-recipient sends").
//!
//! Every holder's index entry points at the one PAYLOAD record and counts
//! as one live record of its segment, so acks, expiry and reclamation work
//! per mailbox as for any envelope: the segment stays while any holder
//! does, and copying forward rewrites the pair with the holders left.
//! Changes lock every target's shard at once, in ascending order
//! ([`super::index::Index::lock_many`]).

use super::envelope_log::Location;
use super::group_commit::GroupCommit;
use super::index::{Index, MailboxState, Shard, Slot};
use super::record::{self, EnvelopeRecord, PayloadRecord, Record};
use super::{poisoned, Appended, Inner, MailboxId, NewEnvelope, Quota, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::MutexGuard;

type Locked<'a> = BTreeMap<usize, MutexGuard<'a, Shard>>;

fn shard_of<'s, 'a>(
    locked: &'s mut Locked<'a>,
    m: &MailboxId,
) -> Result<&'s mut Shard, StoreError> {
    locked
        .get_mut(&Index::shard_id(m))
        .map(|g| &mut **g)
        .ok_or_else(poisoned)
}

impl Inner {
    /// Append one envelope to every target that does not hold its message
    /// id and has room, writing the payload once; one result per target.
    pub(super) fn append_many(
        &self,
        targets: &[(MailboxId, Quota)],
        env: NewEnvelope<'_>,
        commit: &GroupCommit,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let payload_len = u32::try_from(env.payload.len())
            .map_err(|_| StoreError::Unavailable("envelope too large for the log".into()))?;
        let size = u64::from(payload_len);
        let mut locked = self
            .index
            .lock_many(targets.iter().map(|(m, _)| m))
            .ok_or_else(poisoned)?;
        let mut results = Vec::with_capacity(targets.len());
        // (result index, mailbox, seq) of each target that gets it.
        let mut chosen: Vec<(usize, MailboxId, u64)> = Vec::new();
        let mut in_this_send: HashMap<MailboxId, u64> = HashMap::new();
        for (i, (mailbox, quota)) in targets.iter().enumerate() {
            if let Some(&seq) = in_this_send.get(mailbox) {
                // Named twice: the second is a repeat of the first.
                results.push(Ok(Appended {
                    seq,
                    duplicate: true,
                }));
                continue;
            }
            let shard = shard_of(&mut locked, mailbox)?;
            if !shard.contains_key(mailbox) {
                match self.meta.mailbox(mailbox) {
                    Ok(Some(rec)) => {
                        shard.insert(*mailbox, MailboxState::new(rec.next_seq));
                    }
                    Ok(None) => {
                        results.push(Err(StoreError::UnknownMailbox));
                        continue;
                    }
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                }
            }
            let Some(st) = shard.get_mut(mailbox) else {
                results.push(Err(StoreError::UnknownMailbox));
                continue;
            };
            match self.find_repeat(st, &env.message_id) {
                Ok(Some(seq)) => {
                    results.push(Ok(Appended {
                        seq,
                        duplicate: true,
                    }));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            }
            let held = st.len();
            if held >= quota.max_envelopes || st.bytes.saturating_add(size) > quota.max_bytes {
                results.push(Err(StoreError::QuotaExceeded {
                    envelopes: held,
                    bytes: st.bytes,
                }));
                continue;
            }
            if let Err(e) = self.charge(1, size) {
                results.push(Err(e));
                continue;
            }
            // Taken now so a later target in this send cannot get it; a
            // failed write below leaves a gap, never a reuse.
            let seq = st.next_seq;
            st.next_seq += 1;
            in_this_send.insert(*mailbox, seq);
            chosen.push((i, *mailbox, seq));
            results.push(Ok(Appended {
                seq,
                duplicate: false,
            }));
        }
        let written = match chosen.as_slice() {
            [] => return Ok(results),
            [(_, mailbox, seq)] => self.log.append_envelope(
                |b| {
                    record::put_envelope(
                        b,
                        &EnvelopeRecord {
                            mailbox: *mailbox,
                            seq: *seq,
                            received_ms: env.now_ms,
                            expires_ms: env.expires_ms,
                            message_id: env.message_id,
                            payload: env.payload,
                        },
                    )
                },
                env.expires_ms,
            ),
            many => {
                let refs: Vec<(MailboxId, u64)> = many.iter().map(|(_, m, s)| (*m, *s)).collect();
                let payload = PayloadRecord {
                    received_ms: env.now_ms,
                    expires_ms: env.expires_ms,
                    message_id: env.message_id,
                    payload: env.payload,
                };
                self.log.append_shared(
                    |b| record::put_payload(b, &payload),
                    |b, offset| record::put_refs(b, offset, &refs),
                    refs.len() as u64,
                    env.expires_ms,
                )
            }
        };
        let shared = chosen.len() > 1;
        let at = match written {
            Ok(at) if Slot::new(0, at, shared, &env.message_id).is_some() => at,
            Ok(_) | Err(_) => {
                let e = written
                    .err()
                    .unwrap_or(StoreError::Corrupt("log location beyond 32 bits"));
                for (i, _, _) in &chosen {
                    results[*i] = Err(e.clone());
                }
                self.release(chosen.len() as u64, size);
                return Ok(results);
            }
        };
        for (_, mailbox, seq) in &chosen {
            if let (Some(st), Some(s)) = (
                shard_of(&mut locked, mailbox)?.get_mut(mailbox),
                Slot::new(*seq, at, shared, &env.message_id),
            ) {
                st.insert(s);
            }
        }
        // Counted before the shards are released, as for one append.
        commit.wrote();
        drop(locked);
        Ok(results)
    }

    /// Copy a shared payload in segment `segment` (its REFS record names it
    /// at `payload_offset` with `refs`) to the head for the holders still
    /// pointing at it, and point them at the copy.
    pub(super) fn copy_shared_forward(
        &self,
        segment: u64,
        bytes: &[u8],
        payload_offset: u64,
        refs: &[(MailboxId, u64)],
    ) -> Result<u64, StoreError> {
        let Some(raw) = usize::try_from(payload_offset)
            .ok()
            .and_then(|o| bytes.get(o..))
        else {
            return Ok(0);
        };
        let Ok((Record::Payload(p), len)) = self.log.decode(segment, raw) else {
            return Ok(0);
        };
        let old = Location {
            segment,
            offset: payload_offset,
            len: len as u32,
        };
        let mut locked = self
            .index
            .lock_many(refs.iter().map(|(m, _)| m))
            .ok_or_else(poisoned)?;
        let mut held = Vec::new();
        for (m, seq) in refs {
            let points_here = shard_of(&mut locked, m)?
                .get(m)
                .and_then(|st| st.get(*seq))
                .is_some_and(|e| e.at() == old);
            if points_here {
                held.push((*m, *seq));
            }
        }
        let at = match held.as_slice() {
            [] => return Ok(0),
            [(mailbox, seq)] => self.log.append_envelope(
                |b| {
                    record::put_envelope(
                        b,
                        &EnvelopeRecord {
                            mailbox: *mailbox,
                            seq: *seq,
                            received_ms: p.received_ms,
                            expires_ms: p.expires_ms,
                            message_id: p.message_id,
                            payload: p.payload,
                        },
                    )
                },
                p.expires_ms,
            )?,
            many => self.log.append_shared(
                |b| record::put_payload(b, &p),
                |b, offset| record::put_refs(b, offset, many),
                many.len() as u64,
                p.expires_ms,
            )?,
        };
        let shared = held.len() > 1;
        for (m, seq) in &held {
            if let Some(e) = shard_of(&mut locked, m)?
                .get_mut(m)
                .and_then(|st| st.get_mut(*seq))
            {
                e.move_to(at, shared);
            }
        }
        self.log.forget_records(&vec![old; held.len()])?;
        Ok(u64::from(at.len))
    }
}
