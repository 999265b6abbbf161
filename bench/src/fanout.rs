//! Group fan-out: M member mailboxes on one relay (registered and
//! authenticated with the relay protocol directly, not M full clients), one
//! sender depositing real group messages (a text Megolm-encrypted and
//! wrapped as `tern_client::groups::envelope` does it, padded to its size
//! bucket) with one multi-recipient send each.
//!
//! Three phases, every loop bounded by a count and a deadline:
//! 1. storage: with no member subscribed, `store` group messages; the growth
//!    of the relay's data directory (and of its envelope log alone) per
//!    message is what the relay keeps per group message;
//! 2. latency: every member subscribes (and acks what it gets, as the
//!    client does: 64 at a time, or after 20 ms of quiet; [`member`]
//!    reads its stream without the client library's reader task); each message is
//!    timed from the send until the last of the M mailboxes has it in
//!    hand: `sends` messages back to back (each sent once the previous is
//!    everywhere, so its acks arrive during the next fan-out), then `sends`
//!    to a group at rest (each sent once every member acked the previous
//!    one, plus [`SPACING_MS`] ms), with the CPU each side spends per delivery;
//! 3. throughput: `burst` messages from `senders` concurrent sender
//!    connections, as fast as their durable answers allow; group messages
//!    per second from the first send to the last member's last envelope.

use crate::member;
use crate::proc::{self, Sample};
use crate::relay::BenchRelay;
use crate::report::{Latency, Row};
use crate::traffic::{self, Recipient};
use anyhow::{anyhow, Context};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::groups::envelope::seal_group;
use tern_client::layers;
use tern_client::transport::{Dialer, MessageStream, OutgoingMany};
use tern_crypto::{new_envelope_key, GroupSender};
use tokio::sync::Notify;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct FanoutPlan {
    /// Member mailboxes.
    pub members: usize,
    /// Messages stored before anyone subscribes (phase 1).
    pub store: usize,
    /// Messages timed one at a time in each half of phase 2.
    pub sends: usize,
    /// Messages sent back to back (phase 3).
    pub burst: usize,
    /// Concurrent sender connections in phase 3.
    pub senders: usize,
    /// At rest, the pause after every member acked the previous message
    /// ([`SPACING_MS`] ms by default).
    pub spacing: Duration,
    /// Bound on the whole run.
    pub timeout: Duration,
}

/// Member connections per client UDP socket. A real member has a socket
/// of its own; at 250 a socket, a fan-out's burst of pushes overflowed the
/// sockets' default receive buffers (the kernel dropped ~5,000 datagrams a
/// run, `/proc/<pid>/net/udp`), and QUIC's retransmissions then set the
/// last member's time.
const MEMBERS_PER_SOCKET: usize = 50;

/// How long a spaced latency send waits after every member has acked
/// everything before it, for the relay to take those acks (the default
/// of `--spacing-ms`). Longer than quinn's delayed-ACK timer (25 ms): the
/// relay acknowledges the members' ack packets with 1,000 ACK-only QUIC
/// packets up to 25 ms after they arrive, and at 20 ms those landed on
/// the next send, which is not a group at rest (a real group's messages
/// are seconds apart).
pub const SPACING_MS: u64 = 50;

/// Send one group message; the time to its durable answer, in ns.
async fn timed_send(
    stream: &mut MessageStream,
    m: &OutgoingMany,
    deadline: tokio::time::Instant,
) -> anyhow::Result<u64> {
    let t0 = Instant::now();
    let results = tokio::time::timeout_at(deadline, stream.send_many(m))
        .await
        .map_err(|_| anyhow!("timed out sending"))??;
    if results.iter().any(|r| r.is_err()) {
        return Err(anyhow!("a target was refused"));
    }
    Ok(t0.elapsed().as_nanos() as u64)
}

/// Arrivals per message index, and a wake-up when one completes.
struct Arrivals {
    counts: Vec<AtomicU32>,
    /// When the first member got each message, in ns after `base`.
    first: Vec<AtomicU64>,
    base: Instant,
    done: Notify,
    /// Envelopes the members have acknowledged.
    acked: AtomicU64,
}

impl Arrivals {
    /// One member got message `i`.
    fn arrived(&self, i: usize, need: u32) {
        let Some(c) = self.counts.get(i) else { return };
        let n = c.fetch_add(1, Relaxed) + 1;
        if n == 1 {
            if let Some(f) = self.first.get(i) {
                f.store(self.base.elapsed().as_nanos() as u64, Relaxed);
            }
        }
        if n == need {
            self.done.notify_waiters();
        }
    }

    /// From `t0` to the first member holding message `i`.
    fn first_after(&self, i: usize, t0: Instant) -> u64 {
        let at = self.first.get(i).map_or(0, |f| f.load(Relaxed));
        at.saturating_sub(t0.duration_since(self.base).as_nanos() as u64)
    }
}

/// CPU per delivery in µs over a phase: the relay's (its threads
/// in-process, the child's when spawned; NaN for a relay not ours) and the
/// load generator's (the rest of this process).
fn cpu_per_delivery(
    relay: &BenchRelay,
    before: (&Sample, &Sample),
    after: (&Sample, &Sample),
    deliveries: usize,
) -> (f64, f64) {
    let n = deliveries.max(1) as f64 / 1e6;
    let (relay_cpu, bench_cpu) = if relay.is_child() {
        (
            after.0.cpu_total - before.0.cpu_total,
            after.1.cpu_total - before.1.cpu_total,
        )
    } else if relay.data_dir().is_some() {
        let r = after.1.cpu_relay - before.1.cpu_relay;
        (r, after.1.cpu_total - before.1.cpu_total - r)
    } else {
        (f64::NAN, after.1.cpu_total - before.1.cpu_total)
    };
    (relay_cpu / n, bench_cpu / n)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn message_id(i: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id[8] = 0xfa;
    id
}

/// Run once against `relay`.
pub async fn run(relay: &BenchRelay, plan: FanoutPlan, label: String) -> anyhow::Result<Row> {
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let bound = |what: &'static str| move |_| anyhow!("timed out {what}");
    // Members: MEMBERS_PER_SOCKET connections per client socket.
    let mut members: Vec<Recipient> = Vec::with_capacity(plan.members);
    let mut dialers = Vec::new();
    while members.len() < plan.members {
        let mut dialer = Dialer::default();
        for _ in 0..(plan.members - members.len()).min(MEMBERS_PER_SOCKET) {
            let r =
                tokio::time::timeout_at(deadline, traffic::new_recipient(&mut dialer, &relay.url))
                    .await
                    .map_err(bound("enrolling members"))??;
            members.push(r);
        }
        dialers.push(dialer);
    }
    let targets: Vec<([u8; 16], [u8; 32])> = members.iter().map(|m| (m.mailbox, m.token)).collect();

    // One group session; every message a short text, encrypted once.
    let mut sender = GroupSender::new();
    let env_key = new_envelope_key();
    let total = plan.store + 2 * plan.sends + plan.burst;
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            let c = layers::content(
                message_id(i),
                0,
                layers::text_body("a group message of 32 bytes...."),
            );
            seal_group(&mut sender, &env_key, &[9; 16], &[7; 32], &c)
        })
        .collect();
    let payload_len = payloads.first().map_or(0, |p| p.len());
    let send = |i: usize| OutgoingMany {
        message_id: message_id(i),
        payload: payloads[i].clone(),
        targets: targets.clone(),
        ephemeral: false,
    };
    let mut out_dialer = Dialer::default();
    let link = out_dialer
        .connect(&relay.url)
        .await
        .context("sender connect")?;
    let mut stream = link.messages().await?;

    // Phase 1: storage.
    // A relay this tool did not start (--relay) has no directory here:
    // its disk figures read as zero.
    let data = relay.data_dir().map(Path::to_path_buf);
    let size = |sub: Option<&str>| {
        data.as_ref().map_or(0, |d| match sub {
            Some(s) => dir_bytes(&d.join("db").join(s)),
            None => dir_bytes(d),
        })
    };
    let (disk0, log0) = (size(None), size(Some("envelopes")));
    for i in 0..plan.store {
        let results = tokio::time::timeout_at(deadline, stream.send_many(&send(i)))
            .await
            .map_err(bound("storing"))??;
        if results.iter().any(|r| r.is_err()) {
            return Err(anyhow!("a target was refused while storing"));
        }
    }
    let stored = plan.store.max(1) as f64;
    let disk_per = (size(None).saturating_sub(disk0)) as f64 / stored;
    let log_per = (size(Some("envelopes")).saturating_sub(log0)) as f64 / stored;

    // Members subscribe and ack everything they get.
    let arrivals = Arc::new(Arrivals {
        counts: (0..total).map(|_| AtomicU32::new(0)).collect(),
        first: (0..total).map(|_| AtomicU64::new(0)).collect(),
        base: Instant::now(),
        done: Notify::new(),
        acked: AtomicU64::new(0),
    });
    let need = plan.members as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for m in members {
        let arrivals = Arc::clone(&arrivals);
        let member = member::subscribe(&m.link, 256).await?;
        tasks.spawn(async move {
            let _keep = m.link;
            let got = |message_id: &[u8]| {
                let i = message_id
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok());
                if let Some(b) = i {
                    arrivals.arrived(u64::from_be_bytes(b) as usize, need);
                }
            };
            let acked = |n: u64| {
                arrivals.acked.fetch_add(n, Relaxed);
            };
            let _ = member.run(got, acked).await;
        });
    }
    let all_in = |i: usize| arrivals.counts[i].load(Relaxed) >= need;
    let wait_all = |i: usize| {
        let arrivals = Arc::clone(&arrivals);
        async move {
            loop {
                let notified = arrivals.done.notified();
                if arrivals.counts[i].load(Relaxed) >= need {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
            }
        }
    };
    // The stored ones drain first.
    for i in 0..plan.store {
        tokio::time::timeout_at(deadline, wait_all(i))
            .await
            .map_err(bound("draining"))?;
    }

    // Phase 2: latency, one message at a time, each timed from the send to
    // the last member holding it; also timed: the durable answer (send to
    // `SendMany` results) and the first member's arrival.
    // 2a, back to back: each message is sent as soon as the previous one
    // is everywhere, so the members' acks of the previous message (sent
    // after 20 ms of quiet, one per member, since a message takes longer
    // than that to reach 1,000) reach the relay while it fans out this one.
    let mut b2b = Latency::new();
    let mut acked = Latency::new();
    let mut first_in = Latency::new();
    for i in plan.store..plan.store + plan.sends {
        let t0 = Instant::now();
        acked.record(timed_send(&mut stream, &send(i), deadline).await?);
        tokio::time::timeout_at(deadline, wait_all(i))
            .await
            .map_err(bound("delivering"))?;
        b2b.record(t0.elapsed().as_nanos() as u64);
    }
    // 2b, spaced: each message goes to a group at rest, as a real group's
    // messages do (seconds apart): sent once every member has acked
    // everything before it and the spacing has passed for the relay to take
    // those acks. The CPU figures are this phase's: every delivery here
    // costs a push and its own ack, as it does for a group at rest.
    let mut latency = Latency::new();
    let before = (relay.sample(), proc::sample());
    let first_spaced = plan.store + plan.sends;
    for i in first_spaced..first_spaced + plan.sends {
        let owed = (i * plan.members) as u64;
        tokio::time::timeout_at(deadline, async {
            while arrivals.acked.load(Relaxed) < owed {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .map_err(bound("waiting for acks"))?;
        tokio::time::sleep(plan.spacing).await;
        let t0 = Instant::now();
        acked.record(timed_send(&mut stream, &send(i), deadline).await?);
        tokio::time::timeout_at(deadline, wait_all(i))
            .await
            .map_err(bound("delivering"))?;
        latency.record(t0.elapsed().as_nanos() as u64);
        first_in.record(arrivals.first_after(i, t0));
    }
    let after = (relay.sample(), proc::sample());
    let (relay_us, bench_us) = cpu_per_delivery(
        relay,
        (&before.0, &before.1),
        (&after.0, &after.1),
        plan.sends * plan.members,
    );

    // Phase 3: throughput from several sender connections.
    let first = plan.store + 2 * plan.sends;
    let senders = plan.senders.max(1);
    let t0 = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for k in 0..senders {
        let mine: Vec<OutgoingMany> = (first..total)
            .filter(|i| i % senders == k)
            .map(send)
            .collect();
        let mut d = Dialer::default();
        let url = relay.url.clone();
        sends.spawn(async move {
            let link = d.connect(&url).await?;
            let mut s = link.messages().await?;
            for m in &mine {
                s.send_many(m).await?;
            }
            s.finish(Duration::from_secs(2)).await;
            link.close();
            anyhow::Ok(())
        });
    }
    while let Some(r) = sends.join_next().await {
        r.map_err(|e| anyhow!("sender task: {e}"))??;
    }
    for i in first..total {
        tokio::time::timeout_at(deadline, wait_all(i))
            .await
            .map_err(bound("burst delivery"))?;
    }
    let burst_secs = t0.elapsed().as_secs_f64();
    debug_assert!((0..total).all(all_in));
    tasks.abort_all();
    stream.finish(Duration::from_secs(1)).await;
    link.close();
    let mut values = vec![
        ("members", plan.members as f64),
        ("payload B", payload_len as f64),
    ];
    values.extend(latency.columns());
    values.push(("b2b p50 ms", b2b.ms(0.5)));
    values.push(("b2b p99 ms", b2b.ms(0.99)));
    values.push(("ack p50 ms", acked.ms(0.5)));
    values.push(("1st p50 ms", first_in.ms(0.5)));
    values.push(("relay µs/dlv", relay_us));
    values.push(("bench µs/dlv", bench_us));
    values.push(("disk B/msg", disk_per));
    values.push(("log B/msg", log_per));
    values.push(("target B/msg", (2 * payload_len + 32 * plan.members) as f64));
    values.push(("group msgs/s", plan.burst as f64 / burst_secs));
    Ok(Row { label, values })
}
