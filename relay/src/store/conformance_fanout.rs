//! Conformance cases for [`MailboxStore::append_many`], the store half of a
//! multi-recipient send: one result per target in order, each target's
//! duplicate, quota and unknown-mailbox answers its own, each mailbox
//! holding (and acking, and expiring) its copy independently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{block_on, env, expiring, held, mailbox, seqs, stored, NOW, ROOMY};
use crate::store::{Appended, MailboxStore, Quota, StoreError, Swept};

/// Results come back one per target, in the targets' order, each with its
/// own mailbox's sequence number.
pub fn append_many_answers_each_target_in_order<S: MailboxStore>(s: &S) {
    let (a, b, c) = (mailbox(s, 1), mailbox(s, 2), mailbox(s, 3));
    s.append(&b, env(9, b"earlier"), ROOMY).unwrap();
    let out = s
        .append_many(&[(a, ROOMY), (b, ROOMY), (c, ROOMY)], env(1, b"group"))
        .unwrap();
    assert_eq!(out, vec![Ok(stored(1)), Ok(stored(2)), Ok(stored(1))]);
    assert_eq!(seqs(s, &b), vec![1, 2]);
}

/// A target that already holds the message id answers duplicate with its
/// earlier seq; the others store it.
pub fn append_many_reports_duplicates_per_target<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    s.append(&a, env(1, b"group"), ROOMY).unwrap();
    let out = s
        .append_many(&[(a, ROOMY), (b, ROOMY)], env(1, b"group"))
        .unwrap();
    let dup = Appended {
        seq: 1,
        duplicate: true,
    };
    assert_eq!(out, vec![Ok(dup), Ok(stored(1))]);
    assert_eq!(held(s, &a), (1, 5));
    assert_eq!(held(s, &b), (1, 5));
}

/// A full target is refused; the targets after it are still stored.
pub fn append_many_quota_refusal_leaves_others_stored<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    s.append(&a, env(7, b"x"), ROOMY).unwrap();
    let full = Quota {
        max_envelopes: 1,
        max_bytes: 1 << 20,
    };
    let out = s
        .append_many(&[(a, full), (b, full)], env(1, b"group"))
        .unwrap();
    assert_eq!(
        out,
        vec![
            Err(StoreError::QuotaExceeded {
                envelopes: 1,
                bytes: 1
            }),
            Ok(stored(1))
        ]
    );
    assert_eq!(seqs(s, &a), vec![1]);
    assert_eq!(seqs(s, &b), vec![1]);
}

/// An unknown mailbox among the targets is refused alone.
pub fn append_many_unknown_mailbox_per_target<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    let out = s
        .append_many(&[(a, ROOMY), ([99; 16], ROOMY), (b, ROOMY)], env(1, b"g"))
        .unwrap();
    assert_eq!(
        out,
        vec![
            Ok(stored(1)),
            Err(StoreError::UnknownMailbox),
            Ok(stored(1))
        ]
    );
    assert!(s.fetch(&[99; 16], 0, 10).unwrap().is_empty());
}

/// Every target fetches the same payload and id; an ack in one mailbox
/// leaves the others' copies.
pub fn append_many_copies_are_fetched_and_acked_independently<S: MailboxStore>(s: &S) {
    let ids: Vec<_> = (1..=3).map(|n| mailbox(s, n)).collect();
    let targets: Vec<_> = ids.iter().map(|m| (*m, ROOMY)).collect();
    s.append_many(&targets, env(5, b"shared ciphertext"))
        .unwrap();
    for m in &ids {
        let got = s.fetch(m, 0, 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"shared ciphertext");
        assert_eq!(got[0].message_id, [5; 16]);
        assert_eq!(got[0].received_ms, NOW);
    }
    assert_eq!(s.ack(&ids[0], &[1]).unwrap(), 1);
    assert!(s.fetch(&ids[0], 0, 10).unwrap().is_empty());
    for m in &ids[1..] {
        assert_eq!(s.fetch(m, 0, 10).unwrap()[0].payload, b"shared ciphertext");
    }
    assert_eq!(s.ack(&ids[1], &[1]).unwrap(), 1);
    assert_eq!(seqs(s, &ids[2]), vec![1]);
}

/// Expiry deletes every target's copy, acked or not.
pub fn append_many_copies_expire<S: MailboxStore>(s: &S) {
    let (a, b, c) = (mailbox(s, 1), mailbox(s, 2), mailbox(s, 3));
    s.append_many(
        &[(a, ROOMY), (b, ROOMY), (c, ROOMY)],
        expiring(1, b"group", NOW + 10),
    )
    .unwrap();
    s.ack(&a, &[1]).unwrap();
    assert_eq!(s.sweep(NOW + 9).unwrap(), Swept { envelopes: 0 });
    assert_eq!(s.sweep(NOW + 10).unwrap(), Swept { envelopes: 2 });
    for m in [a, b, c] {
        assert_eq!(held(s, &m), (0, 0));
    }
}

/// One durability wait after the operation covers every target; a closed
/// store refuses the whole operation.
pub fn append_many_is_durable_and_refused_when_closed<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    s.append_many(&[(a, ROOMY), (b, ROOMY)], env(1, b"g"))
        .unwrap();
    block_on(s.durable()).unwrap();
    s.close().unwrap();
    assert!(matches!(
        s.append_many(&[(a, ROOMY)], env(2, b"g")),
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(seqs(s, &b), vec![1]);
}
