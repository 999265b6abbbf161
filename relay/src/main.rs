//! `tern-relay`: run a Tern relay, or print the URL of an existing one.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tern_relay::store::{MailboxStore, RedisStore};
use tern_relay::{RelayConfig, RunningRelay, StoreKind, SystemClock};

/// mimalloc rather than glibc's allocator: a relay allocates and frees
/// small buffers per frame, per store call and per Redis reply, and
/// glibc's malloc/free were ~30% of a sending relay's samples
/// (docs/decisions.md, "CPU per message on Redis").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Tern relay: durable mailboxes of end-to-end encrypted envelopes over QUIC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (defaults: 127.0.0.1:4433, data in ./tern-relay-data).
    Run {
        /// UDP address to listen on.
        #[arg(long, env = "TERN_RELAY_LISTEN")]
        listen: Option<SocketAddr>,
        /// Data directory (database, TLS key and certificate).
        #[arg(long, env = "TERN_RELAY_DATA")]
        data: Option<PathBuf>,
        /// TOML config file (see tern-relay.example.toml).
        #[arg(long, env = "TERN_RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Host name or address to put in the relay URL (needed when
        /// listening on 0.0.0.0 or [::]).
        #[arg(long, env = "TERN_RELAY_PUBLIC_HOST")]
        public_host: Option<String>,
        /// Every address of this relay's fleet, comma-separated
        /// (`a.example:4433,b.example:4433`): the URL clients are given
        /// lists them all (docs/operations.md, "A fleet").
        #[arg(long, env = "TERN_RELAY_FLEET", value_delimiter = ',')]
        fleet: Vec<String>,
        /// Store engine: `embedded` (default; in the data directory) or
        /// `redis` (a Redis Cluster shared by a fleet of relays).
        #[arg(long, value_enum, env = "TERN_RELAY_STORE")]
        store: Option<StoreKind>,
        /// Redis Cluster seed nodes, `redis://HOST:PORT[,HOST:PORT...]`
        /// (`rediss://` for TLS, `redis://:PASSWORD@...` for AUTH); sets
        /// `[redis] nodes`.
        #[arg(long, env = "TERN_RELAY_REDIS")]
        redis: Option<String>,
    },
    /// Report the store in DIR: envelope segments, the index checkpoint,
    /// and quarantined segments (docs/operations.md, "Quarantine").
    /// Reads files only, so it works while the relay runs.
    Status {
        /// Data directory.
        #[arg(long, env = "TERN_RELAY_DATA", default_value = "tern-relay-data")]
        data: PathBuf,
    },
    /// Print the URL of the relay whose data is in DIR.
    Url {
        /// Data directory.
        #[arg(long, default_value = "tern-relay-data")]
        data: PathBuf,
        /// Address clients reach the relay at.
        #[arg(long, default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// Host name to put in the URL instead of the listen IP.
        #[arg(long)]
        public_host: Option<String>,
        /// Every address of the fleet, comma-separated, as for `run`.
        #[arg(long, value_delimiter = ',')]
        fleet: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run_cli() {
        // One clear line, whatever RUST_BACKTRACE says.
        eprintln!("tern-relay: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

fn run_cli() -> anyhow::Result<()> {
    tern_protocol::logging::init("info,quinn=warn");
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            listen,
            data,
            config,
            public_host,
            fleet,
            store,
            redis,
        } => {
            let mut cfg = match config {
                Some(path) => RelayConfig::load(&path)?,
                None => RelayConfig::default(),
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(d) = data {
                cfg.data_dir = d;
            }
            if public_host.is_some() {
                cfg.public_host = public_host;
            }
            if !fleet.is_empty() {
                cfg.fleet = fleet;
            }
            if let Some(s) = store {
                cfg.store = s;
            }
            if let Some(r) = redis {
                cfg.redis.nodes = vec![r];
            }
            cfg.validate()?;
            cfg.validate_store()?;
            if cfg.listen.ip().is_unspecified() && cfg.public_host.is_none() && cfg.fleet.is_empty()
            {
                anyhow::bail!(
                    "listening on {} needs --public-host (or public_host in the config) for the relay URL",
                    cfg.listen
                );
            }
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(run(cfg))
        }
        Command::Status { data } => {
            let status = tern_relay::store::embedded::status::log_status(&data.join("db"))
                .with_context(|| format!("reading {}", data.display()))?;
            print!("{status}");
            Ok(())
        }
        Command::Url {
            data,
            listen,
            public_host,
            fleet,
        } => {
            if !data.join("cert.der").exists() {
                anyhow::bail!(
                    "no relay data in {} (run `tern-relay run` first)",
                    data.display()
                );
            }
            let host = public_host.unwrap_or_else(|| listen.ip().to_string());
            let url = tern_relay::server::url_for(&data, &host, listen.port(), &fleet)?;
            println!("{url}");
            Ok(())
        }
    }
}

async fn run(cfg: RelayConfig) -> anyhow::Result<()> {
    match cfg.store {
        StoreKind::Embedded => serve(RunningRelay::start(cfg, Arc::new(SystemClock)).await?).await,
        StoreKind::Redis => {
            let options = cfg.redis.options();
            // Connecting and checking the cluster blocks: off the runtime.
            let store = tokio::task::spawn_blocking(move || RedisStore::open(options))
                .await
                .context("opening the redis store")?
                .context("opening the redis store")?;
            let relay =
                RunningRelay::start_with_store(cfg, Arc::new(SystemClock), Arc::new(store)).await?;
            serve(relay).await
        }
    }
}

async fn serve<S: MailboxStore>(relay: RunningRelay<S>) -> anyhow::Result<()> {
    // The handlers are in place before the URL is printed: whoever reads
    // the URL may stop the relay at once, and must get a clean shutdown.
    let stop = shutdown_signal()?;
    println!("relay url: {}", relay.url);
    stop.await?;
    eprintln!("shutting down");
    relay.shutdown().await;
    Ok(())
}

/// Install the SIGTERM and Ctrl-C (SIGINT) handlers now; the future
/// resolves when either arrives.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}

/// Ctrl-C, where there are no Unix signals.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    Ok(async { tokio::signal::ctrl_c().await.context("waiting for Ctrl-C") })
}
