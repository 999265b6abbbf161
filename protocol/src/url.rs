//! Relay URLs: `tern://HOST:PORT?fp=HEX`, where HEX is the SHA-256 of the
//! relay's TLS certificate. Clients pin that fingerprint instead of trusting a
//! certificate authority, so a self-hosted relay needs no CA.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Why a relay URL could not be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RelayUrlError {
    /// The URL does not start with `tern://`.
    #[error("relay URL must start with tern://")]
    Scheme,
    /// HOST:PORT is missing or not valid.
    #[error("relay URL has no valid host:port")]
    HostPort,
    /// The `fp=` parameter is missing or not 64 hex digits.
    #[error("relay URL needs fp=<64 hex digits of the certificate's SHA-256>")]
    Fingerprint,
}

/// Where a relay is and which certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayUrl {
    /// DNS name or IP address (IPv6 without brackets).
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// SHA-256 of the relay certificate (DER).
    pub fingerprint: [u8; 32],
}

impl RelayUrl {
    /// `host:port` as a socket address string (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
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
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, port) = v6.split_once("]:").ok_or(RelayUrlError::HostPort)?;
            (host, port)
        } else {
            authority.rsplit_once(':').ok_or(RelayUrlError::HostPort)?
        };
        if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
            return Err(RelayUrlError::HostPort);
        }
        let port: u16 = port.parse().map_err(|_| RelayUrlError::HostPort)?;
        let fp_hex = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fp="))
            .ok_or(RelayUrlError::Fingerprint)?;
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(fp_hex, &mut fingerprint).map_err(|_| RelayUrlError::Fingerprint)?;
        Ok(RelayUrl {
            host: host.to_string(),
            port,
            fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for host in ["127.0.0.1", "::1", "relay.example.org"] {
            let url = RelayUrl {
                host: host.into(),
                port: 4433,
                fingerprint: [0xab; 32],
            };
            let text = url.to_string();
            assert_eq!(text.parse::<RelayUrl>().unwrap(), url, "{text}");
        }
    }

    #[test]
    fn refuses_bad_urls() {
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
    }
}
