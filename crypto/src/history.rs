//! The account history key: 32 random bytes shared by an account's devices
//! and never shown to a relay. Everything history needs is derived from it
//! with HKDF-SHA256 under separate labels:
//!
//! - the history account's Ed25519 key (`"tern/1 history account"`): its
//!   public half is the account id the relay files blobs under, and it signs
//!   every history request, so no one else can read or delete them;
//! - the blob key (`"tern/1 history blob"`): XChaCha20-Poly1305 with a
//!   random 24-byte nonce, associated data `"tern/1 history blob\0" || tag`,
//!   so a blob moved to another conversation does not open;
//! - the tag key (`"tern/1 history tag"`): HMAC-SHA256 over a conversation
//!   id, cut to 16 bytes, the opaque per-conversation tag.

use crate::CryptoError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Bytes a blob's ciphertext adds to its plaintext (nonce and tag).
pub const BLOB_OVERHEAD: usize = 24 + 16;

/// An account's history key. Zeroized on drop; `Debug` hides it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HistoryKey([u8; 32]);

impl fmt::Debug for HistoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HistoryKey(..)")
    }
}

impl HistoryKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// A key saved with [`HistoryKey::to_bytes`] (or handed over by a
    /// linking device).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw key, to keep encrypted in the store or hand to a new device.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(label, &mut out[..]);
        out
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.derive(b"tern/1 history account"))
    }

    /// The account id the relay files blobs under (an Ed25519 public key).
    pub fn account_id(&self) -> [u8; 32] {
        self.signing_key().verifying_key().to_bytes()
    }

    /// Sign a history request's bytes as the account.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing_key().sign(message).to_bytes()
    }

    /// The opaque tag of the conversation `id` of kind `kind` (e.g.
    /// `"pair"` and a contact's identity key, `"group"` and a group id).
    pub fn tag(&self, kind: &str, id: &[u8]) -> [u8; 16] {
        let key = self.derive(b"tern/1 history tag");
        let mut out = [0u8; 16];
        if let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key[..]) {
            mac.update(kind.as_bytes());
            mac.update(&[0]);
            mac.update(id);
            out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        }
        out
    }

    fn blob_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.derive(b"tern/1 history blob")).into())
    }

    /// Encrypt one blob of the conversation tagged `tag`.
    pub fn seal_blob(&self, tag: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let aad = blob_aad(tag);
        let ct = match self.blob_cipher().encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        ) {
            Ok(ct) => ct,
            // Fails only past the AEAD's length limit (~256 GiB).
            Err(_) => return Vec::new(),
        };
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt a blob made by [`HistoryKey::seal_blob`] for `tag`.
    pub fn open_blob(&self, tag: &[u8; 16], data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if data.len() < BLOB_OVERHEAD {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = data.split_at(24);
        let aad = blob_aad(tag);
        self.blob_cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| CryptoError::Decrypt)
    }
}

fn blob_aad(tag: &[u8; 16]) -> Vec<u8> {
    let mut a = b"tern/1 history blob\0".to_vec();
    a.extend_from_slice(tag);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_open_only_under_their_key_and_tag() {
        let k = HistoryKey::generate();
        let tag = k.tag("pair", &[1; 32]);
        let sealed = k.seal_blob(&tag, b"hello history");
        assert_eq!(sealed.len(), 13 + BLOB_OVERHEAD);
        assert_eq!(k.open_blob(&tag, &sealed).unwrap(), b"hello history");
        assert!(k.open_blob(&k.tag("pair", &[2; 32]), &sealed).is_err());
        assert!(HistoryKey::generate().open_blob(&tag, &sealed).is_err());
    }

    #[test]
    fn derivations_are_stable_and_separate() {
        let k = HistoryKey::from_bytes([3; 32]);
        let same = HistoryKey::from_bytes([3; 32]);
        assert_eq!(k.account_id(), same.account_id());
        assert_eq!(k.tag("pair", b"x"), same.tag("pair", b"x"));
        assert_ne!(k.tag("pair", b"x"), k.tag("group", b"x"));
        assert_ne!(k.account_id(), HistoryKey::generate().account_id());
        let sig = k.sign(b"m");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&k.account_id()).unwrap();
        assert!(vk
            .verify_strict(b"m", &ed25519_dalek::Signature::from_bytes(&sig))
            .is_ok());
        assert_eq!(format!("{k:?}"), "HistoryKey(..)");
    }
}
