//! The store's part for receipts, typing and settings: per-message status
//! of what we sent (`receipt_status`, by message id), receipts waiting to
//! go out (`receipt_pending`), incoming messages the user has seen
//! (`receipt_shown`), outbox items that are receipt batches
//! (`receipt_batches`, so a flush does not report them as messages), when
//! we last told each contact we were typing (`typing_sent`), and the
//! settings (in `meta`). Values are encrypted like every other, and keys
//! are keyed hashes of the message id or contact id (as in `seen`), so the
//! files show neither.

use super::{outbox_key, tx_err, ContactId, LocalStore, OutboxItem, TxResult};
use crate::error::ClientError;
use crate::receipts::rules::{PendingReceipt, ReceiptRecord};
use crate::settings::Settings;
use sled::transaction::Transactional;

impl LocalStore {
    /// The per-recipient status of a message we sent.
    pub fn receipt_record(&self, id: &[u8; 16]) -> Result<Option<ReceiptRecord>, ClientError> {
        self.get(
            &self.receipt_status,
            "receipt_status",
            &self.receipt_slot(id),
        )
    }

    /// Where receipts' trees keep what is about message `id`.
    fn receipt_slot(&self, id: &[u8; 16]) -> [u8; 32] {
        self.store_key().keyed_hash("receipt", id)
    }

    /// Save the per-recipient status of a message we sent.
    pub fn put_receipt_record(&self, id: &[u8; 16], r: &ReceiptRecord) -> Result<(), ClientError> {
        let slot = self.receipt_slot(id);
        self.receipt_status
            .insert(slot, self.seal_value("receipt_status", &slot, r)?)?;
        Ok(())
    }

    /// A receipt waiting to go out for message `id`, if one is.
    pub fn pending_receipt(&self, id: &[u8; 16]) -> Result<Option<PendingReceipt>, ClientError> {
        let pending: Option<([u8; 16], PendingReceipt)> = self.get(
            &self.receipt_pending,
            "receipt_pending",
            &self.receipt_slot(id),
        )?;
        Ok(pending.map(|(_, p)| p))
    }

    /// Note a receipt to send for message `id`.
    pub fn put_pending_receipt(
        &self,
        id: &[u8; 16],
        p: &PendingReceipt,
    ) -> Result<(), ClientError> {
        let slot = self.receipt_slot(id);
        self.receipt_pending
            .insert(slot, self.seal_value("receipt_pending", &slot, &(id, p))?)?;
        Ok(())
    }

    /// Every receipt waiting to go out, by message id.
    pub fn pending_receipts(&self) -> Result<Vec<([u8; 16], PendingReceipt)>, ClientError> {
        let mut all = Vec::new();
        for kv in self.receipt_pending.iter() {
            let (k, v) = kv?;
            all.push(self.open_value("receipt_pending", &k, &v)?);
        }
        Ok(all)
    }

    /// Take receipts off the waiting list without sending them.
    pub fn drop_pending_receipts(&self, ids: &[[u8; 16]]) -> Result<(), ClientError> {
        for id in ids {
            self.receipt_pending.remove(self.receipt_slot(id))?;
        }
        Ok(())
    }

    /// Record that the user has seen incoming message `id`; true if this
    /// is the first time.
    pub fn mark_shown(&self, id: &[u8; 16]) -> Result<bool, ClientError> {
        Ok(self
            .receipt_shown
            .insert(self.receipt_slot(id), &[][..])?
            .is_none())
    }

    /// Whether the user has seen incoming message `id`.
    pub fn was_shown(&self, id: &[u8; 16]) -> Result<bool, ClientError> {
        Ok(self.receipt_shown.contains_key(self.receipt_slot(id))?)
    }

    /// Put a receipt batch in the outbox with the advanced session, and
    /// take the receipts it carries off the waiting list, all or nothing.
    pub fn commit_receipt_batch(
        &self,
        session_pickle: &[u8],
        item: &OutboxItem,
        carried: &[[u8; 16]],
    ) -> Result<(), ClientError> {
        let okey = outbox_key(item);
        let out = self.seal_value("outbox", &okey, item)?;
        let batch = self.receipt_slot(&item.message_id);
        let carried: Vec<[u8; 32]> = carried.iter().map(|id| self.receipt_slot(id)).collect();
        // Taken before the transaction: sled's id generator must not run
        // inside one (LocalStore::put_session_tx).
        let counter = self.next_position()?;
        (
            &self.sessions,
            &self.outbox,
            &self.receipt_pending,
            &self.receipt_batches,
            self.heads_tree(),
        )
            .transaction(
                |(sessions, outbox, pending, batches, head)| -> TxResult<()> {
                    self.put_session_tx(sessions, head, &item.contact, session_pickle, counter)?;
                    outbox.insert(&okey[..], &out[..])?;
                    batches.insert(&batch[..], &[][..])?;
                    for slot in &carried {
                        pending.remove(&slot[..])?;
                    }
                    Ok(())
                },
            )
            .map_err(tx_err)
    }

    /// Whether outbox item `id` is a receipt batch.
    pub fn is_receipt_batch(&self, id: &[u8; 16]) -> Result<bool, ClientError> {
        Ok(self.receipt_batches.contains_key(self.receipt_slot(id))?)
    }

    /// Forget that outbox item `id` was a receipt batch (it left the outbox).
    pub fn forget_receipt_batch(&self, id: &[u8; 16]) -> Result<(), ClientError> {
        self.receipt_batches.remove(self.receipt_slot(id))?;
        Ok(())
    }

    /// When we last sent `peer` a typing notice, ms since the epoch.
    pub fn typing_sent_at(&self, peer: &ContactId) -> Result<Option<u64>, ClientError> {
        self.get(&self.typing_sent, "typing_sent", &self.contact_key(peer))
    }

    /// Save the session advanced by a typing notice and when it went.
    pub fn commit_typing(
        &self,
        peer: &ContactId,
        session_pickle: &[u8],
        at_ms: u64,
    ) -> Result<(), ClientError> {
        let slot = self.contact_key(peer);
        let at = self.seal_value("typing_sent", &slot, &at_ms)?;
        let counter = self.next_position()?;
        (&self.sessions, &self.typing_sent, self.heads_tree())
            .transaction(|(sessions, typing, head)| -> TxResult<()> {
                self.put_session_tx(sessions, head, peer, session_pickle, counter)?;
                typing.insert(&slot[..], &at[..])?;
                Ok(())
            })
            .map_err(tx_err)
    }

    /// The device's settings (defaults until one is set).
    pub fn settings(&self) -> Result<Settings, ClientError> {
        Ok(self
            .get(&self.meta, "meta", b"settings")?
            .unwrap_or_default())
    }

    /// Save the device's settings.
    pub fn set_settings(&self, s: &Settings) -> Result<(), ClientError> {
        self.meta
            .insert("settings", self.seal_value("meta", b"settings", s)?)?;
        Ok(())
    }
}
