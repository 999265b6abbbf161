//! Who is connected: subscriptions by mailbox. A durable send wakes the
//! mailbox's subscribers, which then read the store themselves, so a wake-up
//! that races a reconnect loses nothing. Ephemeral envelopes are handed over
//! directly and dropped when nobody is there or a subscriber is backed up.

use crate::store::MailboxId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tern_protocol::pb;
use tokio::sync::{mpsc, Notify};

/// Ephemeral envelopes buffered per subscriber before newer ones are dropped.
const EPHEMERAL_BUFFER: usize = 64;

struct Subscriber {
    id: u64,
    wake: Arc<Notify>,
    ephemeral: mpsc::Sender<pb::Envelope>,
}

/// The relay's table of connected, subscribed devices.
#[derive(Default)]
pub struct Hub {
    subs: Mutex<HashMap<MailboxId, Vec<Subscriber>>>,
    next_id: AtomicU64,
}

/// One device's subscription; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    mailbox: MailboxId,
    id: u64,
    /// Notified when new envelopes are stored for the mailbox.
    pub wake: Arc<Notify>,
    /// Ephemeral envelopes for the mailbox.
    pub ephemeral: mpsc::Receiver<pb::Envelope>,
}

impl Hub {
    /// Subscribe to `mailbox`.
    pub fn subscribe(self: &Arc<Self>, mailbox: MailboxId) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(EPHEMERAL_BUFFER);
        if let Ok(mut subs) = self.subs.lock() {
            subs.entry(mailbox).or_default().push(Subscriber {
                id,
                wake: Arc::clone(&wake),
                ephemeral: tx,
            });
        }
        Subscription {
            hub: Arc::clone(self),
            mailbox,
            id,
            wake,
            ephemeral: rx,
        }
    }

    /// Tell the mailbox's subscribers that something new is stored.
    pub fn stored(&self, mailbox: &MailboxId) {
        if let Ok(subs) = self.subs.lock() {
            for s in subs.get(mailbox).into_iter().flatten() {
                s.wake.notify_one();
            }
        }
    }

    /// Hand an ephemeral envelope to connected subscribers; true if any took it.
    pub fn ephemeral(&self, mailbox: &MailboxId, env: pb::Envelope) -> bool {
        let Ok(subs) = self.subs.lock() else {
            return false;
        };
        let mut delivered = false;
        for s in subs.get(mailbox).into_iter().flatten() {
            delivered |= s.ephemeral.try_send(env.clone()).is_ok();
        }
        delivered
    }

    /// Number of subscribed devices (for metrics and tests).
    pub fn subscribers(&self) -> usize {
        self.subs
            .lock()
            .map(|s| s.values().map(Vec::len).sum())
            .unwrap_or(0)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut subs) = self.hub.subs.lock() {
            if let Some(list) = subs.get_mut(&self.mailbox) {
                list.retain(|s| s.id != self.id);
                if list.is_empty() {
                    subs.remove(&self.mailbox);
                }
            }
        }
    }
}
