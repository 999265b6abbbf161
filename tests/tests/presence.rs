//! Presence and push wake-ups as a user sees them, with the real `tern`
//! binary and real relays (`tern-relay run` children with a short grace
//! period) and a real HTTP receiver on 127.0.0.1: a contact's dot turns on
//! when they listen and off only after the grace period; a contact given
//! no capability learns nothing; a revoked capability tells nothing more;
//! an offline device's push endpoint gets one empty POST per window; a
//! push endpoint that hangs does not hold up delivery to a listening
//! device. Commands run both beside a `tern listen` and without one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tern_tests::listen::{Listen, SHOW_DEADLINE};
use tern_tests::process::{alice_and_bob, json_lines, ok, tern, RelayProcess};

/// The relays' grace period in these tests.
const GRACE_MS: u64 = 3_000;

/// A relay with `config` (TOML) as its config file.
fn relay(dir: &Path, name: &str, config: &str) -> RelayProcess {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let path = data.join("relay.toml");
    std::fs::write(&path, config).unwrap();
    RelayProcess::start_with(&data, &["--config", path.to_str().unwrap()])
}

fn presence_config() -> String {
    format!("[presence]\ngrace_ms = {GRACE_MS}\n")
}

/// `name` joins through an invite of `inviter`'s, on `relay`.
fn join(dir: &Path, inviter: &Path, relay: &str, name: &str, as_name: &str) -> PathBuf {
    let home = dir.join(name);
    ok(&home, &["init", "--relay", relay, "--name", name]);
    let code = ok(inviter, &["invite"]);
    ok(&home, &["accept", code.trim(), "--name", as_name]);
    home
}

/// `tern presence CONTACT --json`'s one line.
fn presence_of(home: &Path, contact: &str) -> Value {
    let lines = json_lines(&ok(home, &["presence", contact, "--json"]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines.into_iter().next().unwrap()
}

fn is_presence(l: &Value, contact: &str, online: bool) -> bool {
    l["type"] == "presence" && l["contact"] == contact && l["online"] == online
}

#[test]
fn presence_flips_with_the_grace_period_for_granted_contacts_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (
        relay(dir.path(), "ra", &presence_config()),
        relay(dir.path(), "rb", &presence_config()),
    );
    let (a, b) = alice_and_bob(dir.path(), ra.url(), rb.url());
    let c = join(dir.path(), &a, rb.url(), "carol", "alice");
    ok(&a, &["recv"]);
    // Alice shares with Bob only (no listen running: the grant goes out
    // and the relay hears the capability set now).
    assert_eq!(
        ok(&a, &["settings", "presence", "contacts", "bob"]).trim(),
        "presence contacts bob"
    );
    assert_eq!(
        ok(&a, &["settings", "presence"]).trim(),
        "presence contacts bob"
    );
    let bob = Listen::start(&b);
    let alice = Listen::start(&a);
    bob.until("alice online", |l| {
        l.iter()
            .any(|l| is_presence(l, "alice", true) && l["last_seen"].is_null())
    });
    // Her beats (datagrams, after the first) keep her online past the
    // grace period.
    let quiet = bob.during(Duration::from_millis(2 * GRACE_MS));
    assert!(
        !quiet.iter().any(|l| is_presence(l, "alice", false)),
        "alice went offline while listening: {quiet:?}"
    );
    // Beside the running listen, `tern presence` answers from it.
    let p = presence_of(&b, "alice");
    assert_eq!(p["online"], true, "{p}");
    // Carol is a contact of Alice's but holds no capability: nothing.
    ok(&c, &["recv"]);
    let p = presence_of(&c, "alice");
    assert!(p["online"].is_null(), "carol learns nothing: {p}");

    // Alice goes away: offline only once the grace period has run out
    // (her last beat was at most a third of it before she stopped).
    let stopped = Instant::now();
    alice.interrupt();
    let lines = bob.until("alice offline", |l| {
        l.iter().any(|l| is_presence(l, "alice", false))
    });
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(GRACE_MS / 2),
        "offline after {waited:?}, inside the grace period"
    );
    let off = lines
        .iter()
        .find(|l| is_presence(l, "alice", false))
        .unwrap();
    let seen = off["last_seen"].as_str().expect("last seen shown");
    assert!(seen.ends_with(":00.000Z"), "rounded to the minute: {seen}");
    drop(bob);

    // Without a listen, `tern presence` asks the relay itself.
    let p = presence_of(&b, "alice");
    assert_eq!(p["online"], false, "{p}");
    assert_eq!(p["last_seen"], seen);

    // Last seen hidden: offline with no time.
    ok(&a, &["settings", "last-seen", "off"]);
    assert_eq!(ok(&a, &["settings", "last-seen"]).trim(), "last-seen off");
    let p = presence_of(&b, "alice");
    assert_eq!(p["online"], false, "{p}");
    assert!(p["last_seen"].is_null(), "hidden: {p}");

    // Revoked: Bob's capability tells nothing any more.
    ok(&a, &["settings", "presence", "off"]);
    let p = presence_of(&b, "alice");
    assert!(p["online"].is_null(), "revoked: {p}");
}

#[test]
fn a_revoked_capability_stops_a_listening_contacts_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (
        relay(dir.path(), "ra", &presence_config()),
        relay(dir.path(), "rb", &presence_config()),
    );
    let (a, b) = alice_and_bob(dir.path(), ra.url(), rb.url());
    let c = join(dir.path(), &a, rb.url(), "carol", "alice");
    ok(&a, &["recv"]);
    let alice = Listen::start(&a);
    let bob = Listen::start(&b);
    let carol = Listen::start(&c);
    for l in [&bob, &carol] {
        l.until("alice online", |l| {
            l.iter().any(|l| is_presence(l, "alice", true))
        });
    }
    // Alice stops sharing with Bob, through her running listen.
    assert_eq!(
        ok(&a, &["settings", "presence", "contacts", "carol"]).trim(),
        "presence contacts carol"
    );
    alice.interrupt();
    // Carol, still granted, sees Alice go offline; by then Bob, revoked,
    // has been told nothing: the relay tells both in the same sweep.
    carol.until("alice offline", |l| {
        l.iter().any(|l| is_presence(l, "alice", false))
    });
    drop(carol);
    let p = presence_of(&b, "alice");
    assert_eq!(
        p["online"], true,
        "bob's last word stays the stale one: {p}"
    );
    drop(bob);
    let p = presence_of(&b, "alice");
    assert!(p["online"].is_null(), "the relay answers bob nothing: {p}");
}

/// One request an HTTP receiver got.
#[derive(Debug)]
struct Posted {
    request_line: String,
    headers: Vec<String>,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 receiver on 127.0.0.1: answers each request 200 (or
/// never, if `hang`) and reports it.
fn receiver(hang: bool) -> (String, mpsc::Receiver<Posted>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            if hang {
                // Read the request, report it, never answer.
                let copy = stream.try_clone().unwrap();
                held.push(copy);
            }
            std::thread::spawn(move || serve(stream, hang, tx));
        }
    });
    (url, rx)
}

fn serve(stream: TcpStream, hang: bool, tx: mpsc::Sender<Posted>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        headers.push(h.trim().to_string());
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let _ = tx.send(Posted {
        request_line: request_line.trim().to_string(),
        headers,
        body,
    });
    if !hang {
        use std::io::Write;
        let mut s = stream;
        let _ = s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    }
}

fn push_config(extra: &str) -> String {
    format!(
        "{}[presence.push]\nallowed_prefixes = [\"http://127.0.0.1:\"]\nconcurrency = 1\n{extra}",
        presence_config()
    )
}

#[test]
fn wake_ups_go_once_per_window_and_carry_nothing() {
    let (url, posts) = receiver(false);
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (
        relay(dir.path(), "ra", &presence_config()),
        relay(dir.path(), "rb", &push_config("window_ms = 600000\n")),
    );
    let (a, b) = alice_and_bob(dir.path(), ra.url(), rb.url());
    let c = join(dir.path(), &a, rb.url(), "carol", "alice");
    ok(&a, &["recv"]);
    // Endpoints the operator does not allow are refused.
    let refused = tern(&b, &["settings", "push", "http://192.0.2.1/x"]);
    assert!(
        !refused.status.success(),
        "an endpoint outside the allowed prefixes"
    );
    assert_eq!(ok(&b, &["settings", "push"]).trim(), "push off");
    let bob_url = format!("{url}/up/bob-device");
    let carol_url = format!("{url}/up/carol-device");
    assert_eq!(
        ok(&b, &["settings", "push", &bob_url]).trim(),
        format!("push {bob_url}")
    );
    ok(&c, &["settings", "push", &carol_url]);

    // Three messages for Bob, who is not connected: one wake-up.
    for text in ["one", "two", "three"] {
        ok(&a, &["send", "bob", text]);
    }
    // Then one for Carol: the relay posts in order, one at a time, so
    // once hers has come, any second one for Bob would have too.
    ok(&a, &["send", "carol", "hello"]);
    let mut got = Vec::new();
    while !got
        .iter()
        .any(|p: &Posted| p.request_line.contains("carol-device"))
    {
        got.push(posts.recv_timeout(SHOW_DEADLINE).expect("a wake-up"));
    }
    let bob: Vec<&Posted> = got
        .iter()
        .filter(|p| p.request_line.contains("bob-device"))
        .collect();
    assert_eq!(bob.len(), 1, "one wake-up per window: {got:?}");
    let p = bob[0];
    assert_eq!(p.request_line, "POST /up/bob-device HTTP/1.1");
    assert!(p.body.is_empty(), "no content: {p:?}");
    assert!(
        p.headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("content-length: 0")),
        "{p:?}"
    );
    let all = format!("{p:?}").to_lowercase();
    for secret in ["alice", "one", "three"] {
        assert!(!all.contains(secret), "{secret:?} in {p:?}");
    }
    // Bob still gets his messages.
    let lines = json_lines(&ok(&b, &["recv", "--json"]));
    assert_eq!(
        lines.iter().filter(|l| l["type"] == "message").count(),
        3,
        "{lines:?}"
    );
}

#[test]
fn a_hung_push_endpoint_does_not_hold_up_delivery_to_a_listening_device() {
    let (url, posts) = receiver(true);
    let dir = tempfile::tempdir().unwrap();
    let (ra, rb) = (
        relay(dir.path(), "ra", &presence_config()),
        relay(
            dir.path(),
            "rb",
            &push_config("timeout_ms = 600000\nretries = 0\n"),
        ),
    );
    let (a, b) = alice_and_bob(dir.path(), ra.url(), rb.url());
    let c = join(dir.path(), &a, rb.url(), "carol", "alice");
    ok(&a, &["recv"]);
    ok(&c, &["settings", "push", &format!("{url}/up/carol")]);
    let bob = Listen::start(&b);
    // Carol is offline: her wake-up goes to an endpoint that never
    // answers, and with one POST at a time the push task is stuck on it.
    ok(&a, &["send", "carol", "are you there"]);
    let stuck = posts.recv_timeout(SHOW_DEADLINE).expect("the hung POST");
    assert!(stuck.request_line.contains("/up/carol"), "{stuck:?}");
    // Bob, listening on the same relay, gets his messages all the same.
    for text in ["first", "second"] {
        ok(&a, &["send", "bob", text]);
    }
    bob.until("both messages", |l| {
        l.iter().filter(|l| l["type"] == "message").count() >= 2
    });
    assert!(
        posts.try_recv().is_err(),
        "nothing else was posted while the endpoint hung"
    );
}
