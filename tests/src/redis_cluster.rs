//! A real Redis Cluster for tests: `redis-server` processes on free
//! loopback ports in a temp directory (`cluster-enabled yes`, `appendonly
//! yes`, `appendfsync always`, a 1 s node timeout so failover is quick),
//! joined with `redis-cli --cluster create`, waited on until every node
//! says the cluster is ok and every primary has its replica. The servers
//! are SIGKILLed and reaped when the [`RedisCluster`] drops.
//!
//! `redis-server` and `redis-cli` must be on PATH (CI installs them; see
//! `.ci/run`): without them a test fails, saying so, rather than skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Tests of one process that start clusters take turns (hold it for the
/// test): six `redis-server`s with `appendfsync always` per cluster,
/// several clusters at once on a 2-core machine starve each other's
/// replication past any deadline.
pub static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the cluster may take to form, or to fail over.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(120);

/// One `redis-server` of the cluster.
pub struct RedisNode {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Its directory (config, AOF, nodes.conf, log).
    pub dir: PathBuf,
    child: Option<Child>,
}

/// A running cluster of primaries and replicas on loopback.
pub struct RedisCluster {
    /// Its nodes, in the order `redis-cli --cluster create` was given them
    /// (the first ones start as primaries).
    pub nodes: Vec<RedisNode>,
    _temp: TempDir,
}

/// Fail the test, saying how to get Redis, unless `bin` runs.
fn require(bin: &str) {
    let found = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{bin}` is not on PATH: the Redis Cluster tests need redis-server and \
         redis-cli (apt-get install -y redis-server; .ci/run installs them)"
    );
}

/// A loopback port free for TCP, whose cluster bus port (+10000) is free
/// too. Both are drawn below the kernel's ephemeral range (32768 and up
/// by default): a port from `bind(0)` is released before redis-server
/// takes it, and in that gap any socket the machine opens may be given it,
/// and then the node cannot start.
fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(10_000..22_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port pair for a redis node");
}

impl RedisCluster {
    /// Start `primaries` primaries with `replicas` replicas each, and wait
    /// until the cluster is ok.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        require("redis-server");
        require("redis-cli");
        let temp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..primaries * (1 + replicas) {
            let port = free_port();
            let dir = temp.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {dir}\ncluster-enabled yes\ncluster-config-file nodes.conf\n\
                 cluster-node-timeout 1000\ncluster-replica-validity-factor 0\n\
                 appendonly yes\nappendfsync always\nsave \"\"\n\
                 logfile {dir}/redis.log\n",
                dir = dir.display()
            );
            std::fs::write(dir.join("redis.conf"), conf).unwrap();
            let mut node = RedisNode {
                port,
                dir,
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = Self { nodes, _temp: temp };
        for n in &cluster.nodes {
            cluster.wait_for(&format!("node {} answering", n.port), || {
                cli(n.port, &["PING"]).trim() == "PONG"
            });
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_healthy(primaries, replicas);
        cluster
    }

    /// The standard test cluster: three primaries, one replica each.
    pub fn six() -> Self {
        Self::start(3, 1)
    }

    /// Wait until every live node says the cluster is ok and `primaries`
    /// primaries each have `replicas` replicas connected and in sync.
    pub fn wait_healthy(&self, primaries: usize, replicas: usize) {
        self.wait_for("the cluster to be ok", || {
            self.live()
                .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        self.wait_for("every primary's replicas in sync", || {
            let ports = self.primary_ports();
            ports.len() == primaries
                && ports.iter().all(|p| {
                    let info = cli(*p, &["INFO", "replication"]);
                    info.contains(&format!("connected_slaves:{replicas}"))
                        && (replicas == 0 || info.contains("state=online"))
                })
        });
    }

    fn live(&self) -> impl Iterator<Item = &RedisNode> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// The seed list for `--redis` / `[redis] nodes`.
    pub fn seeds(&self) -> String {
        self.live()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Client ports of the live primaries, as a live node sees them.
    pub fn primary_ports(&self) -> Vec<u16> {
        let Some(any) = self.live().next() else {
            return Vec::new();
        };
        cli(any.port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && !l.contains("disconnected"))
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                let port = addr.split('@').next()?.rsplit(':').next()?;
                port.parse().ok()
            })
            .collect()
    }

    /// SIGKILL the node on `port` and reap it.
    pub fn kill(&mut self, port: u16) {
        for n in self.nodes.iter_mut().filter(|n| n.port == port) {
            n.kill();
        }
    }

    /// Start the killed node on `port` again on its data (AOF, nodes.conf):
    /// it rejoins the cluster, as a replica if it was failed over.
    pub fn restart(&mut self, port: u16) {
        for n in self.nodes.iter_mut().filter(|n| n.port == port) {
            n.kill();
            n.spawn();
        }
        self.wait_for(&format!("node {port} answering again"), || {
            cli(port, &["PING"]).trim() == "PONG"
        });
    }

    /// Client port of the live primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        self.try_primary_of(key)
            .unwrap_or_else(|| panic!("no live primary serves {key}"))
    }

    /// Client port of the primary serving `key`'s slot, if one not marked
    /// failed does (none for a moment during a failover).
    pub fn try_primary_of(&self, key: &str) -> Option<u16> {
        let any = self.live().next()?;
        let slot: u16 = cli(any.port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .ok()?;
        let nodes = cli(any.port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let port = f[1].split('@').next().and_then(|a| a.rsplit(':').next());
                return port.and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// Every key and value the live primaries hold, as raw bytes (strings,
    /// hash fields and values, set and sorted-set members), for tests that
    /// look for what must not be there.
    pub fn dump_everything(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for port in self.primary_ports() {
            let keys = raw(port, &["--scan"]);
            for key in String::from_utf8_lossy(&keys).lines() {
                all.extend_from_slice(key.as_bytes());
                all.push(b'\n');
                let kind = cli(port, &["TYPE", key]);
                let read: &[&str] = match kind.trim() {
                    "string" => &["GET"],
                    "hash" => &["HGETALL"],
                    "set" => &["SMEMBERS"],
                    "zset" => &["ZRANGE", "0", "-1"],
                    "list" => &["LRANGE", "0", "-1"],
                    "stream" => &["XRANGE", "-", "+"],
                    other => panic!("unexpected redis type {other:?} of {key}"),
                };
                let mut args = vec![read[0], key];
                args.extend_from_slice(&read[1..]);
                all.extend(raw(port, &args));
            }
        }
        all
    }

    /// Run `redis-cli -p PORT ARGS...` against node `port`; its stdout.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// Directories of every node (AOF files, logs), live or killed.
    pub fn dirs(&self) -> Vec<&Path> {
        self.nodes.iter().map(|n| n.dir.as_path()).collect()
    }

    /// Wait (boundedly) until `ok`, polling: a cluster's state is only
    /// observable by asking.
    pub fn wait_for(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "timed out after {CLUSTER_DEADLINE:?} waiting for {what}; logs in {:?}",
                self.dirs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl RedisNode {
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg(self.dir.join("redis.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server: {e}"));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

/// `redis-cli --raw -p PORT ARGS...`: its stdout bytes as they are.
fn raw(port: u16, args: &[&str]) -> Vec<u8> {
    Command::new("redis-cli")
        .args(["--raw", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default()
}

/// `redis-cli -p PORT ARGS...`: its stdout, empty if it failed to run.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
