//! Conformance cases for removals in any order: acks of scattered and
//! far-apart sequence numbers, and sweeps of envelopes whose expiries did
//! not arrive in order, remove exactly what they name and leave the
//! mailbox's counters right (an engine may find due envelopes by walking
//! them in seq order and keep only the out-of-order ones aside, as the
//! Redis engine does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{held, mailbox, seqs, NOW, ROOMY};
use crate::store::{MailboxStore, NewEnvelope};

/// Envelope `i` of a mailbox: a distinct message id, 4 bytes, `expires`.
fn nth(i: u64, expires_ms: u64) -> NewEnvelope<'static> {
    let mut message_id = [0xee; 16];
    message_id[..8].copy_from_slice(&i.to_be_bytes());
    NewEnvelope {
        message_id,
        payload: b"abcd",
        now_ms: NOW,
        expires_ms,
    }
}

/// 200 envelopes, expiries rising with seq except every tenth's, which
/// come early; acks near and far apart, then sweeps, remove exactly what
/// they name.
pub fn acks_and_sweeps_remove_exactly_what_they_name<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    let early = |i: u64| i % 10 == 0;
    for i in 1..=200u64 {
        let expires = if early(i) { 1_000 + i } else { 10_000 + i };
        assert_eq!(s.append(&mb, nth(i, expires), ROOMY).unwrap().seq, i);
    }
    assert_eq!(s.ack(&mb, &[1, 150]).unwrap(), 2, "far apart");
    assert_eq!(s.ack(&mb, &[13, 3, 5, 7, 9, 11, 12]).unwrap(), 7, "near");
    assert_eq!(s.ack(&mb, &[1, 3, 500]).unwrap(), 0, "gone or never held");
    let acked = [1, 3, 5, 7, 9, 11, 12, 13, 150];
    assert_eq!(held(s, &mb), (191, 764));
    // The early ones up to 100.
    assert_eq!(s.sweep(1_100).unwrap().envelopes, 10);
    // Then every early one left (110..=200 but 150) and the rest up to 50.
    assert_eq!(s.sweep(10_050).unwrap().envelopes, 9 + 37);
    assert_eq!(s.sweep(10_050).unwrap().envelopes, 0);
    let want: Vec<u64> = (51..=200).filter(|i| !early(*i)).collect();
    assert_eq!(seqs(s, &mb), want);
    assert_eq!(held(s, &mb), (135, 540));
    assert!(acked.iter().all(|a| !want.contains(a)));
    // An early one after all of them is swept on its own.
    assert_eq!(s.append(&mb, nth(201, 500), ROOMY).unwrap().seq, 201);
    assert_eq!(s.sweep(600).unwrap().envelopes, 1);
    assert_eq!(seqs(s, &mb), want);
}

/// The envelope held first is out of expiry order and not yet due when a
/// sweep looks; later sweeps still find it, and what came after it.
pub fn sweeps_find_what_an_out_of_order_envelope_hid<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 2);
    s.append(&mb, nth(1, 5_000), ROOMY).unwrap();
    s.append(&mb, nth(2, 3_000), ROOMY).unwrap();
    assert_eq!(s.ack(&mb, &[1]).unwrap(), 1);
    assert_eq!(s.sweep(2_000).unwrap().envelopes, 0);
    s.append(&mb, nth(3, 6_000), ROOMY).unwrap();
    s.append(&mb, nth(4, 7_000), ROOMY).unwrap();
    assert_eq!(s.sweep(4_000).unwrap().envelopes, 1);
    assert_eq!(seqs(s, &mb), [3, 4]);
    assert_eq!(s.sweep(6_500).unwrap().envelopes, 1);
    assert_eq!(seqs(s, &mb), [4]);
    assert_eq!(held(s, &mb), (1, 4));
    // A message id swept is no longer held: sent again, it is stored anew.
    assert_eq!(s.append(&mb, nth(2, 9_000), ROOMY).unwrap().seq, 5);
    assert_eq!(s.sweep(9_000).unwrap().envelopes, 2);
    assert_eq!(held(s, &mb), (0, 0));
}
