//! Many commands in few round trips: a batch's commands are grouped by the
//! primary that serves their key's slot and each group goes down one
//! connection as one pipeline, all groups at once. A group of writes ends
//! with one `WAIT` (when replicas are asked for), which covers every write
//! before it on that connection, so a batch pays one replica round trip
//! per primary instead of one per write; and a primary with
//! `appendfsync always` fsyncs once per event-loop turn, so a pipeline's
//! writes share its fsyncs.
//!
//! The engine keeps its own copy of the slot map (`CLUSTER SLOTS`) only to
//! group commands; the client library still routes each pipeline, to the
//! owner of the group's first slot. If the map is stale, the commands a
//! node refuses (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, or a function
//! it has not loaded) are tried again one by one on the single-command
//! path, which follows redirections, and the map is read again before the
//! next batch. Such a command was not run by the node that refused it, so
//! trying it again runs it once.

use super::engine::Inner;
use super::reply::{self, store_error};
use crate::store::StoreError;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key
/// without one, modulo 16,384, as Redis Cluster computes it.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    (crc16(tagged) as usize % SLOTS) as u16
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Which primary serves each slot, as last read; `u16::MAX`: not known.
pub struct SlotMap {
    owner: RwLock<Arc<Vec<u16>>>,
    stale: AtomicBool,
}

impl SlotMap {
    /// A map that knows nothing yet and is read before the first batch.
    pub fn unknown() -> Self {
        Self {
            owner: RwLock::new(Arc::new(vec![u16::MAX; SLOTS])),
            stale: AtomicBool::new(true),
        }
    }

    fn current(&self) -> Arc<Vec<u16>> {
        self.owner
            .read()
            .map(|o| Arc::clone(&o))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }

    /// Read `CLUSTER SLOTS` again if the map was marked stale. A failed
    /// read leaves the old map (commands are grouped less well, never
    /// run wrongly) and tries again next batch.
    async fn refresh(&self, inner: &Inner) {
        if !self.stale.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let Ok(v) = inner.query("read the slot map", cmd).await else {
            self.mark_stale();
            return;
        };
        let Some(map) = parse_slots(v) else {
            self.mark_stale();
            return;
        };
        if let Ok(mut o) = self.owner.write() {
            *o = Arc::new(map);
        }
    }
}

/// `CLUSTER SLOTS` (`[[start, end, [host, port, …], replicas…], …]`) as
/// the primary of every slot, numbered by address.
fn parse_slots(v: Value) -> Option<Vec<u16>> {
    let mut owner = vec![u16::MAX; SLOTS];
    let mut nodes: HashMap<(Vec<u8>, i64), u16> = HashMap::new();
    for range in reply::array(v).ok()? {
        let range = reply::array(range).ok()?;
        let start = usize::try_from(reply::int(range.first()?)?).ok()?;
        let end = usize::try_from(reply::int(range.get(1)?)?).ok()?;
        let primary = reply::array(range.get(2)?.clone()).ok()?;
        let host = reply::bytes(primary.first()?.clone()).ok()??;
        let port = reply::int(primary.get(1)?)?;
        let next = nodes.len() as u16;
        let id = *nodes.entry((host, port)).or_insert(next);
        for slot in owner.get_mut(start..=end.min(SLOTS - 1))? {
            *slot = id;
        }
    }
    Some(owner)
}

/// Whether a command's error means the node did not run it: a
/// redirection, a cluster in transition, or a function it lacks.
fn not_run(e: &StoreError) -> bool {
    let StoreError::Unavailable(msg) = e else {
        return false;
    };
    [
        "MOVED",
        "ASK",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "Function not found",
    ]
    .iter()
    .any(|m| msg.contains(m))
}

/// One command of a batch: the key that routes it, and the command.
pub struct Keyed {
    /// The key whose slot the command runs on.
    pub key: String,
    /// The command.
    pub cmd: Cmd,
}

impl Inner {
    /// Run `cmds` grouped into one pipeline per primary, every pipeline at
    /// once; one reply per command, in order. With `write` and replicas
    /// asked for, each pipeline ends in one `WAIT`, and a short count
    /// fails that pipeline's commands (as a lone write's would). Commands
    /// the node did not run are tried again one by one.
    pub(super) async fn batch(
        self: &Arc<Self>,
        what: &'static str,
        cmds: Vec<Keyed>,
        write: bool,
    ) -> Vec<Result<Value, StoreError>> {
        self.slots().refresh(self).await;
        let owner = self.slots().current();
        // Group by primary (or, for a slot the map lacks, by slot).
        let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
        let slots: Vec<u16> = cmds.iter().map(|c| slot_of(c.key.as_bytes())).collect();
        for (i, &slot) in slots.iter().enumerate() {
            let node = owner.get(usize::from(slot)).copied().unwrap_or(u16::MAX);
            let group = if node == u16::MAX {
                0x1_0000 | u32::from(slot)
            } else {
                u32::from(node)
            };
            groups.entry(group).or_default().push(i);
        }
        let cmds: Vec<Option<Keyed>> = cmds.into_iter().map(Some).collect();
        let mut cmds = cmds;
        let mut tasks = Vec::with_capacity(groups.len());
        for members in groups.into_values() {
            let first = slots[members[0]];
            let group: Vec<Cmd> = members
                .iter()
                .filter_map(|&i| cmds[i].as_ref().map(|c| c.cmd.clone()))
                .collect();
            let inner = Arc::clone(self);
            let task = tokio::spawn(async move { inner.pipeline(what, first, group, write).await });
            tasks.push((members, task));
        }
        let mut out: Vec<Option<Result<Value, StoreError>>> =
            (0..cmds.len()).map(|_| None).collect();
        for (members, task) in tasks {
            let replies = task
                .await
                .unwrap_or_else(|e| vec![Err(StoreError::unavailable(what, e)); members.len()]);
            for (i, r) in members.into_iter().zip(replies) {
                out[i] = Some(r);
            }
        }
        let mut done = Vec::with_capacity(out.len());
        for (i, r) in out.into_iter().enumerate() {
            let r = r.unwrap_or_else(|| Err(StoreError::Unavailable(format!("{what}: no reply"))));
            let r = match r {
                Err(e) if not_run(&e) => {
                    self.slots().mark_stale();
                    match cmds[i].take() {
                        Some(c) if write => self.write(what, &c.key, c.cmd).await,
                        Some(c) => self.query(what, c.cmd).await,
                        None => Err(e),
                    }
                }
                r => r,
            };
            done.push(r);
        }
        done
    }

    /// One group's pipeline, to the primary of `slot`, with its `WAIT`.
    async fn pipeline(
        &self,
        what: &str,
        slot: u16,
        cmds: Vec<Cmd>,
        write: bool,
    ) -> Vec<Result<Value, StoreError>> {
        let n = cmds.len();
        let replicas = if write { self.replicas() } else { 0 };
        let mut pipe = redis::pipe();
        for c in cmds {
            pipe.add_command(c);
        }
        if replicas > 0 {
            let wait_ms = self.wait_timeout_ms();
            pipe.cmd("WAIT").arg(replicas).arg(wait_ms.max(1));
        }
        let count = n + usize::from(replicas > 0);
        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
        let mut conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); n],
        };
        let values = match conn.route_pipeline(pipe, 0, count, route).await {
            Ok(v) => v,
            Err(e) => return vec![Err(store_error(what, &e)); n],
        };
        let mut values = values.into_iter();
        let replies: Vec<_> = (0..n)
            .map(|_| reply::check(what, values.next().unwrap_or(Value::Nil)))
            .collect();
        if replicas == 0 {
            return replies;
        }
        let acked = match values.next().map(|v| reply::check("WAIT", v)) {
            Some(Ok(v)) => reply::int(&v).unwrap_or(0),
            Some(Err(e)) => return vec![Err(e); n],
            None => 0,
        };
        if acked < i64::from(replicas) {
            let short = StoreError::Unavailable(format!(
                "{what}: {acked} of {replicas} replicas acknowledged the write"
            ));
            // Commands the node refused keep their own error (and are
            // tried again alone); the others were not replicated in time.
            return replies
                .into_iter()
                .map(|r| match r {
                    Err(e) if not_run(&e) => Err(e),
                    _ => Err(short.clone()),
                })
                .collect();
        }
        replies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16_384);
        assert_eq!(slot_of(b"{}x"), crc16(b"{}x") % 16_384);
        assert_eq!(slot_of(b"m:{ab}"), slot_of(b"e:{ab}"));
    }
}
