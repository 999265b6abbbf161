//! The index checkpoint: the compact index written to one file, so a
//! restart reads it instead of every segment's payloads. It covers every
//! segment older than the head at the time it was written (the "cut");
//! segments from the cut on are replayed as before. Start-up therefore
//! reads the checkpoint (24 bytes per held envelope) and at most the
//! segments written since it, never the payloads of older ones.
//!
//! ```text
//! file  = "TERNIDX1" ‖ cut (8) ‖ segments (8) ‖ segment × n ‖ block* ‖ 0 (1) ‖ CRC-32 (4)
//! segment = id (8) ‖ earliest expiry (8) ‖ flags (1: quarantined 1, version 1 segment 2)
//! block = 1 (1) ‖ mailbox id (16) ‖ next seq (8) ‖ slots (8) ‖ slot (24) × n
//! slot  = seq (8) ‖ segment (4) ‖ offset (4) ‖ record length (4) ‖ id fingerprint (4)
//! ```
//!
//! Integers are big-endian; the CRC covers everything before it. Shards are
//! written one at a time, each under its own lock, after the cut is taken:
//! a change made meanwhile is both (maybe) in the file and in a replayed
//! segment, and replaying it again is harmless (inserting a held envelope
//! twice keeps one; removing a removed one does nothing). Slots pointing at
//! replayed segments are dropped at load (replay brings back those that
//! were durable). A missing, short or damaged checkpoint is ignored and
//! the whole log is replayed, as before checkpoints existed.

use super::index::{MailboxState, Slot};
use super::{poisoned, Inner, MailboxId, StoreError};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TERNIDX1";
/// Its file name in the envelope directory.
pub(super) const FILE: &str = "index.ckpt";

/// A loaded checkpoint.
pub(super) struct Loaded {
    /// The first segment it does not cover.
    pub(super) cut: u64,
    /// (id, earliest expiry, flags) of segments it knew.
    pub(super) segments: Vec<(u64, u64, u8)>,
    /// Held envelopes in covered segments, per mailbox.
    pub(super) mailboxes: HashMap<MailboxId, MailboxState>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// A writer that hashes what it writes.
struct Hashed<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Hashed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// A reader that hashes what it reads.
struct Reading<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Reading<R> {
    fn take<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.crc.update(&b);
        Ok(b)
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        self.take::<8>().map(u64::from_be_bytes)
    }
}

/// Read the checkpoint in `dir`, if there is a whole one.
pub(super) fn load(dir: &Path) -> Result<Option<Loaded>, String> {
    let file = match File::open(path(dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    let mut r = Reading {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let bad = |e: std::io::Error| format!("read: {e}");
    if &r.take::<8>().map_err(bad)? != MAGIC {
        return Err("not an index checkpoint".into());
    }
    let cut = r.u64().map_err(bad)?;
    let n = r.u64().map_err(bad)?;
    let mut segments = Vec::new();
    for _ in 0..n.min(1 << 32) {
        let id = r.u64().map_err(bad)?;
        let min = r.u64().map_err(bad)?;
        let [flags] = r.take::<1>().map_err(bad)?;
        segments.push((id, min, flags));
    }
    let mut mailboxes = HashMap::new();
    let mut chunk = Vec::new();
    loop {
        let [tag] = r.take::<1>().map_err(bad)?;
        if tag == 0 {
            break;
        }
        let id: MailboxId = r.take::<16>().map_err(bad)?;
        let next_seq = r.u64().map_err(bad)?;
        let count = r.u64().map_err(bad)?;
        let mut slots = Vec::with_capacity(usize::try_from(count.min(1 << 24)).unwrap_or(0));
        // Slots in runs of up to 4,096 (one read and one hash each).
        let mut left = count;
        while left > 0 {
            let n = left.min(4096) as usize;
            chunk.resize(n * 24, 0);
            r.inner.read_exact(&mut chunk).map_err(bad)?;
            r.crc.update(&chunk);
            for raw in chunk.chunks_exact(24) {
                let raw: &[u8; 24] = raw.try_into().map_err(|_| "slot size".to_string())?;
                if let Some(s) = Slot::from_bytes(raw).filter(|s| s.at().segment < cut) {
                    slots.push(s);
                }
            }
            left -= n as u64;
        }
        mailboxes.insert(id, MailboxState::from_sorted(next_seq, slots));
    }
    let want = r.crc.clone().finalize();
    let mut crc = [0u8; 4];
    r.inner.read_exact(&mut crc).map_err(bad)?;
    if u32::from_be_bytes(crc) != want {
        return Err("checksum mismatch".into());
    }
    Ok(Some(Loaded {
        cut,
        segments,
        mailboxes,
    }))
}

impl Inner {
    /// Write the checkpoint now, one reclamation or checkpoint at a time.
    pub(super) fn checkpoint_now(&self) -> Result<u64, StoreError> {
        let _one_at_a_time = self.reclaiming.lock().map_err(|_| poisoned())?;
        let (_, cut) = self.log.segment_table()?;
        let size = self.write_checkpoint()?;
        if let Ok(mut c) = self.checkpointed.lock() {
            *c = (cut, size);
        }
        Ok(size)
    }

    /// Write the checkpoint if the segments written since the last one
    /// would take long to replay: more than a segment, and more than the
    /// checkpoint's own size (so writing it costs at most a byte per byte
    /// of log, and a restart replays at most that much log: at 10M held,
    /// ~240 MB, well under a second).
    pub(super) fn maybe_checkpoint(&self) -> Result<(), StoreError> {
        let (cut, size) = *self.checkpointed.lock().map_err(|_| poisoned())?;
        let since: u64 = self
            .log
            .sealed_segments()?
            .iter()
            .filter(|s| s.id >= cut)
            .map(|s| s.size)
            .sum();
        if since >= self.options.segment_bytes.max(size) {
            let size = self.checkpoint_now()?;
            tracing::debug!(bytes = size, "index checkpoint written");
        }
        Ok(())
    }

    /// Write the checkpoint for every segment older than the head; returns
    /// its size in bytes. Everything written before is synced first, so
    /// the segments it covers are durable before it replaces the last one.
    pub(super) fn write_checkpoint(&self) -> Result<u64, StoreError> {
        let fail = |e: std::io::Error| StoreError::unavailable("write index checkpoint", e);
        self.sync()?;
        let (table, cut) = self.log.segment_table()?;
        let dir = self.log.dir();
        let tmp = dir.join(format!("{FILE}.tmp"));
        let file = File::create(&tmp).map_err(fail)?;
        let mut w = Hashed {
            inner: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        w.put(MAGIC).map_err(fail)?;
        w.put(&cut.to_be_bytes()).map_err(fail)?;
        w.put(&(table.len() as u64).to_be_bytes()).map_err(fail)?;
        for (id, min, flags) in &table {
            w.put(&id.to_be_bytes()).map_err(fail)?;
            w.put(&min.to_be_bytes()).map_err(fail)?;
            w.put(&[*flags]).map_err(fail)?;
        }
        let mut block = Vec::new();
        for shard in self.index.shards() {
            block.clear();
            {
                let shard = shard.ok_or_else(poisoned)?;
                for (id, st) in shard.iter() {
                    block.push(1);
                    block.extend_from_slice(id);
                    block.extend_from_slice(&st.next_seq.to_be_bytes());
                    block.extend_from_slice(&st.len().to_be_bytes());
                    for s in st.iter() {
                        block.extend_from_slice(&s.to_bytes());
                    }
                }
            }
            w.put(&block).map_err(fail)?;
        }
        w.put(&[0]).map_err(fail)?;
        let crc = w.crc.clone().finalize();
        w.inner.write_all(&crc.to_be_bytes()).map_err(fail)?;
        let file = w.inner.into_inner().map_err(|e| fail(e.into_error()))?;
        let size = file.metadata().map_err(fail)?.len();
        if let Err(e) = file.sync_all() {
            super::durability::fatal(&format!("fsync of the index checkpoint failed: {e}"));
        }
        std::fs::rename(&tmp, path(&dir)).map_err(fail)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(fail)?;
        Ok(size)
    }
}
