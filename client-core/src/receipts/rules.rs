//! The receipts' rules, pure: where a message stands for one recipient
//! and how news moves it on ([`RecipientStatus`]: never backwards), which
//! ids of an incoming batch count ([`accepted`]: only messages we sent to
//! that peer, read only when we show read receipts), and how the receipts
//! waiting to go out become batches ([`batches`]: one per peer, many ids).

use crate::store::ContactId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most message ids one receipt batch carries (16 bytes each: a full
/// batch seals to a few kilobytes, far under the envelope limit).
pub const MAX_IDS_PER_BATCH: usize = 256;

/// Where a sent message stands for one recipient, furthest first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptState {
    /// Waiting in the outbox.
    Queued,
    /// The recipient's relay holds it durably (its acknowledgement).
    Sent,
    /// A device of the recipient stored it (their receipt).
    Delivered,
    /// The recipient saw it (their receipt).
    Read,
    /// Refused for good by the recipient's relay.
    Failed,
}

impl ReceiptState {
    /// The lowercase name the CLI prints.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptState::Queued => "queued",
            ReceiptState::Sent => "sent",
            ReceiptState::Delivered => "delivered",
            ReceiptState::Read => "read",
            ReceiptState::Failed => "failed",
        }
    }
}

/// What we know of one sent message at one recipient: when each step
/// happened (ms since the epoch, our clock when the news arrived).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    /// When their relay acknowledged it durably.
    #[serde(default)]
    pub sent_at_ms: Option<u64>,
    /// When their delivered (or read) receipt arrived.
    #[serde(default)]
    pub delivered_at_ms: Option<u64>,
    /// When their read receipt arrived.
    #[serde(default)]
    pub read_at_ms: Option<u64>,
    /// Why their relay refused it, if it did.
    #[serde(default)]
    pub failed: Option<String>,
}

impl RecipientStatus {
    /// The furthest step reached.
    pub fn state(&self) -> ReceiptState {
        if self.read_at_ms.is_some() {
            ReceiptState::Read
        } else if self.delivered_at_ms.is_some() {
            ReceiptState::Delivered
        } else if self.failed.is_some() {
            ReceiptState::Failed
        } else if self.sent_at_ms.is_some() {
            ReceiptState::Sent
        } else {
            ReceiptState::Queued
        }
    }

    /// When the furthest step was reached (`None` while queued or failed).
    pub fn time_ms(&self) -> Option<u64> {
        self.read_at_ms.or(self.delivered_at_ms).or(self.sent_at_ms)
    }

    /// The relay acknowledged it at `at`. Returns whether anything changed.
    pub fn sent(&mut self, at: u64) -> bool {
        set_once(&mut self.sent_at_ms, at)
    }

    /// The relay refused it for good.
    pub fn fail(&mut self, why: &str) -> bool {
        if self.failed.is_some() || self.sent_at_ms.is_some() {
            return false;
        }
        self.failed = Some(why.to_string());
        true
    }

    /// A delivered receipt arrived at `at`. A receipt proves the relay had
    /// it, so sent is implied (a receipt may overtake the relay's answer).
    pub fn delivered(&mut self, at: u64) -> bool {
        let changed = set_once(&mut self.delivered_at_ms, at);
        set_once(&mut self.sent_at_ms, at) || changed
    }

    /// A read receipt arrived at `at`; read implies delivered.
    pub fn read(&mut self, at: u64) -> bool {
        let changed = set_once(&mut self.read_at_ms, at);
        self.delivered(at) || changed
    }
}

fn set_once(slot: &mut Option<u64>, at: u64) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(at);
    true
}

/// Per-recipient status of one message we sent, kept by message id. The
/// map's keys are the recipients' identity keys (hex): one for a message
/// to a contact, one per member for a group message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    /// Key of the conversation entry (see [`crate::store::message_key`]).
    pub message_key: Vec<u8>,
    /// Each recipient's status, by identity key (hex).
    pub recipients: BTreeMap<String, RecipientStatus>,
}

/// A receipt waiting to go out: to whom, and whether the user has seen
/// the message (read) or only stored it (delivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReceipt {
    /// The peer who sent the message.
    pub peer: ContactId,
    /// Shown to the user (and read receipts are on).
    pub read: bool,
}

/// Which kind of receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    /// A device stored it.
    Delivered,
    /// The user saw it.
    Read,
}

/// Which ids of a batch from `peer` to apply, and as what. An id counts
/// only if we sent that message to `peer` (`record_of` finds the record;
/// receipts from anyone else are ignored); read ids count as delivered when
/// we do not show read receipts (`show_read` false, as in Signal).
pub fn accepted<'a>(
    peer: &str,
    delivered: impl IntoIterator<Item = [u8; 16]>,
    read: impl IntoIterator<Item = [u8; 16]>,
    show_read: bool,
    record_of: impl Fn(&[u8; 16]) -> Option<&'a ReceiptRecord>,
) -> Vec<([u8; 16], ReceiptKind)> {
    let as_read = if show_read {
        ReceiptKind::Read
    } else {
        ReceiptKind::Delivered
    };
    let tagged = delivered
        .into_iter()
        .map(|id| (id, ReceiptKind::Delivered))
        .chain(read.into_iter().map(|id| (id, as_read)));
    let mut out: Vec<([u8; 16], ReceiptKind)> = Vec::new();
    for (id, kind) in tagged {
        let ours = record_of(&id).is_some_and(|r| r.recipients.contains_key(peer));
        if ours && !out.iter().any(|(i, k)| *i == id && *k == kind) {
            out.push((id, kind));
        }
    }
    out
}

/// One receipt message to send: to whom, and the ids it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The peer it goes to.
    pub peer: ContactId,
    /// Ids stored but not (yet) shown.
    pub delivered: Vec<[u8; 16]>,
    /// Ids shown (read implies delivered, so they are not repeated).
    pub read: Vec<[u8; 16]>,
}

/// The waiting receipts as batches: one per peer (more only past
/// [`MAX_IDS_PER_BATCH`] ids), peers in key order, ids in the order given.
pub fn batches(pending: &[([u8; 16], PendingReceipt)]) -> Vec<Batch> {
    let mut by_peer: BTreeMap<ContactId, Vec<Batch>> = BTreeMap::new();
    for (id, p) in pending {
        let list = by_peer.entry(p.peer).or_default();
        let full = list
            .last()
            .is_none_or(|b| b.delivered.len() + b.read.len() >= MAX_IDS_PER_BATCH);
        if full {
            list.push(Batch {
                peer: p.peer,
                delivered: Vec::new(),
                read: Vec::new(),
            });
        }
        if let Some(b) = list.last_mut() {
            if p.read {
                b.read.push(*id);
            } else {
                b.delivered.push(*id);
            }
        }
    }
    by_peer.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_only_moves_forward_and_read_implies_delivered() {
        let mut s = RecipientStatus::default();
        assert_eq!(s.state(), ReceiptState::Queued);
        assert!(s.sent(10));
        assert_eq!((s.state(), s.time_ms()), (ReceiptState::Sent, Some(10)));
        assert!(s.read(30));
        assert_eq!(s.state(), ReceiptState::Read);
        assert_eq!(s.delivered_at_ms, Some(30));
        // A late delivered receipt changes nothing.
        assert!(!s.delivered(40));
        assert!(!s.sent(50));
        assert_eq!((s.state(), s.time_ms()), (ReceiptState::Read, Some(30)));
    }

    #[test]
    fn a_receipt_overtaking_the_relays_answer_counts_as_sent_too() {
        let mut s = RecipientStatus::default();
        assert!(s.delivered(5));
        assert_eq!(s.sent_at_ms, Some(5));
        assert!(!s.sent(9), "the relay's late answer keeps the first time");
        assert!(!s.fail("no"), "a delivered message cannot fail");
        assert_eq!(s.state(), ReceiptState::Delivered);
    }

    fn record_for(peer: &str) -> ReceiptRecord {
        let mut r = ReceiptRecord::default();
        r.recipients
            .insert(peer.to_string(), RecipientStatus::default());
        r
    }

    #[test]
    fn only_the_recipient_of_a_message_may_acknowledge_it() {
        let bob = record_for("bob");
        let lookup = |id: &[u8; 16]| (id[0] == 1).then_some(&bob);
        // Bob's receipts for his message count; for an unknown id, not.
        let got = accepted("bob", [[1; 16], [2; 16]], [[1; 16]], true, lookup);
        assert_eq!(
            got,
            [
                ([1; 16], ReceiptKind::Delivered),
                ([1; 16], ReceiptKind::Read)
            ]
        );
        // Carol's receipt for Bob's message is ignored.
        assert!(accepted("carol", [[1; 16]], [[1; 16]], true, lookup).is_empty());
    }

    #[test]
    fn read_receipts_off_sees_them_as_delivered_only() {
        let bob = record_for("bob");
        let got = accepted("bob", [], [[1; 16], [1; 16]], false, |_| Some(&bob));
        assert_eq!(got, [([1; 16], ReceiptKind::Delivered)]);
    }

    #[test]
    fn one_batch_per_peer_carrying_many_ids() {
        let (a, b) = ([1; 32], [2; 32]);
        let p = |peer, read| PendingReceipt { peer, read };
        let pending = vec![
            ([10; 16], p(b, false)),
            ([11; 16], p(a, true)),
            ([12; 16], p(b, true)),
            ([13; 16], p(a, false)),
        ];
        let got = batches(&pending);
        assert_eq!(
            got,
            [
                Batch {
                    peer: a,
                    delivered: vec![[13; 16]],
                    read: vec![[11; 16]]
                },
                Batch {
                    peer: b,
                    delivered: vec![[10; 16]],
                    read: vec![[12; 16]]
                },
            ]
        );
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn a_huge_backlog_splits_into_bounded_batches() {
        let pending: Vec<_> = (0..MAX_IDS_PER_BATCH * 2 + 1)
            .map(|i| {
                let mut id = [0; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                (
                    id,
                    PendingReceipt {
                        peer: [7; 32],
                        read: i % 2 == 0,
                    },
                )
            })
            .collect();
        let got = batches(&pending);
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|b| b.delivered.len() + b.read.len() <= MAX_IDS_PER_BATCH));
        let total: usize = got.iter().map(|b| b.delivered.len() + b.read.len()).sum();
        assert_eq!(total, pending.len());
    }
}
