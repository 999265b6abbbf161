//! Process figures from `/proc/self`: CPU time (whole process, and the relay
//! runtime's threads alone) and resident memory.

use crate::relay::RELAY_THREAD;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Clock ticks per second in `/proc` counters (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of the process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU of the whole process, in seconds.
    pub cpu_total: f64,
    /// User + system CPU of the in-process relay's threads (its runtime,
    /// store pool, store and sled threads), in seconds. Threads that exited are not counted.
    pub cpu_relay: f64,
    /// Resident set size, in bytes.
    pub rss: u64,
    /// Peak resident set size, in bytes.
    pub rss_peak: u64,
}

/// utime + stime from a `stat` line, in seconds.
fn stat_cpu(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces; fields after
    // the last ')' start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sample_root(root: &Path) -> Sample {
    let mut s = Sample::default();
    if let Ok(stat) = std::fs::read_to_string(root.join("stat")) {
        s.cpu_total = stat_cpu(&stat).unwrap_or(0.0);
    }
    if let Ok(status) = std::fs::read_to_string(root.join("status")) {
        s.rss = status_kib(&status, "VmRSS:").unwrap_or(0) * 1024;
        s.rss_peak = status_kib(&status, "VmHWM:").unwrap_or(0) * 1024;
    }
    s
}

/// The counters of another process (a spawned relay): all of its CPU is
/// the relay's.
pub fn sample_pid(pid: u32) -> Sample {
    let mut s = sample_root(&PathBuf::from(format!("/proc/{pid}")));
    s.cpu_relay = s.cpu_total;
    s
}

/// Whether a thread of this process is the in-process relay's: its
/// runtime, its store pool and store threads (`tern-store-N`,
/// `tern-group-commit`, `tern-log-reclaim`) and sled's.
fn is_relay_thread(comm: &str) -> bool {
    [RELAY_THREAD, "tern-store", "tern-group", "tern-log", "sled"]
        .iter()
        .any(|p| comm.starts_with(p))
}

/// This process's counters now. Missing files (not Linux) read as zero.
pub fn sample() -> Sample {
    let mut s = sample_root(Path::new("/proc/self"));
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if is_relay_thread(&comm) {
                if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
                    s.cpu_relay += stat_cpu(&stat).unwrap_or(0.0);
                }
            }
        }
    }
    s
}

/// What changed between two samples over `wall`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Relay-thread CPU as a share of one core.
    pub relay_cores: f64,
    /// Whole-process CPU as a share of one core.
    pub total_cores: f64,
    /// RSS at the end, in MiB.
    pub rss_mib: f64,
    /// Peak RSS so far, in MiB.
    pub rss_peak_mib: f64,
}

/// Usage between `before` and `after`.
pub fn usage(before: &Sample, after: &Sample, wall: Duration) -> Usage {
    let secs = wall.as_secs_f64().max(1e-9);
    Usage {
        relay_cores: (after.cpu_relay - before.cpu_relay).max(0.0) / secs,
        total_cores: (after.cpu_total - before.cpu_total).max(0.0) / secs,
        rss_mib: after.rss as f64 / (1 << 20) as f64,
        rss_peak_mib: after.rss_peak as f64 / (1 << 20) as f64,
    }
}
