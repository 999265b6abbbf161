//! The in-memory index of held envelopes: per mailbox, sequence number to
//! log location, message id to sequence number (for de-duplication), and the
//! next sequence number. It is rebuilt from the envelope log at start, so it
//! is never written to disk itself. Mailboxes live in shards, each behind
//! its own lock, which also serialises changes to one mailbox.
//!
//! Memory: about 100 bytes per held envelope and per mailbox touched since
//! the last checkpoint (docs/operations.md).

use super::envelope_log::Location;
use super::{MailboxId, MessageId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Shards of the index; a mailbox's shard is picked from its (random) id.
const SHARDS: usize = 64;

/// One held envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where its record is.
    pub at: Location,
    /// The sender's message id.
    pub message_id: MessageId,
    /// When it expires unless acked.
    pub expires_ms: u64,
    /// Payload bytes (for the quota).
    pub payload_len: u32,
}

/// What the relay holds for one mailbox.
#[derive(Debug, Default)]
pub struct MailboxState {
    /// Sequence number the next envelope gets.
    pub next_seq: u64,
    /// The `next_seq` last written to the mailbox's durable record; the
    /// log must not lose the only trace of a higher one.
    pub persisted_seq: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Held envelopes by sequence number.
    pub envelopes: BTreeMap<u64, Entry>,
    /// Held envelopes by message id.
    pub by_message: HashMap<MessageId, u64>,
}

impl MailboxState {
    /// A mailbox holding nothing, whose durable record says `next_seq`.
    pub fn new(next_seq: u64) -> Self {
        Self {
            next_seq,
            persisted_seq: next_seq,
            ..Self::default()
        }
    }

    /// Hold an envelope (replacing an older copy of the same one).
    pub fn insert(&mut self, seq: u64, entry: Entry) {
        if let Some(old) = self.envelopes.insert(seq, entry) {
            self.bytes = self.bytes.saturating_sub(u64::from(old.payload_len));
            self.by_message.remove(&old.message_id);
        }
        self.bytes += u64::from(entry.payload_len);
        self.by_message.insert(entry.message_id, seq);
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Stop holding an envelope.
    pub fn remove(&mut self, seq: u64) -> Option<Entry> {
        let old = self.envelopes.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(u64::from(old.payload_len));
        if self.by_message.get(&old.message_id) == Some(&seq) {
            self.by_message.remove(&old.message_id);
        }
        Some(old)
    }

    /// Nothing held and nothing unsaved: the state can be dropped from
    /// memory and reloaded from the mailbox record when needed.
    pub fn idle(&self) -> bool {
        self.envelopes.is_empty() && self.next_seq <= self.persisted_seq
    }
}

/// One shard: the mailboxes whose ids map to it.
pub type Shard = HashMap<MailboxId, MailboxState>;

/// All mailboxes with state in memory.
pub struct Index {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Index {
    /// Lock the shard holding `mailbox`.
    pub fn shard(&self, mailbox: &MailboxId) -> Option<MutexGuard<'_, Shard>> {
        self.shards[Self::shard_id(mailbox)].lock().ok()
    }

    /// The number of the shard holding `mailbox`.
    pub fn shard_id(mailbox: &MailboxId) -> usize {
        usize::from(mailbox[0]) % SHARDS
    }

    /// Lock the shards holding `mailboxes`, each once, in ascending order:
    /// the one order every multi-shard lock takes, so two of them cannot
    /// deadlock (everything else holds one shard at a time).
    pub fn lock_many<'a>(
        &self,
        mailboxes: impl IntoIterator<Item = &'a MailboxId>,
    ) -> Option<BTreeMap<usize, MutexGuard<'_, Shard>>> {
        let ids: std::collections::BTreeSet<usize> =
            mailboxes.into_iter().map(Self::shard_id).collect();
        let mut locked = BTreeMap::new();
        for i in ids {
            locked.insert(i, self.shards[i].lock().ok()?);
        }
        Some(locked)
    }

    /// Lock each shard in turn.
    pub fn shards(&self) -> impl Iterator<Item = Option<MutexGuard<'_, Shard>>> {
        self.shards.iter().map(|s| s.lock().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u8, len: u32) -> Entry {
        Entry {
            at: Location {
                segment: 1,
                offset: 8,
                len: 100,
            },
            message_id: [id; 16],
            expires_ms: 0,
            payload_len: len,
        }
    }

    #[test]
    fn counts_follow_inserts_replacements_and_removals() {
        let mut m = MailboxState::new(5);
        m.insert(5, entry(1, 10));
        m.insert(6, entry(2, 20));
        assert_eq!((m.next_seq, m.bytes), (7, 30));
        assert!(!m.idle());
        // A copy of seq 5 written elsewhere replaces it, not adds to it.
        m.insert(5, entry(1, 10));
        assert_eq!((m.envelopes.len(), m.bytes), (2, 30));
        assert_eq!(m.by_message.get(&[1; 16]), Some(&5));
        assert_eq!(m.remove(5).map(|e| e.payload_len), Some(10));
        assert_eq!(m.remove(5), None);
        assert_eq!(m.by_message.get(&[1; 16]), None);
        m.remove(6);
        assert_eq!(m.bytes, 0);
        assert!(!m.idle(), "next_seq 7 is not saved yet");
        m.persisted_seq = 7;
        assert!(m.idle());
    }
}
