//! Olm messages from a contact, against a fixed conversation (see
//! `tern_fuzz::OlmFixture`): every input is tried as a message to Alice's
//! session, to Bob's session, and as a pre-key message to Bob's account.
//! Whatever decrypts, the session must still encrypt afterwards. Decrypting
//! goes through the client's own layers (`tern_client::layers`): its routing
//! of a message to a session, decryption and reading of the content.
//!
//! Input: `[olm type (mod 3), message body...]`. Type 2 is never valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_client::layers::{self, OpenError};
use tern_crypto::{DeviceAccount, OlmCiphertext, PairSession, StoreKey};
use tern_fuzz::FIXTURE_STORE_KEY;

/// A fixed Olm conversation, committed under `fuzz/fixtures/olm/` (made by
/// `examples/gen_corpus.rs`), so that the real Olm messages in
/// `corpus/olm_decrypt` match these sessions on every run and machine.
///
/// Bob's account still holds the one-time key of Alice's first pre-key
/// message; Bob's session has accepted that message; Alice's session has
/// not yet seen Bob's replies.
struct OlmFixture {
    /// Alice's Curve25519 identity key.
    alice_identity: [u8; 32],
    /// Bob's account, before accepting Alice's first message.
    bob_account: DeviceAccount,
    /// Bob's session with Alice.
    bob_session: PairSession,
    /// Alice's session with Bob.
    alice_session: PairSession,
}

impl OlmFixture {
    /// Restore a fresh copy of the fixture (each fuzz input gets its own, so
    /// a seed that decrypts once decrypts again on the next run).
    fn load() -> Self {
        let key = StoreKey::from_bytes(FIXTURE_STORE_KEY);
        let alice_identity: [u8; 32] = include_bytes!("../fixtures/olm/alice_identity.bin")
            .as_slice()
            .try_into()
            .unwrap_or_else(|_| panic!("alice_identity.bin is not 32 bytes"));
        let account = |bytes: &[u8]| {
            DeviceAccount::from_encrypted_pickle(bytes, &key)
                .unwrap_or_else(|e| panic!("fixture account: {e}; rerun examples/gen_corpus.rs"))
        };
        let session = |bytes: &[u8]| {
            PairSession::from_encrypted_pickle(bytes, &key)
                .unwrap_or_else(|e| panic!("fixture session: {e}; rerun examples/gen_corpus.rs"))
        };
        Self {
            alice_identity,
            bob_account: account(include_bytes!("../fixtures/olm/bob_account.pickle")),
            bob_session: session(include_bytes!("../fixtures/olm/bob_session.pickle")),
            alice_session: session(include_bytes!("../fixtures/olm/alice_session.pickle")),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [olm_type, body @ ..] = data else {
        return;
    };
    let ciphertext = OlmCiphertext {
        olm_type: u32::from(*olm_type % 3),
        body: body.to_vec(),
    };
    let OlmFixture {
        alice_identity,
        mut bob_account,
        mut bob_session,
        mut alice_session,
    } = OlmFixture::load();

    // The client's routing: Bob's session, a new one, or nobody's.
    let _ = layers::choose_session(Some(&bob_session), &ciphertext);
    for session in [&mut alice_session, &mut bob_session] {
        let _ = session.matches_pre_key(&ciphertext);
        // Anything but an Olm refusal means it decrypted (the content may
        // still be unreadable).
        if !matches!(
            layers::decrypt_content(session, &ciphertext),
            Err(OpenError::Olm(_))
        ) {
            // A replay must be refused, and the session must still work.
            assert!(session.decrypt(&ciphertext).is_err(), "replay decrypted");
            let _ = session.encrypt(b"reply");
        }
    }

    let pre_key = OlmCiphertext {
        olm_type: OlmCiphertext::PRE_KEY,
        body: body.to_vec(),
    };
    match layers::accept_content(&mut bob_account, &alice_identity, &pre_key) {
        Err(OpenError::Olm(_)) => {}
        accepted => {
            if let Ok((mut session, _opened)) = accepted {
                assert!(session.matches_pre_key(&pre_key));
                let _ = session.encrypt(b"hello back");
            }
            // The one-time key is used up: the same pre-key message again fails.
            assert!(
                bob_account.accept_session(&alice_identity, body).is_err(),
                "replayed pre-key message accepted"
            );
        }
    }
});
