//! The Redis Cluster engine, [`RedisStore`]: the [`MailboxStore`] contract
//! over a Redis Cluster, so several stateless relays can serve the same
//! users (docs/decisions.md, docs/operations.md).
//!
//! Every key of a mailbox carries the mailbox's hash tag ([`keys`]), so a
//! mailbox lives on one shard and each change to it is one call of a Redis
//! function (`tern.lua`, loaded at start, replicated and persisted by Redis
//! with the data). A token's record is keyed by its own hash and points to
//! its mailbox. Expiry: each mailbox keeps its seqs by expiry, and an
//! index in [`keys::SWEEP_BUCKETS`] sorted sets (mailbox by earliest
//! expiry) tells the sweeper where to look.
//!
//! Durability: at start every primary must have `appendonly yes` and
//! `appendfsync always` (unless the operator allows otherwise), so a reply
//! means the write is in the primary's fsynced AOF; with `replicas = N`
//! each write (or batch of writes to one primary) goes down one connection
//! in a pipeline with `WAIT N`, and
//! concurrent writes share the replicas' acknowledgements. So
//! [`MailboxStore::durable`] resolves at once: a write is durable when its
//! call returns.
//!
//! A stream's batch of sends is two calls ([`MailboxStore::tokens`],
//! [`MailboxStore::append_batch`]), each sent as one pipeline per primary
//! ([`batch`]), with one `WAIT` per pipeline when replicas are asked for.
//!
//! The trait is synchronous and called from the relay's store threads; the
//! engine runs its Redis I/O on a small runtime of its own and blocks only
//! the calling thread. Cross-relay wake-ups are [`wake`].

mod batch;
mod check;
mod engine;
pub mod keys;
mod options;
mod reply;
pub mod wake;

pub use self::engine::RedisStore;
pub use self::options::{split_nodes, RedisOptions};

/// The function library, loaded on every primary at start.
const LIBRARY: &str = include_str!("tern.lua");
