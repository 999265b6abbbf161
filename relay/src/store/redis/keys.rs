//! Key names and the packed envelope format of the Redis Cluster engine.
//! Every key of one mailbox carries the hash tag `{<mailbox hex>}`, so all
//! of a mailbox's keys live in one slot and one function call can change
//! them together; a token's record is keyed by its own hash and points to
//! its mailbox. Nothing here holds more than the relay already knows: ids,
//! counters, token hashes and sealed payloads.

use crate::store::{MailboxId, StoredEnvelope, TokenHash};

/// Buckets of the expiry index (`sweep:{bN}`): mailboxes by their earliest
/// expiry, spread over slots so no one shard holds them all.
pub const SWEEP_BUCKETS: u8 = 32;

/// The keys of one mailbox, in the order the functions take them.
pub struct MailboxKeys {
    /// `m:{H}`: the mailbox record.
    pub record: String,
    /// `e:{H}`: envelopes by seq.
    pub envelopes: String,
    /// `x:{H}`: seqs by expiry.
    pub expiry: String,
    /// `d:{H}`: seq by message id.
    pub dedup: String,
    /// `k:{H}`: live token hashes.
    pub tokens: String,
}

impl MailboxKeys {
    /// The keys of `mailbox`.
    pub fn of(mailbox: &MailboxId) -> Self {
        let h = hex::encode(mailbox);
        Self {
            record: format!("m:{{{h}}}"),
            envelopes: format!("e:{{{h}}}"),
            expiry: format!("x:{{{h}}}"),
            dedup: format!("d:{{{h}}}"),
            tokens: format!("k:{{{h}}}"),
        }
    }

    /// The four keys an append, ack or sweep touches.
    pub fn envelope_keys(&self) -> [&str; 4] {
        [&self.record, &self.envelopes, &self.expiry, &self.dedup]
    }
}

/// `t:{<token hash hex>}`: the token's mailbox and whether it is revoked.
pub fn token_key(hash: &TokenHash) -> String {
    format!("t:{{{}}}", hex::encode(hash))
}

/// The sharded pub/sub channel woken when `mailbox` stores something; it
/// hashes to the mailbox's slot, so it is served by the mailbox's shard.
pub fn wake_channel(mailbox: &MailboxId) -> String {
    format!("w:{{{}}}", hex::encode(mailbox))
}

/// The mailbox a wake channel names, if it is one.
pub fn mailbox_of_channel(channel: &[u8]) -> Option<MailboxId> {
    let hex_id = channel.strip_prefix(b"w:{")?.strip_suffix(b"}")?;
    let bytes = hex::decode(hex_id).ok()?;
    MailboxId::try_from(bytes.as_slice()).ok()
}

/// The expiry-index bucket of `mailbox`.
pub fn sweep_key(mailbox: &MailboxId) -> String {
    sweep_bucket(mailbox[0] % SWEEP_BUCKETS)
}

/// The expiry-index key of bucket `n`.
pub fn sweep_bucket(n: u8) -> String {
    format!("sweep:{{b{n}}}")
}

/// A token record's value: the mailbox, then 1 if revoked.
pub fn token_value(mailbox: &MailboxId, revoked: bool) -> Vec<u8> {
    let mut v = mailbox.to_vec();
    v.push(u8::from(revoked));
    v
}

/// Read a token record's value back.
pub fn parse_token(v: &[u8]) -> Option<(MailboxId, bool)> {
    let (mailbox, flag) = v.split_at_checked(16)?;
    let revoked = match flag {
        [0] => false,
        [1] => true,
        _ => return None,
    };
    Some((MailboxId::try_from(mailbox).ok()?, revoked))
}

/// An envelope as the append function stores it, without its seq prefix:
/// message id, received ms, expires ms (big endian), payload.
pub fn pack(message_id: &[u8; 16], received_ms: u64, expires_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + payload.len());
    v.extend_from_slice(message_id);
    v.extend_from_slice(&received_ms.to_be_bytes());
    v.extend_from_slice(&expires_ms.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Read a stored member (`"<seq>:" .. packed`) back; `None` if it is not
/// one.
pub fn unpack(member: &[u8]) -> Option<StoredEnvelope> {
    let colon = member.iter().position(|b| *b == b':')?;
    let seq = std::str::from_utf8(&member[..colon]).ok()?.parse().ok()?;
    let rest = &member[colon + 1..];
    let (message_id, rest) = rest.split_at_checked(16)?;
    let (received, rest) = rest.split_at_checked(8)?;
    let (expires, payload) = rest.split_at_checked(8)?;
    Some(StoredEnvelope {
        seq,
        message_id: message_id.try_into().ok()?,
        received_ms: u64::from_be_bytes(received.try_into().ok()?),
        expires_ms: u64::from_be_bytes(expires.try_into().ok()?),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_mailbox_share_one_hash_tag() {
        let k = MailboxKeys::of(&[0xab; 16]);
        let tag = format!("{{{}}}", "ab".repeat(16));
        for key in k.envelope_keys().into_iter().chain([k.tokens.as_str()]) {
            assert!(key.ends_with(&tag), "{key}");
        }
        assert!(wake_channel(&[0xab; 16]).ends_with(&tag));
        assert_eq!(
            mailbox_of_channel(wake_channel(&[7; 16]).as_bytes()),
            Some([7; 16])
        );
        assert_eq!(mailbox_of_channel(b"w:{zz}"), None);
    }

    #[test]
    fn envelopes_and_tokens_read_back() {
        let mut member = b"42:".to_vec();
        member.extend(pack(&[3; 16], 10, 20, b"sealed"));
        let e = unpack(&member).unwrap();
        assert_eq!(
            (e.seq, e.message_id, e.received_ms, e.expires_ms),
            (42, [3; 16], 10, 20)
        );
        assert_eq!(e.payload, b"sealed");
        assert_eq!(unpack(b"42:short"), None);
        assert_eq!(
            parse_token(&token_value(&[5; 16], true)),
            Some(([5; 16], true))
        );
        assert_eq!(parse_token(&[5; 17]), None);
    }
}
