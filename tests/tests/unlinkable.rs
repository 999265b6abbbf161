//! What a relay sees of a user's sends cannot be tied to that user's
//! authenticated connection, nor to their sends to other contacts.
//!
//! The relay here hosts Alice, Bob and Carol, and tells a
//! `ConnectionObserver` what it learns per connection: the source address
//! and port, the mailbox it authenticated as (if any), and the mailboxes it
//! sent to. Alice goes through every flow that sends next to an
//! authentication: `accept` (authenticate, mint a token, send the hello),
//! `send`, `recv` (flush the outbox to two contacts, then authenticate and
//! receive) and `listen` (the running client: authenticated and subscribed
//! while it sends). Then the test asserts, from the relay's view alone:
//!
//! - no connection that sent anything authenticated;
//! - no send came from the source port of any authenticated connection;
//! - every send connection carried envelopes for one mailbox only, and
//!   sends to different mailboxes came from different ports;
//! - no send reached the relay within the spacing's minimum of one of
//!   Alice's authentications, in either order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_client::{Event, SendOutcome};
use tern_relay::{ConnectionObserver, Limits, Observer};
use tern_tests::{messages, texts, TestRelay, TestUser, DEADLINE};

/// Alice's spacing between authentications and sends, and the least gap
/// the relay must see (the send's own connection set-up eats into it).
const GAP_MIN: Duration = Duration::from_millis(400);
const GAP_MAX: Duration = Duration::from_millis(600);
const GAP_SEEN: Duration = Duration::from_millis(150);

/// The relay's view of one connection.
#[derive(Debug, Clone)]
struct View {
    remote: SocketAddr,
    auth: Option<[u8; 16]>,
    sent_to: Vec<[u8; 16]>,
}

#[derive(Debug, Clone, Copy)]
enum Seen {
    Auth([u8; 16]),
    Send,
}

/// Everything the relay was told, with when.
#[derive(Default)]
struct Watch {
    conns: Mutex<HashMap<usize, View>>,
    events: Mutex<Vec<(Instant, usize, Seen)>>,
}

impl ConnectionObserver for Watch {
    fn connected(&self, conn: usize, remote: SocketAddr) {
        self.conns.lock().unwrap().insert(
            conn,
            View {
                remote,
                auth: None,
                sent_to: Vec::new(),
            },
        );
    }

    fn authenticated(&self, conn: usize, mailbox: [u8; 16]) {
        if let Some(v) = self.conns.lock().unwrap().get_mut(&conn) {
            v.auth = Some(mailbox);
        }
        let event = (Instant::now(), conn, Seen::Auth(mailbox));
        self.events.lock().unwrap().push(event);
    }

    fn sent(&self, conn: usize, mailbox: [u8; 16]) {
        if let Some(v) = self.conns.lock().unwrap().get_mut(&conn) {
            v.sent_to.push(mailbox);
        }
        self.events
            .lock()
            .unwrap()
            .push((Instant::now(), conn, Seen::Send));
    }
}

/// Receive until every one of `wanted` (texts, or a contact's name for
/// its hello) has arrived.
async fn receive_all(user: &mut TestUser, wanted: &[&str]) {
    let deadline = Instant::now() + DEADLINE;
    let mut got: BTreeSet<String> = BTreeSet::new();
    loop {
        let events = user
            .client
            .receive(Duration::from_millis(200))
            .await
            .unwrap();
        got.extend(texts(&messages(&events)).into_iter().map(String::from));
        got.extend(events.iter().filter_map(|e| match e {
            Event::ContactAdded { name } => Some(name.clone()),
            _ => None,
        }));
        if wanted.iter().all(|w| got.contains(*w)) {
            return;
        }
        assert!(Instant::now() < deadline, "{} got only {got:?}", user.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_send_is_linkable_to_an_authenticated_connection_or_another_recipient() {
    let watch = Arc::new(Watch::default());
    let relay = TestRelay::start_observed(
        None,
        Limits::default(),
        Observer::new(Arc::clone(&watch) as Arc<dyn ConnectionObserver>),
    )
    .await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let mut carol = TestUser::new(&relay, "carol").await;
    alice.client.set_send_spacing(GAP_MIN, GAP_MAX);

    // accept: authenticate, mint, and send the hello, twice.
    for friend in [&mut bob, &mut carol] {
        let code = friend.client.invite().await.unwrap();
        let name = friend.name.clone();
        alice.client.accept(&code, &name).await.unwrap();
        assert_eq!(alice.client.outbox_len().unwrap(), 0, "hello to {name}");
        receive_all(friend, &["alice"]).await;
    }

    // send: one text each.
    alice.send("bob", "sent to bob").await;
    alice.send("carol", "sent to carol").await;

    // recv: two contacts' texts in the outbox, flushed in one go, then the
    // mailbox read.
    alice
        .client
        .queue_text("bob", "queued for bob")
        .await
        .unwrap();
    alice
        .client
        .queue_text("carol", "queued for carol")
        .await
        .unwrap();
    let report = alice.client.flush_outbox().await.unwrap();
    assert_eq!(report.sent.len(), 2, "{report:?}");
    alice
        .client
        .receive(Duration::from_millis(100))
        .await
        .unwrap();

    // listen: the running client, authenticated and subscribed, sends.
    let (handle, _events) = tern_client::spawn(alice.client);
    for to in ["bob", "carol"] {
        let outcome = handle
            .send_text(to, &format!("listening, to {to}"))
            .await
            .unwrap();
        assert_eq!(outcome, SendOutcome::Sent);
    }
    handle.shutdown().await;
    receive_all(
        &mut bob,
        &["sent to bob", "queued for bob", "listening, to bob"],
    )
    .await;
    receive_all(
        &mut carol,
        &["sent to carol", "queued for carol", "listening, to carol"],
    )
    .await;

    // The relay's view.
    let conns: Vec<View> = watch.conns.lock().unwrap().values().cloned().collect();
    let sends: Vec<&View> = conns.iter().filter(|v| !v.sent_to.is_empty()).collect();
    let authed: Vec<&View> = conns.iter().filter(|v| v.auth.is_some()).collect();
    // Two hellos, two sends, two from the outbox, two while listening.
    assert!(sends.len() >= 8, "{} send connections", sends.len());
    assert!(!authed.is_empty());
    let auth_ports: BTreeSet<u16> = authed.iter().map(|v| v.remote.port()).collect();
    for s in &sends {
        assert_eq!(s.auth, None, "a connection both authenticated and sent");
        assert!(
            !auth_ports.contains(&s.remote.port()),
            "a send from the port of an authenticated connection: {s:?}"
        );
        let to: BTreeSet<_> = s.sent_to.iter().collect();
        assert_eq!(to.len(), 1, "one connection sent to two mailboxes: {s:?}");
    }
    for a in &sends {
        for b in &sends {
            if a.sent_to[0] != b.sent_to[0] {
                assert_ne!(
                    a.remote.port(),
                    b.remote.port(),
                    "sends to two mailboxes from one port"
                );
            }
        }
    }

    // Timing: no send within GAP_SEEN of one of Alice's authentications.
    let alice_box = relay_mailbox_of(&conns, &sends);
    let events = watch.events.lock().unwrap().clone();
    let auths: Vec<Instant> = events
        .iter()
        .filter_map(|(t, _, e)| matches!(e, Seen::Auth(m) if *m == alice_box).then_some(*t))
        .collect();
    assert!(
        auths.len() >= 4,
        "alice authenticated {} times",
        auths.len()
    );
    for (t, _, e) in &events {
        if matches!(e, Seen::Send) {
            for a in &auths {
                let gap = if t > a { *t - *a } else { *a - *t };
                assert!(gap >= GAP_SEEN, "a send {gap:?} from an authentication");
            }
        }
    }
}

/// Alice's mailbox: the one authenticated mailbox nobody sent to (Bob and
/// Carol only receive).
fn relay_mailbox_of(conns: &[View], sends: &[&View]) -> [u8; 16] {
    let targets: BTreeSet<[u8; 16]> = sends.iter().flat_map(|s| s.sent_to.clone()).collect();
    let owners: BTreeSet<[u8; 16]> = conns
        .iter()
        .filter_map(|v| v.auth)
        .filter(|m| !targets.contains(m))
        .collect();
    assert_eq!(owners.len(), 1, "{owners:?}");
    owners.into_iter().next().unwrap()
}

/// Tokens are minted ahead of need, when the client authenticates to
/// receive, not when it invites or accepts: from the relay's view, Alice's
/// mailbox does not authenticate at all (so mints nothing) between the
/// start of her `accept`s and the hellos reaching the relay, and Bob's
/// `invite` needs no connection either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_minted_ahead_not_next_to_invites_and_accepts() {
    let watch = Arc::new(Watch::default());
    let relay = TestRelay::start_observed(
        None,
        Limits::default(),
        Observer::new(Arc::clone(&watch) as Arc<dyn ConnectionObserver>),
    )
    .await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    let mut carol = TestUser::new(&relay, "carol").await;
    // Receiving tops the pool up (an authentication for its own reason).
    for user in [&mut alice, &mut bob, &mut carol] {
        user.client.receive(Duration::ZERO).await.unwrap();
        assert_eq!(
            user.client.pooled_tokens().unwrap(),
            tern_client::tokens::POOL_TARGET
        );
    }
    let auths_of = |watch: &Watch, mailbox: [u8; 16]| {
        watch
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, e)| matches!(e, Seen::Auth(m) if *m == mailbox))
            .count()
    };
    let (alice_box, bob_box) = (alice.mailbox(), bob.mailbox());
    let before = (auths_of(&watch, alice_box), auths_of(&watch, bob_box));
    let conns_before = watch.conns.lock().unwrap().len();

    let code_bob = bob.client.invite().await.unwrap();
    // Bob's invite opened no connection at all.
    assert_eq!(watch.conns.lock().unwrap().len(), conns_before);
    let code_carol = carol.client.invite().await.unwrap();
    alice.client.accept(&code_bob, "bob").await.unwrap();
    alice.client.accept(&code_carol, "carol").await.unwrap();
    assert_eq!(alice.client.outbox_len().unwrap(), 0);
    assert_eq!(
        (auths_of(&watch, alice_box), auths_of(&watch, bob_box)),
        before,
        "an invite or accept authenticated (and so could mint) next to its send"
    );
    assert_eq!(
        alice.client.pooled_tokens().unwrap(),
        tern_client::tokens::POOL_TARGET - 2
    );
    receive_all(&mut bob, &["alice"]).await;
    receive_all(&mut carol, &["alice"]).await;
}
