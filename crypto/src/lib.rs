//! Tern's cryptography, with no I/O: everything here takes bytes and returns
//! bytes, and the caller decides where they go.
//!
//! - [`DeviceAccount`]: a device's long-term keys (Olm identity, Ed25519
//!   signing key, X25519 seal key) and the handshakes that start sessions.
//! - [`PairSession`]: an Olm Double Ratchet session with one contact device;
//!   its messages are [`OlmCiphertext`]s.
//! - [`seal`] / [`open`]: the sealed outer layer that hides the sender from
//!   the relay (an X25519 + HKDF-SHA256 + ChaCha20-Poly1305 ECIES).
//! - [`GroupSender`] / [`GroupReceiver`]: Megolm group sessions, and the
//!   group envelope AEAD ([`envelope_seal`] / [`envelope_open`]).
//! - [`StoreKey`]: the key that encrypts a device's secrets and local data
//!   at rest; account and session pickles are encrypted with it.
//!   [`passphrase`] wraps it under an Argon2id key; [`StoreKey::keyed_hash`]
//!   hides the local database's keys.
//! - [`safety`]: the safety number two contacts compare.
//! - [`HistoryKey`]: the account history key and what derives from it
//!   (history account id and signatures, blob AEAD, conversation tags);
//!   [`backup`]: account backups under a recovery phrase.
//! - [`RootKey`]: the account root key that signs its device list.
//!
//! A message from Alice to Bob is `seal(bob.seal_public, olm.encrypt(m))`:
//! the relay learns only Bob's mailbox; Bob opens the seal, then the Olm
//! layer tells him it came from Alice. Pairwise crypto is vodozemac
//! (audited); the seal and the at-rest encryption are small compositions of
//! RustCrypto and dalek crates, with known-answer vectors in `tests/vectors`.
//!
//! Every function here refuses bad input with a [`CryptoError`] and never
//! panics on it.

#![warn(missing_docs)]

mod account;
pub mod backup;
mod error;
pub mod history;
mod megolm;
pub mod passphrase;
mod root;
pub mod safety;
mod seal;
mod session;
mod store_key;

pub use account::{verify_signature, DeviceAccount};
pub use error::CryptoError;
pub use history::HistoryKey;
pub use megolm::{
    envelope_open, envelope_seal, new_envelope_key, GroupReceiver, GroupSender, ENVELOPE_OVERHEAD,
};
pub use root::RootKey;
pub use seal::{
    open, seal, seal_with_ephemeral, validate_seal_public, SealKey, SEAL_OVERHEAD, SEAL_VERSION,
};
pub use session::{OlmCiphertext, PairSession};
pub use store_key::StoreKey;
