//! The relay under test. By default it runs in-process on a tokio runtime
//! of its own (threads named `tern-relay`), so its CPU time can be told
//! apart from the load generator's by reading each thread's counters in
//! `/proc/self/task`; RSS is then the whole process's. With
//! `--spawn-relay` it is a child process (`tern-bench serve`), and CPU and
//! RSS are the relay's alone.
//!
//! It runs with one of two [`Setup`]s: the bench configuration (rate limits
//! off, since every load-generator connection shares one address), or the
//! relay's deployed defaults for workloads that measure the relay defending
//! itself (`flood`).

use crate::proc::{self, Sample};
use anyhow::{anyhow, bail, Context};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tern_protocol::url::RelayUrl;
use tern_relay::{Limits, RateConfig, RelayConfig, RunningRelay, SystemClock};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::runtime::Handle;

/// Thread-name prefix of the relay's runtime.
pub const RELAY_THREAD: &str = "tern-relay";

/// Which configuration the relay under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Loopback, rate limits off (every load-generator connection shares
    /// one address), no per-address connection cap: the relay's capacity.
    Bench,
    /// Loopback with the relay's deployed default limits and rates: what a
    /// real relay does under hostile traffic.
    Defaults,
}

/// The relay configuration for `setup`. Durable acks are how the relay
/// always works; neither setup turns them off.
pub fn config(setup: Setup, data_dir: &Path) -> anyhow::Result<RelayConfig> {
    let base = RelayConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.to_path_buf(),
        ..RelayConfig::default()
    };
    Ok(match setup {
        Setup::Defaults => base,
        Setup::Bench => RelayConfig {
            rates: RateConfig::unlimited(),
            limits: Limits {
                max_connections_per_ip: 0,
                ..Limits::default()
            },
            ..base
        },
    })
}

/// The bench configuration as a `tern-relay` config file, for relays run
/// from the `tern-relay` binary (`--listen` and `--data` given as flags).
pub fn bench_config_toml() -> anyhow::Result<String> {
    let config = config(Setup::Bench, Path::new("unused"))?;
    toml::to_string(&config).context("writing the relay config")
}

enum Running {
    InProcess {
        relay: RunningRelay,
        runtime: Handle,
    },
    Child(tokio::process::Child),
    /// A relay this tool did not start (`--relay URL`): no figures of its
    /// own, never stopped.
    External,
}

/// A relay started for one run, with its data in a temporary directory.
pub struct BenchRelay {
    running: Option<Running>,
    /// Where clients reach it.
    pub url: RelayUrl,
    /// Where senders reach it: another relay of the same fleet
    /// (`--send-relay`), or the same URL.
    pub send_url: RelayUrl,
    setup: Setup,
    dir: Option<tempfile::TempDir>,
}

fn temp_dir(data_parent: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    match data_parent {
        Some(p) => tempfile::tempdir_in(p),
        None => tempfile::tempdir(),
    }
    .context("creating the relay's data directory")
}

impl BenchRelay {
    /// Start a relay with `setup` on `runtime` (in-process) or as a child
    /// process.
    pub async fn start(
        runtime: &Handle,
        data_parent: Option<&Path>,
        spawn: bool,
        setup: Setup,
    ) -> anyhow::Result<Self> {
        let dir = temp_dir(data_parent)?;
        if spawn {
            let (child, url) = Self::spawn_child(dir.path(), setup).await?;
            return Ok(Self {
                send_url: url.clone(),
                url,
                running: Some(Running::Child(child)),
                setup,
                dir: Some(dir),
            });
        }
        let config = config(setup, dir.path())?;
        let relay = runtime
            .spawn(RunningRelay::start(config, Arc::new(SystemClock)))
            .await
            .map_err(|e| anyhow!("relay start task failed: {e}"))?
            .context("starting the relay")?;
        Ok(Self {
            url: relay.url.clone(),
            send_url: relay.url.clone(),
            running: Some(Running::InProcess {
                relay,
                runtime: runtime.clone(),
            }),
            setup,
            dir: Some(dir),
        })
    }

    /// A relay this tool did not start, at `url` (`--relay`); senders use
    /// `send_url` (`--send-relay`, another relay of the same fleet) if
    /// given.
    pub fn external(url: RelayUrl, send_url: Option<RelayUrl>) -> Self {
        Self {
            running: Some(Running::External),
            send_url: send_url.unwrap_or_else(|| url.clone()),
            url,
            setup: Setup::Bench,
            dir: None,
        }
    }

    /// Whether this tool started the relay as a child process.
    pub fn is_child(&self) -> bool {
        matches!(self.running, Some(Running::Child(_)))
    }

    /// Bytes under the relay's data directory (0 for an external relay).
    pub fn disk_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(p) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        self.dir.as_ref().map_or(0, |d| walk(d.path()))
    }

    /// Kill the child relay with SIGKILL and start another on the same
    /// data directory; returns when it was killed. The new one's URL is in
    /// [`Self::url`] once this returns (it printed it: it is listening).
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<std::time::Instant> {
        let Some(Running::Child(mut child)) = self.running.take() else {
            bail!("only a relay this tool spawned can be killed and restarted");
        };
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .ok_or_else(|| anyhow!("no data directory"))?;
        child.start_kill().context("SIGKILL to the relay")?;
        let killed = std::time::Instant::now();
        child.wait().await.context("waiting for the killed relay")?;
        let (child, url) = Self::spawn_child(&dir, self.setup).await?;
        self.running = Some(Running::Child(child));
        self.url = url;
        Ok(killed)
    }

    async fn spawn_child(
        dir: &Path,
        setup: Setup,
    ) -> anyhow::Result<(tokio::process::Child, RelayUrl)> {
        let exe = std::env::current_exe().context("finding tern-bench itself")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve").arg("--data-dir").arg(dir);
        if setup == Setup::Defaults {
            cmd.arg("--defaults");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the relay process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("relay process has no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .context("relay process did not start in 600 s")??
            .ok_or_else(|| anyhow!("relay process exited before printing its URL"))?;
        let url: RelayUrl = line
            .trim()
            .parse()
            .map_err(|e| anyhow!("relay process printed {line:?}: {e}"))?;
        Ok((child, url))
    }

    /// CPU and memory of the relay: its threads' CPU and the whole
    /// process's RSS in-process; the child's own figures when spawned.
    pub fn sample(&self) -> Sample {
        match &self.running {
            Some(Running::Child(c)) => match c.id() {
                Some(pid) => proc::sample_pid(pid),
                None => Sample::default(),
            },
            Some(Running::External) => Sample::default(),
            _ => proc::sample(),
        }
    }

    /// The relay's data directory, unless the relay is not ours (`--relay`).
    pub fn data_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// How the figures are taken, for the notes above a table.
    pub fn describe(&self) -> &'static str {
        match &self.running {
            Some(Running::Child(_)) => {
                "relay in a child process: relay CPU and RSS are the relay's alone"
            }
            Some(Running::External) => {
                "relay not started by tern-bench (--relay): no relay CPU, RSS or disk figures"
            }
            _ => {
                "relay in-process: relay CPU = its runtime's, store pool's and sled's threads; \
                 RSS = whole process (relay + load generator)"
            }
        }
    }

    /// Stop the relay and wait for it to close its connections.
    pub async fn shutdown(mut self) {
        match self.running.take() {
            Some(Running::InProcess { relay, runtime }) => {
                let _ = runtime.spawn(relay.shutdown()).await;
            }
            Some(Running::Child(mut child)) => {
                // Closing its stdin asks it to stop.
                drop(child.stdin.take());
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            Some(Running::External) | None => {}
        }
    }
}

/// `tern-bench serve`: run a relay with `setup`, print its URL on one line,
/// and stop when stdin closes.
pub async fn serve(data_dir: &Path, setup: Setup) -> anyhow::Result<()> {
    let relay = RunningRelay::start(config(setup, data_dir)?, Arc::new(SystemClock))
        .await
        .context("starting the relay")?;
    println!("{}", relay.url);
    let eof = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    });
    if let Err(e) = eof.await {
        bail!("waiting for stdin: {e}");
    }
    relay.shutdown().await;
    Ok(())
}
