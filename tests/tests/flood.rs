//! A hostile flood beside honest users, on one relay with its deployed
//! defaults (limits and rates): garbage after every stream kind, truncated
//! and oversize frames, streams abandoned or held idle up to the per-connection
//! cap, and sends with made-up tokens as fast as the relay answers them. Two
//! befriended users talk all the while; every message of theirs must arrive
//! exactly once, in order and in bounded time, and a newcomer must still be
//! able to register afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::Rng;
use std::error::Error;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, Outgoing, RelayLink};
use tern_client::{Event, SendOutcome};
use tern_protocol::limits::DEFAULT_MAX_FRAME;
use tern_protocol::url::RelayUrl;
use tern_protocol::{ErrorCode, STREAM_CONTROL, STREAM_MESSAGES};
use tern_relay::Limits;
use tern_tests::{befriend, messages, random16, random32, texts, TestRelay, TestUser, DEADLINE};

/// The flood lasts at least this long, and as long as the honest exchange.
const FLOOD_MIN: Duration = Duration::from_secs(5);
/// ... but never longer than this.
const FLOOD_MAX: Duration = Duration::from_secs(30);
/// Honest texts each way.
const EACH_WAY: usize = 50;
/// The whole honest exchange must end within this (debug build, two cores
/// shared with the relay and the attackers).
const HONEST_BOUND: Duration = Duration::from_secs(60);
/// Bound on any one attacker operation (open, write, batch of sends).
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Made-up sends pipelined per batch.
const BOGUS_BATCH: usize = 128;
/// Connections of each kind of attacker.
const JUNK_CONNECTIONS: usize = 3;
const IDLE_CONNECTIONS: usize = 2;
const BOGUS_CONNECTIONS: usize = 2;

type Failure = Box<dyn Error + Send + Sync>;

/// What the attackers did (and what they got back).
#[derive(Default)]
struct Counts {
    garbage_frames: AtomicU64,
    truncated: AtomicU64,
    oversize: AtomicU64,
    abandoned: AtomicU64,
    idle_held: AtomicU64,
    idle_blocked: AtomicU64,
    bogus_sent: AtomicU64,
    bogus_token_invalid: AtomicU64,
    bogus_rate_limited: AtomicU64,
    bogus_other: AtomicU64,
    bogus_accepted: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    attacker_errors: AtomicU64,
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// What every attacker shares: where to go, when to stop, what to count.
struct Flood {
    url: RelayUrl,
    /// Mailboxes worth aiming bogus sends at (the honest users').
    targets: Vec<[u8; 16]>,
    stop: AtomicBool,
    hard_stop: Instant,
    counts: Counts,
}

impl Flood {
    fn over(&self) -> bool {
        self.stop.load(Relaxed) || Instant::now() >= self.hard_stop
    }

    /// A fresh attacker connection, or `None` (counted) if the relay refused.
    async fn dial(&self) -> Option<(Dialer, RelayLink)> {
        let mut dialer = Dialer::default();
        add(&self.counts.connects, 1);
        match timed(dialer.connect(&self.url)).await {
            Ok(link) => Some((dialer, link)),
            Err(_) => {
                add(&self.counts.connect_failures, 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    }
}

/// Run `f` within [`OP_TIMEOUT`], folding the timeout into its error.
async fn timed<T, E: Into<Failure>>(f: impl Future<Output = Result<T, E>>) -> Result<T, Failure> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(e.into()),
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill(&mut v[..]);
    v
}

fn prefix(len: u32) -> [u8; 4] {
    len.to_be_bytes()
}

/// One hostile stream's bytes: what it is and how many frames it holds.
enum Junk {
    Garbage(Vec<u8>, usize),
    Truncated(Vec<u8>),
    Oversize(Vec<u8>),
    Abandoned(Vec<u8>),
}

/// Pick the next hostile stream (not async: the thread RNG stays put).
fn next_junk() -> Junk {
    let mut rng = rand::thread_rng();
    let kind = match rng.gen_range(0..8) {
        0..=2 => STREAM_CONTROL,
        3..=5 => STREAM_MESSAGES,
        _ => rng.gen_range(3..=u8::MAX),
    };
    match rng.gen_range(0..10) {
        // Framed garbage bodies (many per message stream), sometimes raw
        // bytes with no framing at all.
        0..=4 => {
            let frames = if kind == STREAM_MESSAGES { 32 } else { 1 };
            let mut bytes = vec![kind];
            for _ in 0..frames {
                let body = random_bytes(rng.gen_range(1..300));
                if rng.gen_bool(0.9) {
                    bytes.extend(prefix(body.len() as u32));
                }
                bytes.extend(body);
            }
            Junk::Garbage(bytes, frames)
        }
        5..=6 => {
            let claimed = rng.gen_range(10..2_000u32);
            let mut bytes = vec![kind];
            bytes.extend(prefix(claimed));
            bytes.extend(random_bytes(rng.gen_range(0..claimed as usize)));
            Junk::Truncated(bytes)
        }
        7..=8 => {
            let claimed = rng.gen_range(DEFAULT_MAX_FRAME as u32 + 1..=u32::MAX);
            let mut bytes = vec![kind];
            bytes.extend(prefix(claimed));
            bytes.extend(random_bytes(rng.gen_range(0..64)));
            Junk::Oversize(bytes)
        }
        _ => {
            // Nothing at all, a kind byte alone, or half a length prefix.
            let cut = rng.gen_range(0..=3);
            Junk::Abandoned([kind, 0, 0].into_iter().take(cut).collect())
        }
    }
}

/// One hostile stream: write it, finish or drop it, never read.
async fn junk_stream(link: &RelayLink, counts: &Counts) -> Result<(), Failure> {
    let junk = next_junk();
    let (mut send, recv) = timed(link.open_raw_stream()).await?;
    // The relay's answers (errors) are not read: dropping our side of the
    // stream tells it to stop sending.
    drop(recv);
    let (bytes, finish) = match &junk {
        Junk::Garbage(b, _) | Junk::Truncated(b) | Junk::Oversize(b) => (b, true),
        Junk::Abandoned(b) => (b, false),
    };
    if !bytes.is_empty() {
        timed(send.write_all(bytes)).await?;
    }
    if finish {
        let _ = send.finish();
    }
    match junk {
        Junk::Garbage(_, n) => add(&counts.garbage_frames, n),
        Junk::Truncated(_) => add(&counts.truncated, 1),
        Junk::Oversize(_) => add(&counts.oversize, 1),
        Junk::Abandoned(_) => add(&counts.abandoned, 1),
    }
    Ok(())
}

/// Garbage, truncated, oversize and abandoned streams, back to back, on one
/// connection at a time (a new one when the relay closes it).
async fn junk_attacker(flood: Arc<Flood>) {
    while !flood.over() {
        let Some((_dialer, link)) = flood.dial().await else {
            continue;
        };
        while !flood.over() {
            if junk_stream(&link, &flood.counts).await.is_err() {
                add(&flood.counts.attacker_errors, 1);
                break;
            }
        }
        link.close();
    }
}

/// Streams opened up to the relay's per-connection cap and held silent: a
/// control stream with a length prefix claiming the largest frame, an idle
/// message stream, or a kind byte alone. Opening past the cap must block.
async fn idle_attacker(flood: Arc<Flood>) {
    let Some((_dialer, link)) = flood.dial().await else {
        return;
    };
    let cap = Limits::default().max_concurrent_streams as usize;
    let mut held = Vec::new();
    for i in 0..cap + 4 {
        if flood.over() {
            break;
        }
        let opened = tokio::time::timeout(Duration::from_millis(500), link.open_raw_stream()).await;
        let (mut send, recv) = match opened {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                add(&flood.counts.attacker_errors, 1);
                break;
            }
            Err(_) => {
                add(&flood.counts.idle_blocked, 1);
                continue;
            }
        };
        let header: Vec<u8> = match i % 3 {
            0 => [STREAM_CONTROL]
                .into_iter()
                .chain(prefix(DEFAULT_MAX_FRAME as u32))
                .collect(),
            1 => vec![STREAM_MESSAGES],
            _ => vec![STREAM_CONTROL],
        };
        if timed(send.write_all(&header)).await.is_err() {
            add(&flood.counts.attacker_errors, 1);
            continue;
        }
        add(&flood.counts.idle_held, 1);
        held.push((send, recv));
    }
    while !flood.over() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    link.close();
}

/// Sends with made-up tokens, pipelined, to the honest users' real
/// mailboxes and to made-up ones, as fast as the relay answers.
async fn bogus_attacker(flood: Arc<Flood>) {
    while !flood.over() {
        let Some((_dialer, link)) = flood.dial().await else {
            continue;
        };
        let Ok(mut stream) = timed(link.messages()).await else {
            add(&flood.counts.attacker_errors, 1);
            continue;
        };
        while !flood.over() {
            let batch: Vec<Outgoing> = (0..BOGUS_BATCH)
                .map(|i| Outgoing {
                    mailbox: flood
                        .targets
                        .get(i % (flood.targets.len() + 1))
                        .copied()
                        .unwrap_or_else(random16),
                    token: random32(),
                    message_id: random16(),
                    payload: random_bytes(64),
                })
                .collect();
            let results = match timed(stream.send_all(&batch)).await {
                Ok(r) => r,
                Err(_) => {
                    add(&flood.counts.attacker_errors, 1);
                    break;
                }
            };
            add(&flood.counts.bogus_sent, batch.len());
            let c = &flood.counts;
            for r in results {
                match r {
                    Ok(_) => add(&c.bogus_accepted, 1),
                    Err(e) if e.code == ErrorCode::TokenInvalid => add(&c.bogus_token_invalid, 1),
                    Err(e) if e.code == ErrorCode::RateLimited => add(&c.bogus_rate_limited, 1),
                    Err(_) => add(&c.bogus_other, 1),
                }
            }
        }
        link.close();
    }
}

/// What one honest user saw.
struct Conversation {
    user: TestUser,
    received: Vec<String>,
    queued: usize,
    receive_errors: usize,
}

/// Send `EACH_WAY` texts to `peer` while receiving `EACH_WAY` from them.
/// Transient trouble (a queued send, a failed receive) is retried, counted,
/// and bounded by `deadline`; a refused send fails the test.
async fn converse(mut user: TestUser, peer: String, deadline: Instant) -> Conversation {
    let mut received = Vec::new();
    let (mut sent, mut queued, mut receive_errors) = (0, 0, 0);
    while sent < EACH_WAY || received.len() < EACH_WAY {
        assert!(
            Instant::now() < deadline,
            "{}: sent {sent}, received {} of {EACH_WAY} when time ran out",
            user.name,
            received.len()
        );
        if sent < EACH_WAY {
            let text = format!("{} {sent}", user.name);
            let (_, outcome) = user
                .client
                .send_text(&peer, &text)
                .await
                .unwrap_or_else(|e| panic!("{} -> {peer}: {e}", user.name));
            if matches!(outcome, SendOutcome::Queued(_)) {
                queued += 1;
            }
            sent += 1;
        } else if user.client.outbox_len().unwrap() > 0 {
            let _ = user.client.flush_outbox().await;
        }
        match user.client.receive(Duration::from_millis(50)).await {
            Ok(events) => received.extend(messages(&events).into_iter().map(|m| {
                assert_eq!(m.from, peer, "{} got a text from a stranger", user.name);
                m.text
            })),
            Err(_) => {
                receive_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Conversation {
        user,
        received,
        queued,
        receive_errors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_users_get_every_message_once_through_a_hostile_flood() {
    let relay = TestRelay::start().await;
    let mut alice = TestUser::new(&relay, "alice").await;
    let mut bob = TestUser::new(&relay, "bob").await;
    befriend(&mut alice, &mut bob).await;

    let flood = Arc::new(Flood {
        url: relay.url().clone(),
        targets: vec![alice.mailbox(), bob.mailbox()],
        stop: AtomicBool::new(false),
        hard_stop: Instant::now() + FLOOD_MAX,
        counts: Counts::default(),
    });
    let mut attackers = Vec::new();
    for _ in 0..JUNK_CONNECTIONS {
        attackers.push(tokio::spawn(junk_attacker(Arc::clone(&flood))));
    }
    for _ in 0..IDLE_CONNECTIONS {
        attackers.push(tokio::spawn(idle_attacker(Arc::clone(&flood))));
    }
    for _ in 0..BOGUS_CONNECTIONS {
        attackers.push(tokio::spawn(bogus_attacker(Arc::clone(&flood))));
    }
    // Let the flood build up before the honest users start talking.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let deadline = start + HONEST_BOUND;
    let a = tokio::spawn(converse(alice, "bob".into(), deadline));
    let b = tokio::spawn(converse(bob, "alice".into(), deadline));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let honest_time = start.elapsed();

    let flood_left = FLOOD_MIN.saturating_sub(start.elapsed());
    tokio::time::sleep(flood_left).await;
    flood.stop.store(true, Relaxed);
    let flood_time = start.elapsed();
    for t in attackers {
        tokio::time::timeout(OP_TIMEOUT * 3, t)
            .await
            .expect("an attacker did not stop")
            .expect("an attacker panicked");
    }

    let c = &flood.counts;
    println!(
        "flood for {:.1} s: {} garbage frames, {} truncated, {} oversize, {} abandoned streams, \
         {} idle streams held ({} opens blocked at the cap), {} bogus sends \
         ({} token invalid, {} rate limited, {} other, {} accepted); \
         {} attacker connections ({} refused), {} attacker errors",
        flood_time.as_secs_f64(),
        get(&c.garbage_frames),
        get(&c.truncated),
        get(&c.oversize),
        get(&c.abandoned),
        get(&c.idle_held),
        get(&c.idle_blocked),
        get(&c.bogus_sent),
        get(&c.bogus_token_invalid),
        get(&c.bogus_rate_limited),
        get(&c.bogus_other),
        get(&c.bogus_accepted),
        get(&c.connects),
        get(&c.connect_failures),
        get(&c.attacker_errors),
    );
    println!(
        "honest: {}/{} delivered in {:.1} s ({} sends queued for retry, {} receive errors)",
        a.received.len() + b.received.len(),
        2 * EACH_WAY,
        honest_time.as_secs_f64(),
        a.queued + b.queued,
        a.receive_errors + b.receive_errors,
    );

    // Every honest text arrived exactly once, in the order it was sent.
    for (conv, from) in [(&a, "bob"), (&b, "alice")] {
        let want: Vec<String> = (0..EACH_WAY).map(|i| format!("{from} {i}")).collect();
        assert_eq!(conv.received, want, "{} received", conv.user.name);
    }
    assert!(honest_time < HONEST_BOUND);
    // No made-up token ever got a send through.
    assert_eq!(get(&c.bogus_accepted), 0, "a made-up token was accepted");
    // The flood really happened, and the stream cap held.
    let cap = u64::from(Limits::default().max_concurrent_streams);
    assert!(get(&c.garbage_frames) > 0 && get(&c.oversize) > 0 && get(&c.truncated) > 0);
    assert!(get(&c.abandoned) > 0 && get(&c.bogus_sent) > 0);
    assert!(get(&c.idle_held) > 0);
    assert!(get(&c.idle_held) <= cap * IDLE_CONNECTIONS as u64);

    // After the flood: a newcomer registers, befriends Alice and is heard.
    let (mut alice, mut bob) = (a.user, b.user);
    let mut dave = tokio::time::timeout(DEADLINE, TestUser::new(&relay, "dave"))
        .await
        .expect("registration after the flood took too long");
    befriend(&mut alice, &mut dave).await;
    dave.send("alice", "after the flood").await;
    assert_eq!(texts(&alice.receive_messages(1).await), ["after the flood"]);
    // Nothing else is waiting for anyone.
    for user in [&mut alice, &mut bob] {
        let rest = user.receive_rest().await;
        assert!(
            !rest.iter().any(|e| matches!(e, Event::Message(_))),
            "{} got more: {rest:?}",
            user.name
        );
    }
}
