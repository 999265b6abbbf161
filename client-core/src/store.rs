//! The device's local store: a sled database in the home directory where
//! every value (account, Olm sessions, contacts, messages, outbox) is
//! encrypted with the device's [`StoreKey`], bound by AEAD associated data to
//! the tree and key it lives under. Writes that must happen together (a
//! ratchet step and the message it carried) are one transaction.
//!
//! The database's keys show nothing either: contact ids, message times and
//! received ids are stored under keyed hashes ([`StoreKey::keyed_hash`]),
//! and each Olm session pickle is bound (AEAD associated data) to its
//! contact and to a counter that one record, `priv_heads`, keeps for every
//! session, so a pickle moved to another contact or replaced by an older
//! one does not load. Stores written before this layout are rewritten
//! once, when opened ([`LocalStore::open`]).

use crate::error::ClientError;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};
use std::path::Path;
use tern_crypto::StoreKey;

mod flush;
mod receipts;

pub(crate) use flush::flush_db;

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
    /// A fan-out copy for another device (devices/fanout.rs): settled
    /// quietly, never reported as the message's own send.
    #[serde(default)]
    pub copy: bool,
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
    /// Every session's current counter, in one sealed record.
    heads: Tree,
}

/// The layout version this code writes (1: plain keys, unbound pickles).
const FORMAT: &[u8] = b"2";
/// Where the layout version is kept in `meta`.
const FORMAT_KEY: &str = "priv_format";
/// The key of the one record in `priv_heads`.
const HEADS_KEY: &[u8] = b"sessions";

/// Session counters by the session's database key (hex).
type Heads = std::collections::BTreeMap<String, u64>;

type TxResult<T> = Result<T, ConflictableTransactionError<ClientError>>;

fn tx_err(e: TransactionError<ClientError>) -> ClientError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

/// Associated data of a session pickle: its slot and counter.
fn pickle_aad(slot: &[u8; 32], counter: u64) -> Vec<u8> {
    let mut a = b"tern/2 session pickle\0".to_vec();
    a.extend_from_slice(slot);
    a.extend_from_slice(&counter.to_be_bytes());
    a
}

pub(crate) fn aad(tree: &str, key: &[u8]) -> Vec<u8> {
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

    /// Open (or create) the store at `path` with `key`, rewriting a store
    /// of the older layout (plain keys, unbound pickles) into this one.
    pub fn open(path: &Path, key: StoreKey) -> Result<Self, ClientError> {
        let db = sled::open(path)?;
        let t = |n: &str| db.open_tree(n);
        let store = Self {
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
            heads: t("priv_heads")?,
            db,
            key,
        };
        if store.meta.get(FORMAT_KEY)?.as_deref() != Some(FORMAT) {
            crate::store_migrate::migrate(&store)?;
        }
        Ok(store)
    }

    /// The sled database (for the modules that keep their own trees).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// The store key (for sealing records in other trees).
    pub(crate) fn store_key(&self) -> &StoreKey {
        &self.key
    }

    /// Seal `v` for `key` of the tree named `tree`.
    pub(crate) fn seal_record<T: Serialize>(
        &self,
        tree: &str,
        key: &[u8],
        v: &T,
    ) -> Result<Vec<u8>, ClientError> {
        self.seal_value(tree, key, v)
    }

    /// Open what [`LocalStore::seal_record`] sealed.
    pub(crate) fn open_record<T: DeserializeOwned>(
        &self,
        tree: &str,
        key: &[u8],
        raw: &[u8],
    ) -> Result<T, ClientError> {
        self.open_value(tree, key, raw)
    }

    /// The database key of a contact (also of its session and state).
    pub(crate) fn contact_key(&self, id: &ContactId) -> [u8; 32] {
        self.key.keyed_hash("contact", id)
    }

    /// Where a conversation entry is stored: its contact's messages prefix,
    /// then a hash of the entry's own key (so nothing shows its time).
    pub(crate) fn message_slot(&self, logical: &[u8]) -> Vec<u8> {
        let contact = &logical[..logical.len().min(32)];
        let mut k = self.key.keyed_hash("messages-of", contact).to_vec();
        k.extend_from_slice(&self.key.keyed_hash("message", logical));
        k
    }

    fn seen_slot(&self, message_id: &[u8; 16]) -> [u8; 32] {
        self.key.keyed_hash("seen", message_id)
    }

    /// Bind a session pickle to its contact slot and a counter.
    pub(crate) fn bind_pickle(&self, slot: &[u8; 32], counter: u64, pickle: &[u8]) -> Vec<u8> {
        let mut out = counter.to_be_bytes().to_vec();
        out.extend_from_slice(&self.key.encrypt(&pickle_aad(slot, counter), pickle));
        out
    }

    /// The session counters.
    pub(crate) fn heads(&self) -> Result<Heads, ClientError> {
        match self.heads.get(HEADS_KEY)? {
            Some(raw) => self.open_value("priv_heads", HEADS_KEY, &raw),
            None => Ok(Heads::new()),
        }
    }

    /// Inside a transaction over `sessions` and `priv_heads`
    /// ([`LocalStore::heads_tree`]): store a contact's session pickle bound
    /// to its slot and `counter` (from [`LocalStore::next_position`], taken
    /// before the transaction: sled's id generator must not run inside
    /// one), and move that counter. Every write
    /// of a session goes through here, so a transaction that writes a
    /// session must include both trees.
    pub(crate) fn put_session_tx(
        &self,
        sessions: &sled::transaction::TransactionalTree,
        heads: &sled::transaction::TransactionalTree,
        contact: &ContactId,
        pickle: &[u8],
        counter: u64,
    ) -> TxResult<()> {
        let slot = self.contact_key(contact);
        sessions.insert(&slot[..], self.bind_pickle(&slot, counter, pickle))?;
        self.move_head(heads, &slot, counter)
    }

    /// The tree of session counters, for transactions that write a session
    /// ([`LocalStore::put_session_tx`]).
    pub(crate) fn heads_tree(&self) -> &Tree {
        &self.heads
    }

    /// Inside a transaction: move `slot`'s counter to `counter` (read and
    /// written in the transaction, so no other write's counter is lost).
    fn move_head(
        &self,
        head: &sled::transaction::TransactionalTree,
        slot: &[u8; 32],
        counter: u64,
    ) -> TxResult<()> {
        let abort = ConflictableTransactionError::Abort;
        let mut heads: Heads = match head.get(HEADS_KEY)? {
            Some(raw) => self
                .open_value("priv_heads", HEADS_KEY, &raw)
                .map_err(abort)?,
            None => Heads::new(),
        };
        heads.insert(hex::encode(slot), counter);
        let sealed = self
            .seal_value("priv_heads", HEADS_KEY, &heads)
            .map_err(abort)?;
        head.insert(HEADS_KEY, sealed)?;
        Ok(())
    }

    /// The trees a migration rewrites, and the heads tree.
    pub(crate) fn trees(&self) -> [&Tree; 6] {
        [
            &self.meta,
            &self.contacts,
            &self.sessions,
            &self.messages,
            &self.seen,
            &self.heads,
        ]
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

    /// Make everything written so far durable (not through sled's
    /// `flush_async`: the docs of store/flush.rs say why).
    pub async fn flush(&self) -> Result<(), ClientError> {
        flush_db(&self.db).await
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
        self.get(&self.contacts, "contacts", &self.contact_key(id))
    }

    /// The contact with this local name.
    pub fn contact_named(&self, name: &str) -> Result<Option<Contact>, ClientError> {
        Ok(self.contacts()?.into_iter().find(|c| c.name == name))
    }

    /// Save a contact.
    pub fn put_contact(&self, c: &Contact) -> Result<(), ClientError> {
        let k = self.contact_key(&c.identity_key);
        self.contacts
            .insert(k, self.seal_value("contacts", &k, c)?)?;
        Ok(())
    }

    /// Remove a contact record (its keys changed: it is stored anew under
    /// the new identity key). Its session goes too.
    pub fn remove_contact(&self, id: &ContactId) -> Result<(), ClientError> {
        let k = self.contact_key(id);
        self.contacts.remove(k)?;
        self.sessions.remove(k)?;
        Ok(())
    }

    /// Move the conversation with `from` to `to` (the contact's identity
    /// key changed): every entry is stored again under the new contact, in
    /// one transaction.
    pub(crate) fn move_history(&self, from: &ContactId, to: &ContactId) -> Result<(), ClientError> {
        let prefix = self.key.keyed_hash("messages-of", from);
        let mut moves = Vec::new();
        for kv in self.messages.scan_prefix(prefix) {
            let (k, v) = kv?;
            let mut m: StoredMessage = self.open_value("messages", &k, &v)?;
            let id: [u8; 16] = hex::decode(&m.id)
                .ok()
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default();
            m.contact = *to;
            let slot = self.message_slot(&message_key(to, m.sent_at_ms, &id));
            let sealed = self.seal_value("messages", &slot, &m)?;
            moves.push((k.to_vec(), slot, sealed));
        }
        self.messages
            .transaction(|messages| -> TxResult<()> {
                for (old, new, v) in &moves {
                    messages.remove(&old[..])?;
                    messages.insert(&new[..], &v[..])?;
                }
                Ok(())
            })
            .map_err(tx_err)
    }

    /// The encrypted session pickle for a contact. Refused if it was moved
    /// from another contact's place, or is not the newest one written.
    pub fn session(&self, id: &ContactId) -> Result<Option<Vec<u8>>, ClientError> {
        let slot = self.contact_key(id);
        let Some(raw) = self.sessions.get(slot)? else {
            return Ok(None);
        };
        let bad = || ClientError::Store("a session record was swapped or rolled back".into());
        if raw.len() < 8 {
            return Err(bad());
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&raw[..8]);
        let counter = u64::from_be_bytes(c);
        if self.heads()?.get(&hex::encode(slot)) != Some(&counter) {
            return Err(bad());
        }
        let pickle = self
            .key
            .decrypt(&pickle_aad(&slot, counter), &raw[8..])
            .map_err(|_| bad())?;
        Ok(Some(pickle))
    }

    /// Whether a received message id was already stored.
    pub fn seen(&self, message_id: &[u8; 16]) -> Result<bool, ClientError> {
        Ok(self.seen.contains_key(self.seen_slot(message_id))?)
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
            Some((k, m)) => {
                self.note_history(false, k)?;
                let slot = self.message_slot(k);
                let sealed = self.seal_value("messages", &slot, m)?;
                Some((slot, sealed))
            }
            None => None,
        };
        let okey = outbox_key(item);
        let out = self.seal_value("outbox", &okey, item)?;
        let counter = self.next_position()?;
        (
            &self.sessions,
            &self.messages,
            &self.outbox,
            self.heads_tree(),
        )
            .transaction(|(sessions, messages, outbox, head)| -> TxResult<()> {
                self.put_session_tx(sessions, head, &item.contact, session_pickle, counter)?;
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
        self.commit_incoming_with(
            contact,
            new_contact,
            Some((&contact.identity_key, session_pickle)),
            message_id,
            message,
            None,
        )
    }

    /// [`LocalStore::commit_incoming`], also writing `extra` (tree, key,
    /// sealed value) in the same transaction: the invite a hello used up.
    /// The session is stored under the device that sent the message (the
    /// contact's, or another device on its list), or not at all (`None`:
    /// a second session that lost the race of two, see the inbox).
    pub(crate) fn commit_incoming_with(
        &self,
        contact: &Contact,
        new_contact: bool,
        session: Option<(&ContactId, &[u8])>,
        message_id: &[u8; 16],
        message: Option<(&[u8], &StoredMessage)>,
        extra: Option<(&Tree, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), ClientError> {
        let slot = self.contact_key(&contact.identity_key);
        let contact_value = if new_contact {
            Some(self.seal_value("contacts", &slot, contact)?)
        } else {
            None
        };
        let msg = match message {
            Some((k, m)) => {
                self.note_history(false, k)?;
                let mslot = self.message_slot(k);
                let sealed = self.seal_value("messages", &mslot, m)?;
                Some((mslot, sealed))
            }
            None => None,
        };
        let seen_slot = self.seen_slot(message_id);
        let counter = self.next_position()?;
        // Without an extra record, the extra tree is `meta` (not otherwise in
        // this transaction) and nothing is written to it.
        let (extra_tree, extra_kv) = match &extra {
            Some((t, k, v)) => (*t, Some((k.clone(), v.clone()))),
            None => (&self.meta, None),
        };
        (
            &self.contacts,
            &self.sessions,
            &self.messages,
            &self.seen,
            &self.heads,
            extra_tree,
        )
            .transaction(
                |(contacts, sessions, messages, seen, head, extra)| -> TxResult<()> {
                    if let Some(v) = &contact_value {
                        contacts.insert(&slot[..], &v[..])?;
                    }
                    if let Some((device, pickle)) = session {
                        self.put_session_tx(sessions, head, device, pickle, counter)?;
                    }
                    if let Some((k, v)) = &msg {
                        messages.insert(&k[..], &v[..])?;
                    }
                    seen.insert(&seen_slot[..], &[][..])?;
                    if let Some((k, v)) = &extra_kv {
                        extra.insert(&k[..], &v[..])?;
                    }
                    Ok(())
                },
            )
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
            let k = self.message_slot(k);
            if let Some(mut m) = self.get::<StoredMessage>(&self.messages, "messages", &k)? {
                m.status = status;
                self.messages
                    .insert(&k[..], self.seal_value("messages", &k, &m)?)?;
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
        let seen_slot = self.seen_slot(message_id);
        let counter = self.next_position()?;
        (&self.sessions, &self.seen, self.heads_tree())
            .transaction(|(sessions, seen, head)| -> TxResult<()> {
                if let Some(p) = session_pickle {
                    self.put_session_tx(sessions, head, peer, p, counter)?;
                }
                seen.insert(&seen_slot[..], &[][..])?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// Store a conversation entry under its logical key (a copy of one we
    /// sent from another device; written again unchanged if repeated).
    pub(crate) fn put_message(&self, key: &[u8], m: &StoredMessage) -> Result<(), ClientError> {
        let slot = self.message_slot(key);
        self.messages
            .insert(&slot[..], self.seal_value("messages", &slot, m)?)?;
        Ok(())
    }

    /// Forget our session with a device (it left its account's list).
    pub(crate) fn drop_session(&self, device: &ContactId) -> Result<(), ClientError> {
        self.sessions.remove(self.contact_key(device))?;
        Ok(())
    }

    /// Mark a received message id as stored.
    pub(crate) fn mark_seen(&self, message_id: &[u8; 16]) -> Result<(), ClientError> {
        self.seen.insert(self.seen_slot(message_id), &[][..])?;
        Ok(())
    }

    /// The conversation entry under logical key `logical`
    /// ([`message_key`]), if one is stored.
    pub(crate) fn message_at(&self, logical: &[u8]) -> Result<Option<StoredMessage>, ClientError> {
        self.get(&self.messages, "messages", &self.message_slot(logical))
    }

    /// Store a restored conversation entry under `logical` unless one is
    /// stored there already (restoring twice changes nothing); a received
    /// one's id is marked seen, so its envelope, if still in the mailbox,
    /// is not stored again. Returns whether it was new.
    pub(crate) fn restore_message(
        &self,
        logical: &[u8],
        m: &StoredMessage,
    ) -> Result<bool, ClientError> {
        let slot = self.message_slot(logical);
        let sealed = self.seal_value("messages", &slot, m)?;
        let new = self
            .messages
            .compare_and_swap(&slot[..], None as Option<&[u8]>, Some(sealed))?
            .is_ok();
        if new && !m.outgoing {
            if let Ok(id) = <[u8; 16]>::try_from(&hex::decode(&m.id).unwrap_or_default()[..]) {
                self.mark_seen(&id)?;
            }
        }
        Ok(new)
    }

    /// The last `limit` messages with a contact, oldest first.
    pub fn history(
        &self,
        contact: &ContactId,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        // Keys are hashes: the order is in the entries, not in the keys.
        let prefix = self.key.keyed_hash("messages-of", contact);
        let mut out = Vec::new();
        for kv in self.messages.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push(self.open_value::<StoredMessage>("messages", &k, &v)?);
        }
        out.sort_by(|a, b| (a.sent_at_ms, &a.id).cmp(&(b.sent_at_ms, &b.id)));
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }
}

#[cfg(test)]
impl LocalStore {
    /// Open a store a test just dropped: sled's flusher thread lets go of
    /// the file lock a moment after the last handle is dropped, so the
    /// reopen is retried (only while the lock is the reason) for a bounded
    /// time.
    #[allow(clippy::panic)]
    pub(crate) fn open_when_free(path: &Path, key: StoreKey) -> Self {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Self::open(path, StoreKey::from_bytes(key.to_bytes())) {
                Ok(s) => return s,
                Err(e)
                    if e.to_string().contains("lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
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
        let wrong = LocalStore::open_when_free(dir.path(), StoreKey::generate());
        assert!(wrong.profile().is_err());
    }
}
