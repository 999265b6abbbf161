//! `tern-bench --direct online`: two running clients (the whole client
//! stack: Olm, seal, store, outbox, `tern_client::spawn`) on one loopback
//! relay, 1:1, first with direct paths off (everything through the relay),
//! then on (over the direct path they open). Per mode: latency from
//! `send_text` to the recipient's message event, one message at a time
//! (p50, p99), and msgs/s for a burst with every send in flight at once;
//! with paths on, also the time from the first message (both sides online)
//! to the path being open on both sides.

use crate::relay::{BenchRelay, Setup};
use crate::report::Latency;
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_client::event::PathState;
use tern_client::settings::DirectMode;
use tern_client::{Client, ClientHandle, Event, EventStream};
use tokio::runtime::Handle;

/// What one run measured.
pub struct DirectRun {
    /// Direct paths on.
    pub direct: bool,
    /// Time from the first message to the path open on both sides.
    pub path_open: Option<Duration>,
    /// One message at a time.
    pub latency: Latency,
    /// Burst throughput.
    pub msgs_per_s: f64,
}

async fn next_event(
    events: &mut EventStream,
    what: &str,
    wait: Duration,
    want: impl Fn(&Event) -> bool,
) -> anyhow::Result<Event> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(e)) if want(&e) => return Ok(e),
            Ok(Some(_)) => {}
            Ok(None) => bail!("events ended waiting for {what}"),
            Err(_) => bail!("timed out waiting for {what}"),
        }
    }
}

async fn user(dir: &std::path::Path, relay: &BenchRelay, name: &str) -> anyhow::Result<Client> {
    let c = Client::init(&dir.join(name), &relay.url, name)
        .await
        .with_context(|| format!("init {name}"))?;
    c.set_send_spacing(Duration::ZERO, Duration::ZERO);
    Ok(c)
}

async fn running(client: Client) -> anyhow::Result<(ClientHandle, EventStream)> {
    let (h, mut ev) = tern_client::spawn(client);
    next_event(
        &mut ev,
        "the home connection",
        Duration::from_secs(30),
        |e| matches!(e, Event::Connection { connected: true }),
    )
    .await?;
    Ok((h, ev))
}

/// One run: a fresh relay, two fresh accounts, `messages` timed one at a
/// time and `messages` in a burst.
pub async fn run_once(
    relay_rt: &Handle,
    data_dir: Option<&std::path::Path>,
    direct: bool,
    messages: u64,
) -> anyhow::Result<DirectRun> {
    let relay = BenchRelay::start(relay_rt, data_dir, false, Setup::Bench).await?;
    let dir = tempfile::tempdir()?;
    let mut alice = user(dir.path(), &relay, "alice").await?;
    let mut bob = user(dir.path(), &relay, "bob").await?;
    let code = alice.invite().await?;
    bob.accept(&code, "alice").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alice
        .receive(Duration::from_millis(100))
        .await?
        .iter()
        .any(|e| matches!(e, Event::ContactAdded { .. }))
    {
        if Instant::now() > deadline {
            bail!("the hello never arrived");
        }
    }
    let mode = if direct {
        DirectMode::On
    } else {
        DirectMode::Off
    };
    alice.set_direct(mode).await?;
    bob.set_direct(mode).await?;
    let (alice, mut alice_ev) = running(alice).await?;
    let (bob, bob_ev) = running(bob).await?;

    // The recipient's arrivals, timed against the sender's start instants.
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let (path_tx, mut path_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut bob_ev = bob_ev;
    let watcher = tokio::spawn(async move {
        while let Some(e) = bob_ev.next().await {
            match e {
                Event::Message(m) => {
                    let _ = arrived_tx.send((m.text, Instant::now()));
                }
                Event::Path {
                    state: PathState::Open,
                    ..
                } => {
                    let _ = path_tx.send(Instant::now());
                }
                _ => {}
            }
        }
    });

    // Both online: the first message, and (paths on) the path opening.
    let t0 = Instant::now();
    alice.send_text("bob", "first").await?;
    arrived.recv().await.ok_or_else(|| anyhow!("bob stopped"))?;
    let path_open = if direct {
        next_event(&mut alice_ev, "the path", Duration::from_secs(30), |e| {
            matches!(
                e,
                Event::Path {
                    state: PathState::Open,
                    ..
                }
            )
        })
        .await?;
        let bob_open = tokio::time::timeout(Duration::from_secs(30), path_rx.recv())
            .await
            .map_err(|_| anyhow!("bob's path never opened"))?
            .ok_or_else(|| anyhow!("bob stopped"))?;
        Some(bob_open.max(Instant::now()).duration_since(t0))
    } else {
        None
    };

    // One at a time.
    let mut latency = Latency::new();
    for i in 0..messages {
        let text = format!("one {i}");
        let start = Instant::now();
        alice.send_text("bob", &text).await?;
        loop {
            let (t, at) = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
                .await
                .map_err(|_| anyhow!("message {i} never arrived"))?
                .ok_or_else(|| anyhow!("bob stopped"))?;
            if t == text {
                latency.record(at.duration_since(start).as_nanos() as u64);
                break;
            }
        }
    }

    // A burst, all in flight.
    let burst_start = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..messages {
        let (h, started) = (alice.clone(), Arc::clone(&started));
        sends.spawn(async move {
            let text = format!("burst {i}");
            if let Ok(mut s) = started.lock() {
                s.insert(text.clone(), Instant::now());
            }
            h.send_text("bob", &text).await
        });
    }
    let mut got = 0;
    while got < messages {
        let (t, _) = tokio::time::timeout(Duration::from_secs(120), arrived.recv())
            .await
            .map_err(|_| anyhow!("the burst stalled at {got} of {messages}"))?
            .ok_or_else(|| anyhow!("bob stopped"))?;
        if t.starts_with("burst ") {
            got += 1;
        }
    }
    let msgs_per_s = messages as f64 / burst_start.elapsed().as_secs_f64();
    while let Some(r) = sends.join_next().await {
        r.map_err(|e| anyhow!("a send task failed: {e}"))??;
    }
    alice.shutdown().await;
    bob.shutdown().await;
    watcher.abort();
    relay.shutdown().await;
    Ok(DirectRun {
        direct,
        path_open,
        latency,
        msgs_per_s,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Every run of both modes, then a table of each run and the medians.
pub async fn run(
    relay_rt: &Handle,
    data_dir: Option<&std::path::Path>,
    runs: usize,
    messages: u64,
) -> anyhow::Result<()> {
    println!(
        "direct: two running clients 1:1 on a loopback relay, {messages} messages one at a time \
         (latency) and {messages} in flight at once (msgs/s); {runs} run(s) per mode"
    );
    println!(
        "{:<8} {:>4} {:>10} {:>10} {:>10} {:>14}",
        "mode", "run", "p50 ms", "p99 ms", "msgs/s", "path open ms"
    );
    for direct in [false, true] {
        let name = if direct { "direct" } else { "relay" };
        let mut rows: Vec<(f64, f64, f64, f64)> = Vec::new();
        for r in 0..runs {
            let got = run_once(relay_rt, data_dir, direct, messages).await?;
            let open = got
                .path_open
                .map(|d| d.as_secs_f64() * 1e3)
                .unwrap_or(f64::NAN);
            let row = (
                got.latency.ms(0.5),
                got.latency.ms(0.99),
                got.msgs_per_s,
                open,
            );
            println!(
                "{name:<8} {:>4} {:>10.2} {:>10.2} {:>10.0} {:>14.1}",
                r + 1,
                row.0,
                row.1,
                row.2,
                row.3
            );
            debug_assert_eq!(got.direct, direct);
            rows.push(row);
        }
        println!(
            "{name:<8} {:>4} {:>10.2} {:>10.2} {:>10.0} {:>14.1}",
            "med",
            median(rows.iter().map(|r| r.0).collect()),
            median(rows.iter().map(|r| r.1).collect()),
            median(rows.iter().map(|r| r.2).collect()),
            median(rows.iter().map(|r| r.3).collect()),
        );
    }
    Ok(())
}
