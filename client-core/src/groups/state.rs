//! A group's membership as a set of signed ops, and the one deterministic
//! replay that turns the set into members and admins. Pure: no store, no
//! clock, no network.
//!
//! Each op (create, add, remove) carries a Lamport time and is signed by
//! its author's Ed25519 key. Members merge by set union (an op is known by
//! its signature), so it does not matter in which order, or how often,
//! updates arrive. The state is a replay of every op in the total order
//! (lamport, author, signature): an op counts only if its author may make
//! it at that point of the replay (an admin adds or removes; anyone removes
//! itself), and its signature verifies with the author's signing key as
//! recorded when the author was added. Two admins changing membership at
//! once produce ops with the same or close Lamport times; every member
//! replays the same union in the same order and ends with the same state.
//!
//! Member cards ([`pb::GroupMemberCard`]) are merged beside the ops: one
//! per member, signed by that member, the highest version kept.

use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tern_crypto::verify_signature;
use tern_protocol::pb::{self, GroupOpKind};

/// Ops kept per group at most: a peer cannot grow a group's record
/// without bound (ops that do not count are kept, as they may count once
/// an earlier op arrives).
pub const MAX_OPS: usize = 4096;

/// What an op's signature covers, after this prefix.
pub(crate) const OP_CONTEXT: &[u8] = b"tern/1 group op";
/// What a card's signature covers, after this prefix.
pub(crate) const CARD_CONTEXT: &[u8] = b"tern/1 group card";

/// One member as the replay leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Curve25519 identity key.
    pub identity: [u8; 32],
    /// Ed25519 key that signs its ops and card.
    pub signing_key: [u8; 32],
    /// The display name the adder gave.
    pub name: String,
    /// Whether it may add and remove members.
    pub admin: bool,
}

/// A group's membership after replaying its ops.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// The group's name (from its create op).
    pub name: String,
    /// Current members by identity key.
    pub members: BTreeMap<[u8; 32], Member>,
    /// The highest Lamport time of any op (valid or not).
    pub lamport: u64,
}

impl State {
    /// Whether `id` is a member.
    pub fn is_member(&self, id: &[u8; 32]) -> bool {
        self.members.contains_key(id)
    }

    /// Whether `id` is an admin member.
    pub fn is_admin(&self, id: &[u8; 32]) -> bool {
        self.members.get(id).is_some_and(|m| m.admin)
    }
}

/// A decoded, well-formed op and where it sorts.
struct Decoded {
    op: pb::GroupOp,
    author: [u8; 32],
    target: [u8; 32],
    raw: Vec<u8>,
    signature: Vec<u8>,
}

fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

fn signed_bytes(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = context.to_vec();
    m.extend_from_slice(body);
    m
}

fn decode(group_id: &[u8; 16], s: &pb::GroupSignedOp) -> Option<Decoded> {
    let op = pb::GroupOp::decode(&s.op[..]).ok()?;
    if op.group_id[..] != group_id[..] || s.signature.len() != 64 {
        return None;
    }
    Some(Decoded {
        author: key32(&op.author)?,
        target: key32(&op.target)?,
        raw: s.op.to_vec(),
        signature: s.signature.to_vec(),
        op,
    })
}

/// Replay `ops` (any order, repeats allowed) into a state.
pub fn replay(group_id: &[u8; 16], ops: &[pb::GroupSignedOp]) -> State {
    let mut sorted: Vec<Decoded> = ops.iter().filter_map(|s| decode(group_id, s)).collect();
    sorted.sort_by(|a, b| {
        (a.op.lamport, a.author, &a.signature).cmp(&(b.op.lamport, b.author, &b.signature))
    });
    sorted.dedup_by(|a, b| a.signature == b.signature);
    let mut state = State::default();
    let mut created = false;
    for d in sorted {
        state.lamport = state.lamport.max(d.op.lamport);
        let verifies = |key: &[u8; 32]| {
            verify_signature(key, &signed_bytes(OP_CONTEXT, &d.raw), &d.signature).is_ok()
        };
        match GroupOpKind::try_from(d.op.kind) {
            Ok(GroupOpKind::GroupOpCreate) if !created => {
                let Some(signing_key) = key32(&d.op.target_signing_key) else {
                    continue;
                };
                let owns_id = group_id_for(&d.author, &d.op.salt) == *group_id;
                if d.author != d.target || !owns_id || !verifies(&signing_key) {
                    continue;
                }
                created = true;
                state.name = d.op.group_name.clone();
                state.members.insert(
                    d.author,
                    Member {
                        identity: d.author,
                        signing_key,
                        name: d.op.target_name.clone(),
                        admin: true,
                    },
                );
            }
            Ok(GroupOpKind::GroupOpAdd) => {
                let Some(author) = state.members.get(&d.author) else {
                    continue;
                };
                let Some(signing_key) = key32(&d.op.target_signing_key) else {
                    continue;
                };
                if !author.admin || !verifies(&author.signing_key) {
                    continue;
                }
                state.members.insert(
                    d.target,
                    Member {
                        identity: d.target,
                        signing_key,
                        name: d.op.target_name.clone(),
                        admin: d.op.admin,
                    },
                );
            }
            Ok(GroupOpKind::GroupOpRemove) => {
                let Some(author) = state.members.get(&d.author) else {
                    continue;
                };
                let allowed = author.admin || d.author == d.target;
                if !allowed || !verifies(&author.signing_key) {
                    continue;
                }
                state.members.remove(&d.target);
            }
            _ => {}
        }
    }
    state
}

/// The id of a group created by `creator` with `salt`: only the creator's
/// create op can name it.
pub fn group_id_for(creator: &[u8; 32], salt: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"tern/1 group id");
    h.update(creator);
    h.update(salt);
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// The create op of a new group: its id and the op.
pub fn make_create(
    creator: &Member,
    group_name: &str,
    salt: [u8; 16],
    sign: impl Fn(&[u8]) -> [u8; 64],
) -> ([u8; 16], pb::GroupSignedOp) {
    let id = group_id_for(&creator.identity, &salt);
    let op = pb::GroupOp {
        group_id: id.to_vec().into(),
        lamport: 1,
        author: creator.identity.to_vec().into(),
        kind: GroupOpKind::GroupOpCreate as i32,
        target: creator.identity.to_vec().into(),
        target_signing_key: creator.signing_key.to_vec().into(),
        target_name: creator.name.clone(),
        admin: true,
        group_name: group_name.to_string(),
        salt: salt.to_vec().into(),
    };
    let raw = op.encode_to_vec();
    let signature = sign(&signed_bytes(OP_CONTEXT, &raw));
    (
        id,
        pb::GroupSignedOp {
            op: raw.into(),
            signature: signature.to_vec().into(),
        },
    )
}

/// Add `incoming` ops to `log` (union, by signature); whether any was new.
/// Ops for another group or malformed are not kept.
pub fn merge_ops(
    group_id: &[u8; 16],
    log: &mut Vec<pb::GroupSignedOp>,
    incoming: Vec<pb::GroupSignedOp>,
) -> bool {
    let mut changed = false;
    for op in incoming {
        if log.len() >= MAX_OPS {
            break;
        }
        if decode(group_id, &op).is_none() || log.iter().any(|o| o.signature == op.signature) {
            continue;
        }
        log.push(op);
        changed = true;
    }
    changed
}

/// A new op by `author`, signed with `sign`, one Lamport tick after `state`.
#[allow(clippy::too_many_arguments)]
pub fn make_op(
    group_id: &[u8; 16],
    state: &State,
    author: &[u8; 32],
    kind: GroupOpKind,
    target: &Member,
    group_name: &str,
    sign: impl Fn(&[u8]) -> [u8; 64],
) -> pb::GroupSignedOp {
    let op = pb::GroupOp {
        group_id: group_id.to_vec().into(),
        lamport: state.lamport.saturating_add(1),
        author: author.to_vec().into(),
        kind: kind as i32,
        target: target.identity.to_vec().into(),
        target_signing_key: target.signing_key.to_vec().into(),
        target_name: target.name.clone(),
        admin: target.admin,
        group_name: group_name.to_string(),
        salt: Default::default(),
    };
    let raw = op.encode_to_vec();
    let signature = sign(&signed_bytes(OP_CONTEXT, &raw));
    pb::GroupSignedOp {
        op: raw.into(),
        signature: signature.to_vec().into(),
    }
}

/// A card signed with `sign`.
pub fn sign_card(
    card: &pb::GroupMemberCard,
    sign: impl Fn(&[u8]) -> [u8; 64],
) -> pb::GroupSignedCard {
    let raw = card.encode_to_vec();
    let signature = sign(&signed_bytes(CARD_CONTEXT, &raw));
    pb::GroupSignedCard {
        card: raw.into(),
        signature: signature.to_vec().into(),
    }
}

/// A card that verifies against its member's signing key in `state`.
pub fn read_card(
    group_id: &[u8; 16],
    state: &State,
    s: &pb::GroupSignedCard,
) -> Option<pb::GroupMemberCard> {
    let card = pb::GroupMemberCard::decode(&s.card[..]).ok()?;
    let member = state.members.get(&key32(&card.identity_key)?)?;
    if card.group_id[..] != group_id[..] {
        return None;
    }
    verify_signature(
        &member.signing_key,
        &signed_bytes(CARD_CONTEXT, &s.card),
        &s.signature,
    )
    .ok()?;
    Some(card)
}

/// Merge `incoming` cards into `cards` (one per current member, highest
/// version kept; unverifiable ones ignored); whether any was new.
pub fn merge_cards(
    group_id: &[u8; 16],
    state: &State,
    cards: &mut Vec<pb::GroupSignedCard>,
    incoming: Vec<pb::GroupSignedCard>,
) -> bool {
    // Who holds which slot, verified once.
    let mut held: BTreeMap<Vec<u8>, (usize, u64)> = BTreeMap::new();
    for (i, c) in cards.iter().enumerate() {
        if let Some(c) = read_card(group_id, state, c) {
            held.insert(c.identity_key.to_vec(), (i, c.version));
        }
    }
    let mut changed = false;
    for s in incoming {
        let Some(new) = read_card(group_id, state, &s) else {
            continue;
        };
        match held.get(&new.identity_key[..]).copied() {
            Some((_, version)) if new.version <= version => {}
            Some((i, _)) => {
                cards[i] = s;
                held.insert(new.identity_key.to_vec(), (i, new.version));
                changed = true;
            }
            None => {
                held.insert(new.identity_key.to_vec(), (cards.len(), new.version));
                cards.push(s);
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
