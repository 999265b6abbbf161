//! Tests of the envelope log on its own: reopen and replay, torn tails,
//! damage, roll-over and deletion of segments.

use super::*;
use crate::store::embedded::record::{put_envelope, put_remove, EnvelopeRecord};

const HOUR: Duration = Duration::from_secs(3600);

fn env(seq: u64) -> EnvelopeRecord<'static> {
    EnvelopeRecord {
        mailbox: [1; 16],
        seq,
        received_ms: 5,
        expires_ms: 10,
        message_id: [seq as u8; 16],
        payload: b"sealed",
    }
}

fn replay_all(dir: &Path, segment_bytes: u64) -> (EnvelopeLog, Vec<(u64, Location)>) {
    let mut seen = Vec::new();
    let log = EnvelopeLog::open(dir, segment_bytes, |r| match r.record {
        Record::Envelope(e) => seen.push((e.seq, r.at)),
        Record::Remove { seqs, .. } => seen.extend(seqs.iter().map(|s| (u64::MAX - s, r.at))),
        Record::Payload(_) | Record::Refs { .. } => {}
    })
    .unwrap();
    (log, seen)
}

/// Append envelopes `seqs`, syncing after each.
fn append_synced(log: &EnvelopeLog, seqs: std::ops::RangeInclusive<u64>) -> Vec<Location> {
    seqs.map(|seq| {
        let at = log
            .append_envelope(|b| put_envelope(b, &env(seq)), 10)
            .unwrap();
        log.sync(HOUR).unwrap();
        at
    })
    .collect()
}

#[test]
fn records_survive_a_reopen_and_read_back_before_and_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (log, seen) = replay_all(dir.path(), 1 << 20);
    assert!(seen.is_empty());
    let a = log
        .append_envelope(|b| put_envelope(b, &env(1)), 10)
        .unwrap();
    let bytes = log
        .read(a.segment, a.offset, a.len as usize)
        .unwrap()
        .unwrap();
    assert!(matches!(record::decode(&bytes), Ok((Record::Envelope(e), _)) if e == env(1)));
    log.sync(HOUR).unwrap();
    assert_eq!(
        log.read(a.segment, a.offset, a.len as usize).unwrap(),
        Some(bytes)
    );
    log.append_removal(|b| put_remove(b, &[1; 16], &[1]), &[a])
        .unwrap();
    log.sync(HOUR).unwrap();
    drop(log);
    let (_log, seen) = replay_all(dir.path(), 1 << 20);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], (1, a));
    assert_eq!(seen[1].0, u64::MAX - 1);
}

#[test]
fn a_torn_tail_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = replay_all(dir.path(), 1 << 20);
    let a = log
        .append_envelope(|b| put_envelope(b, &env(1)), 10)
        .unwrap();
    log.append_envelope(|b| put_envelope(b, &env(2)), 10)
        .unwrap();
    log.sync(HOUR).unwrap();
    drop(log);
    // A crash in the middle of the second record.
    let path = segment_path(dir.path(), a.segment);
    let full = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full - 3).unwrap();
    let (log, seen) = replay_all(dir.path(), 1 << 20);
    assert_eq!(seen, vec![(1, a)]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        a.offset + u64::from(a.len)
    );
    let c = log
        .append_envelope(|b| put_envelope(b, &env(3)), 10)
        .unwrap();
    assert!(c.segment > a.segment, "a reopened log writes a new head");
    log.sync(HOUR).unwrap();
    drop(log);
    let (_, seen) = replay_all(dir.path(), 1 << 20);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 3]);
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail_and_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = replay_all(dir.path(), 1 << 20);
    let a = log
        .append_envelope(|b| put_envelope(b, &env(1)), 10)
        .unwrap();
    log.sync(HOUR).unwrap();
    drop(log);
    // Space allocated for a write that never reached the disk.
    let path = segment_path(dir.path(), a.segment);
    let end = a.offset + u64::from(a.len);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(end + 4096)
        .unwrap();
    let (_, seen) = replay_all(dir.path(), 1 << 20);
    assert_eq!(seen, vec![(1, a)]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
}

#[test]
fn damage_in_the_middle_of_the_newest_segment_is_not_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = replay_all(dir.path(), 1 << 20);
    let locs: Vec<_> = (1..=3)
        .map(|seq| {
            log.append_envelope(|b| put_envelope(b, &env(seq)), 10)
                .unwrap()
        })
        .collect();
    log.sync(HOUR).unwrap();
    drop(log);
    let path = segment_path(dir.path(), locs[1].segment);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xff], locs[1].offset + 20).unwrap();
    let (_, seen) = replay_all(dir.path(), 1 << 20);
    assert_eq!(seen, vec![(1, locs[0])]);
    // The whole record after the damage is still on disk for an
    // operator to recover; only a torn tail is ever cut.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn full_heads_roll_over_and_empty_segments_are_deleted_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = replay_all(dir.path(), 256);
    let locs = append_synced(&log, 1..=12);
    let sealed = log.sealed_segments().unwrap();
    assert!(sealed.len() >= 3, "{sealed:?}");
    assert_eq!(log.delete_oldest_if_empty().unwrap(), None, "still live");
    // Remove everything in the oldest segment but one record of the next.
    let first = sealed[0].id;
    let gone: Vec<_> = locs
        .iter()
        .copied()
        .filter(|l| l.segment == first)
        .collect();
    log.append_removal(|b| put_remove(b, &[1; 16], &[1]), &gone)
        .unwrap();
    assert_eq!(log.delete_oldest_if_empty().unwrap(), Some(first));
    assert!(!segment_path(dir.path(), first).exists());
    assert_eq!(log.delete_oldest_if_empty().unwrap(), None);
    // A deleted segment reads as gone, not as other bytes.
    assert_eq!(log.read(first, 8, 10).unwrap(), None);
}

#[test]
fn damage_in_an_older_segment_skips_only_the_rest_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = replay_all(dir.path(), 128);
    let locs = append_synced(&log, 1..=6);
    drop(log);
    let first = locs[0];
    let path = segment_path(dir.path(), first.segment);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xff], first.offset + 20).unwrap();
    let (_, seen) = replay_all(dir.path(), 128);
    let seqs: Vec<_> = seen.iter().map(|s| s.0).collect();
    let expect: Vec<_> = locs
        .iter()
        .zip(1..)
        .filter(|(l, _)| l.segment != first.segment)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(seqs, expect);
}
