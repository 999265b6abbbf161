//! Durability: what one flush does, and the group commit that shares it.
//!
//! One flush writes the log buffer to the head segment and `fdatasync`s
//! every segment written since the last flush, then flushes sled if a
//! mailbox or token record changed. [`GroupCommit`] runs it on its own
//! thread whenever a writer waits for [`MailboxStore::durable`](crate::store::MailboxStore::durable),
//! so concurrent sends share one flush. A flush that starts a new head
//! segment wakes the reclaimer: the segment it sealed may already be free.

use super::group_commit::GroupCommit;
use super::reclaim::Reclaimer;
use super::{Inner, StoreError};
use std::sync::Arc;

/// The disk failed a sync: end the process with a clear message rather
/// than serve on data the kernel may have dropped (the fsyncgate pattern).
/// A supervisor restarts the relay, which replays what is really on disk.
pub(super) fn fatal(why: &str) -> ! {
    tracing::error!("{why}; the relay stops: a disk that fails a sync cannot be trusted");
    eprintln!("tern-relay: FATAL: {why}; stopping (docs/operations.md, \"A failed sync\")");
    std::process::exit(75)
}

impl Inner {
    /// Make every write so far durable; true if the log started a new head.
    pub(super) fn sync(&self) -> Result<bool, StoreError> {
        let rolled = self.log.sync(self.options.max_head_age)?;
        self.meta.flush_if_dirty()?;
        Ok(rolled)
    }
}

/// Start the group-commit flusher over `inner`; it holds `inner` until
/// [`GroupCommit::stop`].
pub(super) fn start(inner: &Arc<Inner>, reclaimer: &Arc<Reclaimer>) -> Arc<GroupCommit> {
    let (inner, reclaimer) = (Arc::clone(inner), Arc::clone(reclaimer));
    GroupCommit::start(move || {
        if inner.sync()? {
            reclaimer.kick();
        }
        Ok(())
    })
}
