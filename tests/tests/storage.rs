//! What the relay keeps on disk, and for how long: a retried send is stored
//! once, an acked envelope is deleted, an expired one is swept, and no
//! plaintext ever reaches the relay's (or a client's) disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::Message;
use std::path::Path;
use std::time::Duration;
use tern_client::Event;
use tern_crypto::DeviceAccount;
use tern_protocol::pb::{self, content::Body};
use tern_protocol::STREAM_MESSAGES;
use tern_relay::store::MailboxStore;
use tern_relay::{Limits, ManualClock};
use tern_tests::{
    befriend, connect, invite_address, messages, now_ms, random16, send_frame, texts, RawStream,
    TestRelay, TestUser,
};

/// What a Tern client sends first after accepting `code`: a sealed Olm
/// pre-key message carrying a `ContactHello` from a new device named `name`.
/// Built here from tern-crypto so a test holds the exact payload bytes and
/// can deposit them as often as it likes, as a retrying sender would.
fn sealed_hello(code: &str, name: &str, content_id: [u8; 16], relay: &str) -> Vec<u8> {
    let invite = tern_protocol::invite::decode_invite(code).unwrap();
    let key = |b: &[u8]| -> [u8; 32] { b.try_into().unwrap() };
    let device = DeviceAccount::new();
    let mut session = device
        .start_session(&key(&invite.identity_key), &key(&invite.one_time_key))
        .unwrap();
    let content = pb::Content {
        message_id: content_id.to_vec().into(),
        sent_at_ms: now_ms(),
        body: Some(Body::Hello(pb::ContactHello {
            name: name.into(),
            reply_to: Some(pb::Address {
                relay_url: relay.into(),
                mailbox_id: random16().to_vec().into(),
                send_token: [9u8; 32].to_vec().into(),
            }),
            signing_key: device.signing_key().to_vec().into(),
            seal_key: device.seal_public().to_vec().into(),
            invite_token: invite.address.unwrap().send_token,
            ..Default::default()
        })),
    };
    let olm = session.encrypt(&content.encode_to_vec());
    let sealed = pb::Sealed {
        sender_identity_key: device.identity_key().to_vec().into(),
        olm_type: olm.olm_type,
        olm_ciphertext: olm.body.into(),
        // Unpadded, as clients made them before padding: still opens.
        padding: Default::default(),
    };
    tern_crypto::seal(&key(&invite.seal_key), &sealed.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_retried_after_a_lost_result_is_stored_and_delivered_once() {
    let mut relay = TestRelay::start().await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let code = bob.client.invite().await.unwrap();
    let (mailbox, token) = invite_address(&code);
    assert_eq!(mailbox, bob.mailbox());
    let payload = sealed_hello(&code, "carol", random16(), &relay.url().to_string());
    let message_id = random16();
    let send = send_frame(1, &mailbox, &token, &message_id, &payload);

    // The first attempt is stored; pretend its SendResult was lost with the
    // connection, and retry the same Send on a new connection.
    let first = {
        let (_dialer, link) = connect(relay.url()).await;
        let mut stream = RawStream::open(&link, STREAM_MESSAGES).await;
        let r = stream.send(&send).await;
        link.close();
        r
    };
    assert_eq!(
        (first.error.as_ref(), first.duplicate, first.seq),
        (None, false, 0)
    );
    let (_dialer, link) = connect(relay.url()).await;
    let mut stream = RawStream::open(&link, STREAM_MESSAGES).await;
    let retry = stream.send(&send).await;
    // Accepted, and told nothing more: whether it was a repeat would say
    // whether Bob has acked the first copy yet.
    assert_eq!((retry.error, retry.duplicate, retry.seq), (None, false, 0));
    link.close();

    // One envelope on disk.
    let store = relay.open_store().await;
    let stored = store.fetch(&mailbox, 0, 100).unwrap();
    assert_eq!(stored.len(), 1, "the retry stored a second envelope");
    assert_eq!(stored[0].message_id, message_id);
    assert_eq!(stored[0].payload, payload);
    drop(store);
    relay.restart().await;

    // One contact, introduced once.
    let added = Event::ContactAdded {
        name: "carol".into(),
    };
    let events = bob.receive_until("the hello", |e| e.contains(&added)).await;
    assert_eq!(events, [added]);
    assert!(bob.receive_rest().await.is_empty());
    let contacts = bob.client.contacts().unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].name, "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recipient_drops_a_message_it_already_stored() {
    // The relay de-duplicates a send only against the envelopes it still
    // holds, and a relay crash can redeliver an acked envelope; the
    // recipient must drop what it already has. A Tern client's outbox is
    // not reachable from here, so the payload is a hello built with
    // tern-crypto exactly as a client builds it, deposited again under the
    // old message id after the ack and under a new one.
    let relay = TestRelay::start().await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let code = bob.client.invite().await.unwrap();
    let (mailbox, token) = invite_address(&code);
    let payload = sealed_hello(&code, "carol", random16(), &relay.url().to_string());
    let (first_id, second_id) = (random16(), random16());

    let (_dialer, link) = connect(relay.url()).await;
    let mut stream = RawStream::open(&link, STREAM_MESSAGES).await;
    let first = stream
        .send(&send_frame(1, &mailbox, &token, &first_id, &payload))
        .await;
    assert_eq!(first.error, None);
    // While the relay holds it, a retry is stored once (the test above),
    // and the sender is not told it was a repeat, nor any seq.
    let held = stream
        .send(&send_frame(2, &mailbox, &token, &first_id, &payload))
        .await;
    assert_eq!((held.error, held.duplicate, held.seq), (None, false, 0));
    let added = Event::ContactAdded {
        name: "carol".into(),
    };
    let events = bob.receive_until("the hello", |e| e.contains(&added)).await;
    assert_eq!(events, [added]);

    // Acked and deleted: a late retry of the same id is stored again...
    let retry = stream
        .send(&send_frame(3, &mailbox, &token, &first_id, &payload))
        .await;
    assert_eq!((retry.error, retry.duplicate, retry.seq), (None, false, 0));
    // ...and so are the same bytes under a new id...
    let again = stream
        .send(&send_frame(4, &mailbox, &token, &second_id, &payload))
        .await;
    assert_eq!((again.error, again.duplicate, again.seq), (None, false, 0));
    link.close();

    // ...and the client drops them (and acks, so they do not come back).
    assert_eq!(bob.receive_rest().await, []);
    assert_eq!(bob.receive_rest().await, []);
    assert_eq!(bob.client.contacts().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_envelopes_are_gone_from_the_relay() {
    let mut relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    for text in ["one", "two", "three"] {
        alice.send("bob", text).await;
    }

    // Before Bob receives, the relay holds all three.
    let store = relay.open_store().await;
    assert_eq!(store.fetch(&bob.mailbox(), 0, 100).unwrap().len(), 3);
    drop(store);
    relay.restart().await;

    // Receive as `tern recv` does: drain the backlog, ack, hang up at once.
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(messages(&bob.client.receive(Duration::ZERO).await.unwrap()));
        if got.len() >= 3 {
            break;
        }
    }
    assert_eq!(texts(&got), ["one", "two", "three"]);

    let store = relay.open_store().await;
    let left = store.fetch(&bob.mailbox(), 0, 100).unwrap();
    assert!(
        left.is_empty(),
        "{} acked envelopes still stored",
        left.len()
    );
    let left = store.fetch(&alice.mailbox(), 0, 100).unwrap();
    assert!(left.is_empty(), "Bob's acked hello is still stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_envelopes_are_swept_and_later_ones_still_arrive() {
    let clock = ManualClock::new(now_ms());
    let limits = Limits {
        envelope_ttl_secs: 60,
        ..Limits::default()
    };
    let relay = TestRelay::start_with(Some(clock.clone()), limits).await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;

    alice.send("bob", "too late").await;
    // Not yet expired: a sweep now removes nothing of Bob's.
    clock.advance(59_000);
    relay.running().sweep_now().await.unwrap();
    // Expired.
    clock.advance(2_000);
    let swept = relay.running().sweep_now().await.unwrap();
    assert!(swept.envelopes >= 1, "nothing swept: {swept:?}");
    assert_eq!(bob.receive_rest().await, []);

    alice.send("bob", "in time").await;
    let got = bob.receive_messages(1).await;
    assert_eq!(texts(&got), ["in time"]);
    assert_eq!(bob.receive_rest().await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_survive_until_their_ttl() {
    // The other half of the sweep test: the sweep must not take what has
    // not expired yet.
    let clock = ManualClock::new(now_ms());
    let limits = Limits {
        envelope_ttl_secs: 60,
        ..Limits::default()
    };
    let relay = TestRelay::start_with(Some(clock.clone()), limits).await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;

    alice.send("bob", "just in time").await;
    clock.advance(59_000);
    let swept = relay.running().sweep_now().await.unwrap();
    assert_eq!(swept.envelopes, 0);
    assert_eq!(texts(&bob.receive_messages(1).await), ["just in time"]);
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    assert!(files > 0, "{} holds no files at all", dir.display());
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_reaches_the_relay_or_client_disks() {
    let tag = hex::encode(random16());
    let alice_name = format!("alice-canary-name-{tag}");
    let bob_name = format!("bob-canary-name-{tag}");
    let delivered = format!("canary-delivered-{tag}");
    let reply = format!("canary-reply-{tag}");
    let undelivered = format!("canary-undelivered-{tag}");

    let mut relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, &alice_name).await;
    let mut bob = TestUser::new(&relay, &bob_name).await;
    befriend(&mut alice, &mut bob).await;
    alice.send(&bob_name, &delivered).await;
    assert_eq!(texts(&bob.receive_messages(1).await), [delivered.as_str()]);
    bob.send(&alice_name, &reply).await;
    assert_eq!(texts(&alice.receive_messages(1).await), [reply.as_str()]);
    // Left on the relay, undelivered.
    alice.send(&bob_name, &undelivered).await;

    let store = relay.open_store().await;
    let waiting = store.fetch(&bob.mailbox(), 0, 100).unwrap();
    // Beside it, Alice's receipt for Bob's reply, which went out with it.
    assert_eq!(
        waiting.len(),
        2,
        "the undelivered message (and a receipt) is not on disk"
    );
    drop(store);

    // Each user's identity and seal keys, as their contact holds them: the
    // relay must not be able to tell whose device an envelope came from.
    // (Signing keys are the mailboxes' auth keys, which the relay holds by
    // design, under the mailbox record.)
    let mut keys: Vec<[u8; 32]> = Vec::new();
    for user in [&alice, &bob] {
        for c in user.client.contacts().unwrap() {
            keys.extend([c.identity_key, c.seal_key]);
        }
    }
    assert_eq!(keys.len(), 4);
    let canaries = [&alice_name, &bob_name, &delivered, &reply, &undelivered];
    let homes = [alice.into_home(), bob.into_home()];
    for key in &keys {
        let found = files_containing(relay.data_dir(), key);
        assert!(
            found.is_empty(),
            "an identity or seal key in the relay's files {found:?}"
        );
    }
    // Contact ids (identity keys) are the local database's keys, stored as
    // keyed hashes: no client's files show them, nor does the relay's.
    for key in &keys {
        for home in &homes {
            let found = files_containing(home.path(), key);
            assert!(
                found.is_empty(),
                "a contact's key in a client's files {found:?}"
            );
        }
    }
    for canary in canaries {
        let found = files_containing(relay.data_dir(), canary.as_bytes());
        assert!(
            found.is_empty(),
            "{canary:?} in the relay's files {found:?}"
        );
        for home in &homes {
            let found = files_containing(home.path(), canary.as_bytes());
            assert!(found.is_empty(), "{canary:?} in a client's files {found:?}");
        }
    }

    // The scan would have found it.
    let control = tempfile::tempdir().unwrap();
    std::fs::write(control.path().join("plain"), format!("xx{undelivered}yy")).unwrap();
    assert_eq!(
        files_containing(control.path(), undelivered.as_bytes()).len(),
        1
    );
}
