//! The sealed outer layer that hides a message's sender from the relay.
//!
//! Every envelope a client uploads is sealed to the recipient device's
//! [`SealKey`]: the relay sees a recipient mailbox and opaque bytes, never
//! who sent them. Inside is the Olm ciphertext, which authenticates the
//! sender to the recipient.
//!
//! Construction (version 1), an ECIES over X25519:
//!
//! ```text
//! eph            = fresh X25519 secret (one per payload)
//! dh             = X25519(eph, recipient_pub)          refused if all-zero
//! key            = HKDF-SHA256(salt = eph_pub || recipient_pub,
//!                              ikm  = dh,
//!                              info = "tern/1 seal")   -> 32 bytes
//! header         = 0x01 || eph_pub
//! sealed         = header || ChaCha20-Poly1305(key, nonce = 0^12,
//!                                              aad = header, plaintext)
//! ```
//!
//! The zero nonce is safe because each key encrypts exactly one message: it
//! is derived from a fresh ephemeral key. The header is authenticated as
//! associated data, so neither the version nor the ephemeral key can be
//! swapped. Overhead is 1 + 32 + 16 = 49 bytes.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Version byte that opens every sealed payload this crate makes.
pub const SEAL_VERSION: u8 = 0x01;
/// Bytes a sealed payload adds to its plaintext: version, ephemeral key, tag.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;

const HEADER_LEN: usize = 1 + 32;
const TAG_LEN: usize = 16;
const INFO: &[u8] = b"tern/1 seal";

/// X25519 static secret that sealed payloads are addressed to.
///
/// Zeroized on drop; its `Debug` output shows only the public key.
#[derive(Clone)]
pub struct SealKey {
    secret: StaticSecret,
    // Cached: deriving it costs a scalar multiplication, and open needs it.
    public: [u8; 32],
}

impl SealKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random_from_rng(OsRng))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The public key that senders seal to.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The raw secret, for pickling. The caller should zeroize its copy.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// Restore a key saved with [`SealKey::to_bytes`].
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey {{ public: ")?;
        for b in self.public() {
            write!(f, "{b:02x}")?;
        }
        write!(f, " }}")
    }
}

/// Check that `public` can be sealed to: it must not be a low-order point,
/// whose Diffie-Hellman output anyone could predict.
///
/// Call this where a contact's seal key enters the system (an invite, a
/// device list), so a bad key is refused there with an error the user can
/// see; [`seal`] itself cannot fail.
pub fn validate_seal_public(public: &[u8; 32]) -> Result<(), CryptoError> {
    if is_low_order(public) {
        Err(CryptoError::InvalidKey {
            what: "seal public key",
        })
    } else {
        Ok(())
    }
}

/// Whether 32 bytes are the canonical encoding of an X25519 public key: the
/// high bit clear and the value below the field prime 2^255 - 19. X25519
/// ignores the high bit and reduces larger values, so a non-canonical
/// encoding acts like another key with different bytes; honest keys are
/// always canonical.
pub(crate) fn is_canonical(public: &[u8; 32]) -> bool {
    if public[31] & 0x80 != 0 {
        return false;
    }
    // The 19 values p ..= 2^255 - 1 are ed ff .. ff 7f up to ff ff .. ff 7f.
    let top = public[31] == 0x7f && public[1..31].iter().all(|b| *b == 0xff);
    !(top && public[0] >= 0xed)
}

/// Whether an X25519 public key is a low-order point (its Diffie-Hellman
/// output with any secret is all-zero, so it protects nothing).
pub(crate) fn is_low_order(public: &[u8; 32]) -> bool {
    // A clamped scalar is a multiple of 8 and below the prime subgroup's
    // order (times 8), so its output is all-zero exactly for the low-order
    // points: a fixed, non-secret scalar is enough to test.
    let probe = StaticSecret::from([0x55u8; 32]);
    !probe
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory()
}

/// Encrypt `plaintext` to `recipient` (an X25519 public key): fresh
/// ephemeral X25519 key, DH, HKDF-SHA256 (salt = eph_pub || recipient_pub,
/// info = "tern/1 seal") -> 32-byte key, ChaCha20-Poly1305 with a zero nonce
/// (the key is single-use) and the header as associated data.
/// Output = version byte 0x01 || eph_pub (32) || ciphertext+tag; that is
/// [`SEAL_OVERHEAD`] bytes more than `plaintext`.
///
/// If `recipient` is a low-order point (see [`validate_seal_public`]) the
/// Diffie-Hellman output would be public, so the plaintext is instead
/// encrypted under a random key that is then dropped: the result has the
/// usual length and reveals nothing, and nobody can open it.
pub fn seal(recipient: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    seal_with(recipient, StaticSecret::random_from_rng(OsRng), plaintext)
}

/// [`seal`] with a caller-chosen ephemeral secret.
///
/// For known-answer tests only: reusing an ephemeral secret reuses the
/// key and nonce, which breaks the encryption.
#[doc(hidden)]
pub fn seal_with_ephemeral(
    recipient: &[u8; 32],
    ephemeral_secret: [u8; 32],
    plaintext: &[u8],
) -> Vec<u8> {
    seal_with(recipient, StaticSecret::from(ephemeral_secret), plaintext)
}

fn seal_with(recipient: &[u8; 32], ephemeral: StaticSecret, plaintext: &[u8]) -> Vec<u8> {
    let eph_pub = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*recipient));
    let key = if shared.was_contributory() {
        derive_key(shared.as_bytes(), &eph_pub, recipient)
    } else {
        // Low-order recipient: refuse to use the predictable secret.
        Zeroizing::new(StaticSecret::random_from_rng(OsRng).to_bytes())
    };

    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&eph_pub);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()));
    #[allow(clippy::expect_used)] // fails only past the AEAD's ~256 GiB limit
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: plaintext,
                aad: &out,
            },
        )
        .expect("plaintext within ChaCha20-Poly1305 length limit");
    out.extend_from_slice(&ciphertext);
    out
}

/// Open a sealed payload; [`CryptoError::SealOpen`] on any tampering, wrong
/// key, truncation or unknown version. Never panics on any input.
pub fn open(key: &SealKey, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < SEAL_OVERHEAD || sealed[0] != SEAL_VERSION {
        return Err(CryptoError::SealOpen);
    }
    let (header, ciphertext) = sealed.split_at(HEADER_LEN);
    let mut eph_pub = [0u8; 32];
    eph_pub.copy_from_slice(&header[1..]);

    let shared = key.secret.diffie_hellman(&PublicKey::from(eph_pub));
    if !shared.was_contributory() {
        return Err(CryptoError::SealOpen);
    }
    let derived = derive_key(shared.as_bytes(), &eph_pub, &key.public);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(derived.as_slice()));
    cipher
        .decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: ciphertext,
                aad: header,
            },
        )
        .map_err(|_| CryptoError::SealOpen)
}

fn derive_key(dh: &[u8; 32], eph_pub: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(eph_pub);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), dh);
    let mut okm = Zeroizing::new([0u8; 32]);
    #[allow(clippy::expect_used)] // 32 bytes is far below HKDF-SHA256's 8160-byte limit
    hk.expand(INFO, okm.as_mut_slice())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Low-order points on Curve25519 (and their non-canonical encodings),
    /// as listed in the X25519 literature (e.g. libsodium's blocklist).
    pub(crate) fn low_order_points() -> Vec<[u8; 32]> {
        let hexes = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        hexes
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0);
                }
                out
            })
            .collect()
    }

    #[test]
    fn roundtrip() {
        let key = SealKey::generate();
        let sealed = seal(&key.public(), b"hi bob");
        assert_eq!(sealed.len(), SEAL_OVERHEAD + 6);
        assert_eq!(sealed[0], SEAL_VERSION);
        assert_eq!(open(&key, &sealed), Ok(b"hi bob".to_vec()));
        assert_eq!(open(&key, &seal(&key.public(), b"")), Ok(Vec::new()));
    }

    #[test]
    fn fresh_ephemeral_each_time() {
        let key = SealKey::generate();
        assert_ne!(seal(&key.public(), b"x"), seal(&key.public(), b"x"));
    }

    #[test]
    fn wrong_key_refused() {
        let sealed = seal(&SealKey::generate().public(), b"hi");
        assert_eq!(
            open(&SealKey::generate(), &sealed),
            Err(CryptoError::SealOpen)
        );
    }

    #[test]
    fn every_bit_flip_refused() {
        let key = SealKey::generate();
        let sealed = seal(&key.public(), b"attack at dawn");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(open(&key, &bad), Err(CryptoError::SealOpen), "byte {i}");
            }
        }
    }

    #[test]
    fn truncation_and_extension_refused() {
        let key = SealKey::generate();
        let sealed = seal(&key.public(), b"attack at dawn");
        for len in 0..sealed.len() {
            assert_eq!(open(&key, &sealed[..len]), Err(CryptoError::SealOpen));
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open(&key, &longer), Err(CryptoError::SealOpen));
    }

    #[test]
    fn unknown_version_refused() {
        let key = SealKey::generate();
        let mut sealed = seal(&key.public(), b"x");
        for v in [0x00, 0x02, 0xff] {
            sealed[0] = v;
            assert_eq!(open(&key, &sealed), Err(CryptoError::SealOpen));
        }
    }

    #[test]
    fn low_order_ephemeral_refused_on_open() {
        let key = SealKey::generate();
        for point in low_order_points() {
            let mut forged = vec![SEAL_VERSION];
            forged.extend_from_slice(&point);
            // A forger knows the all-zero DH output, so could build a valid
            // tag under it; open must refuse before trying.
            let k = derive_key(&[0u8; 32], &point, &key.public());
            let ct = ChaCha20Poly1305::new(Key::from_slice(k.as_slice()))
                .encrypt(
                    Nonce::from_slice(&[0u8; 12]),
                    Payload {
                        msg: b"forged",
                        aad: &forged,
                    },
                )
                .unwrap_or_default();
            forged.extend_from_slice(&ct);
            assert_eq!(open(&key, &forged), Err(CryptoError::SealOpen));
        }
    }

    #[test]
    fn low_order_recipient_never_gets_plaintext_under_known_key() {
        for point in low_order_points() {
            assert!(validate_seal_public(&point).is_err());
            let sealed = seal_with_ephemeral(&point, [9u8; 32], b"secret");
            assert_eq!(sealed.len(), SEAL_OVERHEAD + 6);
            // The key an attacker would derive from the all-zero output.
            let k = derive_key(
                &[0u8; 32],
                &sealed[1..33].try_into().unwrap_or([0; 32]),
                &point,
            );
            let opened = ChaCha20Poly1305::new(Key::from_slice(k.as_slice())).decrypt(
                Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: &sealed[HEADER_LEN..],
                    aad: &sealed[..HEADER_LEN],
                },
            );
            assert!(opened.is_err());
        }
        assert!(validate_seal_public(&SealKey::generate().public()).is_ok());
    }

    #[test]
    fn canonical_encodings() {
        assert!(is_canonical(&[0u8; 32]));
        assert!(is_canonical(&SealKey::generate().public()));
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        assert!(is_canonical(&p_minus_1));
        let mut p = p_minus_1;
        p[0] = 0xed;
        assert!(!is_canonical(&p));
        let mut high = SealKey::generate().public();
        high[31] |= 0x80;
        assert!(!is_canonical(&high));
        for _ in 0..100 {
            assert!(is_canonical(&SealKey::generate().public()));
        }
    }

    #[test]
    fn seal_key_bytes_roundtrip_and_debug() {
        let key = SealKey::generate();
        let again = SealKey::from_bytes(key.to_bytes());
        assert_eq!(key.public(), again.public());
        let sealed = seal(&key.public(), b"x");
        assert_eq!(open(&again, &sealed), Ok(b"x".to_vec()));
        let dbg = format!("{key:?}");
        assert!(dbg.starts_with("SealKey { public: "));
        let secret_hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&secret_hex));
    }
}
