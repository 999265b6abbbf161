//! Verified contacts: the safety number two people compare, marking a
//! contact verified, and what happens when a contact's identity key
//! changes.
//!
//! A key change can reach us two ways today, and both end here
//! ([`Client::change_contact_key`]):
//!
//! - a hello (using one of our outstanding invites) from a new identity key
//!   that gives the reply address (relay and mailbox) of an existing
//!   contact: the same person on a new device, or someone in the middle;
//! - `tern accept CODE --name NAME` where NAME is an existing contact and
//!   the invite carries another identity key (a re-invite).
//!
//! The contact keeps its name and is stored under the new key; its state
//! records the key it had (`changed_from`). `recv`/`listen` show a
//! `key_change` event; if the user had verified the old key, sends to the
//! contact stop with [`ClientError::KeyChanged`] until they confirm the new
//! one (`tern verify CONTACT --confirm`), which also marks it verified.

use crate::client::Client;
use crate::contact_state::ContactState;
use crate::error::ClientError;
use crate::event::Event;
use crate::store::Contact;
use tern_crypto::safety;

impl Client {
    /// The 60-digit safety number with the contact named `name`: the same
    /// on both sides ([`tern_crypto::safety`]). It is computed over the two
    /// accounts' root keys, so it is the same on every device of either
    /// account and linking or removing a device does not change it; with a
    /// contact that never sent a signed device list (a client from before
    /// device lists), over the two identity keys as before.
    pub fn safety_number(&self, name: &str) -> Result<String, ClientError> {
        let contact = self.contact_named(name)?;
        let (ours, theirs) = self.safety_keys(&contact)?;
        Ok(safety::safety_number(&ours, &theirs))
    }

    /// The keys the safety number with `contact` covers: both root keys,
    /// else both identity keys (of this device and the device we met).
    fn safety_keys(&self, contact: &Contact) -> Result<([u8; 32], [u8; 32]), ClientError> {
        let theirs = self.peer_list(&contact.identity_key)?.map(|l| l.root_key);
        let ours = self.load_own()?.map(|o| o.list.root_key);
        Ok(match (ours, theirs) {
            (Some(o), Some(t)) => (o, t),
            _ => (self.account.identity_key(), contact.identity_key),
        })
    }

    /// Mark the contact named `name` verified (with the identity key it has
    /// now), or not.
    pub async fn set_verified(&mut self, name: &str, verified: bool) -> Result<(), ClientError> {
        let contact = self.contact_named(name)?;
        let mut state = self.contact_state(&contact.identity_key)?;
        state.verified_key = verified.then_some(contact.identity_key);
        // The root key the safety number covered: its lists only, from now.
        state.verified_root = if verified {
            self.peer_list(&contact.identity_key)?.map(|l| l.root_key)
        } else {
            None
        };
        if verified {
            state.changed_from = None;
        }
        self.put_contact_state(&contact.identity_key, &state)?;
        self.store.flush().await
    }

    /// Accept the contact's new identity key after a key change: sends
    /// resume, and a contact that was verified is verified with the new key
    /// (the user has just compared the new safety number).
    pub async fn confirm_key(&mut self, name: &str) -> Result<(), ClientError> {
        let contact = self.contact_named(name)?;
        let mut state = self.contact_state(&contact.identity_key)?;
        if state.verified_key.is_some() {
            state.verified_key = Some(contact.identity_key);
        }
        state.changed_from = None;
        self.put_contact_state(&contact.identity_key, &state)?;
        self.store.flush().await
    }

    /// Refuse to send to a verified contact whose key changed.
    pub(crate) fn check_sendable(&self, contact: &Contact) -> Result<ContactState, ClientError> {
        let state = self.contact_state(&contact.identity_key)?;
        if state.sends_stopped(&contact.identity_key) {
            return Err(ClientError::KeyChanged(contact.name.clone()));
        }
        Ok(state)
    }

    /// `old` now has the identity key of `new` (stored by the caller):
    /// forget the old record, carry its state over with the key it had.
    pub(crate) fn change_contact_key(
        &self,
        old: &Contact,
        new: &Contact,
    ) -> Result<Event, ClientError> {
        let mut state = self.contact_state(&old.identity_key)?;
        state.changed_from = Some(old.identity_key);
        self.put_contact_state(&new.identity_key, &state)?;
        self.remove_contact_state(&old.identity_key)?;
        self.store.remove_contact(&old.identity_key)?;
        self.store
            .move_history(&old.identity_key, &new.identity_key)?;
        Ok(Event::KeyChanged {
            name: new.name.clone(),
            verified: state.verified_key.is_some(),
        })
    }
}
