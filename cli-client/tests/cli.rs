//! The `tern` binary against a real `tern-relay` binary, as a user drives
//! them: init, invite, accept, send, recv, history, contacts, an error, and a
//! message queued while the relay is down that arrives once after it returns.
//!
//! `tern-relay` is found next to `tern` (cargo puts every binary of the
//! workspace in the same directory); `cargo test --workspace` builds it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn relay_binary() -> PathBuf {
    let tern = Path::new(env!("CARGO_BIN_EXE_tern"));
    let relay = tern
        .parent()
        .unwrap()
        .join(format!("tern-relay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        relay.exists(),
        "{} is missing: build it first (cargo build -p tern-relay, or cargo test --workspace)",
        relay.display()
    );
    relay
}

/// A `tern-relay run` process; killed when dropped, so a failing test does
/// not leave it behind.
struct Relay {
    child: Child,
    url: String,
}

impl Relay {
    fn start(data: &Path, listen: &str) -> Self {
        let mut child = Command::new(relay_binary())
            .args(["run", "--listen", listen, "--data"])
            .arg(data)
            .env_remove("TERN_RELAY_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("relay url: ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let mut relay = Self {
            child,
            url: String::new(),
        };
        relay.url = rx.recv_timeout(DEADLINE).expect("the relay printed no URL");
        relay
    }

    fn port(&self) -> u16 {
        let (_, rest) = self.url.rsplit_once(':').unwrap();
        rest.split_once('?').unwrap().0.parse().unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `tern --home HOME ARGS...` to completion within [`DEADLINE`].
fn tern(home: &Path, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TERN_HOME")
        .env_remove("TERN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("tern {args:?} did not finish");
        }
    }
}

/// Run `tern`, insist it succeeded, return its stdout.
fn ok(home: &Path, args: &[&str]) -> String {
    let out = tern(home, args);
    assert!(
        out.status.success(),
        "tern {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
    let mut relay = Relay::start(&data, "127.0.0.1:0");

    ok(&a, &["init", "--relay", &relay.url, "--name", "alice"]);
    ok(&b, &["init", "--relay", &relay.url, "--name", "bob"]);
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
    let port = relay.port();
    let url = relay.url.clone();
    relay.kill();
    let queued = ok(&b, &["send", "alice", "later"]);
    assert!(queued.starts_with("queued "), "{queued}");

    let relay = Relay::start(&data, &format!("127.0.0.1:{port}"));
    assert_eq!(relay.url, url);
    ok(&b, &["recv"]); // flushes the outbox
    let events = recv_json(&a);
    let texts: Vec<_> = events.iter().map(|e| e["text"].clone()).collect();
    assert_eq!(texts, ["later"], "{events:?}");
    assert_eq!(events[0]["from"], "bob");
    assert_eq!(ok(&a, &["recv", "--json"]), "", "delivered twice");
}
