//! Linking devices with the `tern` binary, for the tests of several
//! devices per account: [`link`] runs `tern device link` on an existing
//! device and `tern init --link` on a new one, [`listen`] starts a
//! `tern listen` and waits for its socket, [`Lines`] reads a child's
//! output a line at a time with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::process::{ok, tern_cmd, RelayProcess};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// How long a `tern device link` may take to print its next line.
pub const LINE_DEADLINE: Duration = Duration::from_secs(60);

/// The lines a child prints, one at a time, with a deadline each.
pub struct Lines {
    /// The child process.
    pub child: Child,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    /// Start `tern ARGS` in `home`, reading its stdout.
    pub fn spawn(home: &Path, args: &[&str]) -> Self {
        let mut child = tern_cmd(home, args).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, rx }
    }

    /// Its next line (panics after [`LINE_DEADLINE`]).
    pub fn next_line(&mut self) -> String {
        self.rx
            .recv_timeout(LINE_DEADLINE)
            .unwrap_or_else(|e| panic!("no line from tern device link: {e}"))
    }

    /// Wait for it to exit, insisting it succeeded.
    pub fn finish(mut self) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "tern device link failed: {err}");
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Link a new device in `new` (its home relay `relay`) to the account in
/// `existing`, both confirming with --yes; returns the new device's id.
pub fn link(existing: &Path, new: &Path, relay: &RelayProcess, name: &str) -> String {
    let mut offer = Lines::spawn(existing, &["device", "link", "--yes", "--timeout", "120"]);
    let code = offer.next_line();
    assert!(code.starts_with("ternlink1"), "{code}");
    let joined = ok(
        new,
        &[
            "init",
            "--link",
            &code,
            "--yes",
            "--name",
            name,
            "--relay",
            relay.url(),
        ],
    );
    let check = offer.next_line();
    assert!(check.starts_with("check code: "), "{check}");
    assert_eq!(check.len(), "check code: ".len() + 6);
    assert!(joined.contains(&check), "both sides show {check}: {joined}");
    let linked = offer.next_line();
    offer.finish();
    assert!(
        joined
            .lines()
            .any(|l| l.starts_with("account ") && l.contains(" linked in ")),
        "{joined}"
    );
    linked
        .strip_prefix("linked device ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("{linked}"))
        .to_string()
}

/// A `tern listen --json` child, once it serves its socket.
pub fn listen(home: &Path) -> Lines {
    let l = Lines::spawn(home, &["listen", "--json"]);
    let deadline = std::time::Instant::now() + LINE_DEADLINE;
    while std::os::unix::net::UnixStream::connect(home.join("tern.sock")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "listen never served its socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    l
}

impl Lines {
    /// Ctrl-C, as a person stops it.
    pub fn interrupt(mut self) {
        crate::process::interrupt(&mut self.child);
    }
}
