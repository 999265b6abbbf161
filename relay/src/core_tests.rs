//! The relay core driven directly, over the in-memory engine, with a manual
//! clock and seeded randomness: no sockets, no disk, fast and deterministic.
//! The engines themselves are tested by [`crate::store::conformance`].

use super::*;
use crate::clock::ManualClock;
use crate::config::RateConfig;
use crate::entropy::SeededEntropy;
use crate::rate::Rates;
use crate::store::MemoryStore;
use ed25519_dalek::{Signer, SigningKey};
use pb::control_response::Response as R;

struct Harness {
    core: RelayCore<MemoryStore, ManualClock>,
    clock: ManualClock,
    /// The store, for tests to look at what the core left there.
    store: Arc<MemoryStore>,
}

impl Harness {
    fn control(
        &self,
        conn: &mut ConnAuth,
        exporter: &[u8],
        req: pb::ControlRequest,
    ) -> pb::ControlResponse {
        self.core.control(conn, exporter, req).response
    }
}

fn harness(limits: Limits) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(1_700_000_000_000);
    Harness {
        core: RelayCore::new(
            Arc::clone(&store),
            clock.clone(),
            limits,
            Rates::with_clock(&RateConfig::default(), Arc::new(clock.clone())),
        )
        .with_entropy(SeededEntropy::new(7)),
        clock,
        store,
    }
}

fn req(r: Request) -> pb::ControlRequest {
    pb::ControlRequest { request: Some(r) }
}

fn error_code(resp: &pb::ControlResponse) -> Option<ErrorCode> {
    match &resp.response {
        Some(R::Error(e)) => Some(WireError::from(e.clone()).code),
        _ => None,
    }
}

/// Register a device and authenticate a connection for it.
fn login(h: &Harness, key: &SigningKey, exporter: &[u8]) -> (ConnAuth, MailboxId) {
    let mut conn = ConnAuth::default();
    let reg = h.control(
        &mut conn,
        exporter,
        req(Request::Register(pb::Register {
            auth_key: key.verifying_key().to_bytes().to_vec().into(),
        })),
    );
    let Some(R::Registered(r)) = reg.response else {
        panic!("{reg:?}")
    };
    let mailbox: MailboxId = r.mailbox_id[..].try_into().unwrap();
    authenticate(h, &mut conn, key, exporter, &mailbox).unwrap();
    (conn, mailbox)
}

fn authenticate(
    h: &Harness,
    conn: &mut ConnAuth,
    key: &SigningKey,
    exporter: &[u8],
    mailbox: &MailboxId,
) -> Result<(), ErrorCode> {
    let ch = h.control(
        conn,
        exporter,
        req(Request::Challenge(pb::ChallengeRequest {})),
    );
    let Some(R::Challenge(c)) = ch.response else {
        panic!("{ch:?}")
    };
    let sig = key.sign(&auth_signed_bytes(exporter, &c.nonce, mailbox));
    let resp = h.control(
        conn,
        exporter,
        req(Request::Authenticate(pb::Authenticate {
            mailbox_id: mailbox.to_vec().into(),
            nonce: c.nonce,
            signature: sig.to_bytes().to_vec().into(),
        })),
    );
    error_code(&resp).map_or(Ok(()), Err)
}

fn token(h: &Harness, conn: &mut ConnAuth) -> Vec<u8> {
    let resp = h.control(
        conn,
        &[0; 32],
        req(Request::CreateToken(pb::CreateToken {})),
    );
    let Some(R::TokenCreated(t)) = resp.response else {
        panic!("{resp:?}")
    };
    t.token.to_vec()
}

fn send(mailbox: &MailboxId, token: &[u8], id: u8, payload: &[u8]) -> pb::Send {
    pb::Send {
        request_id: u64::from(id),
        mailbox_id: mailbox.to_vec().into(),
        token: token.to_vec().into(),
        message_id: vec![id; 16].into(),
        payload: payload.to_vec().into(),
        ephemeral: false,
    }
}

#[test]
fn authentication_is_bound_to_the_tls_session_and_nonce() {
    let h = harness(Limits::default());
    let key = SigningKey::from_bytes(&[7; 32]);
    let (_, mailbox) = login(&h, &key, &[1; 32]);

    // A signature made for another TLS session (exporter) is refused.
    let mut conn = ConnAuth::default();
    let ch = h.control(
        &mut conn,
        &[2; 32],
        req(Request::Challenge(pb::ChallengeRequest {})),
    );
    let Some(R::Challenge(c)) = ch.response else {
        panic!()
    };
    let sig = key.sign(&auth_signed_bytes(&[1; 32], &c.nonce, &mailbox));
    let auth = |conn: &mut ConnAuth, nonce: &bytes::Bytes| {
        h.control(
            conn,
            &[2; 32],
            req(Request::Authenticate(pb::Authenticate {
                mailbox_id: mailbox.to_vec().into(),
                nonce: nonce.clone(),
                signature: sig.to_bytes().to_vec().into(),
            })),
        )
    };
    assert_eq!(
        error_code(&auth(&mut conn, &c.nonce)),
        Some(ErrorCode::AuthFailed)
    );
    // The nonce was spent by the failed attempt.
    assert_eq!(
        error_code(&auth(&mut conn, &c.nonce)),
        Some(ErrorCode::AuthFailed)
    );
    assert_eq!(conn.mailbox(), None);

    // Another key cannot log in to this mailbox.
    let other = SigningKey::from_bytes(&[8; 32]);
    let mut conn = ConnAuth::default();
    assert_eq!(
        authenticate(&h, &mut conn, &other, &[1; 32], &mailbox),
        Err(ErrorCode::AuthFailed)
    );

    // Token operations need an authenticated connection.
    let resp = h.control(
        &mut conn,
        &[1; 32],
        req(Request::CreateToken(pb::CreateToken {})),
    );
    assert_eq!(error_code(&resp), Some(ErrorCode::NotAuthenticated));
}

#[test]
fn sends_are_sequenced_deduplicated_and_acked() {
    let h = harness(Limits::default());
    let (mut conn, mailbox) = login(&h, &SigningKey::from_bytes(&[7; 32]), &[1; 32]);
    let t = token(&h, &mut conn);

    let a = h.core.send(&send(&mailbox, &t, 1, b"one")).unwrap();
    let b = h.core.send(&send(&mailbox, &t, 2, b"two")).unwrap();
    let again = h.core.send(&send(&mailbox, &t, 1, b"one")).unwrap();
    assert_eq!(
        a,
        Accepted::Stored {
            mailbox,
            seq: 1,
            duplicate: false
        }
    );
    assert_eq!(
        b,
        Accepted::Stored {
            mailbox,
            seq: 2,
            duplicate: false
        }
    );
    assert_eq!(
        again,
        Accepted::Stored {
            mailbox,
            seq: 1,
            duplicate: true
        }
    );

    let stored = h.store.fetch(&mailbox, 0, 10).unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(stored[0].payload, b"one");

    assert_eq!(h.core.ack(&conn, &[1, 99]).unwrap(), 1);
    let left = h.store.fetch(&mailbox, 0, 10).unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    // The relay de-duplicates against what it holds: a retry of an acked
    // message is stored again under a new seq (the recipient's store drops
    // the repeated message id), and a retry of a held one is not.
    let retry = h.core.send(&send(&mailbox, &t, 1, b"one")).unwrap();
    assert_eq!(
        retry,
        Accepted::Stored {
            mailbox,
            seq: 3,
            duplicate: false
        }
    );
    let held = h.core.send(&send(&mailbox, &t, 2, b"two")).unwrap();
    assert_eq!(
        held,
        Accepted::Stored {
            mailbox,
            seq: 2,
            duplicate: true
        }
    );
    assert_eq!(h.store.fetch(&mailbox, 0, 10).unwrap().len(), 2);
}

#[test]
fn made_up_and_foreign_tokens_are_refused_and_revoked_ones_discarded() {
    let h = harness(Limits::default());
    let (mut conn, mailbox) = login(&h, &SigningKey::from_bytes(&[7; 32]), &[1; 32]);
    let (mut conn2, mailbox2) = login(&h, &SigningKey::from_bytes(&[9; 32]), &[2; 32]);
    let t = token(&h, &mut conn);
    let t2 = token(&h, &mut conn2);

    let code = |s: &pb::Send| h.core.send(s).unwrap_err().code;
    assert_eq!(
        code(&send(&mailbox, &[5; 32], 1, b"x")),
        ErrorCode::TokenInvalid
    );
    assert_eq!(code(&send(&mailbox, &t2, 1, b"x")), ErrorCode::TokenInvalid);
    assert_eq!(
        code(&send(&mailbox, &t[..10], 1, b"x")),
        ErrorCode::TokenInvalid
    );
    h.core.send(&send(&mailbox2, &t2, 1, b"x")).unwrap();

    // Another mailbox's owner cannot revoke this token.
    let resp = h.control(
        &mut conn2,
        &[2; 32],
        req(Request::RevokeToken(pb::RevokeToken {
            token: t.clone().into(),
        })),
    );
    assert_eq!(error_code(&resp), Some(ErrorCode::TokenInvalid));
    h.core.send(&send(&mailbox, &t, 2, b"x")).unwrap();

    let resp = h.control(
        &mut conn,
        &[1; 32],
        req(Request::RevokeToken(pb::RevokeToken {
            token: t.clone().into(),
        })),
    );
    assert_eq!(error_code(&resp), None);
    // A blocked sender is answered as if stored, and nothing is stored;
    // an ephemeral send likewise. Revoked again, still the same.
    assert_eq!(
        h.core.send(&send(&mailbox, &t, 3, b"x")).unwrap(),
        Accepted::Discarded { ephemeral: false }
    );
    let mut eph = send(&mailbox, &t, 4, b"x");
    eph.ephemeral = true;
    assert_eq!(
        h.core.send(&eph).unwrap(),
        Accepted::Discarded { ephemeral: true }
    );
    let ids: Vec<_> = h
        .store
        .fetch(&mailbox, 0, 10)
        .unwrap()
        .iter()
        .map(|e| e.message_id[0])
        .collect();
    assert_eq!(ids, vec![2], "only the send before the revocation");
    // A made-up token is still refused after a revocation.
    assert_eq!(
        code(&send(&mailbox, &[5; 32], 5, b"x")),
        ErrorCode::TokenInvalid
    );
}

#[test]
fn limits_refuse_with_typed_errors_and_keep_what_is_stored() {
    let limits = Limits {
        max_envelope_bytes: 100,
        mailbox_max_envelopes: 2,
        ..Limits::default()
    };
    let h = harness(limits);
    let (mut conn, mailbox) = login(&h, &SigningKey::from_bytes(&[7; 32]), &[1; 32]);
    let t = token(&h, &mut conn);
    let err = h.core.send(&send(&mailbox, &t, 1, &[0; 101])).unwrap_err();
    assert_eq!(err.code, ErrorCode::EnvelopeTooLarge);
    h.core.send(&send(&mailbox, &t, 1, b"a")).unwrap();
    h.core.send(&send(&mailbox, &t, 2, b"b")).unwrap();
    let err = h.core.send(&send(&mailbox, &t, 3, b"c")).unwrap_err();
    assert_eq!(err.code, ErrorCode::QuotaExceeded);
    assert!(err.retry_after_ms > 0);
    assert_eq!(h.store.fetch(&mailbox, 0, 10).unwrap().len(), 2);
    // Acking makes room again.
    h.core.ack(&conn, &[1]).unwrap();
    h.core.send(&send(&mailbox, &t, 3, b"c")).unwrap();

    let bad = pb::Send {
        message_id: vec![1; 3].into(),
        ..send(&mailbox, &t, 4, b"d")
    };
    assert_eq!(h.core.send(&bad).unwrap_err().code, ErrorCode::Malformed);
}

#[test]
fn expired_envelopes_are_swept_and_fresh_ones_kept() {
    let limits = Limits {
        envelope_ttl_secs: 3600,
        ..Limits::default()
    };
    let h = harness(limits);
    let (mut conn, mailbox) = login(&h, &SigningKey::from_bytes(&[7; 32]), &[1; 32]);
    let t = token(&h, &mut conn);
    h.core.send(&send(&mailbox, &t, 1, b"old")).unwrap();
    h.clock.advance(1_800_000);
    h.core.send(&send(&mailbox, &t, 2, b"new")).unwrap();
    assert_eq!(h.core.sweep().unwrap(), Swept { envelopes: 0 });
    h.clock.advance(1_800_001);
    assert_eq!(h.core.sweep().unwrap(), Swept { envelopes: 1 });
    let left = h.store.fetch(&mailbox, 0, 10).unwrap();
    assert_eq!(
        left.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        vec![b"new".to_vec()]
    );
    assert_eq!(h.store.mailbox(&mailbox).unwrap().unwrap().envelopes, 1);
}

#[tokio::test]
async fn durability_resolves_after_writes() {
    let h = harness(Limits::default());
    let (mut conn, mailbox) = login(&h, &SigningKey::from_bytes(&[7; 32]), &[1; 32]);
    let t = token(&h, &mut conn);
    h.core.send(&send(&mailbox, &t, 1, b"a")).unwrap();
    h.core.durable().await.unwrap();
}

#[test]
fn only_successful_writes_wait_for_durability() {
    let h = harness(Limits::default());
    let key = SigningKey::from_bytes(&[5; 32]);
    let exporter = [2u8; 32];
    let mut conn = ConnAuth::default();
    let register = |conn: &mut ConnAuth| {
        h.core.control(
            conn,
            &exporter,
            req(Request::Register(pb::Register {
                auth_key: key.verifying_key().to_bytes().to_vec().into(),
            })),
        )
    };
    let reg = register(&mut conn);
    assert!(reg.needs_durability, "{reg:?}");
    let ch = h.core.control(
        &mut conn,
        &exporter,
        req(Request::Challenge(pb::ChallengeRequest {})),
    );
    assert!(!ch.needs_durability);
    // A refused write waits for nothing.
    let mint = h.core.control(
        &mut conn,
        &exporter,
        req(Request::CreateToken(pb::CreateToken {})),
    );
    assert_eq!(
        error_code(&mint.response),
        Some(ErrorCode::NotAuthenticated)
    );
    assert!(!mint.needs_durability);
    let empty = h
        .core
        .control(&mut conn, &exporter, pb::ControlRequest { request: None });
    assert!(!empty.needs_durability);

    let Some(R::Registered(r)) = reg.response.response else {
        panic!()
    };
    let mailbox: MailboxId = r.mailbox_id[..].try_into().unwrap();
    authenticate(&h, &mut conn, &key, &exporter, &mailbox).unwrap();
    let mint = h.core.control(
        &mut conn,
        &exporter,
        req(Request::CreateToken(pb::CreateToken {})),
    );
    assert!(mint.needs_durability);
}

#[test]
fn ids_come_from_the_injected_entropy() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let ids: Vec<MailboxId> = (0..2)
        .map(|_| login(&harness(Limits::default()), &key, &[1; 32]).1)
        .collect();
    assert_eq!(ids[0], ids[1]);
}

#[test]
fn fetch_returns_envelopes_as_pushed() {
    let h = harness(Limits::default());
    let (mut conn, mailbox) = login(&h, &SigningKey::from_bytes(&[7; 32]), &[1; 32]);
    let t = token(&h, &mut conn);
    for i in 1..=3 {
        h.core.send(&send(&mailbox, &t, i, b"x")).unwrap();
    }
    let got = h.core.fetch(&mailbox, 1, 10).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(got
        .iter()
        .all(|e| !e.ephemeral && e.payload[..] == b"x"[..]));
    assert_eq!(h.core.fetch(&mailbox, 0, 1).unwrap().len(), 1);
}

#[test]
fn an_unknown_mailbox_is_refused_like_a_wrong_key_after_the_same_check() {
    // The stand-in key is a real key of full order: verify_strict does the
    // whole signature check against it rather than refusing early.
    let stand_in =
        ed25519_dalek::VerifyingKey::from_bytes(&crate::core::STAND_IN_AUTH_KEY).unwrap();
    assert!(!stand_in.is_weak());

    let h = harness(Limits::default());
    let key = SigningKey::from_bytes(&[7; 32]);
    let (_, mailbox) = login(&h, &key, &[1; 32]);
    let wrong_key = authenticate(
        &h,
        &mut ConnAuth::default(),
        &SigningKey::from_bytes(&[8; 32]),
        &[1; 32],
        &mailbox,
    );
    let unknown = authenticate(&h, &mut ConnAuth::default(), &key, &[1; 32], &[9; 16]);
    assert_eq!(wrong_key, Err(ErrorCode::AuthFailed));
    assert_eq!(unknown, wrong_key);
}

#[test]
fn any_connection_learns_the_address_it_comes_from_and_nothing_is_written() {
    let h = harness(Limits::default());
    let from: std::net::SocketAddr = "[::ffff:192.0.2.7]:40123".parse().unwrap();
    let mut anonymous = ConnAuth::observed(from);
    let answer = h.core.control(
        &mut anonymous,
        &[1; 32],
        req(Request::ObserveAddress(pb::ObserveAddress {})),
    );
    assert!(!answer.needs_durability);
    match answer.response.response {
        Some(R::ObservedAddress(a)) => {
            assert_eq!((a.ip.as_str(), a.port), ("192.0.2.7", 40123));
        }
        other => panic!("{other:?}"),
    }
    // An authenticated connection is answered the same way.
    let key = SigningKey::from_bytes(&[7; 32]);
    let (mut conn, _) = login(&h, &key, &[1; 32]);
    conn.observed = Some("198.51.100.1:9".parse().unwrap());
    let resp = h.control(
        &mut conn,
        &[1; 32],
        req(Request::ObserveAddress(pb::ObserveAddress {})),
    );
    assert!(matches!(resp.response, Some(R::ObservedAddress(a)) if a.port == 9));
    // A connection whose address is not known is told so.
    let resp = h.control(
        &mut ConnAuth::default(),
        &[1; 32],
        req(Request::ObserveAddress(pb::ObserveAddress {})),
    );
    assert_eq!(error_code(&resp), Some(ErrorCode::Unsupported));
}

/// A batch of sends is answered, and stores, exactly as the same sends one
/// by one: every kind of refusal, ephemeral and revoked sends, duplicates
/// and two mailboxes, in order.
#[test]
fn a_batch_of_sends_is_answered_as_the_sends_one_by_one() {
    let run = |batched: bool| {
        let h = harness(Limits {
            max_envelope_bytes: 100,
            ..Limits::default()
        });
        let (mut ca, a) = login(&h, &SigningKey::from_bytes(&[1; 32]), &[1; 32]);
        let (mut cb, b) = login(&h, &SigningKey::from_bytes(&[2; 32]), &[2; 32]);
        let (ta, tb, revoked) = (token(&h, &mut ca), token(&h, &mut cb), token(&h, &mut ca));
        let resp = h.control(
            &mut ca,
            &[1; 32],
            req(Request::RevokeToken(pb::RevokeToken {
                token: revoked.clone().into(),
            })),
        );
        assert_eq!(error_code(&resp), None);
        let mut eph = send(&b, &tb, 6, b"passing");
        eph.ephemeral = true;
        let mut bad_id = send(&a, &ta, 9, b"x");
        bad_id.message_id = vec![1; 3].into();
        let sends = vec![
            send(&a, &ta, 1, b"first"),
            send(&b, &tb, 2, b"to b"),
            send(&a, &ta[..5], 3, b"short token"),
            send(&a, &tb, 4, b"b's token"),
            send(&a, &ta, 5, &[0; 101]),
            eph,
            send(&a, &revoked, 7, b"blocked"),
            send(&a, &ta, 1, b"first again"),
            bad_id,
            send(&a, &ta, 8, b"second"),
        ];
        let answers: Vec<_> = if batched {
            h.core.send_batch(&sends)
        } else {
            sends.iter().map(|s| h.core.send(s)).collect()
        };
        let held = |m: &MailboxId| -> Vec<(u64, Vec<u8>)> {
            h.store
                .fetch(m, 0, 100)
                .unwrap()
                .into_iter()
                .map(|e| (e.seq, e.payload))
                .collect()
        };
        (answers, held(&a), held(&b))
    };
    let (batched, one_by_one) = (run(true), run(false));
    assert_eq!(batched, one_by_one);
    let codes: Vec<_> = batched
        .0
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.code))
        .collect();
    use ErrorCode::*;
    assert_eq!(
        codes,
        [
            None,
            None,
            Some(TokenInvalid),
            Some(TokenInvalid),
            Some(EnvelopeTooLarge),
            None,
            None,
            None,
            Some(Malformed),
            None
        ]
    );
    assert_eq!(
        batched.1,
        [(1, b"first".to_vec()), (2, b"second".to_vec())],
        "a's mailbox: the repeat of message 1 stored nothing"
    );
}
