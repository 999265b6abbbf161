//! tern-relay: the server half of Tern. It holds per-device mailboxes of
//! opaque sealed envelopes, accepts sends from anyone holding a send token,
//! pushes envelopes to the authenticated owner, deletes them on ack and
//! expires them after a TTL. It never sees who sent what, nor any content.
//!
//! Layout, after mini-redis: [`core`] is the protocol logic without sockets,
//! [`store`] the durable state behind a trait, [`stream`] the message
//! stream's state machine (after quinn-proto), [`connection`] drives one QUIC
//! connection and its streams, [`server`] runs the endpoint, [`hub`] tracks
//! subscriptions.
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod conn_state;
pub mod connection;
pub mod core;
pub mod entropy;
pub mod history;
pub mod hub;
pub mod observer;
pub mod outbox;
pub mod presence;
pub mod push;
pub mod rate;
pub mod server;
pub mod store;
pub mod stream;
pub mod tls;
pub mod workers;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Limits, RateConfig, RedisConfig, RelayConfig, StoreKind};
pub use observer::{ConnectionObserver, Observer};
pub use server::{RunningRelay, StartError};
