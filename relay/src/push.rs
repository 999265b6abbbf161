//! Push wake-ups (docs/protocol.md §17): when an envelope is stored for a
//! device that is not connected and registered a push endpoint, the relay
//! POSTs an empty body to that endpoint (UnifiedPush style): no content, no
//! sender, not even which mailbox (the URL alone names the device to its
//! push server). At most one wake-up per device per window.
//!
//! Off the hot path: the store's notification only looks up the endpoint
//! and puts the mailbox on a bounded queue (dropped if full); a task of its
//! own takes the queue and posts, a bounded number at a time, each with a
//! timeout and retries. So a slow or hung endpoint never slows a delivery.
//! An endpoint that keeps failing for `drop_after_ms` is dropped, and its
//! device is told so in its next heartbeat answer.
//!
//! Endpoints must start with one of the operator's `allowed_prefixes`
//! (none by default: push is off): an open relay that POSTs to any URL a
//! peer names would let anyone aim it at hosts behind the operator's
//! firewall (docs/threat-model.md, "Push wake-ups").

mod http;

use crate::clock::Clock;
use crate::store::MailboxId;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tern_protocol::{ErrorCode, WireError};
use tokio::sync::{mpsc, Semaphore};

pub use http::{post_empty, PostError};

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 1024;

/// Push settings (`[presence.push]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Endpoint URLs must start with one of these (e.g.
    /// `"https://push.example.org/"`); empty turns push off.
    pub allowed_prefixes: Vec<String>,
    /// At most one wake-up per device per this many milliseconds.
    pub window_ms: u64,
    /// One POST may take this long, in milliseconds.
    pub timeout_ms: u64,
    /// Tries after the first failed POST of a wake-up.
    pub retries: u32,
    /// An endpoint failing for this long (milliseconds) is dropped.
    pub drop_after_ms: u64,
    /// Wake-ups waiting to be posted; more are dropped.
    pub queue: usize,
    /// POSTs under way at once.
    pub concurrency: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            window_ms: 60_000,
            timeout_ms: 5_000,
            retries: 2,
            drop_after_ms: 86_400_000,
            queue: 4_096,
            concurrency: 16,
        }
    }
}

struct Endpoint {
    url: String,
    last_sent_ms: Option<u64>,
    failing_since_ms: Option<u64>,
}

struct Inner {
    endpoints: Mutex<HashMap<MailboxId, Endpoint>>,
    dropped: Mutex<HashSet<MailboxId>>,
    config: PushConfig,
    clock: Arc<dyn Clock>,
}

/// The relay's push endpoints and the queue to the task that posts.
#[derive(Clone)]
pub struct Push {
    inner: Arc<Inner>,
    queue: mpsc::Sender<MailboxId>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Push {
    /// Push with `config`, timed by `clock`, and the receiving end of its
    /// queue for [`Push::run`].
    pub fn new(config: PushConfig, clock: Arc<dyn Clock>) -> (Self, mpsc::Receiver<MailboxId>) {
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let inner = Arc::new(Inner {
            endpoints: Mutex::new(HashMap::new()),
            dropped: Mutex::new(HashSet::new()),
            config,
            clock,
        });
        (Self { inner, queue }, rx)
    }

    /// Is `url` one the operator allows?
    fn allowed(&self, url: &str) -> bool {
        url.len() <= MAX_URL_LEN
            && http::Target::parse(url).is_ok()
            && self
                .inner
                .config
                .allowed_prefixes
                .iter()
                .any(|p| !p.is_empty() && url.starts_with(p.as_str()))
    }

    /// `mailbox`'s owner sets its endpoint (empty: none).
    pub fn register(&self, mailbox: MailboxId, url: &str) -> Result<(), WireError> {
        lock(&self.inner.dropped).remove(&mailbox);
        if url.is_empty() {
            lock(&self.inner.endpoints).remove(&mailbox);
            return Ok(());
        }
        if !self.allowed(url) {
            return Err(WireError::new(
                ErrorCode::PushEndpointRefused,
                "this relay does not post to that endpoint",
            ));
        }
        lock(&self.inner.endpoints).insert(
            mailbox,
            Endpoint {
                url: url.to_string(),
                last_sent_ms: None,
                failing_since_ms: None,
            },
        );
        Ok(())
    }

    /// Was `mailbox`'s endpoint dropped since it last asked? Told once.
    pub fn take_dropped(&self, mailbox: &MailboxId) -> bool {
        lock(&self.inner.dropped).remove(mailbox)
    }

    /// Something was stored for `mailbox`, which has no connected
    /// subscriber: queue a wake-up unless one went out within the window.
    /// Never blocks.
    pub fn wake(&self, mailbox: &MailboxId) {
        let now = self.inner.clock.now_ms();
        {
            let mut endpoints = lock(&self.inner.endpoints);
            let Some(e) = endpoints.get_mut(mailbox) else {
                return;
            };
            if e.last_sent_ms
                .is_some_and(|t| now < t.saturating_add(self.inner.config.window_ms))
            {
                return;
            }
            e.last_sent_ms = Some(now);
        }
        if self.queue.try_send(*mailbox).is_err() {
            tracing::debug!("push queue full: a wake-up was dropped");
        }
    }

    /// Post queued wake-ups until the queue closes.
    pub async fn run(self, mut rx: mpsc::Receiver<MailboxId>) {
        let slots = Arc::new(Semaphore::new(self.inner.config.concurrency.max(1)));
        while let Some(mailbox) = rx.recv().await {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.deliver(mailbox).await;
                drop(permit);
            });
        }
    }

    /// One wake-up with its retries; an endpoint failing too long is dropped.
    async fn deliver(&self, mailbox: MailboxId) {
        let Some(url) = lock(&self.inner.endpoints)
            .get(&mailbox)
            .map(|e| e.url.clone())
        else {
            return;
        };
        let c = &self.inner.config;
        let timeout = Duration::from_millis(c.timeout_ms.max(1));
        let mut ok = false;
        for attempt in 0..=c.retries {
            if attempt > 0 {
                let pause = 200u64.saturating_mul(1 << attempt.min(10));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            match post_empty(&url, timeout).await {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => tracing::debug!("push to an endpoint failed: {e}"),
            }
        }
        let now = self.inner.clock.now_ms();
        let mut endpoints = lock(&self.inner.endpoints);
        let Some(e) = endpoints.get_mut(&mailbox).filter(|e| e.url == url) else {
            return;
        };
        if ok {
            e.failing_since_ms = None;
            return;
        }
        let since = *e.failing_since_ms.get_or_insert(now);
        if now.saturating_sub(since) >= c.drop_after_ms {
            endpoints.remove(&mailbox);
            drop(endpoints);
            lock(&self.inner.dropped).insert(mailbox);
            tracing::info!("a push endpoint failed too long and was dropped");
        }
    }

    /// Registered endpoints (for metrics and tests).
    pub fn endpoints(&self) -> usize {
        lock(&self.inner.endpoints).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn push(config: PushConfig) -> (Push, mpsc::Receiver<MailboxId>, ManualClock) {
        let clock = ManualClock::new(1_000_000);
        let (p, rx) = Push::new(config, Arc::new(clock.clone()));
        (p, rx, clock)
    }

    fn local() -> PushConfig {
        PushConfig {
            allowed_prefixes: vec!["http://127.0.0.1:".into()],
            ..PushConfig::default()
        }
    }

    #[test]
    fn only_endpoints_the_operator_allows_and_one_wake_up_per_window() {
        let (p, mut rx, clock) = push(local());
        for refused in [
            "http://10.0.0.1/x",
            "file:///etc/passwd",
            "http://127.0.0.1.evil/",
        ] {
            let e = p.register([1; 16], refused).expect_err(refused);
            assert_eq!(e.code, ErrorCode::PushEndpointRefused);
        }
        let (off, _rx, _) = push(PushConfig::default());
        assert!(
            off.register([1; 16], "http://127.0.0.1:9/x").is_err(),
            "off by default"
        );
        p.register([1; 16], "http://127.0.0.1:9/up")
            .expect("allowed");
        p.wake(&[2; 16]);
        assert!(rx.try_recv().is_err(), "no endpoint, no wake-up");
        p.wake(&[1; 16]);
        p.wake(&[1; 16]);
        assert_eq!(rx.try_recv().ok(), Some([1; 16]));
        assert!(rx.try_recv().is_err(), "coalesced within the window");
        clock.advance(p.inner.config.window_ms);
        p.wake(&[1; 16]);
        assert_eq!(rx.try_recv().ok(), Some([1; 16]), "the next window");
        p.register([1; 16], "").expect("off");
        clock.advance(p.inner.config.window_ms);
        p.wake(&[1; 16]);
        assert!(rx.try_recv().is_err(), "removed");
    }

    #[tokio::test]
    async fn an_endpoint_failing_too_long_is_dropped_and_its_device_told_once() {
        // A port nothing listens on: every POST fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let (p, rx, _clock) = push(PushConfig {
            retries: 0,
            drop_after_ms: 0,
            ..local()
        });
        p.register([1; 16], &format!("http://127.0.0.1:{port}/up"))
            .expect("allowed");
        tokio::spawn(p.clone().run(rx));
        p.wake(&[1; 16]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while p.endpoints() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "never dropped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(p.take_dropped(&[1; 16]), "told");
        assert!(!p.take_dropped(&[1; 16]), "once");
    }
}
