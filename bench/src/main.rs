//! `tern-bench`: the load generator and benchmark suite for the Tern relay.
//! It drives a real relay over real QUIC on 127.0.0.1, prints a table per
//! workload and can write the figures as JSON. Payloads are opaque by
//! default (the relay never decrypts, so this measures the relay); with
//! `--e2e` every message is encrypted and decrypted as the client does it
//! (see [`e2e`]), so the figures include the clients' crypto.
//!
//! Every run starts a fresh relay with its data in a new temporary
//! directory, or drives one it did not start (`--relay URL`); every loop
//! is bounded by a count and by a timeout.

mod direct;
mod drain;
mod e2e;
mod failover;
mod fanout;
mod flood;
mod history;
mod hold;
mod idle;
mod member;
mod pairs;
mod presence;
mod proc;
mod progress;
mod relay;
mod report;
mod traffic;

use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use relay::{BenchRelay, Setup, RELAY_THREAD};
use report::Report;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tern_protocol::limits::DEFAULT_MAX_ENVELOPE;
use tokio::runtime::Handle;
use traffic::Mode;

/// The allocator the shipped relay binary uses (`tern-relay`'s
/// `main.rs`), so a relay run as a child (`serve`, `--spawn-relay`) is
/// measured as it is deployed: glibc's malloc costs a relay CPU and
/// fragments its RSS differently.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator and benchmarks for the Tern relay (loopback only).
#[derive(Parser, Debug)]
#[command(name = "tern-bench", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// Write the results as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Runs of each setting (a median row is printed when more than one).
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// Directory under which each run's relay data directory is made
    /// (default: the system temp dir). Durable acks mean fsync, so the
    /// filesystem matters.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Run the relay as a child process, so its CPU and RSS are its own.
    #[arg(long, global = true)]
    spawn_relay: bool,
    /// Drive a relay this tool did not start, at this URL (as `tern-relay
    /// run` prints it), instead of starting one per run. Its rate limits
    /// must be raised in its config for this (README, "Benchmarks"); no
    /// relay CPU, RSS or disk figures are taken.
    #[arg(long, global = true)]
    relay: Option<tern_protocol::url::RelayUrl>,
    /// With --relay: senders connect to this relay instead, another relay
    /// of the same fleet (`tern-relay run --store redis`), so every
    /// message crosses from one relay to the other.
    #[arg(long, global = true, requires = "relay")]
    send_relay: Option<tern_protocol::url::RelayUrl>,
    /// Worker threads of the in-process relay's runtime.
    #[arg(long, global = true, default_value_t = 2)]
    relay_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, global = true, default_value_t = 2)]
    client_threads: usize,
    /// End-to-end encryption (online, rate, drain, flood): each pair holds a real
    /// Olm session, and every message is a text encrypted and sealed as the
    /// client does it, then opened and decrypted on receipt, so the figures
    /// include the clients' crypto. Default: opaque payloads, the relay
    /// alone.
    #[arg(long, global = true)]
    e2e: bool,
    /// With `online`: two running clients (the whole client stack) 1:1 on a
    /// loopback relay, with direct paths off and then on: latency p50/p99,
    /// msgs/s, and the time from both sides online to the path open
    /// (`--messages` per phase, `--runs` per mode).
    #[arg(long, global = true)]
    direct: bool,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Online 1:1: K sender/receiver pairs sending as fast as their
    /// windows allow; delivered msgs/s and end-to-end latency.
    Online(OnlineArgs),
    /// A fixed offered rate across pairs (paced sends); latency under load.
    Rate(RateArgs),
    /// Queue N envelopes for one offline device, then drain them.
    Drain(DrainArgs),
    /// N connected, authenticated, idle devices; RSS per connection.
    Idle(IdleArgs),
    /// One paced sender -> one recipient, alone and then beside attacker
    /// connections flooding the relay (default limits and rates on).
    Flood(FloodArgs),
    /// Group fan-out: M member mailboxes on one relay, subscribed; time from
    /// one group send to the last mailbox holding it, relay bytes stored per
    /// group message, and group messages per second.
    Fanout(FanoutArgs),
    /// N envelopes held across M mailboxes (never acked): relay RSS and
    /// disk per held envelope, SIGKILL-to-serving time, and online K=64
    /// throughput while they are held. The relay always runs as a child
    /// process (or is the --relay one: then without RSS, disk or restart).
    Hold(HoldArgs),
    /// A fleet relay SIGKILLed under live traffic between K pairs of real
    /// clients on a two-address fleet URL: how long the users it served
    /// were interrupted, and that nothing was lost or shown twice.
    Failover(FailoverArgs),
    /// History restore: N messages in one conversation sent and uploaded
    /// with history on, then restored onto fresh devices of the account
    /// (from a backup); restore time per run and relay bytes per message.
    HistoryRestore(HistoryRestoreArgs),
    /// Presence: N devices on their own authenticated connections, each
    /// granting and watching 50 contacts over a watcher connection of its
    /// own; relay RSS over the same idle connections without presence (and
    /// over the mailbox connections alone), relay CPU idle and at 1% of devices
    /// changing state per second, and change-to-watcher latency p50/p99.
    /// Use --spawn-relay for figures of the relay alone.
    Presence(PresenceArgs),
    /// Run a relay with the bench configuration (used by --spawn-relay).
    #[command(hide = true)]
    Serve {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The relay's deployed default limits and rates instead.
        #[arg(long)]
        defaults: bool,
    },
}

#[derive(Args, Debug, Clone)]
struct PresenceArgs {
    /// Devices, each on its own authenticated connection.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Share of devices changing state per second.
    #[arg(long, default_value_t = 0.01)]
    churn: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 40)]
    seconds: u64,
    /// Seconds to settle before each measurement.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Seconds the idle connections are held before the baseline is
    /// sampled: long enough for keep-alives to bring each authenticated
    /// connection to the memory it keeps for good (quinn's event channel
    /// takes its second block after ~32 datagrams: ~2 minutes of 4 s
    /// keep-alives), so later growth is not mistaken for presence.
    #[arg(long, default_value_t = 120)]
    settle: u64,
    /// Bound on opening the connections, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// How watchers connect: one unauthenticated connection per device
    /// (a real client), or 1,000 capabilities per stream, 4 streams per
    /// connection (as the first figures, which had 12).
    #[arg(long, value_enum, default_value_t = presence::WatchMode::PerDevice)]
    watch: presence::WatchMode,
}

#[derive(Args, Debug, Clone)]
struct HistoryRestoreArgs {
    /// Messages in the conversation.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
}

#[derive(Args, Debug, Clone)]
struct OnlineArgs {
    /// Sender/receiver pairs; a list runs each in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    pairs: Vec<usize>,
    /// Messages in total per run, split evenly across pairs.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Payload bytes (at least 16: send time and index); with --e2e, text
    /// bytes before encryption (at least 32).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Push window each receiver subscribes with.
    #[arg(long, default_value_t = 256)]
    push_window: u32,
    /// Receivers acknowledge after this many envelopes.
    #[arg(long, default_value_t = 64)]
    ack_batch: usize,
    /// Bound on each run, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Args, Debug, Clone)]
struct FanoutArgs {
    /// Member mailboxes.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Group messages stored before members subscribe (disk per message).
    #[arg(long, default_value_t = 50)]
    store: usize,
    /// Group messages timed one at a time (latency), back to back and again
    /// to a group at rest.
    #[arg(long, default_value_t = 200)]
    sends: usize,
    /// Group messages sent back to back (throughput).
    #[arg(long, default_value_t = 200)]
    burst: usize,
    /// Sender connections sharing the burst.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// At rest: how long after every member has acked the previous
    /// message the next is sent, in ms.
    #[arg(long, default_value_t = fanout::SPACING_MS)]
    spacing_ms: u64,
    /// Bound on each run, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args, Debug, Clone)]
struct RateArgs {
    /// Offered rate across all pairs, messages per second.
    #[arg(long, default_value_t = 5_000.0)]
    rate: f64,
    /// How long to offer it, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Sender/receiver pairs sharing the rate.
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Payload bytes; with --e2e, text bytes before encryption.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Most sends in flight per sender (a full window delays sends, and the
    /// delay counts in latency).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Push window each receiver subscribes with.
    #[arg(long, default_value_t = 256)]
    push_window: u32,
    /// Receivers acknowledge after this many envelopes.
    #[arg(long, default_value_t = 32)]
    ack_batch: usize,
}

#[derive(Args, Debug, Clone)]
struct DrainArgs {
    /// Envelopes queued for the offline device.
    #[arg(long, default_value_t = 100_000)]
    envelopes: u64,
    /// Payload bytes; with --e2e, text bytes before encryption.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Sends in flight while storing.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Push window the device subscribes with (the relay caps it).
    #[arg(long, default_value_t = 1024)]
    push_window: u32,
    /// Acknowledge after this many envelopes.
    #[arg(long, default_value_t = 256)]
    ack_batch: usize,
    /// Bound on each phase, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args, Debug, Clone)]
struct HoldArgs {
    /// Envelopes to hold.
    #[arg(long, default_value_t = 1_000_000)]
    envelopes: u64,
    /// Mailboxes they are spread over.
    #[arg(long, default_value_t = 1_000)]
    mailboxes: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Sender connections filling at once.
    #[arg(long, default_value_t = 16)]
    senders: usize,
    /// Sends in flight per sender.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Messages in each online K=64 measurement.
    #[arg(long, default_value_t = 200_000)]
    online_messages: u64,
    /// K=64 measurements on the full relay and on an empty one beside it,
    /// alternating (the median of each is reported).
    #[arg(long, default_value_t = 3)]
    online_rounds: usize,
    /// Bound on the fill, in seconds.
    #[arg(long, default_value_t = 3_600)]
    timeout: u64,
}

#[derive(Args, Debug, Clone)]
struct FailoverArgs {
    /// Sender/receiver pairs (real clients, each with its own store).
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Milliseconds between one sender's texts.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Seconds of traffic before the kill.
    #[arg(long, default_value_t = 3)]
    before: u64,
    /// Seconds of traffic after the kill.
    #[arg(long, default_value_t = 5)]
    after: u64,
    /// The tern-relay binary (default: the one beside tern-bench).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// An argument for both relays' `tern-relay run` (repeat it), giving
    /// them one store at once, e.g. `--relay-arg=--store --relay-arg=redis
    /// --relay-arg=--redis --relay-arg=redis://127.0.0.1:7000`. Without
    /// any, the relays share the embedded store in turn (the second starts
    /// on the first's data after the kill).
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    relay_args: Vec<String>,
}

#[derive(Args, Debug, Clone)]
struct IdleArgs {
    /// Connections to hold open; a list runs each in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize])]
    connections: Vec<usize>,
    /// Connections per client UDP socket.
    #[arg(long, default_value_t = 256)]
    per_endpoint: usize,
    /// Connection setups in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to let things settle before measuring (and again to measure
    /// the CPU quiet connections cost).
    #[arg(long, default_value_t = 3)]
    hold: u64,
    /// Bound on opening them all, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args, Debug, Clone)]
struct FloodArgs {
    /// Honest messages per second offered (one sender, one recipient).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// How long the honest traffic, and the flood beside it, last.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Attacker connections in the flood, cycling through garbage frames,
    /// oversize length prefixes, abandoned streams and made-up-token sends.
    #[arg(long, default_value_t = 8)]
    attackers: usize,
    /// Payload bytes; with --e2e, text bytes before encryption.
    #[arg(long, default_value_t = 200)]
    size: usize,
}

fn runtime(threads: usize, name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let relay_rt = runtime(cli.global.relay_threads, RELAY_THREAD)?;
    if let Workload::Serve { data_dir, defaults } = &cli.workload {
        let setup = if *defaults {
            Setup::Defaults
        } else {
            Setup::Bench
        };
        return relay_rt.block_on(relay::serve(data_dir, setup));
    }
    let client_rt = runtime(cli.global.client_threads, "bench-client")?;
    let handle = relay_rt.handle().clone();
    let result = client_rt.block_on(run(cli, handle));
    // Runtimes are dropped here, outside any async context.
    drop(client_rt);
    drop(relay_rt);
    result
}

async fn run(cli: Cli, relay_rt: Handle) -> anyhow::Result<()> {
    let g = cli.global.clone();
    let runs = g.runs.max(1);
    let start_relay_with = |setup| {
        let external = g.relay.clone();
        let send_relay = g.send_relay.clone();
        let start = BenchRelay::start(&relay_rt, g.data_dir.as_deref(), g.spawn_relay, setup);
        async move {
            match external {
                Some(url) => {
                    drop(start);
                    Ok(BenchRelay::external(url, send_relay))
                }
                None => start.await,
            }
        }
    };
    let start_relay = || start_relay_with(Setup::Bench);
    if let (true, Workload::Online(a)) = (g.direct, &cli.workload) {
        return direct::run(&relay_rt, g.data_dir.as_deref(), runs, a.messages).await;
    }
    let mode = if g.e2e { Mode::E2e } else { Mode::Opaque };
    let suffix = mode.label_suffix();
    let mut report = match &cli.workload {
        Workload::Online(a) => {
            let mut report = Report {
                workload: "online".into(),
                mode: Some(mode.name()),
                params: json!({
                    "pairs": a.pairs, "messages": a.messages, "size": a.size,
                    "window": a.window, "push_window": a.push_window,
                    "ack_batch": a.ack_batch, "runs": runs, "mode": mode.name(),
                }),
                notes: vec![format!(
                    "K pairs, {} messages in total of {} bytes, {}, {} sends in flight per sender, \
                     push window {}, acks every {}; durable acks (relay default)",
                    a.messages,
                    a.size,
                    payloads_phrase(mode),
                    a.window,
                    a.push_window,
                    a.ack_batch
                )],
                rows: Vec::new(),
            };
            report.notes.extend(e2e_notes(mode, a.size).await?);
            for &k in &a.pairs {
                let k = k.max(1);
                for _ in 0..runs {
                    let relay = start_relay().await?;
                    set_note(&mut report, relay.describe());
                    let plan = pairs::PairsPlan {
                        pairs: k,
                        per_pair: (a.messages / k as u64).max(1),
                        size: a.size,
                        window: a.window,
                        push_window: a.push_window,
                        ack_batch: a.ack_batch,
                        rate: None,
                        timeout: Duration::from_secs(a.timeout),
                        mode,
                    };
                    let row = pairs::run(&relay, plan, format!("K={k}{suffix}")).await;
                    relay.shutdown().await;
                    report.rows.push(row?);
                }
            }
            report
        }
        Workload::Rate(a) => {
            let total = (a.rate * a.seconds as f64).round() as u64;
            let k = a.pairs.max(1);
            let mut report = Report {
                workload: "rate".into(),
                mode: Some(mode.name()),
                params: json!({
                    "rate": a.rate, "seconds": a.seconds, "pairs": k, "size": a.size,
                    "window": a.window, "push_window": a.push_window,
                    "ack_batch": a.ack_batch, "runs": runs, "mode": mode.name(),
                }),
                notes: vec![format!(
                    "{:.0} msgs/s offered for {} s across {k} pairs (paced; latency from each message's due time, \
                     so sender queueing counts), {} bytes, {}, durable acks",
                    a.rate,
                    a.seconds,
                    a.size,
                    payloads_phrase(mode)
                )],
                rows: Vec::new(),
            };
            report.notes.extend(e2e_notes(mode, a.size).await?);
            for _ in 0..runs {
                let relay = start_relay().await?;
                set_note(&mut report, relay.describe());
                let plan = pairs::PairsPlan {
                    pairs: k,
                    per_pair: (total / k as u64).max(1),
                    size: a.size,
                    window: a.window,
                    push_window: a.push_window,
                    ack_batch: a.ack_batch,
                    rate: Some(a.rate),
                    timeout: Duration::from_secs(a.seconds * 3 + 30),
                    mode,
                };
                let row = pairs::run(&relay, plan, format!("{:.0}/s{suffix}", a.rate)).await;
                relay.shutdown().await;
                report.rows.push(row?);
            }
            report
        }
        Workload::Drain(a) => {
            let mut report = Report {
                workload: "drain".into(),
                mode: Some(mode.name()),
                params: json!({
                    "envelopes": a.envelopes, "size": a.size, "window": a.window,
                    "push_window": a.push_window, "ack_batch": a.ack_batch, "runs": runs,
                    "mode": mode.name(),
                }),
                notes: vec![format!(
                    "{} envelopes of {} bytes ({}) stored for one offline device ({} sends in flight), \
                     then it connects, subscribes (window {}) and acks every {}; \
                     drain secs = connect to last envelope in hand",
                    a.envelopes,
                    a.size,
                    payloads_phrase(mode),
                    a.window,
                    a.push_window,
                    a.ack_batch
                )],
                rows: Vec::new(),
            };
            report.notes.extend(e2e_notes(mode, a.size).await?);
            for _ in 0..runs {
                let relay = start_relay().await?;
                set_note(&mut report, relay.describe());
                let plan = drain::DrainPlan {
                    envelopes: a.envelopes,
                    size: a.size,
                    window: a.window,
                    push_window: a.push_window,
                    ack_batch: a.ack_batch,
                    timeout: Duration::from_secs(a.timeout),
                    mode,
                };
                let row = drain::run(&relay, plan, format!("N={}{suffix}", a.envelopes)).await;
                relay.shutdown().await;
                report.rows.push(row?);
            }
            report
        }
        Workload::Idle(_) if g.e2e => {
            return Err(anyhow!(
                "--e2e applies to online, rate, drain and flood; idle sends no messages"
            ));
        }
        Workload::Idle(a) => {
            let mut report = Report {
                workload: "idle".into(),
                mode: None,
                params: json!({
                    "connections": a.connections, "per_endpoint": a.per_endpoint,
                    "concurrency": a.concurrency, "hold": a.hold, "runs": runs,
                }),
                notes: vec![format!(
                    "each device: own QUIC connection, registered + authenticated, then idle \
                     (client keep-alive 4 s); {} connections per client UDP socket",
                    a.per_endpoint
                )],
                rows: Vec::new(),
            };
            for &n in &a.connections {
                for _ in 0..runs {
                    let relay = start_relay().await?;
                    set_note(&mut report, relay.describe());
                    if !g.spawn_relay {
                        set_note(
                            &mut report,
                            "KiB/conn counts both ends of each connection (client state too); \
                             use --spawn-relay for the relay alone",
                        );
                    }
                    let plan = idle::IdlePlan {
                        connections: n.max(1),
                        per_endpoint: a.per_endpoint,
                        concurrency: a.concurrency,
                        hold: Duration::from_secs(a.hold),
                        timeout: Duration::from_secs(a.timeout),
                    };
                    let row = idle::run(&relay, plan, format!("N={n}")).await;
                    relay.shutdown().await;
                    report.rows.push(row?);
                }
            }
            report
        }
        Workload::Flood(a) => {
            let mut report = Report {
                workload: "flood".into(),
                mode: Some(mode.name()),
                params: json!({
                    "rate": a.rate, "seconds": a.seconds, "attackers": a.attackers,
                    "size": a.size, "runs": runs, "mode": mode.name(),
                }),
                notes: vec![format!(
                    "one sender -> one subscribed recipient, {:.0} msgs/s offered for {} s (paced; latency from \
                     each message's due time), {} bytes, {}, durable acks; the relay runs its default limits \
                     and rates; flood: {} attacker connections (garbage frames, oversize length prefixes, \
                     abandoned streams, made-up-token sends) as fast as the relay lets them, on the load \
                     generator's cores",
                    a.rate,
                    a.seconds,
                    a.size,
                    payloads_phrase(mode),
                    a.attackers
                )],
                rows: Vec::new(),
            };
            report.notes.extend(e2e_notes(mode, a.size).await?);
            for (condition, attackers) in [("no flood", 0), ("flood", a.attackers)] {
                for _ in 0..runs {
                    let relay = start_relay_with(Setup::Defaults).await?;
                    set_note(&mut report, relay.describe());
                    let plan = flood::FloodPlan {
                        rate: a.rate,
                        seconds: a.seconds.max(1),
                        attackers,
                        size: a.size,
                        mode,
                    };
                    let row = flood::run(&relay, plan, format!("{condition}{suffix}")).await;
                    relay.shutdown().await;
                    report.rows.push(row?);
                }
            }
            report
        }
        Workload::Fanout(a) => {
            let mut report = Report {
                workload: "fanout".into(),
                mode: Some("e2e"),
                params: json!({
                    "members": a.members, "store": a.store, "sends": a.sends,
                    "burst": a.burst, "senders": a.senders, "runs": runs,
                    "spacing_ms": a.spacing_ms,
                }),
                notes: vec![
                    format!(
                        "{} member mailboxes on one relay, each on its own connection; a group message is a \
                         32-byte text Megolm-encrypted once and wrapped in the group envelope (padded), \
                         deposited with one SendMany to every member; durable acks (relay default)",
                        a.members
                    ),
                    format!(
                        "disk B/msg: growth of the relay's data directory per message over {} messages stored \
                         before anyone subscribes (log B/msg: its envelope log alone); target = 2 x payload + 32 B x members",
                        a.store
                    ),
                    format!(
                        "latency: {} sends one at a time, from SendMany to the last member holding it \
                         (members subscribed, acking as the client does: 64 at a time or after 20 ms of quiet); \
                         p50/p99: each send to a group at rest (every member has acked the previous message, then {} ms); \
                         b2b: {} more, each sent as soon as the previous one is everywhere (its acks still arriving); \
                         ack = send to the durable SendMany answer; 1st = to the first member holding it; \
                         µs/dlv = CPU per delivery over the at-rest sends (relay: its threads; bench: the rest); \
                         group msgs/s: {} sends from {} connections, first send to the last member's last envelope",
                        a.sends, a.spacing_ms, a.sends, a.burst, a.senders
                    ),
                ],
                rows: Vec::new(),
            };
            for _ in 0..runs {
                let relay = start_relay().await?;
                set_note(&mut report, relay.describe());
                let plan = fanout::FanoutPlan {
                    members: a.members.max(1),
                    store: a.store,
                    sends: a.sends,
                    burst: a.burst,
                    senders: a.senders,
                    spacing: Duration::from_millis(a.spacing_ms),
                    timeout: Duration::from_secs(a.timeout),
                };
                let row = fanout::run(&relay, plan, format!("M={}", a.members)).await;
                relay.shutdown().await;
                report.rows.push(row?);
            }
            report
        }
        Workload::Hold(_) if g.e2e => {
            return Err(anyhow!(
                "--e2e does not apply to hold (opaque payloads only)"
            ));
        }
        Workload::Hold(a) => {
            let mut report = Report {
                workload: "hold".into(),
                mode: Some(Mode::Opaque.name()),
                params: json!({
                    "envelopes": a.envelopes, "mailboxes": a.mailboxes, "size": a.size,
                    "senders": a.senders, "window": a.window,
                    "online_messages": a.online_messages,
                    "online_rounds": a.online_rounds, "runs": runs,
                }),
                notes: vec![format!(
                    "{} envelopes of {} bytes (opaque) held across {} mailboxes whose devices stay \
                     offline; B/env = relay RSS / held, and over the empty relay's RSS; disk = the \
                     data directory; K=64 = online 1:1, {} messages, median of {} rounds alternating \
                     between the full relay and an empty one running beside it; restart s = SIGKILL to a new device registered and a held \
                     envelope delivered (listen s: to the new process listening)",
                    a.envelopes, a.size, a.mailboxes, a.online_messages, a.online_rounds
                )],
                rows: Vec::new(),
            };
            let plan = hold::HoldPlan {
                envelopes: a.envelopes,
                mailboxes: a.mailboxes,
                size: a.size,
                senders: a.senders,
                window: a.window,
                online_messages: a.online_messages,
                online_rounds: a.online_rounds,
                timeout: Duration::from_secs(a.timeout),
            };
            for _ in 0..runs {
                let mut relay = match &g.relay {
                    Some(url) => BenchRelay::external(url.clone(), g.send_relay.clone()),
                    None => {
                        BenchRelay::start(&relay_rt, g.data_dir.as_deref(), true, Setup::Bench)
                            .await?
                    }
                };
                set_note(&mut report, relay.describe());
                // The empty relay to compare with: a second child beside it.
                let empty = match &g.relay {
                    Some(_) => None,
                    None => Some(
                        BenchRelay::start(&relay_rt, g.data_dir.as_deref(), true, Setup::Bench)
                            .await?,
                    ),
                };
                let row = hold::run(
                    &mut relay,
                    empty.as_ref(),
                    plan,
                    format!("N={}", a.envelopes),
                )
                .await;
                relay.shutdown().await;
                if let Some(e) = empty {
                    e.shutdown().await;
                }
                report.rows.push(row?);
            }
            report
        }
        Workload::Failover(a) => {
            let shared = !a.relay_args.is_empty();
            let mut report = Report {
                workload: "failover".into(),
                mode: Some(Mode::E2e.name()),
                params: json!({
                    "pairs": a.pairs, "interval_ms": a.interval_ms, "before": a.before,
                    "after": a.after, "relay_args": a.relay_args, "runs": runs,
                }),
                notes: vec![
                    format!(
                        "{} pairs of real clients (tern_client::spawn, own stores, Olm), each sender one text every {} ms, \
                         on a fleet URL of two tern-relay processes; the first is SIGKILLed after {} s, traffic goes on {} s",
                        a.pairs, a.interval_ms, a.before, a.after
                    ),
                    if shared {
                        format!("relays share one store at once: tern-relay run {}", a.relay_args.join(" "))
                    } else {
                        "embedded store: the second relay starts on the first's data right after the kill \
                         (its start-up counts in the gap)"
                            .to_string()
                    },
                    "hit = receivers whose relay connection was lost; gap = a receiver's longest wait between two \
                     messages shown, from 1 s before the kill (p50 and max over those hit; all max: over every receiver, \
                     the sending interval included); lost = sent (queued or acked) and never shown; twice = shown more than once"
                        .to_string(),
                ],
                rows: Vec::new(),
            };
            let relay_bin = match &a.relay_bin {
                Some(p) => p.clone(),
                None => failover::default_relay_bin()?,
            };
            for _ in 0..runs {
                let plan = failover::FailoverPlan {
                    pairs: a.pairs.max(1),
                    interval: Duration::from_millis(a.interval_ms.max(1)),
                    before: Duration::from_secs(a.before),
                    after: Duration::from_secs(a.after),
                    relay_bin: relay_bin.clone(),
                    relay_args: a.relay_args.clone(),
                };
                let label = if shared { "shared" } else { "successor" };
                report.rows.push(failover::run(plan, label.into()).await?);
            }
            report
        }
        Workload::HistoryRestore(a) => {
            let mut report = Report {
                workload: "history-restore".into(),
                mode: Some("e2e"),
                params: json!({ "messages": a.messages, "runs": runs }),
                notes: vec![format!(
                    "one account, {} texts to one contact sent for real with history on (uploaded every \
                     1,000); each run restores them onto a fresh device of the account (made from a backup \
                     taken before the messages): restore s = restore_history from first page to all stored \
                     and flushed; relay B/msg = growth of the relay's history/ directory over the upload",
                    a.messages
                )],
                rows: Vec::new(),
            };
            let relay = start_relay().await?;
            set_note(&mut report, relay.describe());
            let plan = history::HistoryPlan {
                messages: a.messages,
                restores: runs,
            };
            let rows = history::run(&relay, plan).await;
            relay.shutdown().await;
            report.rows.extend(rows?);
            report
        }
        Workload::Presence(a) => {
            let mut report = Report {
                workload: "presence".into(),
                mode: None,
                params: json!({
                    "devices": a.devices, "contacts": presence::CONTACTS, "churn": a.churn,
                    "seconds": a.seconds, "runs": runs, "settle": a.settle,
                    "watch": format!("{:?}", a.watch),
                }),
                notes: vec![format!(
                    "each device: own QUIC connection, registered + authenticated, publishes {} capability hashes and beats as the client does (an answered beat on a control stream, then a datagram every {} ms, just inside the connection's keep-alive; grace {} s, the default); 20% start offline; churn alternates an online device going quiet and an offline one beating again; {}; baseline = the same connections (mailbox and watcher) held idle for --settle s before any presence request; over mailbox connections = against the authenticated connections alone, before the watcher connections opened",
                    presence::CONTACTS,
                    tern_client::presence::owner::beat_pace(
                        tern_relay::presence::PresenceConfig::default().grace_ms,
                        tern_client::transport::PROMPT_KEEP_ALIVE,
                    ).as_millis(),
                    tern_relay::presence::PresenceConfig::default().grace_ms / 1000,
                    match a.watch {
                        presence::WatchMode::PerDevice => "watching as a real client: each device also opens an unauthenticated connection carrying one presence stream with its capabilities (load-generator sockets shared, 256 connections each)",
                        presence::WatchMode::Multiplexed => "watching is multiplexed: 1,000 capabilities (20 devices' worth) per presence stream, 4 streams per unauthenticated connection",
                    }
                )],
                rows: Vec::new(),
            };
            for _ in 0..runs {
                let relay = start_relay().await?;
                set_note(&mut report, relay.describe());
                let plan = presence::PresencePlan {
                    devices: a.devices,
                    churn: a.churn,
                    seconds: a.seconds,
                    hold: Duration::from_secs(a.hold),
                    settle: Duration::from_secs(a.settle),
                    grace: Duration::from_millis(
                        tern_relay::presence::PresenceConfig::default().grace_ms,
                    ),
                    timeout: Duration::from_secs(a.timeout),
                    watch: a.watch,
                };
                let row = presence::run(&relay, plan, format!("{} devices", a.devices)).await;
                relay.shutdown().await;
                report.rows.push(row?);
            }
            report
        }
        Workload::Serve { .. } => return Err(anyhow!("serve runs without a load generator")),
    };
    report.notes.dedup();
    report.print();
    if let Some(path) = &g.json {
        report::write_json(path, std::slice::from_ref(&report), machine())?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// How the notes describe a mode's payloads.
fn payloads_phrase(mode: Mode) -> &'static str {
    match mode {
        Mode::Opaque => "opaque payloads",
        Mode::E2e => "E2E-encrypted texts",
    }
}

/// Texts encrypted once before the runs to measure the crypto alone.
const CALIBRATION_MESSAGES: u64 = 1000;

/// In E2E mode: what each message is, and its crypto cost measured alone
/// (one thread, before any relay runs), so the table's figures can be read
/// against it. Refuses a text that would seal to more than an envelope may
/// hold.
async fn e2e_notes(mode: Mode, size: usize) -> anyhow::Result<Vec<String>> {
    if mode != Mode::E2e {
        return Ok(Vec::new());
    }
    let cost = tokio::task::spawn_blocking(move || e2e::calibrate(size, CALIBRATION_MESSAGES))
        .await
        .map_err(|e| anyhow!("crypto calibration: {e}"))?
        .context("crypto calibration")?;
    // The client pads every payload to a size bucket; one that could not be
    // padded under the limit is one the client would refuse to send.
    if cost.payload_bytes > DEFAULT_MAX_ENVELOPE
        || !tern_protocol::padding::is_bucket(cost.payload_bytes)
    {
        return Err(anyhow!(
            "a {size}-byte text seals to {} bytes, more than an envelope may hold padded ({DEFAULT_MAX_ENVELOPE})",
            cost.payload_bytes
        ));
    }
    Ok(vec![
        format!(
            "e2e: each message is a {}-byte text in a Content, Olm-encrypted on the pair's session and sealed \
             to the receiver as tern-client does, padded to a size bucket ({} bytes on the wire); the receiver opens, decrypts and \
             decodes it before latency is taken; the clients' local stores are not involved",
            size.max(e2e::STAMP_TEXT_LEN),
            cost.payload_bytes
        ),
        format!(
            "e2e crypto alone (one thread, {CALIBRATION_MESSAGES} messages, before the runs): \
             seal {:.0} µs, open {:.0} µs per message; the seal/open µs columns are mean wall time \
             per message during the run, sharing the cores with the relay",
            cost.seal_us, cost.open_us
        ),
    ])
}

/// Add a note once.
fn set_note(report: &mut Report, note: &str) {
    if !report.notes.iter().any(|n| n == note) {
        report.notes.push(note.to_string());
    }
}

/// What the figures were measured on.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": model,
        "kernel": kernel,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
