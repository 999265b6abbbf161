//! Pairwise end-to-end sessions: Olm (X3DH-style handshake + Double
//! Ratchet) from vodozemac, one per contact device.
//!
//! A session is created by [`crate::DeviceAccount::start_session`] on the
//! side that has the other's one-time key (from an invite), and by
//! [`crate::DeviceAccount::accept_session`] on the other side when the first
//! message (a pre-key message, type 0) arrives. Until the starting side has
//! decrypted a reply, everything it sends is a pre-key message; after that,
//! normal messages (type 1).
//!
//! vodozemac keeps the keys of skipped messages (up to 40 per chain, gaps up
//! to 2000), so messages that arrive out of order still decrypt; each key is
//! deleted once used, which is what refuses a replayed message.
//!
//! Pickles are `StoreKey::encrypt(aad = "tern/1 session pickle",
//! serde_json(vodozemac SessionPickle))`: one AEAD of our own rather than
//! vodozemac's AES-CBC pickle format, so every secret at rest is under the
//! same construction.

use std::fmt;

use vodozemac::olm::{OlmMessage, Session, SessionPickle};
use zeroize::Zeroizing;

use crate::seal::is_canonical;
use crate::{CryptoError, StoreKey};

const PICKLE_AAD: &[u8] = b"tern/1 session pickle";

/// An Olm message as (type, bytes): type 0 = pre-key message, 1 = normal message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OlmCiphertext {
    /// 0 for a pre-key message (starts a session), 1 for a normal message.
    pub olm_type: u32,
    /// The Olm message in vodozemac's binary encoding.
    pub body: Vec<u8>,
}

impl OlmCiphertext {
    /// Olm type of a pre-key message.
    pub const PRE_KEY: u32 = 0;
    /// Olm type of a normal message.
    pub const NORMAL: u32 = 1;

    /// Whether this is a pre-key message, which may start a new session.
    pub fn is_pre_key(&self) -> bool {
        self.olm_type == Self::PRE_KEY
    }

    pub(crate) fn from_olm(message: &OlmMessage) -> Self {
        let (olm_type, body) = message.to_parts();
        Self {
            // Olm has only the two types above.
            olm_type: u32::try_from(olm_type).unwrap_or(Self::NORMAL),
            body,
        }
    }

    /// Parse, accepting only the canonical encoding.
    ///
    /// vodozemac authenticates the decoded fields (it MACs a re-encoding),
    /// so other encodings of the same message (an unknown protobuf field,
    /// a varint with redundant bytes) would otherwise decrypt too. And a
    /// pre-key message's session keys are outside its MAC while vodozemac
    /// compares keys as field elements, so a copy with a key's ignored high
    /// bit flipped would create a session under another session id (using
    /// up the one-time key). Requiring canonical bytes and canonical keys
    /// means any change to a ciphertext is refused, and one message has one
    /// byte string.
    pub(crate) fn to_olm(&self) -> Result<OlmMessage, CryptoError> {
        let olm_type = usize::try_from(self.olm_type).map_err(|_| CryptoError::InvalidMessage)?;
        let message = OlmMessage::from_parts(olm_type, &self.body)
            .map_err(|_| CryptoError::InvalidMessage)?;
        if message.to_parts().1 != self.body {
            return Err(CryptoError::InvalidMessage);
        }
        let keys_canonical = match &message {
            OlmMessage::Normal(m) => is_canonical(m.ratchet_key().as_bytes()),
            OlmMessage::PreKey(m) => {
                let keys = m.session_keys();
                [
                    keys.identity_key,
                    keys.base_key,
                    keys.one_time_key,
                    m.message().ratchet_key(),
                ]
                .iter()
                .all(|k| is_canonical(k.as_bytes()))
            }
        };
        if !keys_canonical {
            return Err(CryptoError::InvalidMessage);
        }
        Ok(message)
    }
}

/// An Olm (Double Ratchet) session with one contact device.
///
/// `Debug` shows only the session id.
pub struct PairSession {
    inner: Session,
}

impl PairSession {
    /// Wrap a vodozemac session whose peer ratchet key is known to be usable
    /// (see `DeviceAccount::accept_session`), so that `encrypt` cannot fail.
    pub(crate) fn new(inner: Session) -> Self {
        Self { inner }
    }

    /// Encrypt one message. A pre-key message (type 0) until this side has
    /// decrypted a message from the peer, then normal messages (type 1).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> OlmCiphertext {
        // vodozemac fails here only if the peer's ratchet key is a low-order
        // point. Every ratchet key a session holds was checked: outbound
        // sessions start with our own key, accept_session refuses a low-order
        // key in the pre-key message, and decrypt refuses one in any later
        // message before adopting it.
        #[allow(clippy::expect_used)]
        let message = self
            .inner
            .encrypt(plaintext)
            .expect("session ratchet keys were validated when received");
        OlmCiphertext::from_olm(&message)
    }

    /// Decrypt; refuses tampered ciphertexts and replays of a message already
    /// decrypted (returns [`CryptoError::Decrypt`]) and leaves the session
    /// usable. A malformed message is [`CryptoError::InvalidMessage`].
    pub fn decrypt(&mut self, msg: &OlmCiphertext) -> Result<Vec<u8>, CryptoError> {
        let message = msg.to_olm()?;
        // vodozemac only commits ratchet state after the MAC verified, so a
        // failure here leaves the session as it was.
        self.inner
            .decrypt(&message)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// The session's globally unique id (base64), the same on both sides.
    pub fn session_id(&self) -> String {
        self.inner.session_id()
    }

    /// Whether this session can decrypt this pre-key message, i.e. it was
    /// made by the same handshake. Lets a receiver route a type-0 message to
    /// an existing session instead of calling `accept_session` again.
    pub fn matches_pre_key(&self, msg: &OlmCiphertext) -> bool {
        match msg.to_olm() {
            Ok(OlmMessage::PreKey(m)) => m.session_id() == self.inner.session_id(),
            _ => false,
        }
    }

    /// Serialize the session encrypted under `key` (see the module docs).
    pub fn to_encrypted_pickle(&self, key: &StoreKey) -> Vec<u8> {
        let json = pickle_json(&self.inner.pickle());
        key.encrypt(PICKLE_AAD, &json)
    }

    /// Restore a session from [`PairSession::to_encrypted_pickle`];
    /// [`CryptoError::Pickle`] for a wrong key or damaged data.
    pub fn from_encrypted_pickle(data: &[u8], key: &StoreKey) -> Result<Self, CryptoError> {
        let json = Zeroizing::new(
            key.decrypt(PICKLE_AAD, data)
                .map_err(|_| CryptoError::Pickle)?,
        );
        let pickle: SessionPickle =
            serde_json::from_slice(&json).map_err(|_| CryptoError::Pickle)?;
        // A damaged or forged pickle can hold a low-order peer ratchet key
        // that no live session would accept, on which encrypt would fail.
        // Try an encryption on a throwaway copy, so such a pickle is refused
        // here and encrypt stays infallible (found by fuzzing crypto_open).
        let session = Session::from_pickle(pickle);
        if Session::from_pickle(session.pickle()).encrypt(b"").is_err() {
            return Err(CryptoError::Pickle);
        }
        Ok(Self::new(session))
    }
}

impl fmt::Debug for PairSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairSession")
            .field("session_id", &self.inner.session_id())
            .finish_non_exhaustive()
    }
}

/// serde_json into a buffer that is zeroized when dropped. The buffer is
/// sized up front so growth does not leave unzeroized copies behind in the
/// common case.
pub(crate) fn pickle_json<T: serde::Serialize>(value: &T) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
    // Writing these plain-data pickles into a Vec cannot fail; if it ever
    // did, the result would be an empty pickle that fails to load, loudly.
    if serde_json::to_writer(&mut *buf, value).is_err() {
        buf.clear();
    }
    buf
}

#[cfg(test)]
mod tests {

    /// A pickle whose sending ratchet holds a low-order peer key (found by
    /// the crypto_open fuzz target) is refused when loaded, instead of
    /// loading and then panicking on the next encrypt.
    #[test]
    fn pickle_with_low_order_ratchet_key_is_refused() {
        let json = include_bytes!("../tests/vectors/low_order_session_pickle.json");
        let key = StoreKey::from_bytes([7; 32]);
        let data = key.encrypt(PICKLE_AAD, json);
        assert!(matches!(
            PairSession::from_encrypted_pickle(&data, &key),
            Err(CryptoError::Pickle)
        ));
    }
    use super::*;

    #[test]
    fn malformed_ciphertexts_are_invalid_message() {
        for (olm_type, body) in [
            (0u32, vec![]),
            (1, vec![]),
            (2, vec![3, 1, 2]),
            (1, vec![0xff; 10]),
        ] {
            assert_eq!(
                OlmCiphertext { olm_type, body }.to_olm().err(),
                Some(CryptoError::InvalidMessage)
            );
        }
    }

    #[test]
    fn pickle_json_zeroizing_roundtrip() {
        let json = pickle_json(&vec![1u8, 2, 3]);
        assert_eq!(json.as_slice(), b"[1,2,3]");
    }
}
