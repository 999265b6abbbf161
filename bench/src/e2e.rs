//! End-to-end mode (`--e2e`): every message is encrypted the way
//! `tern-client` encrypts a text before it goes to the relay, and opened the
//! way the client opens it on receipt, so the figures include the clients'
//! real crypto and not only the relay. Both directions call the client's own
//! message layers ([`tern_client::layers`]), so the bench measures the code
//! the client runs, not a copy of it.
//!
//! Sending ([`layers::seal_content`]): the text goes in a `pb::Content`
//! (16-byte random id, wall-clock `sent_at_ms`, `Text` body), which is
//! Olm-encrypted with the pair's [`PairSession`], wrapped in a `pb::Sealed`
//! naming the sender's identity key, and sealed to the recipient's seal key
//! (an ephemeral X25519 per message), padded inside the seal so the payload
//! is exactly one size bucket (256 B, 1 KiB, 4 KiB, …). Receiving
//! ([`layers::open_from_peer`]): open the seal, decode `Sealed`, check the
//! sender, route the Olm message to the session, decrypt, decode `Content`
//! with its id; then require a text. Any failure is an error of the run.
//!
//! The text opens with the send time and index as [`STAMP_TEXT_LEN`] hex
//! characters, so latency is taken after decryption; the rest is filler.
//!
//! Not included: what the client does around the crypto on its own disk
//! (an encrypted session pickle per message, the outbox and inbox in its
//! local store). That is the client's storage cost, not the message's.
//!
//! Each pair shakes hands at setup, in memory, with the same calls the
//! client makes: the sender starts an Olm session with the receiver's
//! identity key and a fresh one-time key, the receiver accepts it from the
//! first (pre-key) message, and answers once. The answer makes the timed
//! messages normal Olm messages, as in a conversation under way; without
//! it every message would be a pre-key message.

use anyhow::{bail, Context};
use std::ops::Range;
use std::time::{Duration, Instant};
use tern_client::layers;
use tern_client::now_ms;
use tern_crypto::{DeviceAccount, PairSession, SealKey};
use tern_protocol::pb::content::Body;

/// Characters at the start of each text that carry its send time and index
/// (two 64-bit numbers, 16 hex digits each): the smallest text in E2E mode.
pub const STAMP_TEXT_LEN: usize = 32;

/// One device's end of an Olm conversation with one contact: what it needs
/// to seal texts to the contact and to open what the contact sealed to it.
pub struct Channel {
    own_identity: [u8; 32],
    own_seal: SealKey,
    peer_identity: [u8; 32],
    peer_seal: [u8; 32],
    session: PairSession,
}

impl Channel {
    /// Encrypt `text` for the peer as the client does: the sealed payload the
    /// relay stores.
    pub fn seal_text(&mut self, text: String) -> Vec<u8> {
        let content = layers::content(
            rand::random::<[u8; 16]>(),
            now_ms(),
            Body::Text(tern_protocol::pb::Text { body: text }),
        );
        layers::seal_content(
            &mut self.session,
            &self.own_identity,
            &self.peer_seal,
            &content,
        )
    }

    /// Open a payload the peer sealed to us and return its text: seal,
    /// sender, Olm and content are all checked, as the client checks them.
    pub fn open_text(&mut self, payload: &[u8]) -> anyhow::Result<String> {
        let opened = layers::open_from_peer(
            &self.own_seal,
            &self.peer_identity,
            &mut self.session,
            payload,
        )?;
        match opened.body {
            Some(Body::Text(t)) => Ok(t.body),
            _ => bail!("content is not a text"),
        }
    }
}

/// Start an Olm session from a new sender device to `receiver` and complete
/// the handshake in memory (first message, acceptance, one answer).
/// Returns the sender's end and the receiver's end.
pub fn handshake(receiver: &mut DeviceAccount) -> anyhow::Result<(Channel, Channel)> {
    let sender = DeviceAccount::new();
    let one_time_key = receiver.new_one_time_key();
    let session = sender
        .start_session(&receiver.identity_key(), &one_time_key)
        .context("starting the Olm session")?;
    let mut outbound = Channel {
        own_identity: sender.identity_key(),
        own_seal: sender.seal_key().clone(),
        peer_identity: receiver.identity_key(),
        peer_seal: receiver.seal_public(),
        session,
    };
    let first = outbound.seal_text("hello".into());

    // The receiver has no session yet: it accepts one from the pre-key
    // message, as the client does with a contact's first message.
    let first = layers::unseal(receiver.seal_key(), &first).context("opening the first seal")?;
    if layers::choose_session(None, &first.olm) != layers::SessionChoice::New {
        bail!("the first message is not a pre-key message");
    }
    let (session, _) = layers::accept_content(receiver, &sender.identity_key(), &first.olm)
        .context("accepting the Olm session")?;
    let mut inbound = Channel {
        own_identity: receiver.identity_key(),
        own_seal: receiver.seal_key().clone(),
        peer_identity: sender.identity_key(),
        peer_seal: sender.seal_public(),
        session,
    };

    let answer = inbound.seal_text("hello back".into());
    outbound
        .open_text(&answer)
        .context("the sender reading the answer")?;
    Ok((outbound, inbound))
}

/// The text of message `index` sent at `nanos`: the stamp, then filler up to
/// `size` bytes (at least [`STAMP_TEXT_LEN`]).
pub fn stamp_text(size: usize, nanos: u64, index: u64) -> String {
    let mut text = format!("{nanos:016x}{index:016x}");
    text.extend(std::iter::repeat_n(
        'x',
        size.saturating_sub(STAMP_TEXT_LEN),
    ));
    text
}

/// The send time and index from a text made by [`stamp_text`].
pub fn read_stamp(text: &str) -> anyhow::Result<(u64, u64)> {
    let field = |r: Range<usize>| text.get(r).and_then(|s| u64::from_str_radix(s, 16).ok());
    match (field(0..16), field(16..STAMP_TEXT_LEN)) {
        (Some(nanos), Some(index)) => Ok((nanos, index)),
        _ => bail!("text without a send time and index"),
    }
}

/// The per-message crypto cost on one thread with nothing else running.
#[derive(Debug, Clone, Copy)]
pub struct CryptoCost {
    /// Mean time to build, encrypt and seal one text, microseconds.
    pub seal_us: f64,
    /// Mean time to open, decrypt and decode one, microseconds.
    pub open_us: f64,
    /// Bytes of one sealed payload on the wire: its padded size bucket, not
    /// the text's length.
    pub payload_bytes: usize,
}

/// Measure [`CryptoCost`] over `messages` texts of `size` bytes on a fresh
/// pair. Blocks the calling thread.
pub fn calibrate(size: usize, messages: u64) -> anyhow::Result<CryptoCost> {
    let messages = messages.max(1);
    let mut receiver = DeviceAccount::new();
    let (mut outbound, mut inbound) = handshake(&mut receiver)?;
    let start = Instant::now();
    let payloads: Vec<Vec<u8>> = (0..messages)
        .map(|i| outbound.seal_text(stamp_text(size, 0, i)))
        .collect();
    let sealing = start.elapsed();
    let start = Instant::now();
    for (i, p) in payloads.iter().enumerate() {
        let text = inbound.open_text(p)?;
        if read_stamp(&text)?.1 != i as u64 {
            bail!("calibration message {i} came back with another index");
        }
    }
    let opening = start.elapsed();
    let per_message = |d: Duration| d.as_secs_f64() * 1e6 / messages as f64;
    Ok(CryptoCost {
        seal_us: per_message(sealing),
        open_us: per_message(opening),
        payload_bytes: payloads.first().map_or(0, Vec::len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_cross_a_handshaken_pair() -> anyhow::Result<()> {
        let mut receiver = DeviceAccount::new();
        let (mut outbound, mut inbound) = handshake(&mut receiver)?;
        for i in 0..5 {
            let payload = outbound.seal_text(stamp_text(200, 1000 + i, i));
            let text = inbound.open_text(&payload)?;
            assert_eq!(text.len(), 200);
            assert_eq!(read_stamp(&text)?, (1000 + i, i));
            assert!(tern_protocol::padding::is_bucket(payload.len()));
        }
        Ok(())
    }

    #[test]
    fn timed_messages_are_normal_olm_messages() -> anyhow::Result<()> {
        let mut receiver = DeviceAccount::new();
        let (mut outbound, _) = handshake(&mut receiver)?;
        let payload = outbound.seal_text(stamp_text(32, 0, 0));
        let unsealed = layers::unseal(receiver.seal_key(), &payload)?;
        assert!(!unsealed.olm.is_pre_key());
        Ok(())
    }

    #[test]
    fn tampered_and_replayed_payloads_are_errors() -> anyhow::Result<()> {
        let mut receiver = DeviceAccount::new();
        let (mut outbound, mut inbound) = handshake(&mut receiver)?;
        let payload = outbound.seal_text(stamp_text(64, 0, 0));
        let mut bad = payload.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        assert!(inbound.open_text(&bad).is_err());
        assert!(inbound.open_text(&payload).is_ok());
        assert!(inbound.open_text(&payload).is_err());
        Ok(())
    }

    #[test]
    fn a_text_without_a_stamp_is_refused() {
        assert!(read_stamp("short").is_err());
        assert!(read_stamp(&"z".repeat(40)).is_err());
        assert_eq!(
            read_stamp(&stamp_text(0, u64::MAX, 7)).ok(),
            Some((u64::MAX, 7))
        );
    }
}
