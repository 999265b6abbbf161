//! Reclamation: a background thread deletes log segments whose envelopes
//! are all gone, oldest first, copying the few still held out of
//! mostly-dead segments first so an offline recipient's mail does not pin
//! old segments on disk. It also checkpoints the index: every mailbox's next
//! sequence number is saved to its sled record before the only older trace
//! of it is deleted, and idle mailboxes are dropped from memory.
//!
//! The thread wakes every [`LogOptions::reclaim_every`](super::LogOptions),
//! or at once when a flush starts a new head segment.

use super::envelope_log::Location;
use super::record::{self, Record};
use super::signal::Signal;
use super::{poisoned, unavailable, Inner, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest time between checkpoints of the index (saving next-seq floors
/// and dropping idle mailboxes from memory).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);
/// Copying forward syncs the log after this many bytes of copies.
const COPY_SYNC_BYTES: u64 = 4 << 20;

/// Wakes the background thread that deletes and compacts segments.
#[derive(Default)]
pub(super) struct Reclaimer {
    wake: Signal,
    stopped: AtomicBool,
}

impl Reclaimer {
    /// Look for work now.
    pub(super) fn kick(&self) {
        self.wake.raise();
    }

    /// Ask the thread to end (it ends after the round under way).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Wait for a kick or `every`; false once stopped.
    fn wait(&self, every: Duration) -> bool {
        self.wake.wait(every).is_some() && !self.stopped.load(Ordering::SeqCst)
    }
}

/// Start the reclaimer thread; it runs until [`Reclaimer::stop`].
pub(super) fn spawn(
    inner: Arc<Inner>,
    reclaimer: Arc<Reclaimer>,
) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("tern-log-reclaim".into())
        .spawn(move || run(&inner, &reclaimer))
        .map_err(unavailable)
}

fn run(inner: &Inner, reclaimer: &Reclaimer) {
    let mut checkpointed = Instant::now();
    while reclaimer.wait(inner.options.reclaim_every) {
        // Rolls a quiet head over once it is old enough, and retries a
        // write the disk refused.
        if let Err(e) = inner.sync() {
            tracing::warn!("envelope log sync failed: {e}");
            continue;
        }
        match inner.reclaim() {
            Ok(0) => {}
            Ok(n) => {
                checkpointed = Instant::now();
                tracing::debug!(segments = n, "envelope log segments deleted");
            }
            Err(e) => tracing::warn!("envelope log reclaim failed: {e}"),
        }
        if let Err(e) = inner.maybe_checkpoint() {
            tracing::warn!("index checkpoint failed: {e}");
        }
        // Deletions checkpoint; without them (an old segment still held),
        // drop idle mailboxes from memory anyway.
        if checkpointed.elapsed() >= CHECKPOINT_EVERY {
            checkpointed = Instant::now();
            if let Err(e) = inner.checkpoint() {
                tracing::warn!("envelope index checkpoint failed: {e}");
            }
        }
    }
}

impl Inner {
    /// Delete segments whose envelopes are all gone, oldest first, copying
    /// what is still held out of the oldest one when that is worth it.
    pub(super) fn reclaim(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.reclaiming.lock().map_err(|_| poisoned())?;
        let mut deleted = 0;
        loop {
            // Quarantined segments are kept as they are (docs/operations.md).
            let mut sealed = self.log.sealed_segments()?;
            sealed.retain(|s| s.quarantined.is_none());
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
        deleted += self.delete_checkpointed_dead()?;
        Ok(deleted)
    }

    /// Delete dead segments the index checkpoint covers, even behind
    /// segments that still hold envelopes: a restart reads the checkpoint
    /// for them, not their removal records, so long-held envelopes need not
    /// be copied forward on every turn of the log to let them go. (Without
    /// the checkpoint a full replay would deliver again envelopes acked in
    /// them, which clients drop as duplicates.)
    fn delete_checkpointed_dead(&self) -> Result<usize, StoreError> {
        let cut = self.checkpointed.lock().map_err(|_| poisoned())?.0;
        let dead: Vec<u64> = self
            .log
            .sealed_segments()?
            .iter()
            .filter(|s| s.quarantined.is_none() && s.live == 0 && s.id < cut)
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return Ok(0);
        }
        // Every mailbox's next sequence number is saved before the only
        // trace of it may go.
        self.checkpoint()?;
        self.sync()?;
        let mut deleted = 0;
        for id in dead {
            if self.log.delete_if_dead(id)? {
                deleted += 1;
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
        let mut copied = 0u64;
        let mut at = record::MAGIC.len();
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            let Ok((rec, len)) = self.log.decode(id, rest) else {
                break;
            };
            if let Record::Refs {
                payload_offset,
                refs,
            } = &rec
            {
                copied += self.copy_shared_forward(id, &bytes, *payload_offset, refs)?;
            }
            if let Record::Envelope(e) = rec {
                let old = Location {
                    segment: id,
                    offset: at as u64,
                    len: len as u32,
                };
                let mut shard = self.index.shard(&e.mailbox).ok_or_else(poisoned)?;
                if let Some(slot) = shard
                    .get_mut(&e.mailbox)
                    .and_then(|st| st.get_mut(e.seq))
                    .filter(|slot| slot.at() == old)
                {
                    let at = self
                        .log
                        .append_envelope(|b| record::put_envelope(b, &e), e.expires_ms)?;
                    if !slot.move_to(at, false) {
                        return Err(StoreError::Corrupt("log location beyond 32 bits"));
                    }
                    self.log.forget_records(&[old])?;
                    copied += u64::from(at.len);
                }
            }
            at += len;
            // Copies are synced as they go, so they never fill the buffer
            // that sends append to.
            if copied >= COPY_SYNC_BYTES {
                copied = 0;
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Save every mailbox's next sequence number to its sled record and
    /// flush; then drop idle mailboxes from memory.
    pub(super) fn checkpoint(&self) -> Result<(), StoreError> {
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
            self.meta.raise_next_seq(id, *next)?;
        }
        if !saved.is_empty() {
            self.meta.flush()?;
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
