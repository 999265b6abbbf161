//! Crash safety of the relay: a real `tern-relay` process under a steady load
//! of sends (Alice) and receives with acks (Bob) is killed with SIGKILL at
//! random moments, 25 times, and restarted on the same port and data. At the
//! end every send the relay acknowledged has reached Bob's store exactly once,
//! everything Alice queued arrives once her outbox is flushed, nothing shows
//! twice, and every restart opened the data and came up with the same URL.
//!
//! `tern-relay` is found next to this test's executable (cargo puts every
//! binary of the workspace in `target/<profile>/`); `cargo test --workspace`
//! builds it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::Rng;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tern_client::{Event, SendOutcome, Status};
use tern_protocol::url::RelayUrl;
use tern_tests::{befriend, TestUser};

/// SIGKILLs of the relay in one run.
const KILLS: usize = 25;
/// How long a killed relay may take to come back with its URL.
const RESTART_DEADLINE: Duration = Duration::from_secs(20);
/// Starts that fail (the previous process's lock or socket still held) are
/// retried this often at most, per restart.
const START_ATTEMPTS: usize = 50;
/// Upper bound on Alice's sends, whatever the timing.
const MAX_SENDS: usize = 5_000;
/// One `send_text` longer than this is abandoned (its message stays in the
/// outbox and must still arrive once). A send the relay dies under waits for
/// the QUIC idle timeout otherwise.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Likewise for one `receive`.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the final flush and the final receiving may take, each.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/crash-HASH -> target/<profile>/tern-relay
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let relay = dir.join(format!("tern-relay{}", std::env::consts::EXE_SUFFIX));
    assert!(
        relay.exists(),
        "{} is missing: build it first (cargo build -p tern-relay, or cargo test --workspace)",
        relay.display()
    );
    relay
}

/// A free UDP port on 127.0.0.1 (bound, read, released), so every restart
/// can listen on the same address the clients registered with.
fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// A `tern-relay run` process; killed (and reaped) when dropped.
struct RelayProcess {
    child: Child,
    url: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why one start attempt gave no URL.
enum StartFailure {
    /// The process exited; what it wrote to stderr.
    Exited(String),
    /// It printed nothing in time.
    Silent,
}

fn start_once(data: &Path, port: u16) -> Result<RelayProcess, StartFailure> {
    let mut child = Command::new(relay_binary())
        .args(["run", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env_remove("TERN_RELAY_CONFIG")
        .env_remove("TERN_RELAY_LISTEN")
        .env_remove("TERN_RELAY_DATA")
        .env_remove("TERN_RELAY_PUBLIC_HOST")
        .env_remove("TERN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("relay url: ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    // The relay logs to stderr; keep the tail for a failed start's report.
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        let _ = err_tx.send(tail);
    });
    let mut relay = RelayProcess {
        child,
        url: String::new(),
    };
    let deadline = Instant::now() + RESTART_DEADLINE;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(url) => {
                relay.url = url;
                return Ok(relay);
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(StartFailure::Silent),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = relay.child.wait();
                let why = err_rx
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                return Err(StartFailure::Exited(why));
            }
        }
    }
}

/// Start the relay, retrying (bounded) while a just-killed predecessor's
/// database lock or socket may still be held. Returns the relay and the
/// reasons of the attempts that failed.
fn start(data: &Path, port: u16) -> (RelayProcess, Vec<String>) {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        match start_once(data, port) {
            Ok(relay) => return (relay, failures),
            Err(StartFailure::Exited(why)) => {
                failures.push(why);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(StartFailure::Silent) => {
                panic!("the relay printed no URL within {RESTART_DEADLINE:?} (failed before: {failures:?})")
            }
        }
    }
    panic!("the relay did not start in {START_ATTEMPTS} attempts: {failures:?}");
}

/// What `send_text` said about one numbered text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Said {
    /// Acknowledged by the relay.
    Sent,
    /// Put in the outbox for later.
    Queued,
    /// Abandoned after [`SEND_TIMEOUT`]; the message is in the outbox.
    TimedOut,
    /// `send_text` failed.
    Failed(String),
}

/// What the killer saw.
struct KillerReport {
    relay: RelayProcess,
    kills: usize,
    failed_starts: Vec<String>,
    slowest_restart: Duration,
}

/// Kill the relay at random moments [`KILLS`] times, restarting it each time
/// on the same port and data; insist each restart serves the same URL.
fn killer(mut relay: RelayProcess, data: &Path, port: u16) -> KillerReport {
    let url = relay.url.clone();
    let mut rng = rand::thread_rng();
    let mut kills = 0;
    let mut failed_starts = Vec::new();
    let mut slowest_restart = Duration::ZERO;
    while kills < KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..=600)));
        // `kill` is SIGKILL; waiting reaps the process, so its database lock
        // and socket are gone before the next start.
        relay.child.kill().unwrap();
        relay.child.wait().unwrap();
        kills += 1;
        let began = Instant::now();
        let (next, failures) = start(data, port);
        slowest_restart = slowest_restart.max(began.elapsed());
        failed_starts.extend(failures);
        assert_eq!(
            next.url, url,
            "restart {kills} came up with another URL (same port and data)"
        );
        relay = next;
    }
    KillerReport {
        relay,
        kills,
        failed_starts,
        slowest_restart,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_relay_sigkill_and_arrive_once() {
    let began = Instant::now();
    let data_dir = tempfile::tempdir().unwrap();
    let data = data_dir.path().join("relay");
    let port = free_port();
    let (relay, failures) = start(&data, port);
    assert!(failures.is_empty(), "first start failed: {failures:?}");
    let url: RelayUrl = relay.url.parse().unwrap();
    assert_eq!(url.port, port, "{url}");

    let mut alice = TestUser::on(&url, "alice").await;
    let mut bob = TestUser::on(&url, "bob").await;
    befriend(&mut bob, &mut alice).await;

    let killing_done = Arc::new(AtomicBool::new(false));
    let sending_done = Arc::new(AtomicBool::new(false));

    let killer_task = {
        let (done, data) = (Arc::clone(&killing_done), data.clone());
        tokio::task::spawn_blocking(move || {
            let report = killer(relay, &data, port);
            done.store(true, Ordering::SeqCst);
            report
        })
    };

    // Alice: numbered texts, one after another, until the killer is done.
    let alice_task = {
        let (stop, done) = (Arc::clone(&killing_done), Arc::clone(&sending_done));
        tokio::spawn(async move {
            let mut said: Vec<(String, Said)> = Vec::new();
            while !stop.load(Ordering::SeqCst) && said.len() < MAX_SENDS {
                let text = format!("m{:04}", said.len() + 1);
                let outcome =
                    tokio::time::timeout(SEND_TIMEOUT, alice.client.send_text("bob", &text)).await;
                let s = match outcome {
                    Ok(Ok((_, SendOutcome::Sent))) => Said::Sent,
                    Ok(Ok((_, SendOutcome::Queued(_)))) => Said::Queued,
                    Ok(Err(e)) => Said::Failed(e.to_string()),
                    Err(_) => Said::TimedOut,
                };
                said.push((text, s));
            }
            // The relay stays up now: everything in the outbox must go.
            let deadline = Instant::now() + SETTLE_DEADLINE;
            let mut flushes = 0;
            while alice.client.outbox_len().unwrap() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "alice's outbox still holds {} after {SETTLE_DEADLINE:?}",
                    alice.client.outbox_len().unwrap()
                );
                flushes += 1;
                let _ = tokio::time::timeout(SEND_TIMEOUT, alice.client.flush_outbox()).await;
            }
            done.store(true, Ordering::SeqCst);
            (alice, said, flushes)
        })
    };

    // Bob: receives in short rounds while Alice sends.
    let bob_task = {
        let stop = Arc::clone(&sending_done);
        tokio::spawn(async move {
            let mut shown: Vec<String> = Vec::new();
            let mut failed_rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                match tokio::time::timeout(
                    RECEIVE_TIMEOUT,
                    bob.client.receive(Duration::from_millis(100)),
                )
                .await
                {
                    Ok(Ok(events)) => shown.extend(texts_of(&events)),
                    Ok(Err(_)) | Err(_) => {
                        failed_rounds += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (bob, shown, failed_rounds)
        })
    };

    let KillerReport {
        relay,
        kills,
        failed_starts,
        slowest_restart,
    } = killer_task.await.unwrap();
    let (alice, said, flushes) = alice_task.await.unwrap();
    let (mut bob, mut shown, failed_rounds) = bob_task.await.unwrap();
    let load_done = began.elapsed();

    // Everything that can arrive: all but the sends that failed outright.
    let expected: HashSet<&str> = said
        .iter()
        .filter(|(_, s)| !matches!(s, Said::Failed(_)))
        .map(|(t, _)| t.as_str())
        .collect();
    let deadline = Instant::now() + SETTLE_DEADLINE;
    loop {
        let have: HashSet<String> = incoming_texts(&bob).into_iter().collect();
        if expected.iter().all(|t| have.contains(*t)) {
            break;
        }
        if Instant::now() >= deadline {
            break; // reported as lost below
        }
        if let Ok(Ok(events)) = tokio::time::timeout(
            RECEIVE_TIMEOUT,
            bob.client.receive(Duration::from_millis(200)),
        )
        .await
        {
            shown.extend(texts_of(&events));
        }
    }
    // One more round: nothing may be left to show, and nothing again.
    let rest = bob
        .client
        .receive(Duration::from_millis(200))
        .await
        .unwrap();
    shown.extend(texts_of(&rest));

    let stored = incoming_texts(&bob);
    let count = |texts: &[String]| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for t in texts {
            *n.entry(t.clone()).or_default() += 1;
        }
        n
    };
    let stored_n = count(&stored);
    let shown_n = count(&shown);
    let sent_texts: HashSet<&str> = said.iter().map(|(t, _)| t.as_str()).collect();
    let tally = |want: &dyn Fn(&Said) -> bool| said.iter().filter(|(_, s)| want(s)).count();
    let acked = tally(&|s| *s == Said::Sent);
    let queued = tally(&|s| *s == Said::Queued);
    let timed_out = tally(&|s| *s == Said::TimedOut);
    let errors: Vec<_> = said
        .iter()
        .filter_map(|(t, s)| match s {
            Said::Failed(e) => Some(format!("{t}: {e}")),
            _ => None,
        })
        .collect();
    let duplicates: Vec<_> = stored_n.iter().filter(|(_, n)| **n > 1).collect();
    let shown_twice: Vec<_> = shown_n.iter().filter(|(_, n)| **n > 1).collect();
    let strangers: Vec<_> = stored_n
        .keys()
        .filter(|t| !sent_texts.contains(t.as_str()))
        .collect();
    let lost: Vec<(&str, &Said)> = said
        .iter()
        .filter(|(t, s)| !matches!(s, Said::Failed(_)) && !stored_n.contains_key(t))
        .map(|(t, s)| (t.as_str(), s))
        .collect();
    println!(
        "crash: {kills} kills, {} sends, {acked} acked, {queued} queued, {timed_out} timed out, \
         {} errors, {} delivered, {} duplicates, {} lost, {} shown twice; \
         {} failed starts, slowest restart {slowest_restart:?}, {failed_rounds} failed receive \
         rounds, {flushes} final flushes; load {load_done:?}, total {:?}",
        said.len(),
        errors.len(),
        stored.len(),
        duplicates.len(),
        lost.len(),
        shown_twice.len(),
        failed_starts.len(),
        began.elapsed(),
    );
    if !failed_starts.is_empty() {
        println!("crash: failed starts: {failed_starts:?}");
    }

    assert_eq!(kills, KILLS, "the killer stopped early");
    assert!(acked > 0, "no send was acknowledged at all");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(duplicates.is_empty(), "stored twice: {duplicates:?}");
    assert!(shown_twice.is_empty(), "shown twice: {shown_twice:?}");
    assert!(strangers.is_empty(), "never sent: {strangers:?}");
    assert!(errors.is_empty(), "send_text failed: {errors:?}");
    // Alice's own record agrees: every message is sent now, once.
    let mine = alice.client.history("bob", MAX_SENDS * 2).unwrap();
    let mine: Vec<_> = mine.iter().filter(|m| m.outgoing).collect();
    assert_eq!(mine.len(), said.len(), "alice's history");
    let unsettled: Vec<_> = mine
        .iter()
        .filter(|m| m.status != Status::Sent)
        .map(|m| (m.text.as_str(), &m.status))
        .collect();
    assert!(unsettled.is_empty(), "alice's history: {unsettled:?}");
    drop(relay);
}

fn texts_of(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.text.clone()),
            Event::ContactAdded { .. } => None,
        })
        .collect()
}

/// Everything in Bob's store that came from Alice.
fn incoming_texts(bob: &TestUser) -> Vec<String> {
    bob.client
        .history("alice", MAX_SENDS * 2)
        .unwrap()
        .into_iter()
        .filter(|m| !m.outgoing)
        .map(|m| m.text)
        .collect()
}
