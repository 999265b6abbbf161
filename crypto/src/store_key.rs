//! The key that protects a device's secrets and local data at rest.
//!
//! A client keeps one [`StoreKey`] per device, in a file only its user can
//! read, and encrypts everything else it writes with it: the account and
//! session pickles, the local message store, the outbox. Each ciphertext is
//! bound to where it is stored through `aad` (for example the store key
//! name), so a blob copied to another slot fails to decrypt instead of being
//! silently accepted as other data.
//!
//! Format: `nonce (12 bytes) || ChaCha20-Poly1305 ciphertext || tag (16 bytes)`,
//! with a fresh random nonce per call. Random 96-bit nonces are safe for far
//! more messages than one device will ever write under one key.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::CryptoError;

/// Length of the random nonce that opens every [`StoreKey`] ciphertext.
pub(crate) const NONCE_LEN: usize = 12;
/// Length of the Poly1305 tag that closes every [`StoreKey`] ciphertext.
pub(crate) const TAG_LEN: usize = 16;

/// 32-byte key that encrypts a device's secrets and local data at rest.
///
/// Zeroized on drop; its `Debug` output never shows the key bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Restore a key saved with [`StoreKey::to_bytes`].
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key, for saving to a file only the user can read (mode 0600).
    /// The caller should zeroize its copy when done.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// ChaCha20-Poly1305 with a random 12-byte nonce; output = nonce ||
    /// ciphertext+tag. `aad` binds the ciphertext to where it is stored.
    ///
    /// # Panics
    ///
    /// Only if `plaintext` is longer than ChaCha20-Poly1305 allows
    /// (about 256 GiB), which no caller of this crate comes near.
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        #[allow(clippy::expect_used)] // fails only past the AEAD's ~256 GiB limit
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("plaintext within ChaCha20-Poly1305 length limit");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypt data made by [`StoreKey::encrypt`] with the same `aad`.
    ///
    /// Returns [`CryptoError::StoreOpen`] if the key or `aad` differ, or the
    /// data was tampered with or truncated.
    pub fn decrypt(&self, aad: &[u8], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::StoreOpen);
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::StoreOpen)
    }
}

impl StoreKey {
    /// A keyed hash of `data` for use as a database key, so the store's
    /// files show no contact id or timestamp: HMAC-SHA256 keyed with
    /// `HKDF-SHA256(ikm = store key, info = "tern/1 index key")`, over
    /// `label || 0x00 || data`. The label separates uses (contacts,
    /// messages, seen ids).
    pub fn keyed_hash(&self, label: &str, data: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0);
        let mut index_key = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(b"tern/1 index key", &mut index_key[..]);
        let mut mac = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(&index_key[..]) {
            Ok(m) => m,
            // HMAC takes keys of any length; this arm is never taken.
            Err(_) => return [0u8; 32],
        };
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_aad_binding() {
        let key = StoreKey::generate();
        let data = key.encrypt(b"messages/1", b"hello");
        assert_eq!(data.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(key.decrypt(b"messages/1", &data), Ok(b"hello".to_vec()));
        assert_eq!(
            key.decrypt(b"messages/2", &data),
            Err(CryptoError::StoreOpen)
        );
    }

    #[test]
    fn keyed_hashes_depend_on_key_label_and_data() {
        let key = StoreKey::from_bytes([1; 32]);
        let h = key.keyed_hash("contacts", b"abc");
        assert_eq!(h, key.keyed_hash("contacts", b"abc"));
        assert_ne!(h, key.keyed_hash("messages", b"abc"));
        assert_ne!(h, key.keyed_hash("contacts", b"abd"));
        assert_ne!(
            h,
            StoreKey::from_bytes([2; 32]).keyed_hash("contacts", b"abc")
        );
    }

    #[test]
    fn nonces_differ() {
        let key = StoreKey::generate();
        assert_ne!(key.encrypt(b"", b"x"), key.encrypt(b"", b"x"));
    }

    #[test]
    fn refuses_wrong_key_tamper_truncation() {
        let key = StoreKey::generate();
        let data = key.encrypt(b"a", b"secret");
        assert_eq!(
            StoreKey::generate().decrypt(b"a", &data),
            Err(CryptoError::StoreOpen)
        );
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x01;
            assert_eq!(key.decrypt(b"a", &bad), Err(CryptoError::StoreOpen));
        }
        for len in 0..data.len() {
            assert_eq!(key.decrypt(b"a", &data[..len]), Err(CryptoError::StoreOpen));
        }
    }

    #[test]
    fn bytes_roundtrip_and_debug_hides_key() {
        let key = StoreKey::from_bytes([7u8; 32]);
        assert_eq!(key.to_bytes(), [7u8; 32]);
        let data = key.encrypt(b"", b"x");
        let again = StoreKey::from_bytes(key.to_bytes());
        assert_eq!(again.decrypt(b"", &data), Ok(b"x".to_vec()));
        assert_eq!(format!("{key:?}"), "StoreKey(..)");
    }
}
