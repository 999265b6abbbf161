//! Several devices per account (issue 15): the account root key, the signed
//! device list ([`list`], pure), the lists of our contacts, and who may send
//! to us.
//!
//! Each device keeps its own Olm account and mailbox. The account's root
//! key (in `dev_own`, every device holds it) signs the list of devices;
//! contacts pin the root key when they add us and accept a device only if
//! a list signed by it names the device. A contact stays keyed by the
//! identity key of the device we met (its conversation id); the other
//! devices of its list are indexed back to it (`dev_alias`), with their own
//! Olm sessions keyed by their identity keys. Sends fan out to every listed
//! device ([`fanout`]), copies of what we send go to our own other devices
//! ([`sync`]), and linking a new device is [`link`] and [`join`]; `tern device list /
//! rename / remove` are in [`manage`].

pub mod fanout;
pub mod join;
pub mod link;
pub mod list;
pub mod manage;
pub mod sync;

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::store::{Contact, ContactId};
use list::{may_send, sign_list, Device, DeviceList};
use serde::{Deserialize, Serialize};
use tern_crypto::RootKey;

/// Our account's root key and device list (one record).
pub(crate) const OWN_TREE: &str = "dev_own";
/// Each contact's verified device list, by conversation id.
pub(crate) const PEERS_TREE: &str = "dev_peers";
/// A contact's device (identity key) → the contact's conversation id.
pub(crate) const ALIAS_TREE: &str = "dev_alias";
const OWN_KEY: &[u8] = b"own";

/// This account's root key, this device's id and the account's list.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct OwnDevices {
    /// The root key's secret bytes (the store is encrypted).
    pub(crate) root_secret: [u8; 32],
    /// This device's id in the list.
    pub(crate) device_id: [u8; 8],
    /// The account's current list.
    pub(crate) list: DeviceList,
}

impl Drop for OwnDevices {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.root_secret);
    }
}

impl OwnDevices {
    /// The root key.
    pub(crate) fn root(&self) -> RootKey {
        RootKey::from_bytes(&self.root_secret)
    }
}

/// Who a sealed message came from, by the device that sent it.
#[derive(Debug)]
pub(crate) enum Sender {
    /// The device of a contact we met (the contact's own key).
    Contact(Contact),
    /// Another device on the contact's signed list.
    ContactDevice(Contact),
    /// Another device of our own account.
    OwnDevice,
    /// A device of a contact that its list does not name (removed, or
    /// never added): it gets nothing and what it sends is dropped.
    Refused,
    /// Nobody we know (perhaps a hello, or a group member).
    Unknown,
}

/// One device to seal a message to, and how to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) identity_key: [u8; 32],
    pub(crate) seal_key: [u8; 32],
    pub(crate) relay_url: String,
    pub(crate) mailbox_id: [u8; 16],
    pub(crate) token: [u8; 32],
    /// To start a session if we have none (absent for the device we met).
    pub(crate) fallback_key: Option<[u8; 32]>,
}

impl Target {
    /// The device we met of `c`, by its contact record.
    pub(crate) fn of_contact(c: &Contact) -> Self {
        Self {
            identity_key: c.identity_key,
            seal_key: c.seal_key,
            relay_url: c.relay_url.clone(),
            mailbox_id: c.mailbox_id,
            token: c.send_token,
            fallback_key: None,
        }
    }

    /// A listed device with a shared token.
    pub(crate) fn of_device(d: &Device) -> Option<Self> {
        Some(Self {
            identity_key: d.identity_key,
            seal_key: d.seal_key,
            relay_url: d.relay_url.clone(),
            mailbox_id: d.mailbox_id,
            token: d.token?,
            fallback_key: Some(d.fallback_key),
        })
    }
}

impl Client {
    /// Our root key and list; made on first use for an account from before
    /// device lists (one device, no shared token yet: contacts keep
    /// reaching it through their own tokens).
    pub(crate) fn own_devices(&mut self) -> Result<OwnDevices, ClientError> {
        if let Some(own) = self.load_own()? {
            return Ok(own);
        }
        let root = RootKey::generate();
        let me = self.my_device(random_id(), None, "first device");
        let own = OwnDevices {
            root_secret: *root.to_bytes(),
            device_id: me.id,
            list: sign_list(&root, 1, vec![me]),
        };
        self.save_account()?;
        self.put_own(&own)?;
        Ok(own)
    }

    /// The stored record, if any (no migration).
    pub(crate) fn load_own(&self) -> Result<Option<OwnDevices>, ClientError> {
        let tree = self.store.tree(OWN_TREE)?;
        self.store.get_in(&tree, OWN_TREE, OWN_KEY)
    }

    /// Store our record; if the list changed, our group cards are made
    /// again to name it (groups/devices.rs).
    pub(crate) fn put_own(&self, own: &OwnDevices) -> Result<(), ClientError> {
        let old = self.load_own()?.map(|o| o.list.version);
        let tree = self.store.tree(OWN_TREE)?;
        self.store.put_in(&tree, OWN_TREE, OWN_KEY, own)?;
        if old.is_some_and(|v| v != own.list.version) {
            self.own_list_changed()?;
        }
        Ok(())
    }

    /// This device as a list entry (its fallback key made if need be).
    pub(crate) fn my_device(&mut self, id: [u8; 8], token: Option<[u8; 32]>, name: &str) -> Device {
        Device {
            id,
            identity_key: self.account.identity_key(),
            signing_key: self.account.signing_key(),
            seal_key: self.account.seal_public(),
            relay_url: self.profile.relay_url.clone(),
            mailbox_id: self.profile.mailbox_id,
            token,
            name: name.to_string(),
            added_at_ms: now_ms(),
            fallback_key: self.account.group_fallback_key(),
        }
    }

    /// The verified list of the contact stored under `conv`, if it sent one.
    pub(crate) fn peer_list(&self, conv: &ContactId) -> Result<Option<DeviceList>, ClientError> {
        let tree = self.store.tree(PEERS_TREE)?;
        self.store
            .get_in(&tree, PEERS_TREE, &self.store.contact_key(conv))
    }

    /// Store `list` as the contact `conv`'s, and index its devices to it.
    pub(crate) fn put_peer_list(
        &self,
        conv: &ContactId,
        list: &DeviceList,
    ) -> Result<(), ClientError> {
        let peers = self.store.tree(PEERS_TREE)?;
        let alias = self.store.tree(ALIAS_TREE)?;
        if let Some(old) = self.peer_list(conv)? {
            for d in &old.devices {
                alias.remove(self.store.contact_key(&d.identity_key))?;
            }
        }
        for d in &list.devices {
            let k = self.store.contact_key(&d.identity_key);
            self.store.put_in(&alias, ALIAS_TREE, &k, conv)?;
        }
        self.store
            .put_in(&peers, PEERS_TREE, &self.store.contact_key(conv), list)
    }

    /// Who sent a message from device `sender`.
    pub(crate) fn resolve_sender(&self, sender: &[u8; 32]) -> Result<Sender, ClientError> {
        if let Some(c) = self.store.contact(sender)? {
            let list = self.peer_list(sender)?;
            return Ok(if may_send(list.as_ref(), sender, sender) {
                Sender::Contact(c)
            } else {
                Sender::Refused
            });
        }
        if let Some(own) = self.load_own()? {
            if sender != &self.account.identity_key() && own.list.device(sender).is_some() {
                return Ok(Sender::OwnDevice);
            }
        }
        let alias = self.store.tree(ALIAS_TREE)?;
        let conv: Option<ContactId> =
            self.store
                .get_in(&alias, ALIAS_TREE, &self.store.contact_key(sender))?;
        if let Some(conv) = conv {
            if let Some(c) = self.store.contact(&conv)? {
                let list = self.peer_list(&conv)?;
                return Ok(if may_send(list.as_ref(), &conv, sender) {
                    Sender::ContactDevice(c)
                } else {
                    Sender::Refused
                });
            }
        }
        Ok(Sender::Unknown)
    }

    /// Every device of contact `c` to send to: the ones its list names (the
    /// device we met through its contact record and per-contact token, the
    /// others through the list's shared tokens), or the device we met alone
    /// if it never sent a list.
    pub(crate) fn contact_targets(&self, c: &Contact) -> Result<Vec<Target>, ClientError> {
        Ok(match self.peer_list(&c.identity_key)? {
            None => vec![Target::of_contact(c)],
            Some(list) => list
                .devices
                .iter()
                .filter_map(|d| {
                    if d.identity_key == c.identity_key {
                        Some(Target::of_contact(c))
                    } else {
                        Target::of_device(d)
                    }
                })
                .collect(),
        })
    }

    /// Our own other devices that can be written to.
    pub(crate) fn own_targets(&self) -> Result<Vec<Target>, ClientError> {
        let me = self.account.identity_key();
        Ok(match self.load_own()? {
            None => Vec::new(),
            Some(own) => own
                .list
                .devices
                .iter()
                .filter(|d| d.identity_key != me)
                .filter_map(Target::of_device)
                .collect(),
        })
    }

    /// Our session with device `t`, or a new one from its fallback key.
    pub(crate) fn session_for(
        &self,
        t: &Target,
    ) -> Result<Option<tern_crypto::PairSession>, ClientError> {
        if let Some(s) = self.load_session(&t.identity_key)? {
            return Ok(Some(s));
        }
        let Some(fallback) = t.fallback_key else {
            return Ok(None);
        };
        match self.account.start_session(&t.identity_key, &fallback) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                tracing::debug!("a listed device with an unusable key: {e}");
                Ok(None)
            }
        }
    }

    /// The session with contact `c` to send through: the stored one with
    /// the device we met, else one started from its listed fallback key.
    pub(crate) fn contact_session(
        &self,
        c: &Contact,
    ) -> Result<Option<tern_crypto::PairSession>, ClientError> {
        if let Some(s) = self.load_session(&c.identity_key)? {
            return Ok(Some(s));
        }
        let fallback = self
            .peer_list(&c.identity_key)?
            .and_then(|l| l.device(&c.identity_key).map(|d| d.fallback_key));
        let mut t = Target::of_contact(c);
        t.fallback_key = fallback;
        self.session_for(&t)
    }
}

/// A fresh device id.
pub(crate) fn random_id() -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&random16()[..8]);
    id
}

#[cfg(test)]
mod tests;
