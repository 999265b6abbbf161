//! Rate limits refuse with typed errors that say when to retry; clients back
//! off on them and lose nothing; QUIC address validation kicks in when
//! connection attempts spike.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, Outgoing};
use tern_client::{Client, ClientError, Event, SendOutcome};
use tern_protocol::ErrorCode;
use tern_relay::{RateConfig, RelayConfig, RunningRelay, SystemClock};
use tern_tests::{invite_address, random16, DEADLINE};

async fn relay(rates: RateConfig) -> (tempfile::TempDir, RunningRelay) {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("relay"),
        rates,
        ..RelayConfig::default()
    };
    let relay = RunningRelay::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    (dir, relay)
}

async fn user(dir: &tempfile::TempDir, relay: &RunningRelay, name: &str) -> Client {
    Client::init(&dir.path().join(name), &relay.url, name)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_is_slowed_down_and_nothing_is_lost() {
    let rates = RateConfig {
        sends_per_token_per_sec: 20,
        sends_per_token_burst: 5,
        ..RateConfig::default()
    };
    let (dir, relay) = relay(rates).await;
    let mut alice = user(&dir, &relay, "alice").await;
    let mut bob = user(&dir, &relay, "bob").await;

    // The relay refuses a burst over the limit with a typed, timed error.
    let code = bob.invite().await.unwrap();
    let (mailbox, token) = invite_address(&code);
    let mut dialer = Dialer::default();
    let link = dialer.connect(&relay.url).await.unwrap();
    let mut stream = link.messages().await.unwrap();
    let batch: Vec<Outgoing> = (0..12)
        .map(|_| Outgoing {
            mailbox,
            token,
            message_id: random16(),
            payload: vec![1; 100],
        })
        .collect();
    let results = stream.send_all(&batch).await.unwrap();
    let limited: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(results[..5].iter().all(Result::is_ok), "{results:?}");
    assert!(!limited.is_empty(), "no send was limited: {results:?}");
    for e in &limited {
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.retry_after_ms > 0 && e.retry_after_ms <= 1000, "{e:?}");
        assert!(e.to_string().contains("retry after"), "{e}");
    }

    // A real client sending faster than that backs off and gets every
    // message through, once.
    let code = alice.invite().await.unwrap();
    bob.accept(&code, "alice").await.unwrap();
    let hello = alice.receive(Duration::from_millis(100)).await.unwrap();
    assert_eq!(hello, vec![Event::ContactAdded { name: "bob".into() }]);
    let mut sent = Vec::new();
    for i in 0..30 {
        let text = format!("fast {i}");
        let (_, outcome) = bob.send_text("alice", &text).await.unwrap();
        assert!(
            matches!(&outcome, SendOutcome::Sent | SendOutcome::Queued(_)),
            "{outcome:?}"
        );
        sent.push(text);
    }
    let deadline = Instant::now() + DEADLINE;
    while bob.outbox_len().unwrap() > 0 {
        assert!(Instant::now() < deadline, "outbox never drained");
        bob.flush_outbox().await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "got {} of {}",
            got.len(),
            sent.len()
        );
        for e in alice.receive(Duration::from_millis(100)).await.unwrap() {
            if let Event::Message(m) = e {
                got.push(m.text);
            }
        }
    }
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "duplicates in {got:?}");
    assert_eq!(unique, sent.iter().collect::<HashSet<_>>());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_address() {
    let rates = RateConfig {
        registrations_per_ip_per_min: 1,
        registrations_per_ip_burst: 2,
        ..RateConfig::default()
    };
    let (dir, relay) = relay(rates).await;
    user(&dir, &relay, "one").await;
    user(&dir, &relay, "two").await;
    match Client::init(&dir.path().join("three"), &relay.url, "three").await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited);
            assert!(e.retry_after_ms > 1000, "{e:?}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a third registration was allowed"),
    }
    assert!(!dir.path().join("three").join("store.key").exists());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_attempts_over_the_limit_are_refused() {
    let rates = RateConfig {
        connections_per_ip_per_sec: 1,
        connections_per_ip_burst: 3,
        ..RateConfig::default()
    };
    let (_dir, relay) = relay(rates).await;
    let mut links = Vec::new();
    for i in 0..3 {
        let mut dialer = Dialer::default();
        let link = dialer.connect(&relay.url).await;
        assert!(link.is_ok(), "attempt {i} refused");
        links.push((dialer, link));
    }
    let mut dialer = Dialer::default();
    match dialer.connect(&relay.url).await {
        Err(ClientError::Unreachable { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a fourth attempt in the same second was admitted"),
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_of_attempts_is_served_after_address_validation() {
    // Every attempt beyond the first in a second must come back with a QUIC
    // Retry token; quinn's client does that by itself, so all still connect
    // and can do real work.
    let rates = RateConfig {
        retry_above_handshakes_per_sec: 1,
        ..RateConfig::default()
    };
    let (dir, relay) = relay(rates).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(user(&dir, &relay, &format!("u{i}")).await);
    }
    for c in &mut clients {
        c.invite().await.unwrap();
    }
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("relay"),
        limits: tern_relay::Limits {
            max_connections_per_ip: 2,
            ..tern_relay::Limits::default()
        },
        ..RelayConfig::default()
    };
    let relay = RunningRelay::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut dialer = Dialer::default();
        let link = dialer.connect(&relay.url).await.unwrap();
        held.push((dialer, link));
    }
    let mut dialer = Dialer::default();
    assert!(
        dialer.connect(&relay.url).await.is_err(),
        "a third connection was admitted"
    );
    // Closing one frees its place.
    let (closing_dialer, closing) = held.remove(0);
    closing.close();
    closing_dialer.wait_idle(Duration::from_secs(2)).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut dialer = Dialer::default();
        if dialer.connect(&relay.url).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.shutdown().await;
}

/// Open streams on `link` and hold them (each says it is a control
/// stream, then waits) until `want` are open or one cannot be opened
/// within a second; how many are open.
async fn hold_streams(
    link: &tern_client::transport::RelayLink,
    want: usize,
    held: &mut Vec<(quinn::SendStream, quinn::RecvStream)>,
) -> usize {
    while held.len() < want {
        let Ok(opened) = tokio::time::timeout(Duration::from_secs(3), link.open_raw_stream()).await
        else {
            break;
        };
        let (mut send, recv) = opened.unwrap();
        send.write_all(&[tern_protocol::STREAM_CONTROL])
            .await
            .unwrap();
        held.push((send, recv));
    }
    held.len()
}

/// A connection may hold a few streams open until it authenticates
/// (`limits.max_streams_before_auth`) and the full number once it has
/// (`limits.max_concurrent_streams`): docs/protocol.md §1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_its_full_stream_limit_once_authenticated() {
    let (_dir, relay) = relay(RateConfig::unlimited()).await;
    let limits = tern_relay::Limits::default();
    let (before, after) = (
        limits.max_streams_before_auth as usize,
        limits.max_concurrent_streams as usize,
    );
    assert!(before < after);
    let mut dialer = Dialer::default();

    // Unauthenticated: `before` streams open, the next one waits.
    let link = dialer.connect(&relay.url).await.unwrap();
    let mut held = Vec::new();
    assert_eq!(hold_streams(&link, after, &mut held).await, before);
    drop(held);

    // Authenticated: the limit rises to `after`.
    let device = tern_crypto::DeviceAccount::new();
    let link = dialer.connect(&relay.url).await.unwrap();
    let mailbox = tokio::time::timeout(DEADLINE, link.register(device.signing_key()))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(DEADLINE, link.authenticate(&mailbox, |m| device.sign(m)))
        .await
        .unwrap()
        .unwrap();
    // The register and authenticate streams were open when the limit
    // rose; quinn announces the credit they free in steps of an eighth of
    // the limit, so up to that many may still be owed.
    let mut held = Vec::new();
    let got = hold_streams(&link, after + 1, &mut held).await;
    assert!(got > before, "{got} streams after authenticating");
    assert!(
        (after - after / 8..=after).contains(&got),
        "{got} streams after authenticating, limit {after}"
    );
}
