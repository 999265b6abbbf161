//! Relay URLs: `tern://HOST:PORT?fp=HEX`, where HEX is the SHA-256 of the
//! relay's TLS certificate. Clients pin that fingerprint instead of trusting a
//! certificate authority, so a self-hosted relay needs no CA.
//!
//! A fleet of relays shares one TLS identity, so one fingerprint names them
//! all, and its URL lists several addresses:
//! `tern://a.example:4433,b.example:4433?fp=HEX`. Clients try them in random
//! order and move on when one fails (docs/protocol.md §1). A DNS name with
//! several records works the same way with one address in the URL.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Most addresses one relay URL may list: enough for any fleet's front
/// door, few enough that a hostile invite cannot make a client dial a crowd.
pub const MAX_RELAY_ADDRESSES: usize = 16;

/// Why a relay URL could not be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RelayUrlError {
    /// The URL does not start with `tern://`.
    #[error("relay URL must start with tern://")]
    Scheme,
    /// HOST:PORT is missing or not valid.
    #[error("relay URL has no valid host:port")]
    HostPort,
    /// More addresses than [`MAX_RELAY_ADDRESSES`].
    #[error("relay URL lists more than {MAX_RELAY_ADDRESSES} addresses")]
    TooManyAddresses,
    /// The `fp=` parameter is missing or not 64 hex digits.
    #[error("relay URL needs fp=<64 hex digits of the certificate's SHA-256>")]
    Fingerprint,
}

/// One address of a relay: a DNS name or IP address and a UDP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayAddr {
    /// DNS name or IP address (IPv6 without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
}

impl RelayAddr {
    /// `host:port` as a socket address string (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for RelayAddr {
    type Err = RelayUrlError;

    /// `HOST:PORT` or `[V6]:PORT`.
    fn from_str(authority: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            v6.split_once("]:").ok_or(RelayUrlError::HostPort)?
        } else {
            authority.rsplit_once(':').ok_or(RelayUrlError::HostPort)?
        };
        if host.is_empty() || host.contains(['/', ' ', '[', ']', ',', '?']) {
            return Err(RelayUrlError::HostPort);
        }
        let port: u16 = port.parse().map_err(|_| RelayUrlError::HostPort)?;
        Ok(RelayAddr {
            host: host.to_string(),
            port,
        })
    }
}

/// Where a relay (or a fleet of relays sharing one identity) is, and which
/// certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayUrl {
    /// One address or more, in the order written; never empty, at most
    /// [`MAX_RELAY_ADDRESSES`].
    addrs: Vec<RelayAddr>,
    /// SHA-256 of the relay certificate (DER).
    pub fingerprint: [u8; 32],
}

impl RelayUrl {
    /// A relay at one address.
    pub fn new(host: impl Into<String>, port: u16, fingerprint: [u8; 32]) -> Self {
        Self {
            addrs: vec![RelayAddr {
                host: host.into(),
                port,
            }],
            fingerprint,
        }
    }

    /// A fleet at several addresses sharing one certificate; `None` if
    /// `addrs` is empty or longer than [`MAX_RELAY_ADDRESSES`].
    pub fn fleet(addrs: Vec<RelayAddr>, fingerprint: [u8; 32]) -> Option<Self> {
        (!addrs.is_empty() && addrs.len() <= MAX_RELAY_ADDRESSES)
            .then_some(Self { addrs, fingerprint })
    }

    /// Every address, in the order the URL lists them.
    pub fn addrs(&self) -> &[RelayAddr] {
        &self.addrs
    }

    /// The first address (the only one for a single relay).
    pub fn first(&self) -> &RelayAddr {
        // `addrs` is never empty: every constructor checks it.
        &self.addrs[0]
    }

    /// Whether the URL names a fleet (more than one address).
    pub fn is_fleet(&self) -> bool {
        self.addrs.len() > 1
    }

    /// The addresses as written in the URL, comma-separated: how errors
    /// and logs name the relay.
    pub fn authority(&self) -> String {
        self.addrs
            .iter()
            .map(RelayAddr::authority)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tern://{}?fp={}",
            self.authority(),
            hex::encode(self.fingerprint)
        )
    }
}

impl FromStr for RelayUrl {
    type Err = RelayUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix("tern://")
            .ok_or(RelayUrlError::Scheme)?;
        let (authority, query) = rest.split_once('?').ok_or(RelayUrlError::Fingerprint)?;
        let authority = authority.trim_end_matches('/');
        let parts: Vec<&str> = authority.split(',').collect();
        if parts.len() > MAX_RELAY_ADDRESSES {
            return Err(RelayUrlError::TooManyAddresses);
        }
        let mut addrs = Vec::with_capacity(parts.len());
        for part in parts {
            let addr: RelayAddr = part.parse()?;
            // A repeated address adds nothing but a second try at it.
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let fp_hex = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fp="))
            .ok_or(RelayUrlError::Fingerprint)?;
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(fp_hex, &mut fingerprint).map_err(|_| RelayUrlError::Fingerprint)?;
        Ok(RelayUrl { addrs, fingerprint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for host in ["127.0.0.1", "::1", "relay.example.org"] {
            let url = RelayUrl::new(host, 4433, [0xab; 32]);
            let text = url.to_string();
            assert_eq!(text.parse::<RelayUrl>().unwrap(), url, "{text}");
            assert!(!url.is_fleet());
        }
    }

    #[test]
    fn fleet_urls_round_trip_in_order() {
        let text = format!(
            "tern://a.example:4433,[::1]:5000,10.0.0.2:4433?fp={}",
            "cd".repeat(32)
        );
        let url: RelayUrl = text.parse().unwrap();
        assert!(url.is_fleet());
        let hosts: Vec<&str> = url.addrs().iter().map(|a| a.host.as_str()).collect();
        assert_eq!(hosts, ["a.example", "::1", "10.0.0.2"]);
        assert_eq!(url.addrs()[1].port, 5000);
        assert_eq!(url.first().authority(), "a.example:4433");
        assert_eq!(url.to_string(), text);
    }

    #[test]
    fn repeated_addresses_collapse() {
        let url: RelayUrl = format!("tern://a:1,a:1,b:2?fp={}", "00".repeat(32))
            .parse()
            .unwrap();
        assert_eq!(url.addrs().len(), 2);
    }

    #[test]
    fn refuses_bad_urls() {
        let fp = "00".repeat(32);
        assert_eq!(
            "http://x:1?fp=00".parse::<RelayUrl>(),
            Err(RelayUrlError::Scheme)
        );
        assert_eq!(
            "tern://x?fp=00".parse::<RelayUrl>(),
            Err(RelayUrlError::HostPort)
        );
        assert_eq!(
            "tern://x:1?fp=00".parse::<RelayUrl>(),
            Err(RelayUrlError::Fingerprint)
        );
        assert_eq!(
            "tern://x:1".parse::<RelayUrl>(),
            Err(RelayUrlError::Fingerprint)
        );
        assert_eq!(
            "tern://x:99999?fp=00".parse::<RelayUrl>(),
            Err(RelayUrlError::HostPort)
        );
        for bad in ["tern://a:1,?fp=", "tern://a:1,,b:2?fp=", "tern://,a:1?fp="] {
            assert_eq!(
                format!("{bad}{fp}").parse::<RelayUrl>(),
                Err(RelayUrlError::HostPort),
                "{bad}"
            );
        }
        let crowd: Vec<String> = (1..=MAX_RELAY_ADDRESSES + 1)
            .map(|p| format!("h:{p}"))
            .collect();
        assert_eq!(
            format!("tern://{}?fp={fp}", crowd.join(",")).parse::<RelayUrl>(),
            Err(RelayUrlError::TooManyAddresses)
        );
        assert!(RelayUrl::fleet(Vec::new(), [0; 32]).is_none());
    }
}
