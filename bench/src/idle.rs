//! Idle connections: N devices, each on its own QUIC connection, each with
//! a registered mailbox and authenticated, then left quiet (client
//! keep-alives only). Memory per connection is the RSS growth divided by N.
//!
//! With the relay in-process, that growth holds both ends of every
//! connection (the load generator's QUIC state too), so it overstates the
//! relay's share; `--spawn-relay` measures the relay process alone.

use crate::progress::Progress;
use crate::relay::BenchRelay;
use crate::report::Row;
use crate::traffic;
use anyhow::anyhow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_client::transport::Dialer;
use tokio::sync::Semaphore;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct IdlePlan {
    /// Connections to open.
    pub connections: usize,
    /// Connections sharing one client UDP socket (one `Dialer`).
    pub per_endpoint: usize,
    /// Connection setups in progress at once.
    pub concurrency: usize,
    /// How long to hold them all open before measuring, then again to
    /// measure the CPU the quiet connections cost.
    pub hold: Duration,
    /// Bound on opening them all.
    pub timeout: Duration,
}

/// Run once against `relay`.
pub async fn run(relay: &BenchRelay, plan: IdlePlan, label: String) -> anyhow::Result<Row> {
    let before = relay.sample();
    let progress = Progress::new(plan.connections as u64, "connected");
    progress.set_prefix(format!("{label} open"));
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + plan.timeout);
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let per = plan.per_endpoint.max(1);
    let mut tasks = Vec::new();
    let mut remaining = plan.connections;
    while remaining > 0 {
        let n = remaining.min(per);
        remaining -= n;
        let (url, gate, count) = (relay.url.clone(), Arc::clone(&gate), progress.count.clone());
        tasks.push(tokio::spawn(async move {
            // Handshakes go one at a time per client socket (a Dialer
            // connects one at a time); enrolment runs alongside.
            let mut dialer = Dialer::default();
            let mut enrolling = tokio::task::JoinSet::new();
            let mut failed = 0usize;
            for _ in 0..n {
                let Ok(Ok(permit)) =
                    tokio::time::timeout_at(deadline, Arc::clone(&gate).acquire_owned()).await
                else {
                    failed += 1;
                    continue;
                };
                match tokio::time::timeout_at(deadline, dialer.connect(&url)).await {
                    Ok(Ok(link)) => {
                        let count = count.clone();
                        enrolling.spawn(async move {
                            let device =
                                tokio::time::timeout_at(deadline, traffic::enroll(link)).await;
                            drop(permit);
                            if matches!(device, Ok(Ok(_))) {
                                count.fetch_add(1, Relaxed);
                            }
                            device
                        });
                    }
                    Ok(Err(e)) => {
                        if failed == 0 {
                            eprintln!("connection failed: {e:#}");
                        }
                        failed += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            let mut held = Vec::with_capacity(n);
            while let Some(done) = enrolling.join_next().await {
                match done {
                    Ok(Ok(Ok(device))) => held.push(device),
                    Ok(Ok(Err(e))) => {
                        if failed == 0 {
                            eprintln!("enrolment failed: {e:#}");
                        }
                        failed += 1;
                    }
                    _ => failed += 1,
                }
            }
            (dialer, held, failed)
        }));
    }
    let mut held = Vec::new();
    let mut failed = 0usize;
    for t in tasks {
        let (dialer, devices, f) = t.await.map_err(|e| anyhow!("connect task: {e}"))?;
        failed += f;
        held.push((dialer, devices));
    }
    let open_secs = start.elapsed().as_secs_f64();
    progress.finish();
    let connected: usize = held.iter().map(|(_, d)| d.len()).sum();

    // Let the allocator and the relay settle, then measure.
    tokio::time::sleep(plan.hold).await;
    let settled = relay.sample();
    let settled_at = Instant::now();
    tokio::time::sleep(plan.hold).await;
    let quiet = relay.sample();
    let quiet_usage = crate::proc::usage(&settled, &quiet, settled_at.elapsed());

    for (_, devices) in &held {
        for d in devices {
            d.link.close();
        }
    }
    for (dialer, _) in &held {
        dialer.wait_idle(Duration::from_millis(200)).await;
    }
    drop(held);

    let delta = settled.rss.saturating_sub(before.rss) as f64;
    Ok(Row {
        label,
        values: vec![
            ("connected", connected as f64),
            ("failed", failed as f64),
            ("open secs", open_secs),
            ("conn/s", connected as f64 / open_secs.max(1e-9)),
            ("rss0 MiB", before.rss as f64 / (1 << 20) as f64),
            ("rss MiB", settled.rss as f64 / (1 << 20) as f64),
            ("KiB/conn", delta / 1024.0 / (connected.max(1) as f64)),
            ("idle relay cores", quiet_usage.relay_cores),
        ],
    })
}
