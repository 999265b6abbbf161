//! A relay holding N envelopes: what it costs and how fast it comes back.
//! N envelopes of `size` bytes are sent across M mailboxes whose devices
//! stay offline (never acked). Reported: relay RSS per held envelope (over
//! the empty relay's, and in all), disk bytes per held envelope, online
//! K=64 throughput on the empty relay and again while N are held, and the
//! time from SIGKILL to serving again: the new process listening, a new
//! device registered, and a held envelope delivered to its mailbox's
//! device.

use crate::pairs::{self, PairsPlan};
use crate::progress::Progress;
use crate::relay::BenchRelay;
use crate::report::Row;
use crate::traffic::{self, Mode, Payloads, ReceivePlan, SendPlan};
use anyhow::{anyhow, Context};
use std::time::{Duration, Instant};
use tern_client::transport::Dialer;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct HoldPlan {
    /// Envelopes to hold.
    pub envelopes: u64,
    /// Mailboxes they are spread over.
    pub mailboxes: usize,
    /// Payload bytes.
    pub size: usize,
    /// Sender connections filling at once.
    pub senders: usize,
    /// Sends in flight per sender.
    pub window: usize,
    /// Messages in each online K=64 measurement.
    pub online_messages: u64,
    /// K=64 measurements on each relay, alternating empty and held.
    pub online_rounds: usize,
    /// Bound on the fill, and on each other phase.
    pub timeout: Duration,
}

/// A mailbox of the fill: its id, a send token, and its device's account.
struct Held {
    mailbox: [u8; 16],
    token: [u8; 32],
    account: tern_crypto::DeviceAccount,
}

fn online(plan: &HoldPlan) -> PairsPlan {
    PairsPlan {
        pairs: 64,
        per_pair: (plan.online_messages / 64).max(1),
        size: plan.size,
        window: 64,
        push_window: 256,
        ack_batch: 64,
        rate: None,
        timeout: Duration::from_secs(120),
        mode: Mode::Opaque,
    }
}

fn msgs_per_sec(row: &Row) -> f64 {
    row.values
        .iter()
        .find(|(k, _)| *k == "msgs/s")
        .map_or(f64::NAN, |(_, v)| *v)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Run once against `relay`; `empty` is a second relay that stays empty,
/// measured in alternation with the full one so that load from elsewhere
/// on the machine falls on both alike.
pub async fn run(
    relay: &mut BenchRelay,
    empty_relay: Option<&BenchRelay>,
    plan: HoldPlan,
    label: String,
) -> anyhow::Result<Row> {
    let empty = relay.sample();

    // Mailboxes whose devices go offline.
    let m = plan.mailboxes.max(1);
    let progress = Progress::new(m as u64, "mailboxes");
    progress.set_prefix(format!("{label} register"));
    let mut held = Vec::with_capacity(m);
    let mut dialer = Dialer::default();
    for i in 0..m {
        let r = traffic::new_recipient(&mut dialer, &relay.url)
            .await
            .with_context(|| format!("mailbox {i}"))?;
        r.link.close();
        held.push(Held {
            mailbox: r.mailbox,
            token: r.token,
            account: r.account,
        });
        progress
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    progress.finish();
    dialer.wait_idle(Duration::from_secs(1)).await;

    // Fill: each sender takes every `senders`-th mailbox in turn.
    let progress = Progress::new(plan.envelopes, "held");
    progress.set_prefix(format!("{label} fill"));
    let start = Instant::now();
    let deadline = start + plan.timeout;
    let per_mailbox = plan.envelopes / m as u64;
    let extra = plan.envelopes % m as u64;
    let senders = plan.senders.clamp(1, m);
    let mut tasks = Vec::new();
    for s in 0..senders {
        let targets: Vec<([u8; 16], [u8; 32], u64)> = held
            .iter()
            .enumerate()
            .filter(|(i, _)| i % senders == s)
            .map(|(i, h)| {
                let n = per_mailbox + u64::from((i as u64) < extra);
                (h.mailbox, h.token, n)
            })
            .collect();
        let url = relay.url.clone();
        let count = progress.count.clone();
        let (size, window) = (plan.size, plan.window);
        tasks.push(tokio::spawn(async move {
            let mut dialer = Dialer::default();
            let link = dialer.connect(&url).await?;
            let (mut accepted, mut refused) = (0u64, 0u64);
            for (mailbox, token, n) in targets {
                let sent = traffic::send(
                    &link,
                    mailbox,
                    token,
                    SendPlan {
                        count: n,
                        size,
                        window,
                        rate: None,
                        start,
                        deadline,
                    },
                    Payloads::Opaque,
                    Some(count.clone()),
                )
                .await?;
                accepted += sent.accepted;
                refused += sent.refused;
            }
            link.close();
            anyhow::Ok((accepted, refused))
        }));
    }
    let (mut accepted, mut refused) = (0u64, 0u64);
    for t in tasks {
        let (a, r) = t.await.map_err(|e| anyhow!("fill task: {e}"))??;
        accepted += a;
        refused += r;
    }
    let fill_secs = start.elapsed().as_secs_f64();
    progress.finish();

    // Let the background checkpoint and reclamation settle, then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let full = relay.sample();
    let disk = relay.disk_bytes();
    let n = accepted.max(1) as f64;
    let (mut on_empty, mut on_held) = (Vec::new(), Vec::new());
    for _ in 0..plan.online_rounds.max(1) {
        if let Some(e) = empty_relay {
            let row = pairs::run(e, online(&plan), format!("{label} K=64 empty")).await?;
            on_empty.push(msgs_per_sec(&row));
        }
        let row = pairs::run(relay, online(&plan), format!("{label} K=64 held")).await?;
        on_held.push(msgs_per_sec(&row));
    }

    // SIGKILL, then the time until the relay serves again.
    let (restart_secs, listen_secs, rss_restart, peak_restart) = if relay.is_child() {
        let killed = relay.kill_and_restart().await?;
        let listening = killed.elapsed().as_secs_f64();
        serving(relay, &held[0]).await?;
        let serving = killed.elapsed().as_secs_f64();
        let after = relay.sample();
        (serving, listening, after.rss as f64, after.rss_peak as f64)
    } else {
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
    };

    let mib = |b: f64| b / (1 << 20) as f64;
    Ok(Row {
        label,
        values: vec![
            ("held", accepted as f64),
            ("refused", refused as f64),
            ("fill/s", accepted as f64 / fill_secs),
            ("rss MiB", mib(full.rss as f64)),
            ("B/env", full.rss as f64 / n),
            (
                "B/env over empty",
                full.rss.saturating_sub(empty.rss) as f64 / n,
            ),
            ("disk B/env", disk as f64 / n),
            ("K=64 empty/s", median(on_empty)),
            ("K=64 held/s", median(on_held)),
            ("listen s", listen_secs),
            ("restart s", restart_secs),
            ("rss after MiB", mib(rss_restart)),
            ("peak after MiB", mib(peak_restart)),
        ],
    })
}

/// Serving again: a new device registers, and a held mailbox's device
/// authenticates and is handed one of its envelopes.
async fn serving(relay: &BenchRelay, held: &Held) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut dialer = Dialer::default();
    let fresh = traffic::new_recipient(&mut dialer, &relay.url)
        .await
        .context("registering after restart")?;
    fresh.link.close();
    let link = dialer.connect(&relay.url).await?;
    let pending = link
        .authenticate(&held.mailbox, |m| held.account.sign(m))
        .await
        .context("authenticating after restart")?;
    if pending == 0 {
        return Err(anyhow!("nothing held after restart"));
    }
    let mut inbox = link.messages().await?;
    inbox.subscribe(16).await?;
    let got = traffic::receive(
        &mut inbox,
        ReceivePlan {
            expect: 1,
            ack_batch: 1_000_000,
            start: Instant::now(),
            deadline,
        },
        Payloads::Opaque,
        None,
    )
    .await?;
    if got.received == 0 {
        return Err(anyhow!("no held envelope delivered after restart"));
    }
    inbox.finish(Duration::from_millis(100)).await;
    link.close();
    let _ = held.token;
    Ok(())
}
