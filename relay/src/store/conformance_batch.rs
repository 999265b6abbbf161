//! Conformance cases for the batched calls a stream's sends make,
//! [`MailboxStore::tokens`] and [`MailboxStore::append_batch`]: one result
//! per item in order, each the answer the single call would give, items
//! for one mailbox stored in item order, and across many mailbox ids (so
//! an engine that splits a batch by shard is made to split it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{env, expiring, held, mailbox, seqs, stored, NOW, ROOMY};
use crate::store::{Appended, BatchAppend, MailboxStore, Quota, StoreError, TokenRecord};

fn item(mailbox: [u8; 16], env: crate::store::NewEnvelope<'_>) -> BatchAppend<'_> {
    BatchAppend {
        mailbox,
        env,
        quota: ROOMY,
    }
}

/// Items across 24 mailboxes, three rounds each, interleaved: every
/// mailbox gets seqs 1, 2, 3 in item order, with the payloads given.
pub fn append_batch_answers_each_item_in_order<S: MailboxStore>(s: &S) {
    let boxes: Vec<_> = (1..=24u8).map(|n| mailbox(s, n)).collect();
    let payloads: Vec<Vec<u8>> = (0..72u8).map(|i| vec![i; usize::from(i) + 1]).collect();
    let items: Vec<_> = (0..72usize)
        .map(|i| item(boxes[i % 24], env(i as u8, &payloads[i])))
        .collect();
    let out = s.append_batch(&items);
    let want: Vec<_> = (0..72u64).map(|i| Ok(stored(i / 24 + 1))).collect();
    assert_eq!(out, want);
    for (n, mb) in boxes.iter().enumerate() {
        let got = s.fetch(mb, 0, 10).unwrap();
        let ids: Vec<_> = got.iter().map(|e| e.message_id[0]).collect();
        assert_eq!(ids, [n as u8, n as u8 + 24, n as u8 + 48]);
        assert_eq!(got[2].payload, payloads[n + 48]);
    }
}

/// A repeat within one batch is a duplicate of the earlier item; an unknown
/// mailbox and a full one refuse only their own items.
pub fn append_batch_refuses_items_on_their_own<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    let one = Quota {
        max_envelopes: 1,
        max_bytes: 1 << 20,
    };
    let items = [
        item(a, env(1, b"first")),
        item(a, env(1, b"first")),
        item([9; 16], env(2, b"nobody")),
        BatchAppend {
            mailbox: b,
            env: env(3, b"fits"),
            quota: one,
        },
        BatchAppend {
            mailbox: b,
            env: env(4, b"over"),
            quota: one,
        },
        item(a, env(5, b"after")),
    ];
    let out = s.append_batch(&items);
    assert_eq!(out.len(), 6);
    assert_eq!(out[0], Ok(stored(1)));
    assert_eq!(
        out[1],
        Ok(Appended {
            seq: 1,
            duplicate: true
        })
    );
    assert_eq!(out[2], Err(StoreError::UnknownMailbox));
    assert_eq!(out[3], Ok(stored(1)));
    assert!(matches!(out[4], Err(StoreError::QuotaExceeded { .. })));
    assert_eq!(out[5], Ok(stored(2)));
    assert_eq!(seqs(s, &a), [1, 2]);
    assert_eq!(held(s, &b), (1, 4));
    assert_eq!(s.mailbox(&[9; 16]).unwrap(), None);
}

/// Batched envelopes expire like single ones (the expiry bookkeeping is
/// kept for every mailbox of the batch), and a batch is refused once the
/// store is closed.
pub fn append_batch_expires_and_is_refused_when_closed<S: MailboxStore>(s: &S) {
    let boxes: Vec<_> = (1..=8u8).map(|n| mailbox(s, n)).collect();
    let items: Vec<_> = boxes
        .iter()
        .enumerate()
        .map(|(i, mb)| item(*mb, expiring(1, b"soon", 100 + i as u64)))
        .collect();
    assert!(s.append_batch(&items).iter().all(|r| r == &Ok(stored(1))));
    assert_eq!(s.sweep(103).unwrap().envelopes, 4);
    assert_eq!(s.sweep(NOW).unwrap().envelopes, 4);
    s.close().unwrap();
    let out = s.append_batch(&[item(boxes[0], env(2, b"late"))]);
    assert!(matches!(out[..], [Err(StoreError::Unavailable(_))]));
}

/// Tokens of several mailboxes, an unknown one and a revoked one, looked
/// up together: one answer per hash, in order.
pub fn tokens_answers_each_hash_in_order<S: MailboxStore>(s: &S) {
    let boxes: Vec<_> = (1..=12u8).map(|n| mailbox(s, n)).collect();
    for (i, mb) in boxes.iter().enumerate() {
        s.add_token([i as u8 + 1; 32], *mb, 10).unwrap();
    }
    assert!(s.revoke_token(&[3; 32], &boxes[2]).unwrap());
    let mut hashes: Vec<[u8; 32]> = (1..=12u8).rev().map(|n| [n; 32]).collect();
    hashes.insert(4, [99; 32]);
    // The same token more than once, as a sender's batch carries it.
    hashes.insert(7, [3; 32]);
    hashes.push([12; 32]);
    let got = s.tokens(&hashes);
    assert_eq!(got.len(), 15);
    for (h, r) in hashes.iter().zip(got) {
        let want = (h[0] != 99).then(|| TokenRecord {
            mailbox: boxes[usize::from(h[0]) - 1],
            revoked: h[0] == 3,
        });
        assert_eq!(r, Ok(want), "token {}", h[0]);
    }
    assert!(s.tokens(&[]).is_empty());
}
