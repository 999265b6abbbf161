//! tern-client: what every Tern client is built on. It owns a device's
//! account and encrypted local store, makes and accepts invites, sends through
//! an on-disk outbox to each contact's relay, and receives from the home
//! relay, storing every message before acknowledging it.
//!
//! [`Client`] offers one-shot operations (what `tern send` and `tern recv`
//! do); [`spawn`] runs it as a task that an app drives through a cloneable
//! [`ClientHandle`] while it receives an [`EventStream`]. Each job has its
//! module: [`account`], [`contacts`], [`outbox`], [`inbox`], [`groups`], and the pure
//! [`layers`] (content → Olm → seal and back) that the bench and fuzz
//! targets use too; [`transport`] speaks the wire protocol and [`store`] is
//! the local database. Trust has its own modules: [`invites`] (records,
//! expiry, which hello may make a contact), [`tokens`] (minted ahead of
//! need), [`rotation`], [`contact_state`] and [`verify`] (safety numbers,
//! key changes), gathered for the CLI and the socket in [`trust`].
#![warn(missing_docs)]

pub mod account;
pub mod backoff;
pub mod backup;
pub mod client;
pub mod contact_state;
pub mod contacts;
pub mod devices;
pub mod direct;
pub mod error;
pub mod event;
pub mod fleet_dial;
pub mod groups;
pub mod handle;
pub mod history;
pub mod inbox;
pub mod invites;
pub mod layers;
pub mod outbox;
pub mod presence;
pub mod receipts;
pub mod settings;
pub mod spacing;
pub mod store;
mod store_migrate;
// The local socket (other programs using a running client); Unix only.
pub mod rotation;
#[cfg(unix)]
pub mod rpc;
pub mod tokens;
pub mod transport;
pub mod trust;
pub mod typing;
pub mod verify;

pub use client::{now_ms, random16, Client};
pub use error::ClientError;
pub use event::{DeliveryStatus, Event, OutboxReport, ReceivedMessage, SendOutcome};
pub use groups::{GroupCall, GroupInfo, GroupMessage, MemberInfo};
pub use handle::{spawn, ClientHandle, EventStream};
pub use receipts::rules::ReceiptState;
pub use receipts::{MessageReport, RecipientReport};
pub use settings::Settings;
pub use store::{Contact, Profile, Status, StoredMessage};
pub use typing::TypingOutcome;
