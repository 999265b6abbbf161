//! `tern typing GROUP`: a typing notice for a group is a group envelope
//! (Megolm, as a group text is) holding a `TypingNotice`, deposited as an
//! ephemeral multi-recipient send, one upload per relay of the members:
//! the relays push it to members who are connected and store it nowhere.
//! It goes only to members who hold our current session key (those we sent
//! a group message to since the session started): keys travel through the
//! durable outbox, and a notice cannot wait for one. Rate-limited per
//! group like a contact's ([`crate::typing::TYPING_INTERVAL`]), the time
//! kept in the group record so separate `tern typing` runs obey it.

use super::{envelope, GroupRecord};
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::layers;
use crate::transport::OutgoingMany;
use crate::typing::{typing_wait, PreparedTyping};
use std::collections::BTreeMap;
use std::time::Duration;
use tern_crypto::GroupSender;
use tern_protocol::pb::{self, content::Body};

/// A (mailbox, send token) target.
type Mailbox = ([u8; 16], [u8; 32]);

impl Client {
    /// Seal a typing notice for the group `name` and save the advanced
    /// session (durably); `Err(wait)` if one went to it too recently.
    pub(crate) async fn prepare_group_typing(
        &self,
        name: &str,
    ) -> Result<Result<PreparedTyping, Duration>, ClientError> {
        let mut r: GroupRecord = self.group_named(name)?;
        let me = self.account.identity_key();
        let st = self.group_state(&r);
        let Some(my_member) = self.my_member(&st)? else {
            return Err(ClientError::GroupRefused(format!(
                "you are not a member of {name:?}"
            )));
        };
        // Cards verified once for the whole group.
        let cards = r.cards_by_member(&st);
        let extra = self.extra_group_devices(&st, &cards, &my_member)?;
        let mut reached: Vec<[u8; 32]> = st
            .members
            .keys()
            .filter(|k| **k != my_member)
            .copied()
            .collect();
        reached.extend(extra.iter().map(|e| e.target.identity_key));
        let now = now_ms();
        let wait = typing_wait(r.typing_sent_at_ms, now);
        if !wait.is_zero() {
            return Ok(Err(wait));
        }
        // A session shared with someone who left must not be used again.
        let usable = r
            .outbound
            .clone()
            .filter(|o| o.shared_with.iter().all(|m| reached.contains(m)));
        let Some(mut out) = usable else {
            return Err(ClientError::GroupRefused(format!(
                "send a message to {name:?} first: typing goes to members who hold your group key"
            )));
        };
        let mut sender = GroupSender::from_encrypted_pickle(&out.pickle, &self.key)?;
        let id = random16();
        let content = layers::content(id, now, Body::Typing(pb::TypingNotice {}));
        let payload = envelope::seal_group(&mut sender, &out.envelope_key, &r.id, &me, &content);
        out.pickle = sender.to_encrypted_pickle(&self.key);
        let mut by_relay: BTreeMap<String, Vec<Mailbox>> = BTreeMap::new();
        // Other devices (members' and ours) that hold the key.
        for e in extra
            .iter()
            .filter(|e| out.shared_with.contains(&e.target.identity_key))
        {
            by_relay
                .entry(e.target.relay_url.clone())
                .or_default()
                .push((e.target.mailbox_id, e.target.token));
        }
        for m in out.shared_with.iter().filter(|m| st.is_member(m)) {
            let reach = match cards.get(m) {
                Some(card) => super::control::card_contact(&st, card),
                None => self.store.contact(m)?,
            };
            if let Some(c) = reach {
                by_relay
                    .entry(c.relay_url)
                    .or_default()
                    .push((c.mailbox_id, c.send_token));
            }
        }
        r.outbound = Some(out);
        r.typing_sent_at_ms = Some(now);
        // The advanced session is saved before the notice leaves.
        self.put_group(&r)?;
        self.store.flush().await?;
        let mut sends = Vec::new();
        for (relay, targets) in by_relay {
            sends.push((
                relay.parse()?,
                OutgoingMany {
                    message_id: id,
                    payload: payload.clone(),
                    targets,
                    ephemeral: true,
                },
            ));
        }
        Ok(Ok(PreparedTyping { sends }))
    }
}
