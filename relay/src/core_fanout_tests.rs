//! `RelayCore::send_many` over the in-memory engine: each target checked
//! on its own, whole-request refusals, duplicates, quota and rate per
//! target, ephemeral sends stored nowhere.

use super::super::*;
use crate::clock::ManualClock;
use crate::config::RateConfig;
use crate::store::MemoryStore;

const NOW: u64 = 1_700_000_000_000;

struct Harness {
    core: RelayCore<MemoryStore, ManualClock>,
    store: Arc<MemoryStore>,
}

fn harness(limits: Limits, rates: RateConfig) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(NOW);
    Harness {
        core: RelayCore::new(
            Arc::clone(&store),
            clock.clone(),
            limits,
            Rates::with_clock(&rates, Arc::new(clock)),
        ),
        store,
    }
}

impl Harness {
    /// Mailbox `[n; 16]` with send token `[n; 32]`.
    fn mailbox(&self, n: u8) -> (MailboxId, Vec<u8>) {
        self.store.create_mailbox([n; 16], [n; 32], NOW).unwrap();
        self.store
            .add_token(token_hash(&[n; 32]), [n; 16], 10)
            .unwrap();
        ([n; 16], vec![n; 32])
    }

    fn payloads(&self, m: &MailboxId) -> Vec<Vec<u8>> {
        self.store
            .fetch(m, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }
}

fn send_many(id: u8, payload: &[u8], targets: &[(&[u8], &[u8])]) -> pb::SendMany {
    pb::SendMany {
        request_id: u64::from(id),
        message_id: vec![id; 16].into(),
        payload: payload.to_vec().into(),
        ephemeral: false,
        targets: targets
            .iter()
            .map(|(m, t)| pb::SendTarget {
                mailbox_id: m.to_vec().into(),
                token: t.to_vec().into(),
            })
            .collect(),
    }
}

fn codes(results: &[pb::TargetResult]) -> Vec<Option<ErrorCode>> {
    results
        .iter()
        .map(|r| r.error.clone().map(|e| WireError::from(e).code))
        .collect()
}

#[test]
fn each_target_is_checked_alone_and_the_good_ones_stored() {
    let h = harness(Limits::default(), RateConfig::default());
    let (a, ta) = h.mailbox(1);
    let (b, tb) = h.mailbox(2);
    let (c, _) = h.mailbox(3);
    let (d, td) = h.mailbox(4);
    h.store.revoke_token(&token_hash(&td), &d).unwrap();
    let sent = h
        .core
        .send_many(&send_many(
            9,
            b"opaque",
            &[
                (&a, &ta),
                (&c, &ta),       // a's token for c
                (&d, &td),       // revoked
                (&b, &[7; 32]),  // made up
                (&[1; 5], &tb),  // not a mailbox id
                (&b, &tb[..31]), // short token
                (&b, &tb),
            ],
        ))
        .unwrap();
    use ErrorCode::*;
    assert_eq!(
        codes(&sent.results),
        vec![
            None,
            Some(TokenInvalid),
            None, // revoked: answered as taken, dropped
            Some(TokenInvalid),
            Some(Malformed),
            Some(TokenInvalid),
            None
        ]
    );
    assert_eq!(sent.stored, vec![a, b]);
    assert_eq!(sent.discarded, 1);
    assert!(sent.ephemeral.is_empty());
    assert_eq!(h.payloads(&a), vec![b"opaque".to_vec()]);
    assert_eq!(h.payloads(&b), vec![b"opaque".to_vec()]);
    assert!(h.payloads(&c).is_empty() && h.payloads(&d).is_empty());
}

#[test]
fn duplicates_and_quota_are_per_target() {
    let limits = Limits {
        mailbox_max_envelopes: 1,
        ..Limits::default()
    };
    let h = harness(limits, RateConfig::default());
    let (a, ta) = h.mailbox(1);
    let (b, tb) = h.mailbox(2);
    let (c, tc) = h.mailbox(3);
    // a already holds this message, c holds another and is full.
    h.core
        .send_many(&send_many(5, b"first", &[(&a, &ta)]))
        .unwrap();
    h.core
        .send_many(&send_many(6, b"other", &[(&c, &tc)]))
        .unwrap();
    let sent = h
        .core
        .send_many(&send_many(5, b"first", &[(&a, &ta), (&b, &tb), (&c, &tc)]))
        .unwrap();
    assert_eq!(
        codes(&sent.results),
        vec![None, None, Some(ErrorCode::QuotaExceeded)]
    );
    // A repeat is answered like a first send (no `duplicate` leaks), and
    // the target that already held it is still woken and holds it once.
    assert!(sent.results.iter().all(|r| !r.duplicate));
    assert_eq!(sent.stored, vec![a, b]);
    assert_eq!(h.payloads(&a).len(), 1);
    assert_eq!(h.payloads(&c), vec![b"other".to_vec()]);
}

#[test]
fn what_the_whole_frame_got_wrong_refuses_it_whole() {
    let limits = Limits {
        max_recipients_per_send: 2,
        max_envelope_bytes: 8,
        ..Limits::default()
    };
    let h = harness(limits, RateConfig::default());
    let (a, ta) = h.mailbox(1);
    let code = |s: pb::SendMany| h.core.send_many(&s).unwrap_err().code;
    assert_eq!(
        code(send_many(1, b"x", &[(&a, &ta), (&a, &ta), (&a, &ta)])),
        ErrorCode::Malformed
    );
    assert_eq!(code(send_many(1, b"x", &[])), ErrorCode::Malformed);
    assert_eq!(
        code(send_many(1, b"123456789", &[(&a, &ta)])),
        ErrorCode::EnvelopeTooLarge
    );
    let mut bad_id = send_many(1, b"x", &[(&a, &ta)]);
    bad_id.message_id = vec![1; 3].into();
    assert_eq!(code(bad_id), ErrorCode::Malformed);
    h.core.set_disk_low(true);
    assert_eq!(
        code(send_many(1, b"x", &[(&a, &ta)])),
        ErrorCode::StorageUnavailable
    );
    assert!(h.payloads(&a).is_empty());
}

#[test]
fn every_target_is_charged_the_send_rate_of_its_token() {
    let rates = RateConfig {
        sends_per_token_per_sec: 1,
        sends_per_token_burst: 1,
        ..RateConfig::unlimited()
    };
    let h = harness(Limits::default(), rates);
    let (a, ta) = h.mailbox(1);
    let (b, tb) = h.mailbox(2);
    let sent = h
        .core
        .send_many(&send_many(1, b"x", &[(&a, &ta), (&b, &tb), (&a, &ta)]))
        .unwrap();
    assert_eq!(
        codes(&sent.results),
        vec![None, None, Some(ErrorCode::RateLimited)]
    );
}

#[test]
fn ephemeral_sends_are_passed_on_and_stored_nowhere() {
    let h = harness(Limits::default(), RateConfig::default());
    let (a, ta) = h.mailbox(1);
    let (b, _) = h.mailbox(2);
    let mut s = send_many(3, b"typing", &[(&a, &ta), (&b, &[0; 32])]);
    s.ephemeral = true;
    let sent = h.core.send_many(&s).unwrap();
    assert_eq!(
        codes(&sent.results),
        vec![None, Some(ErrorCode::TokenInvalid)]
    );
    assert_eq!(sent.ephemeral, vec![a]);
    assert!(sent.stored.is_empty());
    assert!(h.payloads(&a).is_empty());
    let env = h.core.ephemeral_envelope_many(&s);
    assert!(env.ephemeral && env.payload == s.payload && env.seq == 0);
}
