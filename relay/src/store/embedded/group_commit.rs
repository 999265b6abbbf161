//! Group commit: many writers, one flush. Each write bumps a counter after it
//! lands in memory; a flusher thread flushes whenever someone waits (and
//! within 200 ms of any write nobody waits for), and then
//! publishes the counter value it had read before flushing. A waiter whose
//! write was counted before that read is therefore on disk. Under load one
//! flush covers every send that arrived while the previous flush ran.

use super::signal::Signal;
use super::StoreError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;

/// Flushes a database on behalf of concurrent writers.
pub struct GroupCommit {
    written: AtomicU64,
    wake: Signal,
    durable: watch::Sender<Result<u64, StoreError>>,
    stopped: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl GroupCommit {
    /// Start a flusher thread that calls `flush` whenever writes await it.
    /// The thread ends when the returned handle is dropped.
    pub fn start<F>(flush: F) -> Arc<Self>
    where
        F: Fn() -> Result<(), StoreError> + Send + 'static,
    {
        let (durable, _) = watch::channel(Ok(0));
        let gc = Arc::new(Self {
            written: AtomicU64::new(0),
            wake: Signal::default(),
            durable,
            stopped: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let weak = Arc::downgrade(&gc);
        let thread = std::thread::Builder::new()
            .name("tern-group-commit".into())
            .spawn(move || flusher(weak, flush))
            .map_err(|e| tracing::error!("cannot start flusher thread: {e}"))
            .ok();
        if let Ok(mut t) = gc.thread.lock() {
            *t = thread;
        }
        gc
    }

    /// Stop the flusher thread and wait for it, releasing what its flush
    /// closure holds (the database handle, so the files can be reopened).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.kick();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Count one write that has landed in memory.
    pub fn wrote(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// Resolves when every write counted so far is durable.
    pub fn wait(self: &Arc<Self>) -> impl std::future::Future<Output = Result<(), StoreError>> {
        let target = self.written.load(Ordering::SeqCst);
        let mut rx = self.durable.subscribe();
        // The flush starts now, not when the future is first polled: its
        // caller may have other work first (waking the recipients).
        if matches!(*rx.borrow(), Ok(done) if done < target) {
            self.kick();
        }
        let gc = Arc::clone(self);
        async move {
            loop {
                // Clone out of the borrow: holding it while resetting the
                // value below would deadlock the channel's lock.
                let state = rx.borrow_and_update().clone();
                match state {
                    Ok(done) if done >= target => return Ok(()),
                    Ok(_) => {}
                    Err(e) => {
                        // A failed flush fails its waiters; the next wait
                        // triggers a fresh attempt.
                        gc.durable.send_modify(|v| {
                            if v.is_err() {
                                *v = Ok(0);
                            }
                        });
                        return Err(e);
                    }
                }
                if gc.stopped.load(Ordering::SeqCst) || !gc.running() {
                    return Err(StoreError::Unavailable("the store is closed".into()));
                }
                gc.kick();
                if rx.changed().await.is_err() {
                    return Err(StoreError::Unavailable("flusher stopped".into()));
                }
            }
        }
    }

    fn running(&self) -> bool {
        self.thread.lock().map(|t| t.is_some()).unwrap_or(false)
    }

    fn kick(&self) {
        self.wake.raise();
    }
}

fn flusher<F: Fn() -> Result<(), StoreError>>(gc: Weak<GroupCommit>, flush: F) {
    let mut flushed = 0u64;
    loop {
        // Holding only a weak reference between rounds lets the thread end
        // once the store is dropped.
        let Some(gc) = gc.upgrade() else { return };
        let Some(woken) = gc.wake.wait(std::time::Duration::from_millis(200)) else {
            return;
        };
        if gc.stopped.load(Ordering::SeqCst) {
            return;
        }
        let target = gc.written.load(Ordering::SeqCst);
        // Unwaited writes (deletes) are flushed within one timeout too.
        if !woken && target <= flushed {
            continue;
        }
        if target <= flushed {
            let _ = gc.durable.send_replace(Ok(flushed));
            continue;
        }
        match flush() {
            Ok(()) => {
                flushed = target;
                let _ = gc.durable.send_replace(Ok(target));
            }
            Err(e) => {
                tracing::error!("flush failed: {e}");
                let _ = gc.durable.send_replace(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_waiters_share_flushes() {
        let flushes = Arc::new(AtomicUsize::new(0));
        let f = Arc::clone(&flushes);
        let gc = GroupCommit::start(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            f.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let mut waits = Vec::new();
        for _ in 0..200 {
            gc.wrote();
            waits.push(tokio::spawn(gc.wait()));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..200).contains(&n), "{n} flushes for 200 writes");
    }

    #[tokio::test]
    async fn waits_after_stop_fail_instead_of_hanging() {
        let gc = GroupCommit::start(|| Ok(()));
        gc.stop();
        gc.wrote();
        assert!(gc.wait().await.is_err());
    }

    #[tokio::test]
    async fn failed_flush_fails_waiter_then_recovers() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = Arc::clone(&fail);
        let gc = GroupCommit::start(move || {
            if f.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable("disk full".into()))
            } else {
                Ok(())
            }
        });
        gc.wrote();
        assert!(gc.wait().await.is_err());
        fail.store(false, Ordering::SeqCst);
        gc.wrote();
        gc.wait().await.unwrap();
    }
}
