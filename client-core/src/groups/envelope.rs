//! A group message's layers, pure: the text is a `pb::Content` encrypted
//! once with the sender's Megolm session; the Megolm ciphertext, the group
//! id and the sender's identity key go in a `pb::GroupSealed`, padded, and
//! that is encrypted with the sender's envelope key (XChaCha20-Poly1305).
//! The relay stores `nonce || ciphertext || tag`: opaque bytes exactly one
//! size bucket long, which no relay can tell from a 1:1 sealed payload.
//!
//! A recipient does not know which key an envelope is under: one that is
//! not a 1:1 seal is tried against the envelope keys of its groups' senders
//! ([`open`]), a few microseconds each.

use crate::layers::{read_content, OpenError, Opened};
use prost::Message;
use tern_crypto::{envelope_open, envelope_seal, GroupReceiver, GroupSender, ENVELOPE_OVERHEAD};
use tern_protocol::pb;
use tern_protocol::{limits, padding};

/// Encrypt `content` once for the group: the payload every member's
/// mailbox gets. Advances `sender`; the caller saves it.
pub fn seal_group(
    sender: &mut GroupSender,
    envelope_key: &[u8; 32],
    group_id: &[u8; 16],
    own_identity: &[u8; 32],
    content: &pb::Content,
) -> Vec<u8> {
    let megolm = sender.encrypt(&content.encode_to_vec());
    let mut inner = pb::GroupSealed {
        group_id: group_id.to_vec().into(),
        sender_identity_key: own_identity.to_vec().into(),
        megolm_ciphertext: megolm.into(),
        padding: Default::default(),
    };
    let unpadded = ENVELOPE_OVERHEAD + inner.encoded_len();
    if let Some(filler) = padding::padding_for(unpadded, limits::DEFAULT_MAX_ENVELOPE) {
        inner.padding = vec![0; filler].into();
    }
    envelope_seal(envelope_key, &inner.encode_to_vec())
}

/// The outer layer opened: which group and sender it claims.
#[derive(Debug)]
pub struct Unwrapped {
    /// The group id inside.
    pub group_id: [u8; 16],
    /// The sender's identity key inside.
    pub sender: [u8; 32],
    /// The Megolm ciphertext.
    pub megolm: Vec<u8>,
}

/// Open the envelope layer with one candidate key; `None` if it is not
/// under this key or is malformed.
pub fn unwrap(envelope_key: &[u8; 32], payload: &[u8]) -> Option<Unwrapped> {
    let plain = envelope_open(envelope_key, payload).ok()?;
    let inner = pb::GroupSealed::decode(&plain[..]).ok()?;
    Some(Unwrapped {
        group_id: inner.group_id[..].try_into().ok()?,
        sender: inner.sender_identity_key[..].try_into().ok()?,
        megolm: inner.megolm_ciphertext.to_vec(),
    })
}

/// Decrypt the Megolm layer and read the content.
pub fn open(receiver: &mut GroupReceiver, megolm: &[u8]) -> Result<Opened, OpenError> {
    let (plain, _index) = receiver.decrypt(megolm)?;
    read_content(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{content, text_body};

    #[test]
    fn a_group_message_is_one_padded_opaque_payload_that_members_open() {
        let mut s = GroupSender::new();
        let key = tern_crypto::new_envelope_key();
        let mut r = GroupReceiver::new(&s.session_key()).unwrap();
        for len in [0, 10, 300, 5000] {
            let text = "x".repeat(len);
            let c = content([len as u8; 16], 9, text_body(&text));
            let payload = seal_group(&mut s, &key, &[1; 16], &[2; 32], &c);
            assert!(padding::is_bucket(payload.len()), "{}", payload.len());
            assert!(!payload.windows(16).any(|w| w == [1; 16]));
            let u = unwrap(&key, &payload).unwrap();
            assert_eq!((u.group_id, u.sender), ([1; 16], [2; 32]));
            let opened = open(&mut r, &u.megolm).unwrap();
            assert_eq!(opened.body, Some(text_body(&text)));
            assert_eq!(opened.id, [len as u8; 16]);
        }
        let c = content([1; 16], 9, text_body("hi"));
        let payload = seal_group(&mut s, &key, &[1; 16], &[2; 32], &c);
        assert!(unwrap(&tern_crypto::new_envelope_key(), &payload).is_none());
        // A 1:1 sealed payload is not a group envelope.
        let sealed = tern_crypto::seal(&tern_crypto::SealKey::generate().public(), b"x");
        assert!(unwrap(&key, &sealed).is_none());
    }
}
