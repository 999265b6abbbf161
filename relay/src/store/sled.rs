//! The embedded engine: mailboxes and send tokens in sled, envelopes in an
//! append-only [`EnvelopeLog`] indexed in memory ([`Index`]).
//!
//! sled holds the records that change rarely, in one tree, told apart by a
//! prefix byte:
//!
//! | prefix | key after the prefix   | value                                                        |
//! |--------|------------------------|--------------------------------------------------------------|
//! | `m`    | mailbox id (16)        | auth key (32), next seq floor, 0, 0, tokens, created (8 each) |
//! | `t`    | SHA-256 of token (32)  | mailbox id (16), revoked (1)                                 |
//!
//! Envelopes go to the log, where an append costs a memcpy and a share of
//! one `fdatasync`: with envelopes in sled too (five records per send, three
//! per ack), sled's node copies held the relay to ~5,500 durable messages a
//! second (docs/performance.md). The index, rebuilt from the log at start,
//! maps each mailbox's sequence numbers to log locations and message ids to
//! sequence numbers. A mailbox's next sequence number comes from the log
//! while any record of it is there; before a segment is deleted, every
//! mailbox's number is saved to its sled record, so a sequence number is
//! never handed out twice.
//!
//! Durability comes from [`GroupCommit`]: one flush writes the log buffer,
//! `fdatasync`s it, and flushes sled if a mailbox or token changed. A
//! background thread deletes segments whose envelopes are all gone, copying
//! the few still held out of mostly-dead segments first.

use super::envelope_log::{EnvelopeLog, Location};
use super::group_commit::GroupCommit;
use super::index::{Entry, Index, MailboxState};
use super::record::{self, EnvelopeRecord, Record};
use super::signal::Signal;
use super::{
    Appended, Durable, MailboxId, MailboxRecord, MailboxStore, NewEnvelope, Quota, StoreError,
    StoredEnvelope, Swept, TokenHash, TokenRecord,
};
use ::sled::{Batch, Db, Tree};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MAILBOX: u8 = b'm';
const TOKEN: u8 = b't';
/// Most bytes read from the log in one go while fetching a run of envelopes.
const READ_SPAN: u64 = 1 << 20;
/// Widest gap between two envelopes of a mailbox read in one go.
const READ_GAP: u64 = 16 << 10;
/// Longest time between checkpoints of the index (saving next-seq floors
/// and dropping idle mailboxes from memory).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// How the envelope log is laid out; the defaults suit a relay, tests use
/// tiny segments to exercise roll-over and compaction.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// A head segment rolls over once it holds this many bytes.
    pub segment_bytes: u64,
    /// ...or once it is this old and holds anything, so acknowledged
    /// ciphertext does not linger on a quiet relay's disk.
    pub max_head_age: Duration,
    /// How often the reclaimer looks for segments to delete.
    pub reclaim_every: Duration,
    /// How long a sealed segment is left before envelopes still held in it
    /// are copied out.
    pub settle: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_head_age: Duration::from_secs(600),
            reclaim_every: Duration::from_secs(1),
            settle: Duration::from_secs(10),
        }
    }
}

/// Relay state: sled for mailboxes and tokens, a log for envelopes.
pub struct SledStore {
    inner: Arc<Inner>,
    commit: Arc<GroupCommit>,
    reclaimer: Arc<Reclaimer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Inner {
    db: Db,
    tree: Tree,
    log: EnvelopeLog,
    index: Index,
    options: LogOptions,
    /// A mailbox or token record changed since sled was last flushed.
    meta_dirty: AtomicBool,
    /// Held across taking `meta_dirty` and flushing, so a second caller
    /// waits for a flush already under way instead of skipping it.
    meta_flush: Mutex<()>,
}

/// Wakes the background thread that deletes and compacts segments.
#[derive(Default)]
struct Reclaimer {
    wake: Signal,
    stopped: AtomicBool,
}

impl Reclaimer {
    fn kick(&self) {
        self.wake.raise();
    }

    /// Wait for a kick or `every`; false once stopped.
    fn wait(&self, every: Duration) -> bool {
        self.wake.wait(every).is_some() && !self.stopped.load(Ordering::SeqCst)
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("index lock poisoned".into())
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt("short integer"))
}

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn mailbox_key(id: &MailboxId) -> Vec<u8> {
    key(MAILBOX, &[id])
}

fn encode_mailbox(m: &MailboxRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&m.auth_key);
    for n in [m.next_seq, m.envelopes, m.bytes, m.tokens, m.created_ms] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

fn decode_mailbox(v: &[u8]) -> Result<MailboxRecord, StoreError> {
    let auth_key = v
        .get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::Corrupt("mailbox record"))?;
    Ok(MailboxRecord {
        auth_key,
        next_seq: u64_at(v, 32)?,
        envelopes: u64_at(v, 40)?,
        bytes: u64_at(v, 48)?,
        tokens: u64_at(v, 56)?,
        created_ms: u64_at(v, 64)?,
    })
}

/// Token value: mailbox id (16) ‖ revoked (1).
fn token_value(mailbox: &MailboxId, revoked: bool) -> Vec<u8> {
    let mut v = mailbox.to_vec();
    v.push(u8::from(revoked));
    v
}

impl Inner {
    fn record(&self, mailbox: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        match self.tree.get(mailbox_key(mailbox)).map_err(unavailable)? {
            Some(v) => Ok(Some(decode_mailbox(&v)?)),
            None => Ok(None),
        }
    }

    /// Make every write so far durable; true if the log started a new head.
    fn sync(&self) -> Result<bool, StoreError> {
        let rolled = self.log.sync(self.options.max_head_age)?;
        let _flushing = self.meta_flush.lock().map_err(|_| poisoned())?;
        if self.meta_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.db.flush() {
                self.meta_dirty.store(true, Ordering::SeqCst);
                return Err(unavailable(e));
            }
        }
        Ok(rolled)
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

    /// Delete segments whose envelopes are all gone, oldest first, copying
    /// what is still held out of the oldest one when that is worth it.
    fn reclaim(&self) -> Result<usize, StoreError> {
        let mut deleted = 0;
        loop {
            let sealed = self.log.sealed_segments()?;
            let Some(oldest) = sealed.first().copied() else {
                break;
            };
            if oldest.live > 0 {
                // A segment just sealed still holds envelopes in flight to
                // online devices, acked within moments: give them time
                // rather than copy them.
                if oldest.sealed_for < self.options.settle {
                    break;
                }
                // Copy when the oldest is mostly dead, or when the dead
                // segments it pins behind it outweigh what is held.
                let size: u64 = sealed.iter().map(|s| s.size).sum();
                let live: u64 = sealed.iter().map(|s| s.live_bytes).sum();
                let pinned = size.saturating_sub(live);
                let worth = oldest.live_bytes.saturating_mul(2) <= oldest.size
                    || pinned > live.max(2 * self.options.segment_bytes);
                if !worth {
                    break;
                }
                self.copy_forward(oldest.id)?;
            }
            // Whatever was copied, and every mailbox's next sequence number,
            // must be durable before the only older trace of it goes.
            self.checkpoint()?;
            self.sync()?;
            match self.log.delete_oldest_if_empty()? {
                Some(_) => deleted += 1,
                None => break,
            }
        }
        Ok(deleted)
    }

    /// Append a copy of every envelope still held in segment `id` to the
    /// head and point the index at the copy.
    fn copy_forward(&self, id: u64) -> Result<(), StoreError> {
        let Some(bytes) = self.log.read_segment(id)? else {
            return Ok(());
        };
        let mut at = record::MAGIC.len();
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            let Ok((rec, len)) = record::decode(rest) else {
                break;
            };
            if let Record::Envelope(e) = rec {
                let old = Location {
                    segment: id,
                    offset: at as u64,
                    len: len as u32,
                };
                let mut shard = self.index.shard(&e.mailbox).ok_or_else(poisoned)?;
                if let Some(entry) = shard
                    .get_mut(&e.mailbox)
                    .and_then(|st| st.envelopes.get_mut(&e.seq))
                    .filter(|entry| entry.at == old)
                {
                    entry.at = self.log.append_envelope(|b| record::put_envelope(b, &e))?;
                    self.log.forget_records(&[old])?;
                }
            }
            at += len;
        }
        Ok(())
    }

    /// Save every mailbox's next sequence number to its sled record and
    /// flush; then drop idle mailboxes from memory.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let mut saved = Vec::new();
        for shard in self.index.shards() {
            let shard = shard.ok_or_else(poisoned)?;
            saved.extend(
                shard
                    .iter()
                    .filter(|(_, st)| st.next_seq > st.persisted_seq)
                    .map(|(id, st)| (*id, st.next_seq)),
            );
        }
        for (id, next) in &saved {
            let _shard = self.index.shard(id).ok_or_else(poisoned)?;
            if let Some(mut rec) = self.record(id)? {
                if rec.next_seq < *next {
                    rec.next_seq = *next;
                    self.tree
                        .insert(mailbox_key(id), encode_mailbox(&rec))
                        .map_err(unavailable)?;
                }
            }
        }
        if !saved.is_empty() {
            self.db.flush().map_err(unavailable)?;
        }
        for (id, next) in saved {
            let mut shard = self.index.shard(&id).ok_or_else(poisoned)?;
            if let Some(st) = shard.get_mut(&id) {
                st.persisted_seq = st.persisted_seq.max(next);
            }
        }
        for shard in self.index.shards() {
            shard.ok_or_else(poisoned)?.retain(|_, st| !st.idle());
        }
        Ok(())
    }
}

impl SledStore {
    /// Open (or create) the store in `dir`: sled in `dir`, the envelope log
    /// in `dir/envelopes`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, LogOptions::default())
    }

    /// [`Self::open`] with a chosen log layout.
    pub fn open_with(dir: &Path, options: LogOptions) -> Result<Self, StoreError> {
        let db = ::sled::Config::new()
            .path(dir)
            // Durability comes from our own group-commit flushes; sled's
            // background flush stays on as a backstop.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(unavailable)?;
        let tree = db.open_tree("relay").map_err(unavailable)?;

        // Replay the log into per-mailbox state.
        let mut replayed: std::collections::HashMap<MailboxId, MailboxState> = Default::default();
        let log = EnvelopeLog::open(&dir.join("envelopes"), options.segment_bytes, |r| {
            match r.record {
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
            }
        })?;
        let inner = Inner {
            db,
            tree,
            log,
            index: Index::default(),
            options,
            meta_dirty: AtomicBool::new(false),
            meta_flush: Mutex::new(()),
        };
        for (id, mut st) in replayed {
            let Some(rec) = inner.record(&id)? else {
                tracing::warn!(
                    mailbox = %hex::encode(&id[..4]),
                    "envelopes for a mailbox that does not exist; ignoring them"
                );
                continue;
            };
            st.persisted_seq = rec.next_seq;
            st.next_seq = st.next_seq.max(rec.next_seq);
            for entry in st.envelopes.values() {
                inner.log.count_live(entry.at)?;
            }
            if !st.idle() {
                inner.index.shard(&id).ok_or_else(poisoned)?.insert(id, st);
            }
        }

        let inner = Arc::new(inner);
        let reclaimer = Arc::new(Reclaimer::default());
        let (flush_inner, flush_reclaimer) = (Arc::clone(&inner), Arc::clone(&reclaimer));
        let commit = GroupCommit::start(move || {
            if flush_inner.sync()? {
                flush_reclaimer.kick();
            }
            Ok(())
        });
        let (bg_inner, bg_reclaimer) = (Arc::clone(&inner), Arc::clone(&reclaimer));
        let thread = std::thread::Builder::new()
            .name("tern-log-reclaim".into())
            .spawn(move || {
                let mut checkpointed = std::time::Instant::now();
                while bg_reclaimer.wait(bg_inner.options.reclaim_every) {
                    // Rolls a quiet head over once it is old enough, and
                    // retries a write the disk refused.
                    if let Err(e) = bg_inner.sync() {
                        tracing::warn!("envelope log sync failed: {e}");
                        continue;
                    }
                    match bg_inner.reclaim() {
                        Ok(0) => {}
                        Ok(n) => {
                            checkpointed = std::time::Instant::now();
                            tracing::debug!(segments = n, "envelope log segments deleted");
                        }
                        Err(e) => tracing::warn!("envelope log reclaim failed: {e}"),
                    }
                    // Deletions checkpoint; without them (an old segment
                    // still held), drop idle mailboxes from memory anyway.
                    if checkpointed.elapsed() >= CHECKPOINT_EVERY {
                        checkpointed = std::time::Instant::now();
                        if let Err(e) = bg_inner.checkpoint() {
                            tracing::warn!("envelope index checkpoint failed: {e}");
                        }
                    }
                }
            })
            .map_err(unavailable)?;
        Ok(Self {
            inner,
            commit,
            reclaimer,
            thread: Some(thread),
        })
    }

    /// Flush everything now (used on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.sync().map(|_| ())
    }

    /// Delete and compact envelope segments now (the background thread
    /// does this every second); returns how many segments were deleted.
    pub fn reclaim(&self) -> Result<usize, StoreError> {
        self.inner.sync()?;
        self.inner.reclaim()
    }

    /// Bytes in the envelope log's segments (live or not).
    pub fn log_bytes(&self) -> u64 {
        self.inner.log.total_bytes()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.commit.stop();
        self.reclaimer.stopped.store(true, Ordering::SeqCst);
        self.reclaimer.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.flush() {
            tracing::warn!("flush on close failed: {e}");
        }
    }
}

impl MailboxStore for SledStore {
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let record = MailboxRecord {
            auth_key,
            next_seq: 1,
            envelopes: 0,
            bytes: 0,
            tokens: 0,
            created_ms: now_ms,
        };
        let swapped = self
            .inner
            .tree
            .compare_and_swap(
                mailbox_key(&id),
                None as Option<&[u8]>,
                Some(encode_mailbox(&record)),
            )
            .map_err(unavailable)?;
        self.inner.meta_dirty.store(true, Ordering::SeqCst);
        self.commit.wrote();
        swapped.map_err(|_| StoreError::MailboxExists)
    }

    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        let shard = self.inner.index.shard(id).ok_or_else(poisoned)?;
        let Some(mut rec) = self.inner.record(id)? else {
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

    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let _shard = inner.index.shard(&mailbox).ok_or_else(poisoned)?;
        let mut m = inner.record(&mailbox)?.ok_or(StoreError::UnknownMailbox)?;
        if m.tokens >= max_tokens {
            return Err(StoreError::QuotaExceeded {
                envelopes: m.envelopes,
                bytes: m.bytes,
            });
        }
        m.tokens += 1;
        let mut batch = Batch::default();
        batch.insert(mailbox_key(&mailbox), encode_mailbox(&m));
        batch.insert(key(TOKEN, &[&hash]), token_value(&mailbox, false));
        inner.tree.apply_batch(batch).map_err(unavailable)?;
        inner.meta_dirty.store(true, Ordering::SeqCst);
        self.commit.wrote();
        Ok(())
    }

    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let Some(v) = self
            .inner
            .tree
            .get(key(TOKEN, &[hash]))
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let mailbox = v
            .get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or(StoreError::Corrupt("token record"))?;
        Ok(Some(TokenRecord {
            mailbox,
            revoked: v.get(16) == Some(&1),
        }))
    }

    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let _shard = inner.index.shard(mailbox).ok_or_else(poisoned)?;
        let tkey = key(TOKEN, &[hash]);
        let Some(v) = inner.tree.get(&tkey).map_err(unavailable)? else {
            return Ok(false);
        };
        if v.get(..16) != Some(&mailbox[..]) {
            return Ok(false);
        }
        if v.get(16) == Some(&1) {
            return Ok(true);
        }
        let mut batch = Batch::default();
        batch.insert(tkey, token_value(mailbox, true));
        if let Some(mut m) = inner.record(mailbox)? {
            m.tokens = m.tokens.saturating_sub(1);
            batch.insert(mailbox_key(mailbox), encode_mailbox(&m));
        }
        inner.tree.apply_batch(batch).map_err(unavailable)?;
        inner.meta_dirty.store(true, Ordering::SeqCst);
        self.commit.wrote();
        Ok(true)
    }

    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError> {
        let inner = &self.inner;
        let size = env.payload.len() as u64;
        let mut shard = inner.index.shard(mailbox).ok_or_else(poisoned)?;
        if !shard.contains_key(mailbox) {
            let rec = inner.record(mailbox)?.ok_or(StoreError::UnknownMailbox)?;
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
        let at = inner
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
        self.commit.wrote();
        drop(shard);
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        // A segment can vanish between reading the index and reading the
        // log only if its envelopes were acknowledged meanwhile; the next
        // look at the index no longer lists them.
        for _ in 0..8 {
            let entries: Vec<(u64, Location)> = {
                let shard = self.inner.index.shard(mailbox).ok_or_else(poisoned)?;
                let Some(st) = shard.get(mailbox) else {
                    return Ok(Vec::new());
                };
                st.envelopes
                    .range((Excluded(after_seq), Unbounded))
                    .take(limit)
                    .map(|(seq, e)| (*seq, e.at))
                    .collect()
            };
            if let Some(found) = self.inner.read_envelopes(mailbox, &entries)? {
                return Ok(found);
            }
        }
        Err(StoreError::Unavailable(
            "envelope log changed under every read".into(),
        ))
    }

    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let mut shard = inner.index.shard(mailbox).ok_or_else(poisoned)?;
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
        inner
            .log
            .append_removal(|b| record::put_remove(b, mailbox, &gone), &at)?;
        // Counted but not waited for: deletes become durable with the next
        // flush (at most ~200 ms later); a redelivered envelope is dropped
        // by the recipient's de-duplication.
        self.commit.wrote();
        drop(shard);
        Ok(gone.len() as u64)
    }

    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let inner = &self.inner;
        let mut total = 0u64;
        for shard in inner.index.shards() {
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
                inner
                    .log
                    .append_removal(|b| record::put_remove(b, id, &expired), &at)?;
                total += expired.len() as u64;
            }
        }
        if total > 0 {
            self.commit.wrote();
        }
        Ok(Swept { envelopes: total })
    }

    fn durable(&self) -> Durable {
        Box::pin(self.commit.wait())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        max_envelopes: 1_000_000,
        max_bytes: 1 << 30,
    };

    /// Tiny segments and no background thread timing: tests call
    /// `reclaim` themselves.
    fn tiny() -> LogOptions {
        LogOptions {
            segment_bytes: 2048,
            max_head_age: Duration::from_secs(3600),
            reclaim_every: Duration::from_secs(3600),
            settle: Duration::ZERO,
        }
    }

    fn put(store: &SledStore, mailbox: &MailboxId, id: u32, payload: &[u8]) -> Appended {
        let mut message_id = [0u8; 16];
        message_id[..4].copy_from_slice(&id.to_be_bytes());
        let env = NewEnvelope {
            message_id,
            payload,
            now_ms: 1,
            expires_ms: u64::MAX,
        };
        store.append(mailbox, env, QUOTA).unwrap()
    }

    fn seqs(store: &SledStore, mailbox: &MailboxId) -> Vec<u64> {
        let got = store.fetch(mailbox, 0, 100_000).unwrap();
        got.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn sequence_numbers_are_never_reused_after_their_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mb = [1u8; 16];
        {
            let store = SledStore::open_with(dir.path(), tiny()).unwrap();
            store.create_mailbox(mb, [9; 32], 0).unwrap();
            for i in 0..100 {
                let a = put(&store, &mb, i, &[7; 100]);
                store.ack(&mb, &[a.seq]).unwrap();
            }
            assert!(store.reclaim().unwrap() > 0, "acked segments are deleted");
            let segments = std::fs::read_dir(dir.path().join("envelopes"))
                .unwrap()
                .count();
            assert!(segments <= 2, "{segments} segment files left");
        }
        let store = SledStore::open_with(dir.path(), tiny()).unwrap();
        assert_eq!(store.mailbox(&mb).unwrap().unwrap().next_seq, 101);
        assert_eq!(put(&store, &mb, 1000, b"next").seq, 101);
        assert_eq!(seqs(&store, &mb), [101]);
    }

    #[test]
    fn held_envelopes_are_copied_out_of_dead_segments_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (offline, online) = ([2u8; 16], [3u8; 16]);
        {
            let store = SledStore::open_with(dir.path(), tiny()).unwrap();
            store.create_mailbox(offline, [9; 32], 0).unwrap();
            store.create_mailbox(online, [8; 32], 0).unwrap();
            // Each of the offline mailbox's envelopes lands among many that
            // are acknowledged at once, so every segment is mostly dead.
            for i in 0..30 {
                put(&store, &offline, i, format!("held {i}").as_bytes());
                for j in 0..10 {
                    let a = put(&store, &online, i * 100 + j, &[5; 120]);
                    store.ack(&online, &[a.seq]).unwrap();
                }
                store.flush().unwrap();
            }
            let before = store.log_bytes();
            assert!(store.reclaim().unwrap() > 3);
            assert!(
                store.log_bytes() * 4 < before,
                "log {} bytes after reclaim, {before} before",
                store.log_bytes()
            );
            assert_eq!(seqs(&store, &offline), (1..=30).collect::<Vec<_>>());
        }
        let store = SledStore::open_with(dir.path(), tiny()).unwrap();
        let got = store.fetch(&offline, 0, 100).unwrap();
        assert_eq!(got.len(), 30);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.payload, format!("held {i}").as_bytes());
        }
        assert!(
            seqs(&store, &online).is_empty(),
            "acked envelopes stay gone"
        );
        let m = store.mailbox(&offline).unwrap().unwrap();
        assert_eq!((m.envelopes, m.next_seq), (30, 31));
        // A retry of a held envelope is recognised after the copy and reopen.
        let again = put(&store, &offline, 4, b"held 4");
        assert_eq!((again.seq, again.duplicate), (5, true));
    }

    #[test]
    fn a_mostly_live_segment_is_kept_until_it_pins_too_much() {
        let dir = tempfile::tempdir().unwrap();
        let (offline, online) = ([4u8; 16], [5u8; 16]);
        let store = SledStore::open_with(dir.path(), tiny()).unwrap();
        store.create_mailbox(offline, [9; 32], 0).unwrap();
        store.create_mailbox(online, [8; 32], 0).unwrap();
        for i in 0..40 {
            put(&store, &offline, i, &[1; 100]);
        }
        store.flush().unwrap();
        store.reclaim().unwrap();
        let held = store.log_bytes();
        // Dead traffic behind it piles up only until it outweighs what is
        // held (and two segments); then the live one is copied forward.
        for i in 0..400 {
            let a = put(&store, &online, i, &[2; 100]);
            store.ack(&online, &[a.seq]).unwrap();
            store.flush().unwrap();
            store.reclaim().unwrap();
            assert!(
                store.log_bytes() < 2 * held + 4 * 2048 + 2048,
                "log grew to {} with {held} held",
                store.log_bytes()
            );
        }
        assert_eq!(seqs(&store, &offline), (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn envelopes_in_a_freshly_sealed_segment_are_left_to_be_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mb = [8u8; 16];
        let options = LogOptions {
            settle: Duration::from_secs(3600),
            ..tiny()
        };
        let store = SledStore::open_with(dir.path(), options).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        let mut seqs_held = Vec::new();
        for i in 0..40 {
            let seq = put(&store, &mb, i, &[3; 100]).seq;
            if i % 8 == 0 {
                seqs_held.push(seq);
            } else {
                store.ack(&mb, &[seq]).unwrap();
            }
            store.flush().unwrap();
        }
        // Mostly dead segments, but the few envelopes left were in flight
        // when their segments were sealed: not copied yet...
        let before = store.log_bytes();
        assert_eq!(store.reclaim().unwrap(), 0);
        assert!(store.log_bytes() >= before);
        // ...and once acked, the segments simply go.
        store.ack(&mb, &seqs_held).unwrap();
        assert!(store.reclaim().unwrap() >= 2);
        assert!(
            store.log_bytes() * 2 < before,
            "{} of {before}",
            store.log_bytes()
        );
    }

    #[test]
    fn fetch_reads_across_the_buffer_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mb = [6u8; 16];
        let store = SledStore::open(dir.path()).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        for i in 0..5 {
            put(&store, &mb, i, format!("on disk {i}").as_bytes());
        }
        store.flush().unwrap();
        for i in 5..10 {
            put(&store, &mb, i, format!("in memory {i}").as_bytes());
        }
        let got = store.fetch(&mb, 2, 6).unwrap();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7, 8]
        );
        assert_eq!(got[2].payload, b"on disk 4");
        assert_eq!(got[3].payload, b"in memory 5");
    }

    #[test]
    fn quota_counts_held_envelopes_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mb = [7u8; 16];
        let store = SledStore::open(dir.path()).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        let quota = Quota {
            max_envelopes: 2,
            max_bytes: 10,
        };
        let env = |id: u8, payload: &'static [u8]| NewEnvelope {
            message_id: [id; 16],
            payload,
            now_ms: 1,
            expires_ms: 100,
        };
        store.append(&mb, env(1, b"12345"), quota).unwrap();
        assert!(matches!(
            store.append(&mb, env(2, b"123456"), quota),
            Err(StoreError::QuotaExceeded {
                envelopes: 1,
                bytes: 5
            })
        ));
        store.append(&mb, env(3, b"12345"), quota).unwrap();
        assert!(matches!(
            store.append(&mb, env(4, b""), quota),
            Err(StoreError::QuotaExceeded { envelopes: 2, .. })
        ));
        store.ack(&mb, &[1]).unwrap();
        store.append(&mb, env(4, b"1"), quota).unwrap();
        assert_eq!(
            store.append(&[0; 16], env(5, b"x"), quota),
            Err(StoreError::UnknownMailbox)
        );
    }
}
