//! A relay of a fleet on Redis is SIGKILLed under load (issue 17, "relay A
//! is SIGKILLed under load: alice's client moves to B, every acknowledged
//! message is delivered exactly once"): two `tern-relay run --store redis`
//! processes on one real Redis Cluster (tests/src/redis_cluster.rs), both
//! running throughout, one fleet URL naming both. Alice's `tern listen` is
//! on relay A when it dies; Bob keeps sending with the `tern` CLI before,
//! during and after. Alice's listen moves to relay B by itself and shows
//! every message Bob was told was sent, once each, in order.
//!
//! tests/tests/fleet_url.rs has the client side against relays taking
//! turns on one embedded store; here the relays share the store at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_tests::listen::Listen;
use tern_tests::process::{free_udp_port, ok, tern, url_fingerprint, RelayProcess};
use tern_tests::redis_cluster::RedisCluster;

/// The identity files an operator copies to every relay of a fleet.
const IDENTITY_FILES: [&str; 3] = ["cert.der", "key.der", "reset.key"];
/// Bob's sends in all, at most (a bound on the load loop).
const MAX_SENDS: usize = 400;
/// Messages Alice must be shown before the kill, and after it.
const BEFORE: usize = 10;
const AFTER: usize = 10;

/// The texts among `lines` that are messages, in the order shown.
fn texts(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["type"] == "message")
        .filter_map(|l| l["text"].as_str().map(str::to_string))
        .collect()
}

/// What Bob's sends came to: texts the CLI reported sent, in order, and
/// texts whose send failed (in doubt: shown at most once).
#[derive(Default)]
struct Sent {
    acked: Vec<String>,
    in_doubt: HashSet<String>,
}

/// Bob sends `m000`, `m001`, ... one `tern send` at a time until `stop`
/// (bounded by [`MAX_SENDS`]); `count` is how many were attempted.
fn bob_sends(bob: &Path, stop: &AtomicBool, count: &AtomicUsize) -> Sent {
    let mut sent = Sent::default();
    for i in 0..MAX_SENDS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let text = format!("m{i:03}");
        count.store(i + 1, Ordering::SeqCst);
        if tern(bob, &["send", "alice", &text]).status.success() {
            sent.acked.push(text);
        } else {
            sent.in_doubt.insert(text);
        }
    }
    sent
}

#[test]
fn relay_a_killed_under_load_alice_moves_to_relay_b_and_nothing_is_lost_or_shown_twice() {
    let _turn = tern_tests::redis_cluster::CLUSTER_TURN.blocking_lock();
    let cluster = RedisCluster::start(3, 0);
    let seeds = cluster.seeds();
    let dir = tempfile::tempdir().unwrap();
    let (a_data, b_data) = (dir.path().join("relay-a"), dir.path().join("relay-b"));
    let (a_port, b_port) = (free_udp_port(), free_udp_port());
    let mut relay_a = RelayProcess::start_on_redis_at(&a_data, a_port, &seeds, 0);
    std::fs::create_dir_all(&b_data).unwrap();
    for file in IDENTITY_FILES {
        std::fs::copy(a_data.join(file), b_data.join(file)).unwrap();
    }
    let fleet = format!(
        "tern://127.0.0.1:{a_port},127.0.0.1:{b_port}?fp={}",
        url_fingerprint(relay_a.url())
    );
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    ok(&alice, &["init", "--relay", &fleet, "--name", "alice"]);
    ok(&bob, &["init", "--relay", &fleet, "--name", "bob"]);
    let code = ok(&alice, &["invite"]);
    ok(&bob, &["accept", code.trim(), "--name", "alice"]);

    // Alice listens while relay B is not up yet, so her listen is on A.
    let listening = Listen::start(&alice);
    let mut shown = listening.until("the introduction", |l| {
        l.iter().any(|v| v["type"] == "contact")
    });
    let _relay_b = RelayProcess::start_on_redis_at(&b_data, b_port, &seeds, 0);
    assert_eq!(
        url_fingerprint(_relay_b.url()),
        url_fingerprint(relay_a.url())
    );

    // Bob sends all along, through whichever relay of the fleet he reaches.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (bob, stop, count) = (bob.clone(), Arc::clone(&stop), Arc::clone(&count));
        std::thread::spawn(move || bob_sends(&bob, &stop, &count))
    };
    shown.extend(listening.until("messages before the kill", |l| texts(l).len() >= BEFORE));

    // Relay A dies without a word, with Bob's sends in flight.
    relay_a.kill();
    let killed = Instant::now();
    let attempted_at_kill = count.load(Ordering::SeqCst);
    let after_kill = |t: &String| {
        t[1..]
            .parse::<usize>()
            .is_ok_and(|i| i >= attempted_at_kill)
    };
    let first_after = listening.until("a message sent after the kill", |l| {
        texts(l).iter().any(after_kill)
    });
    let interruption = killed.elapsed();
    shown.extend(first_after);
    shown.extend(listening.until("more messages after the kill", |l| {
        texts(l).iter().filter(|t| after_kill(t)).count() >= AFTER
    }));
    stop.store(true, Ordering::SeqCst);
    let sent = producer.join().unwrap();

    // Every message Bob was told was sent is shown, once, in order.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = texts(&shown).into_iter().collect();
        if sent.acked.iter().all(|t| seen.contains(t)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged messages never shown: {:?}",
            sent.acked
                .iter()
                .filter(|t| !seen.contains(*t))
                .collect::<Vec<_>>()
        );
        shown.extend(listening.until("the remaining messages", |l| !texts(l).is_empty()));
    }
    let all = texts(&shown);
    let mut times: HashMap<&str, usize> = HashMap::new();
    for t in &all {
        *times.entry(t).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "shown more than once: {twice:?}");
    let acked: HashSet<&str> = sent.acked.iter().map(String::as_str).collect();
    let unknown: Vec<_> = all
        .iter()
        .filter(|t| !acked.contains(t.as_str()) && !sent.in_doubt.contains(*t))
        .collect();
    assert!(unknown.is_empty(), "shown but never sent: {unknown:?}");
    let in_order: Vec<&String> = all.iter().filter(|t| acked.contains(t.as_str())).collect();
    assert_eq!(
        in_order,
        sent.acked.iter().collect::<Vec<_>>(),
        "acknowledged messages shown in the order sent"
    );
    eprintln!(
        "{} sent ({} in doubt), {} before the kill; alice showed one sent after \
         the kill {interruption:?} after it",
        sent.acked.len(),
        sent.in_doubt.len(),
        attempted_at_kill
    );
    listening.interrupt();

    // Alice's history agrees, and nothing waits at the fleet.
    let history = ok(&alice, &["history", "bob"]);
    for t in &sent.acked {
        assert_eq!(history.matches(t.as_str()).count(), 1, "{t} in {history}");
    }
    assert!(ok(&alice, &["recv", "--json"]).trim().is_empty());
}
