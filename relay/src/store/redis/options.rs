//! What an operator sets for the Redis Cluster engine: seed nodes (with
//! AUTH in the URL, `rediss://` for TLS), connections, timeouts, how many
//! replicas must acknowledge a write, and whether the engine may run on a
//! Redis that does not fsync every write.

use std::time::Duration;

/// Options of [`super::RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Seed nodes of the cluster, `redis://[:PASSWORD@]HOST:PORT` or
    /// `rediss://` for TLS; the rest of the cluster is discovered.
    pub nodes: Vec<String>,
    /// Multiplexed cluster connections the store spreads its calls over.
    pub pool_size: usize,
    /// How long connecting to one node may take.
    pub connect_timeout: Duration,
    /// How long one command may take before it is given up (and the send
    /// answered "storage unavailable", for the client to retry).
    pub response_timeout: Duration,
    /// Replicas that must hold a write before it is acknowledged (`WAIT`);
    /// 0: the primary's fsynced AOF alone.
    pub replicas: u32,
    /// How long `WAIT` waits for those replicas.
    pub wait_timeout: Duration,
    /// Threads the relay runs store calls on (each waits on one Redis
    /// round trip at a time).
    pub store_threads: usize,
    /// Run even if a primary does not have `appendonly yes` and
    /// `appendfsync always` (acknowledged mail may then be lost).
    pub allow_unsafe_durability: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            replicas: 0,
            wait_timeout: Duration::from_secs(2),
            store_threads: 32,
            allow_unsafe_durability: false,
        }
    }
}

impl RedisOptions {
    /// Options for the comma-separated seed list `urls`, the rest default.
    pub fn for_nodes(urls: &str) -> Self {
        Self {
            nodes: split_nodes(urls),
            ..Self::default()
        }
    }
}

/// `redis://a:1,redis://b:2` or `redis://a:1,b:2` (the scheme and
/// credentials of the first apply to the rest) as one URL per node.
pub fn split_nodes(urls: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut prefix = String::from("redis://");
    for part in urls.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((scheme, rest)) = part.split_once("://") {
            prefix = match rest.rsplit_once('@') {
                Some((auth, _)) => format!("{scheme}://{auth}@"),
                None => format!("{scheme}://"),
            };
            out.push(part.to_string());
        } else {
            out.push(format!("{prefix}{part}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_carry_scheme_and_auth_to_bare_addresses() {
        assert_eq!(
            split_nodes("rediss://:pw@a:1, b:2,redis://c:3,d:4"),
            [
                "rediss://:pw@a:1",
                "rediss://:pw@b:2",
                "redis://c:3",
                "redis://d:4"
            ]
        );
        assert_eq!(split_nodes("h:7000"), ["redis://h:7000"]);
        assert!(split_nodes(" , ").is_empty());
    }
}
