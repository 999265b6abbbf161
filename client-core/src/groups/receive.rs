//! Receiving for groups: control messages that came over pairwise Olm
//! (an update to merge, a member's session key), and group envelopes, which
//! are not 1:1 seals and are tried against the envelope keys of the
//! senders in our groups.

use super::{envelope, message_key, GroupMessage, GroupRecord, Inbound, INBOUND_PER_SENDER};
use crate::client::{now_ms, Client};
use crate::error::ClientError;
use crate::event::{Event, ReceivedMessage};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use tern_crypto::GroupReceiver;
use tern_protocol::pb::{self, content::Body};
use tracing::{debug, warn};

impl Client {
    /// Act on a group control message from `sender` (its Olm layer is
    /// verified). Invalid changes are ignored; what is new is stored, and an
    /// admin passes news on to the other members.
    pub(crate) fn group_control(
        &mut self,
        sender: [u8; 32],
        body: Body,
    ) -> Result<(), ClientError> {
        match body {
            Body::GroupUpdate(u) => self.merge_update(sender, u),
            Body::GroupKey(k) => self.take_key(sender, k),
            _ => Ok(()),
        }
    }

    // The news goes back to its sender too (one update, which changes
    // nothing there): the batch's news is one update for every member.
    fn merge_update(&mut self, _sender: [u8; 32], u: pb::GroupUpdate) -> Result<(), ClientError> {
        let Ok(id) = <[u8; 16]>::try_from(&u.group_id[..]) else {
            return Ok(());
        };
        // This device; it may be a member itself or act for the member
        // device of its account (groups/devices.rs).
        let me = self.account.identity_key();
        let known = self.group_record(&id)?;
        let is_new = known.is_none();
        let mut r = known.unwrap_or_else(|| GroupRecord::empty(id));
        let before = self.group_state(&r);
        let was_member = self.my_member(&before)?.is_some();
        let mut ops = r.ops();
        let old_ops: BTreeSet<Vec<u8>> = ops.iter().map(|o| o.signature.to_vec()).collect();
        let ops_changed = state_merge(&id, &mut ops, u.ops);
        r.set_ops(&ops);
        let st = self.group_state(&r);
        let now_member = self.my_member(&st)?.is_some();
        if !now_member && (is_new || r.unconfirmed) {
            // Perhaps one of several updates carrying a large state, before
            // the one that adds us: kept, not shown, until we are a member.
            if ops_changed {
                r.unconfirmed = true;
                self.put_group(&r)?;
            } else {
                debug!("ignoring an update for a group we are not in");
            }
            return Ok(());
        }
        r.unconfirmed = false;
        let old_cards: BTreeSet<Vec<u8>> = r.cards.iter().cloned().collect();
        let mut cards = r.signed_cards();
        let cards_changed = super::state::merge_cards(&id, &st, &mut cards, u.cards);
        r.set_cards(&cards);
        if st.is_member(&me) && !r.cards_by_member(&st).contains_key(&me) {
            r.card_wanted = true;
        }
        if was_member && !now_member {
            // Removed: our session must not reach anyone any more.
            r.outbound = None;
            r.card_wanted = false;
        }
        if cards_changed {
            // A member's card: a group message waiting for it can go now.
            self.group_news = true;
        }
        if (ops_changed || cards_changed) && st.is_admin(&me) {
            // Passed on once per receive batch (forward_group_news).
            for o in &ops {
                if !old_ops.contains(&o.signature[..]) {
                    r.news_ops.push(o.encode_to_vec());
                }
            }
            for c in &r.cards {
                if !old_cards.contains(c) && !r.news_cards.contains(c) {
                    r.news_cards.push(c.clone());
                }
            }
            for m in st.members.keys() {
                if !before.is_member(m) && *m != me && !r.news_whole.contains(m) {
                    r.news_whole.push(*m);
                }
            }
            self.group_news = true;
        }
        self.put_group(&r)?;
        Ok(())
    }

    fn take_key(&mut self, sender: [u8; 32], k: pb::GroupKey) -> Result<(), ClientError> {
        let Ok(id) = <[u8; 16]>::try_from(&k.group_id[..]) else {
            return Ok(());
        };
        let Some(mut r) = self.group_record(&id)? else {
            return Ok(());
        };
        let st = self.group_state(&r);
        if self.member_of_device(&r, &st, &sender)?.is_none() || self.my_member(&st)?.is_none() {
            debug!("ignoring a group key from a device of no member");
            return Ok(());
        }
        let (Ok(receiver), Ok(envelope_key)) = (
            GroupReceiver::new(&k.session_key),
            <[u8; 32]>::try_from(&k.envelope_key[..]),
        ) else {
            warn!("ignoring a malformed group key");
            return Ok(());
        };
        r.inbound.push(Inbound {
            sender,
            pickle: receiver.to_encrypted_pickle(&self.key),
            envelope_key,
        });
        let mine: Vec<usize> = (0..r.inbound.len())
            .filter(|&i| r.inbound[i].sender == sender)
            .collect();
        if mine.len() > INBOUND_PER_SENDER {
            r.inbound.remove(mine[0]);
        }
        self.put_group(&r)
    }

    /// Try a payload that is not a 1:1 seal as a group message: store and
    /// show it if one of our groups' senders wrapped it.
    pub(crate) fn accept_group_envelope(
        &mut self,
        env: &pb::Envelope,
    ) -> Result<Option<Event>, ClientError> {
        for r in self.group_records()? {
            for inbound in r.inbound.iter().rev() {
                let Some(u) = envelope::unwrap(&inbound.envelope_key, &env.payload) else {
                    continue;
                };
                if u.group_id != r.id || u.sender != inbound.sender {
                    warn!("dropping a group message that names another group or sender");
                    return Ok(None);
                }
                let mut receiver =
                    GroupReceiver::from_encrypted_pickle(&inbound.pickle, &self.key)?;
                let opened = match envelope::open(&mut receiver, &u.megolm) {
                    Ok(o) => o,
                    Err(e) => {
                        warn!("dropping a group message: {e}");
                        return Ok(None);
                    }
                };
                if self.store.seen(&opened.id)? {
                    debug!("dropping a group message stored before");
                    return Ok(None);
                }
                let st = self.group_state(&r);
                let author = self.member_of_device(&r, &st, &u.sender)?;
                if author.is_none() || self.my_member(&st)?.is_none() {
                    debug!("dropping a group message from or to a non-member");
                    self.store.mark_seen(&opened.id)?;
                    return Ok(None);
                }
                // Sent by another device of our own account: shown as ours.
                let mine = self.own_device_keys()?.contains(&u.sender);
                let t = match opened.body {
                    Some(Body::Text(t)) => t,
                    Some(Body::Typing(_)) => {
                        // Shown only as it happens (a stored one is stale);
                        // never stored, never answered.
                        self.store.mark_seen(&opened.id)?;
                        let (Some(a), false) = (author, mine) else {
                            return Ok(None);
                        };
                        let from = self.member_name(&st, &a)?;
                        return Ok(env.ephemeral.then(|| Event::Typing {
                            from,
                            group: Some(st.name.clone()),
                        }));
                    }
                    _ => {
                        self.store.mark_seen(&opened.id)?;
                        return Ok(None);
                    }
                };
                let from = match author {
                    Some(a) if !mine => self.member_name(&st, &a)?,
                    _ => self.profile.name.clone(),
                };
                let now = now_ms();
                let entry = GroupMessage {
                    id: hex::encode(opened.id),
                    group: r.id,
                    author: u.sender,
                    from: from.clone(),
                    outgoing: mine,
                    text: t.body.clone(),
                    sent_at_ms: opened.sent_at_ms,
                    stored_at_ms: now,
                    status: BTreeMap::new(),
                };
                // The entry first, then the id as seen: a crash between
                // stores it again under the same key, harmlessly.
                let key = message_key(&r.id, opened.sent_at_ms, &opened.id);
                self.store.note_history(true, &key)?;
                self.put_group_message(&key, &entry)?;
                self.store.mark_seen(&opened.id)?;
                if mine {
                    // Our own copy: no receipt, nothing to show as new.
                    return Ok(None);
                }
                // Its author is owed a delivered receipt (and a read one
                // once it is shown).
                self.note_stored(&u.sender, &opened.id)?;
                return Ok(Some(Event::Message(ReceivedMessage {
                    id: entry.id,
                    from,
                    text: t.body,
                    sent_at_ms: opened.sent_at_ms,
                    received_at_ms: env.received_at_ms,
                    group: Some(st.name.clone()),
                    read: false,
                })));
            }
        }
        warn!("dropping an envelope that does not open");
        Ok(None)
    }
}

fn state_merge(
    id: &[u8; 16],
    ops: &mut Vec<pb::GroupSignedOp>,
    incoming: Vec<pb::GroupSignedOp>,
) -> bool {
    super::state::merge_ops(id, ops, incoming)
}
