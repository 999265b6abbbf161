//! Many client stores in one process, each flushed while others commit
//! transactions and read (what `tern-bench failover` does with 8 pairs, and
//! what a `tern listen` does with several tasks): the whole mix must finish.
//!
//! sled 0.34 keeps one IO thread pool and one concurrency-control lock for
//! the whole process. Its `flush_async` ran the flush on that pool, where it
//! held the lock for reading while waiting for log writes it had queued on
//! the same pool: with seven flushes at once the pool's seven threads all
//! waited, the writes never ran, the next transaction waited for the lock
//! for writing and every read after it waited behind that. The cycle needs
//! the pool's threads to be slow to pick up the queued writes, so before
//! the fix this hung on a busy machine (9 runs in 18 with three copies at
//! once on 2 cores, and under `cargo test` while building) but rarely when
//! run alone. This test runs in its own process (an integration test), so
//! a hang stays here; it is reported after a generous timeout rather than
//! hanging CI.

use std::sync::mpsc;
use std::time::Duration;
use tern_client::store::{LocalStore, OutboxItem};
use tern_crypto::StoreKey;

/// Stores in the process (two per pair of the failover bench's 8).
const STORES: usize = 16;
/// Rounds of commit, read and flush per store.
const ROUNDS: u64 = 40;
/// How long the whole mix may take on a loaded 2-core machine before it
/// is reported as a hang (it takes a few seconds when nothing hangs).
const HANG_AFTER: Duration = Duration::from_secs(180);

fn item(n: u64, contact: [u8; 32]) -> OutboxItem {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    OutboxItem {
        position: n,
        message_id: id,
        contact,
        message_key: None,
        relay_url: "quic://127.0.0.1:1".into(),
        mailbox_id: [1; 16],
        token: [2; 32],
        payload: vec![3; 200],
        copy: false,
    }
}

/// One store's work: what the outbox flush and the receipts code do.
async fn churn(store: LocalStore, which: usize) -> Result<(), tern_client::ClientError> {
    let contact = [which as u8; 32];
    for n in 0..ROUNDS {
        let it = item(n, contact);
        store.commit_receipt_batch(&[7; 64], &it, &[])?;
        assert!(store.is_receipt_batch(&it.message_id)?);
        store.flush().await?;
        store.forget_receipt_batch(&it.message_id)?;
    }
    Ok(())
}

#[test]
fn many_stores_flushing_while_committing_do_not_hang() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stores: Vec<LocalStore> = (0..STORES)
        .map(|i| {
            LocalStore::open(&dir.path().join(format!("s{i}")), StoreKey::generate())
                .expect("open store")
        })
        .collect();
    let (done_tx, done_rx) = mpsc::channel();
    // The runtime runs on a thread of its own so a hang can be reported.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(async move {
            let tasks: Vec<_> = stores
                .into_iter()
                .enumerate()
                .map(|(i, s)| tokio::spawn(churn(s, i)))
                .collect();
            let mut out = Ok(());
            for t in tasks {
                match t.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => out = Err(e.to_string()),
                    Err(e) => out = Err(e.to_string()),
                }
            }
            out
        });
        let _ = done_tx.send(result);
    });
    match done_rx.recv_timeout(HANG_AFTER) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("store work failed: {e}"),
        Err(_) => panic!(
            "{STORES} stores committing, reading and flushing did not finish in {HANG_AFTER:?}: \
             the stores hung"
        ),
    }
}
