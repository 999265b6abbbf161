//! The relay's configuration: one struct, read from TOML, with every default
//! in code. `tern-relay.example.toml` at the repository root shows each field
//! with its default; command-line flags override the file.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use tern_protocol::limits;

/// Largest `max_frame_bytes` accepted (16 MiB): QUIC windows are sized from it.
pub const MAX_FRAME_CEILING: usize = 16 << 20;

/// Everything a relay can be told.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Directory holding the database, the TLS key and the certificate.
    pub data_dir: PathBuf,
    /// Host name or address put in the relay URL; defaults to the listen IP.
    pub public_host: Option<String>,
    /// Every address of the fleet this relay belongs to (`HOST:PORT`, at
    /// most 16), put in the relay URL instead of this relay's own address.
    /// Relays of a fleet share one TLS identity (docs/operations.md,
    /// "A fleet"), so one fingerprint names them all. Empty: a lone relay.
    pub fleet: Vec<String>,
    /// Limits on what peers may send and store.
    pub limits: Limits,
    /// Rate limits (0 turns one off).
    pub rates: RateConfig,
    /// Which engine holds mailboxes, tokens and envelopes.
    pub store: StoreKind,
    /// The Redis Cluster engine's settings (with `store = "redis"`).
    pub redis: RedisConfig,
    /// Presence and push wake-ups (docs/operations.md, "Presence and push").
    pub presence: crate::presence::PresenceConfig,
    /// Who is told what the relay sees per connection (tests and audits);
    /// none by default, and never part of a config file.
    #[serde(skip)]
    pub observer: crate::observer::Observer,
}

/// Which engine holds the relay's state.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// sled and an envelope log in the data directory: one relay alone.
    #[default]
    Embedded,
    /// A Redis Cluster shared by a fleet of relays (`[redis]`).
    Redis,
}

/// The Redis Cluster engine's settings (docs/operations.md, "A fleet").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Seed nodes: `redis://[:PASSWORD@]HOST:PORT`, `rediss://` for TLS;
    /// the rest of the cluster is discovered.
    pub nodes: Vec<String>,
    /// Multiplexed cluster connections the relay spreads its calls over.
    pub pool_size: usize,
    /// Threads the relay runs store calls on.
    pub store_threads: usize,
    /// Connecting to one node may take this long, in milliseconds.
    pub connect_timeout_ms: u64,
    /// One command may take this long, in milliseconds.
    pub response_timeout_ms: u64,
    /// Replicas that must hold a write before it is acknowledged (WAIT).
    pub replicas: u32,
    /// How long WAIT waits for them, in milliseconds.
    pub wait_timeout_ms: u64,
    /// Run even if a primary lacks `appendonly yes` / `appendfsync
    /// always` (acknowledged mail may then be lost when it crashes).
    pub allow_unsafe_durability: bool,
}

impl Default for RedisConfig {
    fn default() -> Self {
        let o = crate::store::RedisOptions::default();
        Self {
            nodes: Vec::new(),
            pool_size: o.pool_size,
            store_threads: o.store_threads,
            connect_timeout_ms: o.connect_timeout.as_millis() as u64,
            response_timeout_ms: o.response_timeout.as_millis() as u64,
            replicas: o.replicas,
            wait_timeout_ms: o.wait_timeout.as_millis() as u64,
            allow_unsafe_durability: o.allow_unsafe_durability,
        }
    }
}

impl RedisConfig {
    /// The engine's options.
    pub fn options(&self) -> crate::store::RedisOptions {
        use std::time::Duration;
        crate::store::RedisOptions {
            nodes: self
                .nodes
                .iter()
                .flat_map(|n| crate::store::redis::split_nodes(n))
                .collect(),
            pool_size: self.pool_size,
            store_threads: self.store_threads,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            response_timeout: Duration::from_millis(self.response_timeout_ms),
            replicas: self.replicas,
            wait_timeout: Duration::from_millis(self.wait_timeout_ms),
            allow_unsafe_durability: self.allow_unsafe_durability,
        }
    }
}

/// Rate limits. Each is a sustained rate and a burst; a rate of 0 turns
/// that limit off (for benchmarks and closed deployments).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Connection attempts per second the relay admits in all.
    pub handshakes_per_sec: u32,
    /// Burst of connection attempts admitted at once (a restart's reconnects).
    pub handshakes_burst: u32,
    /// Above this many attempts a second, clients must first prove their
    /// address with a QUIC Retry.
    pub retry_above_handshakes_per_sec: u32,
    /// Connection attempts per second from one IP address.
    pub connections_per_ip_per_sec: u32,
    /// Burst of connection attempts from one IP address.
    pub connections_per_ip_burst: u32,
    /// Registrations per minute from one IP address.
    pub registrations_per_ip_per_min: u32,
    /// Burst of registrations from one IP address.
    pub registrations_per_ip_burst: u32,
    /// Sends per second with one send token.
    pub sends_per_token_per_sec: u32,
    /// Burst of sends with one send token.
    pub sends_per_token_burst: u32,
    /// Frames and requests per second on one connection.
    pub frames_per_connection_per_sec: u32,
    /// Burst of frames and requests on one connection.
    pub frames_per_connection_burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            handshakes_per_sec: 2_000,
            handshakes_burst: 5_000,
            retry_above_handshakes_per_sec: 500,
            connections_per_ip_per_sec: 50,
            connections_per_ip_burst: 200,
            registrations_per_ip_per_min: 20,
            registrations_per_ip_burst: 50,
            sends_per_token_per_sec: 200,
            sends_per_token_burst: 2_000,
            frames_per_connection_per_sec: 10_000,
            frames_per_connection_burst: 20_000,
        }
    }
}

impl RateConfig {
    /// Every rate limit off.
    pub fn unlimited() -> Self {
        Self {
            handshakes_per_sec: 0,
            handshakes_burst: 0,
            retry_above_handshakes_per_sec: 0,
            connections_per_ip_per_sec: 0,
            connections_per_ip_burst: 0,
            registrations_per_ip_per_min: 0,
            registrations_per_ip_burst: 0,
            sends_per_token_per_sec: 0,
            sends_per_token_burst: 0,
            frames_per_connection_per_sec: 0,
            frames_per_connection_burst: 0,
        }
    }
}

/// Limits that protect the relay. Each refusal is a typed error to the peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame read from a peer, in bytes.
    pub max_frame_bytes: usize,
    /// Largest envelope payload, in bytes.
    pub max_envelope_bytes: usize,
    /// Most envelopes one mailbox holds before sends to it are refused.
    pub mailbox_max_envelopes: u64,
    /// Most payload bytes one mailbox holds before sends to it are refused.
    pub mailbox_max_bytes: u64,
    /// How long an unacknowledged envelope is kept, in seconds.
    pub envelope_ttl_secs: u64,
    /// How often the sweeper deletes expired envelopes, in seconds.
    pub sweep_interval_secs: u64,
    /// Most envelopes pushed to a device and not yet acknowledged.
    pub push_window: u32,
    /// Most bidirectional streams a connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Most bidirectional streams a connection may have open at once
    /// until it authenticates, when this rises to `max_concurrent_streams`
    /// (which also caps it).
    /// A send, registration or presence connection needs one or two; QUIC
    /// keeps state per stream a peer may open, so unauthenticated
    /// connections (one per watched relay per device) stay small.
    pub max_streams_before_auth: u32,
    /// A connection silent for this long is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// Most send tokens one mailbox may hold.
    pub max_tokens_per_mailbox: u64,
    /// Most targets in one multi-recipient send (`SendMany`). A full one
    /// must fit a frame: `max_frame_bytes` must hold `max_envelope_bytes`
    /// plus 54 bytes a target (the defaults leave ~11 KiB to spare).
    pub max_recipients_per_send: usize,
    /// Below this much free space on the data directory's disk, new sends,
    /// registrations and tokens are refused (STORAGE_UNAVAILABLE) while
    /// deliveries and acks go on; they resume by themselves when space
    /// returns. The reserve keeps the database from ever meeting a full disk.
    pub min_free_disk_bytes: u64,
    /// Most connections open at once from one IP address (0: no limit);
    /// each idle connection holds some memory, so this bounds what one
    /// address can make the relay hold.
    pub max_connections_per_ip: u32,
    /// IPv6 addresses are counted per network of this prefix length by
    /// every per-address limit (open connections, connection attempts,
    /// registrations), since one host is commonly handed a whole /64;
    /// IPv4 addresses are counted one by one. 128 counts each IPv6 address.
    pub ipv6_prefix_len: u8,
    /// Most subscriptions one mailbox holds at once (0: no limit). A new
    /// one beyond it replaces the oldest, which is told
    /// (`SUBSCRIPTION_REPLACED`) and finished: a user's devices share a
    /// mailbox, and one abuser cannot pile subscriptions on it.
    pub max_subscriptions_per_mailbox: u32,
    /// Most bytes of envelopes one subscription holds fetched and not yet
    /// taken by QUIC (queued, or handed to the stream's writer). Fetches
    /// are sized to what fits, counting each envelope at its largest; it
    /// must hold at least one frame of `max_frame_bytes`.
    pub stream_push_bytes: usize,
    /// Most bytes of envelopes all subscriptions together hold fetched and
    /// not yet taken by QUIC (0: no limit). When it is spent, subscribers
    /// wait for room before fetching more; one holding nothing may still
    /// fetch one envelope, so none is starved.
    pub push_budget_bytes: usize,
    /// Receive and send buffer asked of the kernel for the relay's UDP
    /// socket. Every connection shares this one socket; with the kernel's
    /// default (~208 KiB) bursts from many clients overflow it and QUIC
    /// slows down to recover the drops. Linux caps it at
    /// `net.core.rmem_max` / `wmem_max`; the relay logs what it got.
    pub udp_socket_buffer_bytes: usize,
    /// Most envelopes the relay holds in all mailboxes together; past it
    /// sends are refused with RELAY_FULL (0: no cap). Each held envelope
    /// costs about 27 bytes of memory (docs/operations.md).
    pub max_held_envelopes: u64,
    /// Most payload bytes the relay holds in all mailboxes together
    /// (0: no cap beyond `min_free_disk_bytes`).
    pub max_held_bytes: u64,
    /// Each envelope counts as at least this many bytes against
    /// `mailbox_max_bytes`, so tiny envelopes cannot hold more than
    /// `mailbox_max_bytes / min_envelope_charge` per mailbox.
    pub min_envelope_charge: u64,
    /// Most ciphertext bytes of history blobs one history account holds
    /// (HISTORY_QUOTA_EXCEEDED past it).
    pub history_account_max_bytes: u64,
    /// Most history blobs one history account holds.
    pub history_account_max_blobs: u64,
    /// Largest history blob, bytes (it must fit a frame).
    pub history_max_blob_bytes: usize,
    /// Most ciphertext bytes of history over every account (0: no cap
    /// beyond `min_free_disk_bytes`).
    pub history_max_total_bytes: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            data_dir: PathBuf::from("tern-relay-data"),
            public_host: None,
            fleet: Vec::new(),
            limits: Limits::default(),
            rates: RateConfig::default(),
            store: StoreKind::default(),
            redis: RedisConfig::default(),
            presence: crate::presence::PresenceConfig::default(),
            observer: Default::default(),
        }
    }
}

impl Limits {
    /// Streams a connection may have open before it authenticates.
    pub fn streams_before_auth(&self) -> u32 {
        self.max_streams_before_auth
            .min(self.max_concurrent_streams)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: limits::DEFAULT_MAX_FRAME,
            max_envelope_bytes: limits::DEFAULT_MAX_ENVELOPE,
            mailbox_max_envelopes: limits::DEFAULT_MAILBOX_MAX_ENVELOPES,
            mailbox_max_bytes: limits::DEFAULT_MAILBOX_MAX_BYTES,
            envelope_ttl_secs: limits::DEFAULT_ENVELOPE_TTL_SECS,
            sweep_interval_secs: 60,
            push_window: limits::DEFAULT_PUSH_WINDOW,
            max_concurrent_streams: 16,
            max_streams_before_auth: 4,
            idle_timeout_secs: 60,
            max_tokens_per_mailbox: 10_000,
            max_recipients_per_send: limits::DEFAULT_MAX_RECIPIENTS_PER_SEND,
            min_free_disk_bytes: 128 << 20,
            max_connections_per_ip: 1_000,
            ipv6_prefix_len: 64,
            max_subscriptions_per_mailbox: 4,
            stream_push_bytes: 1 << 20,
            push_budget_bytes: 256 << 20,
            udp_socket_buffer_bytes: 4 << 20,
            max_held_envelopes: 100_000_000,
            max_held_bytes: 0,
            min_envelope_charge: 256,
            history_account_max_bytes: 256 << 20,
            history_account_max_blobs: 100_000,
            history_max_blob_bytes: 64 * 1024,
            history_max_total_bytes: 64 << 30,
        }
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid relay TOML.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
    /// A value makes no sense.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl RelayConfig {
    /// Read a TOML config file; fields it omits keep their defaults.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: RelayConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Refuse a store engine that cannot be opened as configured (checked
    /// once the command line has had its say: `--redis` gives the nodes).
    pub fn validate_store(&self) -> Result<(), ConfigError> {
        if self.store == StoreKind::Redis && self.redis.nodes.is_empty() {
            return Err(ConfigError::Invalid(
                "store = \"redis\" needs redis.nodes (or --redis URL)".into(),
            ));
        }
        Ok(())
    }

    /// Refuse values that would make the relay unusable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_envelope_bytes + 1024 > l.max_frame_bytes {
            return Err(ConfigError::Invalid(
                "limits.max_frame_bytes must exceed limits.max_envelope_bytes by at least 1024"
                    .into(),
            ));
        }
        if l.history_max_blob_bytes == 0 || l.history_max_blob_bytes + 16 * 1024 > l.max_frame_bytes
        {
            return Err(ConfigError::Invalid(
                "limits.history_max_blob_bytes must be at least 1 and fit a frame with 16 KiB to spare"
                    .into(),
            ));
        }
        if l.max_recipients_per_send == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_recipients_per_send must be at least 1".into(),
            ));
        }
        if l.max_frame_bytes > MAX_FRAME_CEILING {
            return Err(ConfigError::Invalid(format!(
                "limits.max_frame_bytes may be at most {MAX_FRAME_CEILING}"
            )));
        }
        if l.push_window == 0 || l.push_window > limits::MAX_PUSH_WINDOW {
            return Err(ConfigError::Invalid(format!(
                "limits.push_window must be between 1 and {}",
                limits::MAX_PUSH_WINDOW
            )));
        }
        // QUIC reads an idle timeout of 0 as "never", which would let dead
        // peers hold their connection state forever.
        if l.idle_timeout_secs == 0 || l.idle_timeout_secs > 3600 {
            return Err(ConfigError::Invalid(
                "limits.idle_timeout_secs must be between 1 and 3600".into(),
            ));
        }
        if l.ipv6_prefix_len > 128 {
            return Err(ConfigError::Invalid(
                "limits.ipv6_prefix_len must be at most 128".into(),
            ));
        }
        if l.stream_push_bytes < l.max_frame_bytes
            || (l.push_budget_bytes != 0 && l.push_budget_bytes < l.stream_push_bytes)
        {
            return Err(ConfigError::Invalid(
                "limits.stream_push_bytes must hold a frame of max_frame_bytes, and push_budget_bytes (if not 0) one stream's".into(),
            ));
        }
        if l.max_streams_before_auth < 2 {
            return Err(ConfigError::Invalid(
                "limits.max_streams_before_auth must be at least 2".into(),
            ));
        }
        if l.max_concurrent_streams < 2 || l.envelope_ttl_secs == 0 || l.sweep_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_concurrent_streams must be at least 2, envelope_ttl_secs and sweep_interval_secs positive"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_defaults() {
        let text = include_str!("../../tern-relay.example.toml");
        let parsed: RelayConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed, RelayConfig::default());
    }

    #[test]
    fn partial_file_keeps_defaults_and_unknown_fields_are_refused() {
        let c: RelayConfig = toml::from_str("[limits]\nenvelope_ttl_secs = 5\n").unwrap();
        assert_eq!(c.limits.envelope_ttl_secs, 5);
        assert_eq!(c.listen, RelayConfig::default().listen);
        assert!(toml::from_str::<RelayConfig>("bogus = 1\n").is_err());
    }

    #[test]
    fn a_redis_section_reads_into_engine_options() {
        let c: RelayConfig = toml::from_str(
            "store = \"redis\"\n[redis]\nnodes = [\"rediss://:pw@a:1,b:2\"]\nreplicas = 1\nwait_timeout_ms = 500\n",
        )
        .unwrap();
        c.validate_store().unwrap();
        let o = c.redis.options();
        assert_eq!(o.nodes, ["rediss://:pw@a:1", "rediss://:pw@b:2"]);
        assert_eq!((o.replicas, o.wait_timeout.as_millis()), (1, 500));
        assert!(!o.allow_unsafe_durability);
    }

    #[test]
    fn nonsense_values_are_refused() {
        let mut c = RelayConfig::default();
        c.limits.idle_timeout_secs = 0;
        assert!(c.validate().is_err());
        let mut c = RelayConfig::default();
        c.limits.push_window = limits::MAX_PUSH_WINDOW + 1;
        assert!(c.validate().is_err());
        let mut c = RelayConfig::default();
        c.limits.max_frame_bytes = c.limits.max_envelope_bytes;
        assert!(c.validate().is_err());
        let mut c = RelayConfig::default();
        c.limits.ipv6_prefix_len = 129;
        assert!(c.validate().is_err());
        let mut c = RelayConfig::default();
        c.limits.stream_push_bytes = c.limits.max_frame_bytes - 1;
        assert!(c.validate().is_err());
        let c = RelayConfig {
            store: StoreKind::Redis,
            ..RelayConfig::default()
        };
        assert!(c.validate_store().is_err(), "redis without nodes");
        RelayConfig::default().validate().unwrap();
    }
}
