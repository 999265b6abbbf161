//! The one error type of `tern-crypto`.
//!
//! Variants are shaped after what the caller was doing (opening a sealed
//! payload, decrypting an Olm message, loading a pickle), not after the
//! library underneath. They carry no key material and no library error text:
//! a failed decryption says only that it failed, so nothing about the secret
//! state leaks into logs.

use thiserror::Error;

/// Why a cryptographic operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A public key given to us is unusable: wrong length, not a valid
    /// point, or a low-order point that would make a Diffie-Hellman output
    /// predictable.
    #[error("invalid {what}")]
    InvalidKey {
        /// Which key was refused, in the caller's terms (e.g. "seal public key").
        what: &'static str,
    },
    /// A sealed payload could not be opened: it was tampered with, truncated,
    /// sealed to another key, or has an unknown version.
    #[error("sealed payload could not be opened")]
    SealOpen,
    /// Data encrypted under a [`crate::StoreKey`] failed to authenticate:
    /// wrong key, stored under another name (`aad`), tampered, or truncated.
    #[error("locally stored data could not be decrypted")]
    StoreOpen,
    /// An Olm message did not decrypt: tampered, a replay of a message
    /// already decrypted, from another session, or too far out of order.
    #[error("olm message could not be decrypted")]
    Decrypt,
    /// An Olm message could not be parsed (unknown type or malformed bytes).
    #[error("malformed olm message")]
    InvalidMessage,
    /// A pickle could not be restored: wrong [`crate::StoreKey`], tampered,
    /// or not a pickle of this kind.
    #[error("pickle could not be restored")]
    Pickle,
    /// A pre-key message names a one-time key this account does not hold:
    /// it was never ours, or it was already used (a replayed pre-key
    /// message).
    #[error("unknown or already used one-time key")]
    NoOneTimeKey,
    /// An inbound session could not be created for another reason: the
    /// pre-key message claims a different sender identity, uses an
    /// unsupported session version, or carries an unusable ratchet key.
    #[error("session could not be created")]
    SessionCreation,
    /// An Ed25519 signature did not verify (or was not 64 bytes).
    #[error("invalid signature")]
    BadSignature,
    /// A passphrase-protected store key did not open with the passphrase
    /// given.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// A store key file is not a passphrase-wrapped key, or its cost
    /// parameters are out of range.
    #[error("the store key file is damaged")]
    WrappedKey,
}
