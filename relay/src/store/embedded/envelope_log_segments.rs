//! The envelope log's bookkeeping of segments beside reading and writing
//! them: what the index checkpoint records of each (earliest expiry,
//! quarantine, format version), quarantine itself, which segments the
//! sweeper must read, and deleting a dead segment out of order. A child of
//! `envelope_log`, so it shares the log's lock discipline and fields.

use super::*;

impl EnvelopeLog {
    /// Every segment's id, earliest expiry and quarantine, for the index
    /// checkpoint; and the head's id (the first segment it does not cover).
    /// Flags are [`QUARANTINED`] and [`LEGACY`].
    pub fn segment_table(&self) -> Result<(Vec<SegmentEntry>, u64), StoreError> {
        let t = self.tail()?;
        let table = t
            .segments
            .iter()
            .map(|(id, s)| {
                let flags = if s.quarantined.is_some() {
                    QUARANTINED
                } else {
                    0
                } | if s.legacy { LEGACY } else { 0 };
                (*id, s.min_expires, flags)
            })
            .collect();
        Ok((table, t.head))
    }

    /// Restore what the checkpoint knew of a segment that was not replayed.
    pub fn restore_segment(&self, id: u64, min_expires: u64, flags: u8) {
        if let Ok(mut t) = self.tail() {
            if let Some(s) = t.segments.get_mut(&id) {
                s.min_expires = min_expires;
                s.legacy = flags & LEGACY != 0;
                if flags & QUARANTINED != 0 {
                    s.quarantined = Some("quarantined before restart");
                }
            }
        }
    }

    /// Decode the record at the start of `bytes`, read from `segment`.
    pub fn decode<'a>(&self, segment: u64, bytes: &'a [u8]) -> Result<(Record<'a>, usize), Damage> {
        let legacy = self
            .tail()
            .map(|t| t.segments.get(&segment).is_some_and(|s| s.legacy))
            .unwrap_or(false);
        record::decode_in(bytes, legacy)
    }

    /// Note that segment `id` holds a record expiring at `expires_ms`.
    pub fn note_expiry(&self, id: u64, expires_ms: u64) {
        if let Ok(mut t) = self.tail() {
            if let Some(s) = t.segments.get_mut(&id) {
                s.min_expires = s.min_expires.min(expires_ms);
            }
        }
    }

    /// Set segment `id`'s earliest expiry after a sweep removed what was
    /// due (not the head's: records may have joined it since it was read).
    pub fn set_min_expires(&self, id: u64, min_expires: u64) {
        if let Ok(mut t) = self.tail() {
            let head = t.head;
            if let Some(s) = t.segments.get_mut(&id).filter(|_| id != head) {
                s.min_expires = min_expires;
            }
        }
    }

    /// Keep segment `id` whatever its live count says (records in it
    /// cannot be accounted for); reported, never deleted by the relay.
    pub fn quarantine(&self, id: u64, why: &'static str) {
        if let Ok(mut t) = self.tail() {
            if let Some(s) = t.segments.get_mut(&id) {
                if s.quarantined.is_none() {
                    mark_quarantined(&self.dir, id, why);
                    tracing::error!(
                        segment = id,
                        why,
                        "envelope segment quarantined (kept, never deleted); \
                         see docs/operations.md, Quarantine"
                    );
                }
                s.quarantined = Some(why);
            }
        }
    }

    /// The directory the segments are in.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Ids of every segment.
    pub fn segment_ids(&self) -> std::collections::HashSet<u64> {
        self.tail()
            .map(|t| t.segments.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Quarantined segments: (id, why).
    pub fn quarantined(&self) -> Vec<(u64, &'static str)> {
        self.tail()
            .map(|t| {
                t.segments
                    .iter()
                    .filter_map(|(id, s)| Some((*id, s.quarantined?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Segments holding something expired at `now_ms`, earliest expiry first.
    pub fn segments_due(&self, now_ms: u64) -> Result<Vec<u64>, StoreError> {
        let t = self.tail()?;
        let mut due: Vec<(u64, u64)> = t
            .segments
            .iter()
            .filter(|(_, s)| s.min_expires <= now_ms && s.live > 0)
            .map(|(id, s)| (s.min_expires, *id))
            .collect();
        due.sort_unstable();
        Ok(due.into_iter().map(|(_, id)| id).collect())
    }

    /// Delete sealed segment `id` if nothing in it is held and it is not
    /// quarantined, whatever segments before it hold. The caller has made
    /// sure the index checkpoint covers it and sequence numbers are saved.
    pub fn delete_if_dead(&self, id: u64) -> Result<bool, StoreError> {
        {
            let mut t = self.tail()?;
            let head = t.head;
            let dead = t
                .segments
                .get(&id)
                .is_some_and(|s| id != head && s.live == 0 && s.quarantined.is_none());
            if !dead {
                return Ok(false);
            }
            t.segments.remove(&id);
            t.unsynced.retain(|u| *u != id);
            t.dir_dirty = true;
        }
        std::fs::remove_file(segment_path(&self.dir, id))
            .map_err(|e| StoreError::unavailable("delete segment", e))?;
        Ok(true)
    }
}
