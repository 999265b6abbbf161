//! What the CLI tests share: the real `tern-relay` as a child process that
//! dies with the test, and `tern` runs bounded in time.
//!
//! `tern-relay` is found next to `tern` (cargo puts every binary of the
//! workspace in the same directory); `cargo test --workspace` builds it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest any one step may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

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
pub struct Relay {
    child: Child,
    /// The URL it printed.
    pub url: String,
}

impl Relay {
    /// Start a relay on `listen` with its data in `data`; waits for its URL.
    pub fn start(data: &Path, listen: &str) -> Self {
        let mut child = Command::new(relay_binary())
            .args(["run", "--listen", listen, "--data"])
            .arg(data)
            .env_remove("TERN_RELAY_CONFIG")
            .env_remove("TERN_RELAY_LISTEN")
            .env_remove("TERN_RELAY_DATA")
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
        let url = rx.recv_timeout(DEADLINE).expect("the relay printed no URL");
        Self { child, url }
    }

    /// The UDP port it listens on.
    pub fn port(&self) -> u16 {
        let (_, rest) = self.url.rsplit_once(':').unwrap();
        rest.split_once('?').unwrap().0.parse().unwrap()
    }

    /// SIGKILL it and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tern --home HOME ARGS...`, with the environment cleared of Tern settings.
pub fn tern_cmd(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TERN_HOME")
        .env_remove("TERN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run `tern --home HOME ARGS...` to completion within [`DEADLINE`].
pub fn tern(home: &Path, args: &[&str]) -> Output {
    let child = tern_cmd(home, args).spawn().unwrap();
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
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = tern(home, args);
    assert!(
        out.status.success(),
        "tern {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
