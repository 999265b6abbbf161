//! tern-client: what every Tern client is built on. It owns a device's
//! account and encrypted local store, makes and accepts invites, sends through
//! an on-disk outbox to each contact's relay, and receives from the home
//! relay, storing every message before acknowledging it.
//!
//! [`Client`] is the whole API; [`transport`] speaks the wire protocol and
//! [`store`] is the local database.
#![warn(missing_docs)]

pub mod backoff;
pub mod client;
pub mod error;
pub mod store;
// The local socket (other programs using a running client); Unix only.
#[cfg(unix)]
pub mod rpc;
pub mod transport;

pub use client::{Client, Event, OutboxReport, ReceivedMessage, SendOutcome};
pub use error::ClientError;
pub use store::{Contact, Status, StoredMessage};
