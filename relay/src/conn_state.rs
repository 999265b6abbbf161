//! What one QUIC connection's streams share: what the connection has
//! proven, whether one of its streams holds the subscription, and its frame
//! rate. Control streams and message streams read and update it; nothing
//! here does I/O.

use crate::core::ConnAuth;
use crate::rate::ConnectionRate;
use crate::store::MailboxId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// State shared by every stream of one connection.
pub struct ConnState {
    /// What the connection has proven.
    pub auth: Mutex<ConnAuth>,
    /// One subscription per connection, so a peer cannot multiply the
    /// envelopes queued for it by opening more streams.
    subscribed: AtomicBool,
    /// Frames and requests per second on this connection.
    pub rate: ConnectionRate,
}

impl ConnState {
    /// State for a new connection.
    pub fn new(auth: ConnAuth, rate: ConnectionRate) -> Self {
        Self {
            auth: Mutex::new(auth),
            subscribed: AtomicBool::new(false),
            rate,
        }
    }

    /// The mailbox the connection authenticated for, if any.
    pub fn mailbox(&self) -> Option<MailboxId> {
        self.auth.lock().ok().and_then(|a| a.mailbox())
    }

    /// Take the connection's one subscription; false if a stream has it.
    pub(crate) fn claim_subscription(&self) -> bool {
        !self.subscribed.swap(true, Ordering::SeqCst)
    }

    /// Give the subscription back when the stream holding it ends.
    pub(crate) fn release_subscription(&self) {
        self.subscribed.store(false, Ordering::SeqCst);
    }
}
