//! Direct paths (issue 18) on loopback, with real relays and real clients:
//! two running clients that hear from each other open a direct path by
//! themselves (offers through the relay, both dialing at once), 1,000
//! messages then go over it while the relay carries none of them (its
//! observer counts every envelope it is handed), and when one side goes
//! away in the middle of a burst, whatever the path did not ack goes
//! through the relay: the other side, back again, has every message once.
//! A group of two goes over the path like a pair of contacts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::event::PathState;

use tern_client::{Client, ClientHandle, Event, EventStream, GroupCall, SendOutcome};
use tern_relay::store::MailboxId;
use tern_relay::{ConnectionObserver, Limits, Observer};
use tern_tests::{befriend, TestRelay, TestUser, DEADLINE};

/// Counts the envelopes the relay is handed.
#[derive(Default)]
struct Sends(AtomicUsize);

impl ConnectionObserver for Sends {
    fn connected(&self, _: usize, _: std::net::SocketAddr) {}
    fn authenticated(&self, _: usize, _: MailboxId) {}
    fn sent(&self, _: usize, _: MailboxId) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Sends {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The next event matching `want`, skipping others; panics after `wait`.
async fn next_matching(
    events: &mut EventStream,
    what: &str,
    wait: Duration,
    want: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + wait;
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

/// Open the account in `home` (retrying while a client just stopped in
/// this process may still hold the store's lock), and run it.
async fn run(home: &Path) -> (ClientHandle, EventStream) {
    let deadline = Instant::now() + DEADLINE;
    let client = loop {
        match Client::open(home) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot open {}: {e}", home.display()),
        }
    };
    client.set_send_spacing(Duration::ZERO, Duration::ZERO);
    let (handle, mut events) = tern_client::spawn(client);
    next_matching(&mut events, "the home connection", DEADLINE, |e| {
        matches!(e, Event::Connection { connected: true })
    })
    .await;
    (handle, events)
}

fn path_is(contact: &str, state: PathState) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Path { contact: c, state: s, .. } if c == contact && *s == state)
}

/// Send `texts` from `handle` to `to`, many in flight at once; every one
/// must end up handed over (direct ack or relay).
async fn send_all(handle: &ClientHandle, to: &str, texts: Vec<String>) -> Vec<String> {
    let mut running = tokio::task::JoinSet::new();
    for t in texts {
        let (h, to) = (handle.clone(), to.to_string());
        running.spawn(async move { h.send_text_with_id(&to, &t).await });
    }
    let mut ids = Vec::new();
    while let Some(r) = running.join_next().await {
        let (id, outcome) = r.unwrap().unwrap();
        assert_eq!(outcome, SendOutcome::Sent);
        ids.push(id);
    }
    ids
}

/// Collect `n` distinct texts from `events`, failing on any repeat.
async fn collect_texts(events: &mut EventStream, n: usize, seen: &mut HashSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Event::Message(m))) => {
                assert!(seen.insert(m.text.clone()), "{} shown twice", m.text);
                got += 1;
            }
            Ok(Some(Event::Lagged { missed })) => panic!("missed {missed} events"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event stream ended after {got} of {n} texts"),
            Err(_) => panic!("only {got} of {n} texts arrived"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_path_carries_a_thousand_messages_and_the_relay_takes_over_when_it_drops() {
    let sends = Arc::new(Sends::default());
    let relay = TestRelay::start_observed(
        None,
        Limits::default(),
        Observer::new(Arc::clone(&sends) as Arc<dyn ConnectionObserver>),
    )
    .await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;
    let (alice_dir, bob_dir) = (alice.into_home(), bob.into_home());
    let (alice_home, bob_home) = (alice_dir.path().join("home"), bob_dir.path().join("home"));
    let (alice, mut alice_events) = run(&alice_home).await;
    let (bob, mut bob_events) = run(&bob_home).await;

    // A message through the relay: bob hears from alice and offers a path.
    let started = Instant::now();
    alice
        .send_text("bob", "hello over the relay")
        .await
        .unwrap();
    let wait = Duration::from_secs(30);
    let mut seen = HashSet::new();
    collect_texts(&mut bob_events, 1, &mut seen).await;
    next_matching(
        &mut alice_events,
        "alice's path",
        wait,
        path_is("bob", PathState::Open),
    )
    .await;
    next_matching(
        &mut bob_events,
        "bob's path",
        wait,
        path_is("alice", PathState::Open),
    )
    .await;
    eprintln!("path open {:?} after the first message", started.elapsed());
    assert!(alice.path_info("bob").await.unwrap().direct);
    assert!(bob.path_info("alice").await.unwrap().direct);

    // 1,000 messages, none of them through the relay.
    let before = sends.count();
    let texts: Vec<String> = (0..1000).map(|i| format!("direct {i}")).collect();
    send_all(&alice, "bob", texts).await;
    collect_texts(&mut bob_events, 1000, &mut seen).await;
    assert_eq!(
        sends.count(),
        before,
        "the relay was handed envelopes while the path was up"
    );
    let info = bob.path_info("alice").await.unwrap();
    assert!(info.direct && info.rtt_ms.is_some());

    // A group of two goes over the path too: its update, bob's card and
    // 20 messages, none of them handed to the relay.
    let before = sends.count();
    alice
        .group(GroupCall::Create {
            name: "pair".into(),
            contacts: vec!["bob".into()],
        })
        .await
        .unwrap();
    for i in 0..20 {
        alice
            .group(GroupCall::Send {
                name: "pair".into(),
                text: format!("pair {i}"),
            })
            .await
            .unwrap();
    }
    let mut in_group = HashSet::new();
    while in_group.len() < 20 {
        match next_matching(
            &mut bob_events,
            "the group's messages",
            wait,
            |e| matches!(e, Event::Message(m) if m.group.is_some()),
        )
        .await
        {
            Event::Message(m) => {
                assert_eq!(m.group.as_deref(), Some("pair"));
                assert!(in_group.insert(m.text.clone()), "{} shown twice", m.text);
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(
        sends.count(),
        before,
        "the relay was handed a two-person group's envelopes while the path was up"
    );

    // Bob goes away while alice sends 300 more: what the path did not ack
    // goes through the relay.
    let shown_until_gone = tokio::spawn(async move {
        let mut texts = Vec::new();
        while let Some(e) = bob_events.next().await {
            match e {
                Event::Message(m) => texts.push(m.text),
                Event::Lagged { missed } => panic!("missed {missed} events"),
                _ => {}
            }
        }
        texts
    });
    let burst: Vec<String> = (0..300).map(|i| format!("burst {i}")).collect();
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move { send_all(&alice, "bob", burst).await })
    };
    bob.shutdown().await;
    for t in shown_until_gone.await.unwrap() {
        assert!(seen.insert(t.clone()), "{t} shown twice");
    }
    next_matching(
        &mut alice_events,
        "the path closing",
        wait,
        path_is("bob", PathState::Closed),
    )
    .await;
    sender.await.unwrap();
    let after: Vec<String> = (0..50).map(|i| format!("after {i}")).collect();
    send_all(&alice, "bob", after).await;
    assert!(
        sends.count() > before,
        "nothing went through the relay after the path closed"
    );
    assert!(!alice.path_info("bob").await.unwrap().direct);

    // Bob back: every message once (those stored before he left are not
    // shown again; the rest come from the relay).
    let (bob, mut bob_events) = run(&bob_home).await;
    let missing = 1351 - seen.len();
    collect_texts(&mut bob_events, missing, &mut seen).await;
    let history = bob.history("alice", 5000).await.unwrap();
    let distinct: HashSet<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(history.len(), 1351, "every message stored once");
    assert_eq!(distinct.len(), 1351);
    assert_eq!(seen.len(), 1351);
    // Nothing more is shown (no repeat arrives late).
    let late = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match bob_events.next().await {
                Some(Event::Message(m)) => return Some(m.text),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    assert!(matches!(late, Err(_) | Ok(None)), "shown again: {late:?}");
    bob.shutdown().await;
    alice.shutdown().await;
}
