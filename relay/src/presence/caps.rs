//! The capability table: every capability hash the relay holds (published,
//! watched, or both) in a numbered slot, found through an index that
//! stores only slot numbers. At 10,000 devices with 50 contacts each the
//! table holds 500,000 hashes; a map from hash to entry would keep half
//! its buckets empty at that size, each bucket as large as an entry (about
//! 90 bytes), while here an empty bucket costs 5 bytes and each entry
//! lives once in a dense vector. Devices and subscriptions refer to
//! capabilities by slot number (4 bytes) rather than by hash (32 bytes).
//!
//! A slot stays put while anything refers to it: its owner's device or a
//! subscription watching it. Once neither does, [`Caps::release`] frees it
//! for reuse. The index hashes with a per-process random key: published
//! hashes are whatever an authenticated owner sends.

use crate::store::{MailboxId, TokenHash};
use hashbrown::HashTable;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// A capability's slot number.
pub(super) type SlotId = u32;

/// Who watches one capability: a subscription's number and the
/// capability's index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Watcher {
    pub sub: u32,
    pub index: u32,
}

/// A capability's watchers: nearly always one (the contact it was given
/// to), kept inline so the common case allocates nothing.
#[derive(Debug, Default)]
pub(super) enum Watchers {
    #[default]
    None,
    One(Watcher),
    // A thin pointer keeps this enum, and so every slot, 16 bytes; the
    // rare capability with several watchers pays the extra allocation.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Watcher>>),
}

impl Watchers {
    pub fn push(&mut self, w: Watcher) {
        *self = match std::mem::take(self) {
            Watchers::None => Watchers::One(w),
            Watchers::One(first) => Watchers::Many(Box::new(vec![first, w])),
            Watchers::Many(mut v) => {
                v.push(w);
                Watchers::Many(v)
            }
        };
    }

    /// Forget every watcher of subscription `sub`.
    pub fn remove_sub(&mut self, sub: u32) {
        *self = match std::mem::take(self) {
            Watchers::One(w) if w.sub == sub => Watchers::None,
            Watchers::Many(mut v) => {
                v.retain(|w| w.sub != sub);
                match v.len() {
                    0 => Watchers::None,
                    1 => v.pop().map_or(Watchers::None, Watchers::One),
                    _ => Watchers::Many(v),
                }
            }
            other => other,
        };
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Watcher> {
        match self {
            Watchers::None => [].iter(),
            Watchers::One(w) => std::slice::from_ref(w).iter(),
            Watchers::Many(v) => v.iter(),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Watchers::None)
    }
}

/// One capability hash: its owner if published, and its watchers (an
/// owner may publish after a watcher subscribed, e.g. after a relay
/// restart).
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub hash: TokenHash,
    pub owner: Option<MailboxId>,
    pub watchers: Watchers,
}

/// Capability hashes by slot.
#[derive(Default)]
pub(super) struct Caps {
    /// Slot numbers, hashed by their slot's hash.
    index: HashTable<SlotId>,
    slots: Vec<Slot>,
    /// Slots free for reuse.
    free: Vec<SlotId>,
    hasher: RandomState,
}

impl Caps {
    /// The slot holding `hash`, if any.
    pub fn find(&self, hash: &TokenHash) -> Option<SlotId> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(hash), |&id| {
                slots.get(id as usize).is_some_and(|s| s.hash == *hash)
            })
            .copied()
    }

    pub fn get(&self, id: SlotId) -> Option<&Slot> {
        self.slots.get(id as usize)
    }

    pub fn get_mut(&mut self, id: SlotId) -> Option<&mut Slot> {
        self.slots.get_mut(id as usize)
    }

    /// How many more hashes fit (slot numbers are 32 bits).
    pub fn room(&self) -> usize {
        (SlotId::MAX as usize).saturating_sub(self.slots.len()) + self.free.len()
    }

    /// The slot holding `hash`, made empty if there is none; `None` only
    /// when [`Caps::room`] is 0.
    pub fn entry(&mut self, hash: TokenHash) -> Option<SlotId> {
        if let Some(id) = self.find(&hash) {
            return Some(id);
        }
        let slot = Slot {
            hash,
            ..Slot::default()
        };
        let id = match self.free.pop() {
            Some(id) => {
                *self.slots.get_mut(id as usize)? = slot;
                id
            }
            None => {
                let id = SlotId::try_from(self.slots.len()).ok()?;
                self.slots.push(slot);
                id
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(hash), id, |&other| {
                slots
                    .get(other as usize)
                    .map_or(0, |s| hasher.hash_one(s.hash))
            });
        Some(id)
    }

    /// Free slot `id` if nothing owns or watches it any more. Harmless on
    /// a slot already freed.
    pub fn release(&mut self, id: SlotId) {
        let Some(slot) = self.slots.get(id as usize) else {
            return;
        };
        if slot.owner.is_some() || !slot.watchers.is_empty() {
            return;
        }
        let hash = self.hasher.hash_one(slot.hash);
        if let Ok(entry) = self.index.find_entry(hash, |&other| other == id) {
            entry.remove();
            self.free.push(id);
        }
    }

    /// Whether no hash is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}
