//! Crash safety of the relay: a real `tern-relay` process under a steady load
//! of sends (Alice) and receives with acks (Bob) is killed with SIGKILL at
//! random moments, 25 times, and restarted on the same port and data. At the
//! end every send the relay acknowledged has reached Bob's store exactly once,
//! everything Alice queued arrives once her outbox is flushed, nothing shows
//! twice, and every restart opened the data and came up with the same URL.
//!
//! Alongside that light load (a connection per message), a raw producer and
//! a raw consumer speak the message stream directly on one mailbox of their
//! own, with batches of sends in flight: thousands of acknowledged sends per
//! run, each of which must be delivered, none stored twice, and none left in
//! the store once the consumer has acked everything and the relay has shut
//! down cleanly (SIGTERM).
//!
//! The relay process comes from [`tern_tests::process`], which finds (and
//! builds) `tern-relay`, clears the environment and restarts it on the same
//! port and data.
//!
//! Longer than our usual file on purpose: the two loads, the kill loop and
//! the final accounting are one experiment whose invariants are checked
//! against each other, and a reader needs them side by side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, MessageStream, Outgoing, RelayLink};
use tern_client::{SendOutcome, Status};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::relay_frame::Frame;
use tern_protocol::url::RelayUrl;
use tern_protocol::ErrorCode;
use tern_relay::store::{EmbeddedStore, MailboxStore};
use tern_tests::process::RelayProcess;
use tern_tests::{befriend, messages, TestUser};
use tokio::sync::{oneshot, watch};

/// SIGKILLs of the relay in one run.
const KILLS: usize = 25;
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
/// Sends in flight at once on the raw producer's message stream.
const RAW_BATCH: usize = 32;
/// Bytes of one raw payload: a tag, the message id, filler.
const RAW_PAYLOAD: usize = 120;
/// Tag that starts every raw payload (followed by the message id).
const RAW_TAG: &[u8; 4] = b"raw:";
/// One raw connection attempt (connect, authenticate, open the stream)
/// longer than this is abandoned and retried.
const RAW_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One batch of sends (or one ack) longer than this is abandoned.
const RAW_BATCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed raw connection or an abandoned batch.
const RAW_BACKOFF: Duration = Duration::from_millis(50);
/// The raw consumer acks after this many envelopes, or when quiet.
const RAW_ACK_BATCH: usize = 32;
/// Push window the raw consumer subscribes with.
const RAW_WINDOW: u32 = 1024;
/// The raw consumer counts this long without a frame as quiet.
const RAW_QUIET: Duration = Duration::from_millis(100);
/// How long the raw consumer may take to see every acked message once the
/// producer is done.
const RAW_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long the exited relay's store may take to open.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

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

/// Which relay process runs: the `n`th restart (0: the first start), and
/// whether it is up. Published by the killer, so the raw producer and
/// consumer drop a connection to a killed process at once instead of
/// waiting out a timeout as a real client would (to the relay that is the
/// same as a timeout: the connection just stops). Only the raw load uses it;
/// Alice and Bob find out the hard way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incarnation {
    n: usize,
    up: bool,
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
fn killer(mut relay: RelayProcess, incarnation: &watch::Sender<Incarnation>) -> KillerReport {
    let mut rng = rand::thread_rng();
    let mut kills = 0;
    let mut failed_starts = Vec::new();
    let mut slowest_restart = Duration::ZERO;
    while kills < KILLS {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..=600)));
        // `kill` is SIGKILL; it reaps the process, so its database lock and
        // socket are gone before the next start.
        relay.kill();
        kills += 1;
        incarnation.send_replace(Incarnation {
            n: kills,
            up: false,
        });
        let began = Instant::now();
        // Same port and data; it insists the URL is unchanged.
        let failures = relay.restart();
        slowest_restart = slowest_restart.max(began.elapsed());
        failed_starts.extend(failures);
        incarnation.send_replace(Incarnation { n: kills, up: true });
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
    let relay = RelayProcess::start_in(&data);
    let url = relay.relay_url();

    let mut alice = TestUser::on(&url, "alice").await;
    let mut bob = TestUser::on(&url, "bob").await;
    befriend(&mut bob, &mut alice).await;

    // The raw load's mailbox and send token, made before the kills start.
    let raw = RawMailbox::register(&url).await;
    let raw_mailbox = raw.mailbox;

    let killing_done = Arc::new(AtomicBool::new(false));
    let sending_done = Arc::new(AtomicBool::new(false));
    let (incarnation_tx, incarnation) = watch::channel(Incarnation { n: 0, up: true });

    let killer_task = {
        let done = Arc::clone(&killing_done);
        tokio::task::spawn_blocking(move || {
            let report = killer(relay, &incarnation_tx);
            done.store(true, Ordering::SeqCst);
            report
        })
    };

    // The raw load: batches of sends until the killer is done, and a
    // consumer that acks as it goes and drains once told what was acked.
    let producer_task = tokio::spawn(produce(
        url.clone(),
        raw.mailbox,
        raw.token,
        incarnation.clone(),
        Arc::clone(&killing_done),
    ));
    let (acked_tx, acked_rx) = oneshot::channel();
    let consumer_task = tokio::spawn(consume(
        url.clone(),
        raw.mailbox,
        raw.account,
        incarnation,
        acked_rx,
    ));

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
                    Ok(Ok(events)) => shown.extend(messages(&events).into_iter().map(|m| m.text)),
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
        mut relay,
        kills,
        failed_starts,
        slowest_restart,
    } = killer_task.await.unwrap();
    let produced = producer_task.await.unwrap();
    // The consumer drains while Alice flushes and Bob receives.
    let _ = acked_tx.send(produced.acked.clone());
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
            shown.extend(messages(&events).into_iter().map(|m| m.text));
        }
    }
    // One more round: nothing may be left to show, and nothing again.
    let rest = bob
        .client
        .receive(Duration::from_millis(200))
        .await
        .unwrap();
    shown.extend(messages(&rest).into_iter().map(|m| m.text));
    let consumed = consumer_task.await.unwrap();

    // Exactly-once storage, from the relay's side: the consumer acked every
    // envelope it was pushed, so after a clean shutdown (which flushes the
    // acks' deletes) the raw mailbox must be empty. Anything left was stored
    // but never pushed, or acked without effect.
    let exit = relay.terminate();
    let left = leftover_envelopes(&data.join("db"), &raw_mailbox);

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
    let raw = RawTally::of(&produced, &consumed);
    println!(
        "crash(raw): {kills} kills, {} acked, {} in doubt ({} arrived), {} refused, \
         {} received, {} lost, {} redelivered after crashes, {} seqs reused, \
         {} stored twice, {} corrupt, {} strangers, {} left in store; {} batches, \
         {} abandoned, {} producer connects ({} failed), {} consumer sessions \
         ({} failed), drain {:?}, relay exit {exit}",
        thousands(produced.acked.len()),
        thousands(produced.in_doubt.len()),
        thousands(raw.doubt_arrived),
        thousands(produced.refused.len()),
        thousands(consumed.received.len()),
        raw.lost.len(),
        thousands(consumed.redelivered()),
        consumed.seqs_reused(),
        raw.stored_twice.len(),
        consumed.corrupt,
        raw.strangers.len(),
        left.len(),
        thousands(produced.batches),
        produced.abandoned,
        produced.connects,
        produced.failed_connects,
        consumed.sessions,
        consumed.failed_sessions,
        consumed.drain,
    );
    if !produced.errors.is_empty() {
        println!("crash(raw): send refusals: {:?}", produced.errors);
    }
    if !consumed.ends.is_empty() {
        println!("crash(raw): consumer sessions ended: {:?}", consumed.ends);
    }
    if !consumed.errors.is_empty() {
        println!("crash(raw): consumer saw: {:?}", consumed.errors);
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

    // The raw load.
    assert!(!produced.acked.is_empty(), "no raw send was acknowledged");
    assert!(
        raw.lost.is_empty(),
        "raw: acked but never received: {:?}",
        raw.lost
    );
    assert!(
        raw.strangers.is_empty(),
        "raw: received but never sent: {:?}",
        raw.strangers
    );
    assert!(
        raw.refused_arrived.is_empty(),
        "raw: refused but received: {:?}",
        raw.refused_arrived
    );
    assert_eq!(
        consumed.corrupt, 0,
        "raw: payloads that do not carry their id"
    );
    assert!(
        raw.stored_twice.is_empty(),
        "raw: delivered under two seqs: {:?}",
        raw.stored_twice
    );
    // Every distinct id received is an acked one or one in doubt that made it.
    assert_eq!(
        consumed.received.len(),
        produced.acked.len() + raw.doubt_arrived,
        "raw: distinct ids received"
    );
    // Redeliveries are not checked: a redelivery is the same envelope (same
    // id, same seq) pushed again because the ack for it died with a killed
    // relay (acks are not flushed before they take effect, docs/protocol.md).
    // The recipient client drops an id it already has (tests/tests/storage.rs,
    // `the_recipient_drops_a_message_it_already_stored`), so a user never
    // sees one twice; here they are only counted. What must not happen is one
    // id under two seqs (checked above): that would be a second copy stored.
    assert!(
        consumed.drained,
        "raw: the consumer did not drain in {RAW_DRAIN_DEADLINE:?}"
    );
    assert!(
        exit.success(),
        "the relay did not shut down cleanly: {exit}"
    );
    assert!(
        left.is_empty(),
        "raw: {} envelopes left in the store after everything was acked: {:?}",
        left.len(),
        left.iter().take(10).collect::<Vec<_>>()
    );
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

/// A message id of the raw load.
type MessageId = [u8; 16];

/// The raw load's own mailbox: its owner's keys and one send token.
struct RawMailbox {
    account: DeviceAccount,
    mailbox: [u8; 16],
    token: [u8; 32],
}

impl RawMailbox {
    async fn register(url: &RelayUrl) -> Self {
        let account = DeviceAccount::new();
        let mut dialer = Dialer::default();
        let link = dialer.connect(url).await.unwrap();
        let mailbox = link.register(account.signing_key()).await.unwrap();
        link.authenticate(&mailbox, |m| account.sign(m))
            .await
            .unwrap();
        let token = link.create_token().await.unwrap();
        link.close();
        dialer.wait_idle(Duration::from_secs(1)).await;
        Self {
            account,
            mailbox,
            token,
        }
    }
}

/// A raw payload: the tag, the message id, filler.
fn raw_payload(id: &MessageId) -> Vec<u8> {
    let mut p = Vec::with_capacity(RAW_PAYLOAD);
    p.extend_from_slice(RAW_TAG);
    p.extend_from_slice(id);
    p.resize(RAW_PAYLOAD, 0x5a);
    p
}

/// Wait for a live relay and return its incarnation; `None` if the killer
/// is gone (it has finished or panicked) and left no live relay.
async fn relay_up(incarnation: &mut watch::Receiver<Incarnation>) -> Option<usize> {
    if let Ok(i) = incarnation.wait_for(|i| i.up).await {
        return Some(i.n);
    }
    let last = *incarnation.borrow();
    last.up.then_some(last.n)
}

/// Resolves once the relay incarnation `n` is killed; never once the killer
/// is done (the last incarnation then stays up).
async fn relay_killed(incarnation: &mut watch::Receiver<Incarnation>, n: usize) {
    if incarnation.wait_for(|i| i.n != n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What the raw producer did.
#[derive(Default)]
struct Produced {
    /// Sends the relay acknowledged (durable). A sender is told no seq,
    /// so double storage is checked from the consumer's side only.
    acked: HashSet<MessageId>,
    /// Sends in a batch cut short by a kill or a timeout, or refused for a
    /// reason that does not rule out storage: maybe stored, maybe not.
    in_doubt: HashSet<MessageId>,
    /// Sends refused before storage (rate limited): never stored.
    refused: HashSet<MessageId>,
    /// Refusals by code.
    errors: BTreeMap<String, usize>,
    batches: usize,
    abandoned: usize,
    connects: usize,
    failed_connects: usize,
}

/// Send batches of [`RAW_BATCH`] fresh messages to `mailbox` until `stop`,
/// reconnecting whenever the relay goes away. An interrupted batch is not
/// sent again: its ids stay in doubt.
async fn produce(
    url: RelayUrl,
    mailbox: [u8; 16],
    token: [u8; 32],
    mut incarnation: watch::Receiver<Incarnation>,
    stop: Arc<AtomicBool>,
) -> Produced {
    let mut p = Produced::default();
    let mut dialer = Dialer::default();
    let mut conn: Option<(usize, RelayLink, MessageStream)> = None;
    while !stop.load(Ordering::SeqCst) {
        let (n, _, stream) = match &mut conn {
            Some(c) => c,
            None => {
                let Some(n) = relay_up(&mut incarnation).await else {
                    break;
                };
                p.connects += 1;
                let opened = tokio::time::timeout(RAW_CONNECT_TIMEOUT, async {
                    let link = dialer.connect(&url).await?;
                    let stream = link.messages().await?;
                    Ok::<_, tern_client::ClientError>((link, stream))
                })
                .await;
                match opened {
                    Ok(Ok((link, stream))) => conn.insert((n, link, stream)),
                    _ => {
                        p.failed_connects += 1;
                        tokio::time::sleep(RAW_BACKOFF).await;
                        continue;
                    }
                }
            }
        };
        let n = *n;
        let batch: Vec<Outgoing> = (0..RAW_BATCH)
            .map(|_| {
                let message_id: MessageId = rand::random();
                Outgoing {
                    mailbox,
                    token,
                    message_id,
                    payload: raw_payload(&message_id),
                }
            })
            .collect();
        p.batches += 1;
        let results = tokio::select! {
            r = stream.send_all(&batch) => r.ok(),
            () = relay_killed(&mut incarnation, n) => None,
            () = tokio::time::sleep(RAW_BATCH_TIMEOUT) => None,
        };
        let Some(results) = results else {
            // Cut short: each send may or may not be stored. Not resent.
            p.abandoned += 1;
            p.in_doubt.extend(batch.iter().map(|o| o.message_id));
            conn = None;
            tokio::time::sleep(RAW_BACKOFF).await;
            continue;
        };
        let mut pause = Duration::ZERO;
        for (o, r) in batch.iter().zip(results) {
            match r {
                Ok(_) => {
                    p.acked.insert(o.message_id);
                }
                Err(e) => {
                    *p.errors.entry(format!("{:?}", e.code)).or_default() += 1;
                    if e.code == ErrorCode::RateLimited {
                        p.refused.insert(o.message_id);
                        pause = pause.max(Duration::from_millis(e.retry_after_ms));
                    } else {
                        p.in_doubt.insert(o.message_id);
                    }
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause.min(Duration::from_millis(500))).await;
        }
    }
    if let Some((_, link, _)) = conn {
        link.close();
    }
    dialer.wait_idle(Duration::from_secs(1)).await;
    p
}

/// What the raw consumer received.
#[derive(Default)]
struct Consumed {
    /// Every delivery of each message id, by seq.
    received: HashMap<MessageId, Vec<u64>>,
    /// The ids delivered under each seq.
    by_seq: HashMap<u64, HashSet<MessageId>>,
    /// Payloads that do not carry their own message id.
    corrupt: usize,
    /// Frames that were not envelopes or CaughtUp, and refused acks.
    errors: Vec<String>,
    sessions: usize,
    failed_sessions: usize,
    /// Why sessions ended other than by a kill, by reason.
    ends: BTreeMap<String, usize>,
    /// Whether the final session caught up and saw every acked id.
    drained: bool,
    /// How long the drain took once the producer was done.
    drain: Duration,
}

impl Consumed {
    /// Deliveries beyond the first of each id.
    fn redelivered(&self) -> usize {
        self.received.values().map(|s| s.len() - 1).sum()
    }

    fn record(&mut self, id: &[u8], seq: u64, payload: &[u8]) {
        let Ok(id) = MessageId::try_from(id) else {
            self.corrupt += 1;
            return;
        };
        if payload.len() != RAW_PAYLOAD
            || &payload[..RAW_TAG.len()] != RAW_TAG
            || payload[RAW_TAG.len()..RAW_TAG.len() + 16] != id
        {
            self.corrupt += 1;
        }
        self.received.entry(id).or_default().push(seq);
        self.by_seq.entry(seq).or_default().insert(id);
    }

    /// Seqs delivered for more than one id: an envelope pushed before it
    /// was durable, lost with the relay, its seq then given to another.
    fn seqs_reused(&self) -> usize {
        self.by_seq.values().filter(|ids| ids.len() > 1).count()
    }
}

/// Authenticate, subscribe, record and ack, reconnecting whenever the relay
/// goes away. Once `acked` arrives (the producer is done), open one fresh
/// subscription, which pushes everything stored, and stop when it has
/// caught up, every acked id has been seen and all is acked.
async fn consume(
    url: RelayUrl,
    mailbox: [u8; 16],
    account: DeviceAccount,
    mut incarnation: watch::Receiver<Incarnation>,
    mut acked: oneshot::Receiver<HashSet<MessageId>>,
) -> Consumed {
    let mut c = Consumed::default();
    let mut dialer = Dialer::default();
    let mut want: Option<(HashSet<MessageId>, Instant)> = None;
    'sessions: loop {
        if want.is_none() {
            if let Ok(w) = acked.try_recv() {
                want = Some((w, Instant::now()));
            }
        }
        if want
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() > RAW_DRAIN_DEADLINE)
        {
            break;
        }
        let Some(n) = relay_up(&mut incarnation).await else {
            break;
        };
        // The final session is one begun after the producer stopped.
        let last = want.is_some();
        let opened = tokio::time::timeout(RAW_CONNECT_TIMEOUT, async {
            let link = dialer.connect(&url).await?;
            link.authenticate(&mailbox, |m| account.sign(m)).await?;
            let mut stream = link.messages().await?;
            stream.subscribe(RAW_WINDOW).await?;
            Ok::<_, tern_client::ClientError>((link, stream))
        })
        .await;
        let Ok(Ok((link, mut stream))) = opened else {
            c.failed_sessions += 1;
            tokio::time::sleep(RAW_BACKOFF).await;
            continue;
        };
        c.sessions += 1;
        let mut pending: Vec<u64> = Vec::new();
        let mut caught_up = false;
        loop {
            let frame = tokio::select! {
                f = stream.next() => Some(f),
                () = relay_killed(&mut incarnation, n) => break,
                () = tokio::time::sleep(RAW_QUIET) => None,
            };
            let quiet = match frame {
                Some(Ok(Some(Frame::Envelope(e)))) => {
                    c.record(&e.message_id, e.seq, &e.payload);
                    pending.push(e.seq);
                    false
                }
                Some(Ok(Some(Frame::CaughtUp(_)))) => {
                    caught_up = true;
                    false
                }
                Some(Ok(Some(other))) => {
                    c.errors.push(format!("{other:?}"));
                    false
                }
                // The stream or connection ended: reconnect.
                Some(Ok(None)) => {
                    *c.ends.entry("stream ended".into()).or_default() += 1;
                    break;
                }
                Some(Err(e)) => {
                    *c.ends.entry(e.to_string()).or_default() += 1;
                    break;
                }
                None => true,
            };
            if pending.len() >= RAW_ACK_BATCH || (quiet && !pending.is_empty()) {
                let seqs = std::mem::take(&mut pending);
                let sent = tokio::select! {
                    r = tokio::time::timeout(RAW_BATCH_TIMEOUT, stream.ack(seqs)) => {
                        matches!(r, Ok(Ok(())))
                    }
                    () = relay_killed(&mut incarnation, n) => false,
                };
                if !sent {
                    *c.ends.entry("ack failed".into()).or_default() += 1;
                    break;
                }
            }
            if !quiet {
                continue;
            }
            if !last {
                if let Ok(w) = acked.try_recv() {
                    // The producer is done: start the final session.
                    want = Some((w, Instant::now()));
                    stream.finish(Duration::from_secs(1)).await;
                    link.close();
                    continue 'sessions;
                }
                continue;
            }
            let Some((w, since)) = &want else {
                continue;
            };
            if caught_up && w.iter().all(|id| c.received.contains_key(id)) {
                // Everything is acked: let the acks land before closing.
                stream.finish(Duration::from_secs(2)).await;
                link.close();
                c.drained = true;
                c.drain = since.elapsed();
                break 'sessions;
            }
            if since.elapsed() > RAW_DRAIN_DEADLINE {
                break 'sessions;
            }
        }
        // The relay died or the stream broke: unacked envelopes come again.
        link.close();
        tokio::time::sleep(RAW_BACKOFF).await;
    }
    dialer.wait_idle(Duration::from_secs(1)).await;
    c
}

/// The raw load's figures that need both sides.
struct RawTally {
    /// Acked and never received.
    lost: Vec<String>,
    /// Received but never sent.
    strangers: Vec<String>,
    /// Refused before storage, yet received.
    refused_arrived: Vec<String>,
    /// In doubt and received.
    doubt_arrived: usize,
    /// Received under more than one seq: stored more than once.
    stored_twice: Vec<String>,
}

impl RawTally {
    fn of(p: &Produced, c: &Consumed) -> Self {
        let short = |id: &MessageId| hex::encode(&id[..6]);
        let lost = p
            .acked
            .iter()
            .filter(|id| !c.received.contains_key(*id))
            .map(short)
            .collect();
        let mut strangers = Vec::new();
        let mut refused_arrived = Vec::new();
        let mut doubt_arrived = 0;
        let mut stored_twice = Vec::new();
        for (id, seqs) in &c.received {
            if p.in_doubt.contains(id) {
                doubt_arrived += 1;
            } else if p.refused.contains(id) {
                refused_arrived.push(short(id));
            } else if !p.acked.contains(id) {
                strangers.push(short(id));
            }
            let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
            if distinct.len() > 1 {
                stored_twice.push(format!("{}: {distinct:?}", short(id)));
            }
        }
        Self {
            lost,
            strangers,
            refused_arrived,
            doubt_arrived,
            stored_twice,
        }
    }
}

/// What the stopped relay's store still holds for `mailbox`: (seq, id).
fn leftover_envelopes(db: &Path, mailbox: &[u8; 16]) -> Vec<(u64, MessageId)> {
    let deadline = Instant::now() + SHUTDOWN_DEADLINE;
    let store = loop {
        match EmbeddedStore::open(db) {
            Ok(s) => break s,
            // The lock of the exited process should be gone; allow a moment.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open the relay's store: {e}"),
        }
    };
    store
        .fetch(mailbox, 0, 1_000_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.message_id))
        .collect()
}

/// `n` with thousands separators: 6400 -> "6,400".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    out
}
