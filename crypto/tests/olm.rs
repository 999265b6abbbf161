//! Olm pairwise sessions between two devices, as the client uses them:
//! invite (one-time key) -> pre-key message -> accept -> conversation, plus
//! every refusal a user would notice (tampering, replays, wrong keys).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tern_crypto::{CryptoError, DeviceAccount, OlmCiphertext, PairSession, StoreKey};

/// Alice starts a session from Bob's invite and sends "hello"; Bob accepts.
fn handshake() -> (DeviceAccount, PairSession, DeviceAccount, PairSession) {
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let mut a = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let first = a.encrypt(b"hello");
    assert_eq!(first.olm_type, 0);
    assert!(first.is_pre_key());
    let (b, plaintext) = bob
        .accept_session(&alice.identity_key(), &first.body)
        .unwrap();
    assert_eq!(plaintext, b"hello");
    assert_eq!(a.session_id(), b.session_id());
    (alice, a, bob, b)
}

#[test]
fn conversation_both_ways() {
    let (_alice, mut a, _bob, mut b) = handshake();
    let reply = b.encrypt(b"hi alice");
    assert_eq!(reply.olm_type, 1);
    assert_eq!(a.decrypt(&reply).unwrap(), b"hi alice");
    for round in 0..50u32 {
        let n = 1 + round % 4; // several messages in a row, then switch
        for i in 0..n {
            let m = format!("a->b {round}.{i}");
            let c = a.encrypt(m.as_bytes());
            assert_eq!(c.olm_type, 1);
            assert_eq!(b.decrypt(&c).unwrap(), m.as_bytes());
        }
        for i in 0..n {
            let m = format!("b->a {round}.{i}");
            let c = b.encrypt(m.as_bytes());
            assert_eq!(a.decrypt(&c).unwrap(), m.as_bytes());
        }
    }
}

#[test]
fn starter_sends_pre_key_messages_until_first_reply() {
    let (alice, mut a, mut bob, mut b) = handshake();
    let second = a.encrypt(b"still there?");
    assert_eq!(second.olm_type, 0);
    // Bob routes it to the existing session rather than accepting again.
    assert!(b.matches_pre_key(&second));
    assert_eq!(b.decrypt(&second).unwrap(), b"still there?");
    // accept_session with it fails: the one-time key is used up.
    assert!(matches!(
        bob.accept_session(&alice.identity_key(), &second.body),
        Err(CryptoError::NoOneTimeKey)
    ));
    let reply = b.encrypt(b"yes");
    assert_eq!(a.decrypt(&reply).unwrap(), b"yes");
    assert_eq!(a.encrypt(b"good").olm_type, 1);
}

#[test]
fn matches_pre_key_is_false_for_other_sessions_and_normal_messages() {
    let (_alice, mut a, _bob, b) = handshake();
    let (_c, mut other, _d, _) = handshake();
    assert!(!b.matches_pre_key(&other.encrypt(b"x")));
    assert!(b.matches_pre_key(&a.encrypt(b"x")));
    let normal = OlmCiphertext {
        olm_type: 1,
        body: vec![1, 2, 3],
    };
    assert!(!b.matches_pre_key(&normal));
}

#[test]
fn out_of_order_delivery() {
    let (_alice, mut a, _bob, mut b) = handshake();
    let reply = b.encrypt(b"ack");
    a.decrypt(&reply).unwrap();

    // Ten messages on one chain, delivered in a scrambled order.
    let msgs: Vec<_> = (0..10)
        .map(|i| (i, a.encrypt(format!("m{i}").as_bytes())))
        .collect();
    for idx in [3usize, 0, 9, 1, 2, 8, 4, 7, 6, 5] {
        let (i, c) = &msgs[idx];
        assert_eq!(b.decrypt(c).unwrap(), format!("m{i}").as_bytes());
    }

    // Across ratchet steps: an old-chain message arrives after newer ones.
    let late = b.encrypt(b"late");
    let on_time = b.encrypt(b"on time");
    assert_eq!(a.decrypt(&on_time).unwrap(), b"on time");
    let next = a.encrypt(b"new chain");
    assert_eq!(b.decrypt(&next).unwrap(), b"new chain");
    let newer = b.encrypt(b"newer chain");
    assert_eq!(a.decrypt(&newer).unwrap(), b"newer chain");
    assert_eq!(a.decrypt(&late).unwrap(), b"late");
}

#[test]
fn tampered_message_refused_and_session_survives() {
    let (_alice, mut a, _bob, mut b) = handshake();
    let reply = b.encrypt(b"ack");
    a.decrypt(&reply).unwrap();

    let c = a.encrypt(b"transfer 10 coins");
    for i in 0..c.body.len() {
        for bit in 0..8 {
            let mut bad = c.clone();
            bad.body[i] ^= 1 << bit;
            let r = b.decrypt(&bad);
            assert!(
                matches!(r, Err(CryptoError::Decrypt | CryptoError::InvalidMessage)),
                "byte {i} bit {bit}: {r:?}"
            );
        }
    }
    // A non-canonical encoding of the same message (an unknown protobuf
    // field appended before the MAC) is refused too.
    let mut padded = c.clone();
    let mac_at = padded.body.len() - 8;
    padded.body.splice(mac_at..mac_at, [0x30, 0x00]);
    assert_eq!(b.decrypt(&padded), Err(CryptoError::InvalidMessage));
    let mut truncated = c.clone();
    truncated.body.truncate(c.body.len() - 1);
    assert!(b.decrypt(&truncated).is_err());
    let mut wrong_type = c.clone();
    wrong_type.olm_type = 7;
    assert_eq!(b.decrypt(&wrong_type), Err(CryptoError::InvalidMessage));

    // The genuine message still decrypts, and the session keeps working.
    assert_eq!(b.decrypt(&c).unwrap(), b"transfer 10 coins");
    let back = b.encrypt(b"ok");
    assert_eq!(a.decrypt(&back).unwrap(), b"ok");
}

#[test]
fn replayed_normal_message_refused() {
    let (_alice, mut a, _bob, mut b) = handshake();
    let reply = b.encrypt(b"ack");
    a.decrypt(&reply).unwrap();
    assert_eq!(a.decrypt(&reply), Err(CryptoError::Decrypt));

    let c = a.encrypt(b"once");
    assert_eq!(b.decrypt(&c).unwrap(), b"once");
    assert_eq!(b.decrypt(&c), Err(CryptoError::Decrypt));

    // Also for a skipped-then-delivered message.
    let c1 = a.encrypt(b"one");
    let c2 = a.encrypt(b"two");
    assert_eq!(b.decrypt(&c2).unwrap(), b"two");
    assert_eq!(b.decrypt(&c1).unwrap(), b"one");
    assert_eq!(b.decrypt(&c1), Err(CryptoError::Decrypt));
    assert_eq!(b.decrypt(&c2), Err(CryptoError::Decrypt));

    // Still usable afterwards.
    let c3 = a.encrypt(b"three");
    assert_eq!(b.decrypt(&c3).unwrap(), b"three");
}

#[test]
fn replayed_pre_key_message_refused() {
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let mut a = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let first = a.encrypt(b"hello");
    let (mut b, _) = bob
        .accept_session(&alice.identity_key(), &first.body)
        .unwrap();
    // A second accept with the same message (a replay) fails...
    assert!(matches!(
        bob.accept_session(&alice.identity_key(), &first.body),
        Err(CryptoError::NoOneTimeKey)
    ));
    // ...and so does feeding it to the session it created.
    assert_eq!(b.decrypt(&first), Err(CryptoError::Decrypt));
}

#[test]
fn tampered_pre_key_message_refused_and_key_kept() {
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let mut a = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let first = a.encrypt(b"hello");
    let n = first.body.len();
    // Any bit flipped anywhere (keys, ratchet key, ciphertext, MAC) is refused.
    for i in 0..n {
        for bit in 0..8 {
            let mut bad = first.body.clone();
            bad[i] ^= 1 << bit;
            assert!(
                bob.accept_session(&alice.identity_key(), &bad).is_err(),
                "byte {i} bit {bit}"
            );
        }
    }
    assert!(matches!(
        bob.accept_session(&alice.identity_key(), &first.body[..n / 2]),
        Err(CryptoError::InvalidMessage | CryptoError::Decrypt)
    ));
    assert!(matches!(
        bob.accept_session(&alice.identity_key(), b"garbage"),
        Err(CryptoError::InvalidMessage)
    ));
    // The forgeries did not use up the one-time key.
    let (_, plaintext) = bob
        .accept_session(&alice.identity_key(), &first.body)
        .unwrap();
    assert_eq!(plaintext, b"hello");
}

#[test]
fn pre_key_message_from_unexpected_identity_refused() {
    let alice = DeviceAccount::new();
    let mallory = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let first = alice
        .start_session(&bob.identity_key(), &otk)
        .unwrap()
        .encrypt(b"hello");
    assert!(matches!(
        bob.accept_session(&mallory.identity_key(), &first.body),
        Err(CryptoError::SessionCreation)
    ));
}

#[test]
fn unknown_one_time_key_refused() {
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let mut carol = DeviceAccount::new();
    let carol_otk = carol.new_one_time_key();
    // Alice uses Carol's one-time key with Bob's identity: Bob has no such key.
    let first = alice
        .start_session(&bob.identity_key(), &carol_otk)
        .unwrap()
        .encrypt(b"hello");
    assert!(matches!(
        bob.accept_session(&alice.identity_key(), &first.body),
        Err(CryptoError::NoOneTimeKey)
    ));
}

#[test]
fn message_for_another_session_refused() {
    let (_alice, mut a, _bob, _b) = handshake();
    let (_c, _x, _d, mut y) = handshake();
    let c = a.encrypt(b"not for you");
    assert_eq!(y.decrypt(&c), Err(CryptoError::Decrypt));
}

#[test]
fn pickles_keep_the_conversation_going() {
    let store_a = StoreKey::generate();
    let store_b = StoreKey::generate();
    let (alice, mut a, mut bob, b) = handshake();

    // Both sides save and reload everything mid-conversation.
    let b_saved = b.to_encrypted_pickle(&store_b);
    drop(b);
    let mut b = PairSession::from_encrypted_pickle(&b_saved, &store_b).unwrap();
    let reply = b.encrypt(b"reloaded bob");
    assert_eq!(a.decrypt(&reply).unwrap(), b"reloaded bob");

    // Save after encrypting: a session restored from a pickle older than
    // its last encrypt would reuse that message key.
    let in_flight = a.encrypt(b"sent before reload");
    let a_saved = a.to_encrypted_pickle(&store_a);
    let mut a = PairSession::from_encrypted_pickle(&a_saved, &store_a).unwrap();
    assert_eq!(a.session_id(), b.session_id());
    assert_eq!(b.decrypt(&in_flight).unwrap(), b"sent before reload");
    let c = a.encrypt(b"after reload");
    assert_eq!(b.decrypt(&c).unwrap(), b"after reload");
    let c = b.encrypt(b"still fine");
    assert_eq!(a.decrypt(&c).unwrap(), b"still fine");

    // A reloaded account still accepts sessions on its published keys...
    let otk = bob.new_one_time_key();
    let bob_saved = bob.to_encrypted_pickle(&store_b);
    let mut bob = DeviceAccount::from_encrypted_pickle(&bob_saved, &store_b).unwrap();
    let alice_saved = alice.to_encrypted_pickle(&store_a);
    let alice = DeviceAccount::from_encrypted_pickle(&alice_saved, &store_a).unwrap();
    let mut a2 = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let first = a2.encrypt(b"second device session");
    let (mut b2, p) = bob
        .accept_session(&alice.identity_key(), &first.body)
        .unwrap();
    assert_eq!(p, b"second device session");
    assert_eq!(a2.decrypt(&b2.encrypt(b"ok")).unwrap(), b"ok");
    // ...and a reloaded old copy of an account cannot resurrect a used key
    // once the saved state is newer.
    let bob_saved = bob.to_encrypted_pickle(&store_b);
    let mut bob = DeviceAccount::from_encrypted_pickle(&bob_saved, &store_b).unwrap();
    assert!(matches!(
        bob.accept_session(&alice.identity_key(), &first.body),
        Err(CryptoError::NoOneTimeKey)
    ));
}

#[test]
fn pickle_with_wrong_store_key_refused() {
    let (_alice, a, _bob, _b) = handshake();
    let store = StoreKey::generate();
    let saved = a.to_encrypted_pickle(&store);
    assert!(matches!(
        PairSession::from_encrypted_pickle(&saved, &StoreKey::generate()),
        Err(CryptoError::Pickle)
    ));
    let mut bad = saved.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        PairSession::from_encrypted_pickle(&bad, &store),
        Err(CryptoError::Pickle)
    ));
    // An account pickle is not a session pickle, even under the same key.
    let account_pickle = DeviceAccount::new().to_encrypted_pickle(&store);
    assert!(matches!(
        PairSession::from_encrypted_pickle(&account_pickle, &store),
        Err(CryptoError::Pickle)
    ));
    assert!(matches!(
        DeviceAccount::from_encrypted_pickle(&saved, &store),
        Err(CryptoError::Pickle)
    ));
}

#[test]
fn debug_output_names_only_the_session() {
    let (_alice, a, _bob, _b) = handshake();
    let dbg = format!("{a:?}");
    assert!(dbg.contains(&a.session_id()));
    assert!(dbg.starts_with("PairSession"));
}
