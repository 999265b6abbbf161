//! Online 1:1 traffic: K sender/receiver pairs, each device on its own QUIC
//! connection (and its own UDP socket), every receiver subscribed before the
//! first send. Used as fast as the window allows (`online`) and at a fixed
//! offered rate (`rate`), with opaque payloads or, in E2E mode, with each
//! pair holding a real Olm session and every message encrypted and
//! decrypted as the client does.

use crate::proc;
use crate::progress::Progress;
use crate::relay::BenchRelay;
use crate::report::{mean_us, Latency, Row};
use crate::traffic::{self, Mode, ReceivePlan, SendPlan};
use anyhow::{anyhow, Context};
use std::time::{Duration, Instant};
use tern_client::transport::Dialer;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct PairsPlan {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Messages each sender sends.
    pub per_pair: u64,
    /// Payload bytes (text bytes in E2E mode).
    pub size: usize,
    /// Sends in flight per sender.
    pub window: usize,
    /// Push window each receiver subscribes with.
    pub push_window: u32,
    /// Acknowledge after this many envelopes.
    pub ack_batch: usize,
    /// Total offered rate across all pairs; `None`: unpaced.
    pub rate: Option<f64>,
    /// Bound on the whole run after setup.
    pub timeout: Duration,
    /// Opaque payloads or E2E-encrypted texts.
    pub mode: Mode,
}

/// Run once against `relay` and return the figures as a table row.
pub async fn run(relay: &BenchRelay, plan: PairsPlan, label: String) -> anyhow::Result<Row> {
    let total = plan.per_pair * plan.pairs as u64;
    let progress = Progress::new(total, "delivered");
    progress.set_prefix(format!("{label} setup"));

    let mut receivers = Vec::with_capacity(plan.pairs);
    let mut senders = Vec::with_capacity(plan.pairs);
    for i in 0..plan.pairs {
        let mut dialer = Dialer::default();
        let mut recipient = traffic::new_recipient(&mut dialer, &relay.url)
            .await
            .with_context(|| format!("recipient {i}"))?;
        let (send_payloads, receive_payloads) = plan
            .mode
            .pair(&mut recipient.account)
            .with_context(|| format!("pair {i}"))?;
        let mut inbox = recipient.link.messages().await?;
        inbox.subscribe(plan.push_window).await?;
        let mut sender_dialer = Dialer::default();
        let sender = sender_dialer
            .connect(&relay.send_url)
            .await
            .with_context(|| format!("sender {i}"))?;
        receivers.push((recipient, inbox, dialer, receive_payloads));
        senders.push((sender, sender_dialer, send_payloads));
    }
    // Let subscriptions land before the clock starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    progress.set_prefix(label.clone());
    let before = relay.sample();
    let start = Instant::now();
    let deadline = start + plan.timeout;
    let per_sender_rate = plan.rate.map(|r| r / plan.pairs as f64);

    let mut receive_tasks = Vec::new();
    let mut send_tasks = Vec::new();
    for (
        (recipient, mut inbox, dialer, receive_payloads),
        (sender, sender_dialer, send_payloads),
    ) in receivers.into_iter().zip(senders)
    {
        let (mailbox, token) = (recipient.mailbox, recipient.token);
        let count = progress.count.clone();
        receive_tasks.push(tokio::spawn(async move {
            let plan = ReceivePlan {
                expect: plan.per_pair,
                ack_batch: plan.ack_batch,
                start,
                deadline,
            };
            let figures = traffic::receive(&mut inbox, plan, receive_payloads, Some(count)).await;
            inbox.finish(Duration::from_millis(200)).await;
            drop((recipient, dialer));
            figures
        }));
        send_tasks.push(tokio::spawn(async move {
            let plan = SendPlan {
                count: plan.per_pair,
                size: plan.size,
                window: plan.window,
                rate: per_sender_rate,
                start,
                deadline,
            };
            let figures = traffic::send(&sender, mailbox, token, plan, send_payloads, None).await;
            sender.close();
            drop(sender_dialer);
            figures
        }));
    }

    let mut written = 0u64;
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut send_errors = 0usize;
    let mut seal_time = Duration::ZERO;
    for t in send_tasks {
        match t.await.map_err(|e| anyhow!("sender task: {e}"))? {
            Ok(f) => {
                written += f.written;
                accepted += f.accepted;
                refused += f.refused;
                seal_time += f.crypto;
            }
            Err(e) => {
                send_errors += 1;
                eprintln!("sender failed: {e:#}");
            }
        }
    }
    let mut latency = Latency::new();
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let mut last = start;
    let mut open_time = Duration::ZERO;
    for t in receive_tasks {
        let f = t.await.map_err(|e| anyhow!("receiver task: {e}"))??;
        latency.merge(&f.latency);
        delivered += f.received;
        duplicates += f.duplicates;
        open_time += f.crypto;
        if let Some(l) = f.last {
            last = last.max(l);
        }
    }
    let wall = last.duration_since(start);
    let after = relay.sample();
    let usage = proc::usage(&before, &after, start.elapsed());
    progress.finish();
    if send_errors > 0 || delivered < total {
        eprintln!(
            "warning: {label}: delivered {delivered} of {total}, {refused} refused, {send_errors} senders failed"
        );
    }

    let mut values = vec![
        ("written", written as f64),
        ("delivered", delivered as f64),
        ("accepted", accepted as f64),
        ("refused", refused as f64),
        ("dup", duplicates as f64),
        ("secs", wall.as_secs_f64()),
        ("msgs/s", delivered as f64 / wall.as_secs_f64().max(1e-9)),
    ];
    values.extend(latency.columns());
    if plan.mode == Mode::E2e {
        values.extend([
            ("seal µs", mean_us(seal_time, written)),
            ("open µs", mean_us(open_time, delivered)),
        ]);
    }
    values.extend([
        ("relay cores", usage.relay_cores),
        ("proc cores", usage.total_cores),
        ("rss MiB", usage.rss_mib),
        ("peak MiB", usage.rss_peak_mib),
    ]);
    Ok(Row { label, values })
}
