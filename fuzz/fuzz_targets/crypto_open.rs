//! The decode paths of tern-crypto's facade: opening sealed payloads,
//! decrypting data at rest, restoring account and session pickles, verifying
//! signatures. Keys are fixed so runs are reproducible.
//!
//! Input: `[mode, rest...]`, mode (mod 8):
//! 0 `open(seal key, rest)`, and the client's `layers::unseal` (open, then
//!   the `Sealed` wrapper), which must agree with it on whether the seal opens;
//! 1 `StoreKey::decrypt(aad, data)` with `rest = [aad_len, aad, data]`;
//! 2 / 3 `DeviceAccount` / `PairSession::from_encrypted_pickle(rest)`;
//! 4 / 5 the same, with `rest` (pickle JSON) encrypted under the store key
//!   first, so the JSON and vodozemac's unpickling are reached;
//! 6 `verify_signature(key, msg, sig)` with `rest = [key 32, sig_len, sig, msg]`;
//! 7 `seal` then `open` of `rest` must give `rest` back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_client::layers::{self, OpenError};
use tern_crypto::{open, seal, verify_signature, DeviceAccount, PairSession, SealKey, StoreKey};
use tern_fuzz::{ACCOUNT_PICKLE_AAD, FIXTURE_SEAL_KEY, FIXTURE_STORE_KEY, SESSION_PICKLE_AAD};

/// Use a restored account the way a client does right after loading it.
fn exercise_account(account: DeviceAccount, store: &StoreKey) {
    let _ = (
        account.identity_key(),
        account.seal_public(),
        format!("{account:?}"),
    );
    let sig = account.sign(b"tern fuzz");
    // A pickle may hold any bytes as its signing key; a signature it makes
    // verifies or is refused, never panics.
    let _ = verify_signature(&account.signing_key(), b"tern fuzz", &sig);
    let again = DeviceAccount::from_encrypted_pickle(&account.to_encrypted_pickle(store), store)
        .unwrap_or_else(|e| panic!("re-pickled account does not restore: {e}"));
    assert_eq!(again.identity_key(), account.identity_key());
    assert_eq!(again.signing_key(), account.signing_key());
    assert_eq!(again.seal_public(), account.seal_public());
}

/// Use a restored session the way a client does right after loading it.
fn exercise_session(mut session: PairSession, store: &StoreKey) {
    let id = session.session_id();
    let _ = format!("{session:?}");
    let again = PairSession::from_encrypted_pickle(&session.to_encrypted_pickle(store), store)
        .unwrap_or_else(|e| panic!("re-pickled session does not restore: {e}"));
    assert_eq!(again.session_id(), id);
    let ciphertext = session.encrypt(b"tern fuzz");
    let _ = session.matches_pre_key(&ciphertext);
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    let store = StoreKey::from_bytes(FIXTURE_STORE_KEY);
    match mode % 8 {
        0 => {
            let key = SealKey::from_bytes(FIXTURE_SEAL_KEY);
            let opened = open(&key, rest).is_ok();
            match layers::unseal(&key, rest) {
                Err(OpenError::Seal) => assert!(!opened, "unseal refused a seal that opens"),
                _ => assert!(opened, "unseal got past a seal that does not open"),
            }
        }
        1 => {
            let [aad_len, rest @ ..] = rest else { return };
            let (aad, ciphertext) = rest.split_at(usize::from(*aad_len).min(rest.len()));
            let _ = store.decrypt(aad, ciphertext);
        }
        2 => {
            if let Ok(account) = DeviceAccount::from_encrypted_pickle(rest, &store) {
                exercise_account(account, &store);
            }
        }
        3 => {
            if let Ok(session) = PairSession::from_encrypted_pickle(rest, &store) {
                exercise_session(session, &store);
            }
        }
        4 => {
            let pickle = store.encrypt(ACCOUNT_PICKLE_AAD, rest);
            if let Ok(account) = DeviceAccount::from_encrypted_pickle(&pickle, &store) {
                exercise_account(account, &store);
            }
        }
        5 => {
            let pickle = store.encrypt(SESSION_PICKLE_AAD, rest);
            if let Ok(session) = PairSession::from_encrypted_pickle(&pickle, &store) {
                exercise_session(session, &store);
            }
        }
        6 => {
            let Some((key, rest)) = rest.split_first_chunk::<32>() else {
                return;
            };
            let [sig_len, rest @ ..] = rest else { return };
            let (sig, msg) = rest.split_at(usize::from(*sig_len).min(rest.len()));
            let _ = verify_signature(key, msg, sig);
        }
        _ => {
            let key = SealKey::from_bytes(FIXTURE_SEAL_KEY);
            let sealed = seal(&key.public(), rest);
            assert_eq!(
                open(&key, &sealed).as_deref(),
                Ok(rest),
                "seal/open round trip"
            );
        }
    }
});
