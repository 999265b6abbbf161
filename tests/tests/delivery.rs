//! Messages arrive, once, whether the recipient is online, offline, or the
//! relay was down when they were sent; across one relay and across two.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use tern_client::{Event, SendOutcome, Status};
use tern_tests::{befriend, texts, TestRelay, TestUser, DEADLINE};
use tokio::sync::mpsc;

/// Poll `cond` until it holds; panics after [`DEADLINE`].
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_message_arrives_once_and_history_keeps_order() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    // Alice's receive in `befriend` has hung up; let its subscription go so
    // the count below is Bob's alone.
    wait_for("no subscribers", || relay.running().subscribers() == 0).await;

    // Bob stays connected (as `tern listen` does) while Alice sends.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut on_event = move |e: Event| {
        let _ = tx.send(e);
    };
    let first_id;
    {
        let listen = bob.client.listen(&mut on_event);
        tokio::pin!(listen);
        let exchange = async {
            wait_for("bob to subscribe", || relay.running().subscribers() == 1).await;
            let id = alice.send("bob", "hi bob").await;
            let event = tokio::time::timeout(DEADLINE, rx.recv())
                .await
                .expect("bob got nothing while listening")
                .expect("listen dropped its callback");
            (id, event)
        };
        let (id, event) = tokio::select! {
            r = &mut listen => panic!("listen ended: {r:?}"),
            got = exchange => got,
        };
        match event {
            Event::Message(m) => {
                assert_eq!((m.from.as_str(), m.text.as_str()), ("alice", "hi bob"));
                assert_eq!(m.id, id);
            }
            other => panic!("expected a message, got {other:?}"),
        }
        first_id = id;
    }
    assert!(rx.try_recv().is_err(), "a second event while listening");

    bob.send("alice", "hi alice").await;
    let got = alice.receive_messages(1).await;
    assert_eq!(texts(&got), ["hi alice"]);
    assert_eq!(got[0].from, "bob");
    alice.send("bob", "how are you").await;
    let got = bob.receive_messages(1).await;
    assert_eq!(texts(&got), ["how are you"], "the first message came again");
    assert!(bob.receive_rest().await.is_empty());
    assert!(alice.receive_rest().await.is_empty());

    let convo = ["hi bob", "hi alice", "how are you"];
    let history = bob.client.history("alice", 10).unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|m| (m.text.as_str(), m.outgoing))
        .collect();
    assert_eq!(
        seen,
        [(convo[0], false), (convo[1], true), (convo[2], false)]
    );
    assert_eq!(history[0].id, first_id);
    let history = alice.client.history("bob", 10).unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|m| (m.text.as_str(), m.outgoing))
        .collect();
    assert_eq!(
        seen,
        [(convo[0], true), (convo[1], false), (convo[2], true)]
    );
    assert_eq!(history[0].status, Status::Sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_the_message_once_after_a_relay_restart() {
    let mut relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;

    // Bob is not connected; the relay holds the message and restarts.
    let id = alice.send("bob", "while you were out").await;
    relay.restart().await;

    let got = bob.receive_messages(1).await;
    assert_eq!(texts(&got), ["while you were out"]);
    assert_eq!(got[0].id, id);
    assert!(bob.receive_rest().await.is_empty(), "delivered twice");
    let history = bob.client.history("alice", 10).unwrap();
    assert_eq!(history.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_sent_while_the_relay_is_down_is_queued_then_delivered_once() {
    let mut relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;

    relay.stop().await;
    let (id, outcome) = alice
        .client
        .send_text("bob", "queued while down")
        .await
        .unwrap();
    assert!(
        matches!(outcome, SendOutcome::Queued(_)),
        "sent to a stopped relay: {outcome:?}"
    );
    assert_eq!(alice.client.outbox_len().unwrap(), 1);
    assert_eq!(
        alice.client.history("bob", 10).unwrap()[0].status,
        Status::Queued
    );

    relay.restart().await;
    let report = alice.client.flush_outbox().await.unwrap();
    assert_eq!(report.sent, std::slice::from_ref(&id));
    assert!(report.failed.is_empty() && report.queued.is_empty());
    assert_eq!(alice.client.outbox_len().unwrap(), 0);
    assert!(alice.client.flush_outbox().await.unwrap().sent.is_empty());
    assert_eq!(
        alice.client.history("bob", 10).unwrap()[0].status,
        Status::Sent
    );

    let got = bob.receive_messages(1).await;
    assert_eq!(texts(&got), ["queued while down"]);
    assert_eq!(got[0].id, id);
    assert!(bob.receive_rest().await.is_empty(), "delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_relays_talk_both_ways() {
    let relay_a = TestRelay::start().await;
    let relay_b = TestRelay::start().await;
    let mut alice = TestUser::new(&relay_a, "alice").await;
    let mut bob = TestUser::new(&relay_b, "bob").await;
    befriend(&mut alice, &mut bob).await;

    // Each knows the other at the other's relay.
    let bobs_alice = &bob.client.contacts().unwrap()[0];
    assert_eq!(bobs_alice.relay_url, relay_a.url().to_string());
    let alices_bob = &alice.client.contacts().unwrap()[0];
    assert_eq!(alices_bob.relay_url, relay_b.url().to_string());

    alice.send("bob", "over to relay B").await;
    assert_eq!(texts(&bob.receive_messages(1).await), ["over to relay B"]);
    bob.send("alice", "back to relay A").await;
    let got = alice.receive_messages(1).await;
    assert_eq!(texts(&got), ["back to relay A"]);
    assert_eq!(got[0].from, "bob");
    assert!(bob.receive_rest().await.is_empty());
    assert!(alice.receive_rest().await.is_empty());
}

/// An introduction queued while the inviter's relay is down goes out before
/// the texts written after it, so the inviter learns the contact first and
/// then reads every text, in order. (With an unordered outbox the texts
/// could reach the relay first, be dropped as coming from a stranger, and
/// burn the one-time key the introduction needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introduction_and_texts_queued_together_arrive_in_order() {
    let mut relay_a = TestRelay::start().await;
    let relay_b = TestRelay::start().await;
    let mut alice = TestUser::new(&relay_a, "alice").await;
    let mut bob = TestUser::new(&relay_b, "bob").await;

    let code = alice.client.invite().await.unwrap();
    relay_a.stop().await;
    bob.client.accept(&code, "alice").await.unwrap();
    let mut sent = Vec::new();
    for i in 0..3 {
        let text = format!("queued {i}");
        let (_, outcome) = bob.client.send_text("alice", &text).await.unwrap();
        assert!(matches!(outcome, SendOutcome::Queued(_)), "{outcome:?}");
        sent.push(text);
    }
    assert_eq!(bob.client.outbox_len().unwrap(), 4);

    relay_a.restart().await;
    let report = bob.client.flush_outbox().await.unwrap();
    assert_eq!(report.sent.len(), 4, "{report:?}");

    let events = alice
        .receive_until("the hello and 3 texts", |e| e.len() >= 4)
        .await;
    assert_eq!(events[0], Event::ContactAdded { name: "bob".into() });
    let got = tern_tests::messages(&events);
    assert_eq!(
        texts(&got),
        sent.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(alice.receive_rest().await.is_empty());
}
