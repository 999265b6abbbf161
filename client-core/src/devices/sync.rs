//! Receiving what devices tell each other: a contact's new device list
//! ([`Client::apply_peer_list`]) and, from our own other devices, our
//! account's new list, copies of texts they sent and contacts they added
//! ([`Client::accept_from_own`]).

use super::list::{accept_first, accept_update, DeviceList};
use crate::client::{now_ms, Client};
use crate::contacts::{base_name, unique_name};
use crate::error::ClientError;
use crate::layers::{key32, Opened};
use crate::store::{message_key, Contact, Status, StoredMessage};
use prost::Message;
use tern_crypto::{DeviceAccount, PairSession};
use tern_protocol::pb::{self, content::Body};
use tracing::{debug, warn};

/// The root key a signed list names (to check a first list against it).
fn named_root(signed: &pb::DeviceSignedList) -> Vec<u8> {
    pb::DeviceList::decode(&signed.list[..])
        .map(|l| l.root_key.to_vec())
        .unwrap_or_default()
}

impl Client {
    /// Contact `c` sent (from device `sender`) its account's list: checked
    /// against the root key we pinned, or, the first time, against the root
    /// key it names and only from the device we met. Sessions with devices
    /// it no longer names are dropped. Refused lists change nothing.
    pub(crate) fn apply_peer_list(
        &mut self,
        c: &Contact,
        sender: &[u8; 32],
        signed: &pb::DeviceSignedList,
    ) -> Result<(), ClientError> {
        let checked = match self.peer_list(&c.identity_key)? {
            Some(held) => accept_update(&held, signed).map(|l| (Some(held), l)),
            None if sender == &c.identity_key => {
                accept_first(&named_root(signed), signed, sender).map(|l| (None, l))
            }
            None => {
                warn!("dropping a first device list from a device we did not meet");
                return Ok(());
            }
        };
        let (held, list) = match checked {
            Ok(x) => x,
            Err(e) => {
                warn!("dropping a device list of {}: {e}", c.name);
                return Ok(());
            }
        };
        // A contact the user verified: only lists under the root key the
        // safety number covered.
        let verified_root = self.contact_state(&c.identity_key)?.verified_root;
        if verified_root.is_some_and(|r| r != list.root_key) {
            warn!(
                "dropping a device list of {} under another root key than the verified one",
                c.name
            );
            return Ok(());
        }
        self.forget_removed(held.as_ref(), &list)?;
        self.put_peer_list(&c.identity_key, &list)?;
        if held.is_none() {
            // Their first list: they may not have ours either (a contact
            // from before device lists). Ours goes back once; theirs is
            // then stale for them, so this ends.
            self.send_own_list_to(c)?;
        }
        Ok(())
    }

    /// Queue our list for every device of `c` (flushed soon after).
    fn send_own_list_to(&mut self, c: &Contact) -> Result<(), ClientError> {
        let Some(own) = self.load_own()? else {
            return Ok(());
        };
        let body = Body::DeviceListUpdate(pb::DeviceListUpdate {
            list: Some(own.list.signed()),
        });
        let content = crate::layers::content(crate::client::random16(), now_ms(), body);
        match self.enqueue_fanned(c, None, &content, None) {
            // Flushed with the group news (inbox/mod.rs, handle/task.rs).
            Ok(()) => self.group_news = true,
            Err(e) => debug!("our list not queued for {}: {e}", c.name),
        }
        Ok(())
    }

    /// Drop our sessions with the devices `held` named and `new` does not.
    fn forget_removed(
        &self,
        held: Option<&DeviceList>,
        new: &DeviceList,
    ) -> Result<(), ClientError> {
        for d in held.map(|h| h.devices.as_slice()).unwrap_or_default() {
            if new.device(&d.identity_key).is_none() {
                self.store.drop_session(&d.identity_key)?;
            }
        }
        Ok(())
    }

    /// A message from our own device `sender`: our list, a copy of a text it
    /// sent, or a contact it added. Stored with the session (kept unless it
    /// lost the race of two new sessions) and the id as seen.
    pub(crate) fn accept_from_own(
        &mut self,
        sender: &[u8; 32],
        session: &PairSession,
        account: Option<DeviceAccount>,
        keep_new: bool,
        opened: Opened,
    ) -> Result<(), ClientError> {
        let id = opened.id;
        if !self.store.seen(&id)? {
            match opened.body {
                Some(Body::DeviceListUpdate(u)) => {
                    if let Some(signed) = u.list {
                        self.apply_own_list(&signed)?;
                    }
                }
                Some(body @ (Body::GroupUpdate(_) | Body::GroupKey(_))) => {
                    // Our groups, kept on every device (groups/devices.rs).
                    self.group_control(*sender, body)?;
                }
                Some(Body::DeviceSync(s)) => {
                    if let Some(sent) = s.sent {
                        self.store_sent_copy(&sent)?;
                    }
                    if let Some(c) = s.contact {
                        self.add_contact_copy(&c)?;
                    }
                    let read: Vec<[u8; 16]> = s
                        .read
                        .iter()
                        .filter_map(|b| <[u8; 16]>::try_from(&b[..]).ok())
                        .collect();
                    self.take_read_sync(&read)?;
                }
                _ => debug!("dropping a message from our own device that is not a sync"),
            }
        }
        let keep = account.is_none() || keep_new;
        let pickle = keep.then(|| session.to_encrypted_pickle(&self.key));
        self.store.commit_session(sender, pickle.as_deref(), &id)?;
        if let Some(account) = account {
            self.account = account;
            self.save_account()?;
        }
        Ok(())
    }

    /// Our account's list, changed on another device.
    fn apply_own_list(&mut self, signed: &pb::DeviceSignedList) -> Result<(), ClientError> {
        let mut own = self.own_devices()?;
        match accept_update(&own.list, signed) {
            Ok(list) => {
                if list.device(&self.account.identity_key()).is_none() {
                    warn!("this device was removed from its account's device list");
                }
                self.forget_removed(Some(&own.list), &list)?;
                own.list = list;
                self.put_own(&own)
            }
            Err(e) => {
                warn!("dropping our own device list: {e}");
                Ok(())
            }
        }
    }

    /// A text another of our devices sent: stored as sent by us.
    fn store_sent_copy(&self, sent: &pb::DeviceSentCopy) -> Result<(), ClientError> {
        let (Some(peer), Ok(id)) = (
            key32(&sent.peer),
            <[u8; 16]>::try_from(&sent.message_id[..]),
        ) else {
            warn!("dropping a malformed sent copy");
            return Ok(());
        };
        if self.store.contact(&peer)?.is_none() {
            debug!("dropping a sent copy for a contact this device does not have");
            return Ok(());
        }
        let entry = StoredMessage {
            id: hex::encode(id),
            contact: peer,
            outgoing: true,
            text: sent.text.clone(),
            sent_at_ms: sent.sent_at_ms,
            stored_at_ms: now_ms(),
            status: Status::Sent,
        };
        let key = message_key(&peer, sent.sent_at_ms, &id);
        self.store.put_message(&key, &entry)?;
        // Receipts for it reach every device of ours (the contact sends
        // them to all): this one keeps its status too.
        if self.store.receipt_record(&id)?.is_none() {
            self.track_sent(&id, &key, &[peer])?;
        }
        Ok(())
    }

    /// A contact another of our devices added, unless we have it.
    pub(crate) fn add_contact_copy(&self, c: &pb::DeviceContactCopy) -> Result<(), ClientError> {
        let addr = c.address.clone().unwrap_or_default();
        let (
            Some(identity_key),
            Some(signing_key),
            Some(seal_key),
            Some(send_token),
            Ok(mailbox_id),
        ) = (
            key32(&c.identity_key),
            key32(&c.signing_key),
            key32(&c.seal_key),
            key32(&addr.send_token),
            <[u8; 16]>::try_from(&addr.mailbox_id[..]),
        )
        else {
            warn!("dropping a malformed contact copy");
            return Ok(());
        };
        if self.store.contact(&identity_key)?.is_some() {
            return Ok(());
        }
        let name = unique_name(&base_name(&c.name), |n| {
            Ok(self.store.contact_named(n)?.is_some())
        })?;
        let contact = Contact {
            name,
            identity_key,
            signing_key,
            seal_key,
            relay_url: addr.relay_url.clone(),
            mailbox_id,
            send_token,
            // Made on another device: the token it gave is on that one.
            token_given: None,
            added_at_ms: now_ms(),
        };
        self.store.put_contact(&contact)?;
        if let Some(signed) = &c.device_list {
            match accept_first(&c.root_key, signed, &identity_key) {
                Ok(list) => self.put_peer_list(&identity_key, &list)?,
                Err(e) => warn!("a contact copy with a bad device list: {e}"),
            }
        }
        Ok(())
    }
}
