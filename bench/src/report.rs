//! Results: latency histograms, one row of figures per run, the printed
//! table (with a median row when a setting ran more than once) and JSON.

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Duration;

/// End-to-end latencies in nanoseconds, 1 ns to 10 min, 3 significant digits.
pub struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        #[allow(clippy::unwrap_used)]
        let h = Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap();
        Self(h)
    }

    /// Record one latency; values past the top are clamped.
    pub fn record(&mut self, nanos: u64) {
        self.0.saturating_record(nanos.max(1));
    }

    /// Fold another histogram into this one.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// The `q` quantile in milliseconds (NaN when empty).
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.value_at_quantile(q) as f64 / 1e6
    }

    /// p50, p99, p99.9 and max as table columns.
    pub fn columns(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("p50 ms", self.ms(0.50)),
            ("p99 ms", self.ms(0.99)),
            ("p99.9 ms", self.ms(0.999)),
            ("max ms", self.ms(1.0)),
        ]
    }
}

/// Mean wall time per message in microseconds (NaN for no messages).
pub fn mean_us(total: Duration, messages: u64) -> f64 {
    if messages == 0 {
        return f64::NAN;
    }
    total.as_secs_f64() * 1e6 / messages as f64
}

/// One run's figures, columns in print order.
#[derive(Debug, Clone)]
pub struct Row {
    /// The setting this run used (e.g. `K=16`); runs with the same label
    /// get a median row.
    pub label: String,
    /// Column name and value.
    pub values: Vec<(&'static str, f64)>,
}

/// A workload's results.
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// What the messages were (`opaque` or `e2e`); `None` for workloads
    /// that send none.
    pub mode: Option<&'static str>,
    /// The parameters, for the JSON file.
    pub params: Value,
    /// Lines printed above the table (what is measured and how).
    pub notes: Vec<String>,
    /// One row per run.
    pub rows: Vec<Row>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Report {
    /// Median rows: one per label that ran more than once.
    fn medians(&self) -> Vec<Row> {
        let mut labels: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !labels.contains(&r.label.as_str()) {
                labels.push(&r.label);
            }
        }
        labels
            .into_iter()
            .filter_map(|label| {
                let runs: Vec<&Row> = self.rows.iter().filter(|r| r.label == label).collect();
                if runs.len() < 2 {
                    return None;
                }
                let values = runs[0]
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| {
                        let column = runs.iter().filter_map(|r| r.values.get(i).map(|v| v.1));
                        (*name, median(column.collect()))
                    })
                    .collect();
                Some(Row {
                    label: format!("{label} median"),
                    values,
                })
            })
            .collect()
    }

    /// Print the notes and the table.
    pub fn print(&self) {
        println!();
        match self.mode {
            Some(mode) => println!("== {} ({mode}) ==", self.workload),
            None => println!("== {} ==", self.workload),
        }
        for n in &self.notes {
            println!("  {n}");
        }
        let Some(first) = self.rows.first() else {
            println!("  (no runs)");
            return;
        };
        let medians = self.medians();
        let all: Vec<&Row> = self.rows.iter().chain(medians.iter()).collect();
        let label_w = all.iter().map(|r| r.label.len()).max().unwrap_or(0).max(5);
        let widths: Vec<usize> = first
            .values
            .iter()
            .map(|(name, _)| name.len().max(10))
            .collect();
        let mut header = format!("{:<label_w$}", "run");
        for ((name, _), w) in first.values.iter().zip(&widths) {
            header.push_str(&format!("  {name:>w$}"));
        }
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
        for row in all {
            let mut line = format!("{:<label_w$}", row.label);
            for ((_, v), w) in row.values.iter().zip(&widths) {
                line.push_str(&format!("  {:>w$}", fmt_value(*v)));
            }
            println!("{line}");
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let row = |r: &Row| {
            let mut m = Map::new();
            m.insert("label".into(), json!(r.label));
            for (k, v) in &r.values {
                let v = if v.is_finite() { json!(v) } else { Value::Null };
                m.insert((*k).into(), v);
            }
            Value::Object(m)
        };
        json!({
            "workload": self.workload,
            "mode": self.mode,
            "params": self.params,
            "notes": self.notes,
            "runs": self.rows.iter().map(row).collect::<Vec<_>>(),
            "medians": self.medians().iter().map(row).collect::<Vec<_>>(),
        })
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Write every report to `path` as one JSON document.
pub fn write_json(path: &Path, reports: &[Report], machine: Value) -> anyhow::Result<()> {
    let doc = json!({
        "tool": "tern-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "machine": machine,
        "reports": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
