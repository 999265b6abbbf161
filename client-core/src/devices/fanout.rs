//! Fan-out: what we send a contact goes to every device on its signed list,
//! each device through its own Olm session and its own sealed envelope, and
//! a copy of what we send goes to our own other devices.
//!
//! Per-device Olm means per-device ciphertexts, so these are separate
//! outbox items (and separate `Send`s), not one `SendMany`: a shared
//! payload would need the content encrypted once under a random key and
//! that key wrapped per device, which saves bytes only for large payloads
//! (docs/decisions.md, "Device fan-out: one Olm envelope per device"). The
//! first item of a fan-out is the message's own (it carries the
//! conversation entry and is what `send` reports); the others are quiet
//! copies (`OutboxItem::copy`) that nobody is told about.

use super::Target;
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::layers;
use crate::store::{Contact, OutboxItem, StoredMessage};
use tern_crypto::PairSession;
use tern_protocol::pb::{self, content::Body};
use tracing::debug;

/// Whether `content` goes to every device of a contact (texts and our
/// device list) or only to the device we met (introductions, token
/// rotations, receipts and group control, which are per device).
pub(crate) fn fans_out(content: &pb::Content) -> bool {
    matches!(
        content.body,
        Some(Body::Text(_) | Body::DeviceListUpdate(_))
    )
}

impl Client {
    /// Seal `content` for device `t` and put it in the outbox with the
    /// advanced session (and the conversation entry, if given).
    pub(crate) fn enqueue_to(
        &self,
        t: &Target,
        mut session: PairSession,
        content: &pb::Content,
        entry: Option<(&[u8], &StoredMessage)>,
        copy: bool,
    ) -> Result<(), ClientError> {
        let payload = layers::seal_content(
            &mut session,
            &self.account.identity_key(),
            &t.seal_key,
            content,
        );
        layers::check_size(&payload).map_err(|layers::SealError::TooLarge { size, max }| {
            ClientError::TooLarge { size, max }
        })?;
        let item = OutboxItem {
            position: self.store.next_position()?,
            message_id: content.message_id[..]
                .try_into()
                .map_err(|_| ClientError::Store("message id is not 16 bytes".into()))?,
            contact: t.identity_key,
            message_key: entry.map(|(k, _)| k.to_vec()),
            relay_url: t.relay_url.clone(),
            mailbox_id: t.mailbox_id,
            token: t.token,
            payload,
            copy,
        };
        self.store
            .commit_outgoing(&session.to_encrypted_pickle(&self.key), entry, &item)
    }

    /// Put `content` in the outbox for every device of `contact`
    /// ([`Client::contact_targets`]); `session` is the one with the device
    /// we met, if the caller has it.
    pub(crate) fn enqueue_fanned(
        &self,
        contact: &Contact,
        mut session: Option<PairSession>,
        content: &pb::Content,
        entry: Option<(&[u8], &StoredMessage)>,
    ) -> Result<(), ClientError> {
        let mut first = true;
        for t in self.contact_targets(contact)? {
            let s = if t.identity_key == contact.identity_key {
                match session.take() {
                    Some(s) => Some(s),
                    None => self.contact_session(contact)?,
                }
            } else {
                self.session_for(&t)?
            };
            let Some(s) = s else {
                debug!("no session with a device of {}", contact.name);
                continue;
            };
            self.enqueue_to(&t, s, content, if first { entry } else { None }, !first)?;
            first = false;
        }
        if first {
            return Err(ClientError::Device(format!(
                "no device of {} can be reached",
                contact.name
            )));
        }
        Ok(())
    }

    /// Quiet copies of `content` for every device of `c` but the one we met
    /// (which the caller sent it to). A group member reached through its
    /// card has no list, so no copies.
    pub(crate) fn copy_to_other_devices(
        &self,
        c: &Contact,
        content: &pb::Content,
    ) -> Result<(), ClientError> {
        if self.store.contact(&c.identity_key)?.is_none() {
            return Ok(());
        }
        for t in self.contact_targets(c)? {
            if t.identity_key == c.identity_key {
                continue;
            }
            if let Some(s) = self.session_for(&t)? {
                self.enqueue_to(&t, s, content, None, true)?;
            }
        }
        Ok(())
    }

    /// Put `body` in the outbox for each of our own other devices (each a
    /// fresh message id). Returns how many.
    pub(crate) fn sync_to_own(&self, body: Body) -> Result<usize, ClientError> {
        let mut n = 0;
        for t in self.own_targets()? {
            let Some(s) = self.session_for(&t)? else {
                continue;
            };
            let content = layers::content(random16(), now_ms(), body.clone());
            self.enqueue_to(&t, s, &content, None, true)?;
            n += 1;
        }
        Ok(n)
    }

    /// A copy of text `id` we sent contact `c`, for our other devices.
    pub(crate) fn sync_sent(
        &self,
        c: &Contact,
        id: &[u8; 16],
        at: u64,
        text: &str,
    ) -> Result<(), ClientError> {
        let body = Body::DeviceSync(pb::DeviceSync {
            sent: Some(pb::DeviceSentCopy {
                peer: c.identity_key.to_vec().into(),
                message_id: id.to_vec().into(),
                sent_at_ms: at,
                text: text.to_string(),
            }),
            ..Default::default()
        });
        self.sync_to_own(body).map(|_| ())
    }

    /// Contact `c` (new on this device), for our other devices.
    pub(crate) fn sync_contact(&self, c: &Contact) -> Result<(), ClientError> {
        let body = Body::DeviceSync(pb::DeviceSync {
            contact: Some(self.contact_copy(c)?),
            ..Default::default()
        });
        self.sync_to_own(body).map(|_| ())
    }

    /// Contact `c` as our other devices get it: keys, address, and its
    /// root key and list if it sent one.
    pub(crate) fn contact_copy(&self, c: &Contact) -> Result<pb::DeviceContactCopy, ClientError> {
        let list = self.peer_list(&c.identity_key)?;
        Ok(pb::DeviceContactCopy {
            name: c.name.clone(),
            identity_key: c.identity_key.to_vec().into(),
            signing_key: c.signing_key.to_vec().into(),
            seal_key: c.seal_key.to_vec().into(),
            address: Some(layers::address(&c.relay_url, &c.mailbox_id, &c.send_token)),
            root_key: list
                .as_ref()
                .map(|l| l.root_key.to_vec())
                .unwrap_or_default()
                .into(),
            device_list: list.map(|l| l.signed()),
        })
    }
}
