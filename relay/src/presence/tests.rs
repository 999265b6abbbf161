//! The presence table with a driven clock: grace periods, capabilities,
//! revocation and hidden last seen, in milliseconds and without sockets.

use super::*;
use crate::clock::ManualClock;

const GRACE: u64 = 30_000;

fn table() -> (Arc<Presence>, ManualClock) {
    let clock = ManualClock::new(10 * 60_000 + 1_234);
    let p = Presence::new(Arc::new(clock.clone()), PresenceConfig::default());
    (Arc::new(p), clock)
}

fn cap(n: u8) -> bytes::Bytes {
    bytes::Bytes::from(vec![n; 32])
}

fn publish(p: &Presence, mailbox: MailboxId, caps: &[u8], hide: bool) {
    let hashes = caps
        .iter()
        .map(|c| capability_hash(&cap(*c)).to_vec().into())
        .collect();
    p.publish(
        mailbox,
        &pb::PresencePublish {
            capability_hashes: hashes,
            hide_last_seen: hide,
        },
    )
    .expect("published");
}

/// The updates a subscription owes now.
fn updates(p: &Presence, sub: &Subscription) -> Vec<(u32, bool, u64)> {
    sub.watch
        .take()
        .into_iter()
        .filter_map(|i| p.state(sub, i))
        .map(|u| (u.index, u.online, u.last_seen_ms))
        .collect()
}

#[test]
fn online_at_the_first_beat_and_offline_only_after_the_grace_period() {
    let (p, clock) = table();
    publish(&p, [1; 16], &[7], false);
    let sub = p.subscribe(&[cap(7)]).expect("subscribed");
    assert_eq!(
        updates(&p, &sub),
        [(0, false, 0)],
        "first state: never seen"
    );
    p.heartbeat([1; 16]);
    assert_eq!(updates(&p, &sub), [(0, true, 0)]);
    let beat_at = clock.now_ms();
    // Beats inside the grace period keep it online without telling anyone.
    for _ in 0..5 {
        clock.advance(GRACE / 2);
        p.heartbeat([1; 16]);
        assert_eq!(p.tick(), 0);
    }
    assert!(updates(&p, &sub).is_empty(), "no flicker, no news");
    let last = beat_at + 5 * GRACE / 2;
    clock.advance(GRACE - 1);
    assert_eq!(p.tick(), 0, "still inside the grace period");
    clock.advance(1);
    assert_eq!(p.tick(), 1);
    let rounded = last / LAST_SEEN_ROUNDING_MS * LAST_SEEN_ROUNDING_MS;
    assert_eq!(updates(&p, &sub), [(0, false, rounded)]);
    assert_ne!(rounded, last, "last seen is rounded to the minute");
}

#[test]
fn a_capability_never_published_learns_nothing() {
    let (p, _clock) = table();
    publish(&p, [1; 16], &[7], false);
    let stranger = p.subscribe(&[cap(8)]).expect("subscribed");
    p.heartbeat([1; 16]);
    assert!(stranger.watch.take().is_empty());
    assert_eq!(p.state(&stranger, 0), None);
}

#[test]
fn a_revoked_capability_stops_updates_and_others_go_on() {
    let (p, clock) = table();
    publish(&p, [1; 16], &[7, 8], false);
    let kept = p.subscribe(&[cap(7)]).expect("subscribed");
    let revoked = p.subscribe(&[cap(8)]).expect("subscribed");
    p.heartbeat([1; 16]);
    assert_eq!(updates(&p, &revoked), [(0, true, 0)]);
    updates(&p, &kept);
    publish(&p, [1; 16], &[7], false);
    updates(&p, &revoked);
    updates(&p, &kept);
    clock.advance(GRACE);
    p.tick();
    assert!(updates(&p, &revoked).is_empty(), "revoked: nothing more");
    assert_eq!(updates(&p, &kept).len(), 1);
}

#[test]
fn hidden_last_seen_tells_offline_without_when() {
    let (p, clock) = table();
    publish(&p, [1; 16], &[7], true);
    let sub = p.subscribe(&[cap(7)]).expect("subscribed");
    p.heartbeat([1; 16]);
    clock.advance(GRACE);
    p.tick();
    let got = updates(&p, &sub);
    assert_eq!(got.last(), Some(&(0, false, 0)));
}

#[test]
fn a_watcher_who_subscribed_before_the_owner_published_hears_once_it_does() {
    let (p, _clock) = table();
    let sub = p.subscribe(&[cap(9), cap(7)]).expect("subscribed");
    assert!(sub.watch.take().is_empty());
    p.heartbeat([1; 16]);
    publish(&p, [1; 16], &[7], false);
    assert_eq!(updates(&p, &sub), [(1, true, 0)]);
}

#[test]
fn another_mailboxs_hash_is_not_taken_over() {
    let (p, _clock) = table();
    publish(&p, [1; 16], &[7], false);
    publish(&p, [2; 16], &[7], false);
    let sub = p.subscribe(&[cap(7)]).expect("subscribed");
    p.heartbeat([2; 16]);
    assert_eq!(
        updates(&p, &sub),
        [(0, false, 0)],
        "still the first owner's"
    );
}

#[test]
fn ending_a_subscription_forgets_its_watchers_and_malformed_input_is_refused() {
    let (p, _clock) = table();
    let sub = p.subscribe(&[cap(7)]).expect("subscribed");
    drop(sub);
    assert!(p.table().caps.is_empty());
    assert!(p.subscribe(&[bytes::Bytes::from_static(b"short")]).is_err());
    let bad = pb::PresencePublish {
        capability_hashes: vec![bytes::Bytes::from_static(b"x")],
        hide_last_seen: false,
    };
    assert!(p.publish([1; 16], &bad).is_err());
}

/// Slots are shared by every holder of a hash, survive while anything
/// refers to them, and are freed (and reused) once nothing does: a
/// capability presented twice, two subscriptions on one capability, and
/// an owner dropping a hash from its set.
#[test]
fn capability_slots_are_shared_freed_and_reused() {
    let (p, _clock) = table();
    let twice = p.subscribe(&[cap(1), cap(1), cap(2)]).expect("subscribed");
    let other = p.subscribe(&[cap(2)]).expect("subscribed");
    publish(&p, [1; 16], &[1, 2], false);
    let mut got = updates(&p, &twice);
    got.sort();
    assert_eq!(got, [(0, false, 0), (1, false, 0), (2, false, 0)]);
    assert_eq!(updates(&p, &other), [(0, false, 0)]);
    drop(twice);
    p.heartbeat([1; 16]);
    assert_eq!(
        updates(&p, &other),
        [(0, true, 0)],
        "the shared slot lives on"
    );
    // The owner drops hash 2: its slot is kept while `other` watches it,
    // and tells nothing more.
    publish(&p, [1; 16], &[1], false);
    assert!(updates(&p, &other).is_empty());
    assert_eq!(p.state(&other, 0), None);
    drop(other);
    publish(&p, [1; 16], &[], false);
    assert!(p.table().caps.is_empty(), "every slot freed");
    // Freed slots and subscription numbers are reused, and work.
    publish(&p, [2; 16], &[3], false);
    let again = p.subscribe(&[cap(3)]).expect("subscribed");
    assert_eq!(updates(&p, &again), [(0, false, 0)]);
    p.heartbeat([2; 16]);
    assert_eq!(updates(&p, &again), [(0, true, 0)]);
    assert!(p.table().subs.len() <= 2, "subscription numbers reused");
}

/// What performance.md counts on: a capability's watchers fit in 16 bytes
/// and its slot in 72.
#[test]
fn a_capability_slot_stays_small() {
    assert_eq!(std::mem::size_of::<caps::Watchers>(), 16);
    assert!(std::mem::size_of::<caps::Slot>() <= 72);
}

#[test]
fn beats_keep_one_deadline_per_device_however_often_they_come() {
    let (p, clock) = table();
    publish(&p, [1; 16], &[7], false);
    publish(&p, [2; 16], &[8], false);
    let sub = p.subscribe(&[cap(7), cap(8)]).expect("subscribed");
    updates(&p, &sub);
    // A beat every 4 s (the keep-alive's pace) for three grace periods.
    for _ in 0..(3 * GRACE / 4_000) {
        p.heartbeat([1; 16]);
        p.heartbeat([2; 16]);
        assert_eq!(p.tick(), 0);
        clock.advance(4_000);
    }
    assert!(
        p.table().due.len() <= 2,
        "{} deadlines for two devices",
        p.table().due.len()
    );
    assert_eq!(updates(&p, &sub), [(0, true, 0), (1, true, 0)]);
    // Device 2 stops; device 1 flaps off and back on.
    clock.advance(GRACE);
    assert_eq!(p.tick(), 2);
    p.heartbeat([1; 16]);
    clock.advance(GRACE - 1);
    assert_eq!(p.tick(), 0, "back online: a fresh grace period");
    assert_eq!(p.table().due.len(), 1);
    clock.advance(1);
    assert_eq!(p.tick(), 1);
    assert!(p.table().due.is_empty());
    let seen: Vec<(u32, bool)> = updates(&p, &sub)
        .into_iter()
        .map(|(i, on, _)| (i, on))
        .collect();
    assert_eq!(seen, [(0, false), (1, false)], "latest states, coalesced");
}
