//! Opt-in history on the relay (`tern settings history N`): while it is on,
//! every conversation entry this device stores (sent and received, one to
//! one and group) is queued, and uploaded in batches as blobs the relay
//! cannot read, under opaque per-conversation tags, kept N days (1-90). A
//! new device of the account pages them (`tern history CONTACT --remote`)
//! or restores them (`tern history --restore`).
//!
//! Everything comes from one account history key ([`HistoryKey`], kept in
//! the store, tree `hist_state`): the history account id and signatures,
//! the blob key and the tags. A device that joins the account gets it with
//! [`Client::history_key_bundle`] / [`Client::import_history_key_bundle`].
//! Turning history off deletes every blob of the account at the relay at
//! once.
//!
//! [`batch`] makes the blobs' plaintext (pure); [`remote`] talks to the
//! relay; [`request`] is the operations as one request type for the CLI
//! and the local socket.

pub mod batch;
pub mod remote;
pub mod request;

use crate::client::Client;
use crate::error::ClientError;
use crate::settings::Settings;
use crate::store::LocalStore;
use serde::{Deserialize, Serialize};
use tern_crypto::HistoryKey;
use tern_protocol::history::HISTORY_MAX_KEEP_DAYS;

/// Tree of the history key.
pub(crate) const STATE: &str = "hist_state";
/// Tree of entries waiting to be uploaded, by position.
pub(crate) const PENDING: &str = "hist_pending";
const KEY_RECORD: &[u8] = b"key";

/// An entry waiting for upload: where it is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// A group entry (else one to one).
    pub group: bool,
    /// Its logical key (`store::message_key` or `groups::message_key`).
    pub key: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct KeyRecord {
    key: [u8; 32],
}

impl LocalStore {
    /// Queue the conversation entry stored under logical key `key` for
    /// upload, if history is on. Called before the entry is written: an
    /// entry that never lands is skipped at upload.
    pub(crate) fn note_history(&self, group: bool, key: &[u8]) -> Result<(), ClientError> {
        if self.settings()?.history_days == 0 {
            return Ok(());
        }
        let tree = self.tree(PENDING)?;
        let position = self.next_position()?;
        self.put_in(
            &tree,
            PENDING,
            &position.to_be_bytes(),
            &Pending {
                group,
                key: key.to_vec(),
            },
        )
    }

    /// The account history key, made on first use.
    pub(crate) fn history_key(&self) -> Result<HistoryKey, ClientError> {
        let tree = self.tree(STATE)?;
        if let Some(r) = self.get_in::<KeyRecord>(&tree, STATE, KEY_RECORD)? {
            return Ok(HistoryKey::from_bytes(r.key));
        }
        let key = HistoryKey::generate();
        self.put_in(
            &tree,
            STATE,
            KEY_RECORD,
            &KeyRecord {
                key: key.to_bytes(),
            },
        )?;
        Ok(key)
    }
}

impl Client {
    /// The account history key's bytes, for a device joining this account
    /// (linking hands it over inside its authenticated channel).
    pub fn history_key_bundle(&self) -> Result<[u8; 32], ClientError> {
        Ok(self.store.history_key()?.to_bytes())
    }

    /// Take the account history key a linking device handed over, with the
    /// days it keeps history (0: off), so this device uploads to and
    /// restores from the same history account.
    pub async fn import_history_key_bundle(
        &self,
        key: [u8; 32],
        days: u32,
    ) -> Result<(), ClientError> {
        let tree = self.store.tree(STATE)?;
        self.store
            .put_in(&tree, STATE, KEY_RECORD, &KeyRecord { key })?;
        let mut s = self.store.settings()?;
        s.history_days = days.min(HISTORY_MAX_KEEP_DAYS);
        self.store.set_settings(&s)?;
        self.store.flush().await
    }

    /// Entries waiting for upload.
    pub fn history_pending(&self) -> Result<usize, ClientError> {
        Ok(self.store.tree(PENDING)?.len())
    }

    /// Whether any entry waits for upload (cheaper than counting them).
    pub fn history_queued(&self) -> Result<bool, ClientError> {
        Ok(self.store.tree(PENDING)?.first()?.is_some())
    }

    /// Keep history for `days` (1-90), or turn it off (0): turning it off
    /// deletes every blob of the account at the relay first (and fails,
    /// changing nothing, if the relay cannot be reached). Turning it on queues every
    /// entry already stored. Returns the settings now in force and, when
    /// turned off, how many blobs the relay deleted.
    pub async fn set_history_days(
        &mut self,
        days: u32,
    ) -> Result<(Settings, Option<u64>), ClientError> {
        if days > HISTORY_MAX_KEEP_DAYS {
            return Err(ClientError::History(format!(
                "keep history 1-{HISTORY_MAX_KEEP_DAYS} days, or 0 to turn it off"
            )));
        }
        let mut s = self.store.settings()?;
        let was = s.history_days;
        let mut deleted = None;
        if days == 0 {
            // Off already on this device: nothing of ours to delete (and
            // no need to reach the relay).
            if was > 0 {
                deleted = Some(self.delete_remote_history().await?);
            }
            self.store.tree(PENDING)?.clear()?;
        }
        if days > 0 {
            // Made now, so a backup taken from here on carries it.
            self.store.history_key()?;
        }
        s.history_days = days;
        self.store.set_settings(&s)?;
        if was == 0 && days > 0 {
            self.queue_all_history()?;
        }
        self.store.flush().await?;
        Ok((s, deleted))
    }

    /// Queue every stored conversation entry (history was just turned on).
    fn queue_all_history(&self) -> Result<(), ClientError> {
        for c in self.store.contacts()? {
            for m in self.store.history(&c.identity_key, usize::MAX)? {
                let id = hex_id(&m.id);
                let key = crate::store::message_key(&m.contact, m.sent_at_ms, &id);
                self.store.note_history(false, &key)?;
            }
        }
        let tree = self.store.tree(crate::groups::MESSAGES)?;
        for (_, m) in self.store.scan_in::<crate::groups::GroupMessage>(
            &tree,
            crate::groups::MESSAGES,
            &[],
        )? {
            let key = crate::groups::message_key(&m.group, m.sent_at_ms, &hex_id(&m.id));
            self.store.note_history(true, &key)?;
        }
        Ok(())
    }
}

fn hex_id(id: &str) -> [u8; 16] {
    hex::decode(id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .unwrap_or_default()
}
