//! A window onto what the relay learns about each connection, for tests and
//! audits: where it came from, which mailbox (if any) it authenticated as,
//! and which mailboxes it sent to. The relay itself never keeps this; an
//! operator who installs an observer sees exactly what a curious relay
//! could record, which is what Tern's unlinkability tests assert about.
//!
//! The default is no observer. It is called on the connection's tasks, so
//! an implementation must be quick and must not block.

use crate::store::MailboxId;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A number for a new connection, never reused while the process runs
/// (quinn's `stable_id` may be reused once a connection is gone).
pub fn next_connection_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Told what the relay sees, per connection (`conn` is from
/// [`next_connection_id`], unique while the process runs).
pub trait ConnectionObserver: Send + Sync + 'static {
    /// A connection completed its handshake from `remote` (address and
    /// source port).
    fn connected(&self, conn: usize, remote: SocketAddr);
    /// The connection proved it owns `mailbox`.
    fn authenticated(&self, conn: usize, mailbox: MailboxId);
    /// The connection sent an envelope to `mailbox` (accepted or not).
    fn sent(&self, conn: usize, mailbox: MailboxId);
}

/// The relay's observer slot in [`crate::RelayConfig`]: none by default,
/// never read from or written to a config file.
#[derive(Clone, Default)]
pub struct Observer(Option<Arc<dyn ConnectionObserver>>);

impl Observer {
    /// Report to `observer`.
    pub fn new(observer: Arc<dyn ConnectionObserver>) -> Self {
        Self(Some(observer))
    }

    /// The observer, if one is installed.
    pub fn get(&self) -> Option<&dyn ConnectionObserver> {
        self.0.as_deref()
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Observer(installed)"
        } else {
            "Observer(none)"
        })
    }
}

/// Configs compare by their settings; an observer is not a setting.
impl PartialEq for Observer {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
