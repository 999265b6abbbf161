//! Direct paths from the command line (issue 18), with `tern` and
//! `tern-relay` processes:
//!
//! - on loopback, two `tern listen --json` print a `path` line when the
//!   path opens, `tern send` handed to a running listen goes over it,
//!   `contacts --json` and `status CONTACT` show it, and when one listen is
//!   killed (SIGKILL) the path closes and what follows arrives through the
//!   relay once the other side is back; `settings direct` reads and sets
//!   the mode with and without a listen;
//! - through NAT, in network namespaces the test builds (`ip netns`, veth
//!   pairs, iptables MASQUERADE; relay in one namespace, each client behind
//!   a NAT of its own, private addresses only): with endpoint-independent
//!   NATs the path opens; with a symmetric NAT on one side (MASQUERADE
//!   --random-fully) it does not, and messages still arrive through the
//!   relay. These need root and `ip netns`; they say so and pass without
//!   running elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tern_tests::process::{binary, clear_tern_env, run_bounded, Binary, RelayProcess};

/// How long a listening client may take to show something.
const SHOW_DEADLINE: Duration = Duration::from_secs(60);

/// `tern` run in network namespace `ns` (none: this one).
fn tern_in(ns: Option<&str>, home: &Path, args: &[&str]) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary(Binary::Tern));
            c
        }
        None => Command::new(binary(Binary::Tern)),
    };
    cmd.arg("--home").arg(home).args(args);
    clear_tern_env(&mut cmd)
        .env("TERN_SEND_SPACING_MS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn ok_in(ns: Option<&str>, home: &Path, args: &[&str]) -> String {
    let out = run_bounded(&mut tern_in(ns, home, args));
    assert!(
        out.status.success(),
        "tern {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Alice and Bob (in namespaces `na` and `nb`), contacts of each other.
fn contacts(dir: &Path, url: &str, na: Option<&str>, nb: Option<&str>) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("alice"), dir.join("bob"));
    ok_in(na, &a, &["init", "--relay", url, "--name", "alice"]);
    ok_in(nb, &b, &["init", "--relay", url, "--name", "bob"]);
    let code = ok_in(na, &a, &["invite"]);
    ok_in(nb, &b, &["accept", code.trim(), "--name", "alice"]);
    let hello = ok_in(na, &a, &["recv", "--json"]);
    assert!(hello.contains("\"contact\""), "{hello}");
    (a, b)
}

/// A `tern listen --json` child and the lines it prints.
struct Listen {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    /// Its debug log (`TERN_LOG`), shown when a wait fails.
    log: PathBuf,
}

impl Listen {
    fn start(ns: Option<&str>, home: &Path) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = home.with_extension(format!("listen-{}.log", N.fetch_add(1, Ordering::SeqCst)));
        let mut child = tern_in(ns, home, &["listen", "--json"])
            .env(
                "TERN_LOG",
                "debug,quinn=info,quinn_proto=info,rustls=info,sled=info",
            )
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send(v).is_err() {
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
        Self {
            child,
            lines,
            seen: Vec::new(),
            log,
        }
    }

    /// Read lines until `done` holds for everything seen; panics after
    /// `wait`.
    fn until(&mut self, what: &str, wait: Duration, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + wait;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(60).collect();
                    panic!(
                        "listen never showed {what}; showed {:?}\nits log ends:\n{}",
                        self.seen,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                }
            }
        }
    }

    /// Everything printed within `wait` from now (for what must not come).
    fn drain_for(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v);
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| l["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn paths<'a>(lines: &'a [Value], state: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "path" && l["state"] == state)
        .collect()
}

/// `tern status CONTACT --json` as seen by a running listen.
fn direct_status(home: &Path, contact: &str) -> Value {
    serde_json::from_str(ok_in(None, home, &["status", contact, "--json"]).trim()).unwrap()
}

#[test]
fn listening_clients_go_direct_and_fall_back_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b) = contacts(dir.path(), relay.url(), None, None);
    let mut alice = Listen::start(None, &a);
    let mut bob = Listen::start(None, &b);

    // Through the relay first; then both sides print the path opening.
    ok_in(None, &a, &["send", "bob", "first"]);
    bob.until("the first message", SHOW_DEADLINE, |l| texts(l).len() == 1);
    bob.until("the path", SHOW_DEADLINE, |l| !paths(l, "open").is_empty());
    alice.until("the path", SHOW_DEADLINE, |l| !paths(l, "open").is_empty());
    let open = paths(&alice.seen, "open")[0].clone();
    assert_eq!(open["contact"], "bob");
    assert!(open["rtt_ms"].is_u64(), "{open}");

    let st = direct_status(&a, "bob");
    assert_eq!(st["direct"], true, "{st}");
    assert!(st["rtt_ms"].is_u64(), "{st}");
    let contacts: Value =
        serde_json::from_str(ok_in(None, &a, &["contacts", "--json"]).trim()).unwrap();
    assert_eq!(contacts["name"], "bob");
    assert_eq!(contacts["direct"], true);

    // `tern send` handed to the running listen goes over the path.
    for i in 0..20 {
        ok_in(None, &a, &["send", "bob", &format!("direct {i}")]);
    }
    bob.until("20 direct messages", SHOW_DEADLINE, |l| {
        texts(l).len() == 21
    });

    // Bob killed: the path closes for alice, and what she sends next goes
    // through the relay; bob back has everything once.
    bob.kill();
    alice.until("the path closing", SHOW_DEADLINE, |l| {
        !paths(l, "closed").is_empty()
    });
    for i in 0..10 {
        ok_in(None, &a, &["send", "bob", &format!("relayed {i}")]);
    }
    assert_eq!(direct_status(&a, "bob")["direct"], false);
    let mut bob = Listen::start(None, &b);
    bob.until("10 relayed messages", SHOW_DEADLINE, |l| {
        texts(l).len() == 10
    });
    let history = ok_in(None, &b, &["history", "alice", "--limit", "1000", "--json"]);
    let stored: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut all: Vec<&str> = stored.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(all.len(), 31, "{all:?}");
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 31, "a message stored twice");

    // `tern settings direct`, through the running listen and alone.
    assert_eq!(ok_in(None, &a, &["settings", "direct"]), "direct on\n");
    assert_eq!(
        ok_in(None, &a, &["settings", "direct", "off"]),
        "direct off\n"
    );
    drop(alice);
    assert_eq!(ok_in(None, &a, &["settings", "direct"]), "direct off\n");
    assert_eq!(
        ok_in(None, &a, &["settings", "direct", "verified"]),
        "direct verified\n"
    );
    let bad = run_bounded(&mut tern_in(None, &a, &["settings", "direct", "maybe"]));
    assert!(!bad.status.success());
}

/// Presence alone opens a path (issue 18 with issue 16): two listening
/// contacts who have not written to each other since they met see each
/// other come online, offer, and the path opens with no message sent.
#[test]
fn listening_contacts_open_a_path_when_presence_says_they_are_online() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b) = contacts(dir.path(), relay.url(), None, None);
    let mut alice = Listen::start(None, &a);
    let mut bob = Listen::start(None, &b);
    alice.until("bob online", SHOW_DEADLINE, |l| {
        l.iter()
            .any(|v| v["type"] == "presence" && v["contact"] == "bob" && v["online"] == true)
    });
    alice.until("the path", SHOW_DEADLINE, |l| !paths(l, "open").is_empty());
    bob.until("the path", SHOW_DEADLINE, |l| !paths(l, "open").is_empty());
    assert!(texts(&alice.seen).is_empty(), "{:?}", alice.seen);
    assert!(texts(&bob.seen).is_empty(), "{:?}", bob.seen);
    assert_eq!(direct_status(&a, "bob")["direct"], true);
}

/// Unique, short names for this run's namespaces and links.
fn prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "td{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A relay namespace ("wan", 172.31.{1,2}.1) and, per side i = 1, 2, a NAT
/// namespace (172.31.i.2 outside, 10.231.i.1 inside, MASQUERADE) and a
/// client namespace (10.231.i.2). Removed on drop.
struct Nat {
    wan: String,
    clients: [String; 2],
    all: Vec<String>,
}

impl Nat {
    /// `symmetric_a`: side 1's NAT maps every 5-tuple to a random port.
    fn build(symmetric_a: bool) -> Result<Self, String> {
        let p = prefix();
        let wan = format!("{p}w");
        let mut nat = Nat {
            wan: wan.clone(),
            clients: [format!("{p}c1"), format!("{p}c2")],
            all: Vec::new(),
        };
        sh(&["ip", "netns", "add", &wan])?;
        nat.all.push(wan.clone());
        let ex = |ns: &str, args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", ns];
            full.extend_from_slice(args);
            sh(&full)
        };
        ex(&wan, &["ip", "link", "set", "lo", "up"])?;
        ex(&wan, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for i in 1..=2 {
            let (router, client) = (format!("{p}n{i}"), format!("{p}c{i}"));
            for ns in [&router, &client] {
                sh(&["ip", "netns", "add", ns])?;
                nat.all.push(ns.clone());
                ex(ns, &["ip", "link", "set", "lo", "up"])?;
            }
            let (w, n, l, c) = (
                format!("{p}w{i}"),
                format!("{p}o{i}"),
                format!("{p}l{i}"),
                format!("{p}i{i}"),
            );
            sh(&["ip", "link", "add", &w, "type", "veth", "peer", "name", &n])?;
            sh(&["ip", "link", "set", &w, "netns", &wan])?;
            sh(&["ip", "link", "set", &n, "netns", &router])?;
            sh(&["ip", "link", "add", &l, "type", "veth", "peer", "name", &c])?;
            sh(&["ip", "link", "set", &l, "netns", &router])?;
            sh(&["ip", "link", "set", &c, "netns", &client])?;
            let outside = format!("172.31.{i}");
            let inside = format!("10.231.{i}");
            ex(
                &wan,
                &["ip", "addr", "add", &format!("{outside}.1/24"), "dev", &w],
            )?;
            ex(&wan, &["ip", "link", "set", &w, "up"])?;
            ex(
                &router,
                &["ip", "addr", "add", &format!("{outside}.2/24"), "dev", &n],
            )?;
            ex(&router, &["ip", "link", "set", &n, "up"])?;
            ex(
                &router,
                &["ip", "addr", "add", &format!("{inside}.1/24"), "dev", &l],
            )?;
            ex(&router, &["ip", "link", "set", &l, "up"])?;
            ex(
                &router,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{outside}.1"),
                ],
            )?;
            ex(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            let mut masq = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                &n,
                "-j",
                "MASQUERADE",
            ];
            if symmetric_a && i == 1 {
                masq.push("--random-fully");
            }
            ex(&router, &masq)?;
            // Like a home router, drop what nobody inside asked for. (A
            // dropped packet leaves no conntrack entry behind; one that
            // reached the router's own stack would, and Linux would then
            // map the inside's later packets to that peer to another
            // port, closing the hole it punches.)
            let drop_new = [
                "iptables",
                "-A",
                "INPUT",
                "-i",
                &n,
                "-p",
                "udp",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "DROP",
            ];
            ex(&router, &drop_new)?;
            ex(
                &client,
                &["ip", "addr", "add", &format!("{inside}.2/24"), "dev", &c],
            )?;
            ex(&client, &["ip", "link", "set", &c, "up"])?;
            ex(
                &client,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{inside}.1"),
                ],
            )?;
        }
        Ok(nat)
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        for ns in self.all.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// The namespaces, or why this machine cannot build them (not root, no
/// `ip netns`, no iptables).
fn nat_or_skip(symmetric_a: bool, test: &str) -> Option<Nat> {
    // SAFETY-free check for root: `id -u`.
    let uid = Command::new("id").arg("-u").output().ok();
    let root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        eprintln!("{test}: SKIPPED — needs root to build network namespaces (ip netns, iptables)");
        return None;
    }
    match Nat::build(symmetric_a) {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("{test}: SKIPPED — cannot build network namespaces: {e}");
            None
        }
    }
}

fn relay_in(nat: &Nat, data: &Path) -> RelayProcess {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &nat.wan])
        .arg(binary(Binary::Relay))
        .args(["run", "--listen", "172.31.1.1:0", "--data"])
        .arg(data);
    clear_tern_env(&mut cmd).stdin(Stdio::null());
    RelayProcess::start_cmd(cmd, data)
}

#[test]
fn behind_endpoint_independent_nats_the_path_opens() {
    let Some(nat) = nat_or_skip(false, "behind_endpoint_independent_nats_the_path_opens") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_in(&nat, &dir.path().join("relay"));
    let (na, nb) = (Some(nat.clients[0].as_str()), Some(nat.clients[1].as_str()));
    let (a, b) = contacts(dir.path(), relay.url(), na, nb);
    let mut alice = Listen::start(na, &a);
    let mut bob = Listen::start(nb, &b);
    ok_in(None, &a, &["send", "bob", "first"]);
    bob.until("the first message", SHOW_DEADLINE, |l| texts(l).len() == 1);
    // Printed, not asserted (a figure for docs/performance.md): from bob
    // showing the first message (both online, bob offers) to both paths.
    let shown = Instant::now();
    bob.until("the path", SHOW_DEADLINE, |l| !paths(l, "open").is_empty());
    alice.until("the path", SHOW_DEADLINE, |l| !paths(l, "open").is_empty());
    eprintln!(
        "path open through the NATs {:?} after the first message showed",
        shown.elapsed()
    );
    assert_eq!(direct_status(&a, "bob")["direct"], true);
    for i in 0..10 {
        ok_in(None, &a, &["send", "bob", &format!("direct {i}")]);
    }
    bob.until("10 direct messages", SHOW_DEADLINE, |l| {
        texts(l).len() == 11
    });
}

#[test]
fn behind_a_symmetric_nat_messages_still_arrive_through_the_relay() {
    let Some(nat) = nat_or_skip(
        true,
        "behind_a_symmetric_nat_messages_still_arrive_through_the_relay",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = relay_in(&nat, &dir.path().join("relay"));
    let (na, nb) = (Some(nat.clients[0].as_str()), Some(nat.clients[1].as_str()));
    let (a, b) = contacts(dir.path(), relay.url(), na, nb);
    let mut alice = Listen::start(na, &a);
    let mut bob = Listen::start(nb, &b);
    ok_in(None, &a, &["send", "bob", "first"]);
    bob.until("the first message", SHOW_DEADLINE, |l| texts(l).len() == 1);
    // The offers cross and both sides dial for 8 s; no path can open.
    // What must not come is waited for past the dialing.
    alice.drain_for(Duration::from_secs(12));
    assert!(paths(&alice.seen, "open").is_empty(), "{:?}", alice.seen);
    assert_eq!(direct_status(&a, "bob")["direct"], false);
    for i in 0..10 {
        ok_in(None, &a, &["send", "bob", &format!("relayed {i}")]);
    }
    bob.until("10 relayed messages", SHOW_DEADLINE, |l| {
        texts(l).len() == 11
    });
    bob.drain_for(Duration::from_millis(1));
    assert!(paths(&bob.seen, "open").is_empty(), "{:?}", bob.seen);
}
