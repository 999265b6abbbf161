//! Receipts and typing as a user sees them, with the real `tern` binary and
//! real relays (`tern-relay run` children; Alice and Bob on different
//! relays): delivered and read receipts come back end to end and `tern
//! status` shows sent, then delivered, then read; with read receipts off
//! none are sent (and none are seen); a typing notice reaches a listening
//! contact and is never stored for an offline one. Every command also runs
//! beside a `tern listen` (through its socket).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use tern_tests::listen::Listen;
use tern_tests::process::{alice_and_bob, json_lines, ok, RelayProcess};

fn of_type<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

/// Alice on one relay, Bob on another, contacts of each other.
fn contacts(dir: &Path, ra: &RelayProcess, rb: &RelayProcess) -> (PathBuf, PathBuf) {
    let (a, b) = alice_and_bob(dir, ra.url(), rb.url());
    assert_eq!(
        json_lines(&ok(&a, &["recv", "--json"])),
        [serde_json::json!({"type": "contact", "name": "bob"})]
    );
    (a, b)
}

/// `tern send` and the id it printed.
fn send(home: &Path, to: &str, text: &str) -> String {
    let out = ok(home, &["send", to, text, "--json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "sent", "{out}");
    v["id"].as_str().unwrap().to_string()
}

/// `tern status ID --json`: the one recipient's line.
fn status(home: &Path, id: &str) -> Value {
    let lines = json_lines(&ok(home, &["status", id, "--json"]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

/// `(id, status)` of every receipt line among `lines`.
fn receipts(lines: &[Value]) -> Vec<(String, String)> {
    of_type(lines, "receipt")
        .into_iter()
        .map(|r| {
            assert_eq!(r["from"], "bob", "{r}");
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(id: &str, status: &str) -> (String, String) {
    (id.to_string(), status.to_string())
}

#[test]
fn receipts_come_back_and_status_shows_sent_then_delivered_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let ra = RelayProcess::start_in(&dir.path().join("ra"));
    let rb = RelayProcess::start_in(&dir.path().join("rb"));
    let (a, b) = contacts(dir.path(), &ra, &rb);

    let first = send(&a, "bob", "one");
    let s = status(&a, &first);
    assert_eq!(
        (s["name"].as_str(), s["status"].as_str()),
        (Some("bob"), Some("sent"))
    );
    assert!(
        s["sent_at"].is_string() && s["delivered_at"].is_null(),
        "{s}"
    );

    // Bob's device stores it; with read receipts off he says only that.
    assert_eq!(
        ok(&b, &["settings", "read-receipts", "off"]).trim(),
        "read-receipts off"
    );
    let got = json_lines(&ok(&b, &["recv", "--json"]));
    assert_eq!(of_type(&got, "message").len(), 1);
    assert_eq!(
        receipts(&json_lines(&ok(&a, &["recv", "--json"]))),
        [pair(&first, "delivered")]
    );
    let s = status(&a, &first);
    assert_eq!(s["status"], "delivered");
    assert!(
        s["delivered_at"].is_string() && s["read_at"].is_null(),
        "{s}"
    );

    // With read receipts on again, the next message is read when shown.
    assert_eq!(
        ok(&b, &["settings", "read-receipts", "on"]).trim(),
        "read-receipts on"
    );
    let second = send(&a, "bob", "two");
    ok(&b, &["recv"]);
    let human = ok(&a, &["recv"]);
    assert!(human.contains(&format!("* bob: read {second}")), "{human}");
    assert_eq!(status(&a, &second)["status"], "read");
    let line = ok(&a, &["status", &second]);
    assert!(line.starts_with("bob\tread\t"), "{line}");
    // What Bob saw while read receipts were off stays unread for Alice,
    // even once `history` shows it to him again.
    ok(&b, &["history", "alice"]);
    assert!(ok(&a, &["recv", "--json"]).is_empty());
    assert_eq!(status(&a, &first)["status"], "delivered");

    // Receipts are never answered with receipts: Bob gets nothing back.
    assert!(ok(&b, &["recv", "--json"]).is_empty());

    // Several messages received together: each is delivered and read.
    let three = send(&a, "bob", "three");
    let four = send(&a, "bob", "four");
    ok(&b, &["recv"]);
    let mut got = receipts(&json_lines(&ok(&a, &["recv", "--json"])));
    got.sort();
    let mut want = vec![
        pair(&three, "delivered"),
        pair(&three, "read"),
        pair(&four, "delivered"),
        pair(&four, "read"),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn with_read_receipts_off_none_are_sent_and_none_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let ra = RelayProcess::start_in(&dir.path().join("ra"));
    let rb = RelayProcess::start_in(&dir.path().join("rb"));
    let (a, b) = contacts(dir.path(), &ra, &rb);

    ok(&b, &["settings", "read-receipts", "off"]);
    assert_eq!(
        ok(&b, &["settings", "read-receipts"]).trim(),
        "read-receipts off"
    );
    let id = send(&a, "bob", "private");
    ok(&b, &["recv"]);
    ok(&b, &["history", "alice"]);
    let lines = json_lines(&ok(&a, &["recv", "--json"]));
    assert_eq!(
        receipts(&lines),
        [pair(&id, "delivered")],
        "no read receipt"
    );
    assert_eq!(status(&a, &id)["status"], "delivered");

    // Off works both ways: Alice turns hers off, Bob turns his on; Bob's
    // read receipt reaches Alice but counts only as delivered.
    ok(&a, &["settings", "read-receipts", "off"]);
    ok(&b, &["settings", "read-receipts", "on"]);
    let id = send(&a, "bob", "seen but not shown as seen");
    ok(&b, &["recv"]);
    let lines = json_lines(&ok(&a, &["recv", "--json"]));
    assert_eq!(receipts(&lines), [pair(&id, "delivered")]);
    let s = status(&a, &id);
    assert_eq!(s["status"], "delivered");
    assert!(s["read_at"].is_null(), "{s}");
}

#[test]
fn typing_is_never_stored_for_an_offline_contact() {
    let dir = tempfile::tempdir().unwrap();
    let ra = RelayProcess::start_in(&dir.path().join("ra"));
    let rb = RelayProcess::start_in(&dir.path().join("rb"));
    let (a, b) = contacts(dir.path(), &ra, &rb);

    // Bob is not connected: his relay drops the notice.
    assert_eq!(ok(&a, &["typing", "bob"]).trim(), "told bob you are typing");
    // Rate-limited: a second one at once does not go.
    let again: Value = serde_json::from_str(ok(&a, &["typing", "bob", "--json"]).trim()).unwrap();
    assert_eq!(again["sent"], false, "{again}");
    assert!(again["retry_after_ms"].as_u64().unwrap() <= 3_000);

    // Later Bob connects: nothing about typing, and the session the notice
    // advanced still carries Alice's next message.
    let id = send(&a, "bob", "after typing");
    let lines = json_lines(&ok(&b, &["recv", "--json"]));
    assert!(of_type(&lines, "typing").is_empty(), "{lines:?}");
    let messages = of_type(&lines, "message");
    assert_eq!(messages.len(), 1, "{lines:?}");
    assert_eq!(
        (messages[0]["id"].as_str(), messages[0]["text"].as_str()),
        (Some(id.as_str()), Some("after typing"))
    );
}

#[test]
fn typing_and_receipts_reach_listening_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let ra = RelayProcess::start_in(&dir.path().join("ra"));
    let rb = RelayProcess::start_in(&dir.path().join("rb"));
    let (a, b) = contacts(dir.path(), &ra, &rb);
    let alice = Listen::start(&a);
    let bob = Listen::start(&b);

    // Through Alice's listen: a message, which Bob's listen shows (so he
    // is connected) and answers with receipts that Alice's listen shows.
    let id = send(&a, "bob", "are you there");
    bob.until("the message", |l| of_type(l, "message").len() == 1);
    let shown = alice.until("both receipts", |l| receipts(l).len() == 2);
    assert_eq!(
        receipts(&shown),
        [pair(&id, "delivered"), pair(&id, "read")]
    );
    // `status` beside Alice's listen goes through it.
    assert_eq!(status(&a, &id)["status"], "read");

    // Typing, sent through Alice's listen, shows in Bob's.
    assert_eq!(ok(&a, &["typing", "bob"]).trim(), "told bob you are typing");
    let shown = bob.until("typing", |l| !of_type(l, "typing").is_empty());
    assert_eq!(
        of_type(&shown, "typing"),
        [&serde_json::json!({"type": "typing", "from": "alice"})]
    );
    // Settings go through the listen too.
    assert_eq!(
        ok(&a, &["settings", "read-receipts"]).trim(),
        "read-receipts on"
    );

    alice.interrupt();
    bob.interrupt();
    // Nothing about typing was stored for later.
    assert!(of_type(&json_lines(&ok(&b, &["recv", "--json"])), "typing").is_empty());
}
