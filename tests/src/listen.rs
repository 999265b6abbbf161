//! A `tern listen --json` child as a user runs it in a terminal, and the
//! JSON lines it prints ([`Listen`]): started and waited for until it
//! serves its local socket, read with a deadline, stopped with Ctrl-C.

use crate::process::tern_cmd;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a listening terminal may take to show something.
pub const SHOW_DEADLINE: Duration = Duration::from_secs(30);

/// A running `tern listen --json` and the lines it prints.
pub struct Listen {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Listen {
    /// Start it for `home` and wait until it serves `<home>/tern.sock`.
    pub fn start(home: &Path) -> Self {
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
        let deadline = Instant::now() + SHOW_DEADLINE;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "listen never served its socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, lines }
    }

    /// Lines until `done` holds for all of them; panics after
    /// [`SHOW_DEADLINE`].
    pub fn until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + SHOW_DEADLINE;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(
                    serde_json::from_str(&l)
                        .unwrap_or_else(|e| panic!("listen printed {l:?}: {e}")),
                ),
                Err(_) => panic!("listen never showed {what}; showed {got:?}"),
            }
        }
        got
    }

    /// The lines it prints within `wait` (for what must not happen).
    pub fn during(&self, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            got.push(
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("listen printed {l:?}: {e}")),
            );
        }
        got
    }

    /// Ctrl-C, as a person stops it; it must exit cleanly.
    pub fn interrupt(mut self) {
        crate::process::interrupt(&mut self.child);
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
