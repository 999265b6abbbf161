//! The envelope log: envelopes and their removals appended to segment files,
//! so storing one costs a memcpy and a share of one `fdatasync`, where a
//! B-tree insert and delete cost far more (measured: sled's node copies held
//! the relay to ~5,500 durable messages a second; docs/performance.md).
//!
//! Appends land in an in-memory buffer; [`EnvelopeLog::sync`] writes the
//! buffer to the head segment and `fdatasync`s every file written since the
//! last sync. The head rolls over to a new segment once it passes the
//! segment size. Segments are deleted oldest first, once nothing in them is
//! still held: so a removal record never outlives the envelope it removes
//! (it always sits in a later segment), and recovery, replaying segments in
//! order, cannot bring an acknowledged envelope back. Envelopes that stay
//! long (offline recipients) are copied forward by [`crate::store::EmbeddedStore`]
//! so they do not pin old segments.
//!
//! Which envelopes are live, and where, is the caller's index; this module
//! keeps per-segment counts so it can say when a segment may go.
//!
//! A little over 600 lines on purpose: the buffer, the segment files and
//! sync share one lock discipline and are meant to be read together.
//! Opening and replay are in `envelope_log_open.rs`, the bookkeeping of
//! segments (expiry, quarantine, versions, out-of-order deletion) in
//! `envelope_log_segments.rs`; both are child modules of this one.

use super::record::{self, Damage, Record, LEGACY_MAGIC, MAGIC};
use super::StoreError;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Segment id.
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u64,
    /// Record length in bytes.
    pub len: u32,
}

/// A segment's size and how much of it is still held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentUse {
    /// Its id.
    pub id: u64,
    /// Bytes in it.
    pub size: u64,
    /// Live envelope records in it.
    pub live: u64,
    /// Bytes of its live envelope records.
    pub live_bytes: u64,
    /// How long ago it stopped being the head (or the log was opened).
    pub sealed_for: Duration,
    /// Earliest expiry among its envelope records (`u64::MAX`: none).
    pub min_expires: u64,
    /// Why it is quarantined, if it is: never deleted by the relay.
    pub quarantined: Option<&'static str>,
}

struct Segment {
    /// Opened when first needed, closed when many are open (fd cache).
    file: Option<Arc<File>>,
    size: u64,
    live: u64,
    live_bytes: u64,
    /// When it stopped being the head (or was found at open).
    sealed_at: Instant,
    /// Earliest expiry among its envelope records (`u64::MAX`: none).
    min_expires: u64,
    /// Why it is quarantined, if it is.
    quarantined: Option<&'static str>,
    /// A version 1 segment (record headers without a check).
    legacy: bool,
}

impl Segment {
    fn new(file: Option<File>, size: u64) -> Self {
        Self {
            file: file.map(Arc::new),
            size,
            live: 0,
            live_bytes: 0,
            sealed_at: Instant::now(),
            min_expires: u64::MAX,
            quarantined: None,
            legacy: false,
        }
    }
}

/// A segment as the index checkpoint records it: id, earliest expiry, flags.
pub type SegmentEntry = (u64, u64, u8);

/// Segment-table flag: the segment is quarantined.
pub const QUARANTINED: u8 = 1;
/// Segment-table flag: a version 1 segment.
pub const LEGACY: u8 = 2;

/// Most segment files held open at once; others are opened when read.
const OPEN_FILES: usize = 64;

struct Tail {
    head: u64,
    head_started: Instant,
    /// Head bytes already handed to the file.
    written: u64,
    /// Head bytes from `written` on.
    buf: Vec<u8>,
    segments: BTreeMap<u64, Segment>,
    /// Segments written and not yet synced.
    unsynced: Vec<u64>,
    /// A segment was created or deleted since the directory was synced.
    dir_dirty: bool,
    /// The last write to the head failed (a full disk): new envelopes are
    /// refused until a write succeeds.
    write_failed: bool,
    /// An `fdatasync` failed. The kernel may have dropped the pages it
    /// could not write and report the next sync as a success, so nothing
    /// written since can be trusted: the store refuses everything until
    /// the relay restarts and replays what is really on disk.
    sync_failed: Option<String>,
}

/// Most bytes buffered for the head; past this, new envelopes are refused
/// (a write that keeps failing must not grow memory without bound).
const MAX_BUFFER: usize = 64 << 20;

/// Segment files under one directory.
pub struct EnvelopeLog {
    dir: PathBuf,
    segment_bytes: u64,
    tail: Mutex<Tail>,
    /// Serialises whole syncs: a sync returns only when every write made
    /// before it is on disk, even ones another thread's sync picked up.
    sync_lock: Mutex<()>,
    /// Tests: bytes of each segment covered by a successful sync.
    #[cfg(test)]
    synced: Mutex<BTreeMap<u64, u64>>,
    /// Tests: lengths the sync under way will cover once it succeeds.
    #[cfg(test)]
    syncing: Mutex<Vec<(u64, u64)>>,
}

#[cfg(test)]
fn poisoned_log() -> StoreError {
    StoreError::Unavailable("envelope log lock poisoned".into())
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Name ending of the marker file beside a quarantined segment.
pub const QUARANTINE_SUFFIX: &str = ".quarantined";

/// Leave a marker saying segment `id` is quarantined and why: it keeps the
/// segment quarantined across restarts, and `tern-relay status` lists it.
fn mark_quarantined(dir: &Path, id: u64, why: &str) {
    let marker = dir.join(format!("{id:020}{QUARANTINE_SUFFIX}"));
    if let Err(e) = std::fs::write(&marker, format!("{why}\n")) {
        tracing::error!(segment = id, "cannot write quarantine marker: {e}");
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::unavailable("sync envelope directory", e))
}

/// What [`EnvelopeLog::open`] replays, in order.
pub struct Replayed<'a> {
    /// The record.
    pub record: Record<'a>,
    /// Where it is.
    pub at: Location,
}

impl EnvelopeLog {
    fn create_segment(dir: &Path, id: u64) -> Result<File, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment_path(dir, id))
            .map_err(|e| StoreError::unavailable("create segment", e))?;
        if let Err(e) = file.write_all_at(MAGIC, 0) {
            // Leave no empty file behind to block the next attempt.
            drop(file);
            let _ = std::fs::remove_file(segment_path(dir, id));
            return Err(StoreError::unavailable("write segment header", e));
        }
        Ok(file)
    }

    /// Segment `id`'s file, opened now if it is not open; `None` if the
    /// segment is gone. Keeps at most [`OPEN_FILES`] open: a relay with
    /// thousands of segments needs no descriptor for each.
    fn file_of(&self, t: &mut Tail, id: u64) -> Result<Option<Arc<File>>, StoreError> {
        let Some(s) = t.segments.get(&id) else {
            return Ok(None);
        };
        if let Some(f) = &s.file {
            return Ok(Some(Arc::clone(f)));
        }
        let open = t.segments.values().filter(|s| s.file.is_some()).count();
        if open >= OPEN_FILES {
            let head = t.head;
            if let Some(victim) = t
                .segments
                .iter_mut()
                .find(|(sid, s)| **sid != head && s.file.is_some() && !t.unsynced.contains(sid))
            {
                victim.1.file = None;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .open(segment_path(&self.dir, id))
            .map_err(|e| StoreError::unavailable("open segment", e))?;
        let file = Arc::new(file);
        if let Some(s) = t.segments.get_mut(&id) {
            s.file = Some(Arc::clone(&file));
        }
        Ok(Some(file))
    }

    fn tail(&self) -> Result<MutexGuard<'_, Tail>, StoreError> {
        self.tail
            .lock()
            .map_err(|_| StoreError::Unavailable("envelope log lock poisoned".into()))
    }

    /// The tail, if new records may be appended: not after a failed sync,
    /// nor while the disk refuses writes or the buffer is full.
    fn writable_tail(&self) -> Result<MutexGuard<'_, Tail>, StoreError> {
        let t = self.tail()?;
        if let Some(e) = &t.sync_failed {
            return Err(StoreError::Unavailable(e.clone()));
        }
        if t.write_failed || t.buf.len() >= MAX_BUFFER {
            return Err(StoreError::Unavailable(
                "the envelope log cannot write to disk".into(),
            ));
        }
        Ok(t)
    }

    /// Count the records replayed at open that are still live. Called once
    /// per live envelope after replay.
    pub fn count_live(&self, at: Location) -> Result<(), StoreError> {
        let mut t = self.tail()?;
        if let Some(s) = t.segments.get_mut(&at.segment) {
            s.live += 1;
            s.live_bytes += u64::from(at.len);
        }
        Ok(())
    }

    /// Count `live` records of `live_bytes` replayed at open (or restored
    /// from the index checkpoint) as live in `segment`.
    pub fn count_live_many(
        &self,
        segment: u64,
        live: u64,
        live_bytes: u64,
    ) -> Result<(), StoreError> {
        let mut t = self.tail()?;
        if let Some(s) = t.segments.get_mut(&segment) {
            s.live += live;
            s.live_bytes += live_bytes;
        }
        Ok(())
    }

    /// Append a live envelope record (written by `put`) to the head.
    /// Refused while the disk refuses writes or after a failed sync.
    pub fn append_envelope(
        &self,
        put: impl FnOnce(&mut Vec<u8>),
        expires_ms: u64,
    ) -> Result<Location, StoreError> {
        let mut t = self.writable_tail()?;
        let loc = Self::append(&mut t, put);
        if let Some(s) = t.segments.get_mut(&loc.segment) {
            s.live += 1;
            s.live_bytes += u64::from(loc.len);
            s.min_expires = s.min_expires.min(expires_ms);
        }
        Ok(loc)
    }

    /// Append one payload for `refs` holders: a PAYLOAD record (written by
    /// `put_payload`) and right after it, in the same segment, a REFS record
    /// (written by `put_refs`, told the payload's offset). Returns the
    /// payload's location, which every holder's index entry points at; it
    /// counts as `refs` live records, one per holder, so the segment stays
    /// until the last holder's removal. (Its live bytes are counted per
    /// holder too: an upper bound while several hold it.)
    pub fn append_shared(
        &self,
        put_payload: impl FnOnce(&mut Vec<u8>),
        put_refs: impl FnOnce(&mut Vec<u8>, u64),
        refs: u64,
        expires_ms: u64,
    ) -> Result<Location, StoreError> {
        let mut t = self.writable_tail()?;
        let loc = Self::append(&mut t, put_payload);
        Self::append(&mut t, |b| put_refs(b, loc.offset));
        if let Some(s) = t.segments.get_mut(&loc.segment) {
            s.live += refs;
            s.live_bytes += u64::from(loc.len) * refs;
            s.min_expires = s.min_expires.min(expires_ms);
        }
        Ok(loc)
    }

    /// Append a removal record and stop counting the records it removes.
    pub fn append_removal(
        &self,
        put: impl FnOnce(&mut Vec<u8>),
        removed: &[Location],
    ) -> Result<(), StoreError> {
        let mut t = self.tail()?;
        Self::append(&mut t, put);
        Self::forget(&mut t, removed);
        Ok(())
    }

    /// Stop counting records that were replaced by a copy elsewhere.
    pub fn forget_records(&self, removed: &[Location]) -> Result<(), StoreError> {
        let mut t = self.tail()?;
        Self::forget(&mut t, removed);
        Ok(())
    }

    fn forget(t: &mut Tail, removed: &[Location]) {
        for at in removed {
            if let Some(s) = t.segments.get_mut(&at.segment) {
                s.live = s.live.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(u64::from(at.len));
            }
        }
    }

    fn append(t: &mut Tail, put: impl FnOnce(&mut Vec<u8>)) -> Location {
        let before = t.buf.len();
        put(&mut t.buf);
        let len = (t.buf.len() - before) as u32;
        let offset = t.written + before as u64;
        let head = t.head;
        if let Some(s) = t.segments.get_mut(&head) {
            s.size = offset + u64::from(len);
        }
        Location {
            segment: head,
            offset,
            len,
        }
    }

    /// Read `len` bytes of records from `offset` in `segment` (one record,
    /// or a run of them).
    /// `None` if the segment was deleted (everything in it was removed).
    pub fn read(
        &self,
        segment: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let end = offset + len as u64;
        let mut out = vec![0u8; len];
        let (file, in_file) = {
            let mut t = self.tail()?;
            if !t.segments.contains_key(&segment) {
                return Ok(None);
            }
            let in_file = if segment == t.head && end > t.written {
                // The part not yet handed to the file is copied from the
                // buffer now; the part before it is in the file already.
                let from = offset.max(t.written);
                let buf_from = usize::try_from(from - t.written)
                    .map_err(|_| StoreError::Corrupt("log offset"))?;
                let n =
                    usize::try_from(end - from).map_err(|_| StoreError::Corrupt("log offset"))?;
                let src = t
                    .buf
                    .get(buf_from..buf_from + n)
                    .ok_or(StoreError::Corrupt("log offset past the head"))?;
                out[len - n..].copy_from_slice(src);
                len - n
            } else {
                len
            };
            let file = if in_file > 0 {
                self.file_of(&mut t, segment)?
            } else {
                None
            };
            (file, in_file)
        };
        if let Some(file) = file.filter(|_| in_file > 0) {
            file.read_exact_at(&mut out[..in_file], offset)
                .map_err(|e| StoreError::unavailable("read segment", e))?;
        }
        Ok(Some(out))
    }

    /// Write buffered records to the head and `fdatasync` every segment
    /// written since the last sync; then start a new head if this one is
    /// full or older than `max_head_age`. A failed write loses nothing: the
    /// buffer stays and the next sync tries again. A failed `fdatasync`
    /// stops the log until restart (see `sync_failed`). Returns true if a
    /// new head was started.
    pub fn sync(&self, max_head_age: Duration) -> Result<bool, StoreError> {
        let _whole = self
            .sync_lock
            .lock()
            .map_err(|_| StoreError::Unavailable("envelope log lock poisoned".into()))?;
        let (files, dir_dirty) = {
            let mut t = self.tail()?;
            if let Some(e) = &t.sync_failed {
                return Err(StoreError::Unavailable(e.clone()));
            }
            let head = t.head;
            if !t.buf.is_empty() {
                let head_file = t
                    .segments
                    .get(&head)
                    .and_then(|s| s.file.clone())
                    .ok_or(StoreError::Corrupt("head segment missing"))?;
                // A failed write dirtied no page that a later sync could
                // skip: keeping the buffer and writing it again is safe.
                if let Err(e) = head_file.write_all_at(&t.buf, t.written) {
                    t.write_failed = true;
                    return Err(StoreError::unavailable("write segment", e));
                }
                t.write_failed = false;
                t.written += t.buf.len() as u64;
                t.buf.clear();
                if !t.unsynced.contains(&head) {
                    t.unsynced.push(head);
                }
            }
            let ids = std::mem::take(&mut t.unsynced);
            let files: Vec<_> = ids
                .iter()
                .filter_map(|id| {
                    t.segments
                        .get(id)
                        .and_then(|s| Some((*id, s.file.clone()?)))
                })
                .collect();
            #[cfg(test)]
            {
                let lens: Vec<(u64, u64)> = ids
                    .iter()
                    .filter_map(|id| {
                        let len = if *id == t.head {
                            t.written
                        } else {
                            t.segments.get(id)?.size
                        };
                        Some((*id, len))
                    })
                    .collect();
                *self.syncing.lock().map_err(|_| poisoned_log())? = lens;
            }
            (files, std::mem::replace(&mut t.dir_dirty, false))
        };
        let mut failed = None;
        for (id, file) in &files {
            if let Err(e) = file.sync_data() {
                let why =
                    format!("fdatasync of envelope segment {id} failed ({e}); restart the relay");
                if let Ok(mut t) = self.tail() {
                    t.sync_failed = Some(why.clone());
                }
                // Pages the kernel failed to write may be dropped and the
                // next fdatasync report success: nothing written since
                // could be trusted. Stop, and replay what is on disk.
                super::durability::fatal(&why);
            }
        }
        if dir_dirty {
            if let Err(e) = sync_dir(&self.dir) {
                failed = Some(e);
                if let Ok(mut t) = self.tail() {
                    t.dir_dirty = true;
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        #[cfg(test)]
        {
            let lens = std::mem::take(&mut *self.syncing.lock().map_err(|_| poisoned_log())?);
            self.synced.lock().map_err(|_| poisoned_log())?.extend(lens);
        }
        Ok(self.roll_over(max_head_age))
    }

    /// How many bytes of each segment the last successful syncs covered
    /// (tests: what a power loss would leave).
    #[cfg(test)]
    pub fn synced_lengths(&self) -> BTreeMap<u64, u64> {
        self.synced.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Start a new head if the current one is full, or holds records and is
    /// older than `max_head_age` (so acknowledged bytes do not sit in a
    /// quiet relay's head for long). A failure only delays the roll-over.
    fn roll_over(&self, max_head_age: Duration) -> bool {
        let Ok(mut t) = self.tail() else { return false };
        let used = t.written + t.buf.len() as u64;
        let full = used >= self.segment_bytes;
        let stale = used > MAGIC.len() as u64 && t.head_started.elapsed() >= max_head_age;
        if !full && !stale {
            return false;
        }
        let next = t.head + 1;
        let file = match Self::create_segment(&self.dir, next) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("cannot start a new envelope segment: {e}");
                return false;
            }
        };
        if !t.buf.is_empty() {
            // Records still buffered belong to the old head; write them
            // there first (the next sync makes them durable).
            let head = t.head;
            let written = t.written;
            let Some(old) = t.segments.get(&head).and_then(|s| s.file.clone()) else {
                return false;
            };
            if let Err(e) = old.write_all_at(&t.buf, written) {
                tracing::warn!("cannot write the envelope log: {e}");
                let _ = std::fs::remove_file(segment_path(&self.dir, next));
                return false;
            }
            t.buf.clear();
            if !t.unsynced.contains(&head) {
                t.unsynced.push(head);
            }
        }
        let old_head = t.head;
        if let Some(old) = t.segments.get_mut(&old_head) {
            old.sealed_at = Instant::now();
        }
        t.segments
            .insert(next, Segment::new(Some(file), MAGIC.len() as u64));
        t.head = next;
        t.head_started = Instant::now();
        t.written = MAGIC.len() as u64;
        t.unsynced.push(next);
        t.dir_dirty = true;
        true
    }

    /// Every segment but the head, oldest first.
    pub fn sealed_segments(&self) -> Result<Vec<SegmentUse>, StoreError> {
        let t = self.tail()?;
        Ok(t.segments
            .iter()
            .filter(|(id, _)| **id != t.head)
            .map(|(id, s)| SegmentUse {
                id: *id,
                size: s.size,
                live: s.live,
                live_bytes: s.live_bytes,
                sealed_for: s.sealed_at.elapsed(),
                min_expires: s.min_expires,
                quarantined: s.quarantined,
            })
            .collect())
    }

    /// All bytes of a segment, the head's buffer included (to copy its
    /// live records forward, or sweep it); `None` if it was deleted.
    pub fn read_segment(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let size = {
            let t = self.tail()?;
            let Some(s) = t.segments.get(&id) else {
                return Ok(None);
            };
            s.size
        };
        let size = usize::try_from(size).map_err(|_| StoreError::Corrupt("segment size"))?;
        self.read(id, 0, size)
    }

    /// Delete the oldest segment if it is sealed and holds nothing live.
    /// The caller has made sure that whatever was copied out of it, and
    /// every sequence number it names, is durable elsewhere.
    pub fn delete_oldest_if_empty(&self) -> Result<Option<u64>, StoreError> {
        let id = {
            let mut t = self.tail()?;
            // Quarantined segments stay, and do not hold the others back.
            let Some((&id, s)) = t.segments.iter().find(|(_, s)| s.quarantined.is_none()) else {
                return Ok(None);
            };
            if id == t.head || s.live > 0 {
                return Ok(None);
            }
            t.segments.remove(&id);
            t.unsynced.retain(|u| *u != id);
            t.dir_dirty = true;
            id
        };
        std::fs::remove_file(segment_path(&self.dir, id))
            .map_err(|e| StoreError::unavailable("delete segment", e))?;
        Ok(Some(id))
    }

    /// Bytes on disk and in the buffer, over all segments.
    pub fn total_bytes(&self) -> u64 {
        self.tail()
            .map(|t| t.segments.values().map(|s| s.size).sum())
            .unwrap_or(0)
    }
}

#[path = "envelope_log_open.rs"]
mod open;
#[path = "envelope_log_segments.rs"]
mod segments;

#[cfg(test)]
#[path = "envelope_log_tests.rs"]
mod tests;
