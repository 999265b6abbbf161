//! Receipts: "sent" when the recipient's relay acknowledged a message
//! durably, "delivered" when a device of the recipient stored it, "read"
//! when its user saw it. Delivered and read are end-to-end messages from
//! the recipient ([`pb::ReceiptBatch`] inside the pairwise Olm session),
//! never facts a relay makes up, and never sent for a receipt or a typing
//! notice.
//!
//! The small API that conversations (one-to-one and group) call:
//!
//! - sending: [`Client::track_sent`] when a message is queued for some
//!   recipients, [`Client::note_relay_answer`] per recipient when its
//!   relay answered;
//! - receiving: [`Client::note_stored`] when a peer's message is stored
//!   (a delivered receipt waits), [`Client::note_shown`] when messages are
//!   shown (read, if read receipts are on), then [`Client::queue_receipts`]
//!   turns everything waiting into one batch per peer in the durable outbox;
//! - [`Client::apply_receipts`] for a batch that arrived, and
//!   [`Client::message_status`] for `tern status`.
//!
//! Group messages use the same calls, one recipient per member; members
//! who are not contacts are reached through their group cards
//! (`groups/peers.rs`), as group control messages are.
//!
//! The rules are pure, in [`rules`]; storage is `store/receipts.rs`.

pub mod rules;

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::event::Event;
use crate::groups::GroupMessage;
use crate::layers;
use crate::store::{ContactId, OutboxItem, StoredMessage};
use rules::{PendingReceipt, ReceiptKind, ReceiptRecord, ReceiptState};
use serde::Serialize;
use std::collections::HashMap;
use tern_protocol::pb::{self, content::Body};
use tracing::debug;

/// One recipient's line of [`Client::message_status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientReport {
    /// Their name as a contact (empty if they are no longer one).
    pub name: String,
    /// Their identity key, hex.
    pub identity_key: String,
    /// The furthest step.
    pub status: ReceiptState,
    /// When it was reached, ms since the epoch.
    pub time_ms: Option<u64>,
    /// When their relay acknowledged it.
    pub sent_at_ms: Option<u64>,
    /// When their delivered receipt came.
    pub delivered_at_ms: Option<u64>,
    /// When their read receipt came.
    pub read_at_ms: Option<u64>,
}

/// Where a message we sent stands, per recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageReport {
    /// Message id, hex.
    pub id: String,
    /// One line per recipient, in name order.
    pub recipients: Vec<RecipientReport>,
}

fn id16(b: &[u8]) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(b).ok()
}

impl Client {
    /// Start keeping per-recipient status for message `id`, queued for
    /// `recipients` (their identity keys), whose conversation entry is at
    /// `message_key`.
    pub fn track_sent(
        &self,
        id: &[u8; 16],
        message_key: &[u8],
        recipients: &[ContactId],
    ) -> Result<(), ClientError> {
        let record = ReceiptRecord {
            message_key: message_key.to_vec(),
            recipients: recipients
                .iter()
                .map(|k| (hex::encode(k), Default::default()))
                .collect(),
        };
        self.store.put_receipt_record(id, &record)
    }

    /// What `recipient`'s relay said about message `id`: stored durably
    /// (`Ok`) or refused for good (`Err(why)`). Untracked ids are ignored.
    pub fn note_relay_answer(
        &self,
        id: &[u8; 16],
        recipient: &ContactId,
        answer: Result<(), &str>,
    ) -> Result<(), ClientError> {
        let Some(mut record) = self.store.receipt_record(id)? else {
            return Ok(());
        };
        let Some(status) = record.recipients.get_mut(&hex::encode(recipient)) else {
            return Ok(());
        };
        let changed = match answer {
            Ok(()) => status.sent(now_ms()),
            Err(why) => status.fail(why),
        };
        if changed {
            self.store.put_receipt_record(id, &record)?;
        }
        Ok(())
    }

    /// Message `id` from `peer` is stored: a delivered receipt waits.
    pub fn note_stored(&self, peer: &ContactId, id: &[u8; 16]) -> Result<(), ClientError> {
        if self.store.pending_receipt(id)?.is_some() {
            return Ok(());
        }
        let p = PendingReceipt {
            peer: *peer,
            read: false,
        };
        self.store.put_pending_receipt(id, &p)
    }

    /// Messages were shown to the user (by id, with their sender when
    /// known): each is read from now on, and a read receipt waits if read
    /// receipts are on. A message whose sender is not given is found by its
    /// waiting delivered receipt. Messages read on another of our devices
    /// first (`DeviceSync.read`) get no read receipt from this one. The ids
    /// read here for the first time go to our other devices. Returns
    /// whether any receipt, or that read state, now waits in the outbox.
    pub fn note_shown(&self, shown: &[([u8; 16], Option<ContactId>)]) -> Result<bool, ClientError> {
        let send_read = self.store.settings()?.read_receipts;
        let mut waiting = false;
        let mut fresh = Vec::new();
        for (id, peer) in shown {
            let pending = self.store.pending_receipt(id)?;
            let Some(peer) = peer.or(pending.map(|p| p.peer)) else {
                continue;
            };
            let first = self.store.mark_shown(id)?;
            if first {
                fresh.push(*id);
            }
            if first && send_read {
                self.store
                    .put_pending_receipt(id, &PendingReceipt { peer, read: true })?;
            }
            waiting |= (first && send_read) || pending.is_some();
        }
        let synced = !fresh.is_empty() && self.sync_read(&fresh)? > 0;
        Ok(waiting || synced)
    }

    /// Messages read on another of our devices: read here too, so no read
    /// receipt goes out from this device and they are not shown as unread.
    /// A read receipt already waiting here stays (it says the same).
    pub(crate) fn take_read_sync(&self, ids: &[[u8; 16]]) -> Result<(), ClientError> {
        for id in ids {
            self.store.mark_shown(id)?;
        }
        Ok(())
    }

    /// Incoming messages of a conversation that `tern history` shows: those
    /// not shown before count as read now (see [`Client::note_shown`]).
    pub fn note_history_shown(&self, shown: &[StoredMessage]) -> Result<bool, ClientError> {
        let mut fresh = Vec::new();
        for m in shown.iter().filter(|m| !m.outgoing) {
            let Some(id) = hex::decode(&m.id).ok().as_deref().and_then(id16) else {
                continue;
            };
            if !self.store.was_shown(&id)? {
                fresh.push((id, Some(m.contact)));
            }
        }
        if fresh.is_empty() {
            return Ok(false);
        }
        self.note_shown(&fresh)
    }

    /// Incoming messages of a group that `tern history --group` shows:
    /// those not shown before count as read now, their authors being the
    /// peers owed the receipts.
    pub fn note_group_history_shown(&self, shown: &[GroupMessage]) -> Result<bool, ClientError> {
        let mut fresh = Vec::new();
        for m in shown.iter().filter(|m| !m.outgoing) {
            let Some(id) = hex::decode(&m.id).ok().as_deref().and_then(id16) else {
                continue;
            };
            if !self.store.was_shown(&id)? {
                fresh.push((id, Some(m.author)));
            }
        }
        if fresh.is_empty() {
            return Ok(false);
        }
        self.note_shown(&fresh)
    }

    /// The last `limit` messages of the group named `name`, as `tern
    /// history --group` shows them: as [`Client::read_history`] does for a
    /// contact, incoming ones count as read and their receipts are queued.
    pub fn read_group_history(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<(Vec<GroupMessage>, bool), ClientError> {
        let messages = self.group_history(name, limit)?;
        let queued = self.note_group_history_shown(&messages)?;
        if queued {
            self.queue_receipts()?;
        }
        Ok((messages, queued))
    }

    /// The last `limit` messages with the contact named `name`, as `tern
    /// history` shows them: incoming ones count as read from now on, and
    /// their receipts are queued. Also returns whether any batch was queued
    /// (the caller flushes the outbox to send it).
    pub fn read_history(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), ClientError> {
        let messages = self.history(name, limit)?;
        let queued = self.note_history_shown(&messages)?;
        if queued {
            self.queue_receipts()?;
        }
        Ok((messages, queued))
    }

    /// Put every waiting receipt in the outbox: one batch per peer (more
    /// only for hundreds of ids), each with the peer's session advanced, all
    /// durable together with taking them off the waiting list. Returns how
    /// many batches were queued; they go out with the next outbox flush.
    pub fn queue_receipts(&self) -> Result<usize, ClientError> {
        let pending = self.store.pending_receipts()?;
        let mut queued = 0;
        for batch in rules::batches(&pending) {
            let carried: Vec<[u8; 16]> =
                batch.delivered.iter().chain(&batch.read).copied().collect();
            // A contact, or a group member reached through its card.
            let Some((contact, mut session)) = self.reach_peer(&batch.peer)? else {
                // No longer a contact nor a fellow member: nobody to tell.
                debug!("dropping receipts for a peer we can no longer reach");
                self.store.drop_pending_receipts(&carried)?;
                continue;
            };
            let body = Body::Receipts(pb::ReceiptBatch {
                delivered: batch.delivered.iter().map(|i| i.to_vec().into()).collect(),
                read: batch.read.iter().map(|i| i.to_vec().into()).collect(),
            });
            let id = random16();
            let content = layers::content(id, now_ms(), body);
            let payload = layers::seal_content(
                &mut session,
                &self.account.identity_key(),
                &contact.seal_key,
                &content,
            );
            layers::check_size(&payload).map_err(|layers::SealError::TooLarge { size, max }| {
                ClientError::TooLarge { size, max }
            })?;
            let item = OutboxItem {
                position: self.store.next_position()?,
                message_id: id,
                contact: contact.identity_key,
                message_key: None,
                relay_url: contact.relay_url.clone(),
                mailbox_id: contact.mailbox_id,
                token: contact.send_token,
                payload,
                copy: false,
            };
            self.store.commit_receipt_batch(
                &session.to_encrypted_pickle(&self.key),
                &item,
                &carried,
            )?;
            // The contact's other devices get the same batch (the one that
            // sent a message keeps its status): quiet copies.
            self.copy_to_other_devices(&contact, &content)?;
            queued += 1;
        }
        Ok(queued)
    }

    /// A receipt batch from `from` arrived: record what is news about
    /// messages we sent them, and say so. Ids of messages not sent to
    /// `from` are ignored; with read receipts off, read counts as delivered.
    pub(crate) fn apply_receipts(
        &self,
        from: &ContactId,
        from_name: &str,
        batch: &pb::ReceiptBatch,
    ) -> Result<Option<Event>, ClientError> {
        let show_read = self.store.settings()?.read_receipts;
        let delivered: Vec<[u8; 16]> = batch.delivered.iter().filter_map(|b| id16(b)).collect();
        let read: Vec<[u8; 16]> = batch.read.iter().filter_map(|b| id16(b)).collect();
        let mut records: HashMap<[u8; 16], ReceiptRecord> = HashMap::new();
        for id in delivered.iter().chain(&read) {
            if !records.contains_key(id) {
                if let Some(r) = self.store.receipt_record(id)? {
                    records.insert(*id, r);
                }
            }
        }
        let peer = hex::encode(from);
        let accepted = rules::accepted(&peer, delivered, read, show_read, |id| records.get(id));
        let now = now_ms();
        let (mut got_delivered, mut got_read) = (Vec::new(), Vec::new());
        let mut changed = Vec::new();
        for (id, kind) in accepted {
            let Some(status) = records
                .get_mut(&id)
                .and_then(|r| r.recipients.get_mut(&peer))
            else {
                continue;
            };
            let was_delivered = status.delivered_at_ms.is_some();
            let news = match kind {
                ReceiptKind::Delivered => status.delivered(now),
                ReceiptKind::Read => status.read(now),
            };
            if !news {
                continue;
            }
            // Each step that is news is said: a read receipt for a message
            // not known delivered says both.
            if !was_delivered {
                got_delivered.push(hex::encode(id));
            }
            if kind == ReceiptKind::Read {
                got_read.push(hex::encode(id));
            }
            if !changed.contains(&id) {
                changed.push(id);
            }
        }
        for id in &changed {
            if let Some(r) = records.get(id) {
                self.store.put_receipt_record(id, r)?;
            }
        }
        if got_delivered.is_empty() && got_read.is_empty() {
            return Ok(None);
        }
        Ok(Some(Event::Receipt {
            from: from_name.to_string(),
            delivered: got_delivered,
            read: got_read,
        }))
    }

    /// Where message `id` (hex) that we sent stands, per recipient.
    pub fn message_status(&self, id: &str) -> Result<MessageReport, ClientError> {
        let unknown = || ClientError::UnknownMessage(id.to_string());
        let raw = hex::decode(id.trim()).map_err(|_| unknown())?;
        let key = id16(&raw).ok_or_else(unknown)?;
        let record = self.store.receipt_record(&key)?.ok_or_else(unknown)?;
        let mut recipients = Vec::new();
        // Members who are not contacts are named as their groups name them
        // (looked up once, for a group message's many recipients).
        let mut member_names = None;
        for (k, s) in &record.recipients {
            let ik = hex::decode(k)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(&b[..]).ok());
            let name = match ik {
                Some(ik) => match self.store.contact(&ik)? {
                    Some(c) => c.name,
                    None => {
                        if member_names.is_none() {
                            member_names = Some(self.group_member_names()?);
                        }
                        member_names
                            .as_ref()
                            .and_then(|n| n.get(&ik).cloned())
                            .unwrap_or_default()
                    }
                },
                None => String::new(),
            };
            recipients.push(RecipientReport {
                name,
                identity_key: k.clone(),
                status: s.state(),
                time_ms: s.time_ms(),
                sent_at_ms: s.sent_at_ms,
                delivered_at_ms: s.delivered_at_ms,
                read_at_ms: s.read_at_ms,
            });
        }
        recipients.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(MessageReport {
            id: hex::encode(key),
            recipients,
        })
    }
}

#[cfg(test)]
mod tests;
