//! A relay of a fleet SIGKILLed under live traffic: how long its users are
//! interrupted, and whether every message still arrives exactly once.
//!
//! Two `tern-relay` processes (the binary beside this one, or
//! `--relay-bin`) on two loopback ports, and K pairs of real clients
//! (`tern_client::spawn`, each with its own store, Olm sessions and the
//! fleet URL naming both ports). Every sender sends a text every
//! `interval`; after `before` the first relay is SIGKILLed and the pairs
//! go on for `after`. Two ways to give both relays one store:
//! - `shared` (`--relay-arg` options such as `--store redis --redis URL`):
//!   both run from the start, the second with the first's identity files
//!   copied in, as a fleet is built (docs/operations.md, "A fleet");
//! - `successor` (the embedded store, which one process owns at a time):
//!   the second starts on the first's data directory right after the kill,
//!   so its start-up counts in the interruption.
//!
//! Interruption of a receiver = the longest gap between two messages it
//! was shown, from a second before the kill to the end; a receiver whose
//! relay connection was lost (its `Connection { connected: false }`) is
//! one the kill reached. Every message is counted: lost (sent and acked,
//! never shown) and shown twice must both be 0.

use crate::report::Row;
use anyhow::{anyhow, bail, Context};
use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_client::{spawn, Client, ClientHandle, Event, SendOutcome};
use tern_protocol::url::{RelayAddr, RelayUrl};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The files a fleet's relays share so they present one certificate.
const IDENTITY_FILES: [&str; 3] = ["cert.der", "key.der", "reset.key"];
/// Bound on a relay printing its URL.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long to wait for the last messages after the senders stop.
const SETTLE: Duration = Duration::from_secs(20);

/// One run's settings.
#[derive(Debug, Clone)]
pub struct FailoverPlan {
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Time between one sender's texts.
    pub interval: Duration,
    /// Traffic before the kill.
    pub before: Duration,
    /// Traffic after the kill.
    pub after: Duration,
    /// The `tern-relay` binary.
    pub relay_bin: PathBuf,
    /// Extra arguments for `tern-relay run` (a shared store); empty for
    /// the successor mode on the embedded store.
    pub relay_args: Vec<String>,
}

impl FailoverPlan {
    fn shared(&self) -> bool {
        !self.relay_args.is_empty()
    }
}

/// The `tern-relay` next to this executable.
pub fn default_relay_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding tern-bench itself")?;
    Ok(exe.with_file_name("tern-relay"))
}

/// A loopback UDP port free now.
fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `tern-relay run` child and the URL it printed.
struct RelayChild {
    child: Child,
    url: RelayUrl,
}

async fn start_relay(
    plan: &FailoverPlan,
    config: &Path,
    data: &Path,
    port: u16,
) -> anyhow::Result<RelayChild> {
    let mut child = Command::new(&plan.relay_bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--data")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(&plan.relay_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", plan.relay_bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("relay has no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(START_DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.strip_prefix("relay url: ") {
                return Ok::<_, anyhow::Error>(url.trim().to_string());
            }
        }
        bail!("the relay exited before printing its URL")
    })
    .await
    .context("the relay printed no URL in time")??;
    // Keep reading so the relay never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = url
        .parse()
        .map_err(|e| anyhow!("the relay printed {url:?}: {e}"))?;
    Ok(RelayChild { child, url })
}

/// What the receivers saw, shared with their tasks.
#[derive(Default)]
struct Seen {
    /// Per receiver: when each text was shown, and the texts.
    shown: Vec<Vec<(Instant, String)>>,
    /// Receivers whose relay connection was lost.
    lost_connection: HashSet<usize>,
}

/// A pair of real clients, befriended.
async fn pair(dir: &Path, url: &RelayUrl, i: usize) -> anyhow::Result<(ClientHandle, Client)> {
    let mut sender = Client::init(&dir.join(format!("s{i}")), url, &format!("s{i}")).await?;
    let mut receiver = Client::init(&dir.join(format!("r{i}")), url, &format!("r{i}")).await?;
    for c in [&sender, &receiver] {
        c.set_send_spacing(Duration::ZERO, Duration::ZERO);
    }
    let code = receiver.invite().await?;
    sender.accept(&code, "peer").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .receive(Duration::from_millis(100))
        .await?
        .iter()
        .any(|e| matches!(e, Event::ContactAdded { .. }))
    {
        if Instant::now() > deadline {
            bail!("pair {i}: the introduction never arrived");
        }
    }
    let (sender, _events) = spawn(sender);
    Ok((sender, receiver))
}

/// One run: returns its row.
pub async fn run(plan: FailoverPlan, label: String) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, crate::relay::bench_config_toml()?)?;
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let (a_port, b_port) = (free_port()?, free_port()?);
    let mut a = start_relay(&plan, &config, &a_data, a_port).await?;
    let mut b = None;
    if plan.shared() {
        std::fs::create_dir_all(&b_data)?;
        for f in IDENTITY_FILES {
            std::fs::copy(a_data.join(f), b_data.join(f))
                .with_context(|| format!("copying {f} to the second relay"))?;
        }
        let second = start_relay(&plan, &config, &b_data, b_port).await?;
        if second.url.fingerprint != a.url.fingerprint {
            bail!("the second relay presents another certificate");
        }
        b = Some(second);
    }
    let addr = |port| RelayAddr {
        host: "127.0.0.1".into(),
        port,
    };
    let fleet = RelayUrl::fleet(vec![addr(a_port), addr(b_port)], a.url.fingerprint)
        .ok_or_else(|| anyhow!("fleet URL"))?;

    let mut senders = Vec::new();
    let seen = Arc::new(Mutex::new(Seen {
        shown: vec![Vec::new(); plan.pairs],
        ..Seen::default()
    }));
    let mut receivers = Vec::new();
    for i in 0..plan.pairs {
        let (sender, receiver) = pair(dir.path(), &fleet, i).await?;
        senders.push(sender);
        let (handle, mut events) = spawn(receiver);
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    Event::Message(m) => s.shown[i].push((Instant::now(), m.text)),
                    Event::Connection { connected: false } => {
                        s.lost_connection.insert(i);
                    }
                    _ => {}
                }
            }
        });
        receivers.push(handle);
    }

    // Traffic: every sender one text per interval, numbered.
    let start = Instant::now();
    let end = start + plan.before + plan.after;
    let mut tasks = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let sender = sender.clone();
        let interval = plan.interval;
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut n = 0u64;
            let mut next = Instant::now();
            while Instant::now() < end {
                let text = format!("{i}:{n}");
                // Queued in the durable outbox at least; it goes on trying.
                if let Ok(SendOutcome::Sent | SendOutcome::Queued(_)) =
                    sender.send_text("peer", &text).await
                {
                    sent.push(text);
                }
                n += 1;
                next += interval;
                tokio::time::sleep_until(next.into()).await;
            }
            sent
        }));
    }
    tokio::time::sleep(plan.before).await;
    a.child.start_kill().context("SIGKILL to the first relay")?;
    let killed = Instant::now();
    a.child.wait().await.ok();
    if !plan.shared() {
        // The embedded store: the successor takes over the data directory.
        b = Some(start_relay(&plan, &config, &a_data, b_port).await?);
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.map_err(|e| anyhow!("sender task: {e}"))?);
    }
    // Let the outboxes drain and the receivers show the rest.
    let expected: usize = sent.iter().map(Vec::len).sum();
    let settle_until = Instant::now() + SETTLE;
    loop {
        let shown: usize = {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            s.shown.iter().map(Vec::len).sum()
        };
        if shown >= expected || Instant::now() > settle_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for h in senders.iter().chain(&receivers) {
        h.shutdown().await;
    }
    if let Some(mut b) = b {
        b.child.start_kill().ok();
        b.child.wait().await.ok();
    }

    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut lost = 0u64;
    let mut twice = 0u64;
    let mut gaps_hit = Vec::new();
    let mut gaps_all = Vec::new();
    let from = killed.checked_sub(Duration::from_secs(1)).unwrap_or(killed);
    for (i, shown) in s.shown.iter().enumerate() {
        let texts: HashMap<&str, usize> = shown.iter().fold(HashMap::new(), |mut m, (_, t)| {
            *m.entry(t.as_str()).or_default() += 1;
            m
        });
        twice += texts.values().map(|&c| c as u64 - 1).sum::<u64>();
        lost += sent[i]
            .iter()
            .filter(|t| !texts.contains_key(t.as_str()))
            .count() as u64;
        let times: Vec<Instant> = shown
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| *t >= from)
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3;
        gaps_all.push(gap);
        if s.lost_connection.contains(&i) {
            gaps_hit.push(gap);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    Ok(Row {
        label,
        values: vec![
            ("hit", gaps_hit.len() as f64),
            ("gap p50 ms", median(&mut gaps_hit.clone())),
            ("gap max ms", max(&gaps_hit)),
            ("all max ms", max(&gaps_all)),
            ("sent", expected as f64),
            ("lost", lost as f64),
            ("twice", twice as f64),
            ("secs", start.elapsed().as_secs_f64()),
        ],
    })
}
