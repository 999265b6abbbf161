//! The embedded engine, [`EmbeddedStore`]: what a single relay runs on with
//! nothing else to install. Mailbox and send-token records live in sled
//! (`meta`); envelopes live in an append-only segment log ([`envelope_log`],
//! record format in [`record`]) indexed in memory ([`index`]).
//!
//! The engine is split by job:
//!
//! - `meta`: mailbox and token records in sled;
//! - `envelopes`: appending, reading, acknowledging and expiring envelopes
//!   through the log and its index, and rebuilding the index at start;
//! - `checkpoint`: the index written to one file, so a restart reads it and
//!   replays only the segments written since;
//! - `reclaim`: the background thread that deletes segments whose envelopes
//!   are all gone, copies held ones out of mostly-dead segments, and writes
//!   the checkpoint as the log grows;
//! - `status`: what `tern-relay status` reads from the files;
//! - `durability`: one flush (log `fdatasync` plus a sled flush when a record
//!   changed), shared by concurrent writers through [`group_commit`].
//!
//! This file holds the engine type, its opening and closing, and the
//! [`MailboxStore`] implementation, which only takes the right locks and
//! counts writes for the group commit.
//!
//! On disk: sled in the store directory, segment files (`TERNLOG2`; older
//! `TERNLOG1` ones still read), the index checkpoint and quarantine
//! markers in `envelopes/` under it (docs/operations.md).

mod checkpoint;
mod durability;
mod envelopes;
mod meta;
mod reclaim;

pub mod envelope_log;
pub mod group_commit;
pub mod index;
pub mod record;
mod shared;
pub mod signal;
pub mod status;
mod token_cache;

#[cfg(test)]
mod fanout_tests;
#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;

use self::envelope_log::EnvelopeLog;
use self::group_commit::GroupCommit;
use self::index::Index;
use self::meta::Meta;
use self::reclaim::Reclaimer;
use super::{
    Appended, Durable, MailboxId, MailboxRecord, MailboxStore, MessageId, NewEnvelope, Quota,
    StoreError, StoredEnvelope, Swept, TokenHash, TokenRecord,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// Most envelopes held relay-wide; sends past it are refused
    /// ([`StoreError::RelayFull`]). Memory is about 27 bytes per held
    /// envelope, so this caps the index's memory.
    pub max_held_envelopes: u64,
    /// Most payload bytes held relay-wide.
    pub max_held_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_head_age: Duration::from_secs(600),
            reclaim_every: Duration::from_secs(1),
            settle: Duration::from_secs(10),
            max_held_envelopes: u64::MAX,
            max_held_bytes: u64::MAX,
        }
    }
}

/// The embedded engine: sled for mailboxes and tokens, an append-only
/// segment log for envelopes.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    commit: Arc<GroupCommit>,
    reclaimer: Arc<Reclaimer>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by [`MailboxStore::close`]; writes are refused from then on.
    closed: AtomicBool,
}

/// What the engine's jobs share; the group-commit flusher and the reclaimer
/// thread hold it too.
struct Inner {
    meta: Meta,
    log: EnvelopeLog,
    index: Index,
    options: LogOptions,
    /// One reclamation at a time: the background thread and an explicit
    /// [`EmbeddedStore::reclaim`] must not copy the same segment forward
    /// twice or judge a segment while the other is emptying it.
    reclaiming: std::sync::Mutex<()>,
    /// Envelopes held relay-wide (for `max_held_envelopes`).
    held: AtomicU64,
    /// Payload bytes held relay-wide.
    held_bytes: AtomicU64,
    /// The first segment the index checkpoint does not cover, and the
    /// checkpoint's size: when to write the next one.
    checkpointed: Mutex<(u64, u64)>,
}

/// A failure of the sled metadata database.
fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::unavailable("metadata database", e)
}

fn poisoned() -> StoreError {
    StoreError::Unavailable("index lock poisoned".into())
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir`: sled in `dir`, the envelope log
    /// in `dir/envelopes`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, LogOptions::default())
    }

    /// [`Self::open`] with a chosen log layout.
    pub fn open_with(dir: &Path, options: LogOptions) -> Result<Self, StoreError> {
        let started = std::time::Instant::now();
        raise_open_file_limit();
        let meta = Meta::open(dir)?;
        let edir = dir.join("envelopes");
        let mut replayed = envelopes::Replayed::default();
        let (first, table, size) = match checkpoint::load(&edir) {
            Ok(Some(c)) => {
                replayed.mailboxes = c.mailboxes;
                let size = std::fs::metadata(edir.join(checkpoint::FILE)).map_or(0, |m| m.len());
                (c.cut, c.segments, size)
            }
            Ok(None) => (0, Vec::new(), 0),
            Err(e) => {
                tracing::warn!("index checkpoint unusable ({e}); replaying the whole log");
                (0, Vec::new(), 0)
            }
        };
        let log = envelopes::replay(&edir, options.segment_bytes, first, &mut replayed)?;
        for (id, min_expires, flags) in table {
            if id < first {
                log.restore_segment(id, min_expires, flags);
            }
        }
        let inner = Inner {
            meta,
            log,
            index: Index::default(),
            options,
            reclaiming: std::sync::Mutex::new(()),
            held: AtomicU64::new(0),
            held_bytes: AtomicU64::new(0),
            checkpointed: Mutex::new((first, size)),
        };
        inner.load_index(replayed)?;
        tracing::info!(
            held = inner.held.load(Ordering::SeqCst),
            replayed_from_segment = first,
            checkpoint_bytes = size,
            ms = started.elapsed().as_millis() as u64,
            "envelope store open"
        );
        let inner = Arc::new(inner);
        let reclaimer = Arc::new(Reclaimer::default());
        let commit = durability::start(&inner, &reclaimer);
        let thread = match reclaim::spawn(Arc::clone(&inner), Arc::clone(&reclaimer)) {
            Ok(t) => t,
            Err(e) => {
                commit.stop();
                return Err(e);
            }
        };
        Ok(Self {
            inner,
            commit,
            reclaimer,
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
        })
    }

    /// Delete and compact envelope segments now (the background thread
    /// does this every second); returns how many segments were deleted.
    pub fn reclaim(&self) -> Result<usize, StoreError> {
        self.inner.sync()?;
        self.inner.reclaim()
    }

    /// Envelope segments quarantined (kept, never deleted): (id, why).
    pub fn quarantined(&self) -> Vec<(u64, &'static str)> {
        self.inner.log.quarantined()
    }

    /// Envelopes held relay-wide.
    pub fn held(&self) -> u64 {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Write the index checkpoint now (the background thread does this as
    /// the log grows); returns its size in bytes.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        self.inner.checkpoint_now()
    }

    /// Bytes in the envelope log's segments (live or not).
    pub fn log_bytes(&self) -> u64 {
        self.inner.log.total_bytes()
    }

    /// Refuse writes once closed: nothing written then would be flushed.
    fn writable(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable("the store is closed".into()))
        } else {
            Ok(())
        }
    }
}

/// Raise the open-file soft limit to the hard limit: segments are opened
/// lazily and few at a time, but sled, sockets and a burst of reads share
/// the limit, and the usual soft 1,024 is far below what a relay may need.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::debug!("could not raise the open-file limit: {e}");
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!("flush on close failed: {e}");
        }
    }
}

impl MailboxStore for EmbeddedStore {
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.writable()?;
        let created = self.inner.meta.create_mailbox(id, auth_key, now_ms);
        self.commit.wrote();
        created
    }

    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        self.inner.mailbox(id)
    }

    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError> {
        self.writable()?;
        // The shard lock keeps a checkpoint from rewriting the mailbox
        // record between our read and write of it.
        let _shard = self.inner.index.shard(&mailbox).ok_or_else(poisoned)?;
        self.inner.meta.add_token(hash, mailbox, max_tokens)?;
        self.commit.wrote();
        Ok(())
    }

    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.meta.token(hash)
    }

    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError> {
        self.writable()?;
        let _shard = self.inner.index.shard(mailbox).ok_or_else(poisoned)?;
        let changed = self.inner.meta.revoke_token(hash, mailbox)?;
        if changed == meta::Revoked::Now {
            self.commit.wrote();
        }
        Ok(changed != meta::Revoked::NotThisMailbox)
    }

    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError> {
        self.writable()?;
        self.inner.append(mailbox, env, quota, &self.commit)
    }

    fn append_many(
        &self,
        targets: &[(MailboxId, Quota)],
        env: NewEnvelope<'_>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        self.writable()?;
        // The payload once, with a reference per mailbox (`shared`); the
        // caller's one durability wait covers every target.
        self.inner.append_many(targets, env, &self.commit)
    }

    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        self.inner.fetch(mailbox, after_seq, limit)
    }

    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError> {
        self.writable()?;
        self.inner.ack(mailbox, seqs, &self.commit)
    }

    fn try_ack_now(&self, mailbox: &MailboxId, seqs: &[u64]) -> Option<Result<u64, StoreError>> {
        if let Err(e) = self.writable() {
            return Some(Err(e));
        }
        self.inner.try_ack_now(mailbox, seqs, &self.commit)
    }

    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError> {
        self.writable()?;
        self.inner.sweep(now_ms, &self.commit)
    }

    fn durable(&self) -> Durable {
        Box::pin(self.commit.wait())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.sync().map(|_| ())
    }

    fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        // Both stops are idempotent; the threads release their handles on
        // the database so the files can be reopened once this is dropped.
        self.commit.stop();
        self.reclaimer.stop();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.inner.sync()?;
        // A clean stop leaves a checkpoint behind, so the next start
        // replays only the head.
        if let Err(e) = self.inner.checkpoint_now() {
            tracing::warn!("index checkpoint on close failed: {e}");
        }
        Ok(())
    }
}
