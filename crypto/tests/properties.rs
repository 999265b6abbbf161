//! Property tests: the parsers of peer input never panic, and round trips
//! hold for arbitrary plaintexts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tern_crypto::{open, seal, DeviceAccount, OlmCiphertext, SealKey, StoreKey, SEAL_OVERHEAD};

proptest! {
    #[test]
    fn open_never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = SealKey::from_bytes([3u8; 32]);
        prop_assert!(open(&key, &data).is_err());
    }

    #[test]
    fn open_never_panics_on_well_shaped_garbage(
        eph in any::<[u8; 32]>(),
        body in proptest::collection::vec(any::<u8>(), 16..256),
    ) {
        // Right version and length, so the DH and AEAD paths run.
        let key = SealKey::from_bytes([3u8; 32]);
        let mut data = vec![0x01];
        data.extend_from_slice(&eph);
        data.extend_from_slice(&body);
        prop_assert!(open(&key, &data).is_err());
    }

    #[test]
    fn seal_open_roundtrip(
        secret in any::<[u8; 32]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let key = SealKey::from_bytes(secret);
        let sealed = seal(&key.public(), &plaintext);
        prop_assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
        prop_assert_eq!(open(&key, &sealed), Ok(plaintext));
    }

    #[test]
    fn sealed_payload_does_not_open_for_another_key(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (ka, kb) = (SealKey::from_bytes(a), SealKey::from_bytes(b));
        prop_assume!(ka.public() != kb.public());
        prop_assert!(open(&kb, &seal(&ka.public(), &plaintext)).is_err());
    }

    #[test]
    fn store_key_roundtrip_and_garbage(
        key in any::<[u8; 32]>(),
        aad in proptest::collection::vec(any::<u8>(), 0..64),
        plaintext in proptest::collection::vec(any::<u8>(), 0..1024),
        garbage in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let key = StoreKey::from_bytes(key);
        prop_assert_eq!(key.decrypt(&aad, &key.encrypt(&aad, &plaintext)), Ok(plaintext));
        prop_assert!(key.decrypt(&aad, &garbage).is_err());
    }

    #[test]
    fn pickle_loaders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let key = StoreKey::from_bytes([1u8; 32]);
        prop_assert!(DeviceAccount::from_encrypted_pickle(&data, &key).is_err());
        prop_assert!(tern_crypto::PairSession::from_encrypted_pickle(&data, &key).is_err());
    }
}

/// Arbitrary Olm input to an established session and to an account never
/// panics, is refused, and leaves both usable.
#[test]
fn olm_parsers_never_panic_and_state_survives() {
    let alice = DeviceAccount::new();
    let mut bob = DeviceAccount::new();
    let otk = bob.new_one_time_key();
    let mut a = alice.start_session(&bob.identity_key(), &otk).unwrap();
    let first = a.encrypt(b"hi");
    let (mut b, _) = bob
        .accept_session(&alice.identity_key(), &first.body)
        .unwrap();
    a.decrypt(&b.encrypt(b"ack")).unwrap();
    let genuine = a.encrypt(b"real");

    let (b_cell, bob_cell) = (RefCell::new(b), RefCell::new(bob));
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    let strategy = (
        0u32..4,
        proptest::collection::vec(any::<u8>(), 0..256),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(olm_type, body, splice)| {
            // Half the time, start from a genuine message and overwrite a
            // part of it, to get past the decoder.
            let body = if splice && !body.is_empty() {
                let mut g = genuine.body.clone();
                let at = usize::from(body[0]) % g.len();
                let end = (at + body.len() - 1).min(g.len());
                g.splice(at..end, body[1..].iter().copied());
                g
            } else {
                body
            };
            let msg = OlmCiphertext { olm_type, body };
            if msg != genuine {
                prop_assert!(b_cell.borrow_mut().decrypt(&msg).is_err());
            }
            prop_assert!(bob_cell
                .borrow_mut()
                .accept_session(&alice.identity_key(), &msg.body)
                .is_err());
            Ok(())
        })
        .unwrap();

    let mut b = b_cell.into_inner();
    assert_eq!(b.decrypt(&genuine).unwrap(), b"real");
    assert_eq!(a.decrypt(&b.encrypt(b"still here")).unwrap(), b"still here");
}
