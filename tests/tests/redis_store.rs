//! The Redis Cluster engine against a real cluster (three primaries, three
//! replicas; tests/src/redis_cluster.rs): the shared `MailboxStore`
//! conformance suite, the start-up durability check, and wake-ups between
//! two engines as two relays of a fleet would have them.
//!
//! One cluster serves the cases of this file; they take turns (each case
//! empties the cluster and uses fixed mailbox ids), and the cluster stops
//! when the last case holding it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;
use tern_relay::hub::Hub;
use tern_relay::store::{MailboxStore, RedisOptions, RedisStore};
use tern_tests::redis_cluster::RedisCluster;

/// The cluster shared by this file's cases, while any case holds it.
fn shared_cluster() -> Arc<RedisCluster> {
    static CLUSTER: OnceLock<Mutex<Weak<RedisCluster>>> = OnceLock::new();
    let slot = CLUSTER.get_or_init(|| Mutex::new(Weak::new()));
    let mut weak = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = weak.upgrade() {
        return c;
    }
    let c = Arc::new(RedisCluster::six());
    *weak = Arc::downgrade(&c);
    c
}

/// Held while a case runs: its turn and the cluster.
struct Turn {
    _turn: MutexGuard<'static, ()>,
    cluster: Arc<RedisCluster>,
}

fn take_turn() -> Turn {
    static TURN: Mutex<()> = Mutex::new(());
    let cluster = shared_cluster();
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    for port in cluster.primary_ports() {
        assert_eq!(cluster.cli(port, &["FLUSHALL"]).trim(), "OK");
    }
    Turn {
        _turn: turn,
        cluster,
    }
}

fn options(cluster: &RedisCluster, replicas: u32) -> RedisOptions {
    RedisOptions {
        replicas,
        ..RedisOptions::for_nodes(&cluster.seeds())
    }
}

/// A fresh store on the emptied cluster, acknowledging writes only once
/// one replica holds them.
fn open_fresh() -> (RedisStore, Turn) {
    let turn = take_turn();
    let store = RedisStore::open(options(&turn.cluster, 1)).unwrap();
    (store, turn)
}

tern_relay::mailbox_store_conformance!(open_fresh);

#[test]
fn refuses_a_cluster_that_does_not_fsync_every_write_unless_allowed() {
    let turn = take_turn();
    let c = &turn.cluster;
    let port = c.primary_ports()[0];
    assert_eq!(
        c.cli(port, &["CONFIG", "SET", "appendfsync", "everysec"])
            .trim(),
        "OK"
    );
    let refused = RedisStore::open(options(c, 0)).err().expect("refused");
    let why = refused.to_string();
    assert!(why.contains("appendfsync"), "{why}");
    assert!(why.contains("allow_unsafe_durability"), "{why}");
    let allowed = RedisStore::open(RedisOptions {
        allow_unsafe_durability: true,
        ..options(c, 0)
    });
    assert!(allowed.is_ok());
    assert_eq!(
        c.cli(port, &["CONFIG", "SET", "appendfsync", "always"])
            .trim(),
        "OK"
    );
}

#[test]
fn a_store_through_one_engine_wakes_subscribers_of_another() {
    let turn = take_turn();
    let a = RedisStore::open(options(&turn.cluster, 1)).unwrap();
    let b = RedisStore::open(options(&turn.cluster, 1)).unwrap();
    let (hub_a, hub_b) = (Arc::new(Hub::default()), Arc::new(Hub::default()));
    hub_a.attach_fleet(a.fleet().unwrap());
    hub_b.attach_fleet(b.fleet().unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sub = hub_b.subscribe([4; 16]);
        // The subscription wakes once when it is in place on the shard.
        tokio::time::timeout(Duration::from_secs(30), sub.wake.notified())
            .await
            .expect("subscription in place");
        for _ in 0..3 {
            hub_a.stored(&[4; 16]);
            tokio::time::timeout(Duration::from_secs(30), sub.wake.notified())
                .await
                .expect("relay B's subscriber woken by relay A's store");
        }
    });
    drop((hub_a, hub_b, a, b, turn));
}
