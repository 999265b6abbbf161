//! A device's long-term keys and the handshakes that start sessions.
//!
//! [`DeviceAccount`] holds a vodozemac Olm `Account` (a Curve25519 identity
//! key for the Olm handshake, an Ed25519 key that signs and authenticates
//! the device to the relay, and unpublished/published one-time keys) plus the
//! X25519 [`SealKey`] that sealed envelopes are addressed to.
//!
//! One-time keys are handed out one at a time, in invites
//! ([`DeviceAccount::new_one_time_key`]). vodozemac keeps at most 100 of
//! them; making more drops the oldest, so a very old unused invite stops
//! working. A one-time key is deleted once a session has been accepted with
//! it, which is what makes a replayed pre-key message fail. Invites never
//! carry a fallback key, because a fallback key is reusable and would let a
//! replayed pre-key message create a second session; the one fallback key
//! ([`DeviceAccount::group_fallback_key`]) goes only into group member
//! cards, where members who are not contacts need a reusable key.
//!
//! Pickles are `StoreKey::encrypt(aad = "tern/1 account pickle",
//! serde_json({ v: 1, account: vodozemac AccountPickle, seal_key }))`.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, SessionConfig, SessionCreationError};
use vodozemac::Curve25519PublicKey;
use zeroize::{Zeroize, Zeroizing};

use crate::seal::{is_canonical, is_low_order};
use crate::session::pickle_json;
use crate::{CryptoError, OlmCiphertext, PairSession, SealKey, StoreKey};

const PICKLE_AAD: &[u8] = b"tern/1 account pickle";
const PICKLE_VERSION: u8 = 1;

/// A device's long-term keys: a vodozemac Olm Account (Curve25519 identity +
/// Ed25519 signing) plus an X25519 [`SealKey`].
///
/// `Debug` shows only public keys.
pub struct DeviceAccount {
    account: Account,
    seal: SealKey,
    /// The fallback key handed out in group member cards, once made.
    published_fallback: Option<[u8; 32]>,
}

#[derive(Serialize, Deserialize)]
struct Pickled {
    v: u8,
    account: AccountPickle,
    seal_key: [u8; 32],
    /// Absent in pickles made before groups.
    #[serde(default)]
    fallback: Option<[u8; 32]>,
}

impl DeviceAccount {
    /// Fresh random keys.
    pub fn new() -> Self {
        Self {
            account: Account::new(),
            seal: SealKey::generate(),
            published_fallback: None,
        }
    }

    /// The Curve25519 identity key other devices start sessions with.
    pub fn identity_key(&self) -> [u8; 32] {
        self.account.curve25519_key().to_bytes()
    }

    /// The Ed25519 public key; also the device's key for relay auth.
    pub fn signing_key(&self) -> [u8; 32] {
        *self.account.ed25519_key().as_bytes()
    }

    /// The X25519 public key senders seal envelopes to.
    pub fn seal_public(&self) -> [u8; 32] {
        self.seal.public()
    }

    /// The key that opens envelopes sealed to [`DeviceAccount::seal_public`].
    pub fn seal_key(&self) -> &SealKey {
        &self.seal
    }

    /// Ed25519-sign `msg` with the device's signing key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.account.sign(msg).to_bytes()
    }

    /// Generate one fresh one-time key, mark it published, return its public
    /// bytes. (For invites.)
    pub fn new_one_time_key(&mut self) -> [u8; 32] {
        let created = self.account.generate_one_time_keys(1).created;
        self.account.mark_keys_as_published();
        // generate_one_time_keys(n) always returns n keys.
        #[allow(clippy::expect_used)]
        let key = created.first().expect("one one-time key was generated");
        key.to_bytes()
    }

    /// This device's fallback key for group member cards, made (and marked
    /// published) the first time it is asked for. Unlike a one-time key it
    /// is reusable: members who are not contacts start sessions with it
    /// (docs/decisions.md, "Group member cards"). Replaying a pre-key
    /// message made with it yields a second session, whose content the
    /// client drops by message id.
    pub fn group_fallback_key(&mut self) -> [u8; 32] {
        if let Some(k) = self.published_fallback {
            return k;
        }
        let _ = self.account.generate_fallback_key();
        let key = self
            .account
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .unwrap_or_default();
        self.account.mark_keys_as_published();
        self.published_fallback = Some(key);
        key
    }

    /// Create an inbound session from a pre-key message (olm type 0). Fails
    /// ([`CryptoError`]) if the one-time key was already used (a replayed
    /// pre-key message) or the message is tampered.
    ///
    /// Returns the session and the decrypted first message. Errors:
    /// [`CryptoError::InvalidMessage`] (not a pre-key message),
    /// [`CryptoError::NoOneTimeKey`] (unknown or used one-time key),
    /// [`CryptoError::Decrypt`] (tampered), [`CryptoError::SessionCreation`]
    /// (sender identity differs from `their_identity_key`, unsupported
    /// version, or unusable keys). On error the one-time key is kept.
    pub fn accept_session(
        &mut self,
        their_identity_key: &[u8; 32],
        prekey_ciphertext: &[u8],
    ) -> Result<(PairSession, Vec<u8>), CryptoError> {
        let message = match (OlmCiphertext {
            olm_type: OlmCiphertext::PRE_KEY,
            body: prekey_ciphertext.to_vec(),
        })
        .to_olm()?
        {
            OlmMessage::PreKey(m) => m,
            OlmMessage::Normal(_) => return Err(CryptoError::InvalidMessage),
        };
        let ratchet_key = message.message().ratchet_key();
        // vodozemac does not check the sender's first ratchet key until we
        // reply, when encrypting would fail; refuse it now instead.
        if is_low_order(ratchet_key.as_bytes()) {
            return Err(CryptoError::SessionCreation);
        }
        let result = self
            .account
            .create_inbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(*their_identity_key),
                &message,
            )
            .map_err(|e| match e {
                SessionCreationError::MissingOneTimeKey(_) => CryptoError::NoOneTimeKey,
                SessionCreationError::Decryption(_) => CryptoError::Decrypt,
                _ => CryptoError::SessionCreation,
            })?;
        Ok((PairSession::new(result.session), result.plaintext))
    }

    /// Create an outbound session to a contact from their identity key and
    /// one-time key. [`CryptoError::InvalidKey`] if either is a low-order
    /// point or not canonically encoded.
    pub fn start_session(
        &self,
        their_identity_key: &[u8; 32],
        their_one_time_key: &[u8; 32],
    ) -> Result<PairSession, CryptoError> {
        // A non-canonical key would make our pre-key messages unacceptable.
        if !is_canonical(their_identity_key) || !is_canonical(their_one_time_key) {
            return Err(CryptoError::InvalidKey {
                what: "contact identity or one-time key",
            });
        }
        self.account
            .create_outbound_session(
                SessionConfig::version_1(),
                Curve25519PublicKey::from_bytes(*their_identity_key),
                Curve25519PublicKey::from_bytes(*their_one_time_key),
            )
            .map(PairSession::new)
            .map_err(|_| CryptoError::InvalidKey {
                what: "contact identity or one-time key",
            })
    }

    /// Serialize everything (account + seal key) encrypted under the
    /// [`StoreKey`]; the format is in the module docs.
    pub fn to_encrypted_pickle(&self, key: &StoreKey) -> Vec<u8> {
        let mut pickled = Pickled {
            v: PICKLE_VERSION,
            account: self.account.pickle(),
            seal_key: self.seal.to_bytes(),
            fallback: self.published_fallback,
        };
        let json = pickle_json(&pickled);
        pickled.seal_key.zeroize();
        key.encrypt(PICKLE_AAD, &json)
    }

    /// Restore from [`DeviceAccount::to_encrypted_pickle`];
    /// [`CryptoError::Pickle`] for a wrong key or damaged data.
    pub fn from_encrypted_pickle(data: &[u8], key: &StoreKey) -> Result<Self, CryptoError> {
        let json = Zeroizing::new(
            key.decrypt(PICKLE_AAD, data)
                .map_err(|_| CryptoError::Pickle)?,
        );
        let mut pickled: Pickled =
            serde_json::from_slice(&json).map_err(|_| CryptoError::Pickle)?;
        let seal = SealKey::from_bytes(pickled.seal_key);
        pickled.seal_key.zeroize();
        if pickled.v != PICKLE_VERSION {
            return Err(CryptoError::Pickle);
        }
        Ok(Self {
            account: Account::from_pickle(pickled.account),
            seal,
            published_fallback: pickled.fallback,
        })
    }
}

impl Default for DeviceAccount {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DeviceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAccount")
            .field("identity_key", &self.account.curve25519_key())
            .field("signing_key", &self.account.ed25519_key())
            .field("seal", &self.seal)
            .finish_non_exhaustive()
    }
}

/// Verify an Ed25519 signature made by [`DeviceAccount::sign`].
///
/// Strict verification (no malleable or small-order encodings).
/// [`CryptoError::InvalidKey`] if `signing_key` is not a valid Ed25519 point,
/// [`CryptoError::BadSignature`] if `sig` is not 64 bytes or does not verify.
pub fn verify_signature(signing_key: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(signing_key).map_err(|_| CryptoError::InvalidKey {
        what: "signing key",
    })?;
    let sig = Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?;
    key.verify_strict(msg, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let account = DeviceAccount::new();
        let sig = account.sign(b"auth challenge");
        assert_eq!(
            verify_signature(&account.signing_key(), b"auth challenge", &sig),
            Ok(())
        );
        assert_eq!(
            verify_signature(&account.signing_key(), b"other challenge", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify_signature(&DeviceAccount::new().signing_key(), b"auth challenge", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify_signature(&account.signing_key(), b"auth challenge", &sig[..63]),
            Err(CryptoError::BadSignature)
        );
        let mut bad = sig;
        bad[10] ^= 1;
        assert_eq!(
            verify_signature(&account.signing_key(), b"auth challenge", &bad),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn verify_refuses_invalid_key() {
        // y = 2 is not the encoding of a curve point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert_eq!(
            verify_signature(&not_a_point, b"m", &[0u8; 64]),
            Err(CryptoError::InvalidKey {
                what: "signing key"
            })
        );
    }

    #[test]
    fn keys_are_distinct_and_stable() {
        let a = DeviceAccount::new();
        let b = DeviceAccount::default();
        assert_ne!(a.identity_key(), b.identity_key());
        assert_ne!(a.signing_key(), b.signing_key());
        assert_ne!(a.seal_public(), b.seal_public());
        assert_eq!(a.seal_key().public(), a.seal_public());
        assert_eq!(a.identity_key(), a.identity_key());
    }

    #[test]
    fn one_time_keys_are_fresh() {
        let mut a = DeviceAccount::new();
        let k1 = a.new_one_time_key();
        let k2 = a.new_one_time_key();
        assert_ne!(k1, k2);
        assert!(!is_low_order(&k1));
    }

    #[test]
    fn start_session_refuses_low_order_keys() {
        let a = DeviceAccount::new();
        let mut b = DeviceAccount::new();
        let otk = b.new_one_time_key();
        assert!(matches!(
            a.start_session(&[0u8; 32], &otk),
            Err(CryptoError::InvalidKey { .. })
        ));
        assert!(matches!(
            a.start_session(&b.identity_key(), &[0u8; 32]),
            Err(CryptoError::InvalidKey { .. })
        ));
    }

    #[test]
    fn start_session_refuses_non_canonical_keys() {
        let a = DeviceAccount::new();
        let mut b = DeviceAccount::new();
        let otk = b.new_one_time_key();
        let mut high_otk = otk;
        high_otk[31] |= 0x80;
        let mut high_id = b.identity_key();
        high_id[31] |= 0x80;
        assert!(matches!(
            a.start_session(&b.identity_key(), &high_otk),
            Err(CryptoError::InvalidKey { .. })
        ));
        assert!(matches!(
            a.start_session(&high_id, &otk),
            Err(CryptoError::InvalidKey { .. })
        ));
        assert!(a.start_session(&b.identity_key(), &otk).is_ok());
    }

    #[test]
    fn pickle_roundtrip_keeps_keys() {
        let store = StoreKey::generate();
        let a = DeviceAccount::new();
        let data = a.to_encrypted_pickle(&store);
        let b = DeviceAccount::from_encrypted_pickle(&data, &store);
        assert!(b.is_ok());
        let Ok(b) = b else { return };
        assert_eq!(a.identity_key(), b.identity_key());
        assert_eq!(a.signing_key(), b.signing_key());
        assert_eq!(a.seal_public(), b.seal_public());
        assert_eq!(a.seal_key().to_bytes(), b.seal_key().to_bytes());
        let sig = b.sign(b"m");
        assert_eq!(verify_signature(&a.signing_key(), b"m", &sig), Ok(()));
    }

    #[test]
    fn pickle_refuses_wrong_key_and_tamper() {
        let store = StoreKey::generate();
        let data = DeviceAccount::new().to_encrypted_pickle(&store);
        assert!(matches!(
            DeviceAccount::from_encrypted_pickle(&data, &StoreKey::generate()),
            Err(CryptoError::Pickle)
        ));
        let mut bad = data.clone();
        bad[20] ^= 1;
        assert!(matches!(
            DeviceAccount::from_encrypted_pickle(&bad, &store),
            Err(CryptoError::Pickle)
        ));
        assert!(matches!(
            DeviceAccount::from_encrypted_pickle(&[], &store),
            Err(CryptoError::Pickle)
        ));
        // Valid StoreKey ciphertext, but not an account pickle.
        let other = store.encrypt(PICKLE_AAD, b"{\"v\":1}");
        assert!(matches!(
            DeviceAccount::from_encrypted_pickle(&other, &store),
            Err(CryptoError::Pickle)
        ));
    }

    #[test]
    fn debug_shows_no_secrets() {
        let a = DeviceAccount::new();
        let dbg = format!("{a:?}");
        let seal_secret: String = a
            .seal_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(dbg.starts_with("DeviceAccount"));
        assert!(!dbg.contains(&seal_secret));
    }

    #[test]
    fn the_group_fallback_key_is_stable_reusable_and_survives_pickling() {
        let mut bob = DeviceAccount::new();
        let fb = bob.group_fallback_key();
        assert_eq!(bob.group_fallback_key(), fb);
        let store = StoreKey::generate();
        let mut bob =
            DeviceAccount::from_encrypted_pickle(&bob.to_encrypted_pickle(&store), &store).unwrap();
        assert_eq!(bob.group_fallback_key(), fb);
        // Two members start sessions with the same fallback key.
        for _ in 0..2 {
            let alice = DeviceAccount::new();
            let mut s = alice.start_session(&bob.identity_key(), &fb).unwrap();
            let m = s.encrypt(b"hi");
            let (_, plain) = bob.accept_session(&alice.identity_key(), &m.body).unwrap();
            assert_eq!(plain, b"hi");
        }
    }
}
