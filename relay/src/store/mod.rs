//! Durable relay state behind one trait, [`MailboxStore`]: mailboxes, send
//! tokens, envelopes, de-duplication, expiry, durability and shutdown. The
//! relay above it (core, connections, server) sees only the trait; no engine
//! logic leaks above it.
//!
//! Engines: [`EmbeddedStore`] (sled for mailbox and token records, an
//! append-only segment log for envelopes) is the default a single relay runs
//! on; [`MemoryStore`] keeps everything in memory, for the core's tests and
//! ephemeral relays; [`RedisStore`] keeps everything in a Redis Cluster so
//! several relays (a fleet) serve the same users. The
//! `conformance` suite (compiled for tests, and for other crates with the
//! `conformance` feature) runs the same cases against every engine.
//! Engine-specific knobs ([`LogOptions`], reclamation) stay on the engine
//! type, used only by the code that opens it and by its own tests.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use thiserror::Error;

pub use self::embedded::{EmbeddedStore, LogOptions};
pub use self::memory::MemoryStore;
pub use self::redis::{RedisOptions, RedisStore};

/// A mailbox id: 16 random bytes chosen by the relay.
pub type MailboxId = [u8; 16];
/// A client message id: 16 random bytes chosen by the sender.
pub type MessageId = [u8; 16];
/// SHA-256 of a send token; the relay never stores tokens themselves.
pub type TokenHash = [u8; 32];

/// What went wrong in the store, in the relay's terms.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The mailbox does not exist.
    #[error("no such mailbox")]
    UnknownMailbox,
    /// The mailbox is full; nothing stored was touched.
    #[error("mailbox quota exceeded ({envelopes} envelopes, {bytes} bytes stored)")]
    QuotaExceeded {
        /// Envelopes held now.
        envelopes: u64,
        /// Payload bytes held now.
        bytes: u64,
    },
    /// The relay as a whole holds as many envelopes or bytes as its
    /// operator allows; nothing stored was touched.
    #[error("relay storage is full ({envelopes} envelopes, {bytes} bytes held)")]
    RelayFull {
        /// Envelopes held relay-wide.
        envelopes: u64,
        /// Payload bytes held relay-wide.
        bytes: u64,
    },
    /// The mailbox id is already taken.
    #[error("mailbox already exists")]
    MailboxExists,
    /// The disk or database failed; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes could not be read back.
    #[error("stored record is corrupt: {0}")]
    Corrupt(&'static str),
}

impl StoreError {
    /// The disk or database failed while doing `what`; the request may be
    /// retried.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Self {
        Self::Unavailable(format!("{what}: {e}"))
    }
}

/// A mailbox as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxRecord {
    /// Ed25519 key whose holder may read and ack this mailbox.
    pub auth_key: [u8; 32],
    /// Sequence number the next envelope gets.
    pub next_seq: u64,
    /// Envelopes held.
    pub envelopes: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Tokens minted and not revoked.
    pub tokens: u64,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
}

/// What a send token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRecord {
    /// The mailbox it writes to.
    pub mailbox: MailboxId,
    /// Whether its owner revoked it.
    pub revoked: bool,
}

/// One envelope as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEnvelope {
    /// Per-mailbox increasing sequence number.
    pub seq: u64,
    /// The sender's message id.
    pub message_id: MessageId,
    /// When the relay accepted it.
    pub received_ms: u64,
    /// When it expires unless acked.
    pub expires_ms: u64,
    /// Opaque sealed bytes.
    pub payload: Vec<u8>,
}

/// An envelope to append.
#[derive(Debug, Clone, Copy)]
pub struct NewEnvelope<'a> {
    /// The sender's message id.
    pub message_id: MessageId,
    /// Opaque sealed bytes.
    pub payload: &'a [u8],
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// When it expires unless acked.
    pub expires_ms: u64,
}

/// Quota checked atomically with an append.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Most envelopes.
    pub max_envelopes: u64,
    /// Most payload bytes.
    pub max_bytes: u64,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The envelope's sequence number (the earlier one for a duplicate).
    pub seq: u64,
    /// True if this message id was already stored; nothing new was written.
    pub duplicate: bool,
}

/// One append of a batch ([`MailboxStore::append_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchAppend<'a> {
    /// The mailbox to append to.
    pub mailbox: MailboxId,
    /// The envelope.
    pub env: NewEnvelope<'a>,
    /// The mailbox's quota, checked atomically with the append.
    pub quota: Quota,
}

/// How much the sweeper removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Expired envelopes deleted.
    pub envelopes: u64,
}

/// A future that resolves once writes made before it was created are durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// The relay's durable state. Writes land in memory at once; [`Self::durable`]
/// tells when they have reached the disk, so concurrent sends share one flush.
///
/// Every engine behaves the same in what the relay can observe, and the
/// `conformance` suite checks it: a mailbox that does not exist is absent
/// to [`Self::mailbox`], empty to [`Self::fetch`], a no-op to [`Self::ack`]
/// and [`Self::revoke_token`], and an [`StoreError::UnknownMailbox`] to
/// [`Self::append`] and [`Self::add_token`]. Engines are shared between
/// threads; each call is atomic with respect to the others.
pub trait MailboxStore: Send + Sync + 'static {
    /// Create a mailbox owned by `auth_key`; [`StoreError::MailboxExists`]
    /// if the id is taken.
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// Look a mailbox up, with what it holds now.
    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError>;
    /// Record a token for `mailbox`, if it holds fewer than `max_tokens`
    /// unrevoked ones ([`StoreError::QuotaExceeded`] otherwise).
    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError>;
    /// Look a token up by its hash.
    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;
    /// Revoke a token of `mailbox` (again, if it was); false if it was not
    /// that mailbox's token.
    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError>;
    /// Append an envelope, assigning the next sequence number, unless an
    /// envelope with its message id is still held in the mailbox (then the
    /// earlier sequence number comes back, marked duplicate). An engine may
    /// look for that repeat only among the mailbox's newest held envelopes
    /// (the embedded one: the newest 1,024): retries come soon, and a
    /// repeat stored again is dropped by the recipient. Refuses over
    /// quota, checked atomically with the append, without touching anything
    /// stored.
    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError>;
    /// Append one envelope to each of `targets` (mailbox and its quota), as
    /// [`Self::append`] would to each, in one operation: one result per
    /// target, in order, so one refused target (unknown, over quota) leaves
    /// the others stored. One [`Self::durable`] wait after it covers every
    /// target. The outer error means nothing was attempted (a closed store).
    fn append_many(
        &self,
        targets: &[(MailboxId, Quota)],
        env: NewEnvelope<'_>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError>;
    /// Look several tokens up, one result per hash, in order, as
    /// [`Self::token`] would one by one (which is what this default does);
    /// an engine across a network sends the lookups together.
    fn tokens(&self, hashes: &[TokenHash]) -> Vec<Result<Option<TokenRecord>, StoreError>> {
        hashes.iter().map(|h| self.token(h)).collect()
    }
    /// Append each item as [`Self::append`] would, one result per item in
    /// order; items for the same mailbox get increasing sequence numbers in
    /// item order, and one refused item leaves the others stored. One
    /// [`Self::durable`] wait after it covers every item. This default
    /// appends them one by one; an engine across a network sends them
    /// together (the Redis engine: one pipeline per primary).
    fn append_batch(&self, items: &[BatchAppend<'_>]) -> Vec<Result<Appended, StoreError>> {
        items
            .iter()
            .map(|i| self.append(&i.mailbox, i.env, i.quota))
            .collect()
    }
    /// Up to `limit` envelopes with sequence numbers above `after_seq`, in order.
    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError>;
    /// Delete acknowledged envelopes; returns how many were held (sequence
    /// numbers not held are ignored). Sequence numbers are never reused.
    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError>;
    /// Delete envelopes expired at `now_ms` (expiry at or before it).
    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError>;
    /// Resolves when every write made before this call is on disk.
    fn durable(&self) -> Durable;
    /// Make every write so far durable now, on this thread (shutdown, tools
    /// that open a store directly); [`Self::durable`] is the way for sends.
    fn flush(&self) -> Result<(), StoreError>;
    /// Stop the engine's background work and flush for the last time.
    /// Later writes are refused with [`StoreError::Unavailable`]; reads may
    /// still answer. Calling it again only flushes again.
    fn close(&self) -> Result<(), StoreError>;
    /// For an engine several relays share: how the relay's hub wakes, and
    /// is woken by, the other relays' subscribers. None for a relay alone.
    fn fleet(&self) -> Option<std::sync::Arc<dyn crate::hub::Fleet>> {
        None
    }
    /// [`Self::ack`], but only if it can be done at once, without waiting
    /// on a lock another call holds or on the disk or network: then it
    /// may run on the relay's async workers, sparing a store thread's
    /// wake-up per ack. `None`: it was not tried, run [`Self::ack`] on a
    /// store thread. By default never tried.
    fn try_ack_now(&self, _mailbox: &MailboxId, _seqs: &[u64]) -> Option<Result<u64, StoreError>> {
        None
    }
    /// Threads the relay runs store calls on; None: one per core, at most
    /// four. An engine whose calls wait on the network wants more.
    fn store_threads(&self) -> Option<usize> {
        None
    }
}
