//! Opening the envelope log: find the segments, replay the ones the index
//! checkpoint does not cover (oldest first), cut a torn tail of the newest,
//! quarantine damage anywhere else, and start a fresh head. A child of
//! `envelope_log`, so it shares the log's types and fields.

use super::*;

impl EnvelopeLog {
    /// Open the log in `dir`, calling `replay` on every whole record, oldest
    /// first, and start a fresh head segment. A record torn by a crash ends
    /// its segment: the tail of the newest segment is cut off there; damage
    /// anywhere else quarantines the segment (it is kept, never deleted,
    /// and reported) and the rest of it is skipped.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        replay: impl FnMut(Replayed<'_>),
    ) -> Result<Self, StoreError> {
        Self::open_from(dir, segment_bytes, 0, replay)
    }

    /// [`Self::open`], replaying only segments from `first_replayed` on:
    /// older ones are covered by the index checkpoint, and are neither
    /// read nor opened (only their sizes are looked up).
    pub fn open_from(
        dir: &Path,
        segment_bytes: u64,
        first_replayed: u64,
        mut replay: impl FnMut(Replayed<'_>),
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::unavailable("create envelope directory", e))?;
        let mut ids = Vec::new();
        let mut marked = std::collections::HashSet::new();
        for entry in std::fs::read_dir(dir)
            .map_err(|e| StoreError::unavailable("read envelope directory", e))?
        {
            let entry = entry.map_err(|e| StoreError::unavailable("read envelope directory", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name
                .strip_suffix(QUARANTINE_SUFFIX)
                .and_then(|n| n.parse::<u64>().ok())
            {
                marked.insert(id);
            }
            let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            ids.push(id);
        }
        ids.sort_unstable();
        let mut segments = BTreeMap::new();
        let newest = ids.last().copied();
        for id in ids {
            let path = segment_path(dir, id);
            if id < first_replayed && Some(id) != newest {
                let size = std::fs::metadata(&path)
                    .map_err(|e| StoreError::unavailable("look up segment", e))?
                    .len();
                let mut seg = Segment::new(None, size);
                if marked.contains(&id) {
                    seg.quarantined = Some("quarantined before restart");
                }
                segments.insert(id, seg);
                continue;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::unavailable("open segment", e))?;
            let mut bytes = Vec::new();
            (&file)
                .read_to_end(&mut bytes)
                .map_err(|e| StoreError::unavailable("read segment", e))?;
            let mut at = 0usize;
            let mut torn = false;
            let mut quarantined = None;
            let legacy = bytes.get(..LEGACY_MAGIC.len()) == Some(&LEGACY_MAGIC[..]);
            if legacy || bytes.get(..MAGIC.len()) == Some(&MAGIC[..]) {
                at = MAGIC.len();
                while at < bytes.len() {
                    match record::decode_in(&bytes[at..], legacy) {
                        Ok((record, len)) => {
                            let loc = Location {
                                segment: id,
                                offset: at as u64,
                                len: len as u32,
                            };
                            replay(Replayed { record, at: loc });
                            at += len;
                        }
                        Err(damage) => {
                            // A torn write leaves a short record or zeros
                            // (space the file system allocated but that
                            // was never written). Anything else is damage:
                            // whole records may follow it, so the file is
                            // left as it is, and never written to again.
                            let rest = &bytes[at..];
                            torn = damage == Damage::Truncated || rest.iter().all(|b| *b == 0);
                            if Some(id) == newest && torn {
                                tracing::info!(segment = id, at, "cutting a torn record");
                            } else {
                                tracing::error!(
                                    segment = id,
                                    at,
                                    ?damage,
                                    "damaged envelope log: segment quarantined (kept, never \
                                     deleted); see docs/operations.md, Quarantine"
                                );
                                quarantined = Some("damaged record");
                            }
                            break;
                        }
                    }
                }
            } else if !bytes.is_empty() {
                tracing::error!(
                    segment = id,
                    "envelope segment without a header: quarantined (kept, never deleted)"
                );
                quarantined = Some("no segment header");
            }
            if Some(id) == newest && torn {
                // Only the newest segment can end in a torn write; cut it so
                // the file holds whole records only.
                file.set_len(at as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| StoreError::unavailable("truncate segment", e))?;
            }
            let size = if quarantined.is_some() {
                bytes.len() as u64
            } else {
                at as u64
            };
            let mut seg = Segment::new(None, size);
            if let Some(why) = quarantined {
                mark_quarantined(dir, id, why);
            } else if marked.contains(&id) {
                quarantined = Some("quarantined before restart");
            }
            seg.quarantined = quarantined;
            seg.legacy = legacy;
            drop(file);
            segments.insert(id, seg);
        }
        let head = newest.map_or(1, |n| n + 1);
        let file = Self::create_segment(dir, head)?;
        segments.insert(head, Segment::new(Some(file), MAGIC.len() as u64));
        sync_dir(dir)?;
        #[cfg(test)]
        let synced_at_open: BTreeMap<u64, u64> = segments
            .iter()
            .filter(|(id, _)| **id != head)
            .map(|(id, s)| (*id, s.size))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            tail: Mutex::new(Tail {
                head,
                head_started: Instant::now(),
                written: MAGIC.len() as u64,
                buf: Vec::with_capacity(1 << 20),
                segments,
                unsynced: Vec::new(),
                dir_dirty: false,
                write_failed: false,
                sync_failed: None,
            }),
            sync_lock: Mutex::new(()),
            #[cfg(test)]
            synced: Mutex::new(synced_at_open),
            #[cfg(test)]
            syncing: Mutex::new(Vec::new()),
        })
    }
}
