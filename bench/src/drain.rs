//! Offline store, then drain: N envelopes queued for one mailbox whose
//! device is offline (store rate, durable), then the device connects,
//! authenticates, subscribes and acknowledges in batches (drain time). A
//! last connection checks how many envelopes the relay still holds. In E2E
//! mode the store rate includes encrypting each message and the drain
//! includes decrypting it.

use crate::proc;
use crate::progress::Progress;
use crate::relay::BenchRelay;
use crate::report::{mean_us, Row};
use crate::traffic::{self, Mode, ReceivePlan, SendPlan};
use anyhow::Context;
use std::time::{Duration, Instant};
use tern_client::transport::Dialer;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    /// Envelopes to queue.
    pub envelopes: u64,
    /// Payload bytes (text bytes in E2E mode).
    pub size: usize,
    /// Sends in flight while storing.
    pub window: usize,
    /// Push window the device subscribes with.
    pub push_window: u32,
    /// Acknowledge after this many envelopes.
    pub ack_batch: usize,
    /// Bound on each phase.
    pub timeout: Duration,
    /// Opaque payloads or E2E-encrypted texts.
    pub mode: Mode,
}

/// Run once against `relay`.
pub async fn run(relay: &BenchRelay, plan: DrainPlan, label: String) -> anyhow::Result<Row> {
    // The device registers, mints a token and goes offline.
    let mut dialer = Dialer::default();
    let mut device = traffic::new_recipient(&mut dialer, &relay.url).await?;
    let (send_payloads, receive_payloads) = plan.mode.pair(&mut device.account)?;
    let (mailbox, token, account) = (device.mailbox, device.token, device.account);
    device.link.close();
    dialer.wait_idle(Duration::from_secs(1)).await;

    // Store.
    let progress = Progress::new(plan.envelopes, "stored");
    progress.set_prefix(format!("{label} store"));
    let mut sender_dialer = Dialer::default();
    let sender = sender_dialer.connect(&relay.send_url).await?;
    let before_store = relay.sample();
    let start = Instant::now();
    let sent = traffic::send(
        &sender,
        mailbox,
        token,
        SendPlan {
            count: plan.envelopes,
            size: plan.size,
            window: plan.window,
            rate: None,
            start,
            deadline: start + plan.timeout,
        },
        send_payloads,
        Some(progress.count.clone()),
    )
    .await
    .context("storing")?;
    let store_secs = sent
        .last_answer
        .map_or(f64::NAN, |t| t.duration_since(start).as_secs_f64());
    let after_store = relay.sample();
    let store_usage = proc::usage(&before_store, &after_store, start.elapsed());
    progress.finish();
    sender.close();

    // Drain: the clock runs from connecting to the last envelope in hand.
    let progress = Progress::new(sent.accepted, "drained");
    progress.set_prefix(format!("{label} drain"));
    let before_drain = relay.sample();
    let start = Instant::now();
    let mut dialer = Dialer::default();
    let link = dialer.connect(&relay.url).await?;
    let pending = link.authenticate(&mailbox, |m| account.sign(m)).await?;
    let mut inbox = link.messages().await?;
    inbox.subscribe(plan.push_window).await?;
    let got = traffic::receive(
        &mut inbox,
        ReceivePlan {
            expect: sent.accepted,
            ack_batch: plan.ack_batch,
            // Latency is meaningless here (queued on purpose); only the
            // count and the clock matter.
            start,
            deadline: start + plan.timeout,
        },
        receive_payloads,
        Some(progress.count.clone()),
    )
    .await
    .context("draining")?;
    let drain_secs = got
        .last
        .map_or(f64::NAN, |t| t.duration_since(start).as_secs_f64());
    let drain_usage = proc::usage(&before_drain, &relay.sample(), start.elapsed());
    progress.finish();
    inbox.finish(Duration::from_secs(2)).await;
    link.close();
    dialer.wait_idle(Duration::from_secs(1)).await;

    // What is left once the acknowledgements have landed.
    let mut dialer = Dialer::default();
    let check = dialer.connect(&relay.url).await?;
    let left = check.authenticate(&mailbox, |m| account.sign(m)).await?;
    check.close();

    let mut values = vec![
        ("stored", sent.accepted as f64),
        ("refused", sent.refused as f64),
        ("store secs", store_secs),
        ("store/s", sent.accepted as f64 / store_secs),
        ("store cores", store_usage.relay_cores),
        ("pending", pending as f64),
        ("drained", got.received as f64),
        ("drain secs", drain_secs),
        ("drain/s", got.received as f64 / drain_secs),
        ("drain cores", drain_usage.relay_cores),
        ("left", left as f64),
        ("rss MiB", drain_usage.rss_mib),
    ];
    if plan.mode == Mode::E2e {
        values.extend([
            ("seal µs", mean_us(sent.crypto, sent.written)),
            ("open µs", mean_us(got.crypto, got.received)),
        ]);
    }
    Ok(Row { label, values })
}
