//! Group chat, all in the clients: membership ([`state`]), the group
//! message layers ([`envelope`]), the admin commands (`admin`), pairwise
//! control messages (`control`), receiving (`receive`) and the group
//! outbox (`outbox`). docs/decisions.md ("Groups") says why it is built
//! this way; docs/protocol.md §12 has the wire formats.
//!
//! A group is a record in the `group_states` tree: its signed op log, the
//! members' signed cards, this device's outbound Megolm session (with the
//! members it was shared with) and the inbound sessions of the other
//! senders. Membership changes and session keys travel as pairwise Olm
//! messages (`Content.body` `group_update`, `group_key`); a group message is
//! encrypted once and deposited with one multi-recipient send per relay.

mod admin;
mod call;
mod control;
mod devices;
pub mod envelope;
mod outbox;
mod peers;
mod receive;
pub mod state;
mod typing;

pub use call::GroupCall;
pub(crate) use call::Queued;
pub(crate) use outbox::{deposit_groups, GroupDeposit, GroupOutboxItem};

use crate::client::Client;
use crate::error::ClientError;
use crate::store::{ContactId, Status};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tern_protocol::pb;

/// Tree of group records, keyed by group id.
pub(crate) const STATES: &str = "group_states";
/// Tree of group conversation entries: group id, time, message id.
pub(crate) const MESSAGES: &str = "group_messages";
/// Tree of group messages waiting for their relays, by outbox position.
pub(crate) const OUTBOX: &str = "group_outbox";

/// This device's Megolm session for a group and who has its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Outbound {
    /// `GroupSender` pickle (StoreKey-encrypted).
    pub pickle: Vec<u8>,
    /// The envelope key its messages are wrapped in.
    pub envelope_key: [u8; 32],
    /// The members when it was started: if one of them leaves, a new
    /// session is started before the next message.
    pub members: Vec<[u8; 32]>,
    /// Members the session key was sent to.
    pub shared_with: Vec<[u8; 32]>,
}

/// Another member's Megolm session, as we received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Inbound {
    /// Whose session.
    pub sender: [u8; 32],
    /// `GroupReceiver` pickle (StoreKey-encrypted).
    pub pickle: Vec<u8>,
    /// The envelope key that sender wraps its messages in.
    pub envelope_key: [u8; 32],
}

/// Each group's replayed membership, by group id, with the digest of the
/// op set it came from.
pub(crate) type StateCache = std::collections::HashMap<[u8; 16], ([u8; 32], state::State)>;

/// Inbound sessions kept per sender (older ones open late arrivals).
pub(crate) const INBOUND_PER_SENDER: usize = 3;

/// A group as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    /// Random 16-byte id; never shown to a relay.
    pub id: [u8; 16],
    /// Encoded `GroupSignedOp`s (a set; see [`state`]).
    pub ops: Vec<Vec<u8>>,
    /// Encoded `GroupSignedCard`s, one per member that published one.
    pub cards: Vec<Vec<u8>>,
    /// We are a member without a published card yet (making one needs the
    /// home relay, to mint a token).
    pub card_wanted: bool,
    /// Our Megolm session, once we sent.
    pub outbound: Option<Outbound>,
    /// Other senders' sessions.
    pub inbound: Vec<Inbound>,
    /// When we last told the group we are typing (its rate limit).
    #[serde(default)]
    pub typing_sent_at_ms: Option<u64>,
    /// Ops kept from updates that do not (yet) make us a member: a large
    /// state comes in several updates, and the one that adds us may not be
    /// the first. Such a group is not shown until it does.
    #[serde(default)]
    pub unconfirmed: bool,
    /// News (encoded ops and cards) an admin passes on to the members at
    /// the end of a receive batch ([`Client::forward_group_news`]), once
    /// for everything that arrived in it.
    #[serde(default)]
    pub news_ops: Vec<Vec<u8>>,
    /// Cards among the news.
    #[serde(default)]
    pub news_cards: Vec<Vec<u8>>,
    /// Members the news made members: they get the whole state.
    #[serde(default)]
    pub news_whole: Vec<[u8; 32]>,
}

impl GroupRecord {
    /// A record with no ops yet.
    pub(crate) fn empty(id: [u8; 16]) -> Self {
        Self {
            id,
            ops: Vec::new(),
            cards: Vec::new(),
            card_wanted: false,
            outbound: None,
            inbound: Vec::new(),
            typing_sent_at_ms: None,
            unconfirmed: false,
            news_ops: Vec::new(),
            news_cards: Vec::new(),
            news_whole: Vec::new(),
        }
    }

    /// The op log, decoded.
    pub(crate) fn ops(&self) -> Vec<pb::GroupSignedOp> {
        self.ops
            .iter()
            .filter_map(|o| pb::GroupSignedOp::decode(&o[..]).ok())
            .collect()
    }

    /// Replace the op log.
    pub(crate) fn set_ops(&mut self, ops: &[pb::GroupSignedOp]) {
        self.ops = ops.iter().map(|o| o.encode_to_vec()).collect();
    }

    /// The cards, decoded (not verified).
    pub(crate) fn signed_cards(&self) -> Vec<pb::GroupSignedCard> {
        self.cards
            .iter()
            .filter_map(|c| pb::GroupSignedCard::decode(&c[..]).ok())
            .collect()
    }

    /// Replace the cards.
    pub(crate) fn set_cards(&mut self, cards: &[pb::GroupSignedCard]) {
        self.cards = cards.iter().map(|c| c.encode_to_vec()).collect();
    }

    /// The membership now (replayed; [`Client::group_state`] remembers it).
    pub(crate) fn state(&self) -> state::State {
        state::replay(&self.id, &self.ops())
    }

    /// A digest of the op set as stored: the replay's cache key.
    fn ops_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for o in &self.ops {
            h.update((o.len() as u64).to_be_bytes());
            h.update(o);
        }
        h.finalize().into()
    }

    /// Verified cards of current members, by identity key.
    pub(crate) fn cards_by_member(
        &self,
        st: &state::State,
    ) -> BTreeMap<[u8; 32], pb::GroupMemberCard> {
        self.signed_cards()
            .iter()
            .filter_map(|s| state::read_card(&self.id, st, s))
            .filter_map(|c| Some((c.identity_key[..].try_into().ok()?, c)))
            .collect()
    }

    /// The updates that carry everything we know, each small enough for
    /// one envelope ([`chunk_update`]).
    pub(crate) fn updates(&self) -> Vec<pb::GroupUpdate> {
        chunk_update(&self.id, self.ops(), self.signed_cards())
    }
}

/// Bytes of ops and cards in one update: sealed (content, Olm, seal,
/// padding) it stays within the envelope limit, 64 KiB.
pub(crate) const UPDATE_BUDGET: usize = 40 * 1024;

/// `ops` then `cards` as updates of at most [`UPDATE_BUDGET`] bytes each
/// (at least one update, perhaps empty). A receiver merges each by union,
/// in any order and any grouping, to the same state; ops go first so a
/// card arrives after the op that makes its owner a member.
pub(crate) fn chunk_update(
    id: &[u8; 16],
    ops: Vec<pb::GroupSignedOp>,
    cards: Vec<pb::GroupSignedCard>,
) -> Vec<pb::GroupUpdate> {
    let empty = || pb::GroupUpdate {
        group_id: id.to_vec().into(),
        ops: Vec::new(),
        cards: Vec::new(),
    };
    let mut out = Vec::new();
    let mut cur = empty();
    let mut size = 0;
    // Each item costs its bytes plus a field tag and length.
    let cost = |n: usize| n + 8;
    for op in ops {
        let n = cost(op.encoded_len());
        if size + n > UPDATE_BUDGET && !(cur.ops.is_empty() && cur.cards.is_empty()) {
            out.push(std::mem::replace(&mut cur, empty()));
            size = 0;
        }
        size += n;
        cur.ops.push(op);
    }
    for card in cards {
        let n = cost(card.encoded_len());
        if size + n > UPDATE_BUDGET && !(cur.ops.is_empty() && cur.cards.is_empty()) {
            out.push(std::mem::replace(&mut cur, empty()));
            size = 0;
        }
        size += n;
        cur.cards.push(card);
    }
    if out.is_empty() || !(cur.ops.is_empty() && cur.cards.is_empty()) {
        out.push(cur);
    }
    out
}

/// One member, as `tern group members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    /// Contact name if a contact, else the name the adder gave.
    pub name: String,
    /// Identity key, hex.
    pub identity_key: String,
    /// May add and remove members.
    pub admin: bool,
    /// This device.
    pub me: bool,
    /// We can send to them (a contact, or their card arrived).
    pub reachable: bool,
}

/// A group, as `tern group list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Its id, hex (local display only).
    pub id: String,
    /// Whether we are still a member.
    pub member: bool,
    /// Whether we are an admin.
    pub admin: bool,
    /// Its members.
    pub members: Vec<MemberInfo>,
}

/// One entry of a group conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    /// Message id, hex.
    pub id: String,
    /// The group's id.
    pub group: [u8; 16],
    /// The author's identity key.
    pub author: ContactId,
    /// The author's name when it was stored.
    pub from: String,
    /// True if we sent it.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// When the author wrote it, ms since the epoch.
    pub sent_at_ms: u64,
    /// When it reached this device.
    pub stored_at_ms: u64,
    /// Where it stands for each recipient (identity key, hex): for ours,
    /// `Queued`, `Sent` or `Failed`; room for per-member receipts later.
    /// For received ones, empty.
    pub status: BTreeMap<String, Status>,
}

/// Where the entry with logical key `key` ([`message_key`]) is stored: a
/// keyed hash of its group, then of the key itself, so the local files show
/// neither the group nor the time (as for one-to-one conversations).
pub(crate) fn group_message_slot(store: &crate::store::LocalStore, key: &[u8]) -> Vec<u8> {
    let group = &key[..key.len().min(16)];
    let mut slot = store
        .store_key()
        .keyed_hash("group-messages-of", group)
        .to_vec();
    slot.extend_from_slice(&store.store_key().keyed_hash("group-message", key));
    slot
}

/// The logical key of a group conversation entry: group, time, id.
pub(crate) fn message_key(group: &[u8; 16], at_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = group.to_vec();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(id);
    k
}

impl Client {
    /// The membership of `r`, replayed only when its op set changed (a
    /// replay checks every op's signature).
    pub(crate) fn group_state(&self, r: &GroupRecord) -> state::State {
        let digest = r.ops_digest();
        // Each entry is one insert, so a lock poisoned by a panic elsewhere
        // still holds whole entries.
        let mut cache = self
            .group_states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((d, st)) = cache.get(&r.id) {
            if *d == digest {
                return st.clone();
            }
        }
        let st = r.state();
        cache.insert(r.id, (digest, st.clone()));
        st
    }

    /// Every group record.
    pub(crate) fn group_records(&self) -> Result<Vec<GroupRecord>, ClientError> {
        let tree = self.store.tree(STATES)?;
        Ok(self
            .store
            .scan_in::<GroupRecord>(&tree, STATES, &[])?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// The group record with this id.
    pub(crate) fn group_record(&self, id: &[u8; 16]) -> Result<Option<GroupRecord>, ClientError> {
        let tree = self.store.tree(STATES)?;
        self.store.get_in(&tree, STATES, id)
    }

    /// Save a group record.
    pub(crate) fn put_group(&self, r: &GroupRecord) -> Result<(), ClientError> {
        let tree = self.store.tree(STATES)?;
        self.store.put_in(&tree, STATES, &r.id, r)
    }

    /// The group named `name` (one we are in first), or
    /// [`ClientError::UnknownGroup`].
    pub(crate) fn group_named(&self, name: &str) -> Result<GroupRecord, ClientError> {
        let mut found: Option<GroupRecord> = None;
        for r in self.group_records()?.into_iter().filter(|r| !r.unconfirmed) {
            let st = self.group_state(&r);
            if st.name != name {
                continue;
            }
            if self.my_member(&st)?.is_some() {
                return Ok(r);
            }
            found.get_or_insert(r);
        }
        found.ok_or_else(|| ClientError::UnknownGroup(name.into()))
    }

    /// How we call member `id`: contact name, else the name the adder gave.
    pub(crate) fn member_name(
        &self,
        st: &state::State,
        id: &[u8; 32],
    ) -> Result<String, ClientError> {
        if self.own_device_keys()?.contains(id) {
            return Ok(self.profile.name.clone());
        }
        if let Some(c) = self.store.contact(id)? {
            return Ok(c.name);
        }
        Ok(st
            .members
            .get(id)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| hex::encode(&id[..4])))
    }

    fn group_info(&self, r: &GroupRecord) -> Result<GroupInfo, ClientError> {
        let st = self.group_state(r);
        // Us: this device, or the member device of our account.
        let me = self
            .my_member(&st)?
            .unwrap_or_else(|| self.account.identity_key());
        let cards = r.cards_by_member(&st);
        let mut members = Vec::new();
        for (id, m) in &st.members {
            members.push(MemberInfo {
                name: self.member_name(&st, id)?,
                identity_key: hex::encode(id),
                admin: m.admin,
                me: id == &me,
                reachable: id == &me || cards.contains_key(id) || self.store.contact(id)?.is_some(),
            });
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(GroupInfo {
            name: st.name.clone(),
            id: hex::encode(r.id),
            member: st.is_member(&me),
            admin: st.is_admin(&me),
            members,
        })
    }

    /// Every group this device knows, by name.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        let mut all = Vec::new();
        for r in self.group_records()?.into_iter().filter(|r| !r.unconfirmed) {
            all.push(self.group_info(&r)?);
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The group named `name`, with its members.
    pub fn group(&self, name: &str) -> Result<GroupInfo, ClientError> {
        self.group_info(&self.group_named(name)?)
    }

    /// The last `limit` messages of the group named `name`, oldest first.
    pub fn group_history(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<GroupMessage>, ClientError> {
        let r = self.group_named(name)?;
        let tree = self.store.tree(MESSAGES)?;
        let prefix = self
            .store
            .store_key()
            .keyed_hash("group-messages-of", &r.id);
        let mut all: Vec<GroupMessage> = self
            .store
            .scan_in::<GroupMessage>(&tree, MESSAGES, &prefix)?
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        // Keys are keyed hashes (nothing in the files shows a time), so
        // the order comes from the entries themselves.
        all.sort_by(|a, b| (a.sent_at_ms, &a.id).cmp(&(b.sent_at_ms, &b.id)));
        let skip = all.len().saturating_sub(limit);
        Ok(all.into_iter().skip(skip).collect())
    }

    /// Save a group conversation entry.
    pub(crate) fn put_group_message(
        &self,
        key: &[u8],
        m: &GroupMessage,
    ) -> Result<(), ClientError> {
        let tree = self.store.tree(MESSAGES)?;
        self.store
            .put_in(&tree, MESSAGES, &group_message_slot(&self.store, key), m)
    }
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod chunk_tests;
