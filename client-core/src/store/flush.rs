//! Making the store durable without sled's IO thread pool.
//!
//! sled 0.34's `flush_async` runs the flush as a job on sled's IO pool,
//! one pool for the whole process (seven threads, plus one more only when
//! more than seven jobs are queued). The flush takes sled's process-wide
//! concurrency-control lock for reading and then waits for the log writes
//! it starts, which are queued as jobs on that same pool. With several
//! stores in one process (the failover bench, a `tern listen` running many
//! tasks) one flush could hold the lock while waiting for its write, a
//! transaction (which takes the lock for writing) queued behind it, and
//! the other flushes, now on every pool thread, waited for the lock behind
//! that writer: the write never got a thread, and every sled call in the
//! process, the runtime's workers included, waited forever. Here the flush
//! runs as a blocking task of the async runtime instead, so sled's pool
//! only ever runs log writes and file truncations, which take no lock and
//! wait for no other job, and the cycle cannot form. The guarantee is the
//! same: `Db::flush` and `flush_async` both return once everything written
//! before the call is on disk (the very same `PageCache::flush`).

use crate::error::ClientError;
use sled::Db;

/// Make everything written to `db` so far durable, on one of the runtime's
/// blocking threads (never on sled's IO pool, never on an async worker).
pub(crate) async fn flush_db(db: &Db) -> Result<(), ClientError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush())
        .await
        .map_err(|e| ClientError::Store(format!("store flush did not run: {e}")))??;
    Ok(())
}
