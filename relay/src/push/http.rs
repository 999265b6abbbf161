//! The one HTTP request the relay makes: an empty POST to a push endpoint,
//! over HTTP/1.1 (TLS for `https://`, checked against the system's roots),
//! with `Connection: close`. Only the status line of the answer is read:
//! any 2xx is success. Small on purpose, so the relay carries no HTTP
//! client stack for one request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of an answer read while looking for its status line.
const MAX_STATUS_LINE: usize = 1024;

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("not an http(s) URL: {0}")]
    BadUrl(String),
    /// The endpoint did not answer in time.
    #[error("the endpoint did not answer in time")]
    TimedOut,
    /// Connecting, TLS, writing or reading failed.
    #[error("endpoint unreachable: {0}")]
    Io(#[from] std::io::Error),
    /// The endpoint answered with something other than 2xx.
    #[error("the endpoint answered {0}")]
    Status(String),
}

/// Where a URL points.
pub(crate) struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, PostError> {
        let bad = || PostError::BadUrl(url.chars().take(64).collect());
        let u = url::Url::parse(url).map_err(|_| bad())?;
        let tls = match u.scheme() {
            "https" => true,
            "http" => false,
            _ => return Err(bad()),
        };
        let host = match u.host().ok_or_else(bad)? {
            url::Host::Domain(d) => d.to_string(),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => a.to_string(),
        };
        let port = u.port_or_known_default().ok_or_else(bad)?;
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        Arc::new(config.unwrap_or_else(|_| {
            // Only fails if ring offers no protocol version, which it does.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }))
    }))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    t: &Target,
) -> Result<(), PostError> {
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nTTL: 86400\r\nUrgency: high\r\nConnection: close\r\n\r\n",
        t.path,
        t.host_header()
    );
    s.write_all(request.as_bytes()).await?;
    s.flush().await?;
    let mut head = Vec::with_capacity(64);
    let mut byte = [0u8; 1];
    while head.len() < MAX_STATUS_LINE && !head.ends_with(b"\r\n") {
        if s.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status.len() == 3 && status.starts_with('2') {
        Ok(())
    } else {
        Err(PostError::Status(status.chars().take(3).collect()))
    }
}

/// POST an empty body to `url`, all of it within `timeout`.
pub async fn post_empty(url: &str, timeout: Duration) -> Result<(), PostError> {
    let t = Target::parse(url)?;
    let attempt = async {
        let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
        if t.tls {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|_| PostError::BadUrl(t.host.clone()))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await?;
            exchange(tls, &t).await
        } else {
            exchange(tcp, &t).await
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| PostError::TimedOut)?
}
