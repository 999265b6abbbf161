//! The relay's TLS identity: a key and self-signed certificate created on
//! first start in the data directory. Clients pin the certificate's SHA-256
//! (carried in the relay URL) instead of trusting a certificate authority.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

const CERT_FILE: &str = "cert.der";
const KEY_FILE: &str = "key.der";
const RESET_KEY_FILE: &str = "reset.key";

/// The secret behind QUIC stateless resets, kept across restarts: a relay
/// that restarts on the same address can then tell clients at once that
/// their old connections are gone, instead of leaving them to wait for an
/// idle timeout.
pub fn load_or_create_reset_key(dir: &Path) -> Result<[u8; 32], TlsError> {
    let path = dir.join(RESET_KEY_FILE);
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let key: [u8; 32] = rand::random();
    write_atomically(&path, &key, true).map_err(io)?;
    Ok(key)
}

/// Why the relay's TLS identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing the key or certificate failed.
    #[error("TLS identity file {path}: {source}")]
    Io {
        /// Which file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The certificate could not be generated.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate and its private key.
pub struct TlsIdentity {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TlsIdentity {
    /// Load the identity in `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read(&key_path).map_err(io(&key_path))?;
            return Ok(Self {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        // First start, or a first start that crashed half way: make a fresh
        // pair. Each file is written under a temporary name, synced and then
        // renamed, the certificate last, so a crash never leaves a pair that
        // does not match.
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let made = rcgen::generate_simple_self_signed(vec!["tern-relay".to_string()])?;
        let key = made.key_pair.serialize_der();
        write_atomically(&key_path, &key, true).map_err(io(&key_path))?;
        write_atomically(&cert_path, made.cert.der(), false).map_err(io(&cert_path))?;
        Ok(Self {
            cert: made.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key),
        })
    }

    /// SHA-256 of the certificate, as pinned by relay URLs.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.cert.as_ref()).into()
    }

    /// A rustls server configuration offering ALPN `tern/1` over TLS 1.3.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        config.alpn_protocols = vec![tern_protocol::ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = TlsIdentity::load_or_create(dir.path()).unwrap();
        let b = TlsIdentity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        a.server_config().unwrap();
    }

    #[test]
    fn a_half_written_identity_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"stale").unwrap();
        let id = TlsIdentity::load_or_create(dir.path()).unwrap();
        id.server_config().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
        }
    }
}
