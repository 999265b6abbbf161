//! Presence (docs/protocol.md §17): which devices are online, told only to
//! holders of a capability their owner published. Everything here lives in
//! memory: an owner publishes its capability hashes again on every
//! connection, and heartbeats are only meaningful while they come.
//!
//! The table is a plain struct over an injected [`Clock`]: heartbeats mark
//! a device online at once; [`Presence::tick`] marks it offline once no
//! heartbeat came for the grace period. A change marks the watching
//! subscriptions dirty and wakes them; each subscription's stream then
//! reads the current states it owes ([`Watch::take`]). So the relay's work
//! is proportional to changes, never to subscribers times time, and a
//! watcher that falls behind gets the latest state rather than a backlog.
//!
//! What the relay learns: which capability hashes belong to which mailbox,
//! when a mailbox's owner beats, and that some unauthenticated connection
//! presented a capability. It never learns which mailbox the watcher owns:
//! subscriptions are refused on authenticated connections.

mod caps;
pub mod control;
pub mod stream;

use crate::clock::Clock;
use crate::store::{MailboxId, TokenHash};
use caps::{Caps, SlotId, Watcher};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tern_protocol::{pb, ErrorCode, WireError, PRESENCE_CAPABILITY_LEN};
use tokio::sync::Notify;

/// "Last seen" is told rounded down to this (one minute), so watchers do
/// not learn exactly when a device dropped off.
pub const LAST_SEEN_ROUNDING_MS: u64 = 60_000;

/// The relay's presence and push settings (`[presence]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A device counts offline once no heartbeat came for this long, in
    /// milliseconds, so a flaky link does not make it flicker.
    pub grace_ms: u64,
    /// Most capability hashes one mailbox publishes.
    pub max_capabilities: usize,
    /// Most capabilities one subscription presents.
    pub max_per_subscription: usize,
    /// Push wake-ups for devices that are not connected.
    pub push: crate::push::PushConfig,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            grace_ms: 30_000,
            max_capabilities: 1_000,
            max_per_subscription: 1_000,
            push: crate::push::PushConfig::default(),
        }
    }
}

/// SHA-256 of a presence capability, the form the relay keeps it in.
pub fn capability_hash(capability: &[u8]) -> TokenHash {
    Sha256::digest(capability).into()
}

/// One device's presence.
#[derive(Debug, Default)]
struct Device {
    /// Its published capabilities' slots (a boxed slice: it changes only
    /// on publish).
    caps: Box<[SlotId]>,
    online: bool,
    last_beat_ms: u64,
    /// When its one live entry in [`Table::due`] falls due (others for it
    /// there are stale).
    due_ms: u64,
    hide_last_seen: bool,
}

impl Device {
    fn update(&self, index: u32) -> pb::PresenceUpdate {
        let last_seen_ms = if self.online || self.hide_last_seen || self.last_beat_ms == 0 {
            0
        } else {
            self.last_beat_ms / LAST_SEEN_ROUNDING_MS * LAST_SEEN_ROUNDING_MS
        };
        pb::PresenceUpdate {
            index,
            online: self.online,
            last_seen_ms,
        }
    }
}

/// One subscription's shared half: the indexes whose state changed, and
/// the wake-up for its stream.
#[derive(Default)]
pub struct Watch {
    dirty: Mutex<Vec<u32>>,
    /// Woken when [`Watch::take`] has something.
    pub notify: Notify,
}

impl Watch {
    fn mark(&self, index: u32) {
        let mut d = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        if !d.contains(&index) {
            d.push(index);
        }
        drop(d);
        self.notify.notify_one();
    }

    /// The indexes marked since the last call.
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[derive(Default)]
struct Table {
    devices: HashMap<MailboxId, Device>,
    /// Capability hashes, published or watched; freed when neither.
    caps: Caps,
    /// Live subscriptions' wake-ups by number (`None`: free for reuse).
    subs: Vec<Option<Arc<Watch>>>,
    free_subs: Vec<u32>,
    /// When online devices fall due for an offline check: one live entry
    /// per online device, pushed when it comes online and moved on by the
    /// sweep while it beats, so a beat only writes a timestamp (entries
    /// left by an earlier time online are skipped when popped).
    due: BinaryHeap<Reverse<(u64, MailboxId)>>,
}

impl Table {
    fn changed(&self, mailbox: &MailboxId) {
        let Some(d) = self.devices.get(mailbox) else {
            return;
        };
        for &slot in d.caps.iter() {
            for w in self
                .caps
                .get(slot)
                .into_iter()
                .flat_map(|c| c.watchers.iter())
            {
                if let Some(Some(watch)) = self.subs.get(w.sub as usize) {
                    watch.mark(w.index);
                }
            }
        }
    }

    /// A number for a new subscription; `None` if 2^32 are live.
    fn add_sub(&mut self, watch: Arc<Watch>) -> Option<u32> {
        if let Some(id) = self.free_subs.pop() {
            *self.subs.get_mut(id as usize)? = Some(watch);
            return Some(id);
        }
        let id = u32::try_from(self.subs.len()).ok()?;
        self.subs.push(Some(watch));
        Some(id)
    }

    /// Subscription `sub` stops watching `slots`, and its number is free.
    fn unwatch(&mut self, sub: u32, slots: &[SlotId]) {
        for &slot in slots {
            if let Some(cap) = self.caps.get_mut(slot) {
                cap.watchers.remove_sub(sub);
            }
            self.caps.release(slot);
        }
        if let Some(entry) = self.subs.get_mut(sub as usize) {
            if entry.take().is_some() {
                self.free_subs.push(sub);
            }
        }
    }
}

/// The table cannot take more capabilities (2^32 slots).
fn full() -> WireError {
    WireError::new(
        ErrorCode::QuotaExceeded,
        "the relay holds as many presence capabilities as it can",
    )
}

/// The relay's presence table.
pub struct Presence {
    table: Mutex<Table>,
    clock: Arc<dyn Clock>,
    config: PresenceConfig,
}

/// A subscription's capabilities, dropped from the table when it ends.
pub struct Subscription {
    presence: Arc<Presence>,
    id: u32,
    /// The slot of each capability presented, in order.
    slots: Box<[SlotId]>,
    /// What changed, for the stream to send.
    pub watch: Arc<Watch>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.presence.table().unwatch(self.id, &self.slots);
    }
}

impl Presence {
    /// An empty table reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>, config: PresenceConfig) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            clock,
            config,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `mailbox`'s owner replaces its capability set. Watchers of a
    /// capability left out hear nothing more; watchers of a new one get
    /// the current state.
    pub fn publish(&self, mailbox: MailboxId, p: &pb::PresencePublish) -> Result<(), WireError> {
        if p.capability_hashes.len() > self.config.max_capabilities {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} capabilities (at most {})",
                    p.capability_hashes.len(),
                    self.config.max_capabilities
                ),
            ));
        }
        let mut new = HashSet::with_capacity(p.capability_hashes.len());
        for h in &p.capability_hashes {
            let h: TokenHash = h[..].try_into().map_err(|_| {
                WireError::new(ErrorCode::Malformed, "a capability hash is 32 bytes")
            })?;
            new.insert(h);
        }
        let mut t = self.table();
        // A hash another mailbox already published stays theirs.
        new.retain(|h| {
            t.caps
                .find(h)
                .and_then(|id| t.caps.get(id))
                .and_then(|c| c.owner)
                .is_none_or(|m| m == mailbox)
        });
        if t.caps.room() < new.len() {
            return Err(full());
        }
        let mut slots = Vec::with_capacity(new.len());
        for h in &new {
            if let Some(id) = t.caps.entry(*h) {
                if let Some(cap) = t.caps.get_mut(id) {
                    cap.owner = Some(mailbox);
                }
                slots.push(id);
            }
        }
        let kept: HashSet<SlotId> = slots.iter().copied().collect();
        let old = {
            let d = t.devices.entry(mailbox).or_default();
            d.hide_last_seen = p.hide_last_seen;
            std::mem::replace(&mut d.caps, slots.into_boxed_slice())
        };
        for &id in old.iter().filter(|id| !kept.contains(*id)) {
            if let Some(cap) = t.caps.get_mut(id) {
                cap.owner = None;
            }
            t.caps.release(id);
        }
        // Everyone watching learns the state under the new rules (last
        // seen may have been hidden or shown).
        t.changed(&mailbox);
        Ok(())
    }

    /// A heartbeat from `mailbox`'s authenticated owner.
    pub fn heartbeat(&self, mailbox: MailboxId) {
        let now = self.clock.now_ms();
        let grace = self.config.grace_ms;
        let mut t = self.table();
        let d = t.devices.entry(mailbox).or_default();
        d.last_beat_ms = now;
        if d.online {
            return;
        }
        d.online = true;
        let due = now.saturating_add(grace);
        d.due_ms = due;
        t.due.push(Reverse((due, mailbox)));
        t.changed(&mailbox);
    }

    /// Mark offline every device whose grace period ran out; returns how
    /// many went offline. Called a few times a grace period.
    pub fn tick(&self) -> usize {
        let now = self.clock.now_ms();
        let grace = self.config.grace_ms;
        let mut t = self.table();
        let mut went = Vec::new();
        while let Some(Reverse((at, mailbox))) = t.due.peek().copied() {
            if at > now {
                break;
            }
            t.due.pop();
            let Some(d) = t.devices.get_mut(&mailbox) else {
                continue;
            };
            if !d.online || d.due_ms != at {
                continue;
            }
            let until = d.last_beat_ms.saturating_add(grace);
            if until <= now {
                d.online = false;
                went.push(mailbox);
            } else {
                // It beat since: look again when that beat's grace runs out.
                d.due_ms = until;
                t.due.push(Reverse((until, mailbox)));
            }
        }
        for m in &went {
            t.changed(m);
            // A device with nothing published and nobody to tell is
            // forgotten once offline.
            if t.devices.get(m).is_some_and(|d| d.caps.is_empty()) {
                t.devices.remove(m);
            }
        }
        went.len()
    }

    /// Start watching the holders of `capabilities`; unknown ones are
    /// watched too (in case their owner publishes later) but tell nothing.
    pub fn subscribe(
        self: &Arc<Self>,
        capabilities: &[bytes::Bytes],
    ) -> Result<Subscription, WireError> {
        if capabilities.len() > self.config.max_per_subscription {
            return Err(WireError::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "{} capabilities (at most {})",
                    capabilities.len(),
                    self.config.max_per_subscription
                ),
            ));
        }
        if capabilities
            .iter()
            .any(|c| c.len() != PRESENCE_CAPABILITY_LEN)
        {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "a presence capability is 32 bytes",
            ));
        }
        let watch = Arc::new(Watch::default());
        let mut t = self.table();
        if t.caps.room() < capabilities.len() {
            return Err(full());
        }
        let id = t.add_sub(Arc::clone(&watch)).ok_or_else(full)?;
        let mut slots = Vec::with_capacity(capabilities.len());
        for (i, c) in capabilities.iter().enumerate() {
            let Some(slot) = t.caps.entry(capability_hash(c)) else {
                // Not reached: there was room for every one.
                t.unwatch(id, &slots);
                return Err(full());
            };
            let index = i as u32;
            let Some(cap) = t.caps.get_mut(slot) else {
                t.unwatch(id, &slots);
                return Err(full());
            };
            cap.watchers.push(Watcher { sub: id, index });
            if cap.owner.is_some() {
                watch.mark(index);
            }
            slots.push(slot);
        }
        drop(t);
        Ok(Subscription {
            presence: Arc::clone(self),
            id,
            slots: slots.into_boxed_slice(),
            watch,
        })
    }

    /// The current state behind `sub`'s capability at `index`, if it is
    /// still published.
    pub fn state(&self, sub: &Subscription, index: u32) -> Option<pb::PresenceUpdate> {
        let slot = *sub.slots.get(index as usize)?;
        let t = self.table();
        let mailbox = t.caps.get(slot)?.owner?;
        Some(t.devices.get(&mailbox)?.update(index))
    }

    /// Devices with a presence entry (for metrics and tests).
    pub fn devices(&self) -> usize {
        self.table().devices.len()
    }
}

/// Mark devices offline as their grace runs out, a few times a grace
/// period, until the table is dropped.
pub async fn run_ticks(presence: std::sync::Weak<Presence>) {
    let every = match presence.upgrade() {
        Some(p) => Duration::from_millis((p.config.grace_ms / 8).clamp(10, 50)),
        None => return,
    };
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(p) = presence.upgrade() else { return };
        p.tick();
    }
}

#[cfg(test)]
mod tests;
