//! Durable relay state behind one trait, [`MailboxStore`]: mailboxes, send
//! tokens, envelopes, de-duplication and expiry. The sled engine is the
//! embedded default; a fleet engine implements the same trait, and the same
//! test suite runs against every engine. No engine logic leaks above it.

pub mod envelope_log;
pub mod group_commit;
pub mod index;
pub mod record;
pub mod signal;
pub mod sled;

use std::future::Future;
use std::pin::Pin;
use thiserror::Error;

pub use self::sled::{LogOptions, SledStore};

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
pub trait MailboxStore: Send + Sync + 'static {
    /// Create a mailbox owned by `auth_key`.
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// Look a mailbox up.
    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError>;
    /// Record a token for `mailbox`, if it holds fewer than `max_tokens`.
    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError>;
    /// Look a token up by its hash.
    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError>;
    /// Revoke a token of `mailbox`; false if it was not that mailbox's token.
    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError>;
    /// Append an envelope, assigning the next sequence number, unless an
    /// envelope with its message id is still held in the mailbox. Refuses over quota without touching
    /// anything stored.
    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError>;
    /// Up to `limit` envelopes with sequence numbers above `after_seq`, in order.
    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError>;
    /// Delete acknowledged envelopes; returns how many existed.
    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError>;
    /// Delete envelopes expired at `now_ms`.
    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError>;
    /// Resolves when every write made before this call is on disk.
    fn durable(&self) -> Durable;
}
