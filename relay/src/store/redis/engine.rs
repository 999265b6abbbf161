//! [`RedisStore`]: connections, the engine's own runtime, the synchronous
//! bridge the store threads call through, and the function calls that
//! every [`MailboxStore`] operation becomes.

use super::batch::{Keyed, SlotMap};
use super::check;
use super::keys::{self, MailboxKeys};
use super::options::RedisOptions;
use super::reply::{self, store_error};
use super::wake::Wakeups;
use crate::hub::Fleet;
use crate::store::{
    Appended, BatchAppend, Durable, MailboxId, MailboxRecord, MailboxStore, NewEnvelope, Quota,
    StoreError, StoredEnvelope, Swept, TokenHash, TokenRecord,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Relay state in a Redis Cluster.
pub struct RedisStore {
    inner: Arc<Inner>,
    /// The engine's runtime; shut down in the background on drop, so a
    /// store dropped inside an async context does not panic.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    wakeups: Arc<Wakeups>,
}

/// What the async operations share.
pub(super) struct Inner {
    conns: Vec<ClusterConnection>,
    next: AtomicUsize,
    options: RedisOptions,
    closed: AtomicBool,
    /// Which primary serves which slot, to group a batch's commands.
    slots: SlotMap,
}

impl RedisStore {
    /// Connect to the cluster, check that its primaries fsync every write
    /// (unless `allow_unsafe_durability`), load the function library and
    /// start listening for wake-ups. Blocks the calling thread until then.
    pub fn open(options: RedisOptions) -> Result<Self, StoreError> {
        if options.nodes.is_empty() {
            return Err(StoreError::Unavailable("no redis nodes given".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tern-redis")
            .enable_all()
            .build()
            .map_err(|e| StoreError::unavailable("redis runtime", e))?;
        let handle = runtime.handle().clone();
        let opts = options.clone();
        let connect = async move {
            let client = ClusterClientBuilder::new(opts.nodes.clone())
                .connection_timeout(opts.connect_timeout)
                .response_timeout(opts.response_timeout)
                .retries(8)
                .build()
                .map_err(|e| store_error("redis cluster", &e))?;
            let mut conns = Vec::new();
            for _ in 0..opts.pool_size.max(1) {
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| store_error("connect to the redis cluster", &e))?;
                conns.push(conn);
            }
            let first = conns
                .first_mut()
                .ok_or_else(|| StoreError::Unavailable("no redis connection".into()))?;
            let unsafe_nodes = match check::unsafe_primaries(first).await {
                Ok(nodes) => nodes,
                // A managed Redis may refuse CONFIG: only the operator can
                // vouch for its durability then.
                Err(e) if opts.allow_unsafe_durability => vec![format!("cannot check: {e}")],
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot check that the redis primaries fsync every write ({e}); \
                         allow_unsafe_durability = true in [redis] runs without the check"
                    )))
                }
            };
            if !unsafe_nodes.is_empty() {
                if !opts.allow_unsafe_durability {
                    return Err(StoreError::Unavailable(format!(
                        "redis primaries do not fsync every write, so acknowledged mail \
                         could be lost ({}); set appendonly yes and appendfsync always, \
                         or allow_unsafe_durability = true in [redis]",
                        unsafe_nodes.join("; ")
                    )));
                }
                tracing::warn!(nodes = ?unsafe_nodes, "redis durability is not enforced");
            }
            check::load_library(first).await?;
            let wakeups = Wakeups::start(&opts).await?;
            Ok((conns, wakeups))
        };
        let (conns, wakeups) = bridge(&handle, connect)?;
        Ok(Self {
            inner: Arc::new(Inner {
                conns,
                next: AtomicUsize::new(0),
                options,
                closed: AtomicBool::new(false),
                slots: SlotMap::unknown(),
            }),
            runtime: Mutex::new(Some(runtime)),
            handle,
            wakeups,
        })
    }

    /// The cross-relay wake-ups of this store (for the relay's hub).
    pub fn wakeups(&self) -> Arc<Wakeups> {
        Arc::clone(&self.wakeups)
    }

    /// Run `op` on the engine's runtime and wait for it on this thread.
    fn run<T, F>(&self, op: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        bridge(&self.handle, op(Arc::clone(&self.inner)))
    }

    /// Refuse writes once closed.
    fn writable(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        Ok(())
    }
}

/// Run `fut` on `handle` and block this (non-async) thread for its answer.
fn bridge<T, F>(handle: &tokio::runtime::Handle, fut: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Unavailable("the redis engine stopped".into()))?
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.wakeups.stop();
        if let Some(rt) = self.runtime.lock().ok().and_then(|mut r| r.take()) {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    pub(super) fn slots(&self) -> &SlotMap {
        &self.slots
    }

    /// Replicas each write must reach.
    pub(super) fn replicas(&self) -> u32 {
        self.options.replicas
    }

    /// How long a `WAIT` waits, in ms.
    pub(super) fn wait_timeout_ms(&self) -> u64 {
        self.options.wait_timeout.as_millis() as u64
    }

    pub(super) fn conn(&self) -> Result<ClusterConnection, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns
            .get(i % self.conns.len().max(1))
            .cloned()
            .ok_or_else(|| StoreError::Unavailable("no redis connection".into()))
    }

    /// Run one command, routed by its key.
    pub(super) async fn query(&self, what: &str, cmd: Cmd) -> Result<Value, StoreError> {
        let mut conn = self.conn()?;
        let v = cmd
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| store_error(what, &e))?;
        reply::check(what, v)
    }

    /// Run a write on the primary of `key`'s slot; with `replicas` set, in
    /// one pipeline with `WAIT`, so the write is acknowledged only once
    /// that many replicas hold it. A function the primary does not know
    /// (a node that joined empty) is loaded and the write tried again.
    pub(super) async fn write(&self, what: &str, key: &str, cmd: Cmd) -> Result<Value, StoreError> {
        match self.write_once(what, key, cmd.clone()).await {
            Err(StoreError::Unavailable(e)) if e.contains("Function not found") => {
                check::load_library(&mut self.conn()?).await?;
                self.write_once(what, key, cmd).await
            }
            other => other,
        }
    }

    async fn write_once(&self, what: &str, key: &str, cmd: Cmd) -> Result<Value, StoreError> {
        let replicas = self.options.replicas;
        if replicas == 0 {
            return self.query(what, cmd).await;
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let wait_ms = self.options.wait_timeout.as_millis() as u64;
        pipe.cmd("WAIT").arg(replicas).arg(wait_ms.max(1));
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        let mut conn = self.conn()?;
        let mut out = conn
            .route_pipeline(pipe, 0, 2, route)
            .await
            .map_err(|e| store_error(what, &e))?
            .into_iter();
        let result = reply::check(what, out.next().unwrap_or(Value::Nil))?;
        let acked = out.next().map(|v| reply::check("WAIT", v)).transpose()?;
        let acked = acked.as_ref().and_then(reply::int).unwrap_or(0);
        if acked < i64::from(replicas) {
            return Err(StoreError::Unavailable(format!(
                "{what}: {acked} of {replicas} replicas acknowledged the write"
            )));
        }
        Ok(result)
    }

    async fn append(
        self: Arc<Self>,
        mailbox: MailboxId,
        message_id: [u8; 16],
        packed: Arc<Vec<u8>>,
        payload_len: usize,
        expires_ms: u64,
        quota: Quota,
    ) -> Result<Appended, StoreError> {
        let k = MailboxKeys::of(&mailbox);
        let cmd = append_cmd(&k, &message_id, &packed, payload_len, expires_ms, quota);
        let (appended, earliest) = append_reply(self.write("append", &k.record, cmd).await?)?;
        if earliest && expires_ms != u64::MAX {
            // The mailbox's earliest expiry moved earlier: tell the
            // sweeper (not atomic with the append; see decisions.md).
            self.query("index expiry", index_cmd(&mailbox, expires_ms))
                .await?;
        }
        Ok(appended)
    }

    /// Sweep one bucket of the expiry index.
    async fn sweep_bucket(&self, bucket: u8, now_ms: u64) -> Result<u64, StoreError> {
        let index = keys::sweep_bucket(bucket);
        let mut removed = 0;
        // Each pass moves every mailbox it takes past `now`: bounded.
        for _ in 0..10_000 {
            let mut due = redis::cmd("ZRANGE");
            due.arg(&index)
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(256);
            let due = reply::array(self.query("sweep index", due).await?)?;
            if due.is_empty() {
                break;
            }
            for member in due {
                let Some(raw) = reply::bytes(member)? else {
                    continue;
                };
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(&index).arg(&raw);
                self.query("sweep index", zrem).await?;
                let Ok(mailbox) = MailboxId::try_from(raw.as_slice()) else {
                    continue;
                };
                let k = MailboxKeys::of(&mailbox);
                let mut cmd = fcall("tern_sweep", &k.envelope_keys());
                cmd.arg(now_ms);
                let items = reply::array(self.write("sweep", &k.record, cmd).await?)?;
                removed += reply::int_at(&items, 0)? as u64;
                let next = items.get(1).and_then(reply::score_ms);
                if let Some(next) = next.filter(|n| *n != u64::MAX) {
                    let mut z = redis::cmd("ZADD");
                    z.arg(&index).arg("LT").arg(next).arg(&raw);
                    self.query("sweep index", z).await?;
                }
            }
        }
        Ok(removed)
    }
}

/// `tern_append` of one envelope (packed by [`keys::pack`]).
fn append_cmd(
    k: &MailboxKeys,
    message_id: &[u8; 16],
    packed: &[u8],
    payload_len: usize,
    expires_ms: u64,
    quota: Quota,
) -> Cmd {
    let mut cmd = fcall("tern_append", &k.envelope_keys());
    cmd.arg(&message_id[..])
        .arg(packed)
        .arg(expires_ms)
        .arg(payload_len)
        .arg(quota.max_envelopes)
        .arg(quota.max_bytes);
    cmd
}

/// What `tern_append` answered, and whether the envelope is now its
/// mailbox's earliest to expire (so the expiry index must learn it).
fn append_reply(v: Value) -> Result<(Appended, bool), StoreError> {
    let items = reply::array(v)?;
    match reply::int_at(&items, 0)? {
        0 => Err(StoreError::UnknownMailbox),
        1 => Ok((
            Appended {
                seq: reply::int_at(&items, 1)? as u64,
                duplicate: false,
            },
            reply::int_at(&items, 2)? == 1,
        )),
        2 => Ok((
            Appended {
                seq: reply::int_at(&items, 1)? as u64,
                duplicate: true,
            },
            false,
        )),
        _ => Err(StoreError::QuotaExceeded {
            envelopes: reply::int_at(&items, 1)? as u64,
            bytes: reply::int_at(&items, 2)? as u64,
        }),
    }
}

/// `ZADD sweep:{bN} LT expires mailbox`: the expiry index learns a
/// mailbox's earlier expiry.
fn index_cmd(mailbox: &MailboxId, expires_ms: u64) -> Cmd {
    let mut z = redis::cmd("ZADD");
    z.arg(keys::sweep_key(mailbox))
        .arg("LT")
        .arg(expires_ms)
        .arg(&mailbox[..]);
    z
}

/// A token record as stored, read.
fn token_record(v: Value) -> Result<Option<TokenRecord>, StoreError> {
    let Some(raw) = reply::bytes(v)? else {
        return Ok(None);
    };
    let (mailbox, revoked) =
        keys::parse_token(&raw).ok_or(StoreError::Corrupt("redis: token record"))?;
    Ok(Some(TokenRecord { mailbox, revoked }))
}

/// `FCALL name numkeys keys...`, arguments to follow.
fn fcall(name: &str, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(name).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    cmd
}

fn field(items: &[Option<Vec<u8>>], i: usize) -> Result<u64, StoreError> {
    let raw = items
        .get(i)
        .and_then(|v| v.as_deref())
        .ok_or(StoreError::Corrupt("redis: mailbox record incomplete"))?;
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map(|n| n.max(0) as u64)
        .ok_or(StoreError::Corrupt("redis: mailbox record field"))
}

impl MailboxStore for RedisStore {
    fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.writable()?;
        self.run(move |inner| async move {
            let k = MailboxKeys::of(&id);
            let mut cmd = fcall("tern_create", &[&k.record]);
            cmd.arg(&auth_key[..]).arg(now_ms);
            match reply::int(&inner.write("create mailbox", &k.record, cmd).await?) {
                Some(1) => Ok(()),
                Some(0) => Err(StoreError::MailboxExists),
                _ => Err(StoreError::Corrupt("redis: create reply")),
            }
        })
    }

    fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        let id = *id;
        self.run(move |inner| async move {
            let k = MailboxKeys::of(&id);
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&k.record).arg(&["a", "s", "n", "b", "k", "c"]);
            let items = reply::array(inner.query("read mailbox", cmd).await?)?
                .into_iter()
                .map(reply::bytes)
                .collect::<Result<Vec<_>, _>>()?;
            let Some(Some(auth)) = items.first() else {
                return Ok(None);
            };
            let auth_key = <[u8; 32]>::try_from(auth.as_slice())
                .map_err(|_| StoreError::Corrupt("redis: mailbox owner key"))?;
            Ok(Some(MailboxRecord {
                auth_key,
                next_seq: field(&items, 1)?,
                envelopes: field(&items, 2)?,
                bytes: field(&items, 3)?,
                tokens: field(&items, 4)?,
                created_ms: field(&items, 5)?,
            }))
        })
    }

    fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError> {
        self.writable()?;
        self.run(move |inner| async move {
            let k = MailboxKeys::of(&mailbox);
            let mut cmd = fcall("tern_add_token", &[&k.record, &k.tokens]);
            cmd.arg(&hash[..]).arg(max_tokens);
            match reply::int(&inner.write("add token", &k.record, cmd).await?) {
                Some(1) => {}
                Some(0) => return Err(StoreError::UnknownMailbox),
                Some(-1) => {
                    let held = inner.mailbox_counts(&k).await?;
                    return Err(StoreError::QuotaExceeded {
                        envelopes: held.0,
                        bytes: held.1,
                    });
                }
                _ => return Err(StoreError::Corrupt("redis: add token reply")),
            }
            let key = keys::token_key(&hash);
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(keys::token_value(&mailbox, false));
            inner.write("add token", &key, set).await?;
            Ok(())
        })
    }

    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let hash = *hash;
        self.run(move |inner| async move {
            let mut cmd = redis::cmd("GET");
            cmd.arg(keys::token_key(&hash));
            token_record(inner.query("read token", cmd).await?)
        })
    }

    fn tokens(&self, hashes: &[TokenHash]) -> Vec<Result<Option<TokenRecord>, StoreError>> {
        // A batch from one sender usually carries one token many times:
        // each distinct token is read once.
        let mut distinct: Vec<TokenHash> = Vec::new();
        let mut index: std::collections::HashMap<TokenHash, usize> =
            std::collections::HashMap::new();
        let at: Vec<usize> = hashes
            .iter()
            .map(|h| {
                *index.entry(*h).or_insert_with(|| {
                    distinct.push(*h);
                    distinct.len() - 1
                })
            })
            .collect();
        let cmds = distinct
            .iter()
            .map(|h| {
                let key = keys::token_key(h);
                let mut cmd = redis::cmd("GET");
                cmd.arg(&key);
                Keyed { key, cmd }
            })
            .collect::<Vec<_>>();
        let run = self.run(move |inner| async move {
            Ok(inner
                .batch("read token", cmds, false)
                .await
                .into_iter()
                .map(|r| r.and_then(token_record))
                .collect::<Vec<_>>())
        });
        match run {
            Ok(records) => at
                .into_iter()
                .map(|i| {
                    records
                        .get(i)
                        .cloned()
                        .unwrap_or(Err(StoreError::Corrupt("redis: no token reply")))
                })
                .collect(),
            Err(e) => vec![Err(e); hashes.len()],
        }
    }

    fn revoke_token(&self, hash: &TokenHash, mailbox: &MailboxId) -> Result<bool, StoreError> {
        self.writable()?;
        let (hash, mailbox) = (*hash, *mailbox);
        self.run(move |inner| async move {
            let key = keys::token_key(&hash);
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let Some(raw) = reply::bytes(inner.query("read token", get).await?)? else {
                return Ok(false);
            };
            match keys::parse_token(&raw) {
                Some((owner, _)) if owner == mailbox => {}
                Some(_) => return Ok(false),
                None => return Err(StoreError::Corrupt("redis: token record")),
            }
            let mut set = redis::cmd("SET");
            set.arg(&key).arg(keys::token_value(&mailbox, true));
            inner.write("revoke token", &key, set).await?;
            let k = MailboxKeys::of(&mailbox);
            let mut cmd = fcall("tern_drop_token", &[&k.record, &k.tokens]);
            cmd.arg(&hash[..]);
            inner.write("revoke token", &k.record, cmd).await?;
            Ok(true)
        })
    }

    fn append(
        &self,
        mailbox: &MailboxId,
        env: NewEnvelope<'_>,
        quota: Quota,
    ) -> Result<Appended, StoreError> {
        let mut out = self.append_many(&[(*mailbox, quota)], env)?;
        out.pop()
            .unwrap_or(Err(StoreError::Corrupt("redis: no append result")))
    }

    fn append_many(
        &self,
        targets: &[(MailboxId, Quota)],
        env: NewEnvelope<'_>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        self.writable()?;
        let packed = Arc::new(keys::pack(
            &env.message_id,
            env.now_ms,
            env.expires_ms,
            env.payload,
        ));
        let (len, mid, expires) = (env.payload.len(), env.message_id, env.expires_ms);
        let targets = targets.to_vec();
        self.run(move |inner| async move {
            // Every target at once, down the multiplexed connections.
            let tasks: Vec<_> = targets
                .into_iter()
                .map(|(mb, quota)| {
                    let op = Arc::clone(&inner).append(
                        mb,
                        mid,
                        Arc::clone(&packed),
                        len,
                        expires,
                        quota,
                    );
                    tokio::spawn(op)
                })
                .collect();
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(
                    t.await
                        .unwrap_or_else(|e| Err(StoreError::unavailable("append", e))),
                );
            }
            Ok(out)
        })
    }

    fn append_batch(&self, items: &[BatchAppend<'_>]) -> Vec<Result<Appended, StoreError>> {
        if let Err(e) = self.writable() {
            return vec![Err(e); items.len()];
        }
        // One `tern_append_many` call per mailbox, its items in order.
        let mut groups: Vec<(MailboxId, Vec<usize>)> = Vec::new();
        let mut group_of: std::collections::HashMap<MailboxId, usize> =
            std::collections::HashMap::new();
        for (at, i) in items.iter().enumerate() {
            let g = *group_of.entry(i.mailbox).or_insert_with(|| {
                groups.push((i.mailbox, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(at);
        }
        let mut cmds = Vec::with_capacity(groups.len());
        for (mailbox, members) in &groups {
            let k = MailboxKeys::of(mailbox);
            let mut cmd = fcall("tern_append_many", &k.envelope_keys());
            for &at in members {
                let i = &items[at];
                let packed = keys::pack(
                    &i.env.message_id,
                    i.env.now_ms,
                    i.env.expires_ms,
                    i.env.payload,
                );
                cmd.arg(&i.env.message_id[..])
                    .arg(packed)
                    .arg(i.env.expires_ms)
                    .arg(i.env.payload.len())
                    .arg(i.quota.max_envelopes)
                    .arg(i.quota.max_bytes);
            }
            cmds.push(Keyed { key: k.record, cmd });
        }
        let expiry: Vec<(MailboxId, u64)> = items
            .iter()
            .map(|i| (i.mailbox, i.env.expires_ms))
            .collect();
        let n = items.len();
        let run = self.run(move |inner| async move {
            // One reply per item, in item order, from its mailbox's call.
            let mut replies: Vec<Result<Value, StoreError>> = (0..n)
                .map(|_| Err(StoreError::Corrupt("redis: no append result")))
                .collect();
            let per_group = inner.batch("append", cmds, true).await;
            for ((_, members), r) in groups.into_iter().zip(per_group) {
                match r.and_then(reply::array) {
                    Ok(values) if values.len() == members.len() => {
                        for (at, v) in members.into_iter().zip(values) {
                            replies[at] = Ok(v);
                        }
                    }
                    Ok(_) => {
                        for at in members {
                            replies[at] = Err(StoreError::Corrupt("redis: append reply"));
                        }
                    }
                    Err(e) => {
                        for at in members {
                            replies[at] = Err(e.clone());
                        }
                    }
                }
            }
            let mut out: Vec<Result<Appended, StoreError>> = Vec::with_capacity(n);
            // Envelopes that became their mailbox's earliest to expire:
            // the expiry index learns them, in one more batch.
            let mut index = Vec::new();
            let mut index_of = Vec::new();
            for (i, (r, (mailbox, expires))) in replies.into_iter().zip(expiry).enumerate() {
                match r.and_then(append_reply) {
                    Ok((appended, earliest)) => {
                        if earliest && expires != u64::MAX {
                            index.push(Keyed {
                                key: keys::sweep_key(&mailbox),
                                cmd: index_cmd(&mailbox, expires),
                            });
                            index_of.push(i);
                        }
                        out.push(Ok(appended));
                    }
                    Err(e) => out.push(Err(e)),
                }
            }
            if !index.is_empty() {
                let indexed = inner.batch("index expiry", index, false).await;
                for (i, r) in index_of.into_iter().zip(indexed) {
                    if let (Err(e), Some(slot)) = (r, out.get_mut(i)) {
                        *slot = Err(e);
                    }
                }
            }
            Ok(out)
        });
        run.unwrap_or_else(|e| vec![Err(e); n])
    }

    fn fetch(
        &self,
        mailbox: &MailboxId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEnvelope>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mailbox = *mailbox;
        let count = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |inner| async move {
            let k = MailboxKeys::of(&mailbox);
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(&k.envelopes)
                .arg(format!("({after_seq}"))
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(count);
            reply::array(inner.query("fetch", cmd).await?)?
                .into_iter()
                .map(|m| {
                    let raw = reply::bytes(m)?.unwrap_or_default();
                    keys::unpack(&raw).ok_or(StoreError::Corrupt("redis: stored envelope"))
                })
                .collect()
        })
    }

    fn ack(&self, mailbox: &MailboxId, seqs: &[u64]) -> Result<u64, StoreError> {
        self.writable()?;
        if seqs.is_empty() {
            return Ok(0);
        }
        let (mailbox, seqs) = (*mailbox, seqs.to_vec());
        self.run(move |inner| async move {
            let k = MailboxKeys::of(&mailbox);
            let mut cmd = fcall("tern_ack", &k.envelope_keys());
            for s in &seqs {
                cmd.arg(*s);
            }
            // A lost ack only redelivers: no WAIT for it.
            let v = inner.query("ack", cmd).await?;
            reply::int(&v)
                .map(|n| n.max(0) as u64)
                .ok_or(StoreError::Corrupt("redis: ack reply"))
        })
    }

    fn sweep(&self, now_ms: u64) -> Result<Swept, StoreError> {
        self.writable()?;
        self.run(move |inner| async move {
            let mut envelopes = 0;
            for bucket in 0..keys::SWEEP_BUCKETS {
                envelopes += inner.sweep_bucket(bucket, now_ms).await?;
            }
            Ok(Swept { envelopes })
        })
    }

    fn durable(&self) -> Durable {
        // Each write returned only once fsynced on its primary (checked at
        // start) and, when asked, acknowledged by replicas.
        Box::pin(std::future::ready(Ok(())))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn fleet(&self) -> Option<Arc<dyn Fleet>> {
        Some(Arc::clone(&self.wakeups) as Arc<dyn Fleet>)
    }

    fn store_threads(&self) -> Option<usize> {
        // Store threads here only wait on Redis: enough of them that a
        // relay keeps many calls in flight on its multiplexed connections.
        Some(self.inner.options.store_threads.max(1))
    }
}

impl Inner {
    async fn mailbox_counts(&self, k: &MailboxKeys) -> Result<(u64, u64), StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&k.record).arg(&["n", "b"]);
        let items = reply::array(self.query("read mailbox", cmd).await?)?
            .into_iter()
            .map(reply::bytes)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((field(&items, 0)?, field(&items, 1)?))
    }
}
