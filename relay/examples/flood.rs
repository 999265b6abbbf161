//! What a hostile flood costs honest users: one sender -> one subscribed
//! recipient at a fixed offered rate, opaque 200-byte payloads, first alone
//! and then beside attacker connections sending garbage frames, oversize
//! length prefixes, abandoned streams and sends with made-up tokens as fast
//! as they can. The relay runs with its deployed defaults (limits and
//! rates), so what is measured is the relay defending itself.
//!
//! Each payload carries its send time (nanoseconds since the run's start), so
//! the recipient measures end-to-end latency: written by the sender, made
//! durable by the relay, pushed, read. No assertions; figures only.
//!
//! `cargo run --release -p tern-relay --example flood -- [RUNS] [SECONDS] [RATE] [ATTACKERS]`

use prost::Message;
use rand::Rng;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::{Dialer, Outgoing, RelayLink};
use tern_crypto::DeviceAccount;
use tern_protocol::io::{read_frame, write_frame};
use tern_protocol::limits::DEFAULT_MAX_FRAME;
use tern_protocol::pb::{self, relay_frame::Frame};
use tern_protocol::{STREAM_CONTROL, STREAM_MESSAGES};
use tern_relay::{RelayConfig, RunningRelay, SystemClock};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bound on one attacker operation, and on the wait for stragglers.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the recipient waits for the last envelopes after sending ends.
const DRAIN: Duration = Duration::from_secs(10);
const PAYLOAD: usize = 200;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    sent: u64,
    delivered: u64,
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    attacker_frames_per_sec: f64,
    /// Attacker frames (or streams) per second by role: garbage, oversize,
    /// abandoned, made-up-token sends.
    by_role: [f64; 4],
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let runs = arg(1, 3).max(1) as usize;
    let secs = arg(2, 5).max(1);
    let rate = arg(3, 500).max(1);
    let attackers = arg(4, 8) as usize;
    println!(
        "one sender -> one subscribed recipient, 200-byte payloads offered at {rate} msgs/s for {secs} s, \
         default limits and rates; flood: {attackers} attacker connections"
    );
    let mut table = Vec::new();
    for (name, k) in [("no flood", 0), ("flood", attackers)] {
        let mut figures = Vec::new();
        for run in 1..=runs {
            let f = one_run(Duration::from_secs(secs), rate, k).await?;
            println!(
                "{name:>8} run {run}: delivered {}/{}, {:.0} msgs/s, p50 {:.2} ms, p99 {:.2} ms, attacker {:.0} frames/s",
                f.delivered, f.sent, f.msgs_per_sec, f.p50_ms, f.p99_ms, f.attacker_frames_per_sec
            );
            if k > 0 {
                let [g, o, a, b] = f.by_role;
                println!(
                    "{:>19} garbage {g:.0}/s, oversize {o:.0}/s, abandoned streams {a:.0}/s, made-up-token sends {b:.0}/s",
                    ""
                );
            }
            figures.push(f);
        }
        table.push((name, figures));
    }
    println!("\nmedians over {runs} runs");
    println!(
        "{:<10} {:>13} {:>9} {:>8} {:>8} {:>18}",
        "condition", "delivered", "msgs/s", "p50 ms", "p99 ms", "attacker frames/s"
    );
    for (name, figures) in table {
        let m = |f: fn(&Figures) -> f64| median(figures.iter().map(f).collect());
        println!(
            "{:<10} {:>13} {:>9.0} {:>8.2} {:>8.2} {:>18.0}",
            name,
            format!(
                "{:.0}/{:.0}",
                m(|f| f.delivered as f64),
                m(|f| f.sent as f64)
            ),
            m(|f| f.msgs_per_sec),
            m(|f| f.p50_ms),
            m(|f| f.p99_ms),
            m(|f| f.attacker_frames_per_sec),
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The `q` quantile of sorted `v`, in milliseconds.
fn percentile_ms(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i] as f64 / 1e6
}

async fn one_run(for_how_long: Duration, rate: u64, attackers: usize) -> Result<Figures, Error> {
    let dir = tempfile::tempdir()?;
    let config = RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        ..RelayConfig::default()
    };
    let relay = RunningRelay::start(config, Arc::new(SystemClock)).await?;

    // The recipient registers, authenticates, mints a token and subscribes.
    let account = DeviceAccount::new();
    let mut dialer = Dialer::default();
    let link = dialer.connect(&relay.url).await?;
    let mailbox = link.register(account.signing_key()).await?;
    link.authenticate(&mailbox, |m| account.sign(m)).await?;
    let token = link.create_token().await?;
    let mut inbox = link.messages().await?;
    inbox.subscribe(1024).await?;

    // The sender writes Send frames on its own connection at the offered
    // rate without waiting for answers; a task of its own reads them.
    let mut sender_dialer = Dialer::default();
    let sender = sender_dialer.connect(&relay.url).await?;
    let (mut out, mut answers) = sender.open_raw_stream().await?;
    out.write_all(&[STREAM_MESSAGES]).await?;

    // The flood starts with the honest traffic and lasts as long.
    let start = Instant::now();
    let flood_end = start + for_how_long;
    let flood: Vec<_> = (0..attackers)
        .map(|i| {
            let url = relay.url.clone();
            tokio::spawn(async move { attacker(i, url, flood_end, mailbox).await })
        })
        .collect();

    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let answers_task = {
        let (accepted, refused) = (Arc::clone(&accepted), Arc::clone(&refused));
        tokio::spawn(async move {
            while let Ok(Ok(Some(body))) =
                tokio::time::timeout(DRAIN, read_frame(&mut answers, DEFAULT_MAX_FRAME)).await
            {
                if let Ok(pb::RelayFrame {
                    frame: Some(Frame::SendResult(r)),
                }) = pb::RelayFrame::decode(&body[..])
                {
                    match r.error {
                        None => accepted.fetch_add(1, Relaxed),
                        Some(_) => refused.fetch_add(1, Relaxed),
                    };
                }
            }
        })
    };

    // How many the sender wrote, once it is done (until then, "more").
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let sent_total_rx = Arc::clone(&sent_total);
    let receiver = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut latencies = Vec::new();
        let mut acks = Vec::new();
        let mut last = start;
        loop {
            let next = tokio::time::timeout(Duration::from_millis(20), inbox.next()).await;
            match next {
                Ok(Ok(Some(Frame::Envelope(e)))) => {
                    let now = start.elapsed().as_nanos() as u64;
                    if e.payload.len() >= 16 {
                        let mut sent_at = [0u8; 8];
                        let mut index = [0u8; 8];
                        sent_at.copy_from_slice(&e.payload[..8]);
                        index.copy_from_slice(&e.payload[8..16]);
                        if seen.insert(u64::from_be_bytes(index)) {
                            latencies.push(now.saturating_sub(u64::from_be_bytes(sent_at)));
                            last = Instant::now();
                        }
                    }
                    acks.push(e.seq);
                    if acks.len() >= 64 {
                        let _ = inbox.ack(std::mem::take(&mut acks)).await;
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(_) => break,
                Err(_) => {
                    if !acks.is_empty() {
                        let _ = inbox.ack(std::mem::take(&mut acks)).await;
                    }
                    if Instant::now() > flood_end + DRAIN || last.elapsed() > DRAIN {
                        break;
                    }
                }
            }
            if seen.len() as u64 >= sent_total_rx.load(Relaxed)
                || Instant::now() > flood_end + DRAIN
            {
                break;
            }
        }
        latencies.sort_unstable();
        (latencies, last)
    });

    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    let total = rate * for_how_long.as_secs();
    let mut sent = 0u64;
    while sent < total && start.elapsed() < for_how_long + Duration::from_secs(1) {
        tick.tick().await;
        let mut payload = vec![0x5a; PAYLOAD];
        payload[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        payload[8..16].copy_from_slice(&sent.to_be_bytes());
        let frame = pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Send(pb::Send {
                request_id: sent + 1,
                mailbox_id: mailbox.to_vec().into(),
                token: token.to_vec().into(),
                message_id: rand::random::<[u8; 16]>().to_vec().into(),
                payload: payload.into(),
                ephemeral: false,
            })),
        };
        write_frame(&mut out, &frame).await?;
        sent += 1;
    }
    let _ = out.finish();
    sent_total.store(sent, Relaxed);

    let (latencies, last) = receiver.await?;
    let _ = answers_task.await;
    let mut by_role = [0u64; 4];
    for (i, a) in flood.into_iter().enumerate() {
        if let Ok(Ok(n)) = tokio::time::timeout(OP_TIMEOUT * 2, a).await {
            by_role[i % 4] += n;
        }
    }
    let attack_secs = for_how_long.as_secs_f64();
    relay.shutdown().await;
    let refused = refused.load(Relaxed);
    if refused > 0 {
        println!(
            "  ({refused} honest sends refused, {} accepted)",
            accepted.load(Relaxed)
        );
    }

    let delivered = latencies.len() as u64;
    Ok(Figures {
        sent,
        delivered,
        msgs_per_sec: delivered as f64 / last.duration_since(start).as_secs_f64().max(1e-9),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        attacker_frames_per_sec: by_role.iter().sum::<u64>() as f64 / attack_secs,
        by_role: by_role.map(|n| n as f64 / attack_secs),
    })
}

/// One attacker connection until `end`; returns the frames and streams it
/// threw at the relay. Role by index: garbage frames on a message stream,
/// oversize length prefixes, abandoned streams, or made-up-token sends.
async fn attacker(
    i: usize,
    url: tern_protocol::url::RelayUrl,
    end: Instant,
    target: [u8; 16],
) -> u64 {
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
            match i % 4 {
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
async fn garbage(link: &RelayLink, frames: &mut u64) -> Result<(), Error> {
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
async fn oversize(link: &RelayLink, frames: &mut u64) -> Result<(), Error> {
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
async fn abandoned(link: &RelayLink, frames: &mut u64) -> Result<(), Error> {
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
async fn bogus_sends(link: &RelayLink, frames: &mut u64, target: [u8; 16]) -> Result<(), Error> {
    let mut stream = tokio::time::timeout(OP_TIMEOUT, link.messages()).await??;
    loop {
        let batch: Vec<Outgoing> = (0..256)
            .map(|i| Outgoing {
                mailbox: if i % 2 == 0 { target } else { rand::random() },
                token: rand::random(),
                message_id: rand::random(),
                payload: vec![0xa5; PAYLOAD],
            })
            .collect();
        tokio::time::timeout(OP_TIMEOUT, stream.send_all(&batch)).await??;
        *frames += batch.len() as u64;
    }
}
