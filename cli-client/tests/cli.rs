//! The `tern` binary against a real `tern-relay` binary, as a user drives
//! them: init, invite, accept, send, recv, history, contacts, an error, and a
//! message queued while the relay is down that arrives once after it returns.
//!
//! The processes come from [`tern_tests::process`], which finds (and
//! builds) both binaries and clears the environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tern_tests::process::{ok, tern, RelayProcess};

use serde_json::Value;
use std::path::Path;

/// Run `tern ... recv --json` and parse its lines.
fn recv_json(home: &Path) -> Vec<Value> {
    ok(home, &["recv", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn two_users_chat_through_the_binaries_and_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    let mut relay = RelayProcess::start_in(&data);

    ok(&a, &["init", "--relay", relay.url(), "--name", "alice"]);
    ok(&b, &["init", "--relay", relay.url(), "--name", "bob"]);
    let code = ok(&a, &["invite"]);
    assert_eq!(code.lines().count(), 1, "{code:?}");
    let code = code.trim();
    assert!(code.starts_with("tern1"), "{code}");
    let added = ok(&b, &["accept", code, "--name", "alice"]);
    assert!(added.contains("alice"), "{added}");

    let events = recv_json(&a);
    assert_eq!(
        events,
        [serde_json::json!({"type": "contact", "name": "bob"})]
    );

    let sent = ok(&b, &["send", "alice", "hello"]);
    let id = sent
        .trim()
        .strip_prefix("sent ")
        .unwrap_or_else(|| panic!("{sent:?}"))
        .to_string();
    assert_eq!(id.len(), 32, "{id}");

    let events = recv_json(&a);
    assert_eq!(events.len(), 1, "{events:?}");
    let m = &events[0];
    assert_eq!(m["type"], "message");
    assert_eq!(m["from"], "bob");
    assert_eq!(m["text"], "hello");
    assert_eq!(m["id"], id.as_str());
    assert!(m["sent_at"].is_string(), "{m}");
    assert_eq!(ok(&a, &["recv", "--json"]), "", "delivered twice");

    let history = ok(&a, &["history", "bob"]);
    assert_eq!(history.lines().count(), 1, "{history}");
    assert!(history.trim_end().ends_with("bob: hello"), "{history}");
    let contacts = ok(&a, &["contacts"]);
    assert_eq!(contacts.lines().count(), 1, "{contacts}");
    assert!(contacts.starts_with("bob\t"), "{contacts}");

    let out = tern(&a, &["send", "nobody", "hi"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("tern:"), "{err}");

    // The relay dies (SIGKILL, no goodbye); Bob's message waits on his disk.
    relay.kill();
    let queued = ok(&b, &["send", "alice", "later"]);
    assert!(queued.starts_with("queued "), "{queued}");

    // Back on the same port and data, with the same URL.
    relay.restart();
    ok(&b, &["recv"]); // flushes the outbox
    let events = recv_json(&a);
    let texts: Vec<_> = events.iter().map(|e| e["text"].clone()).collect();
    assert_eq!(texts, ["later"], "{events:?}");
    assert_eq!(events[0]["from"], "bob");
    assert_eq!(ok(&a, &["recv", "--json"]), "", "delivered twice");
}
