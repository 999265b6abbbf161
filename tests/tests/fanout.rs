//! Multi-recipient sends over real QUIC: one `SendMany` to 1,000 mailboxes
//! on one relay is one upload with one answer; every mailbox gets the
//! envelope once (pushed at once to those subscribed), a bad token among
//! the targets is reported for that target only, a retry is stored once
//! everywhere, the relay's log holds the payload once (under 2 x one
//! envelope + 32 B a member), and its disk holds the sealed bytes but never
//! the plaintext inside them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;
use tern_client::transport::{MessageStream, OutgoingMany, Stored};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::relay_frame::Frame;
use tern_protocol::ErrorCode;
use tern_relay::core::token_hash;
use tern_relay::store::MailboxStore;
use tern_tests::{connect, disk_contains, random16, random32, TestRelay, DEADLINE};

const MEMBERS: usize = 1_000;
/// The target given a made-up token.
const BAD: usize = 500;
/// Members subscribed while the send happens.
const SUBSCRIBED: [usize; 3] = [0, 1, MEMBERS - 1];

/// Bytes of the relay's envelope log segments.
fn log_bytes(data_dir: &Path) -> u64 {
    // Segment files only: the index checkpoint beside them is written at
    // close and is not the envelope's storage.
    let dir = data_dir.join("db").join("envelopes");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The next frame on `s` within `wait`, if any.
async fn next_within(s: &mut MessageStream, wait: Duration) -> Option<Frame> {
    tokio::time::timeout(wait, s.next())
        .await
        .ok()
        .map(|r| r.unwrap().expect("the relay ended the stream"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_send_many_reaches_a_thousand_mailboxes_once() {
    let mut relay = TestRelay::start().await;

    // Register the members in the relay's own store (registration over the
    // wire is rate-limited per address): each with a token, and the few
    // that subscribe with a real device key.
    let devices: Vec<DeviceAccount> = SUBSCRIBED.iter().map(|_| DeviceAccount::new()).collect();
    let mut members = Vec::with_capacity(MEMBERS);
    {
        let store = relay.open_store().await;
        for i in 0..MEMBERS {
            let mailbox = random16();
            let key = match SUBSCRIBED.iter().position(|&s| s == i) {
                Some(d) => devices[d].signing_key(),
                None => random32(),
            };
            store.create_mailbox(mailbox, key, 0).unwrap();
            let token = random32();
            store.add_token(token_hash(&token), mailbox, 10).unwrap();
            members.push((mailbox, token));
        }
        store.close().unwrap();
    }
    relay.restart().await;

    // The subscribed members, caught up before the send.
    let mut subscribers = Vec::new();
    for (d, &i) in SUBSCRIBED.iter().enumerate() {
        let (dialer, link) = connect(relay.url()).await;
        let device = &devices[d];
        link.authenticate(&members[i].0, |m| device.sign(m))
            .await
            .unwrap();
        let mut stream = link.messages().await.unwrap();
        stream.subscribe(0).await.unwrap();
        assert!(matches!(
            next_within(&mut stream, DEADLINE).await,
            Some(Frame::CaughtUp(_))
        ));
        subscribers.push((dialer, link, stream));
    }

    // The payload is sealed bytes; the plaintext inside must never reach
    // the relay's disk.
    let plaintext = format!("group canary {}", hex::encode(random16()));
    let payload = tern_crypto::seal(&random32(), plaintext.as_bytes());
    let mut targets = members.clone();
    targets[BAD].1 = random32();
    let send = OutgoingMany {
        message_id: random16(),
        payload: payload.clone(),
        targets,
        ephemeral: false,
    };
    let (_dialer, link) = connect(relay.url()).await;
    let mut sender = link.messages().await.unwrap();
    let results = sender.send_many(&send).await.unwrap();
    assert_eq!(results.len(), MEMBERS);
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (BAD, Err(e)) => assert_eq!(e.code, ErrorCode::TokenInvalid),
            (BAD, Ok(_)) => panic!("the made-up token was accepted"),
            (_, r) => assert_eq!(r, &Ok(Stored), "target {i}"),
        }
    }

    // Pushed at once to each subscriber, once.
    for (_, _, stream) in &mut subscribers {
        let Some(Frame::Envelope(env)) = next_within(stream, DEADLINE).await else {
            panic!("no envelope pushed");
        };
        assert_eq!(env.payload, payload);
        assert_eq!(env.message_id, send.message_id.to_vec());
    }

    // A retry is answered as a success (duplicates are not revealed) and
    // pushes nothing new.
    let again = sender.send_many(&send).await.unwrap();
    assert!(again.iter().enumerate().all(|(i, r)| if i == BAD {
        r.is_err()
    } else {
        r == &Ok(Stored)
    }));
    for (_, _, stream) in &mut subscribers {
        let extra = next_within(stream, Duration::from_millis(300)).await;
        assert!(extra.is_none(), "pushed again: {extra:?}");
    }
    drop(subscribers);
    link.close();

    // Every good target holds it once; the bad one nothing; the disk holds
    // the sealed bytes, never the plaintext.
    let store = relay.open_store().await;
    for (i, (mailbox, _)) in members.iter().enumerate() {
        let held = store.fetch(mailbox, 0, 10).unwrap();
        if i == BAD {
            assert!(held.is_empty(), "the refused target holds it");
        } else {
            assert_eq!(held.len(), 1, "target {i}");
            assert_eq!(held[0].payload, payload);
        }
    }
    store.close().unwrap();
    // Stored once: the whole log (segment headers included) stays under
    // the target of 2 x one envelope + 32 B a member.
    let one_envelope = 65 + payload.len() as u64;
    let log = log_bytes(relay.data_dir());
    assert!(
        log < 2 * one_envelope + 32 * MEMBERS as u64,
        "{log} bytes of log for one {MEMBERS}-target send"
    );
    assert!(disk_contains(relay.data_dir(), &payload[..64]));
    assert!(!disk_contains(relay.data_dir(), plaintext.as_bytes()));
}
