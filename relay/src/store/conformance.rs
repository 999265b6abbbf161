//! The conformance suite every [`MailboxStore`] engine must pass: one
//! generic function per behaviour the relay relies on, each taking a fresh,
//! empty store. [`mailbox_store_conformance!`](crate::mailbox_store_conformance)
//! turns them into `#[test]`s for one engine:
//!
//! ```ignore
//! fn open_fresh() -> (MyStore, TempDir) { /* a new, empty engine */ }
//! tern_relay::mailbox_store_conformance!(open_fresh);
//! ```
//!
//! The opener returns the store and a guard (a temp dir, a server process)
//! dropped after it. The suite is compiled for this crate's tests and, with
//! the `conformance` feature, for other crates: an engine kept elsewhere (a
//! Redis Cluster engine, say) runs the same suite from its own tests.
//!
//! What is checked here is what the relay's behaviour depends on, not how an
//! engine works: restart, recovery and reclamation are each engine's own
//! tests.

// A conformance failure is a panic with the reason, as in any test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::{
    Appended, MailboxId, MailboxRecord, MailboxStore, NewEnvelope, Quota, StoreError, TokenRecord,
};

#[path = "conformance_fanout.rs"]
mod fanout;
pub use fanout::*;

#[path = "conformance_batch.rs"]
mod batch;
pub use batch::*;
#[path = "conformance_order.rs"]
mod order;
pub use order::*;

/// A quota nothing in the suite reaches.
const ROOMY: Quota = Quota {
    max_envelopes: 1_000_000,
    max_bytes: 1 << 30,
};
/// When the suite's envelopes arrive.
const NOW: u64 = 1_700_000_000_000;

/// An envelope with message id `[id; 16]` that never expires.
fn env(id: u8, payload: &[u8]) -> NewEnvelope<'_> {
    expiring(id, payload, u64::MAX)
}

fn expiring(id: u8, payload: &[u8], expires_ms: u64) -> NewEnvelope<'_> {
    NewEnvelope {
        message_id: [id; 16],
        payload,
        now_ms: NOW,
        expires_ms,
    }
}

/// Create mailbox `[n; 16]`, owned by key `[n; 32]`.
fn mailbox<S: MailboxStore>(s: &S, n: u8) -> MailboxId {
    s.create_mailbox([n; 16], [n; 32], NOW).unwrap();
    [n; 16]
}

fn seqs<S: MailboxStore>(s: &S, mb: &MailboxId) -> Vec<u64> {
    s.fetch(mb, 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

fn held<S: MailboxStore>(s: &S, mb: &MailboxId) -> (u64, u64) {
    let m = s.mailbox(mb).unwrap().unwrap();
    (m.envelopes, m.bytes)
}

fn stored(seq: u64) -> Appended {
    Appended {
        seq,
        duplicate: false,
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A new mailbox reads back as created; an unknown one is absent.
pub fn creates_and_looks_up_mailboxes<S: MailboxStore>(s: &S) {
    s.create_mailbox([1; 16], [7; 32], 1234).unwrap();
    assert_eq!(
        s.mailbox(&[1; 16]).unwrap(),
        Some(MailboxRecord {
            auth_key: [7; 32],
            next_seq: 1,
            envelopes: 0,
            bytes: 0,
            tokens: 0,
            created_ms: 1234,
        })
    );
    assert_eq!(s.mailbox(&[2; 16]).unwrap(), None);
}

/// A taken mailbox id is refused, and its owner is not replaced.
pub fn refuses_a_taken_mailbox_id<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    assert_eq!(
        s.create_mailbox(mb, [9; 32], NOW + 1),
        Err(StoreError::MailboxExists)
    );
    let m = s.mailbox(&mb).unwrap().unwrap();
    assert_eq!((m.auth_key, m.created_ms), ([1; 32], NOW));
}

/// Tokens read back with their mailbox and are counted on it.
pub fn adds_and_looks_up_tokens<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    s.add_token([5; 32], mb, 10).unwrap();
    s.add_token([6; 32], mb, 10).unwrap();
    assert_eq!(
        s.token(&[5; 32]).unwrap(),
        Some(TokenRecord {
            mailbox: mb,
            revoked: false
        })
    );
    assert_eq!(s.token(&[7; 32]).unwrap(), None);
    assert_eq!(s.mailbox(&mb).unwrap().unwrap().tokens, 2);
}

/// A mailbox holds at most `max_tokens` live tokens; revoking frees a place.
pub fn refuses_tokens_over_the_limit<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    s.add_token([1; 32], mb, 2).unwrap();
    s.add_token([2; 32], mb, 2).unwrap();
    assert!(matches!(
        s.add_token([3; 32], mb, 2),
        Err(StoreError::QuotaExceeded { .. })
    ));
    assert_eq!(s.token(&[3; 32]).unwrap(), None);
    assert_eq!(s.mailbox(&mb).unwrap().unwrap().tokens, 2);
    assert!(s.revoke_token(&[1; 32], &mb).unwrap());
    s.add_token([3; 32], mb, 2).unwrap();
    assert_eq!(s.mailbox(&mb).unwrap().unwrap().tokens, 2);
}

/// A token for a mailbox that does not exist is refused and not kept.
pub fn refuses_tokens_for_an_unknown_mailbox<S: MailboxStore>(s: &S) {
    assert_eq!(
        s.add_token([1; 32], [9; 16], 10),
        Err(StoreError::UnknownMailbox)
    );
    assert_eq!(s.token(&[1; 32]).unwrap(), None);
}

/// Revoking marks the token and uncounts it once, however often it is asked.
pub fn revokes_a_token_once<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    s.add_token([1; 32], mb, 10).unwrap();
    s.add_token([2; 32], mb, 10).unwrap();
    assert!(s.revoke_token(&[1; 32], &mb).unwrap());
    assert!(
        s.revoke_token(&[1; 32], &mb).unwrap(),
        "revoking is idempotent"
    );
    assert_eq!(
        s.token(&[1; 32]).unwrap(),
        Some(TokenRecord {
            mailbox: mb,
            revoked: true
        })
    );
    assert_eq!(s.mailbox(&mb).unwrap().unwrap().tokens, 1);
}

/// Only a token's own mailbox can revoke it; an unknown token is not revoked.
pub fn revoking_another_mailboxs_token_returns_false<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    s.add_token([1; 32], a, 10).unwrap();
    assert!(!s.revoke_token(&[1; 32], &b).unwrap());
    assert!(!s.revoke_token(&[9; 32], &a).unwrap());
    assert_eq!(
        s.token(&[1; 32]).unwrap(),
        Some(TokenRecord {
            mailbox: a,
            revoked: false
        })
    );
    assert_eq!(s.mailbox(&a).unwrap().unwrap().tokens, 1);
}

/// Appends get 1, 2, 3... and read back in order, exactly as given.
pub fn appends_assign_increasing_seqs<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    for i in 1..=5u8 {
        let payload = vec![i; usize::from(i) * 10];
        assert_eq!(
            s.append(&mb, expiring(i, &payload, NOW + u64::from(i)), ROOMY),
            Ok(stored(u64::from(i)))
        );
    }
    assert_eq!(s.append(&mb, env(6, b""), ROOMY), Ok(stored(6)));
    let got = s.fetch(&mb, 0, 100).unwrap();
    assert_eq!(got.len(), 6);
    for (i, e) in got.iter().take(5).enumerate() {
        let i = i as u8 + 1;
        assert_eq!(e.seq, u64::from(i));
        assert_eq!(e.message_id, [i; 16]);
        assert_eq!(e.received_ms, NOW);
        assert_eq!(e.expires_ms, NOW + u64::from(i));
        assert_eq!(e.payload, vec![i; usize::from(i) * 10]);
    }
    assert!(got[5].payload.is_empty());
    assert_eq!(held(s, &mb), (6, 150));
    assert_eq!(s.mailbox(&mb).unwrap().unwrap().next_seq, 7);
}

/// `fetch` returns at most `limit` envelopes above `after_seq`.
pub fn fetch_honours_after_seq_and_limit<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    for i in 1..=10 {
        s.append(&mb, env(i, b"x"), ROOMY).unwrap();
    }
    let page = |after, limit| -> Vec<u64> {
        let got = s.fetch(&mb, after, limit).unwrap();
        got.iter().map(|e| e.seq).collect()
    };
    assert_eq!(page(3, 4), [4, 5, 6, 7]);
    assert_eq!(page(8, 100), [9, 10]);
    assert!(page(10, 100).is_empty());
    assert!(page(0, 0).is_empty());
    s.ack(&mb, &[5]).unwrap();
    assert_eq!(page(3, 3), [4, 6, 7], "acked envelopes are skipped");
}

/// Each mailbox counts its own sequence numbers and de-duplicates its own
/// message ids.
pub fn mailboxes_are_independent<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    assert_eq!(s.append(&a, env(1, b"a1"), ROOMY), Ok(stored(1)));
    assert_eq!(s.append(&a, env(2, b"a2"), ROOMY), Ok(stored(2)));
    assert_eq!(s.append(&b, env(1, b"b1"), ROOMY), Ok(stored(1)));
    assert_eq!(s.fetch(&b, 0, 10).unwrap()[0].payload, b"b1");
    assert_eq!(s.ack(&b, &[2]).unwrap(), 0, "b has no seq 2");
    assert_eq!(seqs(s, &a), [1, 2]);
}

/// A message id still held makes a repeated send a no-op that reports the
/// earlier sequence number.
pub fn duplicate_message_id_while_held_returns_the_earlier_seq<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    s.append(&mb, env(1, b"first"), ROOMY).unwrap();
    s.append(&mb, env(2, b"second"), ROOMY).unwrap();
    assert_eq!(
        s.append(&mb, env(1, b"first again"), ROOMY),
        Ok(Appended {
            seq: 1,
            duplicate: true
        })
    );
    let got = s.fetch(&mb, 0, 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, b"first");
    assert_eq!(held(s, &mb), (2, 11));
    assert_eq!(s.append(&mb, env(3, b"third"), ROOMY), Ok(stored(3)));
}

/// A retry of a held envelope succeeds even when the mailbox is full.
pub fn duplicate_is_recognised_in_a_full_mailbox<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    let one = Quota {
        max_envelopes: 1,
        max_bytes: 1 << 20,
    };
    s.append(&mb, env(1, b"only"), one).unwrap();
    assert_eq!(
        s.append(&mb, env(1, b"only"), one),
        Ok(Appended {
            seq: 1,
            duplicate: true
        })
    );
}

/// Once acknowledged, a message id may be stored again, under a new seq.
pub fn resend_after_ack_is_stored_again<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    assert_eq!(s.append(&mb, env(1, b"once"), ROOMY), Ok(stored(1)));
    assert_eq!(s.ack(&mb, &[1]).unwrap(), 1);
    assert_eq!(s.append(&mb, env(1, b"once"), ROOMY), Ok(stored(2)));
    assert_eq!(seqs(s, &mb), [2]);
}

/// Over quota a send is refused, saying what is held, and nothing stored
/// is touched; acks make room again.
pub fn quota_refusal_leaves_everything_intact<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    let quota = Quota {
        max_envelopes: 2,
        max_bytes: 10,
    };
    s.append(&mb, env(1, b"12345"), quota).unwrap();
    assert_eq!(
        s.append(&mb, env(2, b"123456"), quota),
        Err(StoreError::QuotaExceeded {
            envelopes: 1,
            bytes: 5
        })
    );
    assert_eq!(held(s, &mb), (1, 5));
    // Exactly at the byte limit is allowed.
    assert_eq!(s.append(&mb, env(3, b"12345"), quota), Ok(stored(2)));
    assert_eq!(
        s.append(&mb, env(4, b""), quota),
        Err(StoreError::QuotaExceeded {
            envelopes: 2,
            bytes: 10
        })
    );
    let got = s.fetch(&mb, 0, 10).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(got[1].message_id, [3; 16]);
    assert_eq!(held(s, &mb), (2, 10));
    // A refused message id was not kept: it is not a duplicate later.
    s.ack(&mb, &[1]).unwrap();
    assert_eq!(s.append(&mb, env(2, b"1"), quota), Ok(stored(3)));
    assert_eq!(held(s, &mb), (2, 6));
}

/// The quota holds when many threads append at once: exactly as many as
/// fit are stored, each with its own sequence number.
pub fn quota_holds_under_concurrent_appends<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    let quota = Quota {
        max_envelopes: 50,
        max_bytes: 1 << 20,
    };
    let results: Vec<Result<Appended, StoreError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8u8)
            .map(|t| {
                scope.spawn(move || {
                    (0..20u8)
                        .map(|i| {
                            let mut id = [t; 16];
                            id[1] = i;
                            let e = NewEnvelope {
                                message_id: id,
                                payload: b"concurrent",
                                now_ms: NOW,
                                expires_ms: u64::MAX,
                            };
                            s.append(&mb, e, quota)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut got: Vec<u64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|a| a.seq)
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::QuotaExceeded { .. })));
    assert_eq!(seqs(s, &mb), (1..=50).collect::<Vec<_>>());
    assert_eq!(held(s, &mb), (50, 500));
}

/// `ack` counts what it deleted and ignores what is not held.
pub fn ack_returns_count_and_ignores_unknown_seqs<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    for i in 1..=3 {
        s.append(&mb, env(i, b"abc"), ROOMY).unwrap();
    }
    assert_eq!(s.ack(&mb, &[2, 2, 99]).unwrap(), 1);
    assert_eq!(s.ack(&mb, &[2]).unwrap(), 0);
    assert_eq!(s.ack(&mb, &[]).unwrap(), 0);
    assert_eq!(held(s, &mb), (2, 6));
    assert_eq!(s.ack(&mb, &[3, 1]).unwrap(), 2);
    assert_eq!(held(s, &mb), (0, 0));
    assert!(s.fetch(&mb, 0, 10).unwrap().is_empty());
}

/// Sequence numbers never go back, even when everything was acknowledged.
pub fn seqs_stay_increasing_after_acks<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    for i in 1..=3 {
        s.append(&mb, env(i, b"x"), ROOMY).unwrap();
    }
    s.ack(&mb, &[1, 2, 3]).unwrap();
    assert_eq!(s.mailbox(&mb).unwrap().unwrap().next_seq, 4);
    assert_eq!(s.append(&mb, env(4, b"x"), ROOMY), Ok(stored(4)));
    s.ack(&mb, &[4]).unwrap();
    s.sweep(NOW).unwrap();
    assert_eq!(s.append(&mb, env(5, b"x"), ROOMY), Ok(stored(5)));
}

/// `sweep(now)` deletes every envelope expired at `now` (its expiry is not
/// after `now`), in every mailbox, and nothing else.
pub fn sweep_deletes_what_has_expired<S: MailboxStore>(s: &S) {
    let (a, b) = (mailbox(s, 1), mailbox(s, 2));
    s.append(&a, expiring(1, b"100", 100), ROOMY).unwrap();
    s.append(&a, expiring(2, b"300", 300), ROOMY).unwrap();
    s.append(&a, expiring(3, b"200", 200), ROOMY).unwrap();
    s.append(&b, expiring(1, b"150", 150), ROOMY).unwrap();
    assert_eq!(s.sweep(99).unwrap().envelopes, 0);
    assert_eq!(s.sweep(200).unwrap().envelopes, 3);
    assert_eq!(s.sweep(200).unwrap().envelopes, 0);
    assert_eq!(seqs(s, &a), [2]);
    assert!(seqs(s, &b).is_empty());
    assert_eq!(held(s, &a), (1, 3));
    // An expired message id is no longer held, so a resend is stored anew.
    assert_eq!(s.append(&b, env(1, b"again"), ROOMY), Ok(stored(2)));
}

/// What each operation does for a mailbox that does not exist.
pub fn unknown_mailbox<S: MailboxStore>(s: &S) {
    let nobody = [9; 16];
    assert_eq!(s.mailbox(&nobody).unwrap(), None);
    assert_eq!(
        s.append(&nobody, env(1, b"x"), ROOMY),
        Err(StoreError::UnknownMailbox)
    );
    assert!(s.fetch(&nobody, 0, 10).unwrap().is_empty());
    assert_eq!(s.ack(&nobody, &[1]).unwrap(), 0);
    assert!(!s.revoke_token(&[1; 32], &nobody).unwrap());
    assert_eq!(s.mailbox(&nobody).unwrap(), None, "nothing was created");
}

/// `durable()` resolves once earlier writes are durable, and at once when
/// there were none.
pub fn durable_resolves<S: MailboxStore>(s: &S) {
    block_on(s.durable()).unwrap();
    let mb = mailbox(s, 1);
    s.add_token([1; 32], mb, 10).unwrap();
    s.append(&mb, env(1, b"durable"), ROOMY).unwrap();
    let wait = s.durable();
    s.ack(&mb, &[1]).unwrap();
    block_on(wait).unwrap();
    block_on(s.durable()).unwrap();
}

/// `flush` succeeds with and without pending writes, and changes nothing.
pub fn flush_keeps_everything<S: MailboxStore>(s: &S) {
    s.flush().unwrap();
    let mb = mailbox(s, 1);
    s.append(&mb, env(1, b"flushed"), ROOMY).unwrap();
    s.flush().unwrap();
    s.flush().unwrap();
    assert_eq!(s.fetch(&mb, 0, 10).unwrap()[0].payload, b"flushed");
}

/// `close` may be called twice; after it, writes are refused.
pub fn close_is_idempotent_and_refuses_writes<S: MailboxStore>(s: &S) {
    let mb = mailbox(s, 1);
    s.append(&mb, env(1, b"before"), ROOMY).unwrap();
    s.close().unwrap();
    s.close().unwrap();
    assert!(matches!(
        s.append(&mb, env(2, b"after"), ROOMY),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.create_mailbox([2; 16], [2; 32], NOW),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.add_token([1; 32], mb, 10),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(s.ack(&mb, &[1]), Err(StoreError::Unavailable(_))));
}

/// Instantiate the conformance suite for one engine: one `#[test]` per case
/// in a module `conformance`. `$open` names a function returning a fresh,
/// empty store and a guard that must outlive it (`(S, G)`); it is resolved
/// from the calling module.
#[macro_export]
macro_rules! mailbox_store_conformance {
    ($open:path) => {
        $crate::mailbox_store_conformance!(@cases $open;
            creates_and_looks_up_mailboxes,
            refuses_a_taken_mailbox_id,
            adds_and_looks_up_tokens,
            refuses_tokens_over_the_limit,
            refuses_tokens_for_an_unknown_mailbox,
            revokes_a_token_once,
            revoking_another_mailboxs_token_returns_false,
            appends_assign_increasing_seqs,
            fetch_honours_after_seq_and_limit,
            mailboxes_are_independent,
            duplicate_message_id_while_held_returns_the_earlier_seq,
            duplicate_is_recognised_in_a_full_mailbox,
            resend_after_ack_is_stored_again,
            quota_refusal_leaves_everything_intact,
            quota_holds_under_concurrent_appends,
            ack_returns_count_and_ignores_unknown_seqs,
            seqs_stay_increasing_after_acks,
            sweep_deletes_what_has_expired,
            unknown_mailbox,
            durable_resolves,
            flush_keeps_everything,
            close_is_idempotent_and_refuses_writes,
            append_many_answers_each_target_in_order,
            append_many_reports_duplicates_per_target,
            append_many_quota_refusal_leaves_others_stored,
            append_many_unknown_mailbox_per_target,
            append_many_copies_are_fetched_and_acked_independently,
            append_many_copies_expire,
            append_many_is_durable_and_refused_when_closed,
            append_batch_answers_each_item_in_order,
            append_batch_refuses_items_on_their_own,
            append_batch_expires_and_is_refused_when_closed,
            tokens_answers_each_hash_in_order,
            acks_and_sweeps_remove_exactly_what_they_name,
            sweeps_find_what_an_out_of_order_envelope_hid,
        );
    };
    (@cases $open:path; $($case:ident),* $(,)?) => {
        /// The shared `MailboxStore` conformance suite against this engine.
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    let (store, guard) = $open();
                    $crate::store::conformance::$case(&store);
                    // The store first: it may flush into what the guard keeps.
                    drop((store, guard));
                }
            )*
        }
    };
}
