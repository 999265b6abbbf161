//! Blocking is invisible: after Bob blocks Alice, her `tern send` exits as
//! sent, exactly as before, and the message never reaches Bob; Carol, whom
//! Bob did not block, still gets through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tern_tests::process::{ok, received, RelayProcess};

#[test]
fn a_blocked_contacts_send_exits_as_sent_and_is_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    let relay = RelayProcess::start();
    for (home, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        ok(home, &["init", "--relay", relay.url(), "--name", name]);
    }
    for who in [&a, &c] {
        let code = ok(&b, &["invite"]);
        ok(who, &["accept", code.trim(), "--name", "bob"]);
        ok(&b, &["recv"]);
    }
    ok(&a, &["send", "bob", "before"]);
    assert_eq!(received(&b), [("alice".into(), "before".into())]);

    ok(&b, &["block", "alice"]);
    let sent = ok(&a, &["send", "bob", "after the block"]);
    assert!(sent.starts_with("sent "), "the sender cannot tell: {sent}");
    let history = ok(&a, &["history", "bob"]);
    let last = history.lines().last().unwrap();
    assert!(
        last.ends_with("alice: after the block"),
        "neither queued nor failed: {history}"
    );
    ok(&c, &["send", "bob", "carol still"]);
    assert_eq!(
        received(&b),
        [("carol".to_string(), "carol still".to_string())],
        "the blocked message never arrives; the other contact's does"
    );
    assert!(received(&b).is_empty());
}
