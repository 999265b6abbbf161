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
//! 2. latency: every member subscribes (and acks what it gets); then
//!    `sends` messages one after another, each timed from the send until
//!    the last of the M mailboxes has it in hand (members ack as the
//!    client does: 64 at a time, or after 20 ms of quiet);
//! 3. throughput: `burst` messages from `senders` concurrent sender
//!    connections, as fast as their durable answers allow; group messages
//!    per second from the first send to the last member's last envelope.

use crate::relay::BenchRelay;
use crate::report::{Latency, Row};
use crate::traffic::{self, Recipient};
use anyhow::{anyhow, Context};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::groups::envelope::seal_group;
use tern_client::layers;
use tern_client::transport::{Dialer, OutgoingMany};
use tern_crypto::{new_envelope_key, GroupSender};
use tern_protocol::pb::relay_frame::Frame;
use tokio::sync::Notify;

/// Members acknowledge after this many envelopes...
const ACK_BATCH: usize = 64;
/// ...or once the relay has been quiet this long (as the client does).
const ACK_IDLE: Duration = Duration::from_millis(20);

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct FanoutPlan {
    /// Member mailboxes.
    pub members: usize,
    /// Messages stored before anyone subscribes (phase 1).
    pub store: usize,
    /// Messages timed one at a time (phase 2).
    pub sends: usize,
    /// Messages sent back to back (phase 3).
    pub burst: usize,
    /// Concurrent sender connections in phase 3.
    pub senders: usize,
    /// Bound on the whole run.
    pub timeout: Duration,
}

/// Arrivals per message index, and a wake-up when one completes.
struct Arrivals {
    counts: Vec<AtomicU32>,
    done: Notify,
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
    // Members: 250 connections per client socket.
    let mut members: Vec<Recipient> = Vec::with_capacity(plan.members);
    let mut dialers = Vec::new();
    while members.len() < plan.members {
        let mut dialer = Dialer::default();
        for _ in 0..(plan.members - members.len()).min(250) {
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
    let total = plan.store + plan.sends + plan.burst;
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
        done: Notify::new(),
    });
    let need = plan.members as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for m in members {
        let arrivals = Arc::clone(&arrivals);
        let mut s = m.link.messages().await?;
        s.subscribe(256).await?;
        tasks.spawn(async move {
            let _keep = m.link;
            // Acks as the client sends them: a batch of 64, or once the
            // relay has been quiet for 20 ms.
            let mut acks = Vec::new();
            loop {
                let next = if acks.is_empty() {
                    Ok(s.next().await)
                } else {
                    tokio::time::timeout(ACK_IDLE, s.next()).await
                };
                let frame = match next {
                    Ok(Ok(Some(f))) => f,
                    Ok(_) => break,
                    Err(_) => {
                        if s.ack(std::mem::take(&mut acks)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                if let Frame::Envelope(e) = frame {
                    let i = e
                        .message_id
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok());
                    if let Some(c) =
                        i.and_then(|b| arrivals.counts.get(u64::from_be_bytes(b) as usize))
                    {
                        if c.fetch_add(1, Relaxed) + 1 == need {
                            arrivals.done.notify_waiters();
                        }
                    }
                    acks.push(e.seq);
                    if acks.len() >= ACK_BATCH && s.ack(std::mem::take(&mut acks)).await.is_err() {
                        break;
                    }
                }
            }
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

    // Phase 2: latency, one at a time.
    let mut latency = Latency::new();
    for i in plan.store..plan.store + plan.sends {
        let t0 = Instant::now();
        let results = tokio::time::timeout_at(deadline, stream.send_many(&send(i)))
            .await
            .map_err(bound("sending"))??;
        if results.iter().any(|r| r.is_err()) {
            return Err(anyhow!("a target was refused"));
        }
        tokio::time::timeout_at(deadline, wait_all(i))
            .await
            .map_err(bound("delivering"))?;
        latency.record(t0.elapsed().as_nanos() as u64);
    }

    // Phase 3: throughput from several sender connections.
    let first = plan.store + plan.sends;
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
    values.push(("disk B/msg", disk_per));
    values.push(("log B/msg", log_per));
    values.push(("target B/msg", (2 * payload_len + 32 * plan.members) as f64));
    values.push(("group msgs/s", plan.burst as f64 / burst_secs));
    Ok(Row { label, values })
}
