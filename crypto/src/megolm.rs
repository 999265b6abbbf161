//! Group encryption: a vodozemac Megolm session per sender and group
//! ([`GroupSender`]), the inbound copy every other member holds
//! ([`GroupReceiver`]), and the envelope AEAD ([`envelope_seal`] /
//! [`envelope_open`]) that wraps a group message so the relay sees only
//! opaque bytes.
//!
//! A sender encrypts each group message once with its [`GroupSender`]; the
//! session key ([`GroupSender::session_key`], exported at the ratchet's
//! current index) travels to each member over pairwise Olm, so a member
//! added later cannot decrypt what came before. A sender whose membership
//! lost someone makes a new [`GroupSender`] (with a new envelope key), so
//! the removed member cannot read what follows. Megolm messages are signed
//! with the session's Ed25519 key: a receiver holding the key from the
//! sender (over Olm) knows who wrote them.
//!
//! The envelope AEAD is XChaCha20-Poly1305 with a random 24-byte nonce:
//! `nonce || ciphertext || tag`, no associated data. Pickles are
//! `StoreKey::encrypt(aad, serde_json(vodozemac pickle))`. No I/O.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::fmt;
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig, SessionKey,
};
use zeroize::Zeroizing;

use crate::session::pickle_json;
use crate::{CryptoError, StoreKey};

const SENDER_AAD: &[u8] = b"tern/1 megolm outbound pickle";
const RECEIVER_AAD: &[u8] = b"tern/1 megolm inbound pickle";

/// Bytes the envelope AEAD adds: a 24-byte nonce and a 16-byte tag.
pub const ENVELOPE_OVERHEAD: usize = 24 + 16;

/// One sender's outbound Megolm session for one group.
pub struct GroupSender {
    inner: GroupSession,
}

impl GroupSender {
    /// A fresh session at index 0.
    pub fn new() -> Self {
        Self {
            inner: GroupSession::new(SessionConfig::version_1()),
        }
    }

    /// The session id (base64), the same in every member's [`GroupReceiver`].
    pub fn session_id(&self) -> String {
        self.inner.session_id()
    }

    /// The ratchet's current index: messages encrypted so far.
    pub fn index(&self) -> u32 {
        self.inner.message_index()
    }

    /// The session key at the current index, for members (over Olm): it
    /// decrypts this message and later ones, never earlier ones.
    pub fn session_key(&self) -> Vec<u8> {
        self.inner.session_key().to_bytes()
    }

    /// Encrypt one message (advances the ratchet; save the session after).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.inner.encrypt(plaintext).to_bytes()
    }

    /// Serialize encrypted under `key`.
    pub fn to_encrypted_pickle(&self, key: &StoreKey) -> Vec<u8> {
        key.encrypt(SENDER_AAD, &pickle_json(&self.inner.pickle()))
    }

    /// Restore from [`GroupSender::to_encrypted_pickle`].
    pub fn from_encrypted_pickle(data: &[u8], key: &StoreKey) -> Result<Self, CryptoError> {
        let json = Zeroizing::new(
            key.decrypt(SENDER_AAD, data)
                .map_err(|_| CryptoError::Pickle)?,
        );
        let p: GroupSessionPickle =
            serde_json::from_slice(&json).map_err(|_| CryptoError::Pickle)?;
        Ok(Self {
            inner: GroupSession::from_pickle(p),
        })
    }
}

impl Default for GroupSender {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for GroupSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupSender")
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

/// A member's inbound copy of another member's [`GroupSender`].
pub struct GroupReceiver {
    inner: InboundGroupSession,
}

impl GroupReceiver {
    /// From a session key received over Olm; [`CryptoError::InvalidKey`]
    /// if it is not one.
    pub fn new(session_key: &[u8]) -> Result<Self, CryptoError> {
        let key = SessionKey::from_bytes(session_key).map_err(|_| CryptoError::InvalidKey {
            what: "megolm session key",
        })?;
        Ok(Self {
            inner: InboundGroupSession::new(&key, SessionConfig::version_1()),
        })
    }

    /// The session id (base64).
    pub fn session_id(&self) -> String {
        self.inner.session_id()
    }

    /// The first message index this copy can decrypt.
    pub fn first_index(&self) -> u32 {
        self.inner.first_known_index()
    }

    /// Decrypt a Megolm message: the plaintext and its index. Refuses a
    /// message of another session, a forged signature or MAC, or one from
    /// before the index the key was shared at ([`CryptoError::Decrypt`]).
    /// A message can be decrypted again (callers de-duplicate by id).
    pub fn decrypt(&mut self, message: &[u8]) -> Result<(Vec<u8>, u32), CryptoError> {
        let m = MegolmMessage::from_bytes(message).map_err(|_| CryptoError::InvalidMessage)?;
        let d = self.inner.decrypt(&m).map_err(|_| CryptoError::Decrypt)?;
        Ok((d.plaintext, d.message_index))
    }

    /// Serialize encrypted under `key`.
    pub fn to_encrypted_pickle(&self, key: &StoreKey) -> Vec<u8> {
        key.encrypt(RECEIVER_AAD, &pickle_json(&self.inner.pickle()))
    }

    /// Restore from [`GroupReceiver::to_encrypted_pickle`].
    pub fn from_encrypted_pickle(data: &[u8], key: &StoreKey) -> Result<Self, CryptoError> {
        let json = Zeroizing::new(
            key.decrypt(RECEIVER_AAD, data)
                .map_err(|_| CryptoError::Pickle)?,
        );
        let p: InboundGroupSessionPickle =
            serde_json::from_slice(&json).map_err(|_| CryptoError::Pickle)?;
        Ok(Self {
            inner: InboundGroupSession::from_pickle(p),
        })
    }
}

impl fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupReceiver")
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

/// A fresh random 32-byte envelope key.
pub fn new_envelope_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

/// Encrypt `plaintext` under a group envelope key: `nonce || ct || tag`,
/// [`ENVELOPE_OVERHEAD`] bytes longer than the plaintext.
pub fn envelope_seal(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new(key.into());
    // Encryption with a valid key and nonce cannot fail for in-memory data.
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), plaintext)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + plaintext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Open an [`envelope_seal`] output; [`CryptoError::SealOpen`] if it was
/// not made under `key` or was changed.
pub fn envelope_open(key: &[u8; 32], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() < ENVELOPE_OVERHEAD {
        return Err(CryptoError::SealOpen);
    }
    let (nonce, ct) = data.split_at(24);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), ct)
        .map_err(|_| CryptoError::SealOpen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_decrypt_and_a_late_member_cannot_read_the_past() {
        let mut s = GroupSender::new();
        let mut early = GroupReceiver::new(&s.session_key()).unwrap();
        let m0 = s.encrypt(b"zero");
        let late_key = s.session_key();
        let m1 = s.encrypt(b"one");
        let mut late = GroupReceiver::new(&late_key).unwrap();
        assert_eq!(early.decrypt(&m0).unwrap(), (b"zero".to_vec(), 0));
        assert_eq!(early.decrypt(&m1).unwrap(), (b"one".to_vec(), 1));
        assert_eq!(late.first_index(), 1);
        assert!(late.decrypt(&m0).is_err());
        assert_eq!(late.decrypt(&m1).unwrap().0, b"one");
        assert_eq!(early.session_id(), s.session_id());
    }

    #[test]
    fn a_new_session_is_unreadable_with_the_old_key_and_tampering_fails() {
        let mut old = GroupSender::new();
        let mut removed = GroupReceiver::new(&old.session_key()).unwrap();
        let _ = old.encrypt(b"before");
        let mut fresh = GroupSender::new();
        let after = fresh.encrypt(b"after removal");
        assert_eq!(removed.decrypt(&after), Err(CryptoError::Decrypt));
        let mut good = GroupReceiver::new(&fresh.session_key()).unwrap();
        let mut bad = fresh.encrypt(b"x");
        let n = bad.len() / 2;
        bad[n] ^= 1;
        assert!(good.decrypt(&bad).is_err());
        assert!(good.decrypt(b"junk").is_err());
        assert!(GroupReceiver::new(b"short").is_err());
    }

    #[test]
    fn sessions_survive_pickling() {
        let key = StoreKey::generate();
        let mut s = GroupSender::new();
        let r = GroupReceiver::new(&s.session_key()).unwrap();
        let _ = s.encrypt(b"a");
        let mut s2 =
            GroupSender::from_encrypted_pickle(&s.to_encrypted_pickle(&key), &key).unwrap();
        assert_eq!(s2.index(), 1);
        let mut r2 =
            GroupReceiver::from_encrypted_pickle(&r.to_encrypted_pickle(&key), &key).unwrap();
        assert_eq!(r2.decrypt(&s2.encrypt(b"b")).unwrap(), (b"b".to_vec(), 1));
        assert!(GroupSender::from_encrypted_pickle(&r.to_encrypted_pickle(&key), &key).is_err());
    }

    #[test]
    fn the_envelope_opens_only_under_its_key() {
        let k = new_envelope_key();
        let sealed = envelope_seal(&k, b"inner");
        assert_eq!(sealed.len(), 5 + ENVELOPE_OVERHEAD);
        assert_eq!(envelope_open(&k, &sealed).unwrap(), b"inner");
        assert!(envelope_open(&new_envelope_key(), &sealed).is_err());
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(envelope_open(&k, &bad).is_err());
        assert!(envelope_open(&k, &sealed[..10]).is_err());
    }
}
