//! Encrypted account backups under a recovery phrase.
//!
//! The phrase is 160 random bits written as 8 groups of 4 base32 letters
//! (`ABCD-EFGH-...`); case, spaces and dashes do not matter when it is
//! typed back. A backup file is
//!
//! ```text
//! "TERNBK1\0" || len (u32 BE) || wrapped backup key || StoreKey::encrypt(
//!     backup key, aad = "tern/1 backup", payload)
//! ```
//!
//! where the wrapped backup key is a fresh random key wrapped under
//! Argon2id(phrase) exactly as [`crate::passphrase::wrap_store_key`] wraps
//! a store key (costs and salt in the file). What the payload holds is the
//! client's business.

use crate::passphrase::{unwrap_store_key, wrap_store_key, KdfCost};
use crate::{CryptoError, StoreKey};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

/// How a backup file starts.
pub const BACKUP_MAGIC: &[u8; 8] = b"TERNBK1\0";
const AAD: &[u8] = b"tern/1 backup";
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A fresh recovery phrase: 160 random bits, 8 dash-separated groups of 4.
pub fn new_recovery_phrase() -> Zeroizing<String> {
    let mut bits = Zeroizing::new([0u8; 20]);
    OsRng.fill_bytes(&mut bits[..]);
    let mut out = Zeroizing::new(String::with_capacity(39));
    for i in 0..32 {
        // 5 bits at a time, from the front.
        let bit = i * 5;
        let (byte, shift) = (bit / 8, bit % 8);
        let two = u16::from(bits[byte]) << 8 | u16::from(*bits.get(byte + 1).unwrap_or(&0));
        let v = (two >> (11 - shift)) & 0x1f;
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(v)]));
    }
    out
}

/// A typed phrase as the KDF sees it: upper case, without spaces or dashes.
pub fn normalize_phrase(phrase: &str) -> Zeroizing<String> {
    Zeroizing::new(
        phrase
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_uppercase)
            .collect(),
    )
}

/// Encrypt `payload` under `phrase`.
pub fn seal_backup(phrase: &str, payload: &[u8], cost: KdfCost) -> Result<Vec<u8>, CryptoError> {
    let key = StoreKey::generate();
    let wrapped = wrap_store_key(&key, normalize_phrase(phrase).as_bytes(), cost)?;
    let mut out = BACKUP_MAGIC.to_vec();
    out.extend_from_slice(&(wrapped.len() as u32).to_be_bytes());
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&key.encrypt(AAD, payload));
    Ok(out)
}

/// Decrypt a backup made by [`seal_backup`]. A wrong phrase is
/// [`CryptoError::WrongPassphrase`]; a file that is not a backup,
/// [`CryptoError::WrappedKey`].
pub fn open_backup(phrase: &str, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let rest = file
        .strip_prefix(&BACKUP_MAGIC[..])
        .ok_or(CryptoError::WrappedKey)?;
    let len = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or(CryptoError::WrappedKey)? as usize;
    let wrapped = rest.get(4..4 + len).ok_or(CryptoError::WrappedKey)?;
    let body = rest.get(4 + len..).ok_or(CryptoError::WrappedKey)?;
    let key = unwrap_store_key(wrapped, normalize_phrase(phrase).as_bytes())?;
    key.decrypt(AAD, body)
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::WrongPassphrase)
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
    fn a_backup_opens_with_its_phrase_however_typed() {
        let phrase = new_recovery_phrase();
        assert_eq!(phrase.len(), 39);
        assert_eq!(phrase.split('-').count(), 8);
        let file = seal_backup(&phrase, b"the account", CHEAP).unwrap();
        assert!(!file.windows(11).any(|w| w == b"the account"));
        let typed = phrase.to_lowercase().replace('-', " ");
        assert_eq!(&open_backup(&typed, &file).unwrap()[..], b"the account");
        let other = new_recovery_phrase();
        assert_ne!(*other, *phrase);
        assert_eq!(
            open_backup(&other, &file).map(|_| ()),
            Err(CryptoError::WrongPassphrase)
        );
        assert_eq!(
            open_backup(&phrase, b"not a backup").map(|_| ()),
            Err(CryptoError::WrappedKey)
        );
    }
}
