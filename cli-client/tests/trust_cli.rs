//! The `tern` commands for trust, as a user drives them against a real
//! `tern-relay`: `invite --expires/--list/--revoke`, `verify` (the safety
//! number both sides see, `--mark`, a key change that stops sends until
//! `--confirm`, `contacts --json`'s `verified`), and a passphrase-protected
//! home (`init --passphrase`, `TERN_PASSPHRASE`, `--passphrase-file`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tern_tests::process::{ok, run_bounded, tern, tern_cmd, RelayProcess};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn invites(home: &Path) -> Vec<Value> {
    json_lines(&ok(home, &["invite", "--list", "--json"]))
}

fn stderr_of(home: &Path, args: &[&str]) -> String {
    let out = tern(home, args);
    assert!(!out.status.success(), "tern {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn invites_expire_and_are_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b, c) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    for (home, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        ok(home, &["init", "--relay", relay.url(), "--name", name]);
    }
    // About a second.
    let short = ok(&a, &["invite", "--expires", "0.00001"]);
    let revoked = ok(&a, &["invite"]);
    let list = invites(&a);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["state"], "outstanding");
    let id = list[1]["id"].as_str().unwrap().to_string();
    assert_eq!(
        ok(&a, &["invite", "--revoke", &id]).trim(),
        format!("revoked invite {id}")
    );
    assert!(stderr_of(&a, &["invite", "--revoke", "nope"]).contains("no invite with id"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while invites(&a)[0]["state"] != "expired" {
        assert!(Instant::now() < deadline, "the short invite never expired");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bob accepts the expired invite, Carol the revoked one: Alice gets
    // neither as a contact.
    ok(&b, &["accept", short.trim(), "--name", "alice"]);
    let _ = tern(&c, &["accept", revoked.trim(), "--name", "alice"]);
    assert_eq!(ok(&a, &["recv", "--json"]), "");
    assert_eq!(ok(&a, &["contacts"]), "");

    let list = invites(&a);
    let states: Vec<&str> = list.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["expired", "revoked"]);
    // Both tokens are revoked at the relay by now (the recv was a chance).
    assert!(list.iter().all(|r| r["token_revoked"] == true), "{list:?}");
    let human = ok(&a, &["invite", "--list"]);
    assert!(
        human.lines().nth(1).unwrap().contains("\trevoked\t"),
        "{human}"
    );
}

#[test]
fn verify_shows_one_safety_number_and_a_key_change_stops_sends() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b, b2) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("bob-new"),
    );
    for (home, name) in [(&a, "alice"), (&b, "bob"), (&b2, "bob")] {
        ok(home, &["init", "--relay", relay.url(), "--name", name]);
    }
    let code = ok(&b, &["invite"]);
    ok(&a, &["accept", code.trim(), "--name", "bob"]);
    ok(&b, &["recv"]);

    let at_alice = ok(&a, &["verify", "bob"]);
    let at_bob = ok(&b, &["verify", "alice"]);
    assert_eq!(at_alice, at_bob);
    let groups: Vec<&str> = at_alice.trim().split(' ').collect();
    assert_eq!(groups.len(), 12, "{at_alice}");
    assert!(groups
        .iter()
        .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
    let qr = ok(&a, &["verify", "bob", "--qr"]);
    assert!(qr.lines().count() > 10, "{qr}");

    let verified =
        |home: &Path| json_lines(&ok(home, &["contacts", "--json"]))[0]["verified"].clone();
    assert_eq!(verified(&a), false);
    ok(&a, &["verify", "bob", "--mark"]);
    assert_eq!(verified(&a), true);

    // Bob's new device invites Alice, who accepts it under the same name:
    // Bob's key changed, so sends to him stop until she confirms.
    let code = ok(&b2, &["invite"]);
    let out = tern(&a, &["accept", code.trim(), "--name", "bob"]);
    assert!(out.status.success());
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(warned.contains("bob's identity key changed"), "{warned}");
    assert_eq!(verified(&a), false);
    let err = stderr_of(&a, &["send", "bob", "hello"]);
    assert!(err.contains("identity key changed"), "{err}");
    assert_ne!(ok(&a, &["verify", "bob"]), at_alice);
    ok(&a, &["verify", "bob", "--confirm"]);
    assert_eq!(verified(&a), true);
    assert!(ok(&a, &["send", "bob", "hello"]).starts_with("sent "));
    let got = json_lines(&ok(&b2, &["recv", "--json"]));
    let texts: Vec<&Value> = got.iter().filter(|e| e["type"] == "message").collect();
    assert_eq!(texts.len(), 1, "{got:?}");
    assert_eq!(texts[0]["text"], "hello");
}

#[test]
fn a_passphrase_protects_the_store_key() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let home = dir.path().join("alice");
    let with_env = |args: &[&str], pass: &str| {
        let mut cmd = tern_cmd(&home, args);
        cmd.env("TERN_PASSPHRASE", pass);
        run_bounded(&mut cmd)
    };
    // --passphrase with no passphrase given is refused, and makes nothing.
    let err = stderr_of(
        &home,
        &[
            "init",
            "--relay",
            relay.url(),
            "--name",
            "alice",
            "--passphrase",
        ],
    );
    assert!(err.contains("TERN_PASSPHRASE"), "{err}");
    let out = with_env(
        &[
            "init",
            "--relay",
            relay.url(),
            "--name",
            "alice",
            "--passphrase",
        ],
        "correct horse",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_file = std::fs::read(home.join("store.key")).unwrap();
    assert!(key_file.starts_with(b"TERNPW1"), "the key is not wrapped");

    let err = stderr_of(&home, &["contacts"]);
    assert!(err.contains("protected by a passphrase"), "{err}");
    let out = with_env(&["contacts"], "wrong");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_env(&["invite"], "correct horse");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("pass");
    std::fs::write(&file, "correct horse\n").unwrap();
    let listed = ok(
        &home,
        &[
            "--passphrase-file",
            file.to_str().unwrap(),
            "invite",
            "--list",
        ],
    );
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // Changed, then removed; the old one no longer opens it.
    let mut change = tern_cmd(&home, &["passphrase"]);
    change
        .env("TERN_PASSPHRASE", "correct horse")
        .env("TERN_NEW_PASSPHRASE", "battery staple");
    assert!(run_bounded(&mut change).status.success());
    let out = with_env(&["contacts"], "correct horse");
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    let out = with_env(&["passphrase", "--remove"], "battery staple");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(home.join("store.key")).unwrap().len(), 32);
    assert_eq!(ok(&home, &["invite", "--list"]).lines().count(), 1);
    // And an unprotected home can be given one.
    let out = with_env(
        &[
            "--passphrase-file",
            file.to_str().unwrap(),
            "passphrase",
            "--new-passphrase-file",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stderr_of(&home, &["contacts"]).contains("protected by a passphrase"));
}

/// Beside a running `tern listen`, the trust commands are handed to it over
/// the socket and print what they print alone.
#[test]
fn trust_commands_work_beside_a_running_listen() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    for (home, name) in [(&a, "alice"), (&b, "bob")] {
        ok(home, &["init", "--relay", relay.url(), "--name", name]);
    }
    let code = ok(&a, &["invite"]);
    ok(&b, &["accept", code.trim(), "--name", "alice"]);
    ok(&a, &["recv"]);
    let number = ok(&b, &["verify", "alice"]);

    let mut listen = tern_cmd(&a, &["listen", "--json"]).spawn().unwrap();
    let socket = a.join("tern.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "listen never served its socket");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!(ok(&a, &["verify", "bob"]), number);
    ok(&a, &["verify", "bob", "--mark"]);
    let contacts = json_lines(&ok(&a, &["contacts", "--json"]));
    assert_eq!(contacts[0]["verified"], true, "{contacts:?}");
    let code = ok(&a, &["invite", "--expires", "1"]);
    assert!(code.starts_with("tern1"), "{code}");
    let list = invites(&a);
    assert_eq!(list.len(), 2, "{list:?}");
    let id = list[1]["id"].as_str().unwrap().to_string();
    assert_eq!(
        ok(&a, &["invite", "--revoke", &id]).trim(),
        format!("revoked invite {id}")
    );
    assert_eq!(invites(&a)[1]["state"], "revoked");
    assert!(ok(&a, &["rotate", "bob"]).contains("new token"));

    let pid = listen.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(listen.wait().unwrap().success());

    // Bob took the new token (from the rotation) and still reaches Alice.
    ok(&b, &["recv"]);
    assert!(ok(&b, &["send", "alice", "after the rotation"]).starts_with("sent "));
    let got = json_lines(&ok(&a, &["recv", "--json"]));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "after the rotation");
}
