//! A small fixed pool of threads for the store work of message streams:
//! sends, acks and fetches block (index locks, sled, reads of segment
//! files), so they must not run on the async workers, and a hop to tokio's
//! blocking pool per batch cost the relay about 15% of its throughput at
//! K=64 on two cores (docs/decisions.md): that pool grows a thread per
//! concurrent call, and each call is a task allocation and a wake-up. Here
//! a few long-lived threads drain one queue, so under load a thread takes
//! the next batch without sleeping; a batch queued to an idle pool wakes
//! one thread, and the answer wakes the stream.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue and who is asleep on it.
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting on the condition variable.
    idle: usize,
    /// Of those, how many were already woken for queued jobs: a burst of
    /// jobs wakes at most the idle threads, once each.
    waking: usize,
    /// Taking jobs; false once the pool is stopped.
    open: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Inner {
    fn lock(&self) -> Option<MutexGuard<'_, Queue>> {
        self.queue.lock().ok()
    }
}

/// The pool; jobs run in the order they were queued, several at a time.
///
/// One queue under a mutex, and a condition variable that wakes a sleeping
/// thread only when one is asleep and not already being woken: a job
/// queued while the threads are busy costs no system call, and one queued
/// to an idle pool costs one wake-up. (A shared `mpsc::Receiver` behind a
/// mutex, as before, cost two: the thread blocked in `recv` held the mutex,
/// so handing it a job also woke the other thread, blocked on the mutex,
/// just to block again in `recv`; the relay's futex calls per fan-out
/// delivery fell from 3.8 to 3.0 with this, docs/performance.md.)
pub struct StoreWorkers {
    inner: Arc<Inner>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl StoreWorkers {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                waking: 0,
                open: true,
            }),
            ready: Condvar::new(),
        });
        let pool = Self {
            inner: Arc::clone(&inner),
            threads: Mutex::new(Vec::new()),
        };
        for i in 0..threads.max(1) {
            let inner = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name(format!("tern-store-{i}"))
                .spawn(move || work(&inner))?;
            if let Ok(mut t) = pool.threads.lock() {
                t.push(handle);
            }
        }
        Ok(pool)
    }

    /// One thread per core, at most four: store work is short and the
    /// async workers need the cores too.
    pub fn per_core() -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.min(4))
    }

    /// Run `f` on a pool thread; the receiver yields its result, or an
    /// error if the job panicked or the pool was stopped.
    pub fn run<T, F>(&self, f: F) -> oneshot::Receiver<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        // A stopped pool drops the job, and with it `tx`, which answers
        // the caller.
        if let Some(mut q) = self.inner.lock() {
            if q.open {
                q.jobs.push_back(job);
                if q.idle > q.waking {
                    q.waking += 1;
                    drop(q);
                    self.inner.ready.notify_one();
                }
            }
        }
        rx
    }

    /// Stop taking jobs, let the queued ones finish and join the threads.
    pub fn stop(&self) {
        if let Some(mut q) = self.inner.lock() {
            q.open = false;
        }
        self.inner.ready.notify_all();
        let handles = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        // The last owner may be a job on a pool thread: never join oneself.
        let me = std::thread::current().id();
        for h in handles.into_iter().filter(|h| h.thread().id() != me) {
            let _ = h.join();
        }
    }
}

impl Drop for StoreWorkers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One pool thread: take jobs until the pool is stopped and its queue is
/// empty. A job that panics is answered by its dropped sender; the thread
/// goes on.
fn work(inner: &Inner) {
    let Some(mut q) = inner.lock() else { return };
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            q = match inner.lock() {
                Some(q) => q,
                None => return,
            };
            continue;
        }
        if !q.open {
            return;
        }
        q.idle += 1;
        q = match inner.ready.wait(q) {
            Ok(q) => q,
            Err(_) => return,
        };
        // Woken for a job, by `stop`, or spuriously: either way this
        // thread looks at the queue before it sleeps again.
        q.idle -= 1;
        q.waking = q.waking.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        let pool = StoreWorkers::new(2).unwrap();
        assert_eq!(pool.run(|| 2 + 2).await.unwrap(), 4);
        let panicked = pool.run(|| -> u8 { panic!("boom") }).await;
        assert!(panicked.is_err());
        // Both threads are still there to take work.
        let answers: Vec<_> = (0..8).map(|i| pool.run(move || i * 10)).collect();
        for (i, rx) in answers.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), i * 10);
        }
    }

    #[tokio::test]
    async fn every_job_runs_when_many_are_queued_at_once_and_stop_drains_the_queue() {
        let pool = Arc::new(StoreWorkers::new(2).unwrap());
        // Queued from several threads at once, onto a pool whose threads
        // may be asleep, busy or being woken.
        let queuers: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    (0..500u64)
                        .map(|i| (t * 1000 + i, pool.run(move || t * 1000 + i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for q in queuers {
            answers.extend(q.join().unwrap());
        }
        // Jobs still queued when the pool is stopped are run, not dropped.
        let slow: Vec<_> = (0..8u64)
            .map(|i| {
                pool.run(move || {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    i
                })
            })
            .collect();
        pool.stop();
        for (want, rx) in answers {
            assert_eq!(rx.await.unwrap(), want);
        }
        for (i, rx) in slow.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), i as u64);
        }
        assert!(pool.run(|| 1).await.is_err(), "stopped: no more jobs");
    }

    #[tokio::test]
    async fn a_stopped_pool_answers_with_an_error() {
        let pool = StoreWorkers::new(1).unwrap();
        pool.stop();
        assert!(pool.run(|| 1).await.is_err());
    }
}
