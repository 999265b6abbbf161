//! Group control messages over pairwise Olm: an update (ops and cards) or
//! a session key to one member, through the ordinary outbox. A member who
//! is a contact is reached as one; any other member through its card (its
//! group send token, and a session started with its fallback key).
//! Publishing our own card is here too: it needs a token minted on the home
//! relay, so it runs after receiving, not inside it.

use super::GroupRecord;
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::layers;
use crate::store::Contact;
use crate::transport::RelayLink;
use std::collections::BTreeMap;
use tern_protocol::pb::{self, content::Body};
use tracing::debug;

impl Client {
    /// Put `body` for member `id` of `r` in the outbox. `Ok(false)` if we
    /// cannot reach them yet (not a contact, no card).
    pub(crate) fn send_control(
        &self,
        r: &GroupRecord,
        id: &[u8; 32],
        body: Body,
    ) -> Result<bool, ClientError> {
        let st = self.group_state(r);
        self.send_control_to(&st, &r.cards_by_member(&st), id, body)
    }

    /// As [`Client::send_control`], with the group's state and verified
    /// cards already at hand (sending to every member verifies them once).
    pub(crate) fn send_control_to(
        &self,
        st: &super::state::State,
        cards: &BTreeMap<[u8; 32], pb::GroupMemberCard>,
        id: &[u8; 32],
        body: Body,
    ) -> Result<bool, ClientError> {
        let (contact, session) = match self.store.contact(id)? {
            // A contact copied from another of our devices may have no
            // session yet: one is started from its listed fallback key.
            Some(c) => match self.contact_session(&c)? {
                Some(s) => (c, s),
                None => return Ok(false),
            },
            None => {
                let Some(card) = cards.get(id) else {
                    return Ok(false);
                };
                match self.reach_card(st, card)? {
                    Some(found) => found,
                    None => return Ok(false),
                }
            }
        };
        let content = layers::content(random16(), now_ms(), body);
        self.enqueue(&contact, session, &content, None)?;
        Ok(true)
    }

    /// Send everything we know of `r` to every current member but us and
    /// `except`.
    pub(crate) fn broadcast_update(
        &mut self,
        r: &GroupRecord,
        except: Option<&[u8; 32]>,
    ) -> Result<(), ClientError> {
        let me = self.account.identity_key();
        let st = self.group_state(r);
        let cards = r.cards_by_member(&st);
        let updates = r.updates();
        for id in st.members.keys() {
            if id == &me || Some(id) == except {
                continue;
            }
            if !self.send_updates_to(&st, &cards, id, &updates)? {
                debug!("member not reachable yet; it hears from an admin later");
            }
        }
        // Our own other devices keep the group too.
        self.send_updates_to_own(&updates)?;
        Ok(())
    }

    /// Queue `updates` for member `id` (and its other devices), in order;
    /// whether the member's own device is reachable.
    pub(crate) fn send_updates_to(
        &mut self,
        st: &super::state::State,
        cards: &BTreeMap<[u8; 32], pb::GroupMemberCard>,
        id: &[u8; 32],
        updates: &[pb::GroupUpdate],
    ) -> Result<bool, ClientError> {
        self.send_updates_to_extra(cards, id, updates)?;
        for u in updates {
            if !self.send_control_to(st, cards, id, Body::GroupUpdate(u.clone()))? {
                return Ok(false);
            }
            self.group_news = true;
        }
        Ok(true)
    }

    /// Pass on what admins of our groups learned in the last receive batch:
    /// to members it made members, the whole state; to the others, only
    /// the news, once for the batch (so a burst of N cards costs each
    /// member one update, not N whole states).
    pub(crate) fn forward_group_news(&mut self) -> Result<(), ClientError> {
        let me = self.account.identity_key();
        for mut r in self.group_records()? {
            if r.news_ops.is_empty() && r.news_cards.is_empty() && r.news_whole.is_empty() {
                continue;
            }
            let st = self.group_state(&r);
            let ops = std::mem::take(&mut r.news_ops);
            let news_cards = std::mem::take(&mut r.news_cards);
            let whole = std::mem::take(&mut r.news_whole);
            self.put_group(&r)?;
            if !st.is_admin(&me) {
                continue;
            }
            let ops: Vec<pb::GroupSignedOp> = ops
                .iter()
                .filter_map(|b| prost::Message::decode(&b[..]).ok())
                .collect();
            let news_cards: Vec<pb::GroupSignedCard> = news_cards
                .iter()
                .filter_map(|b| prost::Message::decode(&b[..]).ok())
                .collect();
            let news = super::chunk_update(&r.id, ops, news_cards);
            let all = r.updates();
            let cards = r.cards_by_member(&st);
            for id in st.members.keys().filter(|k| **k != me) {
                let updates = if whole.contains(id) { &all } else { &news };
                if !self.send_updates_to(&st, &cards, id, updates)? {
                    debug!("member not reachable yet; it hears from an admin later");
                }
            }
            self.send_updates_to_own(&news)?;
        }
        Ok(())
    }

    /// Whether some group waits for our card.
    pub(crate) fn wants_group_cards(&self) -> Result<bool, ClientError> {
        let me = self.account.identity_key();
        Ok(self
            .group_records()?
            .iter()
            .any(|r| r.card_wanted && self.group_state(r).is_member(&me)))
    }

    /// Make and send our card for every group that waits for one, on a
    /// new connection to the home relay. Returns whether anything was queued.
    pub(crate) async fn publish_group_cards(&mut self) -> Result<bool, ClientError> {
        if !self.wants_group_cards()? {
            return Ok(false);
        }
        let link = self.home_link().await?;
        let done = self.publish_group_cards_on(&link).await;
        link.close();
        done
    }

    /// Make and send our card for every group that waits for one: mint a
    /// send token for it on `home` (authenticated as our mailbox), sign the
    /// card, and tell the members.
    pub(crate) async fn publish_group_cards_on(
        &mut self,
        home: &RelayLink,
    ) -> Result<bool, ClientError> {
        let me = self.account.identity_key();
        let wanted: Vec<GroupRecord> = self
            .group_records()?
            .into_iter()
            .filter(|r| r.card_wanted && self.group_state(r).is_member(&me))
            .collect();
        if wanted.is_empty() {
            return Ok(false);
        }
        for mut r in wanted {
            let token = home.create_token().await?;
            let card = self.own_card(&r.id, &token);
            let st = self.group_state(&r);
            let mut cards = r.signed_cards();
            let signed = super::state::sign_card(&card, |m| self.account.sign(m));
            super::state::merge_cards(&r.id, &st, &mut cards, vec![signed]);
            r.set_cards(&cards);
            r.card_wanted = false;
            self.put_group(&r)?;
            self.broadcast_update(&r, None)?;
        }
        self.save_account()?;
        self.store.flush().await?;
        Ok(true)
    }

    /// Our card for group `id`, with a token minted for it and our
    /// account's root key and device list (if we have one).
    pub(crate) fn own_card(&mut self, id: &[u8; 16], token: &[u8; 32]) -> pb::GroupMemberCard {
        let own = self.load_own().ok().flatten();
        pb::GroupMemberCard {
            group_id: id.to_vec().into(),
            identity_key: self.account.identity_key().to_vec().into(),
            seal_key: self.account.seal_public().to_vec().into(),
            address: Some(layers::address(
                &self.profile.relay_url,
                &self.profile.mailbox_id,
                token,
            )),
            fallback_key: self.account.group_fallback_key().to_vec().into(),
            version: now_ms(),
            root_key: own
                .as_ref()
                .map(|o| o.list.root_key.to_vec())
                .unwrap_or_default()
                .into(),
            device_list: own.map(|o| o.list.signed()),
        }
    }
}

/// A member reached through its card, as the outbox addresses a contact.
pub(crate) fn card_contact(
    st: &super::state::State,
    card: &pb::GroupMemberCard,
) -> Option<Contact> {
    let identity = layers::key32(&card.identity_key)?;
    let member = st.members.get(&identity)?;
    let seal_key = layers::key32(&card.seal_key)?;
    tern_crypto::validate_seal_public(&seal_key).ok()?;
    let address = card.address.as_ref()?;
    let relay_url = tern_protocol::invite::validate_address(Some(address))
        .ok()?
        .to_string();
    Some(Contact {
        name: member.name.clone(),
        identity_key: identity,
        signing_key: member.signing_key,
        seal_key,
        relay_url,
        mailbox_id: address.mailbox_id[..].try_into().ok()?,
        send_token: layers::key32(&address.send_token)?,
        token_given: None,
        added_at_ms: 0,
    })
}
