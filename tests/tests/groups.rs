//! Group chat through the `tern` and `tern-relay` binaries: a group across
//! two relays whose members are not all contacts, a member who was offline
//! getting a message later and once, a removed member no longer getting
//! (or showing) what follows, nor opening it when it is put in her mailbox,
//! two admins changing membership at once ending with everyone holding the
//! same membership, a listening member, and group commands beside `listen`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tern_tests::process::{befriend_homes, init_account, ok, recv_json, RelayProcess};

/// Rounds of everyone receiving before membership must have settled.
const SYNC_ROUNDS: usize = 10;

fn init(dir: &Path, relay: &RelayProcess, name: &str) -> PathBuf {
    init_account(dir, relay.url(), name)
}

/// `tern group members GROUP --json`, parsed.
fn members(home: &Path, group: &str) -> Vec<Value> {
    ok(home, &["group", "members", group, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The identity keys of a group's members as `home` sees them.
fn member_keys(home: &Path, group: &str) -> BTreeSet<String> {
    members(home, group)
        .iter()
        .map(|m| m["identity_key"].as_str().unwrap().to_string())
        .collect()
}

/// Everyone receives, round after round, until `done` holds; returns the
/// messages that arrived meanwhile, per home. Panics after SYNC_ROUNDS.
fn sync(homes: &[&Path], done: impl Fn() -> bool) -> Vec<Vec<Value>> {
    let mut got = vec![Vec::new(); homes.len()];
    for _ in 0..SYNC_ROUNDS {
        for (i, h) in homes.iter().enumerate() {
            got[i].extend(recv_json(h).into_iter().filter(|e| e["type"] == "message"));
        }
        if done() {
            return got;
        }
    }
    panic!("membership did not settle in {SYNC_ROUNDS} rounds");
}

/// Every member of `group` is reachable from every home in `homes`.
fn all_reachable(homes: &[&Path], group: &str, n: usize) -> bool {
    homes.iter().all(|h| {
        let m = members(h, group);
        m.len() == n && m.iter().all(|m| m["reachable"] == true)
    })
}

fn sent_id(out: &str) -> String {
    out.trim()
        .strip_prefix("sent ")
        .unwrap_or_else(|| panic!("{out:?}"))
        .to_string()
}

fn group_texts(events: &[Value], group: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "message" && e["group"] == group)
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_group_across_two_relays_with_an_offline_and_a_removed_member() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
    let alice = init(dir.path(), &r1, "alice");
    let bob = init(dir.path(), &r1, "bob");
    let carol = init(dir.path(), &r2, "carol");
    // Bob and Carol are not each other's contacts.
    befriend_homes(&alice, "alice", &bob);
    befriend_homes(&alice, "alice", &carol);

    ok(&alice, &["group", "create", "team", "bob", "carol"]);
    let all = [alice.as_path(), bob.as_path(), carol.as_path()];
    sync(&all, || all_reachable(&all, "team", 3));
    let keys = member_keys(&alice, "team");
    assert_eq!(member_keys(&bob, "team"), keys);
    assert_eq!(member_keys(&carol, "team"), keys);

    // Alice writes; both get it once, with the group's name.
    let id = sent_id(&ok(&alice, &["group", "send", "team", "hello team"]));
    let at_bob = recv_json(&bob);
    assert_eq!(
        group_texts(&at_bob, "team"),
        [("alice".to_string(), "hello team".to_string())]
    );
    assert_eq!(at_bob[0]["id"], id.as_str());
    assert_eq!(
        group_texts(&recv_json(&carol), "team"),
        [("alice".to_string(), "hello team".to_string())]
    );

    // Bob writes to Carol, who is not his contact, and to Alice. Carol is
    // offline meanwhile: she gets it when she next receives, once.
    ok(&bob, &["group", "send", "team", "from bob"]);
    assert_eq!(
        group_texts(&recv_json(&alice), "team"),
        [("bob".to_string(), "from bob".to_string())]
    );
    let later = recv_json(&carol);
    assert_eq!(
        group_texts(&later, "team"),
        [("bob".to_string(), "from bob".to_string())]
    );
    assert!(group_texts(&recv_json(&carol), "team").is_empty(), "twice");
    let history = ok(&carol, &["history", "--group", "team", "--json"]);
    let texts: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["text"].clone())
        .collect();
    assert_eq!(texts, ["hello team", "from bob"]);

    // Alice removes Carol; whatever is sent after does not reach her.
    ok(&alice, &["group", "remove", "team", "carol"]);
    let rest = [alice.as_path(), bob.as_path()];
    let during = sync(&all, || {
        rest.iter().all(|h| member_keys(h, "team").len() == 2)
            && ok(&carol, &["group", "list", "--json"]).contains("\"member\":false")
    });
    assert!(during.iter().all(|g| g.is_empty()), "{during:?}");
    ok(&alice, &["group", "send", "team", "after removal"]);
    ok(&bob, &["group", "send", "team", "bob after removal"]);
    let at_bob = group_texts(&recv_json(&bob), "team");
    assert_eq!(at_bob, [("alice".into(), "after removal".into())]);
    let at_alice = group_texts(&recv_json(&alice), "team");
    assert_eq!(at_alice, [("bob".into(), "bob after removal".into())]);
    let at_carol = recv_json(&carol);
    assert!(group_texts(&at_carol, "team").is_empty(), "{at_carol:?}");
    let carol_history = ok(&carol, &["history", "--group", "team"]);
    assert!(!carol_history.contains("after removal"), "{carol_history}");
}

/// `tern status ID --json` at `home`: each member's (name, status).
fn member_statuses(home: &Path, id: &str) -> BTreeSet<(String, String)> {
    ok(home, &["status", id, "--json"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            assert_eq!(v["id"], id, "{v}");
            (
                v["name"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn group_receipts_show_status_per_member_including_non_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
    let alice = init(dir.path(), &r1, "alice");
    let bob = init(dir.path(), &r1, "bob");
    let carol = init(dir.path(), &r2, "carol");
    // Bob and Carol are not each other's contacts.
    befriend_homes(&alice, "alice", &bob);
    befriend_homes(&alice, "alice", &carol);
    ok(&alice, &["group", "create", "team", "bob", "carol"]);
    let all = [alice.as_path(), bob.as_path(), carol.as_path()];
    sync(&all, || all_reachable(&all, "team", 3));
    ok(&carol, &["settings", "read-receipts", "off"]);

    // Bob writes: both relays hold it.
    let id = sent_id(&ok(&bob, &["group", "send", "team", "receipts please"]));
    assert_eq!(
        member_statuses(&bob, &id),
        pairs(&[("alice", "sent"), ("carol", "sent")])
    );

    // Alice reads it; Carol's device stores it, with read receipts off.
    assert_eq!(group_texts(&recv_json(&alice), "team").len(), 1);
    assert_eq!(group_texts(&recv_json(&carol), "team").len(), 1);
    let got = recv_json(&bob);
    let mut receipts: Vec<(String, String)> = got
        .iter()
        .filter(|e| e["type"] == "receipt" && e["id"] == id.as_str())
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    receipts.sort();
    assert_eq!(
        receipts,
        [
            ("alice".to_string(), "delivered".to_string()),
            ("alice".to_string(), "read".to_string()),
            ("carol".to_string(), "delivered".to_string()),
        ],
        "{got:?}"
    );
    assert_eq!(
        member_statuses(&bob, &id),
        pairs(&[("alice", "read"), ("carol", "delivered")])
    );
    // Carol sees it again in history: still no read receipt from her.
    ok(&carol, &["history", "--group", "team"]);
    recv_json(&bob);
    assert_eq!(
        member_statuses(&bob, &id),
        pairs(&[("alice", "read"), ("carol", "delivered")])
    );
    // Receipts are never answered: nobody gets anything more.
    for h in all {
        let rest = recv_json(h);
        assert!(
            rest.iter()
                .all(|e| e["type"] != "receipt" && e["type"] != "message"),
            "{rest:?}"
        );
    }
}

#[test]
fn a_member_without_a_card_yet_gets_the_message_once_it_comes() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
    let alice = init(dir.path(), &r1, "alice");
    let bob = init(dir.path(), &r1, "bob");
    let carol = init(dir.path(), &r2, "carol");
    befriend_homes(&alice, "alice", &bob);
    befriend_homes(&alice, "alice", &carol);
    ok(&alice, &["group", "create", "team", "bob"]);
    let two = [alice.as_path(), bob.as_path()];
    sync(&two, || all_reachable(&two, "team", 2));

    // Alice adds Carol; Bob hears of her before she has published a card.
    ok(&alice, &["group", "add", "team", "carol"]);
    recv_json(&bob);
    let at_bob = members(&bob, "team");
    assert_eq!(at_bob.len(), 3, "{at_bob:?}");
    assert!(at_bob.iter().any(|m| m["reachable"] == false), "{at_bob:?}");
    let out = ok(
        &bob,
        &["group", "send", "team", "before your card", "--json"],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "queued", "{out}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        member_statuses(&bob, &id),
        pairs(&[("alice", "sent"), ("carol", "queued")])
    );

    // Carol joins and publishes her card; once Bob has it, the message
    // (and the key it opens with) goes to her, once.
    let all = [alice.as_path(), bob.as_path(), carol.as_path()];
    let got = sync(&all, || {
        all_reachable(&all, "team", 3)
            && member_statuses(&bob, &id).contains(&("carol".into(), "read".into()))
    });
    assert_eq!(
        group_texts(&got[2], "team"),
        [("bob".to_string(), "before your card".to_string())]
    );
    assert_eq!(group_texts(&got[0], "team").len(), 1, "alice, once");
}

#[test]
fn two_admins_changing_membership_at_once_converge() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start();
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let homes: Vec<PathBuf> = names.iter().map(|n| init(dir.path(), &relay, n)).collect();
    let [alice, bob, carol, dave, erin] = [0, 1, 2, 3, 4].map(|i| homes[i].as_path());
    befriend_homes(alice, "alice", bob);
    befriend_homes(alice, "alice", carol);
    befriend_homes(alice, "alice", dave);
    befriend_homes(bob, "bob", erin);

    ok(alice, &["group", "create", "g", "carol"]);
    ok(alice, &["group", "add", "g", "bob", "--admin"]);
    let first = [alice, bob, carol];
    sync(&first, || all_reachable(&first, "g", 3));

    // Neither admin has heard of the other's change when making its own.
    ok(alice, &["group", "add", "g", "dave"]);
    ok(bob, &["group", "remove", "g", "carol"]);
    ok(bob, &["group", "add", "g", "erin"]);

    let everyone: Vec<&Path> = homes.iter().map(|h| h.as_path()).collect();
    sync(&everyone, || {
        let a = member_keys(alice, "g");
        // Every current member holds the same membership as Alice.
        let views: Vec<&Path> = [bob, dave, erin]
            .into_iter()
            .filter(|h| ok(h, &["group", "list", "--json"]).contains("\"member\":true"))
            .collect();
        views.len() + 1 == a.len() && views.iter().all(|h| member_keys(h, "g") == a)
    });
    let a = member_keys(alice, "g");
    assert_eq!(a.len(), 4, "alice, bob, dave and erin: {a:?}");
    let carol_list = ok(carol, &["group", "list", "--json"]);
    assert!(carol_list.contains("\"member\":false"), "{carol_list}");
}

mod running_client {
    //! A member whose client runs (`tern_client::spawn`, what `tern listen`
    //! runs) makes its card when it is added, and shows group messages from
    //! a member who is not its contact, with the group's name.

    use std::time::{Duration, Instant};
    use tern_client::{Event, EventStream};
    use tern_tests::{befriend, TestRelay, TestUser, DEADLINE};

    async fn group_message(events: &mut EventStream) -> tern_client::ReceivedMessage {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.next()).await {
                Ok(Some(Event::Message(m))) if m.group.is_some() => return m,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the event stream ended"),
                Err(_) => panic!("no group message while listening"),
            }
        }
    }

    fn reachable(u: &TestUser, n: usize) -> bool {
        u.client
            .group("team")
            .is_ok_and(|g| g.members.len() == n && g.members.iter().all(|m| m.reachable))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listening_member_publishes_its_card_and_shows_group_messages() {
        let relay = TestRelay::start().await;
        let mut alice = TestUser::new(&relay, "alice").await;
        let mut bob = TestUser::new(&relay, "bob").await;
        let mut carol = TestUser::new(&relay, "carol").await;
        befriend(&mut alice, &mut bob).await;
        befriend(&mut alice, &mut carol).await;
        let bob_home = bob.into_home();
        let client = tern_client::Client::open(&bob_home.path().join("home")).unwrap();
        client.set_send_spacing(Duration::ZERO, Duration::ZERO);
        let (handle, mut events) = tern_client::spawn(client);

        alice
            .client
            .group_create("team", &["bob".into(), "carol".into()])
            .await
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while !(reachable(&alice, 3) && reachable(&carol, 3)) {
            assert!(Instant::now() < deadline, "cards did not spread");
            alice.receive_rest().await;
            carol.receive_rest().await;
        }
        let (id, _) = carol.client.group_send("team", "hi bob").await.unwrap();
        let m = group_message(&mut events).await;
        assert_eq!(
            (m.id.as_str(), m.from.as_str(), m.text.as_str()),
            (id.as_str(), "carol", "hi bob")
        );
        assert_eq!(m.group.as_deref(), Some("team"));
        handle.shutdown().await;
    }
}

mod beside_listen {
    //! Group commands beside a running `tern listen` go through it (its
    //! socket), and it prints group messages with the group's name.

    use super::{ok, recv_json, sent_id, RelayProcess};
    use std::io::{BufRead, BufReader};
    use std::process::Child;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use tern_tests::process::tern_cmd;

    struct Listen {
        child: Child,
        lines: mpsc::Receiver<String>,
    }

    impl Drop for Listen {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn group_commands_go_through_a_running_listen() {
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayProcess::start();
        let alice = super::init(dir.path(), &relay, "alice");
        let bob = super::init(dir.path(), &relay, "bob");
        super::befriend_homes(&alice, "alice", &bob);

        let mut child = tern_cmd(&bob, &["listen", "--json"]).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let listen = Listen { child, lines };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(bob.join("tern.sock")).is_err() {
            assert!(Instant::now() < deadline, "listen never served its socket");
            std::thread::sleep(Duration::from_millis(50));
        }

        ok(&alice, &["group", "create", "duo", "bob"]);
        // Bob's running client takes the welcome; asked through it:
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok(&bob, &["group", "list", "--json"]).contains("\"name\":\"duo\"") {
            assert!(Instant::now() < deadline, "listen never heard of the group");
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = sent_id(&ok(&bob, &["group", "send", "duo", "from listen"]));
        let got = recv_json(&alice);
        assert!(
            got.iter()
                .any(|e| e["id"] == id.as_str() && e["group"] == "duo" && e["from"] == "bob"),
            "{got:?}"
        );

        ok(&alice, &["group", "send", "duo", "to the listener"]);
        let shown = loop {
            let line = listen
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("listen printed the group message");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "message" {
                break v;
            }
        };
        assert_eq!(shown["group"], "duo");
        assert_eq!(shown["from"], "alice");
        assert_eq!(shown["text"], "to the listener");
        let history = ok(&bob, &["history", "--group", "duo"]);
        assert!(
            history.contains("from listen") && history.contains("to the listener"),
            "{history}"
        );
    }
}

mod listen_flushes_groups {
    //! The running client delivers the group outbox in its own flush
    //! cycles: a group message sent through `tern listen` before a member
    //! published her card goes to her once her card reaches the listener,
    //! with no other command.

    use super::{all_reachable, befriend_homes, group_texts, init, members, ok, recv_json, sync};
    use super::{RelayProcess, Value};
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    use tern_tests::process::tern_cmd;

    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_listening_sender_delivers_a_waiting_group_message_when_the_card_comes() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
        let alice = init(dir.path(), &r1, "alice");
        let bob = init(dir.path(), &r1, "bob");
        let carol = init(dir.path(), &r2, "carol");
        befriend_homes(&alice, "alice", &bob);
        befriend_homes(&alice, "alice", &carol);
        ok(&alice, &["group", "create", "team", "bob"]);
        let two = [alice.as_path(), bob.as_path()];
        sync(&two, || all_reachable(&two, "team", 2));

        let mut child = tern_cmd(&bob, &["listen", "--json"]).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let _listen = Child(child);
        std::thread::spawn(move || {
            // Drained so the listener never blocks on a full pipe.
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {}
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(bob.join("tern.sock")).is_err() {
            assert!(Instant::now() < deadline, "listen never served its socket");
            std::thread::sleep(Duration::from_millis(50));
        }

        // Alice adds Carol; Bob's listen hears of her, without her card.
        ok(&alice, &["group", "add", "team", "carol"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while members(&bob, "team").len() != 3 {
            assert!(Instant::now() < deadline, "bob never heard of carol");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = ok(
            &bob,
            &["group", "send", "team", "waiting for you", "--json"],
        );
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["status"], "queued", "{out}");

        // Carol joins (her card goes to Bob's listen); she then gets the
        // message, delivered by the listener on its own.
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut got = Vec::new();
        while got.is_empty() {
            assert!(Instant::now() < deadline, "the message never reached carol");
            got = group_texts(&recv_json(&carol), "team");
            recv_json(&alice);
        }
        assert_eq!(got, [("bob".to_string(), "waiting for you".to_string())]);
    }
}

mod group_typing {
    //! `tern typing GROUP`: one ephemeral envelope per relay, shown by a
    //! listening member's `listen` with the group's name, and stored for
    //! nobody: an offline member never sees it, and the group session it
    //! advanced still carries the next message to her.

    use super::{
        all_reachable, befriend_homes, group_texts, init, ok, recv_json, sync, RelayProcess,
    };
    use serde_json::{json, Value};
    use std::io::{BufRead, BufReader};
    use std::process::Child;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use tern_tests::process::tern_cmd;

    struct Listen {
        child: Child,
        lines: mpsc::Receiver<String>,
    }

    impl Drop for Listen {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Listen {
        /// Lines until one satisfies `want`; panics after a deadline.
        fn until(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = self
                    .lines
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("listen never showed {what}"));
                let v: Value = serde_json::from_str(&line).unwrap();
                if want(&v) {
                    return v;
                }
            }
        }
    }

    #[test]
    fn group_typing_reaches_a_listening_member_and_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
        let alice = init(dir.path(), &r1, "alice");
        let bob = init(dir.path(), &r1, "bob");
        let carol = init(dir.path(), &r2, "carol");
        befriend_homes(&alice, "alice", &bob);
        befriend_homes(&alice, "alice", &carol);
        ok(&alice, &["group", "create", "team", "bob", "carol"]);
        let all = [alice.as_path(), bob.as_path(), carol.as_path()];
        sync(&all, || all_reachable(&all, "team", 3));
        // Typing goes to members holding Alice's group key: she writes once.
        ok(&alice, &["group", "send", "team", "first"]);
        assert_eq!(group_texts(&recv_json(&bob), "team").len(), 1);
        assert_eq!(group_texts(&recv_json(&carol), "team").len(), 1);

        let mut child = tern_cmd(&bob, &["listen", "--json"]).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let listen = Listen { child, lines };
        // Bob's listen is subscribed once it shows a message.
        ok(&alice, &["group", "send", "team", "are you there"]);
        listen.until("the message", |v| v["type"] == "message");

        assert_eq!(
            ok(&alice, &["typing", "team"]).trim(),
            "told team you are typing"
        );
        let shown = listen.until("typing", |v| v["type"] == "typing");
        assert_eq!(
            shown,
            json!({"type": "typing", "from": "alice", "group": "team"})
        );
        // Rate-limited per group.
        let again: Value =
            serde_json::from_str(ok(&alice, &["typing", "team", "--json"]).trim()).unwrap();
        assert_eq!(again["sent"], false, "{again}");

        // Carol was offline: she gets the messages, never the notice, and
        // the next message still opens.
        ok(&alice, &["group", "send", "team", "after typing"]);
        let at_carol = recv_json(&carol);
        assert!(
            at_carol.iter().all(|e| e["type"] != "typing"),
            "{at_carol:?}"
        );
        assert_eq!(
            group_texts(&at_carol, "team"),
            [
                ("alice".to_string(), "are you there".to_string()),
                ("alice".to_string(), "after typing".to_string())
            ]
        );
    }
}

mod removed_member {
    //! After a removal, what follows is encrypted under new keys: even when
    //! a later group message is put in the removed member's mailbox (as a
    //! relay could), her client cannot open it and shows nothing.

    use std::time::Instant;
    use tern_client::Event;
    use tern_relay::store::{MailboxStore, NewEnvelope, Quota};
    use tern_tests::{befriend, TestRelay, TestUser, DEADLINE};

    fn reachable(u: &TestUser, n: usize) -> bool {
        u.client
            .group("team")
            .is_ok_and(|g| g.members.len() == n && g.members.iter().all(|m| m.reachable))
    }

    fn group_texts(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.group.as_deref() == Some("team") => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_member_cannot_open_a_later_message_put_in_her_mailbox() {
        let mut relay = TestRelay::start().await;
        let mut alice = TestUser::new(&relay, "alice").await;
        let mut bob = TestUser::new(&relay, "bob").await;
        let mut carol = TestUser::new(&relay, "carol").await;
        befriend(&mut alice, &mut bob).await;
        befriend(&mut alice, &mut carol).await;
        alice
            .client
            .group_create("team", &["bob".into(), "carol".into()])
            .await
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while !(reachable(&alice, 3) && reachable(&bob, 3) && reachable(&carol, 3)) {
            assert!(Instant::now() < deadline, "cards did not spread");
            for u in [&mut alice, &mut bob, &mut carol] {
                u.receive_rest().await;
            }
        }
        alice.client.group_send("team", "before").await.unwrap();
        assert_eq!(group_texts(&carol.receive_rest().await), ["before"]);
        assert_eq!(group_texts(&bob.receive_rest().await), ["before"]);

        alice.client.group_remove("team", "carol").await.unwrap();
        bob.receive_rest().await;
        carol.receive_rest().await;
        assert!(!carol.client.group("team").unwrap().member);
        alice
            .client
            .group_send("team", "after removal")
            .await
            .unwrap();

        // Copy what Bob's mailbox got into Carol's.
        let store = relay.open_store().await;
        let held = store.fetch(&bob.mailbox(), 0, 100).unwrap();
        let last = held.last().expect("bob's mailbox holds the message");
        let env = NewEnvelope {
            message_id: [0xee; 16],
            payload: &last.payload,
            now_ms: last.received_ms,
            expires_ms: last.expires_ms,
        };
        let quota = Quota {
            max_envelopes: 1_000,
            max_bytes: 1 << 24,
        };
        store.append(&carol.mailbox(), env, quota).unwrap();
        store.flush().unwrap();
        store.close().unwrap();
        drop(store);
        relay.restart().await;

        assert!(group_texts(&carol.receive_rest().await).is_empty());
        let history = carol.client.group_history("team", 10).unwrap();
        assert!(
            history.iter().all(|m| m.text != "after removal"),
            "{history:?}"
        );
        // It was a real group message: Bob reads it.
        assert_eq!(group_texts(&bob.receive_rest().await), ["after removal"]);
    }
}

/// A group message to members on two relays while one relay is down goes
/// to the other at once, waits on disk for the down one (across `tern`
/// processes), and reaches every member once.
#[test]
fn a_member_relay_down_gets_the_message_later_once() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, mut r2) = (RelayProcess::start(), RelayProcess::start());
    let alice = init(dir.path(), &r1, "alice");
    let bob = init(dir.path(), &r1, "bob");
    let carol = init(dir.path(), &r2, "carol");
    befriend_homes(&alice, "alice", &bob);
    befriend_homes(&alice, "alice", &carol);
    ok(&alice, &["group", "create", "team", "bob", "carol"]);
    let all = [alice.as_path(), bob.as_path(), carol.as_path()];
    sync(&all, || all_reachable(&all, "team", 3));

    r2.kill();
    let out = ok(
        &alice,
        &["group", "send", "team", "while r2 is down", "--json"],
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "queued", "{out}");
    assert_eq!(
        group_texts(&recv_json(&bob), "team"),
        [("alice".to_string(), "while r2 is down".to_string())]
    );
    r2.restart();
    // The next `tern recv` delivers what waits (a new process).
    recv_json(&alice);
    assert_eq!(
        group_texts(&recv_json(&carol), "team"),
        [("alice".to_string(), "while r2 is down".to_string())]
    );
    recv_json(&alice);
    assert!(group_texts(&recv_json(&carol), "team").is_empty(), "twice");
    assert!(group_texts(&recv_json(&bob), "team").is_empty(), "twice");
}
