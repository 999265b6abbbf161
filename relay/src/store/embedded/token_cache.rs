//! Send-token records in memory, in front of sled. Every stored send checks
//! its token, and a group message checks one per member: at 1,000 members a
//! sled read each (~1.6 µs) was about 1.8 ms of the time before the first
//! member is woken (docs/performance.md, issue 14). A token's record almost
//! never changes, so the records of tokens in use are kept here.
//!
//! Correctness rests on one rule: a shard's lock is held across loading a
//! record from sled and keeping it, and across writing a record to sled and
//! forgetting it, so a record read before a revocation can never be kept
//! after it. Unknown tokens are not kept (a peer guessing tokens cannot
//! fill the cache), and a full shard is emptied rather than grown, so the
//! cache never holds more than [`MAX_ENTRIES`] records (about 64 bytes
//! each: ~16 MiB).

use super::{poisoned, StoreError, TokenHash, TokenRecord};
use std::collections::HashMap;
use std::sync::Mutex;

/// Shards, chosen by the token hash's first byte (SHA-256: uniform).
const SHARDS: usize = 16;
/// Most records kept in all.
pub const MAX_ENTRIES: usize = 256 * 1024;

type Shard = HashMap<TokenHash, TokenRecord>;

/// The cache.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl TokenCache {
    fn shard(&self, hash: &TokenHash) -> Result<std::sync::MutexGuard<'_, Shard>, StoreError> {
        self.shards[usize::from(hash[0]) % SHARDS]
            .lock()
            .map_err(|_| poisoned())
    }

    /// The record of `hash`, from memory or else from `load` (and then
    /// kept, if the token exists).
    pub fn get(
        &self,
        hash: &TokenHash,
        load: impl FnOnce() -> Result<Option<TokenRecord>, StoreError>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let mut shard = self.shard(hash)?;
        if let Some(r) = shard.get(hash) {
            return Ok(Some(*r));
        }
        let record = load()?;
        if let Some(r) = record {
            if shard.len() >= MAX_ENTRIES / SHARDS {
                shard.clear();
            }
            shard.insert(*hash, r);
        }
        Ok(record)
    }

    /// Run `write`, which changes the record of `hash`, and forget what
    /// was kept of it, with no load of it in between.
    pub fn change<T>(
        &self,
        hash: &TokenHash,
        write: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut shard = self.shard(hash)?;
        let out = write();
        shard.remove(hash);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: [u8; 16] = [7; 16];

    fn record(revoked: bool) -> Option<TokenRecord> {
        Some(TokenRecord {
            mailbox: MB,
            revoked,
        })
    }

    #[test]
    fn a_record_is_loaded_once_and_a_change_forgets_it() {
        let cache = TokenCache::default();
        let loads = std::cell::Cell::new(0);
        let load = |r| {
            loads.set(loads.get() + 1);
            Ok(r)
        };
        assert_eq!(
            cache.get(&[1; 32], || load(record(false))).unwrap(),
            record(false)
        );
        assert_eq!(
            cache.get(&[1; 32], || load(record(true))).unwrap(),
            record(false)
        );
        assert_eq!(loads.get(), 1, "the second read came from memory");
        cache.change(&[1; 32], || Ok(())).unwrap();
        assert_eq!(
            cache.get(&[1; 32], || load(record(true))).unwrap(),
            record(true)
        );
        assert_eq!(loads.get(), 2);
    }

    #[test]
    fn unknown_tokens_are_not_kept() {
        let cache = TokenCache::default();
        assert_eq!(cache.get(&[2; 32], || Ok(None)).unwrap(), None);
        assert_eq!(
            cache.get(&[2; 32], || Ok(record(false))).unwrap(),
            record(false)
        );
    }

    #[test]
    fn a_full_shard_is_emptied_not_grown() {
        let cache = TokenCache::default();
        for i in 0..MAX_ENTRIES / SHARDS + 1 {
            let mut hash = [0u8; 32];
            hash[1..9].copy_from_slice(&(i as u64).to_be_bytes());
            cache.get(&hash, || Ok(record(false))).unwrap();
        }
        let kept = cache.shard(&[0; 32]).unwrap().len();
        assert_eq!(kept, 1, "emptied at the bound, then the newest kept");
    }
}
