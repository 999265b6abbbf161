//! Crash safety of the `tern` binary: `tern send` and `tern recv` killed with
//! SIGKILL at random moments against a real `tern-relay`. Nothing a send
//! reported is lost, nothing is stored twice, and no message a `recv` showed
//! is shown by a later one.
//!
//! The processes come from [`tern_tests::process`], which finds (and
//! builds) both binaries and clears the environment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tern_tests::process::{ok, tern, tern_cmd, RelayProcess};

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `tern send` processes killed at random.
const SENDS: usize = 30;
/// Texts sent before the `recv` processes are killed.
const RECV_TEXTS: usize = 30;
/// `tern recv` processes killed at random.
const RECVS: usize = 20;
/// Clean `recv` runs allowed for "until quiet".
const QUIET_ROUNDS: usize = 20;

/// A small xorshift generator for the kill delays (this crate has no
/// `rand`); the seed is printed so a failing run can be replayed.
struct Delays(u64);

impl Delays {
    fn new(test: &str) -> Self {
        let seed = std::env::var("TERN_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        println!("{test}: seed {seed} (TERN_CRASH_SEED to replay)");
        Self(seed)
    }

    /// A delay between `lo` and `hi`, uniformly.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.0 % (span + 1))
    }
}

/// How long `tern ARGS...` takes to run to the end here (each `tern` run
/// spends most of its time starting and opening its store: a debug build on
/// a loaded machine), so kills can land while it does its work, not before.
fn timed(home: &Path, args: &[&str]) -> (Duration, String) {
    let start = Instant::now();
    let out = ok(home, args);
    (start.elapsed().min(Duration::from_secs(3)), out)
}

/// How a `tern` run that was killed at a random moment ended.
struct Interrupted {
    /// It finished before the kill.
    finished: bool,
    /// When it exited on its own, if seen before the kill.
    exited: Option<Duration>,
    /// Whole lines it printed.
    lines: Vec<String>,
    /// A line cut short by the kill.
    partial: Option<String>,
    /// What it said on stderr.
    stderr: String,
}

/// Run `tern` and SIGKILL it after `after` (unless it finished first).
fn tern_killed_after(home: &Path, args: &[&str], after: Duration) -> Interrupted {
    let mut child = tern_cmd(home, args).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Read both pipes in threads so a chatty child never blocks on them.
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let mut exited = None;
    while start.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            exited = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill(); // SIGKILL; a no-op for one that has exited
    let status = child.wait().unwrap();
    let out = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let finished = status.signal() != Some(9);
    let mut lines: Vec<String> = out.split_inclusive('\n').map(str::to_string).collect();
    let partial = match lines.last() {
        Some(l) if !l.ends_with('\n') => lines.pop(),
        _ => None,
    };
    Interrupted {
        finished,
        exited,
        lines: lines.iter().map(|l| l.trim_end().to_string()).collect(),
        partial,
        stderr,
    }
}

fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// `recv --json` until one run shows nothing; returns every message shown.
fn recv_until_quiet(home: &Path) -> Vec<Value> {
    let mut shown = Vec::new();
    for _ in 0..QUIET_ROUNDS {
        let events = parse_json_lines(&ok(home, &["recv", "--json"]));
        if events.is_empty() {
            return shown;
        }
        shown.extend(events.into_iter().filter(|e| e["type"] == "message"));
    }
    panic!("recv still showed messages after {QUIET_ROUNDS} runs");
}

/// `(id, text, outgoing, status)` of each message in the conversation.
fn history(home: &Path, with: &str) -> Vec<(String, String, bool, String)> {
    parse_json_lines(&ok(home, &["history", with, "--json", "--limit", "1000"]))
        .into_iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
                m["outgoing"].as_bool().unwrap(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn counts<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut n = BTreeMap::new();
    for i in items {
        *n.entry(i).or_default() += 1;
    }
    n
}

/// Two homes that are contacts: Alice invited, Bob accepted.
fn befriended(dir: &Path, relay: &RelayProcess) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("alice"), dir.join("bob"));
    ok(&a, &["init", "--relay", relay.url(), "--name", "alice"]);
    ok(&b, &["init", "--relay", relay.url(), "--name", "bob"]);
    let code = ok(&a, &["invite"]);
    ok(&b, &["accept", code.trim(), "--name", "alice"]);
    let events = parse_json_lines(&ok(&a, &["recv", "--json"]));
    assert_eq!(
        events,
        [serde_json::json!({"type": "contact", "name": "bob"})]
    );
    (a, b)
}

#[test]
fn a_killed_send_loses_nothing_it_reported_and_stores_nothing_twice() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b) = befriended(dir.path(), &relay);
    let mut delays = Delays::new("crash-send");

    // What each send printed before (or without) being killed:
    // text -> ("sent" or "queued", id).
    let mut reported: HashMap<String, (String, String)> = HashMap::new();
    let (opening, _) = timed(&b, &["history", "alice"]);
    let (sending, out) = timed(&b, &["send", "alice", "w00"]);
    let id = out
        .trim()
        .strip_prefix("sent ")
        .unwrap_or_else(|| panic!("{out:?}"));
    reported.insert("w00".into(), ("sent".into(), id.to_string()));
    // Kills land between "store open" and "done" of a clean run.
    let (lo, mut hi) = (opening.mul_f32(0.8), sending.mul_f32(1.2));
    println!("crash-send: a send takes {sending:?}, opening {opening:?}; kills at {lo:?}..{hi:?}");
    let mut attempted: HashSet<String> = reported.keys().cloned().collect();
    let mut killed = Vec::new();
    for i in 0..SENDS {
        let text = format!("s{i:02}");
        attempted.insert(text.clone());
        let after = delays.between(lo, hi);
        let run = tern_killed_after(&b, &["send", "alice", &text], after);
        // Runs get faster once caches are warm: keep kills before the end.
        hi = hi.min(run.exited.unwrap_or(hi)).max(lo);
        if run.finished {
            let line = run.lines.first().cloned().unwrap_or_default();
            let mut words = line.split([' ', ':']);
            let (word, id) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            assert!(
                matches!(word, "sent" | "queued") && id.len() == 32,
                "{text}: send printed {line:?}, stderr {:?}",
                run.stderr
            );
            reported.insert(text, (word.to_string(), id.to_string()));
        } else {
            assert!(
                run.lines.is_empty() || run.lines[0].starts_with("sent "),
                "{text}: {:?}",
                run.lines
            );
            // Killed after printing (while closing): it still reported.
            if let Some(line) = run.lines.first() {
                let id = line["sent ".len()..].to_string();
                reported.insert(text, ("sent".into(), id));
            } else {
                killed.push(text);
            }
        }
    }
    let bob_flush = tern(&b, &["recv"]);
    assert!(
        bob_flush.status.success(),
        "bob's recv after the kills: {}",
        String::from_utf8_lossy(&bob_flush.stderr)
    );
    let shown = recv_until_quiet(&a);

    let got = history(&a, "bob");
    let incoming: Vec<_> = got.iter().filter(|m| !m.2).collect();
    let by_text = counts(incoming.iter().map(|m| m.1.as_str()));
    let by_id = counts(incoming.iter().map(|m| m.0.as_str()));
    let shown_ids = counts(shown.iter().map(|m| m["id"].as_str().unwrap()));
    let sent_words = reported.values().filter(|(w, _)| w == "sent").count();
    let killed_arrived = killed
        .iter()
        .filter(|t| by_text.contains_key(t.as_str()))
        .count();
    println!(
        "crash-send: {} sends, {} killed before reporting ({killed_arrived} of them arrived), \
         {sent_words} sent, {} queued, {} delivered, {} duplicates, {} lost, in {:?}",
        attempted.len(),
        killed.len(),
        reported.len() - sent_words,
        incoming.len(),
        by_text.values().filter(|n| **n > 1).count(),
        reported
            .keys()
            .filter(|t| !by_text.contains_key(t.as_str()))
            .count(),
        began.elapsed()
    );

    for (text, (word, id)) in &reported {
        let found: Vec<_> = incoming.iter().filter(|m| &m.1 == text).collect();
        assert_eq!(found.len(), 1, "{text} ({word} {id}) arrived {found:?}");
        assert_eq!(&found[0].0, id, "{text}: another id than the one printed");
    }
    for (text, n) in &by_text {
        assert_eq!(*n, 1, "{text} stored {n} times");
        assert!(attempted.contains(*text), "{text} was never sent");
    }
    for (id, n) in by_id.iter().chain(shown_ids.iter()) {
        assert_eq!(*n, 1, "message {id} stored or shown {n} times");
    }
    // Bob's side agrees: each message he has a record of went out, once.
    let mine = history(&b, "alice");
    let unsettled: Vec<_> = mine.iter().filter(|m| m.2 && m.3 != "sent").collect();
    assert!(unsettled.is_empty(), "bob's history: {unsettled:?}");
    let mine: HashSet<_> = mine.iter().filter(|m| m.2).map(|m| &m.0).collect();
    let theirs: HashSet<_> = incoming.iter().map(|m| &m.0).collect();
    assert_eq!(mine, theirs, "bob's sent messages against alice's store");
}

#[test]
fn a_killed_recv_shows_nothing_twice_and_loses_nothing() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(&dir.path().join("relay"));
    let (a, b) = befriended(dir.path(), &relay);
    let mut delays = Delays::new("crash-recv");

    let (opening, _) = timed(&a, &["history", "bob"]);
    let (receiving, _) = timed(&a, &["recv", "--json"]);
    // Kills land between "store open" and somewhat after a clean, empty
    // recv ends (a backlog takes longer).
    let (lo, mut hi) = (
        opening.mul_f32(0.8),
        receiving.mul_f32(1.2) + Duration::from_millis(200),
    );
    println!(
        "crash-recv: a recv takes {receiving:?}, opening {opening:?}; kills at {lo:?}..{hi:?}"
    );

    // Bob's texts go out in rounds between the killed recvs, so each recv
    // finds a backlog; all are sent (acknowledged) before the final recv.
    let mut ids = HashMap::new();
    let mut shown: Vec<Value> = Vec::new();
    let (mut finished, mut partial_lines) = (0, 0);
    for round in 0..RECVS {
        while ids.len() < (round + 1) * RECV_TEXTS / RECVS {
            let text = format!("r{:02}", ids.len());
            let out = ok(&b, &["send", "alice", &text]);
            let id = out
                .trim()
                .strip_prefix("sent ")
                .unwrap_or_else(|| panic!("{out:?}"))
                .to_string();
            ids.insert(id, text);
        }
        let after = delays.between(lo, hi);
        let run = tern_killed_after(&a, &["recv", "--json"], after);
        hi = hi
            .min(run.exited.unwrap_or(hi) + Duration::from_millis(100))
            .max(lo);
        if run.finished {
            finished += 1;
            assert!(run.stderr.is_empty(), "recv: {}", run.stderr);
        }
        if let Some(p) = &run.partial {
            partial_lines += 1;
            println!("crash-recv: a line cut short by the kill: {p:?}");
        }
        shown.extend(parse_json_lines(&run.lines.join("\n")));
    }
    let killed_shown = shown.len();
    shown.extend(recv_until_quiet(&a));

    let shown_ids = counts(shown.iter().map(|m| m["id"].as_str().unwrap()));
    let got = history(&a, "bob");
    let incoming: Vec<_> = got.iter().filter(|m| !m.2).collect();
    let stored = counts(incoming.iter().map(|m| m.0.as_str()));
    let never_shown: Vec<_> = ids
        .iter()
        .filter(|(id, _)| !shown_ids.contains_key(id.as_str()))
        .map(|(_, t)| t.as_str())
        .collect();
    println!(
        "crash-recv: {RECV_TEXTS} texts, {RECVS} recvs killed ({finished} finished first), \
         {killed_shown} shown by those 20 runs, {} shown in all, {} shown twice, \
         {} stored, {} duplicates, {} lost, {} stored but never shown {never_shown:?}, \
         {partial_lines} cut lines, in {:?}",
        shown.len(),
        shown_ids.values().filter(|n| **n > 1).count(),
        incoming.len(),
        stored.values().filter(|n| **n > 1).count(),
        ids.keys()
            .filter(|id| !stored.contains_key(id.as_str()))
            .count(),
        never_shown.len(),
        began.elapsed()
    );

    for (id, n) in &shown_ids {
        assert_eq!(*n, 1, "message {id} shown {n} times");
        assert!(ids.contains_key(*id), "shown {id}, which bob never sent");
    }
    for (id, text) in &ids {
        assert_eq!(
            stored.get(id.as_str()),
            Some(&1),
            "{text} ({id}) in history"
        );
    }
    assert_eq!(stored.len(), ids.len(), "history holds more than was sent");
    for m in &shown {
        let id = m["id"].as_str().unwrap();
        assert_eq!(m["text"].as_str(), ids.get(id).map(String::as_str), "{m}");
    }
    drop(relay);
}
