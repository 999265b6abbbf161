//! The embedded engine under multi-recipient appends (`append_many`): what
//! a 1,000-target send costs on disk (the measurement behind the
//! "Multi-recipient sends" entry in docs/decisions.md), and that each
//! target's copy lives, survives a restart and is reclaimed on its own.

use super::record::envelope_len;
use super::*;

const QUOTA: Quota = Quota {
    max_envelopes: 1_000_000,
    max_bytes: 1 << 30,
};

fn env(id: u8, payload: &[u8]) -> NewEnvelope<'_> {
    NewEnvelope {
        message_id: [id; 16],
        payload,
        now_ms: 1,
        expires_ms: u64::MAX,
    }
}

/// Bytes of every file under the log's directory, as `ls` would add them.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("envelopes"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Measured, not assumed: the log's growth for one envelope and for one
/// send to 1,000 mailboxes. Today each target gets its own record, so the
/// send costs 1,000 single envelopes; run with `--nocapture` for figures.
#[test]
fn a_thousand_target_send_writes_one_record_per_target() {
    const N: usize = 1_000;
    for payload_len in [200usize, 1024, 16 << 10] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let targets: Vec<(MailboxId, Quota)> = (0..N)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                store.create_mailbox(id, [1; 32], 0).unwrap();
                (id, QUOTA)
            })
            .collect();
        let payload = vec![0xa5; payload_len];
        store.flush().unwrap();
        let empty = disk_bytes(dir.path());
        store
            .append(&targets[0].0, env(1, &payload), QUOTA)
            .unwrap();
        store.flush().unwrap();
        let single = disk_bytes(dir.path()) - empty;
        let out = store.append_many(&targets, env(2, &payload)).unwrap();
        assert!(out.iter().all(Result::is_ok));
        store.flush().unwrap();
        let many = disk_bytes(dir.path()) - empty - single;
        let target = 2 * single + 32 * N as u64;
        eprintln!(
            "payload {payload_len} B: single envelope {single} B on disk; \
             {N}-target send {many} B ({:.1}x single, {:.1}x the issue's target of {target} B)",
            many as f64 / single as f64,
            many as f64 / target as f64,
        );
        assert_eq!(single, envelope_len(payload_len) as u64);
        assert_eq!(many, N as u64 * single);
    }
}

/// Copies of one send, some acked, survive a restart where they were not
/// acked; once the last is acked their segments are reclaimed.
#[test]
fn partially_acked_copies_survive_restart_and_are_reclaimed_after_the_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        segment_bytes: 4096,
        max_head_age: Duration::from_secs(3600),
        reclaim_every: Duration::from_secs(3600),
        settle: Duration::ZERO,
    };
    let targets: Vec<(MailboxId, Quota)> = (1..=20u8).map(|n| ([n; 16], QUOTA)).collect();
    {
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        for (m, _) in &targets {
            store.create_mailbox(*m, [1; 32], 0).unwrap();
        }
        for id in 1..=10u8 {
            store.append_many(&targets, env(id, &[id; 150])).unwrap();
        }
        // The even mailboxes read everything.
        for (m, _) in targets.iter().filter(|(m, _)| m[0] % 2 == 0) {
            assert_eq!(store.ack(m, &(1..=10).collect::<Vec<_>>()).unwrap(), 10);
        }
        store.flush().unwrap();
        store.close().unwrap();
    }
    let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
    for (m, _) in &targets {
        let held = store.fetch(m, 0, 100).unwrap();
        if m[0] % 2 == 0 {
            assert!(held.is_empty(), "acked copies came back");
        } else {
            assert_eq!(held.len(), 10);
            assert!(held.iter().all(|e| e.payload == [e.message_id[0]; 150]));
        }
    }
    // A retry after the restart is still a duplicate where held, and new
    // where acked.
    let again = store.append_many(&targets[..2], env(3, &[3; 150])).unwrap();
    assert_eq!(
        again,
        vec![
            Ok(Appended {
                seq: 3,
                duplicate: true
            }),
            Ok(Appended {
                seq: 11,
                duplicate: false
            })
        ]
    );
    store.ack(&targets[1].0, &[11]).unwrap();
    let before = store.log_bytes();
    for (m, _) in targets.iter().filter(|(m, _)| m[0] % 2 == 1) {
        store.ack(m, &(1..=10).collect::<Vec<_>>()).unwrap();
    }
    store.flush().unwrap();
    assert!(store.reclaim().unwrap() > 0);
    assert!(
        store.log_bytes() * 4 < before,
        "log {} bytes after the last acks and reclaim, {before} before",
        store.log_bytes()
    );
}
