//! The message layers, and nothing else: a `pb::Content` (id, time, body) is
//! Olm-encrypted with the pair's session, wrapped in a `pb::Sealed` that
//! names the sender's identity key, and sealed to the recipient's seal key;
//! opening reverses each step and says which one refused. The wrapper is
//! padded so the sealed payload is exactly one size bucket long; opening
//! ignores the padding, and payloads made before padding open as before.
//!
//! Pure: no store, no sockets, no clock. Ids and times are passed in; the
//! only randomness is inside the crypto itself (Olm's ratchet and the
//! per-message ephemeral key of the seal). The client, `tern-bench --e2e`
//! and the fuzz targets that parse peer input all go through these
//! functions, so what is measured and fuzzed is what the client runs.

use prost::Message;
use tern_crypto::{CryptoError, DeviceAccount, OlmCiphertext, PairSession, SealKey};
use tern_protocol::invite::validate_address;
use tern_protocol::pb::{self, content::Body};
use tern_protocol::{limits, padding};
use thiserror::Error;

/// Why a payload from a peer did not open. Each variant is one layer.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The seal did not open: damaged, or sealed to another key.
    #[error("the envelope does not open")]
    Seal,
    /// The opened seal is not a `Sealed` with a 32-byte sender key.
    #[error("the sealed wrapper is malformed")]
    Sealed,
    /// The Olm layer refused (tampered, replayed, another session).
    #[error("the message does not decrypt: {0}")]
    Olm(#[from] CryptoError),
    /// The plaintext is not a `Content`.
    #[error("the content is unreadable")]
    Content,
    /// The content has no 16-byte message id.
    #[error("the content has no message id")]
    NoId,
}

/// Why a payload was not built.
#[derive(Debug, Error)]
pub enum SealError {
    /// Sealed, it is larger than any relay accepts.
    #[error("message too large ({size} bytes, at most {max})")]
    TooLarge {
        /// Its size sealed.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A content with the given id, time and body.
pub fn content(message_id: [u8; 16], sent_at_ms: u64, body: Body) -> pb::Content {
    pb::Content {
        message_id: message_id.to_vec().into(),
        sent_at_ms,
        body: Some(body),
    }
}

/// A text body.
pub fn text_body(text: &str) -> Body {
    Body::Text(pb::Text { body: text.into() })
}

/// Encrypt `content` with `session` and seal it to `peer_seal`, naming
/// `own_identity` inside the seal: the payload the relay stores, padded to
/// a size bucket ([`pad`]). Advances the session; the caller saves it with
/// the payload.
pub fn seal_content(
    session: &mut PairSession,
    own_identity: &[u8; 32],
    peer_seal: &[u8; 32],
    content: &pb::Content,
) -> Vec<u8> {
    let olm = session.encrypt(&content.encode_to_vec());
    let mut sealed = pb::Sealed {
        sender_identity_key: own_identity.to_vec().into(),
        olm_type: olm.olm_type,
        olm_ciphertext: olm.body.into(),
        padding: Default::default(),
    };
    pad(&mut sealed);
    tern_crypto::seal(peer_seal, &sealed.encode_to_vec())
}

/// Fill `sealed.padding` so that, sealed, it is exactly one size bucket
/// long (`tern_protocol::padding`): the relay learns the bucket, not the
/// length. The filler is inside the seal, so the relay cannot strip it.
/// A wrapper too large for any bucket under the envelope limit is left
/// unpadded, and [`check_size`] refuses it.
pub fn pad(sealed: &mut pb::Sealed) {
    sealed.padding = Default::default();
    let unpadded = tern_crypto::SEAL_OVERHEAD + sealed.encoded_len();
    if let Some(filler) = padding::padding_for(unpadded, limits::DEFAULT_MAX_ENVELOPE) {
        sealed.padding = vec![0; filler].into();
    }
}

/// Refuse a payload that a relay's default envelope limit does not take,
/// or that could not be padded to a bucket under it (within two bytes of
/// the limit: sending it unpadded would show its exact length).
pub fn check_size(payload: &[u8]) -> Result<(), SealError> {
    if payload.len() > limits::DEFAULT_MAX_ENVELOPE || !padding::is_bucket(payload.len()) {
        return Err(SealError::TooLarge {
            size: payload.len(),
            max: limits::DEFAULT_MAX_ENVELOPE,
        });
    }
    Ok(())
}

/// What the seal held: who says they sent it, and their Olm message.
#[derive(Debug)]
pub struct Unsealed {
    /// The sender's identity key, as the sender claims it (Olm proves it).
    pub sender: [u8; 32],
    /// The Olm message.
    pub olm: OlmCiphertext,
}

/// Open the seal with our seal key and decode the wrapper.
pub fn unseal(own_seal: &SealKey, payload: &[u8]) -> Result<Unsealed, OpenError> {
    let opened = tern_crypto::open(own_seal, payload).map_err(|_| OpenError::Seal)?;
    let sealed = pb::Sealed::decode(&opened[..]).map_err(|_| OpenError::Sealed)?;
    let sender = key32(&sealed.sender_identity_key).ok_or(OpenError::Sealed)?;
    Ok(Unsealed {
        sender,
        olm: OlmCiphertext {
            olm_type: sealed.olm_type,
            body: sealed.olm_ciphertext.to_vec(),
        },
    })
}

/// Which session an Olm message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChoice {
    /// The session we hold with the sender.
    Existing,
    /// A new session, accepted from this pre-key message.
    New,
    /// Neither: a normal message from someone we hold no session with.
    Unknown,
}

/// Route an Olm message: a normal message goes to the session we hold, and
/// so does a pre-key message of that session's own handshake (the peer
/// repeats pre-key messages until it hears from us); any other pre-key
/// message starts a new session.
pub fn choose_session(existing: Option<&PairSession>, olm: &OlmCiphertext) -> SessionChoice {
    match existing {
        Some(s) if !olm.is_pre_key() || s.matches_pre_key(olm) => SessionChoice::Existing,
        _ if olm.is_pre_key() => SessionChoice::New,
        _ => SessionChoice::Unknown,
    }
}

/// A content as it came out of the Olm layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// Its message id.
    pub id: [u8; 16],
    /// When the sender says it wrote it, ms since the epoch.
    pub sent_at_ms: u64,
    /// What it carries (`None`: a body kind this client does not know).
    pub body: Option<Body>,
}

/// Decode an Olm plaintext as a `Content` with a 16-byte id.
pub fn read_content(plaintext: &[u8]) -> Result<Opened, OpenError> {
    let content = pb::Content::decode(plaintext).map_err(|_| OpenError::Content)?;
    let id = <[u8; 16]>::try_from(&content.message_id[..]).map_err(|_| OpenError::NoId)?;
    Ok(Opened {
        id,
        sent_at_ms: content.sent_at_ms,
        body: content.body,
    })
}

/// Decrypt with the session we hold and read the content.
pub fn decrypt_content(
    session: &mut PairSession,
    olm: &OlmCiphertext,
) -> Result<Opened, OpenError> {
    read_content(&session.decrypt(olm)?)
}

/// Accept a new session from a pre-key message on `account` (which uses up
/// a one-time key: pass a copy if the message may yet be refused) and read
/// the content.
pub fn accept_content(
    account: &mut DeviceAccount,
    sender: &[u8; 32],
    olm: &OlmCiphertext,
) -> Result<(PairSession, Opened), OpenError> {
    let (session, plaintext) = account.accept_session(sender, &olm.body)?;
    Ok((session, read_content(&plaintext)?))
}

/// Open a payload from the one peer we hold `session` with: every layer is
/// checked as the client checks it, and the sender must be `peer_identity`.
pub fn open_from_peer(
    own_seal: &SealKey,
    peer_identity: &[u8; 32],
    session: &mut PairSession,
    payload: &[u8],
) -> Result<Opened, OpenError> {
    let Unsealed { sender, olm } = unseal(own_seal, payload)?;
    if &sender != peer_identity {
        return Err(OpenError::Sealed);
    }
    match choose_session(Some(session), &olm) {
        SessionChoice::Existing => decrypt_content(session, &olm),
        // A fresh handshake from the same peer would replace the session;
        // a caller holding one session treats it as refused.
        SessionChoice::New | SessionChoice::Unknown => Err(OpenError::Olm(CryptoError::Decrypt)),
    }
}

/// A contact's introduction, checked: how to reach them and their keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introduction {
    /// The name they gave (not yet sanitized or made unique).
    pub name: String,
    /// Their Ed25519 signing key.
    pub signing_key: [u8; 32],
    /// Their seal key (a usable X25519 point).
    pub seal_key: [u8; 32],
    /// Their relay URL (validated).
    pub relay_url: String,
    /// Their mailbox.
    pub mailbox_id: [u8; 16],
    /// A token for their mailbox.
    pub send_token: [u8; 32],
    /// The token of ours they used (from our invite), if well formed.
    pub token_given: Option<[u8; 32]>,
}

/// Check a contact hello; `None` if any part of it is unusable.
pub fn read_introduction(h: pb::ContactHello) -> Option<Introduction> {
    let url = validate_address(h.reply_to.as_ref()).ok()?;
    let address = h.reply_to.unwrap_or_default();
    let signing_key = key32(&h.signing_key)?;
    let seal_key = key32(&h.seal_key)?;
    let send_token = key32(&address.send_token)?;
    let mailbox_id = <[u8; 16]>::try_from(&address.mailbox_id[..]).ok()?;
    tern_crypto::validate_seal_public(&seal_key).ok()?;
    Some(Introduction {
        name: h.name,
        signing_key,
        seal_key,
        relay_url: url.to_string(),
        mailbox_id,
        send_token,
        token_given: key32(&h.invite_token),
    })
}

/// Our reply address as a contact stores it.
pub fn address(relay_url: &str, mailbox_id: &[u8; 16], token: &[u8; 32]) -> pb::Address {
    pb::Address {
        relay_url: relay_url.to_string(),
        mailbox_id: mailbox_id.to_vec().into(),
        send_token: token.to_vec().into(),
    }
}

/// `b` as a 32-byte key, if it is one.
pub fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alice starts a session with Bob; returns (alice, bob account, alice session).
    fn pair() -> (DeviceAccount, DeviceAccount, PairSession) {
        let alice = DeviceAccount::new();
        let mut bob = DeviceAccount::new();
        let otk = bob.new_one_time_key();
        let s = alice.start_session(&bob.identity_key(), &otk).unwrap();
        (alice, bob, s)
    }

    #[test]
    fn a_first_message_opens_with_a_new_session_then_the_existing_one() {
        let (alice, mut bob, mut to_bob) = pair();
        let first = seal_content(
            &mut to_bob,
            &alice.identity_key(),
            &bob.seal_public(),
            &content([1; 16], 5, text_body("hi")),
        );
        let u = unseal(bob.seal_key(), &first).unwrap();
        assert_eq!(u.sender, alice.identity_key());
        assert_eq!(choose_session(None, &u.olm), SessionChoice::New);
        let (mut at_bob, opened) = accept_content(&mut bob, &u.sender, &u.olm).unwrap();
        assert_eq!(opened.id, [1; 16]);
        assert_eq!(opened.sent_at_ms, 5);
        assert_eq!(opened.body, Some(text_body("hi")));

        // Alice has not heard back: her next message is a pre-key message
        // of the same handshake, which goes to the session Bob holds.
        let second = seal_content(
            &mut to_bob,
            &alice.identity_key(),
            &bob.seal_public(),
            &content([2; 16], 6, text_body("again")),
        );
        let u = unseal(bob.seal_key(), &second).unwrap();
        assert!(u.olm.is_pre_key());
        assert_eq!(
            choose_session(Some(&at_bob), &u.olm),
            SessionChoice::Existing
        );
        let opened =
            open_from_peer(bob.seal_key(), &alice.identity_key(), &mut at_bob, &second).unwrap();
        assert_eq!(opened.id, [2; 16]);
        // A replay does not open.
        assert!(
            open_from_peer(bob.seal_key(), &alice.identity_key(), &mut at_bob, &second).is_err()
        );
    }

    #[test]
    fn each_layer_refuses_what_is_not_its_own() {
        let (alice, bob, mut to_bob) = pair();
        let payload = seal_content(
            &mut to_bob,
            &alice.identity_key(),
            &bob.seal_public(),
            &content([1; 16], 0, text_body("x")),
        );
        let stranger = SealKey::generate();
        assert!(matches!(unseal(&stranger, &payload), Err(OpenError::Seal)));
        let bad_wrapper = tern_crypto::seal(&bob.seal_public(), b"\x0a\x01\x00");
        assert!(matches!(
            unseal(bob.seal_key(), &bad_wrapper),
            Err(OpenError::Sealed)
        ));
        assert!(matches!(read_content(b"\xff"), Err(OpenError::Content)));
        let no_id = pb::Content::default().encode_to_vec();
        assert!(matches!(read_content(&no_id), Err(OpenError::NoId)));
        let normal = OlmCiphertext {
            olm_type: OlmCiphertext::NORMAL,
            body: vec![1, 2, 3],
        };
        assert_eq!(choose_session(None, &normal), SessionChoice::Unknown);
    }

    #[test]
    fn a_hello_needs_every_key_and_a_valid_address() {
        let url = format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32));
        let seal = SealKey::generate().public();
        let good = pb::ContactHello {
            name: "bob".into(),
            reply_to: Some(address(&url, &[3; 16], &[4; 32])),
            signing_key: vec![5; 32].into(),
            seal_key: seal.to_vec().into(),
            invite_token: vec![6; 32].into(),
            ..Default::default()
        };
        let intro = read_introduction(good.clone()).unwrap();
        assert_eq!(intro.mailbox_id, [3; 16]);
        assert_eq!(intro.token_given, Some([6; 32]));
        let mut short = good.clone();
        short.signing_key = vec![5; 31].into();
        assert_eq!(read_introduction(short), None);
        let mut weak = good.clone();
        weak.seal_key = vec![0; 32].into();
        assert_eq!(read_introduction(weak), None);
        let mut nowhere = good;
        nowhere.reply_to = None;
        assert_eq!(read_introduction(nowhere), None);
    }

    #[test]
    fn oversized_or_unbucketed_payloads_are_refused() {
        assert!(check_size(&vec![0; limits::DEFAULT_MAX_ENVELOPE]).is_ok());
        assert!(check_size(&vec![0; 256]).is_ok());
        assert!(check_size(&vec![0; limits::DEFAULT_MAX_ENVELOPE + 1]).is_err());
        assert!(check_size(&vec![0; limits::DEFAULT_MAX_ENVELOPE - 1]).is_err());
        assert!(check_size(&vec![0; 300]).is_err());
    }

    #[test]
    fn an_unpadded_payload_from_an_older_client_still_opens() {
        let (alice, mut bob, mut to_bob) = pair();
        let olm = to_bob.encrypt(&content([7; 16], 1, text_body("old")).encode_to_vec());
        let sealed = pb::Sealed {
            sender_identity_key: alice.identity_key().to_vec().into(),
            olm_type: olm.olm_type,
            olm_ciphertext: olm.body.into(),
            padding: Default::default(),
        };
        let payload = tern_crypto::seal(&bob.seal_public(), &sealed.encode_to_vec());
        let u = unseal(bob.seal_key(), &payload).unwrap();
        let (_, opened) = accept_content(&mut bob, &u.sender, &u.olm).unwrap();
        assert_eq!(opened.body, Some(text_body("old")));
    }

    #[test]
    fn a_hello_and_a_short_text_fall_in_buckets() {
        let (alice, bob, mut to_bob) = pair();
        let hello = Body::Hello(pb::ContactHello {
            name: "alice".into(),
            reply_to: Some(address(
                &format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32)),
                &[3; 16],
                &[4; 32],
            )),
            signing_key: vec![5; 32].into(),
            seal_key: vec![9; 32].into(),
            invite_token: vec![6; 32].into(),
            ..Default::default()
        });
        for body in [hello, text_body("hi")] {
            let payload = seal_content(
                &mut to_bob,
                &alice.identity_key(),
                &bob.seal_public(),
                &content([1; 16], 0, body),
            );
            assert!(padding::is_bucket(payload.len()), "{}", payload.len());
            assert!(check_size(&payload).is_ok());
        }
    }

    mod padded {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            /// Every text the client can send seals to exactly a bucket, and
            /// opening ignores the padding: the same text comes back.
            #[test]
            fn every_sealed_text_is_a_bucket_and_opens(len in 0usize..70_000) {
                let (alice, mut bob, mut to_bob) = pair();
                let text = "x".repeat(len);
                let payload = seal_content(
                    &mut to_bob,
                    &alice.identity_key(),
                    &bob.seal_public(),
                    &content([1; 16], 0, text_body(&text)),
                );
                if check_size(&payload).is_err() {
                    // Only texts too large for any bucket are refused.
                    prop_assert!(len > limits::DEFAULT_MAX_ENVELOPE - 400);
                    return Ok(());
                }
                prop_assert!(padding::is_bucket(payload.len()));
                let u = unseal(bob.seal_key(), &payload).unwrap();
                let (_, opened) = accept_content(&mut bob, &u.sender, &u.olm).unwrap();
                prop_assert_eq!(opened.body, Some(text_body(&text)));
            }
        }
    }
}
