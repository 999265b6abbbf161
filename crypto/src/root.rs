//! The account root key: one Ed25519 key per account (not per device) that
//! signs the account's device list. Contacts pin its public half when they
//! add the account and accept a device only if a list signed by it names
//! the device (client-core's `devices` module).
//!
//! Every device of the account holds the secret half (docs/decisions.md,
//! "Device lists: every device holds the root key"), so any device can add,
//! rename or remove devices. Signatures are over a domain-separated message
//! chosen by the caller; verification is [`crate::verify_signature`].

use std::fmt;

use ed25519_dalek::{Signer, SigningKey};
use zeroize::Zeroizing;

/// The account's root signing key. `Debug` shows only the public key; the
/// secret is wiped on drop (ed25519-dalek zeroizes its `SigningKey`).
pub struct RootKey {
    key: SigningKey,
}

impl RootKey {
    /// A fresh random root key.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret[..]);
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The root key from its 32 secret bytes (as [`RootKey::to_bytes`] gave).
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// The 32 secret bytes, for the encrypted store and for linking a new
    /// device (which then holds the root key too).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public key contacts pin.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Sign `msg` (verify with [`crate::verify_signature`]).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_verifiably_and_round_trips() {
        let root = RootKey::generate();
        let sig = root.sign(b"list");
        assert!(crate::verify_signature(&root.public(), b"list", &sig).is_ok());
        assert!(crate::verify_signature(&root.public(), b"other", &sig).is_err());
        let again = RootKey::from_bytes(&root.to_bytes());
        assert_eq!(again.public(), root.public());
        assert!(!format!("{root:?}").contains(&format!("{:?}", &root.to_bytes()[..])));
    }
}
