//! Opening a path: both sides dial each other's candidates at once from
//! the socket they use for their home relay, with retries for a few
//! seconds ([`dial`]), so each side's NAT sees traffic out to the other
//! before the other's packets arrive (hole punching); the same socket
//! accepts the other side's dials ([`accept_loop`]). Whichever connection
//! completes, each side proves its identity over it ([`hello`]) and the
//! connection becomes the contact's path ([`super::Paths::install`]).

use super::link::{Path, MAX_FRAME};
use super::tls::{self, exporter, hello_bytes};
use super::Paths;
use crate::store::ContactId;
use std::net::SocketAddr;
use std::time::Duration;
use tern_protocol::frame::decode_message;
use tern_protocol::io::{read_frame, write_frame};
use tern_protocol::pb;
use tokio::time::Instant;
use tracing::debug;

/// How long both sides keep dialing.
pub(crate) const PUNCH_FOR: Duration = Duration::from_secs(8);
/// A new attempt per candidate this often while dialing.
const ATTEMPT_EVERY: Duration = Duration::from_millis(300);
/// How long one attempt may take.
const ATTEMPT_FOR: Duration = Duration::from_secs(3);
/// How long the hellos may take once connected.
const HELLO_FOR: Duration = Duration::from_secs(5);
/// How long a path that lost to another stays open for what is in flight.
pub(crate) const REPLACED_GRACE: Duration = Duration::from_secs(3);

/// Why a connection did not become a path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("connection: {0}")]
    Connection(String),
    #[error("malformed hello")]
    Malformed,
    #[error("not a contact we accept a path from")]
    NotAllowed,
    #[error("hello signature does not verify")]
    BadSignature,
}

fn conn_err(e: impl std::fmt::Display) -> HelloError {
    HelloError::Connection(e.to_string())
}

/// Accept dials on `endpoint` until it closes; each that proves a contact
/// we accept becomes a path.
pub(crate) async fn accept_loop(paths: Paths, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let paths = paths.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let accepted = async {
                let conn = incoming.await.map_err(conn_err)?;
                let (mut send, mut recv) = conn.accept_bi().await.map_err(conn_err)?;
                let ex = exporter(&conn).ok_or(HelloError::Malformed)?;
                let theirs = read_hello(&mut recv).await?;
                let contact = check_hello(&paths, &theirs, &ex, None)?;
                write_frame(&mut send, &my_hello(&paths, &ex))
                    .await
                    .map_err(conn_err)?;
                let _ = send.finish();
                Ok::<_, HelloError>((conn, contact, ex))
            };
            match tokio::time::timeout(HELLO_FOR, accepted).await {
                Ok(Ok((conn, contact, ex))) => {
                    let rank = rank(&paths, &contact, false, ex);
                    paths.install(Path::new(conn, contact, rank));
                }
                Ok(Err(e)) => debug!("refused a direct connection from {remote}: {e}"),
                Err(_) => debug!("a direct connection from {remote} said nothing"),
            }
        });
    }
}

/// Dial `contact` at every candidate, a new attempt every
/// [`ATTEMPT_EVERY`], until a path is open or [`PUNCH_FOR`] has passed.
pub(crate) async fn dial(
    paths: Paths,
    endpoint: quinn::Endpoint,
    contact: ContactId,
    signing_key: [u8; 32],
    candidates: Vec<SocketAddr>,
) {
    let config = match tls::client_config() {
        Ok(c) => c,
        Err(e) => {
            debug!("no direct dialing: {e}");
            return;
        }
    };
    let until = Instant::now() + PUNCH_FOR;
    let mut attempts = tokio::task::JoinSet::new();
    while Instant::now() < until && paths.get(&contact).is_none() {
        for &addr in &candidates {
            let Ok(connecting) = endpoint.connect_with(config.clone(), addr, "tern-direct") else {
                continue;
            };
            let paths = paths.clone();
            attempts.spawn(async move {
                let r = tokio::time::timeout(
                    ATTEMPT_FOR,
                    connect_as(&paths, connecting, contact, signing_key),
                )
                .await;
                match r {
                    Ok(Ok((conn, ex))) => {
                        let rank = rank(&paths, &contact, true, ex);
                        paths.install(Path::new(conn, contact, rank));
                    }
                    Ok(Err(e)) => debug!("direct dial to {addr}: {e}"),
                    Err(_) => {}
                }
            });
        }
        // Wait for the next round, or for an attempt that made a path.
        let next = tokio::time::sleep(ATTEMPT_EVERY);
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                Some(_) = attempts.join_next() => {
                    if paths.get(&contact).is_some() {
                        break;
                    }
                }
            }
        }
    }
    // Attempts still running finish on their own; one that completes
    // anyway is settled by `install`'s rule.
    attempts.detach_all();
}

async fn connect_as(
    paths: &Paths,
    connecting: quinn::Connecting,
    contact: ContactId,
    signing_key: [u8; 32],
) -> Result<(quinn::Connection, [u8; 32]), HelloError> {
    let conn = connecting.await.map_err(conn_err)?;
    let ex = exporter(&conn).ok_or(HelloError::Malformed)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(conn_err)?;
    write_frame(&mut send, &my_hello(paths, &ex))
        .await
        .map_err(conn_err)?;
    let _ = send.finish();
    let theirs = read_hello(&mut recv).await?;
    check_hello(paths, &theirs, &ex, Some((contact, signing_key)))?;
    Ok((conn, ex))
}

/// The order both sides agree on between two paths (lower kept): paths
/// dialed by the side with the lower identity key first, then by the
/// session's exporter.
fn rank(paths: &Paths, contact: &ContactId, we_dialed: bool, ex: [u8; 32]) -> (u8, [u8; 32]) {
    let we_are_lower = paths.inner.me < *contact;
    let dialed_by_lower = we_dialed == we_are_lower;
    (u8::from(!dialed_by_lower), ex)
}

fn my_hello(paths: &Paths, ex: &[u8; 32]) -> pb::DirectHello {
    let me = paths.inner.me;
    pb::DirectHello {
        identity_key: me.to_vec().into(),
        signature: paths
            .inner
            .signer
            .sign(&hello_bytes(ex, &me))
            .to_vec()
            .into(),
    }
}

async fn read_hello(recv: &mut quinn::RecvStream) -> Result<pb::DirectHello, HelloError> {
    let body = read_frame(recv, MAX_FRAME)
        .await
        .map_err(conn_err)?
        .ok_or(HelloError::Malformed)?;
    decode_message::<pb::DirectHello>(&body).map_err(|_| HelloError::Malformed)
}

/// The contact a hello proves, if it is `expected` (dialing) or a contact
/// allowed to open a path now (accepting), and its signature over this
/// session verifies with that contact's signing key.
fn check_hello(
    paths: &Paths,
    hello: &pb::DirectHello,
    ex: &[u8; 32],
    expected: Option<(ContactId, [u8; 32])>,
) -> Result<ContactId, HelloError> {
    let who: ContactId = hello.identity_key[..]
        .try_into()
        .map_err(|_| HelloError::Malformed)?;
    let key = match expected {
        Some((contact, key)) if contact == who => key,
        Some(_) => return Err(HelloError::NotAllowed),
        None => paths.allowed_key(&who).ok_or(HelloError::NotAllowed)?,
    };
    tern_crypto::verify_signature(&key, &hello_bytes(ex, &who), &hello.signature)
        .map_err(|_| HelloError::BadSignature)?;
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::Inbound;
    use std::sync::Arc;
    use tern_crypto::DeviceAccount;
    use tokio::sync::mpsc;

    struct Side {
        account: Arc<DeviceAccount>,
        paths: Paths,
        inbound: mpsc::Receiver<Inbound>,
        addr: SocketAddr,
    }

    fn side() -> Side {
        let account = Arc::new(DeviceAccount::new());
        let (paths, inbound) = Paths::new(Arc::clone(&account));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        paths.attach(endpoint).unwrap();
        Side {
            account,
            paths,
            inbound,
            addr,
        }
    }

    async fn dial_once(
        from: &Side,
        to: &Side,
        claimed_key: [u8; 32],
    ) -> Result<(quinn::Connection, [u8; 32]), HelloError> {
        let endpoint = from.paths.endpoint().unwrap();
        let connecting = endpoint
            .connect_with(tls::client_config().unwrap(), to.addr, "tern-direct")
            .unwrap();
        let who = to.account.identity_key();
        tokio::time::timeout(
            Duration::from_secs(10),
            connect_as(&from.paths, connecting, who, claimed_key),
        )
        .await
        .expect("the dial ended")
    }

    async fn opened(side: &mut Side) -> ContactId {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), side.inbound.recv()).await {
                Ok(Some(Inbound::Opened { contact, .. })) => return contact,
                Ok(Some(_)) => {}
                other => panic!("no path opened: {}", other.is_ok()),
            }
        }
    }

    #[tokio::test]
    async fn only_the_contact_with_its_signing_key_gets_a_path() {
        let mut alice = side();
        let mut bob = side();
        let mallory = side();

        // Bob does not expect alice yet: refused.
        assert!(dial_once(&alice, &bob, bob.account.signing_key())
            .await
            .is_err());

        // Expected, but the dialer checks the key it knows for bob: a
        // wrong one is refused on the dialer's side.
        bob.paths
            .allow(alice.account.identity_key(), alice.account.signing_key());
        let wrong = DeviceAccount::new().signing_key();
        assert!(matches!(
            dial_once(&alice, &bob, wrong).await,
            Err(HelloError::BadSignature)
        ));

        // Mallory, not allowed by bob, is refused; so is mallory claiming
        // to be alice (bob checks alice's signing key).
        assert!(dial_once(&mallory, &bob, bob.account.signing_key())
            .await
            .is_err());

        // Alice, expected, with the right keys both ways: a path on both
        // sides.
        let (conn, ex) = dial_once(&alice, &bob, bob.account.signing_key())
            .await
            .unwrap();
        let rank = rank(&alice.paths, &bob.account.identity_key(), true, ex);
        alice
            .paths
            .install(Path::new(conn, bob.account.identity_key(), rank));
        assert_eq!(opened(&mut bob).await, alice.account.identity_key());
        assert_eq!(opened(&mut alice).await, bob.account.identity_key());
        assert!(alice.paths.info(&bob.account.identity_key()).direct);
    }

    #[tokio::test]
    async fn a_relay_alpn_connection_is_not_accepted() {
        let bob = side();
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        // A TLS 1.3 client offering only the relay's ALPN.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tlsc = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck))
            .with_no_client_auth();
        tlsc.alpn_protocols = vec![tern_protocol::ALPN.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tlsc).unwrap(),
        ));
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            client.connect_with(config, bob.addr, "tern-relay").unwrap(),
        )
        .await
        .expect("the handshake ended");
        assert!(
            got.is_err(),
            "a tern/1 handshake completed on the direct socket"
        );
    }

    /// Accepts any server certificate (only the ALPN is under test).
    #[derive(Debug)]
    struct NoCheck;

    impl rustls::client::danger::ServerCertVerifier for NoCheck {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
