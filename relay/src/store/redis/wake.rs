//! Wake-ups across the relays of a fleet, over Redis sharded pub/sub: a
//! durable store publishes (`SPUBLISH`) on the mailbox's channel, which
//! lives on the mailbox's shard; each relay subscribes (`SSUBSCRIBE`) to
//! the channels of the mailboxes it has subscribers for and wakes its hub
//! when one fires. No polling.
//!
//! The listener is its own task on the engine's runtime. The client
//! library re-subscribes after a reconnect (a failover moves a shard's
//! channels with its slots); because a wake-up may have been published
//! while the connection was down, a disconnection also wakes every watched
//! mailbox, so its streams read the store again and miss nothing. A new
//! subscription wakes its mailbox once it is in place for the same reason.

use super::keys;
use super::options::RedisOptions;
use super::reply::store_error;
use crate::hub::Fleet;
use crate::store::{MailboxId, StoreError};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;

type Waker = Box<dyn Fn(&MailboxId) + Send + Sync>;

/// A failed subscription is tried again after this long.
const RESUBSCRIBE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A change of subscription, carried out in order.
enum Change {
    Watch(MailboxId),
    Unwatch(MailboxId),
}

/// The engine's side of the hub's [`Fleet`] hook.
pub struct Wakeups {
    changes: mpsc::UnboundedSender<Change>,
    /// For publishing (any number at once).
    conn: ClusterConnection,
    runtime: tokio::runtime::Handle,
    waker: Arc<OnceLock<Waker>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Wakeups {
    /// Connect a RESP3 connection for pub/sub and start the listener, on
    /// the current (engine) runtime.
    pub(super) async fn start(options: &RedisOptions) -> Result<Arc<Self>, StoreError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let client = ClusterClientBuilder::new(options.nodes.clone())
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout)
            .retries(8)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push_tx)
            .build()
            .map_err(|e| store_error("redis pub/sub", &e))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| store_error("redis pub/sub connection", &e))?;
        let (changes, rx) = mpsc::unbounded_channel::<Change>();
        let waker: Arc<OnceLock<Waker>> = Arc::new(OnceLock::new());
        let watched: Arc<Mutex<HashSet<MailboxId>>> = Arc::default();
        let tasks = vec![
            tokio::spawn(subscriptions(
                conn.clone(),
                rx,
                changes.clone(),
                Arc::clone(&waker),
                Arc::clone(&watched),
            )),
            tokio::spawn(listen(
                push_rx,
                changes.clone(),
                Arc::clone(&waker),
                watched,
            )),
        ];
        Ok(Arc::new(Self {
            changes,
            conn,
            runtime: tokio::runtime::Handle::current(),
            waker,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Stop the listener.
    pub(super) fn stop(&self) {
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            t.abort();
        }
    }
}

impl Fleet for Wakeups {
    fn watch(&self, mailbox: MailboxId) {
        let _ = self.changes.send(Change::Watch(mailbox));
    }

    fn unwatch(&self, mailbox: MailboxId) {
        let _ = self.changes.send(Change::Unwatch(mailbox));
    }

    fn stored(&self, mailbox: &MailboxId) {
        let mut conn = self.conn.clone();
        let channel = keys::wake_channel(mailbox);
        self.runtime.spawn(async move {
            let mut publish = redis::cmd("SPUBLISH");
            publish.arg(channel).arg("");
            if let Err(e) = publish.exec_async(&mut conn).await {
                tracing::warn!("redis wake-up not published: {e}");
            }
        });
    }

    fn deliver_to(&self, wake: Box<dyn Fn(&MailboxId) + Send + Sync>) {
        let _ = self.waker.set(wake);
    }
}

fn wake(waker: &OnceLock<Waker>, mailbox: &MailboxId) {
    if let Some(w) = waker.get() {
        w(mailbox);
    }
}

/// Carry out subscription changes in the order the hub made them. A
/// subscription that fails (its shard failing over) is tried again a
/// second later, for as long as the mailbox is watched.
async fn subscriptions(
    mut conn: ClusterConnection,
    mut changes: mpsc::UnboundedReceiver<Change>,
    again: mpsc::UnboundedSender<Change>,
    waker: Arc<OnceLock<Waker>>,
    watched: Arc<Mutex<HashSet<MailboxId>>>,
) {
    while let Some(change) = changes.recv().await {
        let result = match change {
            Change::Watch(mailbox) => {
                if let Ok(mut w) = watched.lock() {
                    w.insert(mailbox);
                }
                let r = conn.ssubscribe(keys::wake_channel(&mailbox)).await;
                // Anything published before the subscription was in place.
                wake(&waker, &mailbox);
                if r.is_err() {
                    let (again, watched) = (again.clone(), Arc::clone(&watched));
                    tokio::spawn(async move {
                        tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                        let still = watched.lock().map(|w| w.contains(&mailbox));
                        if still.unwrap_or(false) {
                            let _ = again.send(Change::Watch(mailbox));
                        }
                    });
                }
                r
            }
            Change::Unwatch(mailbox) => {
                if let Ok(mut w) = watched.lock() {
                    w.remove(&mailbox);
                }
                conn.sunsubscribe(keys::wake_channel(&mailbox)).await
            }
        };
        if let Err(e) = result {
            tracing::warn!("redis wake-up subscription: {e}");
        }
    }
}

/// Turn shard messages into wake-ups; after a disconnection, subscribe
/// every watched mailbox again (its shard may have a new primary) and wake
/// it.
async fn listen(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    changes: mpsc::UnboundedSender<Change>,
    waker: Arc<OnceLock<Waker>>,
    watched: Arc<Mutex<HashSet<MailboxId>>>,
) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let channel = push.data.first().and_then(|v| match v {
                    Value::BulkString(b) => Some(b.as_slice()),
                    _ => None,
                });
                if let Some(mailbox) = channel.and_then(keys::mailbox_of_channel) {
                    wake(&waker, &mailbox);
                }
            }
            PushKind::Disconnection => {
                // Publications may have been missed: read again.
                let all: Vec<MailboxId> = watched
                    .lock()
                    .map(|w| w.iter().copied().collect())
                    .unwrap_or_default();
                for mailbox in all {
                    // Subscribing again is harmless if the client library
                    // already did; it wakes the mailbox once in place.
                    let _ = changes.send(Change::Watch(mailbox));
                    wake(&waker, &mailbox);
                }
            }
            _ => {}
        }
    }
}
