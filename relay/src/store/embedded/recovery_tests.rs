//! Recovery that deletes nothing it cannot account for: damage in an old
//! segment and in a record header quarantines the segment (kept, reported)
//! instead of dropping or cutting it; records of a mailbox the metadata
//! does not know survive reclamation; the index checkpoint brings back what
//! a full replay would; expiry removes in chunks and by segment.

use super::envelope_log::Location;
use super::*;
use std::path::PathBuf;

const QUOTA: Quota = Quota {
    max_envelopes: 10_000_000,
    max_bytes: 1 << 40,
};

fn tiny() -> LogOptions {
    LogOptions {
        segment_bytes: 2048,
        max_head_age: Duration::from_secs(3600),
        reclaim_every: Duration::from_secs(3600),
        settle: Duration::ZERO,
        ..LogOptions::default()
    }
}

fn put(store: &EmbeddedStore, mailbox: &MailboxId, id: u32, expires_ms: u64) -> Appended {
    let mut message_id = [0u8; 16];
    message_id[..4].copy_from_slice(&id.to_be_bytes());
    let env = NewEnvelope {
        message_id,
        payload: &[7; 100],
        now_ms: 1,
        expires_ms,
    };
    store.append(mailbox, env, QUOTA).unwrap()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("envelopes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// A store with `n` held envelopes of mailbox `mb` over many segments,
/// closed; the checkpoint removed so the next open replays every segment.
fn filled(dir: &Path, mb: MailboxId, n: u32) {
    let store = EmbeddedStore::open_with(dir, tiny()).unwrap();
    store.create_mailbox(mb, [9; 32], 0).unwrap();
    for i in 0..n {
        put(&store, &mb, i, u64::MAX);
        store.flush().unwrap();
    }
    store.close().unwrap();
    drop(store);
    let _ = std::fs::remove_file(dir.join("envelopes").join(checkpoint::FILE));
    // An empty head left by a last roll-over holds nothing: without it the
    // last segment with records is the newest.
    for p in segments(dir) {
        if std::fs::metadata(&p).unwrap().len() <= record::MAGIC.len() as u64 {
            std::fs::remove_file(p).unwrap();
        }
    }
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damage_in_the_middle_of_an_old_segment_quarantines_it_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [1u8; 16];
    filled(dir.path(), mb, 100);
    let before = segments(dir.path());
    assert!(before.len() > 4, "{} segments", before.len());
    let old = &before[1];
    let len = std::fs::metadata(old).unwrap().len();
    flip(old, len / 2);
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    let quarantined = store.quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    // Acknowledge everything readable; reclamation may then delete every
    // segment it can account for, but never the damaged one.
    let held: Vec<u64> = store
        .fetch(&mb, 0, 1000)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(held.len() < 100, "records after the damage are not served");
    store.ack(&mb, &held).unwrap();
    store.reclaim().unwrap();
    assert!(old.exists(), "the damaged segment was deleted");
    assert_eq!(std::fs::metadata(old).unwrap().len(), len, "it was cut");
    let status = status::log_status(dir.path()).unwrap();
    assert_eq!(status.quarantined.len(), 1);
    assert!(status.to_string().contains("damaged record"), "{status}");
    drop(store);
    // Still quarantined after another restart, with a checkpoint now.
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    store.reclaim().unwrap();
    assert!(old.exists());
    assert_eq!(store.quarantined().len(), 1);
}

#[test]
fn a_damaged_record_header_in_the_newest_segment_is_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [2u8; 16];
    filled(dir.path(), mb, 30);
    // The newest segment with records: damage its first record's length.
    let newest = segments(dir.path())
        .into_iter()
        .rfind(|p| std::fs::metadata(p).unwrap().len() > 8)
        .unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    flip(&newest, record::MAGIC.len() as u64 + 2);
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert_eq!(std::fs::metadata(&newest).unwrap().len(), len, "cut");
    assert_eq!(store.quarantined().len(), 1);
    store.reclaim().unwrap();
    assert!(newest.exists());
}

#[test]
fn a_torn_tail_of_the_newest_segment_is_still_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [3u8; 16];
    filled(dir.path(), mb, 30);
    let newest = segments(dir.path())
        .into_iter()
        .rfind(|p| std::fs::metadata(p).unwrap().len() > 8)
        .unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert!(store.quarantined().is_empty());
    assert!(std::fs::metadata(&newest).unwrap().len() < len - 3);
    assert_eq!(store.fetch(&mb, 0, 100).unwrap().len(), 29);
}

#[test]
fn records_of_an_unknown_mailbox_survive_reclamation() {
    let dir = tempfile::tempdir().unwrap();
    let (lost, other) = ([4u8; 16], [5u8; 16]);
    filled(dir.path(), lost, 20);
    let files = segments(dir.path());
    {
        // The metadata forgets the mailbox (a damaged or restored database).
        let db = ::sled::open(dir.path()).unwrap();
        let tree = db.open_tree("relay").unwrap();
        let mut key = vec![b'm'];
        key.extend_from_slice(&lost);
        assert!(tree.remove(key).unwrap().is_some());
        db.flush().unwrap();
    }
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert!(!store.quarantined().is_empty());
    store.create_mailbox(other, [9; 32], 0).unwrap();
    for i in 0..60 {
        let a = put(&store, &other, i, u64::MAX);
        store.ack(&other, &[a.seq]).unwrap();
    }
    store.flush().unwrap();
    store.reclaim().unwrap();
    for f in files
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().len() > 8)
    {
        assert!(f.exists(), "{} was reclaimed", f.display());
    }
}

#[test]
fn a_restart_from_the_checkpoint_serves_what_a_full_replay_would() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [6u8; 16];
    let ckpt = dir.path().join("envelopes").join(checkpoint::FILE);
    let saved: Vec<u8>;
    let want: Vec<StoredEnvelope>;
    {
        let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        for i in 0..200 {
            put(&store, &mb, i, u64::MAX);
            store.flush().unwrap();
        }
        store.ack(&mb, &[3, 50, 51, 120]).unwrap();
        store.flush().unwrap();
        assert!(store.checkpoint().unwrap() > 0);
        saved = std::fs::read(&ckpt).unwrap();
        // Changes after the checkpoint are replayed from the log.
        for i in 200..230 {
            put(&store, &mb, i, u64::MAX);
        }
        store.ack(&mb, &[4, 210]).unwrap();
        store.flush().unwrap();
        want = store.fetch(&mb, 0, 1000).unwrap();
        // As after SIGKILL: the checkpoint on disk is the one from before
        // the last changes, not the one a clean close writes.
        drop(store);
        std::fs::write(&ckpt, &saved).unwrap();
    }
    let from_checkpoint = EmbeddedStore::open_with(dir.path(), tiny());
    let store = from_checkpoint.unwrap();
    assert_eq!(store.fetch(&mb, 0, 1000).unwrap(), want);
    assert_eq!(store.held(), 224);
    let again = put(&store, &mb, 7, u64::MAX);
    assert_eq!((again.seq, again.duplicate), (8, true));
    assert_eq!(put(&store, &mb, 999, u64::MAX).seq, 231);
    drop(store);
    std::fs::remove_file(dir.path().join("envelopes").join(checkpoint::FILE)).unwrap();
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert_eq!(store.fetch(&mb, 0, 1000).unwrap().len(), 225);
}

#[test]
fn expiry_reads_only_due_segments_and_removes_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [7u8; 16];
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    store.create_mailbox(mb, [9; 32], 0).unwrap();
    for i in 0..50 {
        put(&store, &mb, i, 1_000 + u64::from(i % 5));
        store.flush().unwrap();
    }
    for i in 50..60 {
        put(&store, &mb, i, u64::MAX);
    }
    assert_eq!(store.sweep(999).unwrap().envelopes, 0);
    assert_eq!(store.sweep(1_002).unwrap().envelopes, 30);
    assert_eq!(store.sweep(1_002).unwrap().envelopes, 0);
    assert_eq!(store.sweep(5_000).unwrap().envelopes, 20);
    assert_eq!(store.held(), 10);
    drop(store);
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert_eq!(store.fetch(&mb, 0, 100).unwrap().len(), 10);
}

#[test]
fn the_relay_wide_cap_refuses_with_relay_full_and_frees_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [8u8; 16];
    let options = LogOptions {
        max_held_envelopes: 3,
        ..tiny()
    };
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    store.create_mailbox(mb, [9; 32], 0).unwrap();
    for i in 0..3 {
        put(&store, &mb, i, u64::MAX);
    }
    let env = NewEnvelope {
        message_id: [0xEE; 16],
        payload: b"x",
        now_ms: 1,
        expires_ms: u64::MAX,
    };
    assert!(matches!(
        store.append(&mb, env, QUOTA),
        Err(StoreError::RelayFull { envelopes: 3, .. })
    ));
    store.ack(&mb, &[1]).unwrap();
    assert_eq!(store.append(&mb, env, QUOTA).unwrap().seq, 4);
}

/// Power loss: every write not covered by a successful sync is lost. The
/// log records what each sync covered; the "crash" cuts every segment back
/// to that and keeps only the checkpoint on disk then. Everything whose
/// durability was awaited comes back, and no sequence number is reused.
#[test]
fn nothing_acknowledged_is_lost_when_every_unsynced_write_is() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [9u8; 16];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ckpt = dir.path().join("envelopes").join(checkpoint::FILE);
    let mut acknowledged: Vec<(u64, u32)> = Vec::new();
    let (lengths, checkpoint_then, last_seq) = {
        let options = LogOptions {
            segment_bytes: 4096,
            ..tiny()
        };
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        rt.block_on(store.durable()).unwrap();
        let mut pending = Vec::new();
        let mut last_seq = 0;
        for i in 0..600u32 {
            let a = put(&store, &mb, i, u64::MAX);
            last_seq = a.seq;
            pending.push((a.seq, i));
            if i % 13 == 12 {
                // Answered only now: these are the acknowledged sends.
                rt.block_on(store.durable()).unwrap();
                acknowledged.append(&mut pending);
            }
            if i % 50 == 49 {
                store.reclaim().unwrap();
                store.checkpoint().unwrap();
            }
        }
        // The crash: no more syncs from here; what was synced is all
        // that a power loss leaves.
        store.commit.stop();
        store.reclaimer.stop();
        let lengths = store.inner.log.synced_lengths();
        let checkpoint_then = std::fs::read(&ckpt).ok();
        drop(store);
        (lengths, checkpoint_then, last_seq)
    };
    for p in segments(dir.path()) {
        let id: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let keep = lengths.get(&id).copied().unwrap_or(0);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        assert!(f.metadata().unwrap().len() >= keep);
        f.set_len(keep).unwrap();
    }
    match checkpoint_then {
        Some(bytes) => std::fs::write(&ckpt, bytes).unwrap(),
        None => {
            let _ = std::fs::remove_file(&ckpt);
        }
    }
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    let got: std::collections::HashMap<u64, [u8; 16]> = store
        .fetch(&mb, 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.message_id))
        .collect();
    assert!(acknowledged.len() > 500);
    for (seq, i) in &acknowledged {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        assert_eq!(got.get(seq), Some(&id), "acknowledged seq {seq} lost");
    }
    assert!(store.quarantined().is_empty());
    let next = put(&store, &mb, 10_000, u64::MAX).seq;
    assert!(next > acknowledged.last().unwrap().0, "seq {next} reused");
    let _ = last_seq;
}

/// A checkpoint older than the segments deleted since: the envelopes it
/// names there were all removed, and must not come back as entries that
/// point nowhere.
#[test]
fn a_checkpoint_naming_deleted_segments_restores_only_what_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [10u8; 16];
    let ckpt = dir.path().join("envelopes").join(checkpoint::FILE);
    let saved;
    {
        let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        for i in 0..40 {
            put(&store, &mb, i, u64::MAX);
            store.flush().unwrap();
        }
        store.checkpoint().unwrap();
        saved = std::fs::read(&ckpt).unwrap();
        // Everything acked, then enough traffic that every old segment,
        // and the removal records, are deleted.
        let all: Vec<u64> = (1..=40).collect();
        store.ack(&mb, &all).unwrap();
        for i in 40..140 {
            let a = put(&store, &mb, i, u64::MAX);
            store.ack(&mb, &[a.seq]).unwrap();
            store.flush().unwrap();
            store.reclaim().unwrap();
        }
        put(&store, &mb, 1000, u64::MAX);
        store.flush().unwrap();
    }
    std::fs::write(&ckpt, saved).unwrap();
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    let got: Vec<u64> = store
        .fetch(&mb, 0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, [141]);
    assert_eq!(store.held(), 1);
}

/// Long-held envelopes stay where they are while acked traffic flows past
/// them: dead segments the checkpoint covers are deleted behind them, not
/// freed by copying the held ones forward every turn of the log.
#[test]
fn long_held_envelopes_stay_put_while_dead_segments_behind_them_go() {
    let dir = tempfile::tempdir().unwrap();
    let (offline, online) = ([11u8; 16], [12u8; 16]);
    let locations = |store: &EmbeddedStore| -> Vec<Location> {
        let shard = store.inner.index.shard(&offline).unwrap();
        shard[&offline].iter().map(|s| s.at()).collect()
    };
    {
        let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
        store.create_mailbox(offline, [9; 32], 0).unwrap();
        store.create_mailbox(online, [8; 32], 0).unwrap();
        for i in 0..40 {
            put(&store, &offline, i, u64::MAX);
            store.flush().unwrap();
        }
        let held_at = locations(&store);
        for i in 0..400 {
            let a = put(&store, &online, 1000 + i, u64::MAX);
            store.ack(&online, &[a.seq]).unwrap();
            store.flush().unwrap();
            if i % 5 == 4 {
                store.checkpoint().unwrap();
                store.reclaim().unwrap();
            }
        }
        assert_eq!(locations(&store), held_at, "held envelopes were copied");
        let held_bytes: u64 = held_at.iter().map(|l| u64::from(l.len)).sum();
        assert!(
            store.log_bytes() < held_bytes + 8 * 2048,
            "log {} bytes for {held_bytes} held",
            store.log_bytes()
        );
    }
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert_eq!(store.fetch(&offline, 0, 100).unwrap().len(), 40);
    assert!(store.fetch(&online, 0, 100).unwrap().is_empty());
    assert_eq!(store.mailbox(&online).unwrap().unwrap().next_seq, 401);
}

/// Damage in a segment the checkpoint covers is not seen at start; a
/// fetch that meets it skips the record, quarantines the segment and
/// delivers the rest.
#[test]
fn damage_found_on_read_is_skipped_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [13u8; 16];
    let first_at;
    {
        let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
        store.create_mailbox(mb, [9; 32], 0).unwrap();
        for i in 0..30 {
            put(&store, &mb, i, u64::MAX);
            store.flush().unwrap();
        }
        first_at = store.inner.index.shard(&mb).unwrap()[&mb]
            .get(1)
            .unwrap()
            .at();
        store.close().unwrap();
    }
    let path = dir
        .path()
        .join("envelopes")
        .join(format!("{:020}.seg", first_at.segment));
    flip(&path, first_at.offset + 60);
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert!(store.quarantined().is_empty(), "covered by the checkpoint");
    let got: Vec<u64> = store
        .fetch(&mb, 0, 5)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(got, [2, 3, 4, 5, 6]);
    assert_eq!(store.quarantined().len(), 1);
    store.reclaim().unwrap();
    assert!(path.exists());
}
