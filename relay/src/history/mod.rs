//! History blobs: what a user who turned history on keeps on the relay, so
//! that a new device of theirs can page and restore recent conversations.
//! The relay stores opaque ciphertext under an account id (the Ed25519 key
//! the client derives from its account history key), an opaque
//! per-conversation tag and a client time bucket, keeps each blob at most
//! its keep-days (1-90), and deletes all of an account's blobs at once.
//!
//! This is kept apart from the mailbox engine: its own small store trait
//! ([`HistoryStore`]) with one embedded engine on sled ([`SledHistory`],
//! `history/` under the data directory), and its own request handling
//! ([`HistoryService`], sans-IO like [`crate::core`]). The Redis engine
//! does not hold history; a fleet's relays each keep their own.

mod service;
mod sled_store;

pub use service::{HistoryLimits, HistoryService};
pub use sled_store::SledHistory;

/// An account id: the history account's Ed25519 public key.
pub type AccountId = [u8; 32];
/// An opaque conversation tag.
pub type Tag = [u8; tern_protocol::history::HISTORY_TAG_LEN];

/// A blob to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlob<'a> {
    /// Its conversation tag.
    pub tag: Tag,
    /// The client's time bucket, ms.
    pub bucket_ms: u64,
    /// The ciphertext.
    pub ciphertext: &'a [u8],
}

/// A stored blob as paged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// The client's time bucket, ms.
    pub bucket_ms: u64,
    /// Where it sits among blobs of the same bucket (paging cursor).
    pub seq: u64,
    /// The ciphertext.
    pub ciphertext: Vec<u8>,
}

/// Where a page starts: blobs strictly older than this (bucket, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Bucket, ms.
    pub bucket_ms: u64,
    /// Sequence within the bucket.
    pub seq: u64,
}

impl Cursor {
    /// Encoded for the wire (16 bytes).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.bucket_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Decoded from the wire.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: [u8; 16] = b.try_into().ok()?;
        let mut h = [0u8; 8];
        h.copy_from_slice(&b[..8]);
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[8..]);
        Some(Self {
            bucket_ms: u64::from_be_bytes(h),
            seq: u64::from_be_bytes(l),
        })
    }
}

/// What one account may hold, and the relay in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuota {
    /// Most ciphertext bytes per account.
    pub account_bytes: u64,
    /// Most blobs per account.
    pub account_blobs: u64,
    /// Most ciphertext bytes over every account (0: no cap).
    pub total_bytes: u64,
}

/// Why a history store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The account holds all it may.
    #[error("history account quota exceeded: {0}")]
    AccountFull(&'static str),
    /// The relay holds all the history it may.
    #[error("the relay holds all the history it allows")]
    RelayFull,
    /// The database failed.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// A record does not parse.
    #[error("history store corrupt: {0}")]
    Corrupt(&'static str),
}

impl From<sled::Error> for HistoryError {
    fn from(e: sled::Error) -> Self {
        HistoryError::Unavailable(e.to_string())
    }
}

/// Where history blobs live. Every operation may block on the disk; the
/// relay runs them off its async workers.
pub trait HistoryStore: Send + Sync + 'static {
    /// Store `blobs` for `account`, each expiring at `expires_ms`, all or
    /// none, within `quota`. Returns how many were stored.
    fn put(
        &self,
        account: &AccountId,
        blobs: &[NewBlob<'_>],
        expires_ms: u64,
        quota: HistoryQuota,
    ) -> Result<u64, HistoryError>;

    /// Up to `limit` unexpired blobs of `account` and `tag` older than
    /// `before`, newest first, stopping once `max_bytes` of ciphertext are
    /// taken (at least one blob is always returned if there is one).
    fn page(
        &self,
        account: &AccountId,
        tag: &Tag,
        before: Cursor,
        limit: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<Vec<StoredBlob>, HistoryError>;

    /// Delete every blob of `account`; returns how many there were.
    fn delete_account(&self, account: &AccountId) -> Result<u64, HistoryError>;

    /// Delete every blob expired by `now_ms`; returns how many.
    fn sweep(&self, now_ms: u64) -> Result<u64, HistoryError>;

    /// Blobs and bytes `account` holds.
    fn usage(&self, account: &AccountId) -> Result<(u64, u64), HistoryError>;

    /// Make every write so far durable.
    fn flush(&self) -> Result<(), HistoryError>;
}

#[cfg(test)]
mod tests;
