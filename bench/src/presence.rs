//! Presence at scale: N devices, each on its own authenticated QUIC
//! connection, each granting 50 contacts (the next 50 devices) a capability
//! and watching its own 50 contacts. Measured on the relay (run it as a
//! child, `--spawn-relay`, for figures of the relay alone): RSS and CPU
//! with the devices' connections idle and no presence (the baseline), RSS
//! with presence on top (published capabilities, subscriptions,
//! heartbeats), CPU idle and at a churn of `churn` (1% by default) of
//! devices changing state per second, and the time from a state change to
//! its watchers seeing it: from the beat for online, from last beat +
//! grace for offline.
//!
//! Watching is as a real client does it (`tern_client::presence::watch`):
//! each device has a second connection that never authenticates (so the
//! relay cannot tie it to the mailbox), at the watcher's keep-alive pace
//! ([`Liveness::Watch`]), carrying one presence stream with its 50
//! capabilities. The baseline holds both of each device's connections
//! idle, before any presence request: "the same idle connections without
//! presence". RSS with the mailbox connections alone, before the watcher
//! connections open, is reported beside it (`over mailbox connections`),
//! so what the second connection costs is in the figures too. The load
//! generator's watcher connections share a client UDP socket per 256 (a
//! real client's has one of its own; the relay's state per connection is
//! the same, and what is measured is the relay).
//! [`WatchMode::Multiplexed`] packs 1,000 capabilities (20 devices' worth)
//! in a presence stream, 4 streams per connection, for comparison with the
//! first figures (which had 12 a connection).

use crate::progress::Progress;
use crate::relay::BenchRelay;
use crate::report::{Latency, Row};
use crate::traffic;
use anyhow::anyhow;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_client::presence::{capability_hash, owner, watch};
use tern_client::transport::{Dialer, Liveness, RelayLink};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Contacts each device grants and watches.
pub const CONTACTS: usize = 50;
/// Capabilities per presence stream (the relay's default most).
const CAPS_PER_STREAM: usize = 1_000;
/// Presence streams per watcher connection (a connection that never
/// authenticates may have 4 open: `limits.max_streams_before_auth`).
const STREAMS_PER_CONN: usize = 4;

/// Connections per load-generator UDP socket.
const CONNS_PER_SOCKET: usize = 256;

/// How the watchers reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchMode {
    /// One unauthenticated connection per device, one presence stream on
    /// it with the device's 50 capabilities (what a real client does).
    PerDevice,
    /// 1,000 capabilities per presence stream, 4 streams per connection.
    Multiplexed,
}

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct PresencePlan {
    /// Devices.
    pub devices: usize,
    /// Share of devices changing state per second.
    pub churn: f64,
    /// Seconds of churn.
    pub seconds: u64,
    /// Seconds to hold before each measurement.
    pub hold: Duration,
    /// How long the idle connections are held before the baseline.
    pub settle: Duration,
    /// The relay's grace period (it must match the relay's config).
    pub grace: Duration,
    /// Bound on opening the connections.
    pub timeout: Duration,
    /// How watchers connect.
    pub watch: WatchMode,
}

/// The shortest window an idle figure (baseline, idle with presence) is
/// measured over: a whole keep-alive period of the slowest connections
/// (watchers, 15 s). Their keep-alives come in bursts, since they opened
/// together; a 5 s window saw a burst or none.
const IDLE_WINDOW: Duration = tern_client::transport::WATCH_KEEP_ALIVE;

/// The capability device `owner` gives its `k`-th contact.
fn cap(owner: usize, k: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tern-bench presence");
    h.update((owner as u64).to_be_bytes());
    h.update((k as u64).to_be_bytes());
    h.finalize().into()
}

/// What watchers compare against: per owner, whether it should now be
/// online, and since when (ns after `epoch`) that is visible.
struct Expect {
    online: Vec<AtomicBool>,
    since_ns: Vec<AtomicU64>,
    /// When each owner's latest beat left (ns after `epoch`).
    last_beat_ns: Vec<AtomicU64>,
    grace_ns: u64,
    epoch: Instant,
    measuring: AtomicBool,
}

impl Expect {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One answered beat for `owner` on a control stream (a client's first
    /// on a connection: [`owner::Beats::start`]), noting when it left.
    async fn beat(&self, owner: usize, link: &RelayLink) {
        self.last_beat_ns[owner].store(self.now_ns(), Relaxed);
        let _ = owner::heartbeat(link).await;
    }

    /// One datagram beat for `owner` (a client's beats after its first),
    /// noting when it left.
    fn beat_datagram(&self, owner: usize, link: &RelayLink) {
        self.last_beat_ns[owner].store(self.now_ns(), Relaxed);
        let _ = link.beat_datagram();
    }

    fn set(&self, owner: usize, online: bool, at: Instant) {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.since_ns[owner].store(ns, Relaxed);
        self.online[owner].store(online, Relaxed);
    }
}

/// What the watchers record, shared by their tasks.
struct Seen {
    expect: Arc<Expect>,
    on_lat: Arc<Mutex<Latency>>,
    off_lat: Arc<Mutex<Latency>>,
    updates: Arc<AtomicU64>,
}

impl Seen {
    /// Read one presence stream's updates until it ends, timing those
    /// that show a change under measurement. `owners[i]` is the device
    /// behind the stream's `i`-th capability.
    fn spawn(
        &self,
        set: &mut JoinSet<()>,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        owners: Vec<usize>,
    ) {
        let (expect, on_lat, off_lat, updates) = (
            Arc::clone(&self.expect),
            Arc::clone(&self.on_lat),
            Arc::clone(&self.off_lat),
            Arc::clone(&self.updates),
        );
        set.spawn(async move {
            let _keep = send;
            while let Ok(Some(u)) = watch::next_update(&mut recv).await {
                updates.fetch_add(1, Relaxed);
                let Some(&o) = owners.get(u.index as usize) else {
                    continue;
                };
                if !expect.measuring.load(Relaxed) || expect.online[o].load(Relaxed) != u.online {
                    continue;
                }
                let now = expect.now_ns();
                // Offline is due a grace period after the last beat left
                // (the relay got it a little later: this errs long).
                let since = if u.online {
                    expect.since_ns[o].load(Relaxed)
                } else {
                    expect.last_beat_ns[o].load(Relaxed) + expect.grace_ns
                };
                let lat = if u.online {
                    on_lat.as_ref()
                } else {
                    off_lat.as_ref()
                };
                if let Ok(mut l) = lat.lock() {
                    l.record(now.saturating_sub(since));
                }
            }
        });
    }
}

/// Open `count` watcher connections as a real watcher does (never
/// authenticated, [`Liveness::Watch`]), 256 per load-generator socket,
/// 64 opening at a time. They stay idle until [`subscribe_all`].
async fn open_watchers(
    relay: &BenchRelay,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<(Vec<RelayLink>, Vec<Dialer>)> {
    let progress = Progress::new(count as u64, "watcher connections");
    progress.set_prefix("presence watch".to_string());
    let deadline = tokio::time::Instant::now() + timeout;
    let gate = Arc::new(Semaphore::new(64));
    let mut opening = JoinSet::new();
    let mut dialers = Vec::new();
    for socket in 0..count.div_ceil(CONNS_PER_SOCKET) {
        let dialer = Dialer::default();
        let here = CONNS_PER_SOCKET.min(count - socket * CONNS_PER_SOCKET);
        for k in 0..here {
            let (mut dialer, url, gate) = (dialer.clone(), relay.url.clone(), Arc::clone(&gate));
            let count = progress.count.clone();
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let open = dialer.connect_with(&url, Liveness::Watch);
                let link = tokio::time::timeout_at(deadline, open)
                    .await
                    .map_err(|_| anyhow!("opening a watcher connection timed out"))??;
                count.fetch_add(1, Relaxed);
                anyhow::Ok((socket * CONNS_PER_SOCKET + k, link))
            });
        }
        dialers.push(dialer);
    }
    let mut links: Vec<Option<RelayLink>> = vec![None; count];
    while let Some(opened) = opening.join_next().await {
        let (i, link) = opened.map_err(|e| anyhow!("watcher task: {e}"))??;
        links[i] = Some(link);
    }
    progress.finish();
    Ok((links.into_iter().flatten().collect(), dialers))
}

/// Open the presence streams on the watcher connections: `held` holds the
/// watched capabilities in order, `per_stream` to a stream, `per_conn`
/// streams to a connection (one of [`CONTACTS`] per device when
/// watching as a real client does).
async fn subscribe_all(
    links: &[RelayLink],
    held: &[([u8; 32], usize)],
    (per_stream, per_conn): (usize, usize),
    seen: &Seen,
    timeout: Duration,
) -> anyhow::Result<JoinSet<()>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let gate = Arc::new(Semaphore::new(64));
    let mut opening = JoinSet::new();
    for (link, conn_caps) in links.iter().zip(held.chunks(per_stream * per_conn)) {
        for chunk in conn_caps.chunks(per_stream) {
            let caps: Vec<[u8; 32]> = chunk.iter().map(|(c, _)| *c).collect();
            let owners: Vec<usize> = chunk.iter().map(|(_, o)| *o).collect();
            let (link, gate) = (link.clone(), Arc::clone(&gate));
            opening.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let (send, recv) =
                    tokio::time::timeout_at(deadline, watch::subscribe(&link, &caps))
                        .await
                        .map_err(|_| anyhow!("opening a presence stream timed out"))??;
                anyhow::Ok((send, recv, owners))
            });
        }
    }
    let mut watchers = JoinSet::new();
    while let Some(opened) = opening.join_next().await {
        let (send, recv, owners) = opened.map_err(|e| anyhow!("subscribe task: {e}"))??;
        seen.spawn(&mut watchers, send, recv, owners);
    }
    Ok(watchers)
}

/// Open `n` authenticated connections, 256 per client socket.
async fn open(relay: &BenchRelay, n: usize, timeout: Duration) -> anyhow::Result<Vec<RelayLink>> {
    let progress = Progress::new(n as u64, "connected");
    progress.set_prefix("presence open".to_string());
    let deadline = tokio::time::Instant::now() + timeout;
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    let mut remaining = n;
    while remaining > 0 {
        let k = remaining.min(CONNS_PER_SOCKET);
        remaining -= k;
        let (url, gate, count) = (relay.url.clone(), Arc::clone(&gate), progress.count.clone());
        tasks.push(tokio::spawn(async move {
            let mut dialer = Dialer::default();
            let mut enrolling = tokio::task::JoinSet::new();
            for _ in 0..k {
                let Ok(Ok(permit)) =
                    tokio::time::timeout_at(deadline, Arc::clone(&gate).acquire_owned()).await
                else {
                    continue;
                };
                if let Ok(Ok(link)) = tokio::time::timeout_at(deadline, dialer.connect(&url)).await
                {
                    let count = count.clone();
                    enrolling.spawn(async move {
                        let r = tokio::time::timeout_at(deadline, traffic::enroll(link)).await;
                        drop(permit);
                        count.fetch_add(1, Relaxed);
                        r
                    });
                }
            }
            let mut links = Vec::new();
            while let Some(done) = enrolling.join_next().await {
                if let Ok(Ok(Ok(r))) = done {
                    links.push(r.link);
                }
            }
            (dialer, links)
        }));
    }
    let mut links = Vec::new();
    for t in tasks {
        let (dialer, l) = t.await.map_err(|e| anyhow!("connect task: {e}"))?;
        // The endpoints live as long as their connections' clones.
        std::mem::forget(dialer);
        links.extend(l);
    }
    progress.finish();
    if links.len() < n {
        return Err(anyhow!("only {} of {n} devices connected", links.len()));
    }
    Ok(links)
}

/// What the load generator's connections counted so far, from quinn (on
/// loopback, what the relay received and sent): UDP datagrams sent and
/// received, keep-alive PINGs and QUIC datagrams (beats) sent.
fn packets(sets: &[&[RelayLink]]) -> [u64; 4] {
    let mut c = [0; 4];
    for l in sets.iter().flat_map(|s| s.iter()) {
        let s = l.stats();
        c[0] += s.udp_tx.datagrams;
        c[1] += s.udp_rx.datagrams;
        c[2] += s.frame_tx.ping;
        c[3] += s.frame_tx.datagram;
    }
    c
}

/// Counters `after - before`, per second over `wall`.
fn per_sec(before: [u64; 4], after: [u64; 4], wall: Duration) -> [f64; 4] {
    let secs = wall.as_secs_f64().max(1e-9);
    [0, 1, 2, 3].map(|i| after[i].saturating_sub(before[i]) as f64 / secs)
}

/// Beat for `owner` at the client's pace while `beating`, as a client
/// does: first on a control stream, then datagrams (a device that comes
/// back makes its answered beat itself); stops with `stop`.
async fn beat_loop(
    expect: Arc<Expect>,
    i: usize,
    link: RelayLink,
    beating: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    every: Duration,
    phase: Duration,
) {
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    while !stop.load(Relaxed) {
        tick.tick().await;
        if !beating.load(Relaxed) {
            continue;
        }
        if std::mem::take(&mut first) {
            expect.beat(i, &link).await;
        } else {
            expect.beat_datagram(i, &link);
        }
    }
}

/// Run once against `relay` (a child process for relay figures).
pub async fn run(relay: &BenchRelay, plan: PresencePlan, label: String) -> anyhow::Result<Row> {
    let n = plan.devices.max(CONTACTS + 1);
    let links = open(relay, n, plan.timeout).await?;
    tokio::time::sleep(plan.hold).await;
    let mailboxes_only = relay.sample();

    // The watchers' connections, idle: with the devices' own, the same
    // connections as with presence, which is the baseline.
    let watcher_conns = match plan.watch {
        WatchMode::PerDevice => n,
        WatchMode::Multiplexed => (n * CONTACTS).div_ceil(CAPS_PER_STREAM * STREAMS_PER_CONN),
    };
    let (watcher_links, _watcher_dialers) =
        open_watchers(relay, watcher_conns, plan.timeout).await?;
    tokio::time::sleep(plan.settle.max(plan.hold)).await;
    let base_at = Instant::now();
    let base_start = relay.sample();
    let all: [&[RelayLink]; 2] = [&links, &watcher_links];
    let base_pkts = packets(&all);
    tokio::time::sleep(plan.hold.max(IDLE_WINDOW)).await;
    let baseline = relay.sample();
    let base_pkts = per_sec(base_pkts, packets(&all), base_at.elapsed());
    let base_idle = crate::proc::usage(&base_start, &baseline, base_at.elapsed());

    // Publish: device i grants its k-th contact, device (i + k + 1) % n.
    let gate = Arc::new(Semaphore::new(256));
    let mut pubs = tokio::task::JoinSet::new();
    for (i, link) in links.iter().enumerate() {
        let hashes: Vec<[u8; 32]> = (0..CONTACTS).map(|k| capability_hash(&cap(i, k))).collect();
        let (link, gate) = (link.clone(), Arc::clone(&gate));
        pubs.spawn(async move {
            let _p = gate.acquire_owned().await;
            owner::publish(&link, &hashes, false).await
        });
    }
    while let Some(r) = pubs.join_next().await {
        r.map_err(|e| anyhow!("publish task: {e}"))??;
    }

    // Watch: device j holds cap(i, k) for i = j - k - 1; streams of 1,000.
    let mut held: Vec<([u8; 32], usize)> = Vec::with_capacity(n * CONTACTS);
    for j in 0..n {
        for k in 0..CONTACTS {
            let i = (j + n - k - 1) % n;
            held.push((cap(i, k), i));
        }
    }
    let expect = Arc::new(Expect {
        online: (0..n).map(|_| AtomicBool::new(false)).collect(),
        since_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        last_beat_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
        grace_ns: plan.grace.as_nanos() as u64,
        epoch: Instant::now(),
        measuring: AtomicBool::new(false),
    });
    let seen = Seen {
        expect: Arc::clone(&expect),
        on_lat: Arc::new(Mutex::new(Latency::new())),
        off_lat: Arc::new(Mutex::new(Latency::new())),
        updates: Arc::new(AtomicU64::new(0)),
    };
    let shape = match plan.watch {
        WatchMode::PerDevice => (CONTACTS, 1),
        WatchMode::Multiplexed => (CAPS_PER_STREAM, STREAMS_PER_CONN),
    };
    let mut watchers = subscribe_all(&watcher_links, &held, shape, &seen, plan.timeout).await?;
    let Seen {
        on_lat,
        off_lat,
        updates,
        ..
    } = seen;

    // Everyone online, beating at the client's pace (just inside the
    // connection's keep-alive), spread over the interval.
    let every = links.first().map_or(plan.grace / 3, |l| {
        owner::beat_pace(plan.grace.as_millis() as u64, l.keep_alive())
    });
    let stop = Arc::new(AtomicBool::new(false));
    // A fifth start offline: the pool churn brings back.
    let starts_online = |i: usize| i % 5 != 0;
    let beating: Vec<Arc<AtomicBool>> = (0..n)
        .map(|i| Arc::new(AtomicBool::new(starts_online(i))))
        .collect();
    let mut offline: std::collections::VecDeque<usize> =
        (0..n).filter(|i| !starts_online(*i)).collect();
    let mut beats = tokio::task::JoinSet::new();
    // The first beats (answered, each telling 50 watchers) spread over
    // grace/3, as a start at the control pace did: all at once, they are
    // a storm of 400,000 updates the measurement would start inside.
    let spread = plan.grace / 3;
    for (i, link) in links.iter().enumerate() {
        let phase = spread.mul_f64(i as f64 / n as f64);
        beats.spawn(beat_loop(
            Arc::clone(&expect),
            i,
            link.clone(),
            Arc::clone(&beating[i]),
            Arc::clone(&stop),
            every,
            phase,
        ));
        expect.set(i, starts_online(i), Instant::now());
    }
    tokio::time::sleep(spread.max(every) + plan.hold).await;
    let idle_start = relay.sample();
    let idle_at = Instant::now();
    let idle_pkts = packets(&all);
    tokio::time::sleep(plan.hold.max(IDLE_WINDOW)).await;
    let idle_end = relay.sample();
    let idle_pkts = per_sec(idle_pkts, packets(&all), idle_at.elapsed());
    let idle = crate::proc::usage(&idle_start, &idle_end, idle_at.elapsed());

    // Churn: every 100 ms, a tenth of the per-second share flips.
    expect.measuring.store(true, Relaxed);
    let per_tick = ((n as f64 * plan.churn) / 10.0).round().max(1.0) as usize;
    let mut next = 0usize;
    let churn_start = relay.sample();
    let churn_at = Instant::now();
    let churn_pkts = packets(&all);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut flips = 0u64;
    while churn_at.elapsed() < Duration::from_secs(plan.seconds) {
        tick.tick().await;
        for _ in 0..per_tick {
            flips += 1;
            if flips % 2 == 0 {
                // An online device goes quiet: offline once the grace has
                // run from its last beat. Walk with a large stride so
                // flips spread over the ring.
                let mut i = next % n;
                while !beating[i].load(Relaxed) {
                    next += 1;
                    i = next % n;
                }
                next += 7919;
                beating[i].store(false, Relaxed);
                expect.set(i, false, Instant::now());
                offline.push_back(i);
            } else if let Some(i) = offline.pop_front() {
                let link = links[i].clone();
                let b = Arc::clone(&beating[i]);
                let e = Arc::clone(&expect);
                tokio::spawn(async move {
                    e.set(i, true, Instant::now());
                    e.beat(i, &link).await;
                    b.store(true, Relaxed);
                });
            }
        }
    }
    let churn_end = relay.sample();
    let churn_pkts = per_sec(churn_pkts, packets(&all), churn_at.elapsed());
    let churn = crate::proc::usage(&churn_start, &churn_end, churn_at.elapsed());
    // Let the last offline flips come due.
    tokio::time::sleep(plan.grace + Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    watchers.abort_all();
    beats.abort_all();
    for l in links.iter().chain(&watcher_links) {
        l.close();
    }
    let rss_mib = |s: &crate::proc::Sample| s.rss as f64 / (1 << 20) as f64;
    let (on, off) = (
        on_lat.lock().map_err(|_| anyhow!("poisoned"))?,
        off_lat.lock().map_err(|_| anyhow!("poisoned"))?,
    );
    Ok(Row {
        label,
        values: vec![
            ("devices", n as f64),
            ("watched caps", (n * CONTACTS) as f64),
            ("watcher connections", watcher_links.len() as f64),
            ("mailbox connections rss MiB", rss_mib(&mailboxes_only)),
            ("baseline rss MiB", rss_mib(&baseline)),
            ("presence rss MiB", rss_mib(&idle_end)),
            ("over baseline MiB", rss_mib(&idle_end) - rss_mib(&baseline)),
            (
                "over mailbox connections MiB",
                rss_mib(&idle_end) - rss_mib(&mailboxes_only),
            ),
            ("baseline relay cores", base_idle.relay_cores),
            ("idle relay cores", idle.relay_cores),
            ("churn relay cores", churn.relay_cores),
            ("baseline relay rx pkts/s", base_pkts[0]),
            ("baseline relay tx pkts/s", base_pkts[1]),
            ("idle relay rx pkts/s", idle_pkts[0]),
            ("idle relay tx pkts/s", idle_pkts[1]),
            ("idle pings/s", idle_pkts[2]),
            ("idle beats/s", idle_pkts[3]),
            ("churn relay rx pkts/s", churn_pkts[0]),
            ("churn relay tx pkts/s", churn_pkts[1]),
            ("flips", flips as f64),
            ("updates", updates.load(Relaxed) as f64),
            ("online p50 ms", on.ms(0.5)),
            ("online p99 ms", on.ms(0.99)),
            ("offline p50 ms", off.ms(0.5)),
            ("offline p99 ms", off.ms(0.99)),
        ],
    })
}
