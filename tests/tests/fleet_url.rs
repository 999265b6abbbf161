//! A fleet's front door, as users and operators meet it (issue 17, "One
//! fleet, one address"): relays started with the same identity files
//! present the same certificate, so one fingerprint names them all; a
//! relay URL lists several addresses and invites carry that URL; clients
//! find the live address among dead ones, and a listening client whose
//! relay was SIGKILLed moves to the fleet's other address by itself,
//! with nothing lost or shown twice.
//!
//! The relays here share one store by taking turns on one data directory
//! (a relay killed on one port, its successor started on another): what
//! is tested is the client's side of a fleet. Relays sharing a store at
//! once run on Redis (tests/tests/fleet.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::time::Instant;
use tern_protocol::url::RelayUrl;
use tern_tests::listen::Listen;
use tern_tests::process::{
    free_udp_port, ok, relay_cmd, run_bounded, url_fingerprint, RelayProcess,
};

/// The identity files an operator copies to every relay of a fleet.
const IDENTITY_FILES: [&str; 3] = ["cert.der", "key.der", "reset.key"];

fn messages(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| l["text"].as_str().unwrap())
        .collect()
}

#[test]
fn relays_with_the_same_identity_files_present_one_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let a = RelayProcess::start_in(&a_data);
    std::fs::create_dir_all(&b_data).unwrap();
    for file in IDENTITY_FILES {
        std::fs::copy(a_data.join(file), b_data.join(file)).unwrap();
    }
    let b = RelayProcess::start_in(&b_data);
    assert_ne!(a.port(), b.port());
    assert_eq!(url_fingerprint(a.url()), url_fingerprint(b.url()));

    // `url --fleet` prints the one URL that names both.
    let fleet = format!("127.0.0.1:{},127.0.0.1:{}", a.port(), b.port());
    let out = run_bounded(
        relay_cmd()
            .args(["url", "--data"])
            .arg(&b_data)
            .args(["--fleet", &fleet]),
    );
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        url,
        format!("tern://{fleet}?fp={}", url_fingerprint(a.url()))
    );
    let parsed: RelayUrl = url.parse().unwrap();
    assert_eq!(parsed.addrs().len(), 2);

    // A client pinning that fingerprint registers on either relay.
    for (name, port) in [("via-a", a.port()), ("via-b", b.port())] {
        let home = dir.path().join(name);
        let one = format!("tern://127.0.0.1:{port}?fp={}", url_fingerprint(a.url()));
        ok(&home, &["init", "--relay", &one, "--name", name]);
    }
}

fn init(home: &Path, url: &str, name: &str) {
    ok(home, &["init", "--relay", url, "--name", name]);
}

#[test]
fn a_listening_client_moves_to_the_fleets_other_address_when_its_relay_dies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let (first, second) = (free_udp_port(), free_udp_port());
    let mut relay = RelayProcess::start_on(&data, first);
    let fleet = format!(
        "tern://127.0.0.1:{first},127.0.0.1:{second}?fp={}",
        url_fingerprint(relay.url())
    );
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    init(&alice, &fleet, "alice");
    init(&bob, &fleet, "bob");

    // The invite carries the fleet URL, every address of it.
    let code = ok(&alice, &["invite"]);
    let invite = tern_protocol::invite::decode_invite(code.trim()).unwrap();
    assert_eq!(invite.address.unwrap().relay_url, fleet);
    ok(&bob, &["accept", code.trim(), "--name", "alice"]);

    let listening = Listen::start(&alice);
    let mut shown = listening.until("the introduction", |l| {
        l.iter().any(|v| v["type"] == "contact")
    });
    ok(&bob, &["send", "alice", "before"]);
    shown.extend(listening.until("the first message", |l| messages(l) == ["before"]));

    // The relay dies without a word; the fleet's other address comes up
    // on the same store. Bob's send finds it past the dead address, and
    // Alice's listen notices and moves there by itself.
    relay.kill();
    let killed = Instant::now();
    let _successor = RelayProcess::start_on(&data, second);
    ok(&bob, &["send", "alice", "after"]);
    shown.extend(listening.until("the message sent after the kill", |l| {
        messages(l).contains(&"after")
    }));
    eprintln!(
        "alice showed the message {:?} after the kill",
        killed.elapsed()
    );
    ok(&bob, &["send", "alice", "later"]);
    shown.extend(listening.until("a later message", |l| messages(l).contains(&"later")));
    assert_eq!(
        messages(&shown),
        ["before", "after", "later"],
        "every message shown once, in order"
    );
    listening.interrupt();

    // Alice's history agrees, and nothing waits at the relay.
    let history = ok(&alice, &["history", "bob"]);
    for text in ["before", "after", "later"] {
        assert_eq!(history.matches(text).count(), 1, "{history}");
    }
    assert!(ok(&alice, &["recv", "--json"]).trim().is_empty());
}
