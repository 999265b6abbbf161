//! The relay as a running service: opens the store and TLS identity, binds
//! the QUIC endpoint, accepts connections, runs the expiry sweeper, and shuts
//! down gracefully (close connections, close the store).
//!
//! The server is generic over the [`MailboxStore`]: [`RunningRelay::start`]
//! opens the embedded engine in the data directory, and
//! [`RunningRelay::start_with_store`] serves any engine it is handed.

use crate::clock::Clock;
use crate::config::RelayConfig;
use crate::connection::{self, Shared};
use crate::core::RelayCore;
use crate::hub::Hub;
use crate::rate::{Admission, ConnectionSlots, Rates};
use crate::store::{EmbeddedStore, LogOptions, MailboxStore, StoreError, Swept};
use crate::stream::PushBudget;
use crate::tls::{TlsError, TlsIdentity};
use crate::workers::StoreWorkers;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tern_protocol::url::{RelayAddr, RelayUrl, MAX_RELAY_ADDRESSES};
use tern_protocol::WireError;
use tokio::sync::watch;
use tracing::{info, Instrument};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The history database could not be opened.
    #[error("cannot open the history database: {0}")]
    History(String),
    /// The TLS identity could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The threads that run store work could not be started.
    #[error("cannot start the store threads: {0}")]
    Threads(std::io::Error),
    /// The `fleet` addresses are not a valid relay URL's.
    #[error("fleet addresses: {0}")]
    Fleet(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// A relay serving on a socket, over a store `S` (by default the embedded
/// engine).
pub struct RunningRelay<S: MailboxStore = EmbeddedStore> {
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    /// The URL clients use, with the certificate fingerprint.
    pub url: RelayUrl,
    shared: Arc<Shared<S, Arc<dyn Clock>>>,
    /// Kept to close the store at shutdown, after the last connection.
    store: Arc<S>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The relay URL for the TLS identity in `data_dir`, without starting:
/// `host:port`, or the `fleet` addresses when there are any.
pub fn url_for(
    data_dir: &std::path::Path,
    host: &str,
    port: u16,
    fleet: &[String],
) -> Result<RelayUrl, StartError> {
    let id = TlsIdentity::load_or_create(data_dir)?;
    relay_url(host, port, fleet, id.fingerprint())
}

/// The URL clients are given: this relay's own address, or the fleet's.
fn relay_url(
    host: &str,
    port: u16,
    fleet: &[String],
    fingerprint: [u8; 32],
) -> Result<RelayUrl, StartError> {
    if fleet.is_empty() {
        return Ok(RelayUrl::new(host, port, fingerprint));
    }
    let addrs = fleet
        .iter()
        .map(|a| {
            a.parse::<RelayAddr>()
                .map_err(|e| StartError::Fleet(format!("{a:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    RelayUrl::fleet(addrs, fingerprint).ok_or_else(|| {
        StartError::Fleet(format!(
            "{} addresses (at most {MAX_RELAY_ADDRESSES})",
            fleet.len()
        ))
    })
}

fn transport(config: &RelayConfig) -> quinn::TransportConfig {
    let l = &config.limits;
    let mut t = quinn::TransportConfig::default();
    // Raised to max_concurrent_streams when the connection authenticates
    // (connection.rs): quinn keeps state for every stream a peer may open.
    t.max_concurrent_bidi_streams(l.streams_before_auth().into());
    t.max_concurrent_uni_streams(0u32.into());
    // Datagrams carry only heartbeats, one byte each: buffer a few, never
    // the megabyte quinn would hold by default for a peer to fill.
    t.datagram_receive_buffer_size(Some(tern_protocol::MAX_DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(0);
    let idle = Duration::from_secs(l.idle_timeout_secs);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    // Bound what one slow or hostile peer can make the relay buffer.
    let frame = l.max_frame_bytes as u32;
    t.stream_receive_window(quinn::VarInt::from_u32(frame.saturating_mul(2)));
    t.receive_window(quinn::VarInt::from_u32(frame.saturating_mul(8)));
    t.send_window(u64::from(frame) * 8);
    t
}

fn create_data_dir(config: &RelayConfig) -> Result<(), StartError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: dir.clone(),
        source,
    })
}

impl RunningRelay {
    /// Open the data directory, with the embedded store in `db/` under it,
    /// and start serving on `config.listen`.
    pub async fn start(config: RelayConfig, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        config.validate()?;
        create_data_dir(&config)?;
        let cap = |n: u64| if n == 0 { u64::MAX } else { n };
        let options = LogOptions {
            max_held_envelopes: cap(config.limits.max_held_envelopes),
            max_held_bytes: cap(config.limits.max_held_bytes),
            ..LogOptions::default()
        };
        let store = Arc::new(EmbeddedStore::open_with(
            &config.data_dir.join("db"),
            options,
        )?);
        Self::start_with_store(config, clock, store).await
    }
}

impl<S: MailboxStore> RunningRelay<S> {
    /// Start serving on `config.listen` over `store`. The data directory
    /// still holds the TLS identity; the relay closes the store when it
    /// shuts down.
    pub async fn start_with_store(
        config: RelayConfig,
        clock: Arc<dyn Clock>,
        store: Arc<S>,
    ) -> Result<Self, StartError> {
        config.validate()?;
        create_data_dir(&config)?;
        let dir = &config.data_dir;
        let identity = TlsIdentity::load_or_create(dir)?;
        let rates = Rates::with_clock(&config.rates, Arc::clone(&clock))
            .keyed_on_prefix(config.limits.ipv6_prefix_len);
        let workers = match store.store_threads() {
            Some(n) => StoreWorkers::new(n),
            None => StoreWorkers::per_core(),
        }
        .map_err(StartError::Threads)?;
        let hub = Arc::new(Hub::with_max_per_mailbox(
            config.limits.max_subscriptions_per_mailbox as usize,
        ));
        if let Some(fleet) = store.fleet() {
            hub.attach_fleet(fleet);
        }
        let history_store = crate::history::SledHistory::open(&dir.join("history"))
            .map_err(|e| StartError::History(e.to_string()))?;
        let history = crate::history::HistoryService::new(
            Arc::new(history_store),
            Arc::clone(&clock),
            crate::history::HistoryLimits::from_limits(&config.limits),
        );
        let presence = Arc::new(crate::presence::Presence::new(
            Arc::clone(&clock),
            config.presence.clone(),
        ));
        let (push, push_queue) =
            crate::push::Push::new(config.presence.push.clone(), Arc::clone(&clock));
        tokio::spawn(push.clone().run(push_queue));
        {
            let push = push.clone();
            hub.on_idle_store(move |mailbox| push.wake(mailbox));
        }
        tokio::spawn(crate::presence::run_ticks(Arc::downgrade(&presence)));
        let core = RelayCore::new(Arc::clone(&store), clock, config.limits.clone(), rates);
        let shared = Arc::new(Shared {
            core,
            hub,
            slots: ConnectionSlots::new(
                config.limits.max_connections_per_ip,
                config.limits.ipv6_prefix_len,
            ),
            push_budget: PushBudget::new(config.limits.push_budget_bytes),
            workers,
            observer: config.observer.clone(),
            history,
            presence,
            push,
        });

        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport(&config)));
        let reset_key = crate::tls::load_or_create_reset_key(dir)?;
        let endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset_key,
        )));
        let bind = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind)?;
        size_socket_buffers(&socket, config.limits.udp_socket_buffer_bytes);
        let runtime = quinn::default_runtime()
            .ok_or_else(|| bind(std::io::Error::other("no async runtime for the endpoint")))?;
        let endpoint =
            quinn::Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind)?;
        let local_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let host = config
            .public_host
            .clone()
            .unwrap_or_else(|| local_addr.ip().to_string());
        let url = relay_url(
            &host,
            local_addr.port(),
            &config.fleet,
            identity.fingerprint(),
        )?;

        let (stop, stop_rx) = watch::channel(false);
        let disk = tokio::spawn(disk_watch(
            Arc::clone(&shared),
            dir.clone(),
            config.limits.min_free_disk_bytes,
            stop_rx.clone(),
        ));
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::clone(&shared),
            stop_rx.clone(),
        ));
        let sweeper = tokio::spawn(sweep_loop(
            Arc::clone(&shared),
            Duration::from_secs(config.limits.sweep_interval_secs.max(1)),
            stop_rx,
        ));
        info!(%local_addr, "relay listening");
        Ok(Self {
            local_addr,
            url,
            shared,
            store,
            endpoint,
            stop,
            tasks: vec![accept, sweeper, disk],
        })
    }

    /// Delete expired envelopes now rather than at the next sweep.
    pub async fn sweep_now(&self) -> Result<Swept, WireError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.core.sweep())
            .await
            .unwrap_or_else(|_| {
                Err(WireError::new(
                    tern_protocol::ErrorCode::Internal,
                    "sweep failed",
                ))
            })
    }

    /// Delete expired history blobs now rather than at the next sweep.
    pub async fn sweep_history_now(&self) -> Result<u64, WireError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.history.sweep())
            .await
            .unwrap_or_else(|_| {
                Err(WireError::new(
                    tern_protocol::ErrorCode::Internal,
                    "history sweep failed",
                ))
            })
    }

    /// Number of devices subscribed right now.
    pub fn subscribers(&self) -> usize {
        self.shared.hub.subscribers()
    }

    /// Stop accepting, close connections, and close the store (its final
    /// flush runs off the async workers).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.endpoint.close(0u32.into(), b"relay shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let (store, shared) = (self.store, self.shared);
        let closed = tokio::task::spawn_blocking(move || {
            // Queued store work finishes before the store closes.
            shared.workers.stop();
            store.close()
        });
        match closed.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("final flush failed: {e}"),
            Err(e) => tracing::error!("closing the store failed: {e}"),
        }
        info!("relay stopped");
    }
}

/// Ask for larger UDP buffers: every connection shares this one socket.
/// Getting less than asked is not fatal (the kernel caps it), only slower.
fn size_socket_buffers(socket: &std::net::UdpSocket, want: usize) {
    if want == 0 {
        return;
    }
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(want);
    let _ = sock.set_send_buffer_size(want);
    let got = (sock.recv_buffer_size(), sock.send_buffer_size());
    match got {
        // Linux reports twice what it grants (bookkeeping included).
        (Ok(r), Ok(s)) if r >= want && s >= want => {}
        (r, s) => tracing::warn!(
            want,
            recv = ?r.ok(),
            send = ?s.ok(),
            "UDP socket buffers smaller than asked; raise net.core.rmem_max and wmem_max"
        ),
    }
}

async fn accept_loop<S: MailboxStore>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<S, Arc<dyn Clock>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = stop.changed() => return,
        };
        let remote = incoming.remote_address();
        match shared
            .core
            .rates()
            .admit(remote.ip(), incoming.remote_address_validated())
        {
            Admission::Accept => {}
            Admission::Retry if incoming.may_retry() => {
                if let Err(e) = incoming.retry() {
                    tracing::debug!(%remote, "retry failed: {e}");
                }
                continue;
            }
            Admission::Retry | Admission::Refuse => {
                tracing::debug!(%remote, "connection attempt refused by rate limit");
                incoming.refuse();
                continue;
            }
        }
        let shared = Arc::clone(&shared);
        // The pending connection and its handshake live on the heap: a
        // task's memory is sized for its largest state and held for the
        // connection's life, and serving is smaller than handshaking.
        let incoming = Box::new(incoming);
        tokio::spawn(async move {
            let slots = Arc::clone(&shared);
            let Some(_slot) = slots.slots.acquire(remote.ip()) else {
                tracing::debug!(%remote, "too many connections from this address");
                incoming.refuse();
                return;
            };
            match Box::pin(std::future::IntoFuture::into_future(*incoming)).await {
                Ok(conn) => {
                    // The peer's address only at debug level: an
                    // operator's info logs must not pair addresses with
                    // what each connection did.
                    let span = tracing::info_span!("conn", id = conn.stable_id());
                    tracing::debug!(parent: &span, %remote, "connection");
                    connection::serve(shared, conn).instrument(span).await
                }
                Err(e) => tracing::debug!(%remote, "handshake failed: {e}"),
            }
        });
    }
}

/// Watch the free space of the data directory's disk once a second and
/// tell the core when it drops below the reserve, and when it returns.
async fn disk_watch<S: MailboxStore>(
    shared: Arc<Shared<S, Arc<dyn Clock>>>,
    dir: std::path::PathBuf,
    min_free: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut low = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let d = dir.clone();
        let free = match tokio::task::spawn_blocking(move || fs2::available_space(&d)).await {
            Ok(Ok(free)) => free,
            Ok(Err(e)) => {
                tracing::warn!("cannot read free disk space: {e}");
                continue;
            }
            Err(_) => continue,
        };
        let now_low = free < min_free;
        if now_low != low {
            if now_low {
                tracing::warn!(free, min_free, "disk nearly full: refusing new sends");
            } else {
                info!(free, "disk space is back: accepting sends");
            }
            low = now_low;
            shared.core.set_disk_low(low);
        }
    }
}

async fn sweep_loop<S: MailboxStore>(
    shared: Arc<Shared<S, Arc<dyn Clock>>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        shared.core.rates().forget_idle();
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || s.core.sweep()).await {
            Ok(Ok(swept)) if swept.envelopes > 0 => {
                info!(envelopes = swept.envelopes, "swept expired")
            }
            Ok(Err(e)) => tracing::warn!("sweep failed: {e}"),
            _ => {}
        }
        let s = Arc::clone(&shared);
        match tokio::task::spawn_blocking(move || s.history.sweep()).await {
            Ok(Ok(blobs)) if blobs > 0 => info!(blobs, "swept expired history"),
            Ok(Err(e)) => tracing::warn!("history sweep failed: {e}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{MemoryStore, NewEnvelope, Quota};

    /// The server runs over whatever engine it is handed, sweeps through it,
    /// and closes it through the trait when it stops.
    #[tokio::test]
    async fn serves_any_engine_and_closes_it_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let config = RelayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..RelayConfig::default()
        };
        let clock = ManualClock::new(1_000);
        let store = Arc::new(MemoryStore::new());
        let relay = RunningRelay::start_with_store(config, Arc::new(clock.clone()), store.clone())
            .await
            .unwrap();
        assert_ne!(relay.local_addr.port(), 0);
        assert!(!dir.path().join("db").exists(), "no embedded store opened");

        let mb = [1; 16];
        store.create_mailbox(mb, [2; 32], 1_000).unwrap();
        let quota = Quota {
            max_envelopes: 10,
            max_bytes: 1_000,
        };
        let env = NewEnvelope {
            message_id: [3; 16],
            payload: b"expiring",
            now_ms: 1_000,
            expires_ms: 2_000,
        };
        store.append(&mb, env, quota).unwrap();
        clock.advance(1_000);
        assert_eq!(relay.sweep_now().await.unwrap().envelopes, 1);

        relay.shutdown().await;
        assert_eq!(
            store.append(&mb, env, quota),
            Err(StoreError::Unavailable("the store is closed".into()))
        );
    }
}
