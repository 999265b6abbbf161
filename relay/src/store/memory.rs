//! The in-memory engine, [`MemoryStore`]: the whole [`MailboxStore`]
//! contract with nothing on disk. The relay core's tests run on it (no temp
//! dirs, no flusher threads), and so can a relay that should forget
//! everything when it stops. It passes the same conformance suite as the
//! embedded engine: quota checked atomically with the append and nothing
//! stored dropped to make room, de-duplication by message id while an
//! envelope is held, per-mailbox increasing sequence numbers, expiry by
//! [`MailboxStore::sweep`], tokens and revocation.
//!
//! "Durable" here means "written": [`MailboxStore::durable`] resolves at
//! once. All state sits behind one lock; every operation is a few map
//! look-ups, and the engine is not meant for a relay under heavy load.

use super::{
    Appended, Durable, MailboxId, MailboxRecord, MailboxStore, MessageId, NewEnvelope, Quota,
    StoreError, StoredEnvelope, Swept, TokenHash, TokenRecord,
};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Relay state in memory only.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Set by [`MailboxStore::close`]; writes are refused from then on.
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    mailboxes: HashMap<MailboxId, Mailbox>,
    tokens: HashMap<TokenHash, TokenRecord>,
}

/// One mailbox and what it holds.
struct Mailbox {
    auth_key: [u8; 32],
    created_ms: u64,
    next_seq: u64,
    tokens: u64,
    /// Payload bytes held.
    bytes: u64,
    envelopes: BTreeMap<u64, Held>,
    /// Held envelopes by message id, for de-duplication.
    by_message: HashMap<MessageId, u64>,
}

/// One held envelope. The payload is shared by every mailbox one
/// multi-recipient send reached.
struct Held {
    message_id: MessageId,
    received_ms: u64,
    expires_ms: u64,
    payload: Arc<[u8]>,
}

impl Held {
    fn stored(&self, seq: u64) -> StoredEnvelope {
        StoredEnvelope {
            seq,
            message_id: self.message_id,
            received_ms: self.received_ms,
            expires_ms: self.expires_ms,
            payload: self.payload.to_vec(),
        }
    }
}

impl Mailbox {
    fn record(&self) -> MailboxRecord {
        MailboxRecord {
            auth_key: self.auth_key,
            next_seq: self.next_seq,
            envelopes: self.envelopes.len() as u64,
            bytes: self.bytes,
            tokens: self.tokens,
            created_ms: self.created_ms,
        }
    }

    /// Append unless the message id is held; quota checked first. The
    /// payload is copied into `shared` the first time one is stored and
    /// shared from then on.
    fn append(
        &mut self,
        env: NewEnvelope<'_>,
        quota: Quota,
        shared: &mut Option<Arc<[u8]>>,
    ) -> Result<Appended, StoreError> {
        if let Some(&seq) = self.by_message.get(&env.message_id) {
            return Ok(Appended {
                seq,
                duplicate: true,
            });
        }
        let held = self.envelopes.len() as u64;
        let size = env.payload.len() as u64;
        if held >= quota.max_envelopes || self.bytes.saturating_add(size) > quota.max_bytes {
            return Err(StoreError::QuotaExceeded {
                envelopes: held,
                bytes: self.bytes,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        self.by_message.insert(env.message_id, seq);
        let payload = shared.get_or_insert_with(|| Arc::from(env.payload));
        self.envelopes.insert(
            seq,
            Held {
                message_id: env.message_id,
                received_ms: env.now_ms,
                expires_ms: env.expires_ms,
                payload: Arc::clone(payload),
            },
        );
        Ok(Appended {
            seq,
            duplicate: false,
        })
    }

    fn remove(&mut self, seq: u64) -> bool {
        let Some(e) = self.envelopes.remove(&seq) else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(e.payload.len() as u64);
        self.by_message.remove(&e.message_id);
        true
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
    }

    /// The state, for a write: refused once closed.
    fn state_for_write(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.state()
    }
}

impl MailboxStore for MemoryStore {
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.state_for_write()?;
        if state.mailboxes.contains_key(&id) {
            return Err(StoreError::MailboxExists);
        }
        state.mailboxes.insert(
            id,
            Mailbox {
                auth_key,
                created_ms: now_ms,
                next_seq: 1,
                tokens: 0,
                bytes: 0,
                envelopes: BTreeMap::new(),
                by_message: HashMap::new(),
            },
        );
        Ok(())
    }

    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        Ok(self.state()?.mailboxes.get(id).map(Mailbox::record))
    }

    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.state_for_write()?;
        let m = state
            .mailboxes
            .get_mut(&mailbox)
            .ok_or(StoreError::UnknownMailbox)?;
        if m.tokens >= max_tokens {
            return Err(StoreError::QuotaExceeded {
                envelopes: m.envelopes.len() as u64,
                bytes: m.bytes,
            });
        }
        m.tokens += 1;
        state.tokens.insert(
            hash,
            TokenRecord {
                mailbox,
                revoked: false,
            },
        );
        Ok(())
    }

    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.state()?.tokens.get(hash).copied())
    }

    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError> {
        let mut state = self.state_for_write()?;
        let Some(token) = state.tokens.get_mut(hash).filter(|t| t.mailbox == *mailbox) else {
            return Ok(false);
        };
        if token.revoked {
            return Ok(true);
        }
        token.revoked = true;
        if let Some(m) = state.mailboxes.get_mut(mailbox) {
            m.tokens = m.tokens.saturating_sub(1);
        }
        Ok(true)
    }

    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError> {
        let mut state = self.state_for_write()?;
        state
            .mailboxes
            .get_mut(mailbox)
            .ok_or(StoreError::UnknownMailbox)?
            .append(env, quota, &mut None)
    }

    fn append_many(
        &self,
        targets: &[(MailboxId, Quota)],
        env: NewEnvelope<'_>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        // One lock for all targets: the send is one operation; one copy of
        // the payload for all of them.
        let mut state = self.state_for_write()?;
        let mut shared = None;
        Ok(targets
            .iter()
            .map(|(mailbox, quota)| {
                state
                    .mailboxes
                    .get_mut(mailbox)
                    .ok_or(StoreError::UnknownMailbox)?
                    .append(env, *quota, &mut shared)
            })
            .collect())
    }

    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let state = self.state()?;
        let Some(m) = state.mailboxes.get(mailbox) else {
            return Ok(Vec::new());
        };
        Ok(m.envelopes
            .range((Excluded(after_seq), Unbounded))
            .take(limit)
            .map(|(seq, e)| e.stored(*seq))
            .collect())
    }

    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError> {
        let mut state = self.state_for_write()?;
        let Some(m) = state.mailboxes.get_mut(mailbox) else {
            return Ok(0);
        };
        Ok(seqs.iter().filter(|seq| m.remove(**seq)).count() as u64)
    }

    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let mut state = self.state_for_write()?;
        let mut envelopes = 0;
        for m in state.mailboxes.values_mut() {
            let expired: Vec<u64> = m
                .envelopes
                .iter()
                .filter(|(_, e)| e.expires_ms <= now_ms)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in expired {
                m.remove(seq);
                envelopes += 1;
            }
        }
        Ok(Swept { envelopes })
    }

    fn durable(&self) -> Durable {
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_fresh() -> (MemoryStore, ()) {
        (MemoryStore::new(), ())
    }

    crate::mailbox_store_conformance!(open_fresh);
}
