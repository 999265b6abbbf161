//! What a hostile flood costs honest users: one sender -> one subscribed
//! recipient at a fixed offered rate, first alone and then beside attacker
//! connections that send garbage frames, oversize length prefixes,
//! abandoned streams and sends with made-up tokens as fast as they can. The
//! relay runs its deployed default limits and rates ([`Setup::Defaults`]),
//! so what is measured is the relay defending itself.
//!
//! The honest pair is the `rate` workload's ([`traffic::send`] paced,
//! [`traffic::receive`]): each message carries the time it was due, so
//! latency counts everything from the sender's intent to the recipient's
//! read. The attackers run on the load generator's runtime, on the same
//! cores.
//!
//! [`Setup::Defaults`]: crate::relay::Setup::Defaults

use crate::proc;
use crate::relay::BenchRelay;
use crate::report::{Latency, Row};
use crate::traffic::{self, Mode, ReceivePlan, SendPlan};
use anyhow::{anyhow, Context};
use rand::Rng;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, Outgoing, RelayLink};
use tern_protocol::limits::DEFAULT_MAX_FRAME;
use tern_protocol::url::RelayUrl;
use tern_protocol::{STREAM_CONTROL, STREAM_MESSAGES};

/// Bound on one attacker operation, and on the wait for an attacker to
/// stop once the flood is over.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the recipient waits for the last envelopes after sending ends.
const DRAIN: Duration = Duration::from_secs(10);
/// Most honest sends unanswered: far more than a paced sender at these
/// rates ever has, so the sender never waits on answers (as the flood
/// example it replaces did not).
const HONEST_WINDOW: usize = 4096;
/// Push window the recipient subscribes with.
const PUSH_WINDOW: u32 = 1024;
/// The recipient acknowledges after this many envelopes.
const ACK_BATCH: usize = 64;
/// Attacker roles, assigned round-robin by connection index.
const ROLES: [&str; 4] = ["garbage/s", "oversize/s", "abandoned/s", "bad token/s"];

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct FloodPlan {
    /// Honest messages per second offered.
    pub rate: f64,
    /// How long the honest traffic (and the flood beside it) lasts.
    pub seconds: u64,
    /// Attacker connections; 0 for the honest traffic alone.
    pub attackers: usize,
    /// Payload bytes (text bytes in E2E mode).
    pub size: usize,
    /// Opaque payloads or E2E-encrypted texts.
    pub mode: Mode,
}

/// Run once against `relay` and return the figures as a table row.
pub async fn run(relay: &BenchRelay, plan: FloodPlan, label: String) -> anyhow::Result<Row> {
    // The recipient registers, authenticates, mints a token and subscribes.
    let mut dialer = Dialer::default();
    let mut recipient = traffic::new_recipient(&mut dialer, &relay.url)
        .await
        .context("recipient")?;
    let (send_payloads, receive_payloads) = plan.mode.pair(&mut recipient.account)?;
    let mut inbox = recipient.link.messages().await?;
    inbox.subscribe(PUSH_WINDOW).await?;
    let (mailbox, token) = (recipient.mailbox, recipient.token);
    // The sender uses its own connection, as a real sender would.
    let mut sender_dialer = Dialer::default();
    let sender = sender_dialer.connect(&relay.url).await.context("sender")?;

    let before = relay.sample();
    let start = Instant::now();
    let flood_end = start + Duration::from_secs(plan.seconds);
    let flood: Vec<_> = (0..plan.attackers)
        .map(|i| tokio::spawn(attacker(i, relay.url.clone(), flood_end, mailbox)))
        .collect();

    let count = (plan.rate * plan.seconds as f64).round().max(1.0) as u64;
    let receiver = tokio::spawn(async move {
        let plan = ReceivePlan {
            expect: count,
            ack_batch: ACK_BATCH,
            start,
            deadline: flood_end + DRAIN,
        };
        let figures = traffic::receive(&mut inbox, plan, receive_payloads, None).await;
        inbox.finish(Duration::from_millis(200)).await;
        drop((recipient, dialer));
        figures
    });
    let sent = traffic::send(
        &sender,
        mailbox,
        token,
        SendPlan {
            count,
            size: plan.size,
            window: HONEST_WINDOW,
            rate: Some(plan.rate),
            start,
            deadline: flood_end + DRAIN,
        },
        send_payloads,
        None,
    )
    .await;
    sender.close();
    drop(sender_dialer);
    let received = receiver
        .await
        .map_err(|e| anyhow!("receiver task: {e}"))?
        .context("the honest recipient")?;
    let sent = sent.context("the honest sender")?;

    let mut by_role = [0u64; ROLES.len()];
    for (i, a) in flood.into_iter().enumerate() {
        if let Ok(Ok(n)) = tokio::time::timeout(OP_TIMEOUT * 2, a).await {
            by_role[i % ROLES.len()] += n;
        }
    }
    let after = relay.sample();
    let usage = proc::usage(&before, &after, start.elapsed());
    if received.received < sent.written {
        eprintln!(
            "warning: {label}: delivered {} of {}, {} refused",
            received.received, sent.written, sent.refused
        );
    }

    let wall = received
        .last
        .map_or(Duration::ZERO, |l| l.duration_since(start));
    let attack_secs = plan.seconds.max(1) as f64;
    let latency: &Latency = &received.latency;
    let mut values = vec![
        ("written", sent.written as f64),
        ("delivered", received.received as f64),
        ("refused", sent.refused as f64),
        (
            "msgs/s",
            received.received as f64 / wall.as_secs_f64().max(1e-9),
        ),
    ];
    values.extend(latency.columns());
    values.push((
        "attacker frames/s",
        by_role.iter().sum::<u64>() as f64 / attack_secs,
    ));
    values.extend(
        ROLES
            .iter()
            .zip(by_role)
            .map(|(role, n)| (*role, n as f64 / attack_secs)),
    );
    values.extend([
        ("relay cores", usage.relay_cores),
        ("proc cores", usage.total_cores),
        ("rss MiB", usage.rss_mib),
    ]);
    Ok(Row { label, values })
}

/// One attacker connection until `end`; returns the frames and streams it
/// threw at the relay. Role by index: garbage frames on a message stream,
/// oversize length prefixes, abandoned streams, or made-up-token sends.
async fn attacker(i: usize, url: RelayUrl, end: Instant, target: [u8; 16]) -> u64 {
    let mut frames = 0u64;
    while Instant::now() < end {
        let mut dialer = Dialer::default();
        let link = match tokio::time::timeout(OP_TIMEOUT, dialer.connect(&url)).await {
            Ok(Ok(l)) => l,
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let until = tokio::time::Instant::from_std(end);
        let role = async {
            match i % ROLES.len() {
                0 => garbage(&link, &mut frames).await,
                1 => oversize(&link, &mut frames).await,
                2 => abandoned(&link, &mut frames).await,
                _ => bogus_sends(&link, &mut frames, target).await,
            }
        };
        // Any error (refused, reset, closed) ends this connection; the
        // deadline ends the role.
        let _ = tokio::time::timeout_at(until, role).await;
        link.close();
        // Reconnect politely: the honest users share this address.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    frames
}

/// `n` length-prefixed frames of random bytes.
fn garbage_frames(n: usize) -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let mut bytes = Vec::new();
    for _ in 0..n {
        let mut body = vec![0u8; rng.gen_range(1..300)];
        rng.fill(&mut body[..]);
        bytes.extend((body.len() as u32).to_be_bytes());
        bytes.extend(body);
    }
    bytes
}

/// Garbage frames, without end, on one message stream whose answers are
/// refused (the relay's error frames go nowhere).
async fn garbage(link: &RelayLink, frames: &mut u64) -> anyhow::Result<()> {
    loop {
        let (mut send, recv) = tokio::time::timeout(OP_TIMEOUT, link.open_raw_stream()).await??;
        drop(recv);
        send.write_all(&[STREAM_MESSAGES]).await?;
        for _ in 0..1_000 {
            let batch = garbage_frames(64);
            tokio::time::timeout(OP_TIMEOUT, send.write_all(&batch)).await??;
            *frames += 64;
        }
        let _ = send.finish();
    }
}

/// Length prefixes far over the maximum, one stream each, alternating kinds.
async fn oversize(link: &RelayLink, frames: &mut u64) -> anyhow::Result<()> {
    loop {
        let (mut send, recv) = tokio::time::timeout(OP_TIMEOUT, link.open_raw_stream()).await??;
        drop(recv);
        let (kind, len) = {
            let mut rng = rand::thread_rng();
            let kind = if rng.gen_bool(0.5) {
                STREAM_CONTROL
            } else {
                STREAM_MESSAGES
            };
            (kind, rng.gen_range(DEFAULT_MAX_FRAME as u32 + 1..=u32::MAX))
        };
        let mut bytes = vec![kind];
        bytes.extend(len.to_be_bytes());
        tokio::time::timeout(OP_TIMEOUT, send.write_all(&bytes)).await??;
        let _ = send.finish();
        *frames += 1;
    }
}

/// Streams opened and dropped: without a byte, with a kind byte alone, or
/// with half a length prefix.
async fn abandoned(link: &RelayLink, frames: &mut u64) -> anyhow::Result<()> {
    let mut n = 0usize;
    loop {
        let (mut send, recv) = tokio::time::timeout(OP_TIMEOUT, link.open_raw_stream()).await??;
        let bytes: &[u8] = match n % 3 {
            0 => &[],
            1 => &[STREAM_CONTROL],
            _ => &[STREAM_MESSAGES, 0, 0],
        };
        if !bytes.is_empty() {
            tokio::time::timeout(OP_TIMEOUT, send.write_all(bytes)).await??;
        }
        drop((send, recv));
        n += 1;
        *frames += 1;
    }
}

/// Pipelined sends with made-up tokens, half to the honest recipient's real
/// mailbox and half to made-up ones.
async fn bogus_sends(link: &RelayLink, frames: &mut u64, target: [u8; 16]) -> anyhow::Result<()> {
    let mut stream = tokio::time::timeout(OP_TIMEOUT, link.messages()).await??;
    loop {
        let batch: Vec<Outgoing> = (0..256)
            .map(|i| Outgoing {
                mailbox: if i % 2 == 0 { target } else { rand::random() },
                token: rand::random(),
                message_id: rand::random(),
                payload: vec![0xa5; 200],
            })
            .collect();
        tokio::time::timeout(OP_TIMEOUT, stream.send_all(&batch)).await??;
        *frames += batch.len() as u64;
    }
}
