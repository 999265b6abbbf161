//! Presence on the wire, against an in-process relay over real QUIC on
//! loopback with an injected clock: a device is online from its first
//! heartbeat and offline only once the clock has passed the grace period
//! (30 s by default, passed in milliseconds here); a watcher without a
//! published capability hears nothing; a subscription on an authenticated
//! connection is refused, since it would tie the watcher to its mailbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tern_client::error::ClientError;
use tern_client::presence::owner;
use tern_client::presence::watch::{next_update, subscribe};
use tern_client::transport::{Dialer, RelayLink};
use tern_crypto::DeviceAccount;
use tern_protocol::pb;
use tern_protocol::ErrorCode;
use tern_relay::{Clock as _, Limits, ManualClock};
use tern_tests::{connect, random32, TestRelay};

/// The default grace period, which the injected clock steps over.
const GRACE_MS: u64 = 30_000;
/// Generous: the machine may be loaded.
const WAIT: Duration = Duration::from_secs(20);

async fn update(recv: &mut quinn::RecvStream) -> pb::PresenceUpdate {
    tokio::time::timeout(WAIT, next_update(recv))
        .await
        .expect("an update in time")
        .expect("a good frame")
        .expect("the stream goes on")
}

/// The owner (a mailbox, authenticated) that published `granted`'s hash,
/// and a watcher on a connection that never authenticated; the dialers
/// must outlive the connections.
async fn owner_and_watcher(
    relay: &TestRelay,
    granted: &[u8; 32],
) -> ([Dialer; 2], RelayLink, RelayLink) {
    let (d1, link) = connect(relay.url()).await;
    let device = DeviceAccount::new();
    let mailbox = link.register(device.signing_key()).await.unwrap();
    link.authenticate(&mailbox, |m| device.sign(m))
        .await
        .unwrap();
    owner::publish(
        &link,
        &[tern_client::presence::capability_hash(granted)],
        false,
    )
    .await
    .unwrap();
    let (d2, watcher) = connect(relay.url()).await;
    ([d1, d2], link, watcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_at_the_first_beat_offline_after_the_injected_grace_and_strangers_hear_nothing() {
    let clock = ManualClock::new(1_800_000_000_000);
    let relay = TestRelay::start_with(Some(clock.clone()), Limits::default()).await;
    let (granted, stranger) = (random32(), random32());
    let (_dialers, link, watcher) = owner_and_watcher(&relay, &granted).await;
    let (_s, mut recv) = subscribe(&watcher, &[stranger, granted]).await.unwrap();
    let first = update(&mut recv).await;
    assert_eq!(
        (first.index, first.online),
        (1, false),
        "only the granted one"
    );

    let alive = owner::heartbeat(&link).await.unwrap();
    assert_eq!(alive.grace_ms, GRACE_MS);
    assert!(!alive.push_dropped);
    let on = update(&mut recv).await;
    assert_eq!((on.index, on.online, on.last_seen_ms), (1, true, 0));
    let beat_ms = clock.now_ms();

    // Beats inside the grace period keep it online; the clock then runs
    // past the grace period with no beat, and the sweep tells the watcher.
    clock.advance(GRACE_MS - 1);
    owner::heartbeat(&link).await.unwrap();
    let last_beat = clock.now_ms();
    clock.advance(GRACE_MS);
    let off = update(&mut recv).await;
    assert_eq!((off.index, off.online), (1, false));
    assert_eq!(off.last_seen_ms, last_beat / 60_000 * 60_000);
    assert!(off.last_seen_ms > beat_ms - 60_000);

    // The owner's own (authenticated) connection may not watch.
    match subscribe(&link, &[granted]).await {
        Ok((_s, mut recv)) => match next_update(&mut recv).await {
            Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::PresenceLinkable),
            other => panic!("a linkable subscription answered {other:?}"),
        },
        Err(e) => panic!("opening the stream failed: {e}"),
    }
}

/// Send datagram beats on `link` until the watcher hears `index` online
/// (a datagram may be lost; loopback rarely does).
async fn beat_until_online(link: &RelayLink, recv: &mut quinn::RecvStream) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(link.beat_datagram().unwrap(), "the relay takes datagrams");
        match tokio::time::timeout(Duration::from_millis(250), next_update(recv)).await {
            Ok(u) => {
                let u = u.expect("a good frame").expect("the stream goes on");
                assert!(u.online, "{u:?}");
                return;
            }
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "never online"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_beats_count_from_the_owner_only_and_nothing_else_in_a_datagram_does() {
    let clock = ManualClock::new(1_800_000_000_000);
    let relay = TestRelay::start_with(Some(clock.clone()), Limits::default()).await;
    let granted = random32();
    let (_dialers, link, watcher) = owner_and_watcher(&relay, &granted).await;
    let (_s, mut recv) = subscribe(&watcher, &[granted]).await.unwrap();
    assert!(!update(&mut recv).await.online);

    // A datagram beat, with no answered beat before it, brings it online.
    beat_until_online(&link, &mut recv).await;

    // Just before the grace runs out, datagrams that are not the owner's
    // beat: another byte, a longer one, and a beat from a connection that
    // never authenticated. None of them counts, so the grace runs out.
    clock.advance(GRACE_MS - 1);
    link.send_raw_datagram(bytes::Bytes::from_static(&[2]))
        .unwrap();
    link.send_raw_datagram(bytes::Bytes::from_static(&[1, 1]))
        .unwrap();
    assert!(watcher.beat_datagram().unwrap());
    clock.advance(1);
    assert!(!update(&mut recv).await.online, "offline: nothing counted");

    // The owner's connection took no harm: datagram beats count again.
    beat_until_online(&link, &mut recv).await;
    let alive = owner::heartbeat(&link).await.unwrap();
    assert_eq!(alive.grace_ms, GRACE_MS);
}
