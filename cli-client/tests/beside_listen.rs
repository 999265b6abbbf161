//! `tern` commands beside a running `tern listen` for the same home: they
//! hand their work to it over `<home>/tern.sock` and print what they print
//! alone, instead of failing on the store's lock. Real binaries, a real
//! relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tern_tests::process::{ok, tern, tern_cmd, RelayProcess};

/// A `tern listen --json` child and the lines it prints.
struct Listen {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Listen {
    fn start(home: &Path) -> Self {
        let mut child = tern_cmd(home, &["listen", "--json"]).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let socket = home.join("tern.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "listen never served its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, lines }
    }

    fn next_json(&self) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("listen printed a line");
        serde_json::from_str(&line).unwrap()
    }

    /// Ctrl-C, as a person stops it.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }

    /// kill -9: no goodbye, the socket file stays behind.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

#[test]
fn commands_beside_a_running_listen_go_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b) = (dir.path().join("alice"), dir.path().join("bob"));
    ok(&a, &["init", "--relay", relay.url(), "--name", "alice"]);
    ok(&b, &["init", "--relay", relay.url(), "--name", "bob"]);
    let code = ok(&a, &["invite"]);
    ok(&b, &["accept", code.trim(), "--name", "alice"]);
    ok(&a, &["recv"]);

    let listen = Listen::start(&a);
    let mode = std::fs::metadata(a.join("tern.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // Alice writes in another terminal while she listens.
    let sent = ok(&a, &["send", "bob", "from beside listen"]);
    assert!(sent.starts_with("sent "), "{sent}");
    let json = ok(&a, &["send", "bob", "again", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["status"], "sent");
    assert!(ok(&a, &["contacts"]).starts_with("bob\t"));
    let history = ok(&a, &["history", "bob"]);
    assert!(history.contains("alice: from beside listen"), "{history}");
    let out = tern(&a, &["send", "nobody", "x"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "tern: no contact named \"nobody\"\n"
    );

    // Bob's messages reach the listening terminal.
    ok(&b, &["send", "alice", "hello listener"]);
    let m = listen.next_json();
    assert_eq!(
        (m["type"].as_str(), m["text"].as_str()),
        (Some("message"), Some("hello listener"))
    );
    // (Alice's listen answered with receipts, which Bob sees too.)
    let texts: Vec<String> = ok(&b, &["recv", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "message")
        .map(|v| v["text"].to_string())
        .collect();
    assert_eq!(texts, ["\"from beside listen\"", "\"again\""]);

    // Stopped with Ctrl-C, it removes its socket; commands run alone again.
    listen.interrupt();
    assert!(!a.join("tern.sock").exists());
    assert!(ok(&a, &["send", "bob", "alone"]).starts_with("sent "));

    // Killed, it leaves a stale socket: commands run alone, and the next
    // listen replaces it.
    let listen = Listen::start(&a);
    listen.kill();
    assert!(a.join("tern.sock").exists());
    assert!(ok(&a, &["send", "bob", "after a crash"]).starts_with("sent "));
    let listen = Listen::start(&a);
    assert!(ok(&a, &["history", "bob"]).contains("after a crash"));
    listen.interrupt();
}
