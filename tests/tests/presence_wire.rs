//! Presence on the wire, against an in-process relay over real QUIC on
//! loopback with an injected clock: a device is online from its first
//! heartbeat and offline only once the clock has passed the grace period
//! (30 s by default, passed in milliseconds here); a watcher without a
//! published capability hears nothing; a subscription on an authenticated
//! connection is refused, since it would tie the watcher to its mailbox;
//! beats on one heartbeat stream count each, only once authenticated.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tern_client::error::ClientError;
use tern_client::presence::owner;
use tern_client::presence::watch::{next_update, subscribe};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_at_the_first_beat_offline_after_the_injected_grace_and_strangers_hear_nothing() {
    let clock = ManualClock::new(1_800_000_000_000);
    let relay = TestRelay::start_with(Some(clock.clone()), Limits::default()).await;
    // The owner: a mailbox, authenticated.
    let (_d1, link) = connect(relay.url()).await;
    let device = DeviceAccount::new();
    let mailbox = link.register(device.signing_key()).await.unwrap();
    link.authenticate(&mailbox, |m| device.sign(m))
        .await
        .unwrap();
    let (granted, stranger) = (random32(), random32());
    owner::publish(
        &link,
        &[tern_client::presence::capability_hash(&granted)],
        false,
    )
    .await
    .unwrap();

    // A watcher on a connection that never authenticated.
    let (_d2, watcher) = connect(relay.url()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_on_one_heartbeat_stream_keep_a_device_online_and_only_after_authentication() {
    let clock = ManualClock::new(1_800_000_000_000);
    let relay = TestRelay::start_with(Some(clock.clone()), Limits::default()).await;
    let (_d1, link) = connect(relay.url()).await;
    let device = DeviceAccount::new();
    let mailbox = link.register(device.signing_key()).await.unwrap();
    let granted = random32();

    // Before authenticating, a heartbeat stream's beats are refused.
    let mut early = owner::Beats::open(&link).await.unwrap();
    match early.beat().await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::NotAuthenticated),
        other => panic!("a beat before authentication answered {other:?}"),
    }
    link.authenticate(&mailbox, |m| device.sign(m))
        .await
        .unwrap();
    owner::publish(
        &link,
        &[tern_client::presence::capability_hash(&granted)],
        false,
    )
    .await
    .unwrap();
    let (_d2, watcher) = connect(relay.url()).await;
    let (_s, mut recv) = subscribe(&watcher, &[granted]).await.unwrap();
    assert!(!update(&mut recv).await.online);

    // Every beat on the one stream counts: three beats, each just inside
    // the grace period of the one before, span 90 s with no offline in
    // between; the offline that follows carries the last beat's minute.
    let mut beats = owner::Beats::open(&link).await.unwrap();
    let mut last_beat = 0;
    for k in 0..3 {
        if k > 0 {
            clock.advance(GRACE_MS - 1);
        }
        let alive = beats.beat().await.unwrap();
        assert_eq!(alive.grace_ms, GRACE_MS);
        last_beat = clock.now_ms();
        if k == 0 {
            assert!(update(&mut recv).await.online);
        }
    }
    clock.advance(GRACE_MS);
    let off = update(&mut recv).await;
    assert!(!off.online, "no update between the beats: {off:?}");
    assert_eq!(off.last_seen_ms, last_beat / 60_000 * 60_000);

    // Anything but a heartbeat on a heartbeat stream is refused, and the
    // stream goes on.
    let (mut send, mut answers) = link.open_raw_stream().await.unwrap();
    send.write_all(&[tern_protocol::STREAM_BEATS]).await.unwrap();
    let publish = pb::ControlRequest {
        request: Some(pb::control_request::Request::PresencePublish(
            pb::PresencePublish::default(),
        )),
    };
    let heartbeat = pb::ControlRequest {
        request: Some(pb::control_request::Request::PresenceHeartbeat(
            pb::PresenceHeartbeat {},
        )),
    };
    for (req, ok) in [(publish, false), (heartbeat, true)] {
        tern_protocol::io::write_frame(&mut send, &req).await.unwrap();
        let body = tokio::time::timeout(WAIT, tern_protocol::io::read_frame(&mut answers, 4096))
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("the stream goes on");
        let answer: pb::ControlResponse = tern_protocol::frame::decode_message(&body).unwrap();
        match (ok, answer.response) {
            (false, Some(pb::control_response::Response::Error(e))) => {
                assert_eq!(e.code, ErrorCode::Unsupported as i32)
            }
            (true, Some(pb::control_response::Response::PresenceAlive(_))) => {}
            (_, other) => panic!("{req:?} answered {other:?}"),
        }
    }
}
