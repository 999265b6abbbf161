//! The running client (`tern_client::spawn`), as an app drives it: it sends
//! through cloned handles while another task receives events; a contact's
//! message arrives as an event while a send is still in flight; delivery
//! and connection events arrive; shutdown settles and flushes, so the
//! account opens again at once with everything in it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};
use tern_client::{Client, DeliveryStatus, Event, EventStream, SendOutcome, Status};
use tern_tests::{befriend, texts, TestRelay, TestUser, DEADLINE};

/// The next event matching `want`, skipping others; panics after DEADLINE.
async fn next_matching(
    events: &mut EventStream,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(e)) if want(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event stream ended while waiting for {what}"),
            Err(_) => panic!("waited too long for {what}"),
        }
    }
}

/// Open the account in `home`, retrying while a client just dropped in
/// this process may still hold the store's lock.
async fn open(home: &Path) -> Client {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Client::open(home) {
            Ok(c) => {
                // Delivery, not timing, is what these tests look at.
                c.set_send_spacing(Duration::ZERO, Duration::ZERO);
                return c;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", home.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_sends_through_a_cloned_handle_while_it_receives() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    let alice_dir = alice.into_home();
    let alice_home = alice_dir.path().join("home");

    let (handle, mut events) = tern_client::spawn(open(&alice_home).await);
    next_matching(&mut events, "the connection", |e| {
        matches!(e, Event::Connection { connected: true })
    })
    .await;

    // A second front-end watches every event from now on.
    let mut watcher = handle.subscribe();
    let receiver = tokio::spawn(async move {
        let mut texts = Vec::new();
        let mut sent = Vec::new();
        while texts.len() < 3 || sent.len() < 3 {
            match next_matching(&mut watcher, "bob's texts and deliveries", |_| true).await {
                Event::Message(m) => {
                    assert_eq!(m.from, "bob");
                    texts.push(m.text);
                }
                Event::Delivery {
                    message_id,
                    contact,
                    status: DeliveryStatus::Sent,
                } => {
                    assert_eq!(contact, "bob");
                    sent.push(message_id);
                }
                Event::Lagged { missed } => panic!("missed {missed} events"),
                _ => {}
            }
        }
        (texts, sent)
    });

    // The app sends from a cloned handle while Bob writes to Alice.
    let sender = handle.clone();
    let sending = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..3 {
            let (id, outcome) = sender
                .send_text_with_id("bob", &format!("from alice {i}"))
                .await
                .unwrap();
            assert_eq!(outcome, SendOutcome::Sent);
            ids.push(id);
        }
        ids
    });
    for i in 0..3 {
        bob.send("alice", &format!("from bob {i}")).await;
    }
    let ids = tokio::time::timeout(DEADLINE, sending)
        .await
        .expect("sending took too long")
        .unwrap();
    let (got, mut sent) = tokio::time::timeout(DEADLINE, receiver)
        .await
        .expect("receiving took too long")
        .unwrap();
    assert_eq!(got, ["from bob 0", "from bob 1", "from bob 2"]);
    sent.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sent, expected, "one Sent delivery per message");

    let got = bob.receive_messages(3).await;
    assert_eq!(
        texts(&got),
        ["from alice 0", "from alice 1", "from alice 2"]
    );

    // The handle serves the store while the client runs.
    let contacts = handle.contacts().await.unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(handle.profile().await.unwrap().name, "alice");
    assert_eq!(handle.history("bob", 10).await.unwrap().len(), 6);

    handle.shutdown().await;
    assert!(
        events.next().await.is_some(),
        "buffered events are still readable"
    );
    // After shutdown the account is free, flushed and complete.
    let reopened = open(&alice_home).await;
    let history = reopened.history("bob", 10).unwrap();
    assert_eq!(history.len(), 6);
    assert!(history
        .iter()
        .filter(|m| m.outgoing)
        .all(|m| m.status == Status::Sent));
    assert_eq!(reopened.outbox_len().unwrap(), 0);
    assert!(handle.contacts().await.is_err(), "the task has stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arrives_while_a_send_is_in_flight() {
    let relay = TestRelay::start().await;
    let mut far = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let mut carol = TestUser::new(&far, "carol").await;
    befriend(&mut alice, &mut bob).await;
    befriend(&mut carol, &mut alice).await;
    // Carol's relay goes away: a send to her waits on a dead relay.
    far.stop().await;

    let alice_dir = alice.into_home();
    let alice_home = alice_dir.path().join("home");
    let (handle, mut events) = tern_client::spawn(open(&alice_home).await);
    next_matching(&mut events, "the connection", |e| {
        matches!(e, Event::Connection { connected: true })
    })
    .await;

    let sender = handle.clone();
    let started = Instant::now();
    let to_carol = tokio::spawn(async move { sender.send_text_with_id("carol", "hello?").await });
    // Bob's message shows while the send to Carol is still trying.
    tokio::time::sleep(Duration::from_millis(50)).await;
    bob.send("alice", "are you there").await;
    let shown = next_matching(&mut events, "bob's message", |e| {
        matches!(e, Event::Message(_))
    })
    .await;
    // The send to the dead relay gives up after its connect timeout (5 s);
    // until then it must not have held Bob's message back. (On a box so
    // loaded that Bob's path took longer, the send may have ended first.)
    assert!(
        !to_carol.is_finished() || started.elapsed() >= Duration::from_secs(5),
        "the send to an unreachable relay should still be in flight"
    );
    match shown {
        Event::Message(m) => {
            assert_eq!((m.from.as_str(), m.text.as_str()), ("bob", "are you there"))
        }
        other => panic!("{other:?}"),
    }

    let (id, outcome) = tokio::time::timeout(DEADLINE, to_carol)
        .await
        .expect("the send never finished")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, SendOutcome::Queued(_)), "{outcome:?}");
    let queued = next_matching(&mut events, "a queued delivery", |e| {
        matches!(
            e,
            Event::Delivery {
                status: DeliveryStatus::Queued { .. },
                ..
            }
        )
    })
    .await;
    match queued {
        Event::Delivery {
            message_id,
            contact,
            ..
        } => assert_eq!(
            (message_id.as_str(), contact.as_str()),
            (id.as_str(), "carol")
        ),
        other => panic!("{other:?}"),
    }

    // Carol's relay is back: a flush delivers and says so.
    far.restart().await;
    // (A flush the client started on its own, to send Bob receipts for his
    // message, may have delivered it already; then this one finds nothing.)
    let report = handle.flush_outbox().await.unwrap();
    assert!(
        report.sent.is_empty() || report.sent == std::slice::from_ref(&id),
        "{report:?}"
    );
    assert!(
        report.queued.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    next_matching(&mut events, "the Sent delivery", |e| {
        matches!(e, Event::Delivery { message_id, status: DeliveryStatus::Sent, .. } if *message_id == id)
    })
    .await;
    let got = carol.receive_messages(1).await;
    assert_eq!(texts(&got), ["hello?"]);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_go_out_while_the_home_relay_is_down() {
    let mut home = TestRelay::start().await;
    let far = TestRelay::start().await;
    let mut alice = TestUser::new(&home, "alice").await;
    let mut bob = TestUser::new(&far, "bob").await;
    befriend(&mut bob, &mut alice).await;
    home.stop().await;

    let alice_dir = alice.into_home();
    let (handle, mut events) = tern_client::spawn(open(&alice_dir.path().join("home")).await);
    // Connecting to the stopped home relay is under way (and times out);
    // a send to Bob's relay does not wait for it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let (id, outcome) = handle.send_text_with_id("bob", "still here").await.unwrap();
    assert_eq!(outcome, SendOutcome::Sent);
    // Waiting for the home relay would take its connect timeout (5 s).
    assert!(
        started.elapsed() < Duration::from_millis(4_500),
        "the send waited {:?} for the home relay",
        started.elapsed()
    );
    next_matching(&mut events, "the Sent delivery", |e| {
        matches!(e, Event::Delivery { message_id, status: DeliveryStatus::Sent, .. } if *message_id == id)
    })
    .await;
    assert_eq!(texts(&bob.receive_messages(1).await), ["still here"]);

    // The home relay comes back: the client connects and receives again.
    home.restart().await;
    next_matching(&mut events, "the reconnection", |e| {
        matches!(e, Event::Connection { connected: true })
    })
    .await;
    bob.send("alice", "welcome back").await;
    match next_matching(&mut events, "bob's message", |e| {
        matches!(e, Event::Message(_))
    })
    .await
    {
        Event::Message(m) => assert_eq!(m.text, "welcome back"),
        other => panic!("{other:?}"),
    }
    handle.shutdown().await;
}
