//! Groups on every device of an account (issue 15). A group names one
//! device per member (the one that was added); the member's other devices
//! come from its account's root-key-signed device list: the list we hold
//! for a contact (pinned root), else the list its member card carries
//! (checked against the root key the card names; the card is signed by the
//! member's device). A device on no such list gets nothing.
//!
//! A message we send goes to every device of every other member and to our
//! own other devices (which show it as sent by us); each of those devices
//! gets our Megolm session key over pairwise Olm first. A device that is
//! not itself a member acts for the member device of its account on our
//! own list ([`Client::my_member`]); what it sends, others accept as that
//! member's ([`Client::member_of_device`]).

use super::state::State;
use super::{chunk_update, GroupRecord};
use crate::client::{now_ms, random16, Client};
use crate::devices::list::{accept_first, DeviceList};
use crate::devices::Target as DeviceTarget;
use crate::error::ClientError;
use crate::layers;
use prost::Message;
use std::collections::BTreeMap;
use tern_protocol::pb::{self, content::Body};
use tracing::debug;

/// Verified cards of a group's members, by identity key.
pub(crate) type Cards = BTreeMap<[u8; 32], pb::GroupMemberCard>;

/// One device a group message of ours goes to, besides members' own
/// devices reached through their card or contact record.
#[derive(Debug, Clone)]
pub(crate) struct ExtraDevice {
    /// The member it acts for (for our own devices: our member device).
    pub member: [u8; 32],
    /// How to reach it.
    pub target: DeviceTarget,
}

impl Client {
    /// The verified device list of member `m`: the one we hold for it as a
    /// contact, or (if newer, or if we hold none) the one its `card`
    /// carries, which must verify under the root key pinned for the
    /// contact, else the root key the card names, and name `m`.
    pub(crate) fn member_list(
        &self,
        card: Option<&pb::GroupMemberCard>,
        m: &[u8; 32],
    ) -> Result<Option<DeviceList>, ClientError> {
        // Lists are held for contacts only.
        let held = self.peer_list(m)?;
        let carried = card
            .and_then(|c| c.device_list.as_ref().map(|l| (&c.root_key, l)))
            // A list of the member device alone adds nothing: not verified
            // (most members have one device; a send checks every card).
            .filter(|(_, l)| names_others(l, m))
            .and_then(|(root, l)| match accept_first(root, l, m) {
                Ok(l) => Some(l),
                Err(e) => {
                    debug!("a member card with a bad device list: {e}");
                    None
                }
            });
        Ok(match (held, carried) {
            (Some(h), Some(c)) if c.root_key == h.root_key && c.version > h.version => Some(c),
            (Some(h), _) => Some(h),
            (None, c) => c,
        })
    }

    /// The identity keys on our own account's list (this device's alone
    /// if there is none yet).
    pub(crate) fn own_device_keys(&self) -> Result<Vec<[u8; 32]>, ClientError> {
        let me = self.account.identity_key();
        Ok(match self.load_own()? {
            Some(own) if own.list.device(&me).is_some() => {
                own.list.devices.iter().map(|d| d.identity_key).collect()
            }
            _ => vec![me],
        })
    }

    /// Who we are in group `st`: this device if it is a member, else the
    /// device of our own account that is.
    pub(crate) fn my_member(&self, st: &State) -> Result<Option<[u8; 32]>, ClientError> {
        let me = self.account.identity_key();
        if st.is_member(&me) {
            return Ok(Some(me));
        }
        Ok(self
            .own_device_keys()?
            .into_iter()
            .find(|k| st.is_member(k)))
    }

    /// The member `device` speaks for in `st` (of record `r`): itself if a
    /// member, one of our own devices' member, else the member whose
    /// verified device list names it (only then are the cards read).
    /// `None`: it gets nothing and what it sends is dropped.
    pub(crate) fn member_of_device(
        &self,
        r: &GroupRecord,
        st: &State,
        device: &[u8; 32],
    ) -> Result<Option<[u8; 32]>, ClientError> {
        if st.is_member(device) {
            return Ok(Some(*device));
        }
        if self.own_device_keys()?.contains(device) {
            return self.my_member(st);
        }
        let cards = r.cards_by_member(st);
        for m in st.members.keys() {
            if let Some(list) = self.member_list(cards.get(m), m)? {
                if list.device(device).is_some() {
                    return Ok(Some(*m));
                }
            }
        }
        Ok(None)
    }

    /// Member `m`'s devices besides `m` itself that we can write to (its
    /// list names them with a shared token).
    pub(crate) fn member_extra_devices(
        &self,
        cards: &Cards,
        m: &[u8; 32],
    ) -> Result<Vec<DeviceTarget>, ClientError> {
        Ok(match self.member_list(cards.get(m), m)? {
            None => Vec::new(),
            Some(list) => list
                .devices
                .iter()
                .filter(|d| &d.identity_key != m)
                .filter_map(DeviceTarget::of_device)
                .collect(),
        })
    }

    /// Every device a message of ours to `st` goes to other than the
    /// members' own devices: the other devices of every other member, and
    /// our own other devices (acting for `my_member`).
    pub(crate) fn extra_group_devices(
        &self,
        st: &State,
        cards: &Cards,
        my_member: &[u8; 32],
    ) -> Result<Vec<ExtraDevice>, ClientError> {
        let mut out = Vec::new();
        for m in st.members.keys().filter(|m| *m != my_member) {
            for target in self.member_extra_devices(cards, m)? {
                out.push(ExtraDevice { member: *m, target });
            }
        }
        for target in self.own_targets()? {
            out.push(ExtraDevice {
                member: *my_member,
                target,
            });
        }
        Ok(out)
    }

    /// Put `body` in the outbox for device `t` (a quiet item); whether we
    /// have or could start a session with it.
    pub(crate) fn send_control_to_device(
        &self,
        t: &DeviceTarget,
        body: Body,
    ) -> Result<bool, ClientError> {
        let Some(session) = self.session_for(t)? else {
            return Ok(false);
        };
        let content = layers::content(random16(), now_ms(), body);
        self.enqueue_to(t, session, &content, None, true)?;
        Ok(true)
    }

    /// Queue `updates` for member `id`'s other devices.
    pub(crate) fn send_updates_to_extra(
        &self,
        cards: &Cards,
        id: &[u8; 32],
        updates: &[pb::GroupUpdate],
    ) -> Result<(), ClientError> {
        for t in self.member_extra_devices(cards, id)? {
            for u in updates {
                if !self.send_control_to_device(&t, Body::GroupUpdate(u.clone()))? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Queue `updates` for our own other devices.
    pub(crate) fn send_updates_to_own(
        &self,
        updates: &[pb::GroupUpdate],
    ) -> Result<(), ClientError> {
        for t in self.own_targets()? {
            for u in updates {
                if !self.send_control_to_device(&t, Body::GroupUpdate(u.clone()))? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Our own list changed: each group we (this device) are a member of
    /// gets a new card naming the new list.
    pub(crate) fn own_list_changed(&self) -> Result<(), ClientError> {
        let me = self.account.identity_key();
        for mut r in self.group_records()? {
            if !r.unconfirmed && !r.card_wanted && self.group_state(&r).is_member(&me) {
                r.card_wanted = true;
                self.put_group(&r)?;
            }
        }
        Ok(())
    }

    /// The account's groups for a device being linked: the encoded
    /// `DeviceLinkGroups` for the bundle (at most `budget` bytes), and the
    /// updates that did not fit (they follow through Olm).
    pub(crate) fn link_groups(
        &self,
        budget: usize,
    ) -> Result<(Vec<u8>, Vec<pb::GroupUpdate>), ClientError> {
        let mut bundle = pb::DeviceLinkGroups::default();
        let mut rest = Vec::new();
        for r in self.group_records()? {
            if r.unconfirmed {
                continue;
            }
            for u in chunk_update(&r.id, r.ops(), r.signed_cards()) {
                if rest.is_empty() && bundle.encoded_len() + u.encoded_len() + 8 <= budget {
                    bundle.updates.push(u);
                } else {
                    rest.push(u);
                }
            }
        }
        Ok((bundle.encode_to_vec(), rest))
    }

    /// Take on the groups a link bundle carries (our own list stored first,
    /// so this device acts for the member device of its account).
    pub(crate) fn take_link_groups(&mut self, groups: &[u8]) -> Result<(), ClientError> {
        if groups.is_empty() {
            return Ok(());
        }
        let decoded = pb::DeviceLinkGroups::decode(groups)
            .map_err(|_| ClientError::Device("the link bundle has bad groups".into()))?;
        for u in decoded.updates {
            self.group_control(self.account.identity_key(), Body::GroupUpdate(u))?;
        }
        Ok(())
    }
}

/// Whether `r`'s outbound session was shared with a device that no longer
/// gets our messages (`now`: the devices that do).
pub(crate) fn shared_beyond(r: &GroupRecord, now: &[[u8; 32]]) -> bool {
    r.outbound
        .as_ref()
        .is_some_and(|o| o.shared_with.iter().any(|k| !now.contains(k)))
}

/// Whether the (unverified) list `signed` names a device other than `m`.
fn names_others(signed: &pb::DeviceSignedList, m: &[u8; 32]) -> bool {
    pb::DeviceList::decode(&signed.list[..])
        .map(|l| l.devices.iter().any(|d| d.identity_key[..] != m[..]))
        .unwrap_or(false)
}
