//! The embedded history engine: one sled tree in `history/` under the
//! relay's data directory. Keys, all big-endian so sled's order is the
//! order wanted:
//!
//! ```text
//! b'b' account(32) tag(16) bucket(8) seq(8) -> expires(8) ciphertext
//! b'x' expires(8) account(32) tag(16) bucket(8) seq(8) -> ()   expiry index
//! b'u' account(32)                         -> blobs(8) bytes(8)
//! b't'                                     -> blobs(8) bytes(8)  all accounts
//! ```
//!
//! Writes go through one lock and one atomic batch each, so the usage
//! counters always match the blobs.

use super::{
    AccountId, Cursor, HistoryError, HistoryQuota, HistoryStore, NewBlob, StoredBlob, Tag,
};
use std::path::Path;
use std::sync::Mutex;

const BLOB: u8 = b'b';
const EXPIRY: u8 = b'x';
const USAGE: u8 = b'u';
const TOTAL: &[u8] = b"t";
/// account + tag + bucket + seq.
const BLOB_KEY_LEN: usize = 1 + 32 + 16 + 8 + 8;
/// Blobs deleted per batch by the sweeper and by account deletion.
const DELETE_BATCH: usize = 1_000;

/// History blobs in a sled database.
pub struct SledHistory {
    db: sled::Db,
    tree: sled::Tree,
    writes: Mutex<()>,
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, HistoryError> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or(HistoryError::Corrupt("short record"))
}

fn counters(v: Option<sled::IVec>) -> Result<(u64, u64), HistoryError> {
    match v {
        Some(v) => Ok((u64_at(&v, 0)?, u64_at(&v, 8)?)),
        None => Ok((0, 0)),
    }
}

fn counter_value(blobs: u64, bytes: u64) -> Vec<u8> {
    let mut v = blobs.to_be_bytes().to_vec();
    v.extend_from_slice(&bytes.to_be_bytes());
    v
}

fn usage_key(account: &AccountId) -> Vec<u8> {
    let mut k = vec![USAGE];
    k.extend_from_slice(account);
    k
}

fn blob_prefix(account: &AccountId, tag: Option<&Tag>) -> Vec<u8> {
    let mut k = vec![BLOB];
    k.extend_from_slice(account);
    if let Some(t) = tag {
        k.extend_from_slice(t);
    }
    k
}

/// The expiry index key of the blob stored under `blob_key`.
fn expiry_key(expires_ms: u64, blob_key: &[u8]) -> Vec<u8> {
    let mut k = vec![EXPIRY];
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(&blob_key[1..]);
    k
}

impl SledHistory {
    /// Open (or create) the history database at `path`.
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .open()?;
        let tree = db.open_tree("history")?;
        Ok(Self {
            db,
            tree,
            writes: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guard protects no data of its own: a poisoned one is fine.
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delete the blobs under `keys` (blob keys with their values), in one
    /// batch, adjusting usage counters.
    fn delete_blobs(&self, blobs: &[(sled::IVec, sled::IVec)]) -> Result<(), HistoryError> {
        let mut batch = sled::Batch::default();
        let mut per_account: std::collections::BTreeMap<AccountId, (u64, u64)> = Default::default();
        let (mut all_blobs, mut all_bytes) = counters(self.tree.get(TOTAL)?)?;
        for (k, v) in blobs {
            let expires = u64_at(v, 0)?;
            let len = (v.len() - 8) as u64;
            let mut account = [0u8; 32];
            account.copy_from_slice(k.get(1..33).ok_or(HistoryError::Corrupt("short key"))?);
            batch.remove(k.clone());
            batch.remove(expiry_key(expires, k));
            let e = per_account.entry(account).or_default();
            e.0 += 1;
            e.1 += len;
            all_blobs = all_blobs.saturating_sub(1);
            all_bytes = all_bytes.saturating_sub(len);
        }
        for (account, (n, bytes)) in per_account {
            let k = usage_key(&account);
            let (b, by) = counters(self.tree.get(&k)?)?;
            let (b, by) = (b.saturating_sub(n), by.saturating_sub(bytes));
            if b == 0 {
                batch.remove(k);
            } else {
                batch.insert(k, counter_value(b, by));
            }
        }
        batch.insert(TOTAL, counter_value(all_blobs, all_bytes));
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

impl SledHistory {
    /// Blobs held over every account, counted one by one (for tests and
    /// operators; the relay keeps a running total for its cap).
    pub fn blobs_held(&self) -> Result<u64, HistoryError> {
        let mut n = 0;
        for kv in self.tree.scan_prefix([BLOB]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }
}

impl HistoryStore for SledHistory {
    fn put(
        &self,
        account: &AccountId,
        blobs: &[NewBlob<'_>],
        expires_ms: u64,
        quota: HistoryQuota,
    ) -> Result<u64, HistoryError> {
        let _guard = self.lock();
        let uk = usage_key(account);
        let (mut n, mut bytes) = counters(self.tree.get(&uk)?)?;
        let (mut all_n, mut all_bytes) = counters(self.tree.get(TOTAL)?)?;
        let mut batch = sled::Batch::default();
        for b in blobs {
            let len = b.ciphertext.len() as u64;
            n += 1;
            bytes += len;
            all_n += 1;
            all_bytes += len;
            if n > quota.account_blobs {
                return Err(HistoryError::AccountFull("too many blobs"));
            }
            if bytes > quota.account_bytes {
                return Err(HistoryError::AccountFull("too many bytes"));
            }
            if quota.total_bytes > 0 && all_bytes > quota.total_bytes {
                return Err(HistoryError::RelayFull);
            }
            let seq = self.db.generate_id()?;
            let mut k = blob_prefix(account, Some(&b.tag));
            k.extend_from_slice(&b.bucket_ms.to_be_bytes());
            k.extend_from_slice(&seq.to_be_bytes());
            let mut v = expires_ms.to_be_bytes().to_vec();
            v.extend_from_slice(b.ciphertext);
            batch.insert(expiry_key(expires_ms, &k), &[][..]);
            batch.insert(k, v);
        }
        batch.insert(uk, counter_value(n, bytes));
        batch.insert(TOTAL, counter_value(all_n, all_bytes));
        self.tree.apply_batch(batch)?;
        Ok(blobs.len() as u64)
    }

    fn page(
        &self,
        account: &AccountId,
        tag: &Tag,
        before: Cursor,
        limit: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredBlob>, HistoryError> {
        let prefix = blob_prefix(account, Some(tag));
        let mut end = prefix.clone();
        end.extend_from_slice(&before.to_bytes());
        let mut out = Vec::new();
        let mut taken = 0usize;
        for kv in self.tree.range(prefix.clone()..end).rev() {
            let (k, v) = kv?;
            if k.len() != BLOB_KEY_LEN {
                return Err(HistoryError::Corrupt("blob key length"));
            }
            if u64_at(&v, 0)? <= now_ms {
                continue; // expired, not yet swept
            }
            let ciphertext = v[8..].to_vec();
            if !out.is_empty() && taken + ciphertext.len() > max_bytes {
                break;
            }
            taken += ciphertext.len();
            out.push(StoredBlob {
                bucket_ms: u64_at(&k, 1 + 32 + 16)?,
                seq: u64_at(&k, 1 + 32 + 16 + 8)?,
                ciphertext,
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn delete_account(&self, account: &AccountId) -> Result<u64, HistoryError> {
        let _guard = self.lock();
        let prefix = blob_prefix(account, None);
        let mut deleted = 0u64;
        loop {
            let chunk: Vec<_> = self
                .tree
                .scan_prefix(&prefix)
                .take(DELETE_BATCH)
                .collect::<Result<_, _>>()?;
            if chunk.is_empty() {
                return Ok(deleted);
            }
            deleted += chunk.len() as u64;
            self.delete_blobs(&chunk)?;
        }
    }

    fn sweep(&self, now_ms: u64) -> Result<u64, HistoryError> {
        let _guard = self.lock();
        let start = vec![EXPIRY];
        let mut end = vec![EXPIRY];
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let mut swept = 0u64;
        loop {
            let mut chunk = Vec::new();
            for kv in self
                .tree
                .range(start.clone()..end.clone())
                .take(DELETE_BATCH)
            {
                let (k, _) = kv?;
                let mut bk = vec![BLOB];
                bk.extend_from_slice(k.get(9..).ok_or(HistoryError::Corrupt("short key"))?);
                match self.tree.get(&bk)? {
                    Some(v) => chunk.push((sled::IVec::from(bk), v)),
                    // An index entry without its blob: drop it alone.
                    None => {
                        self.tree.remove(&k)?;
                    }
                }
            }
            if chunk.is_empty() {
                return Ok(swept);
            }
            swept += chunk.len() as u64;
            self.delete_blobs(&chunk)?;
        }
    }

    fn usage(&self, account: &AccountId) -> Result<(u64, u64), HistoryError> {
        counters(self.tree.get(usage_key(account))?)
    }

    fn flush(&self) -> Result<(), HistoryError> {
        self.db.flush()?;
        Ok(())
    }
}
