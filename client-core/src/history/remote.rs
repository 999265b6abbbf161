//! History at the relay: uploading queued entries as blobs, paging one
//! conversation's blobs newest first, restoring every conversation, and
//! deleting the account's blobs. Every request is signed by the history
//! account's key over this TLS session's exporter
//! ([`tern_protocol::history::history_signed_bytes`]).

use super::batch::{self, Conversation};
use super::{Pending, PENDING};
use crate::client::{now_ms, Client};
use crate::error::ClientError;
use crate::store::StoredMessage;
use crate::transport::RelayLink;
use std::collections::{BTreeMap, HashSet};
use tern_crypto::history::BLOB_OVERHEAD;
use tern_crypto::HistoryKey;
use tern_protocol::history::history_signed_bytes;
use tern_protocol::pb::{self, control_request::Request, control_response::Response};

/// Blobs are filed under their oldest entry's time rounded down to this
/// (an hour), so the relay learns times only to the hour.
pub const BUCKET_MS: u64 = 60 * 60 * 1000;
/// Entries taken from the upload queue at a time.
const UPLOAD_CHUNK: usize = 2_000;
/// Most sealed bytes in one put request (a frame is 128 KiB).
const PUT_BYTES: usize = 96 * 1024;
/// Most blobs in one put request.
const PUT_BLOBS: usize = 200;
/// Blobs asked for per page.
const PAGE_BLOBS: u32 = 256;

/// How far a restore has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreProgress {
    /// Conversations done.
    pub conversations_done: usize,
    /// Conversations in all.
    pub conversations: usize,
    /// Messages seen in blobs so far.
    pub messages: u64,
    /// Of those, messages this device did not have and stored.
    pub restored: u64,
}

fn unexpected(r: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer to a history request: {r:?}"))
}

/// Send one history request signed as the account of `key`.
async fn call(
    link: &RelayLink,
    key: &HistoryKey,
    mut req: Request,
) -> Result<Response, ClientError> {
    let auth = Some(pb::HistoryAuth {
        account_key: key.account_id().to_vec().into(),
        signature: Default::default(),
    });
    match &mut req {
        Request::HistoryPut(r) => r.auth = auth,
        Request::HistoryPage(r) => r.auth = auth,
        Request::HistoryDelete(r) => r.auth = auth,
        _ => return Err(ClientError::History("not a history request".into())),
    }
    let exporter = link.exporter()?;
    let whole = pb::ControlRequest { request: Some(req) };
    let signed = history_signed_bytes(&exporter, &whole)
        .ok_or_else(|| ClientError::History("not a history request".into()))?;
    let signature = key.sign(&signed).to_vec().into();
    let Some(mut req) = whole.request else {
        return Err(ClientError::History("empty request".into()));
    };
    match &mut req {
        Request::HistoryPut(r) => set_signature(&mut r.auth, signature),
        Request::HistoryPage(r) => set_signature(&mut r.auth, signature),
        Request::HistoryDelete(r) => set_signature(&mut r.auth, signature),
        _ => {}
    }
    link.control(req).await
}

fn set_signature(auth: &mut Option<pb::HistoryAuth>, signature: bytes::Bytes) {
    if let Some(a) = auth {
        a.signature = signature;
    }
}

/// Every blob of `tag` older than `before_ms` (0: all), newest first,
/// decrypted; pages until `enough` says so or none are left.
async fn fetch(
    link: &RelayLink,
    key: &HistoryKey,
    tag: [u8; 16],
    before_ms: u64,
    mut enough: impl FnMut(&[pb::HistoryEntry]) -> bool,
) -> Result<Vec<pb::HistoryEntry>, ClientError> {
    let mut entries = Vec::new();
    let mut cursor = bytes::Bytes::new();
    loop {
        let req = Request::HistoryPage(pb::HistoryPage {
            auth: None,
            tag: tag.to_vec().into(),
            before_ms,
            cursor: cursor.clone(),
            limit: PAGE_BLOBS,
        });
        let page = match call(link, key, req).await? {
            Response::HistoryBlobs(b) => b,
            other => return Err(unexpected(&other)),
        };
        for blob in &page.blobs {
            let plain = key.open_blob(&tag, &blob.ciphertext).map_err(|_| {
                ClientError::History("a blob does not open with this account's key".into())
            })?;
            let batch = batch::decode(&plain)
                .ok_or_else(|| ClientError::History("a blob does not decode".into()))?;
            entries.extend(batch);
        }
        if page.cursor.is_empty() || enough(&entries) {
            return Ok(entries);
        }
        cursor = page.cursor;
    }
}

impl Client {
    fn history_tag(&self, key: &HistoryKey, c: Conversation) -> [u8; 16] {
        let (kind, id) = c.tag_input();
        key.tag(kind, id)
    }

    /// Upload what is queued, if history is on, on a fresh connection to
    /// the home relay. Returns how many entries went up.
    pub async fn upload_history(&mut self) -> Result<usize, ClientError> {
        if !self.history_queued()? {
            return Ok(0);
        }
        let link = self.home_link().await?;
        let n = self.upload_history_on(&link).await;
        link.close();
        n
    }

    /// Upload what is queued on `link` (authenticated to the home relay).
    pub(crate) async fn upload_history_on(&self, link: &RelayLink) -> Result<usize, ClientError> {
        let days = self.store.settings()?.history_days;
        let tree = self.store.tree(PENDING)?;
        if days == 0 {
            tree.clear()?;
            return Ok(0);
        }
        let key = self.store.history_key()?;
        let groups_tree = self.store.tree(crate::groups::MESSAGES)?;
        let mut uploaded = 0;
        loop {
            let mut taken = Vec::new();
            let mut by_conversation: BTreeMap<Conversation, Vec<pb::HistoryEntry>> =
                BTreeMap::new();
            for kv in tree.iter().take(UPLOAD_CHUNK) {
                let (k, v) = kv?;
                let p: Pending = self.store.open_record(PENDING, &k, &v)?;
                taken.push(k);
                let entry = if p.group {
                    let slot = crate::groups::group_message_slot(&self.store, &p.key);
                    self.store
                        .get_in::<crate::groups::GroupMessage>(
                            &groups_tree,
                            crate::groups::MESSAGES,
                            &slot,
                        )?
                        .map(|m| batch::group_entry(&m))
                } else {
                    self.store
                        .message_at(&p.key)?
                        .map(|m| batch::pair_entry(&m))
                };
                // An entry that never landed (its write failed) is skipped.
                if let Some(e) = entry {
                    if let Some(c) = Conversation::of(&e) {
                        by_conversation.entry(c).or_default().push(e);
                    }
                }
            }
            if taken.is_empty() {
                return Ok(uploaded);
            }
            let mut blobs = Vec::new();
            for (c, entries) in by_conversation {
                uploaded += entries.len();
                let tag = self.history_tag(&key, c);
                for b in batch::batches(entries, BLOB_OVERHEAD, BUCKET_MS) {
                    blobs.push(pb::HistoryBlobIn {
                        tag: tag.to_vec().into(),
                        bucket_ms: b.bucket_ms,
                        ciphertext: key.seal_blob(&tag, &b.plaintext).into(),
                    });
                }
            }
            let mut put = Vec::new();
            let mut size = 0;
            for b in blobs {
                if !put.is_empty()
                    && (size + b.ciphertext.len() > PUT_BYTES || put.len() >= PUT_BLOBS)
                {
                    self.put_blobs(link, &key, std::mem::take(&mut put), days)
                        .await?;
                    size = 0;
                }
                size += b.ciphertext.len();
                put.push(b);
            }
            if !put.is_empty() {
                self.put_blobs(link, &key, put, days).await?;
            }
            let mut done = sled::Batch::default();
            for k in taken {
                done.remove(k);
            }
            tree.apply_batch(done)?;
        }
    }

    async fn put_blobs(
        &self,
        link: &RelayLink,
        key: &HistoryKey,
        blobs: Vec<pb::HistoryBlobIn>,
        days: u32,
    ) -> Result<(), ClientError> {
        let req = Request::HistoryPut(pb::HistoryPut {
            auth: None,
            blobs,
            keep_days: days,
        });
        match call(link, key, req).await? {
            Response::HistoryStored(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Delete every blob of this account at the relay; returns how many.
    pub(crate) async fn delete_remote_history(&mut self) -> Result<u64, ClientError> {
        let key = self.store.history_key()?;
        let link = self.home_link().await?;
        let r = call(
            &link,
            &key,
            Request::HistoryDelete(pb::HistoryDelete { auth: None }),
        )
        .await;
        link.close();
        match r? {
            Response::HistoryDeleted(d) => Ok(d.blobs),
            other => Err(unexpected(&other)),
        }
    }

    /// The newest `limit` messages with the contact named `name` that the
    /// relay holds, sent before `before_ms` if given, oldest first (as
    /// `history` prints them).
    pub async fn remote_history(
        &mut self,
        name: &str,
        before_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let contact = self.contact_named(name)?;
        let key = self.store.history_key()?;
        let tag = self.history_tag(&key, Conversation::Pair(contact.identity_key));
        let before = before_ms.unwrap_or(u64::MAX);
        let link = self.home_link().await?;
        let fetched = fetch(&link, &key, tag, before_ms.unwrap_or(0), |entries| {
            entries.iter().filter(|e| e.sent_at_ms < before).count() >= limit
        })
        .await;
        link.close();
        let now = now_ms();
        let mut seen = HashSet::new();
        let mut out: Vec<StoredMessage> = fetched?
            .iter()
            .filter(|e| e.sent_at_ms < before)
            .filter_map(|e| batch::stored_message(e, now))
            .filter(|m| m.contact == contact.identity_key && seen.insert(m.id.clone()))
            .collect();
        out.sort_by(|a, b| (b.sent_at_ms, &b.id).cmp(&(a.sent_at_ms, &a.id)));
        out.truncate(limit);
        out.reverse();
        Ok(out)
    }

    /// Pull every conversation's blobs (each contact's and each group's)
    /// and store the messages this device does not have (by message id:
    /// restoring twice stores nothing new). `progress` is told after each
    /// conversation.
    pub async fn restore_history(
        &mut self,
        progress: &mut (dyn FnMut(RestoreProgress) + Send),
    ) -> Result<RestoreProgress, ClientError> {
        let key = self.store.history_key()?;
        let mut conversations: Vec<Conversation> = self
            .store
            .contacts()?
            .iter()
            .map(|c| Conversation::Pair(c.identity_key))
            .collect();
        conversations.extend(
            self.group_records()?
                .iter()
                .map(|r| Conversation::Group(r.id)),
        );
        let mut p = RestoreProgress {
            conversations: conversations.len(),
            ..RestoreProgress::default()
        };
        progress(p);
        let link = self.home_link().await?;
        for c in conversations {
            let tag = self.history_tag(&key, c);
            let entries = match fetch(&link, &key, tag, 0, |_| false).await {
                Ok(e) => e,
                Err(e) => {
                    link.close();
                    return Err(e);
                }
            };
            let now = now_ms();
            for e in &entries {
                if Conversation::of(e) != Some(c) {
                    continue;
                }
                p.messages += 1;
                if self.restore_entry(e, now)? {
                    p.restored += 1;
                }
            }
            p.conversations_done += 1;
            progress(p);
        }
        link.close();
        self.store.flush().await?;
        Ok(p)
    }

    /// Store one history entry unless it is stored already.
    fn restore_entry(&self, e: &pb::HistoryEntry, now: u64) -> Result<bool, ClientError> {
        let Ok(id) = <[u8; 16]>::try_from(&e.message_id[..]) else {
            return Ok(false);
        };
        match Conversation::of(e) {
            Some(Conversation::Pair(contact)) => match batch::stored_message(e, now) {
                Some(m) => {
                    let key = crate::store::message_key(&contact, e.sent_at_ms, &id);
                    self.store.restore_message(&key, &m)
                }
                None => Ok(false),
            },
            Some(Conversation::Group(group)) => match batch::group_message(e, now) {
                Some(m) => {
                    let key = crate::groups::message_key(&group, e.sent_at_ms, &id);
                    let tree = self.store.tree(crate::groups::MESSAGES)?;
                    let slot = crate::groups::group_message_slot(&self.store, &key);
                    if tree.contains_key(&slot)? {
                        return Ok(false);
                    }
                    self.put_group_message(&key, &m)?;
                    if !m.outgoing {
                        self.store.mark_seen(&id)?;
                    }
                    Ok(true)
                }
                None => Ok(false),
            },
            None => Ok(false),
        }
    }
}
