//! TLS for direct paths: each running client makes a throwaway self-signed
//! certificate (rcgen, P-256) for its relay socket's server side, and both
//! sides accept any certificate at the TLS layer. Who is on the other end
//! is proven one layer up, bound to this very TLS session: each side signs
//! the session's keying material with its device's Ed25519 signing key
//! ([`hello_bytes`]) and the other checks that signature against the key
//! it knows for that contact (docs/decisions.md, "Direct paths: who is on
//! the other end"). A man in the middle has two TLS sessions with two
//! different exporters, so neither side's signature is any use to it.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// The ALPN of direct paths; relay connections (`tern/1`) are never
/// accepted on the client's socket.
pub const DIRECT_ALPN: &[u8] = b"tern-direct/1";
/// The TLS exporter label the hello signatures cover.
pub const DIRECT_EXPORTER_LABEL: &[u8] = b"EXPORTER-tern-direct/1";
/// The prefix of what a hello signs.
const HELLO_CONTEXT: &[u8] = b"tern/1 direct";
/// A peer that says nothing for this long is gone; keep-alives hold a quiet
/// path open well inside it.
pub const PATH_IDLE: Duration = Duration::from_secs(6);
/// Keep-alive interval on a direct path.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Message streams a peer may have open at once (it uses one or two).
const MAX_STREAMS: u32 = 16;

/// Why the direct side of the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DirectTlsError {
    /// The certificate could not be made.
    #[error("cannot make the direct-path certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls or quinn refused the configuration.
    #[error("direct-path TLS configuration: {0}")]
    Config(String),
}

/// What a hello signs: the context, the session's exporter and the
/// signer's Curve25519 identity key.
pub fn hello_bytes(exporter: &[u8; 32], identity_key: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELLO_CONTEXT.len() + 64);
    m.extend_from_slice(HELLO_CONTEXT);
    m.extend_from_slice(exporter);
    m.extend_from_slice(identity_key);
    m
}

/// The keying material of `conn` that hellos sign.
pub fn exporter(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, DIRECT_EXPORTER_LABEL, b"")
        .ok()?;
    Some(out)
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(PATH_IDLE).ok());
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// The server side of the relay socket: a fresh self-signed certificate,
/// ALPN `tern-direct/1` only.
pub fn server_config() -> Result<quinn::ServerConfig, DirectTlsError> {
    let made = rcgen::generate_simple_self_signed(vec!["tern-direct".to_string()])?;
    let key = PrivatePkcs8KeyDer::from(made.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = |e: rustls::Error| DirectTlsError::Config(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cfg)?
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], PrivateKeyDer::Pkcs8(key))
        .map_err(cfg)?;
    tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| DirectTlsError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport());
    Ok(server)
}

/// The client side of a direct dial: any certificate (the hello proves
/// who it is), ALPN `tern-direct/1`.
pub fn client_config() -> Result<quinn::ClientConfig, DirectTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate {
        provider: Arc::clone(&provider),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DirectTlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| DirectTlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// Accepts any certificate, still checking the handshake signature made
/// with it (so the exporter is bound to whoever holds that key): identity
/// comes from the hello.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
