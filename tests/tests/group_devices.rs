//! Groups on every device of an account, with the real `tern` binary and
//! real relays: a member with two devices gets a group message on both
//! (also from a member who is not his contact and knows his second device
//! only from his member card's signed list), what one device sends to the
//! group shows on the other as sent by us, and a device linked after the
//! group was made reads and writes in it (and gets its receipts); a removed
//! device gets nothing new.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use tern_tests::linking::link;
use tern_tests::process::{befriend_homes, init_account, json_lines, ok, recv_json, RelayProcess};

/// Rounds of everyone receiving before membership must have settled.
const SYNC_ROUNDS: usize = 10;

fn init(dir: &Path, relay: &RelayProcess, name: &str) -> PathBuf {
    init_account(dir, relay.url(), name)
}

/// Everyone receives, round after round, until `done` holds; the group
/// messages each got meanwhile, as (from, text).
fn sync(homes: &[&Path], done: impl Fn() -> bool) -> Vec<Vec<(String, String)>> {
    let mut got = vec![Vec::new(); homes.len()];
    for _ in 0..SYNC_ROUNDS {
        for (i, h) in homes.iter().enumerate() {
            got[i].extend(group_texts(&recv_json(h)));
        }
        if done() {
            return got;
        }
    }
    panic!("the group did not settle in {SYNC_ROUNDS} rounds");
}

fn group_texts(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "message" && e["group"] == "team")
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap().to_string();
            (f("from"), f("text"))
        })
        .collect()
}

/// Every member of "team" is reachable from `home`, and there are `n`.
fn reachable(home: &Path, n: usize) -> bool {
    let m = json_lines(&ok(home, &["group", "members", "team", "--json"]));
    m.len() == n && m.iter().all(|m| m["reachable"] == true)
}

fn said(from: &str, text: &str) -> (String, String) {
    (from.to_string(), text.to_string())
}

/// The group's history on `home`: (from, text, outgoing).
fn group_history(home: &Path) -> Vec<(String, String, bool)> {
    json_lines(&ok(home, &["history", "--group", "team", "--json"]))
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
                m["outgoing"] == true,
            )
        })
        .collect()
}

#[test]
fn a_member_with_two_devices_gets_group_messages_on_both_and_sees_his_own() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
    let alice = init(dir.path(), &r1, "alice");
    let bob = init(dir.path(), &r2, "bob");
    let carol = init(dir.path(), &r1, "carol");
    // Carol is Alice's contact, not Bob's.
    befriend_homes(&alice, "alice", &bob);
    befriend_homes(&alice, "alice", &carol);
    let bob2 = dir.path().join("bob-laptop");
    let laptop_id = link(&bob, &bob2, &r1, "laptop");
    // Alice takes Bob's new list before the group is made.
    assert!(group_texts(&recv_json(&alice)).is_empty());

    ok(&alice, &["group", "create", "team", "bob", "carol"]);
    let all = [
        alice.as_path(),
        bob.as_path(),
        carol.as_path(),
        bob2.as_path(),
    ];
    sync(&all, || {
        reachable(&alice, 3) && reachable(&bob, 3) && reachable(&carol, 3) && reachable(&bob2, 3)
    });

    // Alice writes: both of Bob's devices get it, once.
    ok(&alice, &["group", "send", "team", "hello team"]);
    for home in [&bob, &bob2, &carol] {
        assert_eq!(
            group_texts(&recv_json(home)),
            [said("alice", "hello team")],
            "{home:?}"
        );
    }
    // Carol knows Bob's laptop only from his card's signed list.
    ok(&carol, &["group", "send", "team", "from carol"]);
    for home in [&bob, &bob2, &alice] {
        assert_eq!(group_texts(&recv_json(home)), [said("carol", "from carol")]);
    }

    // Bob writes from his first device: the others get it from "bob", and
    // his laptop shows it as sent by him (and shows no message).
    ok(&bob, &["group", "send", "team", "from bob's phone"]);
    for home in [&alice, &carol] {
        assert_eq!(
            group_texts(&recv_json(home)),
            [said("bob", "from bob's phone")]
        );
    }
    assert!(group_texts(&recv_json(&bob2)).is_empty());
    assert!(
        group_history(&bob2).contains(&("bob".into(), "from bob's phone".into(), true)),
        "{:?}",
        group_history(&bob2)
    );

    // Bob removes his laptop. Alice learns it from his list, Carol from
    // his new card; what either writes next reaches his phone only.
    ok(&bob, &["device", "remove", &laptop_id]);
    assert!(group_texts(&recv_json(&bob)).is_empty());
    for home in [&alice, &carol] {
        assert!(group_texts(&recv_json(home)).is_empty());
    }
    ok(&alice, &["group", "send", "team", "after the laptop left"]);
    ok(&carol, &["group", "send", "team", "carol after it left"]);
    let at_bob = group_texts(&recv_json(&bob));
    assert!(
        at_bob.contains(&said("alice", "after the laptop left")),
        "{at_bob:?}"
    );
    assert!(
        at_bob.contains(&said("carol", "carol after it left")),
        "{at_bob:?}"
    );
    assert!(group_texts(&recv_json(&bob2)).is_empty());
}

#[test]
fn a_device_linked_after_the_group_was_made_reads_and_writes_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (RelayProcess::start(), RelayProcess::start());
    let alice = init(dir.path(), &r1, "alice");
    let bob = init(dir.path(), &r2, "bob");
    befriend_homes(&alice, "alice", &bob);
    ok(&alice, &["group", "create", "team", "bob"]);
    let both = [alice.as_path(), bob.as_path()];
    sync(&both, || reachable(&alice, 2) && reachable(&bob, 2));
    ok(&alice, &["group", "send", "team", "before the laptop"]);
    assert_eq!(
        group_texts(&recv_json(&bob)),
        [said("alice", "before the laptop")]
    );

    // The laptop joins: it has the group from the link.
    let laptop = dir.path().join("alice-laptop");
    link(&alice, &laptop, &r2, "laptop");
    let groups = json_lines(&ok(&laptop, &["group", "list", "--json"]));
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["name"], "team");
    assert_eq!(groups[0]["member"], true);
    let all = [alice.as_path(), bob.as_path(), laptop.as_path()];
    // Bob learns the new list; Alice's card names it.
    sync(&all, || reachable(&laptop, 2));

    // Bob writes: both of Alice's devices read it.
    ok(&bob, &["group", "send", "team", "hello both"]);
    for home in [&alice, &laptop] {
        assert_eq!(group_texts(&recv_json(home)), [said("bob", "hello both")]);
    }
    // The laptop writes: Bob reads it from Alice, and Alice's first device
    // shows it as sent by her.
    let sent = ok(&laptop, &["group", "send", "team", "from the laptop"]);
    let id = sent
        .trim()
        .strip_prefix("sent ")
        .unwrap_or_else(|| panic!("{sent}"));
    assert_eq!(
        group_texts(&recv_json(&bob)),
        [said("alice", "from the laptop")]
    );
    assert!(group_texts(&recv_json(&alice)).is_empty());
    // Bob's receipts reach the laptop, which sent it.
    assert!(group_texts(&recv_json(&laptop)).is_empty());
    let status = json_lines(&ok(&laptop, &["status", id, "--json"]));
    assert_eq!(status[0]["status"], "read", "{status:?}");
    assert!(group_history(&alice).contains(&("alice".into(), "from the laptop".into(), true)));
    // And the other way round.
    ok(&alice, &["group", "send", "team", "from the phone"]);
    assert_eq!(
        group_texts(&recv_json(&bob)),
        [said("alice", "from the phone")]
    );
    assert!(group_texts(&recv_json(&laptop)).is_empty());
    assert!(
        group_history(&laptop).contains(&("alice".into(), "from the phone".into(), true)),
        "{:?}",
        group_history(&laptop)
    );
}
