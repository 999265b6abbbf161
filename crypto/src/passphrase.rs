//! A passphrase that protects the [`StoreKey`] at rest.
//!
//! Without one, a device keeps its store key as 32 raw bytes in a file only
//! its user can read. With one, the file holds the key wrapped under a key
//! derived from the passphrase with Argon2id, so a copy of the home
//! directory alone opens nothing:
//!
//! ```text
//! "TERNPW1\0" (8) || m_cost KiB (u32 BE) || t_cost (u32 BE) || p (u32 BE)
//!   || salt (16) || ChaCha20-Poly1305(kek, aad = "tern/1 wrapped store key",
//!      store key)   (nonce || ciphertext || tag, as StoreKey::encrypt)
//! ```
//!
//! `kek = Argon2id(passphrase, salt, m_cost, t_cost, p) -> 32 bytes`. The
//! cost parameters travel in the file, so they can be raised later without
//! breaking older files.

use crate::{CryptoError, StoreKey};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

/// How a wrapped store key file starts.
pub const WRAPPED_MAGIC: &[u8; 8] = b"TERNPW1\0";
const AAD: &[u8] = b"tern/1 wrapped store key";
const SALT_LEN: usize = 16;
const HEADER_LEN: usize = 8 + 12 + SALT_LEN;

/// Argon2id costs: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes over the memory.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfCost {
    /// The default: 19 MiB, 2 passes, 1 lane (OWASP's Argon2id minimum).
    pub const DEFAULT: KdfCost = KdfCost {
        m_kib: 19 * 1024,
        t: 2,
        p: 1,
    };
}

fn kek(passphrase: &[u8], salt: &[u8], cost: KdfCost) -> Result<StoreKey, CryptoError> {
    let params =
        Params::new(cost.m_kib, cost.t, cost.p, Some(32)).map_err(|_| CryptoError::WrappedKey)?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut out[..])
        .map_err(|_| CryptoError::WrappedKey)?;
    Ok(StoreKey::from_bytes(*out))
}

/// Whether a store key file holds a passphrase-wrapped key.
pub fn is_wrapped(file: &[u8]) -> bool {
    file.starts_with(WRAPPED_MAGIC)
}

/// Wrap `key` under `passphrase` with a fresh salt.
pub fn wrap_store_key(
    key: &StoreKey,
    passphrase: &[u8],
    cost: KdfCost,
) -> Result<Vec<u8>, CryptoError> {
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    let kek = kek(passphrase, &salt, cost)?;
    let mut out = WRAPPED_MAGIC.to_vec();
    out.extend_from_slice(&cost.m_kib.to_be_bytes());
    out.extend_from_slice(&cost.t.to_be_bytes());
    out.extend_from_slice(&cost.p.to_be_bytes());
    out.extend_from_slice(&salt);
    let raw = Zeroizing::new(key.to_bytes());
    out.extend_from_slice(&kek.encrypt(AAD, &raw[..]));
    Ok(out)
}

/// Unwrap a file made by [`wrap_store_key`]. A wrong passphrase (or a
/// damaged file) is [`CryptoError::WrongPassphrase`]; a file that is not
/// a wrapped key at all is [`CryptoError::WrappedKey`].
pub fn unwrap_store_key(file: &[u8], passphrase: &[u8]) -> Result<StoreKey, CryptoError> {
    if !is_wrapped(file) || file.len() < HEADER_LEN {
        return Err(CryptoError::WrappedKey);
    }
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&file[i..i + 4]);
        u32::from_be_bytes(b)
    };
    let cost = KdfCost {
        m_kib: u32_at(8),
        t: u32_at(12),
        p: u32_at(16),
    };
    // A hostile file must not make us allocate without bound.
    if cost.m_kib > 4 * 1024 * 1024 || cost.t > 64 || cost.p > 64 {
        return Err(CryptoError::WrappedKey);
    }
    let salt = &file[20..20 + SALT_LEN];
    let kek = kek(passphrase, salt, cost)?;
    let raw = Zeroizing::new(
        kek.decrypt(AAD, &file[HEADER_LEN..])
            .map_err(|_| CryptoError::WrongPassphrase)?,
    );
    let bytes: [u8; 32] = raw[..].try_into().map_err(|_| CryptoError::WrappedKey)?;
    Ok(StoreKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfCost = KdfCost {
        m_kib: 64,
        t: 1,
        p: 1,
    };

    #[test]
    fn the_right_passphrase_unwraps_and_a_wrong_one_is_told() {
        let key = StoreKey::generate();
        let file = wrap_store_key(&key, b"correct horse", CHEAP).unwrap();
        assert!(is_wrapped(&file));
        assert!(!file.windows(32).any(|w| w == key.to_bytes()));
        let back = unwrap_store_key(&file, b"correct horse").unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        assert_eq!(
            unwrap_store_key(&file, b"wrong").map(|k| k.to_bytes()),
            Err(CryptoError::WrongPassphrase)
        );
        assert_eq!(
            unwrap_store_key(&key.to_bytes(), b"x").map(|k| k.to_bytes()),
            Err(CryptoError::WrappedKey)
        );
        let mut huge = file.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            unwrap_store_key(&huge, b"correct horse").map(|k| k.to_bytes()),
            Err(CryptoError::WrappedKey)
        );
    }

    #[test]
    fn the_default_cost_is_accepted() {
        let key = StoreKey::generate();
        let file = wrap_store_key(&key, b"p", KdfCost::DEFAULT).unwrap();
        assert_eq!(
            unwrap_store_key(&file, b"p").unwrap().to_bytes(),
            key.to_bytes()
        );
    }
}
