//! The embedded engine: sled trees in one directory.
//!
//! | tree        | key                                   | value                                      |
//! |-------------|---------------------------------------|--------------------------------------------|
//! | `mailboxes` | mailbox id (16)                       | auth key, next seq, counts, created (72)   |
//! | `tokens`    | SHA-256 of token (32)                 | mailbox id (16), revoked (1)               |
//! | `envelopes` | mailbox id (16) ‖ seq (8, BE)         | received, expires (8+8), message id, payload |
//! | `dedup`     | mailbox id (16) ‖ message id (16)     | seq (8), until (8)                         |
//! | `expiry`    | until (8, BE) ‖ kind (1) ‖ rest       | empty                                      |
//!
//! Each append is one multi-tree transaction, so a crash leaves either the
//! whole envelope (with its counts, dedup and expiry entries) or none of it.
//! Durability comes from [`GroupCommit`] flushing the database.

use super::group_commit::GroupCommit;
use super::{
    Appended, Durable, MailboxId, MailboxRecord, MailboxStore, NewEnvelope, Quota, StoreError,
    StoredEnvelope, Swept, TokenHash, TokenRecord,
};
use ::sled::transaction::{
    ConflictableTransactionError as TxError, TransactionError, Transactional,
};
use ::sled::{Db, Tree};
use std::path::Path;
use std::sync::Arc;

const KIND_ENVELOPE: u8 = 0;
const KIND_DEDUP: u8 = 1;
/// Expired entries removed per transaction while sweeping.
const SWEEP_BATCH: usize = 512;

/// Relay state in a sled database.
pub struct SledStore {
    db: Db,
    mailboxes: Tree,
    tokens: Tree,
    envelopes: Tree,
    dedup: Tree,
    expiry: Tree,
    commit: Arc<GroupCommit>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => unavailable(e),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt("short integer"))
}

fn encode_mailbox(m: &MailboxRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&m.auth_key);
    for n in [m.next_seq, m.envelopes, m.bytes, m.tokens, m.created_ms] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

fn decode_mailbox(v: &[u8]) -> Result<MailboxRecord, StoreError> {
    let auth_key = v
        .get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::Corrupt("mailbox record"))?;
    Ok(MailboxRecord {
        auth_key,
        next_seq: u64_at(v, 32)?,
        envelopes: u64_at(v, 40)?,
        bytes: u64_at(v, 48)?,
        tokens: u64_at(v, 56)?,
        created_ms: u64_at(v, 64)?,
    })
}

fn envelope_key(mailbox: &MailboxId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(mailbox);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn expiry_key(until_ms: u64, kind: u8, mailbox: &MailboxId, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(25 + rest.len());
    k.extend_from_slice(&until_ms.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(mailbox);
    k.extend_from_slice(rest);
    k
}

fn decode_envelope(key: &[u8], v: &[u8]) -> Result<StoredEnvelope, StoreError> {
    let seq = u64_at(key, 16)?;
    let message_id = v
        .get(16..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::Corrupt("envelope record"))?;
    Ok(StoredEnvelope {
        seq,
        message_id,
        received_ms: u64_at(v, 0)?,
        expires_ms: u64_at(v, 8)?,
        payload: v[32..].to_vec(),
    })
}

impl SledStore {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = ::sled::Config::new()
            .path(dir)
            // Durability comes from our own group-commit flushes; sled's
            // background flush stays on as a backstop for lazy deletes.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(unavailable)?;
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        let (mailboxes, tokens, envelopes, dedup, expiry) = (
            tree("mailboxes")?,
            tree("tokens")?,
            tree("envelopes")?,
            tree("dedup")?,
            tree("expiry")?,
        );
        let flush_db = db.clone();
        let commit = GroupCommit::start(move || flush_db.flush().map(|_| ()).map_err(unavailable));
        Ok(Self {
            db,
            mailboxes,
            tokens,
            envelopes,
            dedup,
            expiry,
            commit,
        })
    }

    /// Flush everything now (used on shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(unavailable)
    }

    fn sweep_batch(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let end = now_ms.saturating_add(1).to_be_bytes();
        let keys: Vec<_> = self
            .expiry
            .range(..&end[..])
            .keys()
            .take(SWEEP_BATCH)
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        if keys.is_empty() {
            return Ok(Swept::default());
        }
        (&self.mailboxes, &self.envelopes, &self.dedup, &self.expiry)
            .transaction(|(mailboxes, envelopes, dedup, expiry)| {
                let mut swept = Swept::default();
                for key in &keys {
                    expiry.remove(key)?;
                    let (kind, rest) = (key.get(8).copied(), key.get(9..).unwrap_or(&[]));
                    let Some(mailbox) = rest.get(..16).and_then(|m| <MailboxId>::try_from(m).ok())
                    else {
                        continue;
                    };
                    match kind {
                        Some(KIND_ENVELOPE) => {
                            let Ok(seq) = u64_at(rest, 16) else { continue };
                            if let Some(v) = envelopes.remove(&envelope_key(&mailbox, seq)[..])? {
                                let size = v.len().saturating_sub(32) as u64;
                                if let Some(m) = mailboxes.get(mailbox)? {
                                    let mut m = decode_mailbox(&m).map_err(TxError::Abort)?;
                                    m.envelopes = m.envelopes.saturating_sub(1);
                                    m.bytes = m.bytes.saturating_sub(size);
                                    mailboxes.insert(&mailbox[..], encode_mailbox(&m))?;
                                }
                                swept.envelopes += 1;
                            }
                        }
                        Some(KIND_DEDUP) => {
                            let mut k = mailbox.to_vec();
                            k.extend_from_slice(rest.get(16..).unwrap_or(&[]));
                            if dedup.remove(k)?.is_some() {
                                swept.dedup_entries += 1;
                            }
                        }
                        _ => {}
                    }
                }
                Ok(swept)
            })
            .map_err(tx_error)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.commit.stop();
    }
}

impl MailboxStore for SledStore {
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let record = MailboxRecord {
            auth_key,
            next_seq: 1,
            envelopes: 0,
            bytes: 0,
            tokens: 0,
            created_ms: now_ms,
        };
        let swapped = self
            .mailboxes
            .compare_and_swap(id, None as Option<&[u8]>, Some(encode_mailbox(&record)))
            .map_err(unavailable)?;
        self.commit.wrote();
        swapped.map_err(|_| StoreError::MailboxExists)
    }

    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        match self.mailboxes.get(id).map_err(unavailable)? {
            Some(v) => Ok(Some(decode_mailbox(&v)?)),
            None => Ok(None),
        }
    }

    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError> {
        (&self.mailboxes, &self.tokens)
            .transaction(|(mailboxes, tokens)| {
                let raw = mailboxes
                    .get(mailbox)?
                    .ok_or(TxError::Abort(StoreError::UnknownMailbox))?;
                let mut m = decode_mailbox(&raw).map_err(TxError::Abort)?;
                if m.tokens >= max_tokens {
                    return Err(TxError::Abort(StoreError::QuotaExceeded {
                        envelopes: m.envelopes,
                        bytes: m.bytes,
                    }));
                }
                m.tokens += 1;
                mailboxes.insert(&mailbox[..], encode_mailbox(&m))?;
                let mut v = mailbox.to_vec();
                v.push(0);
                tokens.insert(&hash[..], v)?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.commit.wrote();
        Ok(())
    }

    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let Some(v) = self.tokens.get(hash).map_err(unavailable)? else {
            return Ok(None);
        };
        let mailbox = v
            .get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or(StoreError::Corrupt("token record"))?;
        Ok(Some(TokenRecord {
            mailbox,
            revoked: v.get(16) == Some(&1),
        }))
    }

    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError> {
        let revoked = (&self.mailboxes, &self.tokens)
            .transaction(|(mailboxes, tokens)| {
                let Some(v) = tokens.get(hash)? else {
                    return Ok(false);
                };
                if v.get(..16) != Some(&mailbox[..]) {
                    return Ok(false);
                }
                if v.get(16) != Some(&1) {
                    let mut nv = v.to_vec();
                    nv.truncate(16);
                    nv.push(1);
                    tokens.insert(&hash[..], nv)?;
                    if let Some(raw) = mailboxes.get(mailbox)? {
                        let mut m = decode_mailbox(&raw).map_err(TxError::Abort)?;
                        m.tokens = m.tokens.saturating_sub(1);
                        mailboxes.insert(&mailbox[..], encode_mailbox(&m))?;
                    }
                }
                Ok(true)
            })
            .map_err(tx_error)?;
        self.commit.wrote();
        Ok(revoked)
    }

    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError> {
        let mut dedup_key = [0u8; 32];
        dedup_key[..16].copy_from_slice(mailbox);
        dedup_key[16..].copy_from_slice(&env.message_id);
        let size = env.payload.len() as u64;
        let appended = (&self.mailboxes, &self.envelopes, &self.dedup, &self.expiry)
            .transaction(|(mailboxes, envelopes, dedup, expiry)| {
                if let Some(d) = dedup.get(dedup_key)? {
                    let seq = u64_at(&d, 0).map_err(TxError::Abort)?;
                    return Ok(Appended {
                        seq,
                        duplicate: true,
                    });
                }
                let raw = mailboxes
                    .get(mailbox)?
                    .ok_or(TxError::Abort(StoreError::UnknownMailbox))?;
                let mut m = decode_mailbox(&raw).map_err(TxError::Abort)?;
                if m.envelopes >= quota.max_envelopes
                    || m.bytes.saturating_add(size) > quota.max_bytes
                {
                    return Err(TxError::Abort(StoreError::QuotaExceeded {
                        envelopes: m.envelopes,
                        bytes: m.bytes,
                    }));
                }
                let seq = m.next_seq;
                m.next_seq += 1;
                m.envelopes += 1;
                m.bytes += size;
                mailboxes.insert(&mailbox[..], encode_mailbox(&m))?;

                let mut value = Vec::with_capacity(32 + env.payload.len());
                value.extend_from_slice(&env.now_ms.to_be_bytes());
                value.extend_from_slice(&env.expires_ms.to_be_bytes());
                value.extend_from_slice(&env.message_id);
                value.extend_from_slice(env.payload);
                envelopes.insert(&envelope_key(mailbox, seq)[..], value)?;
                expiry.insert(
                    expiry_key(env.expires_ms, KIND_ENVELOPE, mailbox, &seq.to_be_bytes()),
                    &[][..],
                )?;

                let mut d = Vec::with_capacity(16);
                d.extend_from_slice(&seq.to_be_bytes());
                d.extend_from_slice(&env.dedup_until_ms.to_be_bytes());
                dedup.insert(&dedup_key[..], d)?;
                expiry.insert(
                    expiry_key(env.dedup_until_ms, KIND_DEDUP, mailbox, &env.message_id),
                    &[][..],
                )?;
                Ok(Appended {
                    seq,
                    duplicate: false,
                })
            })
            .map_err(tx_error)?;
        self.commit.wrote();
        Ok(appended)
    }

    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        let start = envelope_key(mailbox, after_seq.saturating_add(1));
        let end = envelope_key(mailbox, u64::MAX);
        self.envelopes
            .range(start..=end)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(unavailable)?;
                decode_envelope(&k, &v)
            })
            .collect()
    }

    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError> {
        let removed = (&self.mailboxes, &self.envelopes, &self.expiry)
            .transaction(|(mailboxes, envelopes, expiry)| {
                let mut removed = 0u64;
                let mut bytes = 0u64;
                for &seq in seqs {
                    if let Some(v) = envelopes.remove(&envelope_key(mailbox, seq)[..])? {
                        let expires = u64_at(&v, 8).map_err(TxError::Abort)?;
                        expiry.remove(expiry_key(
                            expires,
                            KIND_ENVELOPE,
                            mailbox,
                            &seq.to_be_bytes(),
                        ))?;
                        removed += 1;
                        bytes += v.len().saturating_sub(32) as u64;
                    }
                }
                if removed > 0 {
                    if let Some(raw) = mailboxes.get(mailbox)? {
                        let mut m = decode_mailbox(&raw).map_err(TxError::Abort)?;
                        m.envelopes = m.envelopes.saturating_sub(removed);
                        m.bytes = m.bytes.saturating_sub(bytes);
                        mailboxes.insert(&mailbox[..], encode_mailbox(&m))?;
                    }
                }
                Ok(removed)
            })
            .map_err(tx_error)?;
        // Deletes are flushed lazily: a redelivered envelope is dropped by
        // the recipient's de-duplication.
        Ok(removed)
    }

    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError> {
        let mut total = Swept::default();
        loop {
            let s = self.sweep_batch(now_ms)?;
            if s == Swept::default() {
                // An empty batch may still have removed stray keys; stop
                // only once nothing is left in range.
                let end = now_ms.saturating_add(1).to_be_bytes();
                if self.expiry.range(..&end[..]).next().is_none() {
                    return Ok(total);
                }
            }
            total.envelopes += s.envelopes;
            total.dedup_entries += s.dedup_entries;
        }
    }

    fn durable(&self) -> Durable {
        Box::pin(self.commit.wait())
    }
}
