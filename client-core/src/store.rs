//! The device's local store: a sled database in the home directory where
//! every value (account, Olm sessions, contacts, messages, outbox) is
//! encrypted with the device's [`StoreKey`], bound by AEAD associated data to
//! the tree and key it lives under. Writes that must happen together (a
//! ratchet step and the message it carried) are one transaction.

use crate::error::ClientError;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};
use std::path::Path;
use tern_crypto::StoreKey;

mod receipts;

/// Identity key of a contact's device: how contacts are keyed.
pub type ContactId = [u8; 32];

/// Who this device is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Display name shown to contacts.
    pub name: String,
    /// Home relay URL.
    pub relay_url: String,
    /// Mailbox id on the home relay.
    pub mailbox_id: [u8; 16],
}

/// A contact and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Local name for them.
    pub name: String,
    /// Their Curve25519 identity key.
    pub identity_key: [u8; 32],
    /// Their Ed25519 signing key.
    pub signing_key: [u8; 32],
    /// Their X25519 key that payloads are sealed to.
    pub seal_key: [u8; 32],
    /// Their relay.
    pub relay_url: String,
    /// Their mailbox.
    pub mailbox_id: [u8; 16],
    /// A token that lets us write to their mailbox.
    pub send_token: [u8; 32],
    /// The token we gave them (revoking it blocks them).
    pub token_given: Option<[u8; 32]>,
    /// When they were added, ms since the epoch.
    pub added_at_ms: u64,
}

/// Where a message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Waiting in the outbox for the relay.
    Queued,
    /// The recipient's relay has it durably.
    Sent,
    /// Refused for good (for example, the contact blocked us).
    Failed(String),
    /// Received from the contact.
    Received,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Message id, hex.
    pub id: String,
    /// The contact's identity key.
    pub contact: ContactId,
    /// True if we sent it.
    pub outgoing: bool,
    /// The text.
    pub text: String,
    /// When the sender wrote it, ms since the epoch.
    pub sent_at_ms: u64,
    /// When it reached this device (equal to sent_at for ours).
    pub stored_at_ms: u64,
    /// Where it stands.
    pub status: Status,
}

/// A sealed envelope waiting to be deposited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Position in the outbox: items go out in the order they were written,
    /// so a contact's introduction always reaches the relay before the
    /// messages that follow it.
    pub position: u64,
    /// Message id (stable across retries).
    pub message_id: [u8; 16],
    /// The contact it is for.
    pub contact: ContactId,
    /// Key of the conversation entry to update, if it is a text.
    pub message_key: Option<Vec<u8>>,
    /// Target relay.
    pub relay_url: String,
    /// Target mailbox.
    pub mailbox_id: [u8; 16],
    /// Token for it.
    pub token: [u8; 32],
    /// Sealed bytes.
    pub payload: Vec<u8>,
}

/// The encrypted local database.
pub struct LocalStore {
    db: Db,
    key: StoreKey,
    meta: Tree,
    contacts: Tree,
    sessions: Tree,
    messages: Tree,
    seen: Tree,
    outbox: Tree,
    // Receipts and typing (store/receipts.rs).
    receipt_status: Tree,
    receipt_pending: Tree,
    receipt_shown: Tree,
    receipt_batches: Tree,
    typing_sent: Tree,
}

type TxResult<T> = Result<T, ConflictableTransactionError<ClientError>>;

fn tx_err(e: TransactionError<ClientError>) -> ClientError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut a = tree.as_bytes().to_vec();
    a.push(0);
    a.extend_from_slice(key);
    a
}

/// Key of a conversation entry: contact, time, id (so history is in order).
pub fn message_key(contact: &ContactId, at_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = contact.to_vec();
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// Outbox key: position (8, BE) then message id, so iteration is FIFO.
fn outbox_key(item: &OutboxItem) -> Vec<u8> {
    let mut k = item.position.to_be_bytes().to_vec();
    k.extend_from_slice(&item.message_id);
    k
}

impl LocalStore {
    /// A number larger than any handed out before (survives restarts).
    pub fn next_position(&self) -> Result<u64, ClientError> {
        Ok(self.db.generate_id()?)
    }

    /// Open (or create) the store at `path` with `key`.
    pub fn open(path: &Path, key: StoreKey) -> Result<Self, ClientError> {
        let db = sled::open(path)?;
        let t = |n: &str| db.open_tree(n);
        Ok(Self {
            meta: t("meta")?,
            contacts: t("contacts")?,
            sessions: t("sessions")?,
            messages: t("messages")?,
            seen: t("seen")?,
            outbox: t("outbox")?,
            receipt_status: t("receipt_status")?,
            receipt_pending: t("receipt_pending")?,
            receipt_shown: t("receipt_shown")?,
            receipt_batches: t("receipt_batches")?,
            typing_sent: t("typing_sent")?,
            db,
            key,
        })
    }

    fn seal_value<T: Serialize>(
        &self,
        tree: &str,
        key: &[u8],
        v: &T,
    ) -> Result<Vec<u8>, ClientError> {
        Ok(self.key.encrypt(&aad(tree, key), &serde_json::to_vec(v)?))
    }

    fn open_value<T: DeserializeOwned>(
        &self,
        tree: &str,
        key: &[u8],
        raw: &[u8],
    ) -> Result<T, ClientError> {
        let plain = self.key.decrypt(&aad(tree, key), raw)?;
        Ok(serde_json::from_slice(&plain)?)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &str,
        key: &[u8],
    ) -> Result<Option<T>, ClientError> {
        match tree.get(key)? {
            Some(raw) => Ok(Some(self.open_value(name, key, &raw)?)),
            None => Ok(None),
        }
    }

    /// Make everything written so far durable.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// The encrypted account pickle.
    pub fn account_pickle(&self) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.meta.get("account")?.map(|v| v.to_vec()))
    }

    /// Save the account pickle (already encrypted by tern-crypto).
    pub fn set_account_pickle(&self, pickle: Vec<u8>) -> Result<(), ClientError> {
        self.meta.insert("account", pickle)?;
        Ok(())
    }

    /// This device's profile.
    pub fn profile(&self) -> Result<Option<Profile>, ClientError> {
        self.get(&self.meta, "meta", b"profile")
    }

    /// Save this device's profile.
    pub fn set_profile(&self, p: &Profile) -> Result<(), ClientError> {
        self.meta
            .insert("profile", self.seal_value("meta", b"profile", p)?)?;
        Ok(())
    }

    /// All contacts, in name order.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        let mut all = Vec::new();
        for kv in self.contacts.iter() {
            let (k, v) = kv?;
            all.push(self.open_value::<Contact>("contacts", &k, &v)?);
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// The contact with this identity key.
    pub fn contact(&self, id: &ContactId) -> Result<Option<Contact>, ClientError> {
        self.get(&self.contacts, "contacts", id)
    }

    /// The contact with this local name.
    pub fn contact_named(&self, name: &str) -> Result<Option<Contact>, ClientError> {
        Ok(self.contacts()?.into_iter().find(|c| c.name == name))
    }

    /// Save a contact.
    pub fn put_contact(&self, c: &Contact) -> Result<(), ClientError> {
        self.contacts.insert(
            c.identity_key,
            self.seal_value("contacts", &c.identity_key, c)?,
        )?;
        Ok(())
    }

    /// The encrypted session pickle for a contact.
    pub fn session(&self, id: &ContactId) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.sessions.get(id)?.map(|v| v.to_vec()))
    }

    /// Whether a received message id was already stored.
    pub fn seen(&self, message_id: &[u8; 16]) -> Result<bool, ClientError> {
        Ok(self.seen.contains_key(message_id)?)
    }

    /// Record an outgoing message: the advanced session, the conversation
    /// entry and the outbox item, all or nothing.
    pub fn commit_outgoing(
        &self,
        session_pickle: &[u8],
        message: Option<(&[u8], &StoredMessage)>,
        item: &OutboxItem,
    ) -> Result<(), ClientError> {
        let msg = match message {
            Some((k, m)) => Some((k.to_vec(), self.seal_value("messages", k, m)?)),
            None => None,
        };
        let okey = outbox_key(item);
        let out = self.seal_value("outbox", &okey, item)?;
        (&self.sessions, &self.messages, &self.outbox)
            .transaction(|(sessions, messages, outbox)| -> TxResult<()> {
                sessions.insert(&item.contact[..], session_pickle)?;
                if let Some((k, v)) = &msg {
                    messages.insert(&k[..], &v[..])?;
                }
                outbox.insert(&okey[..], &out[..])?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// Record an incoming message: the new or advanced session, a new
    /// contact if it introduced itself, the conversation entry, and its id as
    /// seen, all or nothing.
    pub fn commit_incoming(
        &self,
        contact: &Contact,
        new_contact: bool,
        session_pickle: &[u8],
        message_id: &[u8; 16],
        message: Option<(&[u8], &StoredMessage)>,
    ) -> Result<(), ClientError> {
        let contact_value = if new_contact {
            Some(self.seal_value("contacts", &contact.identity_key, contact)?)
        } else {
            None
        };
        let msg = match message {
            Some((k, m)) => Some((k.to_vec(), self.seal_value("messages", k, m)?)),
            None => None,
        };
        let id = contact.identity_key;
        (&self.contacts, &self.sessions, &self.messages, &self.seen)
            .transaction(|(contacts, sessions, messages, seen)| -> TxResult<()> {
                if let Some(v) = &contact_value {
                    contacts.insert(&id[..], &v[..])?;
                }
                sessions.insert(&id[..], session_pickle)?;
                if let Some((k, v)) = &msg {
                    messages.insert(&k[..], &v[..])?;
                }
                seen.insert(&message_id[..], &[][..])?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// Everything waiting in the outbox.
    pub fn outbox(&self) -> Result<Vec<OutboxItem>, ClientError> {
        let mut items = Vec::new();
        for kv in self.outbox.iter() {
            let (k, v) = kv?;
            items.push(self.open_value::<OutboxItem>("outbox", &k, &v)?);
        }
        Ok(items)
    }

    /// Take an item out of the outbox and set its message's status.
    pub fn settle(&self, item: &OutboxItem, status: Status) -> Result<(), ClientError> {
        if let Some(k) = &item.message_key {
            if let Some(mut m) = self.get::<StoredMessage>(&self.messages, "messages", k)? {
                m.status = status;
                self.messages
                    .insert(&k[..], self.seal_value("messages", k, &m)?)?;
            }
        }
        self.outbox.remove(outbox_key(item))?;
        Ok(())
    }

    /// A tree of one feature's own (its name prefixed by the feature, e.g.
    /// `group_states`), whose values go through [`LocalStore::put_in`] and
    /// [`LocalStore::get_in`], encrypted like every other value.
    pub(crate) fn tree(&self, name: &str) -> Result<Tree, ClientError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Store `v` under `key` in the feature tree `tree` named `name`.
    pub(crate) fn put_in<T: Serialize>(
        &self,
        tree: &Tree,
        name: &str,
        key: &[u8],
        v: &T,
    ) -> Result<(), ClientError> {
        tree.insert(key, self.seal_value(name, key, v)?)?;
        Ok(())
    }

    /// The value under `key` in the feature tree `tree` named `name`.
    pub(crate) fn get_in<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &str,
        key: &[u8],
    ) -> Result<Option<T>, ClientError> {
        self.get(tree, name, key)
    }

    /// Every value whose key starts with `prefix`, in key order.
    pub(crate) fn scan_in<T: DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, ClientError> {
        let mut out = Vec::new();
        for kv in tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push((k.to_vec(), self.open_value(name, &k, &v)?));
        }
        Ok(out)
    }

    /// Record a pairwise message that carried no conversation entry (a
    /// group control message): the session (if it is to be kept) and the
    /// id as seen, together.
    pub(crate) fn commit_session(
        &self,
        peer: &ContactId,
        session_pickle: Option<&[u8]>,
        message_id: &[u8; 16],
    ) -> Result<(), ClientError> {
        (&self.sessions, &self.seen)
            .transaction(|(sessions, seen)| -> TxResult<()> {
                if let Some(p) = session_pickle {
                    sessions.insert(&peer[..], p)?;
                }
                seen.insert(&message_id[..], &[][..])?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// Mark a received message id as stored.
    pub(crate) fn mark_seen(&self, message_id: &[u8; 16]) -> Result<(), ClientError> {
        self.seen.insert(message_id, &[][..])?;
        Ok(())
    }

    /// The last `limit` messages with a contact, oldest first.
    pub fn history(
        &self,
        contact: &ContactId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let mut out = Vec::new();
        for kv in self.messages.scan_prefix(contact).rev().take(limit) {
            let (k, v) = kv?;
            out.push(self.open_value::<StoredMessage>("messages", &k, &v)?);
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encrypted_and_bound_to_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let key = StoreKey::generate();
        let store = LocalStore::open(dir.path(), StoreKey::from_bytes(key.to_bytes())).unwrap();
        let p = Profile {
            name: "secret-name-xyz".into(),
            relay_url: "r".into(),
            mailbox_id: [1; 16],
        };
        store.set_profile(&p).unwrap();
        let raw = store.meta.get("profile").unwrap().unwrap();
        assert!(!raw.windows(15).any(|w| w == b"secret-name-xyz"));
        // Moving a value to another key is detected.
        store.meta.insert("other", raw).unwrap();
        assert!(store.get::<Profile>(&store.meta, "meta", b"other").is_err());
        drop(store);
        let wrong = LocalStore::open(dir.path(), StoreKey::generate()).unwrap();
        assert!(wrong.profile().is_err());
    }
}
