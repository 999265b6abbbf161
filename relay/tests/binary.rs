//! The `tern-relay` binary as an operator runs it: it prints its URL, `url`
//! prints the same one from the data directory, and SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn relay_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-relay"));
    cmd.env_remove("TERN_RELAY_LISTEN")
        .env_remove("TERN_RELAY_DATA")
        .env_remove("TERN_RELAY_CONFIG");
    cmd
}

/// Kills the relay if the test ends early.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(data: &Path) -> Self {
        let mut child = relay_cmd()
            .args(["run", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The URL from the `relay url: ...` line.
    fn url(&self) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("the relay printed no URL");
            if let Some(url) = line.strip_prefix("relay url: ") {
                return url.to_string();
            }
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the relay did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `tern://127.0.0.1:PORT?fp=HEX` with a real port and 64 hex digits.
fn port_of(url: &str) -> u16 {
    let rest = url.strip_prefix("tern://127.0.0.1:").expect(url);
    let (port, fp) = rest.split_once("?fp=").expect(url);
    assert_eq!(fp.len(), 64, "{url}");
    assert!(
        fp.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{url}"
    );
    let port: u16 = port.parse().expect(url);
    assert_ne!(port, 0, "{url}");
    port
}

fn run_to_end(cmd: &mut Command) -> Output {
    let child = cmd
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
            panic!("{cmd:?} did not finish");
        }
    }
}

#[test]
fn run_prints_its_url_url_agrees_and_sigterm_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let mut relay = Running::start(data.path());
    let url = relay.url();
    let port = port_of(&url);

    let out = run_to_end(
        relay_cmd()
            .args(["url", "--data"])
            .arg(data.path())
            .args(["--listen", &format!("127.0.0.1:{port}")]),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), url);

    let pid = relay.child.id().to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    let status = relay.wait();
    assert!(status.success(), "exit after SIGTERM: {status:?}");

    // The same data gives the same identity on the next start.
    let mut again = Running::start(data.path());
    let url2 = again.url();
    assert_eq!(
        url2.split_once("?fp=").unwrap().1,
        url.split_once("?fp=").unwrap().1
    );
    let pid = again.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(again.wait().success());
}

#[test]
fn url_without_relay_data_fails() {
    let empty = tempfile::tempdir().unwrap();
    let out = run_to_end(relay_cmd().args(["url", "--data"]).arg(empty.path()));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());
}
