//! Peers who are group members but not contacts: how to reach one (its
//! verified card in a group we share, and the pairwise Olm session we have
//! with it or start from its card's fallback key) and how to call it.
//! Receipts for group messages go to such members the way group control
//! messages do, and `tern status` names them.

use super::control::card_contact;
use super::state::{read_card, State};
use crate::client::Client;
use crate::error::ClientError;
use crate::layers;
use crate::store::{Contact, ContactId};
use prost::Message;
use tern_crypto::PairSession;
use tern_protocol::pb;
use tracing::debug;

impl Client {
    /// Member `id`'s verified card in group `st` of record `r`, if it
    /// published one (only its card is checked, not the whole set).
    pub(crate) fn member_card(
        &self,
        r: &super::GroupRecord,
        st: &State,
        id: &[u8; 32],
    ) -> Option<pb::GroupMemberCard> {
        r.signed_cards()
            .iter()
            .filter(|s| {
                pb::GroupMemberCard::decode(&s.card[..]).is_ok_and(|c| c.identity_key[..] == id[..])
            })
            .find_map(|s| read_card(&r.id, st, s))
    }

    /// How to reach `id` and the session to seal with: as a contact, else
    /// as a member of a group we are both in whose card we hold, else as
    /// another device of a contact or member, on its account's signed
    /// list (a group message sent from it is owed receipts). `None` if
    /// none of these (or a contact without a session).
    pub(crate) fn reach_peer(
        &self,
        id: &ContactId,
    ) -> Result<Option<(Contact, PairSession)>, ClientError> {
        if let Some(c) = self.store.contact(id)? {
            return Ok(self.load_session(id)?.map(|s| (c, s)));
        }
        let mut lists = Vec::new();
        for r in self.group_records()? {
            let st = self.group_state(&r);
            if self.my_member(&st)?.is_none() {
                continue;
            }
            if st.is_member(id) {
                // Only its card is checked, not the whole set.
                let Some(card) = self.member_card(&r, &st, id) else {
                    continue;
                };
                if let Some(found) = self.reach_card(&st, &card)? {
                    return Ok(Some(found));
                }
                continue;
            }
            let cards = r.cards_by_member(&st);
            for m in st.members.keys() {
                if let Some(l) = self.member_list(cards.get(m), m)? {
                    lists.push((st.members[m].name.clone(), l));
                }
            }
        }
        for (name, list) in lists {
            let Some(d) = list.device(id) else {
                continue;
            };
            let Some(t) = crate::devices::Target::of_device(d) else {
                continue;
            };
            if let Some(s) = self.session_for(&t)? {
                return Ok(Some((device_contact(&name, d), s)));
            }
        }
        Ok(None)
    }

    /// The contact-like address of a member's `card` and our session with
    /// it (started from the card's fallback key if we have none).
    pub(crate) fn reach_card(
        &self,
        st: &State,
        card: &pb::GroupMemberCard,
    ) -> Result<Option<(Contact, PairSession)>, ClientError> {
        let Some(contact) = card_contact(st, card) else {
            return Ok(None);
        };
        let id = contact.identity_key;
        let session = match self.load_session(&id)? {
            Some(s) => s,
            None => {
                let Some(fallback) = layers::key32(&card.fallback_key) else {
                    return Ok(None);
                };
                match self.account.start_session(&id, &fallback) {
                    Ok(s) => s,
                    Err(e) => {
                        debug!("member card with an unusable key: {e}");
                        return Ok(None);
                    }
                }
            }
        };
        Ok(Some((contact, session)))
    }

    /// What we call `id`: its contact name, else the name it was given in
    /// a group we share (empty if neither).
    pub(crate) fn peer_name(&self, id: &ContactId) -> Result<String, ClientError> {
        if let Some(c) = self.store.contact(id)? {
            return Ok(c.name);
        }
        for r in self.group_records()? {
            let st = self.group_state(&r);
            if let Some(m) = st.members.get(id) {
                return Ok(m.name.clone());
            }
        }
        Ok(String::new())
    }

    /// The names members were given in our groups, by identity key (one
    /// pass over the groups, for naming many peers at once).
    pub(crate) fn group_member_names(
        &self,
    ) -> Result<std::collections::HashMap<ContactId, String>, ClientError> {
        let mut names = std::collections::HashMap::new();
        for r in self.group_records()? {
            for (id, m) in self.group_state(&r).members {
                names.entry(id).or_insert(m.name);
            }
        }
        Ok(names)
    }

    /// The member of a group we are in that device `id` is (itself, or a
    /// member whose signed device list names it): receipts from such a
    /// peer count, as that member's, even when it is not a contact.
    pub(crate) fn fellow_member(&self, id: &ContactId) -> Result<Option<ContactId>, ClientError> {
        for r in self.group_records()? {
            let st = self.group_state(&r);
            if self.my_member(&st)?.is_none() {
                continue;
            }
            if st.is_member(id) {
                return Ok(Some(*id));
            }
            if let Some(m) = self.member_of_device(&r, &st, id)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

/// A listed device of a member's account, addressed as the outbox
/// addresses a contact.
fn device_contact(name: &str, d: &crate::devices::list::Device) -> Contact {
    Contact {
        name: name.to_string(),
        identity_key: d.identity_key,
        signing_key: d.signing_key,
        seal_key: d.seal_key,
        relay_url: d.relay_url.clone(),
        mailbox_id: d.mailbox_id,
        send_token: d.token.unwrap_or_default(),
        token_given: None,
        added_at_ms: 0,
    }
}
