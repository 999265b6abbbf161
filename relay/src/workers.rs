//! A small fixed pool of threads for the store work of message streams:
//! sends, acks and fetches block (index locks, sled, reads of segment
//! files), so they must not run on the async workers, and a hop to tokio's
//! blocking pool per batch cost the relay about 15% of its throughput at
//! K=64 on two cores (docs/decisions.md): that pool grows a thread per
//! concurrent call, and each call is a task allocation and a wake-up. Here
//! a few long-lived threads drain one queue, so under load a thread takes
//! the next batch without sleeping, and the only wake-up per batch is the
//! answer's.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool; jobs run in the order they were queued, several at a time.
pub struct StoreWorkers {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl StoreWorkers {
    /// A pool of `threads` threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("tern-store-{i}"))
                .spawn(move || work(&rx))?;
            handles.push(handle);
        }
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
        })
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
        if let Ok(queue) = self.queue.lock() {
            if let Some(q) = queue.as_ref() {
                // A send fails only once every thread is gone; the dropped
                // job then drops `tx`, which answers the caller.
                let _ = q.send(job);
            }
        }
        rx
    }

    /// Stop taking jobs, let the queued ones finish and join the threads.
    pub fn stop(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
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

/// One pool thread: take jobs until the queue closes. A job that panics is
/// answered by its dropped sender; the thread goes on.
fn work(rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
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
    async fn a_stopped_pool_answers_with_an_error() {
        let pool = StoreWorkers::new(1).unwrap();
        pool.stop();
        assert!(pool.run(|| 1).await.is_err());
    }
}
