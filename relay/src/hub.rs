//! Who is connected: subscriptions by mailbox. A stored send wakes the
//! mailbox's subscribers (while its flush runs), which then read the store
//! themselves, so a wake-up that races a reconnect loses nothing. A stored
//! multi-recipient send also hands each subscriber the envelope as stored
//! ([`Hub::stored_with`]), so one that has pushed everything before it
//! pushes it without reading it back; any other reads the store as after a
//! plain wake-up. Ephemeral envelopes are handed over directly and dropped
//! when nobody is there or a subscriber is backed up.
//! A mailbox holds a bounded number of subscriptions: the newest replaces
//! the oldest, which is told so and finishes its stream, so one abuser
//! cannot pile up subscriptions (and what each may hold) on one mailbox.
//!
//! A relay in a fleet (several relays over one shared store) attaches a
//! [`Fleet`]: the hub tells it which mailboxes have local subscribers, and
//! every store, so other relays' subscribers are woken too; what
//! other relays stored comes back through [`Hub::stored_elsewhere`]. The
//! hub stays the one place that wakes streams.

use crate::store::MailboxId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use tern_protocol::pb;
use tokio::sync::{mpsc, oneshot, Notify};

/// Ephemeral envelopes buffered per subscriber before newer ones are dropped.
const EPHEMERAL_BUFFER: usize = 64;
/// Stored envelopes handed over per subscriber and not yet taken; past
/// this, a hand-over is a plain wake-up (the store has it). The stream
/// takes them on every wake-up, so few ever wait here.
const HANDED_BUFFER: usize = 8;

/// What wake-ups brought one subscription since it last looked.
#[derive(Default)]
pub struct Handed {
    inner: Mutex<HandedInner>,
}

#[derive(Default)]
struct HandedInner {
    envelopes: Vec<pb::Envelope>,
    /// A wake-up came without an envelope, or one did not fit.
    plain: bool,
}

impl Handed {
    /// Take what arrived: the envelopes handed over, and whether a plain
    /// wake-up came too (the store may hold more than those).
    pub fn take(&self) -> (Vec<pb::Envelope>, bool) {
        let mut out = Vec::new();
        let plain = self.take_into(&mut out);
        (out, plain)
    }

    /// As [`Self::take`], into `out` (which must be empty): the two
    /// buffers trade places, so a subscription that takes into the same
    /// buffer every time allocates nothing per hand-over.
    pub fn take_into(&self, out: &mut Vec<pb::Envelope>) -> bool {
        debug_assert!(out.is_empty());
        match self.inner.lock() {
            Ok(mut h) => {
                std::mem::swap(&mut h.envelopes, out);
                std::mem::replace(&mut h.plain, false)
            }
            // Poisoned: read the store.
            Err(_) => true,
        }
    }

    fn plain(&self) {
        if let Ok(mut h) = self.inner.lock() {
            h.plain = true;
        }
    }

    fn hand(&self, env: pb::Envelope) {
        if let Ok(mut h) = self.inner.lock() {
            if h.envelopes.len() < HANDED_BUFFER {
                h.envelopes.push(env);
            } else {
                h.plain = true;
            }
        }
    }
}

struct Subscriber {
    id: u64,
    wake: Arc<Notify>,
    handed: Arc<Handed>,
    ephemeral: mpsc::Sender<pb::Envelope>,
    /// Told when a newer subscription replaces this one.
    replaced: oneshot::Sender<()>,
}

/// Wake-ups between the relays of a fleet: a store engine shared by
/// several relays provides one. Calls must not block (they are made with
/// the hub's table locked).
pub trait Fleet: Send + Sync + 'static {
    /// This relay has a subscriber for `mailbox` now: hear about what
    /// other relays store for it.
    fn watch(&self, mailbox: MailboxId);
    /// This relay no longer has subscribers for `mailbox`.
    fn unwatch(&self, mailbox: MailboxId);
    /// Something was durably stored for `mailbox` here: tell the others.
    fn stored(&self, mailbox: &MailboxId);
    /// Where to report what other relays stored (and, after the fleet's
    /// connection was lost and restored, every watched mailbox, so their
    /// streams read the store again and miss nothing).
    fn deliver_to(&self, wake: Box<dyn Fn(&MailboxId) + Send + Sync>);
}

/// The relay's table of connected, subscribed devices.
#[derive(Default)]
pub struct Hub {
    subs: Mutex<HashMap<MailboxId, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// Most subscriptions one mailbox holds (0: no limit).
    max_per_mailbox: usize,
    /// The other relays of a fleet, if any.
    fleet: OnceLock<Arc<dyn Fleet>>,
    /// Told of a store for a mailbox with no subscriber here (push
    /// wake-ups, [`crate::push`]); must not block.
    idle: OnceLock<IdleStore>,
}

/// What [`Hub::on_idle_store`] calls.
type IdleStore = Box<dyn Fn(&MailboxId) + Send + Sync>;

/// One device's subscription; unsubscribes when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    mailbox: MailboxId,
    id: u64,
    /// Notified when new envelopes are stored for the mailbox; what the
    /// wake-ups brought is in [`Self::handed`].
    pub wake: Arc<Notify>,
    /// Envelopes handed over with wake-ups, and whether a plain one came.
    pub handed: Arc<Handed>,
    /// Ephemeral envelopes for the mailbox.
    pub ephemeral: mpsc::Receiver<pb::Envelope>,
    /// Resolves when a newer subscription to the mailbox replaced this one
    /// (it is then no longer woken).
    pub replaced: oneshot::Receiver<()>,
}

impl Hub {
    /// A hub that keeps at most `max` subscriptions per mailbox (0: no
    /// limit).
    pub fn with_max_per_mailbox(max: usize) -> Self {
        Self {
            max_per_mailbox: max,
            ..Self::default()
        }
    }

    /// Wake this relay's subscribers through `fleet` too, and tell it
    /// about local stores and subscriptions. Once per hub.
    pub fn attach_fleet(self: &Arc<Self>, fleet: Arc<dyn Fleet>) {
        let hub: Weak<Self> = Arc::downgrade(self);
        fleet.deliver_to(Box::new(move |mailbox| {
            if let Some(hub) = hub.upgrade() {
                hub.stored_elsewhere(mailbox);
            }
        }));
        let _ = self.fleet.set(fleet);
    }

    /// Subscribe to `mailbox`. If the mailbox already holds its most
    /// subscriptions, the oldest is dropped from it and told.
    pub fn subscribe(self: &Arc<Self>, mailbox: MailboxId) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let handed = Arc::new(Handed::default());
        let (tx, rx) = mpsc::channel(EPHEMERAL_BUFFER);
        let (replaced_tx, replaced) = oneshot::channel();
        if let Ok(mut subs) = self.subs.lock() {
            let list = subs.entry(mailbox).or_default();
            if list.is_empty() {
                if let Some(f) = self.fleet.get() {
                    f.watch(mailbox);
                }
            }
            while self.max_per_mailbox != 0 && list.len() >= self.max_per_mailbox {
                let oldest = list.remove(0);
                let _ = oldest.replaced.send(());
            }
            list.push(Subscriber {
                id,
                wake: Arc::clone(&wake),
                handed: Arc::clone(&handed),
                ephemeral: tx,
                replaced: replaced_tx,
            });
        }
        Subscription {
            hub: Arc::clone(self),
            mailbox,
            id,
            wake,
            handed,
            ephemeral: rx,
            replaced,
        }
    }

    /// Tell the mailbox's subscribers, here and on the fleet's other
    /// relays, that something new is durably stored.
    pub fn stored(&self, mailbox: &MailboxId) {
        if !self.wake_local(mailbox) {
            if let Some(idle) = self.idle.get() {
                idle(mailbox);
            }
        }
        if let Some(f) = self.fleet.get() {
            f.stored(mailbox);
        }
    }

    /// As [`Self::stored`] for each of `targets`, handing this relay's
    /// subscribers of each mailbox `env` as stored there (with that
    /// sequence number). The subscriptions are looked up under one lock.
    pub fn stored_with(&self, targets: &[(MailboxId, u64)], env: &pb::Envelope) {
        let mut idle = Vec::new();
        // Poisoned: nobody is woken and nobody counted idle, as elsewhere.
        if let Ok(subs) = self.subs.lock() {
            for (mailbox, seq) in targets {
                let Some(list) = subs.get(mailbox).filter(|l| !l.is_empty()) else {
                    idle.push(*mailbox);
                    continue;
                };
                // One copy per subscriber (the payload is shared).
                for s in list {
                    let mut env = env.clone();
                    env.seq = *seq;
                    s.handed.hand(env);
                    s.wake.notify_one();
                }
            }
        }
        if let Some(f) = self.idle.get() {
            idle.iter().for_each(f);
        }
        if let Some(f) = self.fleet.get() {
            targets.iter().for_each(|(m, _)| f.stored(m));
        }
    }

    /// Wake this relay's subscribers of `mailbox` only: another relay
    /// stored something for it.
    pub fn stored_elsewhere(&self, mailbox: &MailboxId) {
        self.wake_local(mailbox);
    }

    /// Wake this relay's subscribers of `mailbox`; false if it has none.
    fn wake_local(&self, mailbox: &MailboxId) -> bool {
        let Ok(subs) = self.subs.lock() else {
            return true;
        };
        let list = subs.get(mailbox);
        for s in list.into_iter().flatten() {
            s.handed.plain();
            s.wake.notify_one();
        }
        list.is_some_and(|l| !l.is_empty())
    }

    /// Call `f` whenever something is stored here for a mailbox with no
    /// subscriber on this relay. Once per hub.
    pub fn on_idle_store(&self, f: impl Fn(&MailboxId) + Send + Sync + 'static) {
        let _ = self.idle.set(Box::new(f));
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
                    if let Some(f) = self.hub.fleet.get() {
                        f.unwatch(self.mailbox);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_subscription_replaces_the_oldest_which_is_told() {
        let hub = Arc::new(Hub::with_max_per_mailbox(2));
        let mut a = hub.subscribe([1; 16]);
        let mut b = hub.subscribe([1; 16]);
        let mut other = hub.subscribe([2; 16]);
        assert!(a.replaced.try_recv().is_err(), "room for two");
        let mut c = hub.subscribe([1; 16]);
        assert_eq!(a.replaced.try_recv(), Ok(()), "the oldest is told");
        assert!(b.replaced.try_recv().is_err());
        assert!(c.replaced.try_recv().is_err());
        assert!(
            other.replaced.try_recv().is_err(),
            "other mailboxes keep theirs"
        );
        assert_eq!(hub.subscribers(), 3);
        drop(a);
        assert_eq!(hub.subscribers(), 3, "the replaced one was already gone");
        drop((b, c));
        assert_eq!(hub.subscribers(), 1);
    }

    #[test]
    fn a_send_hands_each_subscriber_its_own_seq_and_counts_the_rest_idle() {
        let hub = Arc::new(Hub::with_max_per_mailbox(4));
        let (a1, a2, b) = (
            hub.subscribe([1; 16]),
            hub.subscribe([1; 16]),
            hub.subscribe([2; 16]),
        );
        let idle = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&idle);
        hub.on_idle_store(move |m| seen.lock().unwrap().push(m[0]));
        let env = pb::Envelope {
            message_id: vec![9; 16].into(),
            ..Default::default()
        };
        hub.stored_with(&[([1; 16], 5), ([3; 16], 7), ([2; 16], 11)], &env);
        let seqs = |s: &Subscription| {
            let (handed, plain) = s.handed.take();
            (handed.iter().map(|e| e.seq).collect::<Vec<_>>(), plain)
        };
        assert_eq!(seqs(&a1), (vec![5], false));
        assert_eq!(seqs(&a2), (vec![5], false), "every subscriber of a mailbox");
        assert_eq!(seqs(&b), (vec![11], false));
        assert_eq!(*idle.lock().unwrap(), vec![3], "nobody subscribed to 3");
    }

    #[test]
    fn taking_into_a_kept_buffer_trades_buffers_and_loses_nothing() {
        let hub = Arc::new(Hub::default());
        let sub = hub.subscribe([1; 16]);
        let env = pb::Envelope::default();
        let mut kept = Vec::new();
        hub.stored_with(&[([1; 16], 1)], &env);
        hub.stored_with(&[([1; 16], 2)], &env);
        assert!(!sub.handed.take_into(&mut kept), "no plain wake-up came");
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        let room = kept.capacity();
        kept.clear();
        // The subscription now holds the empty buffer it was given; the
        // next take hands back the one just drained, room and all.
        assert!(!sub.handed.take_into(&mut kept));
        assert!(kept.is_empty());
        hub.stored_with(&[([1; 16], 3)], &env);
        hub.stored(&[1; 16]);
        assert!(sub.handed.take_into(&mut kept), "the plain wake-up is told");
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(kept.capacity(), room, "3 went into the room of 1 and 2");
    }

    type Deliver = Box<dyn Fn(&MailboxId) + Send + Sync>;

    /// What a fleet was told, in order.
    #[derive(Default)]
    struct Told(Mutex<Vec<String>>, Mutex<Option<Deliver>>);

    impl Fleet for Told {
        fn watch(&self, m: MailboxId) {
            self.0.lock().unwrap().push(format!("watch {}", m[0]));
        }
        fn unwatch(&self, m: MailboxId) {
            self.0.lock().unwrap().push(format!("unwatch {}", m[0]));
        }
        fn stored(&self, m: &MailboxId) {
            self.0.lock().unwrap().push(format!("stored {}", m[0]));
        }
        fn deliver_to(&self, wake: Box<dyn Fn(&MailboxId) + Send + Sync>) {
            *self.1.lock().unwrap() = Some(wake);
        }
    }

    #[tokio::test]
    async fn a_fleet_hears_of_first_and_last_subscribers_and_stores_and_wakes_them() {
        let hub = Arc::new(Hub::default());
        let fleet = Arc::new(Told::default());
        hub.attach_fleet(Arc::clone(&fleet) as Arc<dyn Fleet>);
        let a = hub.subscribe([1; 16]);
        let b = hub.subscribe([1; 16]);
        hub.stored(&[1; 16]);
        let woken = |n: &Arc<Notify>| {
            let n = Arc::clone(n);
            async move {
                tokio::time::timeout(std::time::Duration::from_secs(5), n.notified())
                    .await
                    .expect("woken")
            }
        };
        woken(&a.wake).await;
        woken(&b.wake).await;
        // Another relay stored something: the local subscribers wake.
        (fleet.1.lock().unwrap().as_ref().unwrap())(&[1; 16]);
        woken(&a.wake).await;
        woken(&b.wake).await;
        drop(a);
        drop(b);
        assert_eq!(
            *fleet.0.lock().unwrap(),
            ["watch 1", "stored 1", "unwatch 1"],
            "watched once for two subscribers, unwatched with the last"
        );
    }
}
