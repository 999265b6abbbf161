//! History blobs' plaintext, pure: conversation entries in, padded
//! `HistoryBatch` encodings out, and back. A batch holds one conversation's
//! entries and is padded to the envelope size buckets
//! ([`tern_protocol::padding`]), so the relay learns a blob's bucket, not
//! its length or how many messages it holds.

use crate::groups::GroupMessage;
use crate::store::{Status, StoredMessage};
use prost::Message;
use tern_protocol::padding::{field_len, padding_for};
use tern_protocol::pb;

/// Largest blob plaintext a batch grows to before a new one starts, so a
/// sealed blob stays within one 16 KiB bucket.
pub const BATCH_TARGET: usize = 12 * 1024;
/// Largest sealed blob (the relay's default limit).
pub const MAX_BLOB: usize = 64 * 1024;

/// Which conversation an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Conversation {
    /// With a contact (their identity key).
    Pair([u8; 32]),
    /// A group (its id).
    Group([u8; 16]),
}

impl Conversation {
    /// The tag kind and id the history key hashes into its tag.
    pub fn tag_input(&self) -> (&'static str, &[u8]) {
        match self {
            Conversation::Pair(c) => ("pair", c),
            Conversation::Group(g) => ("group", g),
        }
    }

    /// The conversation an entry belongs to.
    pub fn of(e: &pb::HistoryEntry) -> Option<Self> {
        if e.group_id.is_empty() {
            e.peer[..].try_into().ok().map(Conversation::Pair)
        } else {
            e.group_id[..].try_into().ok().map(Conversation::Group)
        }
    }
}

fn id_bytes(hex_id: &str) -> Vec<u8> {
    hex::decode(hex_id).unwrap_or_default()
}

/// A one-to-one conversation entry as history keeps it.
pub fn pair_entry(m: &StoredMessage) -> pb::HistoryEntry {
    pb::HistoryEntry {
        message_id: id_bytes(&m.id).into(),
        sent_at_ms: m.sent_at_ms,
        outgoing: m.outgoing,
        text: m.text.clone(),
        peer: m.contact.to_vec().into(),
        group_id: Default::default(),
        from: String::new(),
    }
}

/// A group conversation entry as history keeps it.
pub fn group_entry(m: &GroupMessage) -> pb::HistoryEntry {
    pb::HistoryEntry {
        message_id: id_bytes(&m.id).into(),
        sent_at_ms: m.sent_at_ms,
        outgoing: m.outgoing,
        text: m.text.clone(),
        peer: m.author.to_vec().into(),
        group_id: m.group.to_vec().into(),
        from: m.from.clone(),
    }
}

/// The stored one-to-one message for a history entry (restored at `now`).
pub fn stored_message(e: &pb::HistoryEntry, now_ms: u64) -> Option<StoredMessage> {
    Some(StoredMessage {
        id: hex::encode(<[u8; 16]>::try_from(&e.message_id[..]).ok()?),
        contact: e.peer[..].try_into().ok()?,
        outgoing: e.outgoing,
        text: e.text.clone(),
        sent_at_ms: e.sent_at_ms,
        stored_at_ms: now_ms,
        status: if e.outgoing {
            Status::Sent
        } else {
            Status::Received
        },
    })
}

/// The group message for a history entry (restored at `now`).
pub fn group_message(e: &pb::HistoryEntry, now_ms: u64) -> Option<GroupMessage> {
    Some(GroupMessage {
        id: hex::encode(<[u8; 16]>::try_from(&e.message_id[..]).ok()?),
        group: e.group_id[..].try_into().ok()?,
        author: e.peer[..].try_into().ok()?,
        from: e.from.clone(),
        outgoing: e.outgoing,
        text: e.text.clone(),
        sent_at_ms: e.sent_at_ms,
        stored_at_ms: now_ms,
        status: Default::default(),
    })
}

/// One batch's padded plaintext and its time bucket (its oldest entry's
/// time rounded down to `bucket_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The padded `HistoryBatch` encoding.
    pub plaintext: Vec<u8>,
    /// The time bucket the relay files it under, ms.
    pub bucket_ms: u64,
}

/// Pad one batch so that, sealed (adding `overhead`), it lands on a bucket.
fn padded(entries: Vec<pb::HistoryEntry>, overhead: usize, bucket_ms: u64) -> Batch {
    let oldest = entries.iter().map(|e| e.sent_at_ms).min().unwrap_or(0);
    let mut batch = pb::HistoryBatch {
        entries,
        padding: Default::default(),
    };
    let unpadded = batch.encoded_len() + overhead;
    if let Some(filler) = padding_for(unpadded, MAX_BLOB) {
        batch.padding = vec![0u8; filler].into();
        debug_assert_eq!(batch.encoded_len() + overhead, unpadded + field_len(filler));
    }
    Batch {
        plaintext: batch.encode_to_vec(),
        bucket_ms: oldest - oldest % bucket_ms.max(1),
    }
}

/// Cut one conversation's entries (in any order) into batches of about
/// [`BATCH_TARGET`] bytes, oldest first, each padded for `overhead`.
pub fn batches(mut entries: Vec<pb::HistoryEntry>, overhead: usize, bucket_ms: u64) -> Vec<Batch> {
    entries.sort_by_key(|e| e.sent_at_ms);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    for e in entries {
        let len = e.encoded_len() + 4;
        if !current.is_empty() && size + len > BATCH_TARGET {
            out.push(padded(std::mem::take(&mut current), overhead, bucket_ms));
            size = 0;
        }
        size += len;
        current.push(e);
    }
    if !current.is_empty() {
        out.push(padded(current, overhead, bucket_ms));
    }
    out
}

/// The entries of a decrypted batch.
pub fn decode(plaintext: &[u8]) -> Option<Vec<pb::HistoryEntry>> {
    pb::HistoryBatch::decode(plaintext).ok().map(|b| b.entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::padding::is_bucket;

    fn entry(at: u64, text: &str) -> pb::HistoryEntry {
        pb::HistoryEntry {
            message_id: vec![at as u8; 16].into(),
            sent_at_ms: at,
            outgoing: at % 2 == 0,
            text: text.into(),
            peer: vec![1; 32].into(),
            group_id: Default::default(),
            from: String::new(),
        }
    }

    #[test]
    fn batches_are_padded_to_buckets_and_decode_back() {
        let overhead = tern_crypto::history::BLOB_OVERHEAD;
        let entries: Vec<_> = (0..500)
            .map(|i| entry(1_000 + i, "a message of some length"))
            .collect();
        let out = batches(entries.clone(), overhead, 1_000);
        assert!(out.len() > 1, "500 entries do not fit one batch");
        let mut back = Vec::new();
        for b in &out {
            assert!(
                is_bucket(b.plaintext.len() + overhead),
                "{}",
                b.plaintext.len()
            );
            back.extend(decode(&b.plaintext).unwrap());
        }
        assert_eq!(back, entries);
        assert_eq!(out[0].bucket_ms, 1_000);
    }

    #[test]
    fn entries_round_trip_to_stored_messages() {
        let e = entry(42, "hi");
        let m = stored_message(&e, 7).unwrap();
        assert_eq!(pair_entry(&m), e);
        assert_eq!(m.status, Status::Sent);
        assert_eq!(Conversation::of(&e), Some(Conversation::Pair([1; 32])));
    }
}
