//! A wake-up for a background store thread (the group-commit flusher, the
//! log reclaimer): raised by other threads, waited for with a timeout, and
//! never lost if raised while nobody waits.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A flag with a condition variable.
#[derive(Default)]
pub struct Signal {
    raised: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    /// Raise it, waking the waiter.
    pub fn raise(&self) {
        if let Ok(mut raised) = self.raised.lock() {
            *raised = true;
            self.cv.notify_one();
        }
    }

    /// Wait until it is raised or `timeout` passes, and lower it. `Some(true)`
    /// if it was raised, `Some(false)` on timeout, `None` if the lock is
    /// poisoned (the waiter should stop).
    pub fn wait(&self, timeout: Duration) -> Option<bool> {
        let raised = self.raised.lock().ok()?;
        let (mut raised, _) = self.cv.wait_timeout_while(raised, timeout, |r| !*r).ok()?;
        Some(std::mem::replace(&mut *raised, false))
    }
}
