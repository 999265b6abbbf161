//! The progress bar: workers bump an atomic counter; one ticker task moves
//! the bar ten times a second, so the hot path pays one relaxed add.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A bar with a shared counter.
pub struct Progress {
    /// Workers add to this.
    pub count: Arc<AtomicU64>,
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// A bar counting to `total` units of `what`.
    pub fn new(total: u64, what: &str) -> Self {
        let bar = ProgressBar::new(total);
        let template = format!(
            "{{prefix}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {what} ({{per_sec}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        let count = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (bar, count) = (bar.clone(), Arc::clone(&count));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    bar.set_position(count.load(Relaxed));
                }
            })
        };
        Self { count, bar, ticker }
    }

    /// Label the bar (the phase running now).
    pub fn set_prefix(&self, prefix: impl Into<String>) {
        self.bar.set_prefix(prefix.into());
    }

    /// Stop and clear the bar.
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.set_position(self.count.load(Relaxed));
        self.bar.finish_and_clear();
    }
}
