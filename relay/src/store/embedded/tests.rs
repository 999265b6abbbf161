//! Tests of the embedded engine's own machinery: segments, reclamation,
//! copying held envelopes forward, reads across the log buffer and the
//! file, and what survives a reopen. What every engine must do is in the
//! shared conformance suite, instantiated for this engine at the end.

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
        ..LogOptions::default()
    }
}

fn put(store: &EmbeddedStore, mailbox: &MailboxId, id: u32, payload: &[u8]) -> Appended {
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

fn seqs(store: &EmbeddedStore, mailbox: &MailboxId) -> Vec<u64> {
    let got = store.fetch(mailbox, 0, 100_000).unwrap();
    got.iter().map(|e| e.seq).collect()
}

#[test]
fn sequence_numbers_are_never_reused_after_their_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mb = [1u8; 16];
    {
        let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
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
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
    assert_eq!(store.mailbox(&mb).unwrap().unwrap().next_seq, 101);
    assert_eq!(put(&store, &mb, 1000, b"next").seq, 101);
    assert_eq!(seqs(&store, &mb), [101]);
}

#[test]
fn held_envelopes_are_copied_out_of_dead_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (offline, online) = ([2u8; 16], [3u8; 16]);
    {
        let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
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
        // The background reclaimer may already have done part of the work
        // (the flusher wakes it when a segment rolls), so judge the result,
        // not how many segments this call deleted: 300 dead envelopes of
        // 120 payload bytes went in, and what is left is the 30 held ones,
        // their removal records and the head.
        let dead_payload = 300 * 120;
        store.reclaim().unwrap();
        assert!(
            store.log_bytes() * 3 < dead_payload,
            "log {} bytes after reclaim, {dead_payload} dead payload bytes written",
            store.log_bytes()
        );
        assert_eq!(seqs(&store, &offline), (1..=30).collect::<Vec<_>>());
    }
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
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
    let store = EmbeddedStore::open_with(dir.path(), tiny()).unwrap();
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
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
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
    // Judged by the bytes left: the background reclaimer may take part.
    store.reclaim().unwrap();
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
    let store = EmbeddedStore::open(dir.path()).unwrap();
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
fn envelopes_tokens_acks_and_seqs_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mb, other) = ([10u8; 16], [11u8; 16]);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_mailbox(mb, [9; 32], 42).unwrap();
        store.create_mailbox(other, [8; 32], 43).unwrap();
        store.add_token([1; 32], mb, 10).unwrap();
        store.add_token([2; 32], mb, 10).unwrap();
        assert!(store.revoke_token(&[2; 32], &mb).unwrap());
        for i in 0..5 {
            put(&store, &mb, i, format!("kept {i}").as_bytes());
        }
        store.ack(&mb, &[2, 4]).unwrap();
        put(&store, &other, 0, b"other");
        store.ack(&other, &[1]).unwrap();
        store.close().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let got = store.fetch(&mb, 0, 100).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3, 5]);
    assert_eq!(got[1].payload, b"kept 2");
    let m = store.mailbox(&mb).unwrap().unwrap();
    assert_eq!(
        (m.auth_key, m.next_seq, m.envelopes, m.tokens, m.created_ms),
        ([9; 32], 6, 3, 1, 42)
    );
    assert_eq!(
        store.token(&[2; 32]).unwrap(),
        Some(TokenRecord {
            mailbox: mb,
            revoked: true
        })
    );
    // The mailbox whose only envelope was acked keeps counting from 2.
    assert_eq!(store.mailbox(&other).unwrap().unwrap().next_seq, 2);
    assert_eq!(put(&store, &other, 1, b"next").seq, 2);
    // A held envelope's message id is still recognised.
    let again = put(&store, &mb, 2, b"kept 2");
    assert_eq!((again.seq, again.duplicate), (3, true));
}

#[test]
fn envelopes_of_a_mailbox_without_a_record_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_mailbox([12; 16], [9; 32], 0).unwrap();
        put(&store, &[12; 16], 0, b"orphan");
        store.close().unwrap();
    }
    // Remove the mailbox record behind the engine's back, as damage would.
    {
        let db = ::sled::open(dir.path()).unwrap();
        let tree = db.open_tree("relay").unwrap();
        let mut k = vec![b'm'];
        k.extend_from_slice(&[12; 16]);
        assert!(tree.remove(k).unwrap().is_some());
        db.flush().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.fetch(&[12; 16], 0, 10).unwrap().is_empty());
    assert_eq!(store.mailbox(&[12; 16]).unwrap(), None);
}

#[test]
fn close_flushes_and_stops_the_background_threads() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.create_mailbox([13; 16], [9; 32], 0).unwrap();
    put(&store, &[13; 16], 0, b"closing");
    store.close().unwrap();
    assert!(store.thread.lock().unwrap().is_none());
    // Reads still answer after close; nothing waits on a flusher.
    assert_eq!(store.fetch(&[13; 16], 0, 10).unwrap().len(), 1);
    drop(store);
    // sled lets go of its file lock when its own last handle drops, which
    // can trail ours by a moment under load: retry within a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match EmbeddedStore::open(dir.path()) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopen after close: {e}"),
        }
    };
    assert_eq!(
        store.fetch(&[13; 16], 0, 10).unwrap()[0].payload,
        b"closing"
    );
}

#[test]
fn an_ack_is_applied_now_unless_its_shard_is_held() {
    let (store, _dir) = open_fresh();
    let m = [21; 16];
    store.create_mailbox(m, [1; 32], 0).unwrap();
    for i in 0..3 {
        put(&store, &m, i, b"x");
    }
    assert_eq!(store.try_ack_now(&m, &[1, 9]), Some(Ok(1)));
    assert_eq!(seqs(&store, &m), vec![2, 3]);
    {
        // A multi-recipient append (say) holds the shard: not tried.
        let _held = store.inner.index.shard(&m).unwrap();
        assert_eq!(store.try_ack_now(&m, &[2]), None);
    }
    assert_eq!(store.try_ack_now(&m, &[2]), Some(Ok(1)));
    assert_eq!(
        store.try_ack_now(&[22; 16], &[1]),
        Some(Ok(0)),
        "no mailbox"
    );
    store.close().unwrap();
    assert!(matches!(
        store.try_ack_now(&m, &[3]),
        Some(Err(StoreError::Unavailable(_)))
    ));
    assert_eq!(seqs(&store, &m), vec![3]);
}

/// A fresh engine in its own temp dir, for the conformance suite.
fn open_fresh() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (EmbeddedStore::open(dir.path()).unwrap(), dir)
}

crate::mailbox_store_conformance!(open_fresh);
