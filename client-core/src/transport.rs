//! Connections to relays: QUIC with the relay's certificate pinned by the
//! fingerprint in its URL, control requests on their own streams, and the
//! long-lived message stream with many sends in flight. Sends go out on
//! connections of their own, unlinkable to the authenticated one
//! ([`Dialer::connect_unlinked`]).

use crate::error::ClientError;
use crate::fleet_dial;
use crate::spacing::Spacing;
use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tern_protocol::frame::{decode_message, encode_frame_into};
use tern_protocol::io::{read_frame, write_frame, FrameReader};
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tern_protocol::url::RelayUrl;
use tern_protocol::{limits, WireError, STREAM_CONTROL, STREAM_MESSAGES};
use tokio::sync::mpsc;

/// How long connecting to a relay may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one control request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a stream may take (a relay that grants none would
/// otherwise hold the opener forever).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one batch of sends may take, from writing it to its last
/// result. A relay's keep-alives hold a connection open however long it
/// stays silent, so without this a hostile one would hold a sender forever.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest silence from the home relay while it pushes the backlog, before
/// its `CaughtUp`: a relay that accepts a subscription and sends nothing
/// would otherwise hold `tern recv` forever.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest frame a client reads.
const MAX_FRAME: usize = limits::DEFAULT_MAX_FRAME;

/// Accepts exactly the certificate whose SHA-256 the relay URL names.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if bool::from(seen.ct_eq(&self.fingerprint)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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

/// How fast a client on a fleet notices that its relay died: a keep-alive
/// every 500 ms and the connection given up after 1.5 s of silence, so a
/// subscriber moves to another relay of the fleet in under 2 s (issue 17).
/// A lone relay has nowhere else to go and keeps the slower pace.
pub const FLEET_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// See [`FLEET_KEEP_ALIVE`].
pub const FLEET_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Mail, sends and control on a lone relay: a keep-alive every 4 s, the
/// relay given up after 12 s of silence. A device sharing presence beats
/// just inside this keep-alive, in its place (`presence::owner::beat_pace`).
pub const PROMPT_KEEP_ALIVE: Duration = Duration::from_secs(4);
/// See [`PROMPT_KEEP_ALIVE`].
pub const PROMPT_IDLE_TIMEOUT: Duration = Duration::from_secs(12);

/// A presence watcher's keep-alive on a lone relay: a watcher that misses
/// a relay's death for a while only shows presence late (it opens again and
/// gets every state at once), and 10,000 watchers pinging every 4 s were
/// half of an idle relay's packets (issue 16). 15 s stays inside the 30 s
/// UDP mapping timeout of the strictest home routers.
pub const WATCH_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A presence watcher gives a silent lone relay up after this long (the
/// relay's own idle timeout, 60 s by default, is longer).
pub const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(40);

/// How closely a connection watches its relay for silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Liveness {
    /// Mail, sends and control: [`PROMPT_KEEP_ALIVE`],
    /// [`PROMPT_IDLE_TIMEOUT`].
    #[default]
    Prompt,
    /// Presence watching: [`WATCH_KEEP_ALIVE`], [`WATCH_IDLE_TIMEOUT`].
    Watch,
}

/// The QUIC client configuration for `url`, and its keep-alive interval;
/// `alternatives` when there is another address to move to, which makes
/// liveness checks tighter whatever `liveness` asks (moving to a live
/// relay of the fleet quickly is what a fleet is for).
fn client_config(
    url: &RelayUrl,
    alternatives: bool,
    liveness: Liveness,
) -> Result<(quinn::ClientConfig, Duration), ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        fingerprint: url.fingerprint,
        provider: Arc::clone(&provider),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![tern_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // A relay that vanishes without a word is given up on after 12 s (the
    // relay's own idle timeout is longer); keep-alives hold a quiet
    // connection open well inside that.
    let (keep_alive, idle) = match (alternatives, liveness) {
        (true, _) => (FLEET_KEEP_ALIVE, FLEET_IDLE_TIMEOUT),
        (false, Liveness::Prompt) => (PROMPT_KEEP_ALIVE, PROMPT_IDLE_TIMEOUT),
        (false, Liveness::Watch) => (WATCH_KEEP_ALIVE, WATCH_IDLE_TIMEOUT),
    };
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    transport.max_concurrent_uni_streams(0u32.into());
    // Heartbeat datagrams go out (quinn sends datagrams only on a
    // connection that could take them too); the relay sends none.
    transport.datagram_receive_buffer_size(Some(tern_protocol::MAX_DATAGRAM_BUFFER));
    transport.datagram_send_buffer_size(tern_protocol::MAX_DATAGRAM_BUFFER);
    config.transport_config(Arc::new(transport));
    Ok((config, keep_alive))
}

/// QUIC endpoints for reaching relays. Authenticated and control
/// connections share one endpoint per address family. Sends never do: each
/// send connection ([`Dialer::connect_unlinked`]) gets an endpoint of its
/// own on a fresh ephemeral UDP port, so a relay cannot tie a send to the
/// device's authenticated connection, nor to its sends to other mailboxes,
/// by connection, socket or source port. Clones share the endpoints and the
/// [`Spacing`] (the running client connects and deposits through clones,
/// in tasks of their own, and closes them all at the end).
#[derive(Default, Clone)]
pub struct Dialer {
    // Locked only to look up or add an endpoint, never across an await.
    endpoints: Arc<Mutex<HashMap<bool, quinn::Endpoint>>>,
    // Send endpoints whose connections may still be closing; pruned as new
    // ones are made, waited for by `wait_idle`.
    send_endpoints: Arc<Mutex<Vec<quinn::Endpoint>>>,
    spacing: Spacing,
    // Relay addresses that failed lately, tried last.
    failures: fleet_dial::Failures,
}

impl Dialer {
    /// The endpoints, even if a thread panicked while holding them (the map
    /// is never left half-changed).
    fn endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<bool, quinn::Endpoint>> {
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The send endpoints, as [`Dialer::endpoints`].
    fn send_endpoints(&self) -> std::sync::MutexGuard<'_, Vec<quinn::Endpoint>> {
        self.send_endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The timing rule shared by this dialer's clones.
    pub fn spacing(&self) -> &Spacing {
        &self.spacing
    }

    /// Wait (at most `wait`) until closed connections have told their relays,
    /// so relays free their state now rather than after an idle timeout.
    pub async fn wait_idle(&self, wait: Duration) {
        let mut endpoints: Vec<quinn::Endpoint> = self.endpoints().values().cloned().collect();
        endpoints.extend(self.send_endpoints().drain(..));
        for e in endpoints {
            let _ = tokio::time::timeout(wait, e.wait_idle()).await;
        }
    }

    /// The shared endpoint for one address family, made on first use.
    fn family_endpoint(&self, url: &RelayUrl, v6: bool) -> Result<quinn::Endpoint, ClientError> {
        if let Some(e) = self.endpoints().get(&v6) {
            return Ok(e.clone());
        }
        let e = fresh_endpoint(url, v6)?;
        // A clone may have made one meanwhile: keep the first.
        Ok(self.endpoints().entry(v6).or_insert(e).clone())
    }

    /// The shared endpoint (the home relay's socket), if one was made:
    /// IPv4 first. Direct paths accept on it (`crate::direct`).
    pub fn shared_endpoint(&self) -> Option<quinn::Endpoint> {
        let endpoints = self.endpoints();
        endpoints
            .get(&false)
            .or_else(|| endpoints.get(&true))
            .cloned()
    }

    /// Connect to the relay at `url` on the shared endpoint: for
    /// authenticated and control connections, never for sends. A fleet's
    /// addresses are tried in random order ([`fleet_dial`]).
    pub async fn connect(&mut self, url: &RelayUrl) -> Result<RelayLink, ClientError> {
        self.connect_with(url, Liveness::Prompt).await
    }

    /// [`Dialer::connect`] with the keep-alive pace of `liveness`.
    pub async fn connect_with(
        &mut self,
        url: &RelayUrl,
        liveness: Liveness,
    ) -> Result<RelayLink, ClientError> {
        let addrs = fleet_dial::candidates(url, &self.failures).await?;
        let (config, keep_alive) = client_config(url, addrs.len() > 1, liveness)?;
        let this = self.clone();
        fleet_dial::race(addrs, &self.failures, move |addr| {
            let endpoint = this.family_endpoint(url, addr.is_ipv6());
            let (url, config) = (url.clone(), config.clone());
            async move { dial(&endpoint?, &url, addr, config, keep_alive).await }
        })
        .await
    }

    /// Connect to the relay at `url` as the home mailbox's owner: after the
    /// [`Spacing`] gap from the last send, on the shared endpoint.
    pub async fn connect_authenticated(
        &mut self,
        url: &RelayUrl,
        mailbox: &[u8; 16],
        sign: impl Fn(&[u8]) -> [u8; 64],
    ) -> Result<RelayLink, ClientError> {
        self.spacing.before_auth().await;
        let link = self.connect(url).await?;
        link.authenticate(mailbox, sign).await?;
        // The relay saw the authentication a handshake and two round trips
        // after the slot was taken: sends keep their distance from now.
        self.spacing.note_auth();
        Ok(link)
    }

    /// Connect to the relay at `url` to send to one mailbox: after the
    /// [`Spacing`] gap from the last authentication, from an endpoint of
    /// its own on a fresh ephemeral UDP port, used for nothing else.
    pub async fn connect_unlinked(&mut self, url: &RelayUrl) -> Result<RelayLink, ClientError> {
        self.connect_unlinked_with(url, Liveness::Prompt).await
    }

    /// [`Dialer::connect_unlinked`] with the keep-alive pace of `liveness`
    /// (presence watchers: [`Liveness::Watch`]).
    pub async fn connect_unlinked_with(
        &mut self,
        url: &RelayUrl,
        liveness: Liveness,
    ) -> Result<RelayLink, ClientError> {
        self.spacing.before_send().await;
        let addrs = fleet_dial::candidates(url, &self.failures).await?;
        let (config, keep_alive) = client_config(url, addrs.len() > 1, liveness)?;
        let this = self.clone();
        fleet_dial::race(addrs, &self.failures, move |addr| {
            // Each attempt on a socket of its own; kept until its
            // connection has closed (see `send_endpoints`).
            let endpoint = fresh_endpoint(url, addr.is_ipv6()).inspect(|e| {
                let mut kept = this.send_endpoints();
                kept.retain(|e| e.open_connections() > 0);
                kept.push(e.clone());
            });
            let (url, config) = (url.clone(), config.clone());
            async move { dial(&endpoint?, &url, addr, config, keep_alive).await }
        })
        .await
    }
}

/// A relay over its deadline for `what`.
fn timed_out(relay: impl Into<String>, what: &'static str) -> ClientError {
    ClientError::TimedOut {
        relay: relay.into(),
        what,
    }
}

fn unreachable(url: &RelayUrl, reason: String) -> ClientError {
    ClientError::Unreachable {
        relay: url.authority(),
        reason,
    }
}

/// A client endpoint on a new socket with an ephemeral port.
fn fresh_endpoint(url: &RelayUrl, v6: bool) -> Result<quinn::Endpoint, ClientError> {
    let bind: SocketAddr = if v6 {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    quinn::Endpoint::client(bind).map_err(|e| unreachable(url, e.to_string()))
}

/// Connect from `endpoint` to the relay at `addr`, pinning `url`'s
/// certificate; `config` sends a keep-alive every `keep_alive`.
async fn dial(
    endpoint: &quinn::Endpoint,
    url: &RelayUrl,
    addr: SocketAddr,
    config: quinn::ClientConfig,
    keep_alive: Duration,
) -> Result<RelayLink, ClientError> {
    let unreachable = |reason: String| unreachable(url, reason);
    let connecting = endpoint
        .connect_with(config, addr, "tern-relay")
        .map_err(|e| unreachable(e.to_string()))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| timed_out(url.authority(), "connecting"))?
        .map_err(|e| unreachable(e.to_string()))?;
    Ok(RelayLink {
        conn,
        relay: url.authority(),
        keep_alive,
    })
}

/// One connection to one relay. Clones share the connection.
#[derive(Clone)]
pub struct RelayLink {
    conn: quinn::Connection,
    relay: String,
    keep_alive: Duration,
}

impl RelayLink {
    fn broken(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            relay: self.relay.clone(),
            reason: e.to_string(),
        }
    }

    /// Send one control request on its own stream and read the answer.
    pub async fn control(&self, request: Request) -> Result<Response, ClientError> {
        let exchange = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| self.broken(e))?;
            send.write_all(&[STREAM_CONTROL])
                .await
                .map_err(|e| self.broken(e))?;
            write_frame(
                &mut send,
                &pb::ControlRequest {
                    request: Some(request),
                },
            )
            .await
            .map_err(|e| self.broken(e))?;
            send.finish().map_err(|e| self.broken(e))?;
            let body = read_frame(&mut recv, MAX_FRAME)
                .await
                .map_err(|e| self.broken(e))?
                .ok_or_else(|| ClientError::Protocol("control stream closed early".into()))?;
            decode_message::<pb::ControlResponse>(&body)
                .map_err(|e| ClientError::Protocol(e.to_string()))
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| timed_out(self.relay.clone(), "control request"))??;
        match resp.response {
            Some(Response::Error(e)) => Err(ClientError::Refused(WireError::from(e))),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol("empty control response".into())),
        }
    }

    /// This TLS session's keying material (label
    /// [`tern_protocol::AUTH_EXPORTER_LABEL`]), which signatures bound to
    /// the session cover.
    pub fn exporter(&self) -> Result<[u8; 32], ClientError> {
        let mut exporter = [0u8; 32];
        self.conn
            .export_keying_material(&mut exporter, tern_protocol::AUTH_EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Protocol("no TLS keying material".into()))?;
        Ok(exporter)
    }

    /// Register a new mailbox owned by `auth_key`; returns its id.
    pub async fn register(&self, auth_key: [u8; 32]) -> Result<[u8; 16], ClientError> {
        match self
            .control(Request::Register(pb::Register {
                auth_key: auth_key.to_vec().into(),
            }))
            .await?
        {
            Response::Registered(r) => fixed(&r.mailbox_id),
            other => Err(unexpected(&other)),
        }
    }

    /// Prove ownership of `mailbox` by signing the relay's challenge bound to
    /// this TLS session. Returns how many envelopes are waiting.
    pub async fn authenticate(
        &self,
        mailbox: &[u8; 16],
        sign: impl Fn(&[u8]) -> [u8; 64],
    ) -> Result<u64, ClientError> {
        let nonce = match self
            .control(Request::Challenge(pb::ChallengeRequest {}))
            .await?
        {
            Response::Challenge(c) => c.nonce,
            other => return Err(unexpected(&other)),
        };
        let mut exporter = [0u8; 32];
        self.conn
            .export_keying_material(&mut exporter, tern_protocol::AUTH_EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::Protocol("no TLS keying material".into()))?;
        let signature = sign(&tern_protocol::auth_signed_bytes(
            &exporter, &nonce, mailbox,
        ));
        let auth = pb::Authenticate {
            mailbox_id: mailbox.to_vec().into(),
            nonce,
            signature: signature.to_vec().into(),
        };
        match self.control(Request::Authenticate(auth)).await? {
            Response::Authenticated(a) => Ok(a.pending),
            other => Err(unexpected(&other)),
        }
    }

    /// Mint a send token for the authenticated mailbox.
    pub async fn create_token(&self) -> Result<[u8; 32], ClientError> {
        match self
            .control(Request::CreateToken(pb::CreateToken {}))
            .await?
        {
            Response::TokenCreated(t) => fixed(&t.token),
            other => Err(unexpected(&other)),
        }
    }

    /// Revoke a send token of the authenticated mailbox.
    pub async fn revoke_token(&self, token: &[u8; 32]) -> Result<(), ClientError> {
        match self
            .control(Request::RevokeToken(pb::RevokeToken {
                token: token.to_vec().into(),
            }))
            .await?
        {
            Response::TokenRevoked(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Open the message stream.
    pub async fn messages(&self) -> Result<MessageStream, ClientError> {
        let open = async {
            let (mut send, recv) = self.conn.open_bi().await.map_err(|e| self.broken(e))?;
            send.write_all(&[STREAM_MESSAGES])
                .await
                .map_err(|e| self.broken(e))?;
            Ok::<_, ClientError>((send, recv))
        };
        let (send, recv) = tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| timed_out(self.relay.clone(), "opening the message stream"))??;
        let (tx, frames) = mpsc::channel(FRAME_QUEUE);
        let reader = tokio::spawn(read_frames(recv, self.relay.clone(), tx));
        Ok(MessageStream {
            send,
            frames,
            reader,
            relay: self.relay.clone(),
            next_request: 1,
        })
    }

    /// A raw bidirectional stream, for tools and tests that write the stream
    /// kind byte and frames themselves (fuzzers, protocol conformance tests).
    pub async fn open_raw_stream(&self) -> Result<(SendStream, RecvStream), ClientError> {
        self.conn.open_bi().await.map_err(|e| self.broken(e))
    }

    /// How long this connection stays silent before it sends a QUIC
    /// keep-alive (quinn counts from the last packet it received).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// Send one presence heartbeat as a QUIC datagram
    /// ([`tern_protocol::DATAGRAM_HEARTBEAT`]): unanswered, never
    /// retransmitted. `Ok(false)` if the relay takes no datagrams (a relay
    /// from before them): beat on a control stream instead.
    pub fn beat_datagram(&self) -> Result<bool, ClientError> {
        use quinn::SendDatagramError as E;
        let beat = Bytes::from_static(&[tern_protocol::DATAGRAM_HEARTBEAT]);
        match self.conn.send_datagram(beat) {
            Ok(()) => Ok(true),
            Err(E::UnsupportedByPeer | E::Disabled | E::TooLarge) => Ok(false),
            Err(E::ConnectionLost(e)) => Err(self.broken(e)),
        }
    }

    /// quinn's counters for this connection (packets and frames each way),
    /// for benchmarks.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// A raw datagram, for tools and tests that write their own.
    pub fn send_raw_datagram(&self, body: Bytes) -> Result<(), ClientError> {
        self.conn.send_datagram(body).map_err(|e| self.broken(e))
    }

    /// The relay's address on this connection.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Close the connection politely.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}

fn fixed<const N: usize>(b: &Bytes) -> Result<[u8; N], ClientError> {
    b[..]
        .try_into()
        .map_err(|_| ClientError::Protocol(format!("expected {N} bytes")))
}

fn unexpected(r: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {r:?}"))
}

/// A relay's yes to one send: the envelope is durably stored. It carries
/// nothing else; relays tell senders no sequence number (protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored;

/// One envelope to deposit.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target mailbox.
    pub mailbox: [u8; 16],
    /// Send token for it.
    pub token: [u8; 32],
    /// Message id (stable across retries).
    pub message_id: [u8; 16],
    /// Sealed payload.
    pub payload: Vec<u8>,
}

/// One envelope for many mailboxes: a multi-recipient send (a group
/// message, a user's other devices). The relay stores the one payload for
/// every valid target with one durable write and answers once.
#[derive(Debug, Clone)]
pub struct OutgoingMany {
    /// Message id (stable across retries; de-duplicated per mailbox).
    pub message_id: [u8; 16],
    /// Sealed payload, the same bytes for every target.
    pub payload: Vec<u8>,
    /// Target mailboxes and a send token for each, at most the relay's
    /// `max_recipients_per_send` (1,000 by default).
    pub targets: Vec<([u8; 16], [u8; 32])>,
    /// Pass only to connected recipients, never store (typing).
    pub ephemeral: bool,
}

/// Frames read ahead of the caller on one message stream.
const FRAME_QUEUE: usize = 64;

/// Read the relay's frames in a task of its own, so that a caller may
/// cancel [`MessageStream::next`] (a timeout, a `select!`) without losing
/// half a frame and falling out of step with the stream.
async fn read_frames(
    recv: RecvStream,
    relay: String,
    tx: mpsc::Sender<Result<pb::relay_frame::Frame, ClientError>>,
) {
    let mut frames = FrameReader::new(recv, MAX_FRAME);
    loop {
        let item = match frames.next().await {
            Ok(Some(body)) => match decode_message::<pb::RelayFrame>(&body) {
                Ok(pb::RelayFrame { frame: Some(f) }) => Ok(f),
                // A frame kind this client does not know: skip it.
                Ok(pb::RelayFrame { frame: None }) => continue,
                Err(e) => Err(ClientError::Protocol(e.to_string())),
            },
            Ok(None) => return,
            Err(e) => Err(ClientError::Unreachable {
                relay: relay.clone(),
                reason: e.to_string(),
            }),
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// The long-lived message stream of one connection.
pub struct MessageStream {
    send: SendStream,
    frames: mpsc::Receiver<Result<pb::relay_frame::Frame, ClientError>>,
    reader: tokio::task::JoinHandle<()>,
    relay: String,
    next_request: u64,
}

impl Drop for MessageStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl MessageStream {
    fn broken(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            relay: self.relay.clone(),
            reason: e.to_string(),
        }
    }

    /// Send many envelopes with all of them in flight at once; returns each
    /// one's result in order (`Ok(Stored)` once the relay has it durably).
    /// A relay that has not answered them all within [`SEND_TIMEOUT`] is
    /// [`ClientError::TimedOut`]; the stream is then out of step and must
    /// be dropped.
    pub async fn send_all(
        &mut self,
        items: &[Outgoing],
    ) -> Result<Vec<Result<Stored, WireError>>, ClientError> {
        tokio::time::timeout(SEND_TIMEOUT, self.send_all_unbounded(items))
            .await
            .map_err(|_| timed_out(self.relay.clone(), "sending"))?
    }

    async fn send_all_unbounded(
        &mut self,
        items: &[Outgoing],
    ) -> Result<Vec<Result<Stored, WireError>>, ClientError> {
        let first = self.next_request;
        // All of them leave in one write.
        let mut out = BytesMut::new();
        for item in items {
            let send = pb::Send {
                request_id: self.next_request,
                mailbox_id: item.mailbox.to_vec().into(),
                token: item.token.to_vec().into(),
                message_id: item.message_id.to_vec().into(),
                payload: item.payload.clone().into(),
                ephemeral: false,
            };
            self.next_request += 1;
            let frame = pb::ClientFrame {
                frame: Some(pb::client_frame::Frame::Send(send)),
            };
            encode_frame_into(&frame, &mut out);
        }
        self.send
            .write_chunk(out.freeze())
            .await
            .map_err(|e| self.broken(e))?;
        let mut results: Vec<Option<Result<Stored, WireError>>> = vec![None; items.len()];
        let mut missing = items.len();
        while missing > 0 {
            match self.next().await? {
                Some(pb::relay_frame::Frame::SendResult(r)) => {
                    let Some(slot) = r
                        .request_id
                        .checked_sub(first)
                        .and_then(|i| results.get_mut(i as usize))
                    else {
                        continue;
                    };
                    if slot.is_none() {
                        missing -= 1;
                    }
                    *slot = Some(match r.error {
                        Some(e) => Err(WireError::from(e)),
                        // `seq` is 0 from current relays: never relied on.
                        None => Ok(Stored),
                    });
                }
                Some(pb::relay_frame::Frame::Error(e)) => {
                    return Err(ClientError::Refused(WireError::from(e)))
                }
                Some(_) => {}
                None => return Err(self.broken("relay closed the stream")),
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Send one payload to many mailboxes in one frame and wait for its one
    /// answer: one result per target, in the order of `m.targets`
    /// ([`Stored`] once that mailbox holds it durably, or why that
    /// target was refused; the others are unaffected). A refusal of the
    /// whole request (too many targets, payload too large, over the rate)
    /// is [`ClientError::Refused`]. Other frames arriving meanwhile are
    /// dropped, as in [`Self::send_all`], and the same deadline holds.
    pub async fn send_many(
        &mut self,
        m: &OutgoingMany,
    ) -> Result<Vec<Result<Stored, WireError>>, ClientError> {
        tokio::time::timeout(SEND_TIMEOUT, self.send_many_unbounded(m))
            .await
            .map_err(|_| timed_out(self.relay.clone(), "sending"))?
    }

    async fn send_many_unbounded(
        &mut self,
        m: &OutgoingMany,
    ) -> Result<Vec<Result<Stored, WireError>>, ClientError> {
        let request_id = self.next_request;
        self.next_request += 1;
        let frame = pb::ClientFrame::of(pb::client_frame::Frame::SendMany(pb::SendMany {
            request_id,
            message_id: m.message_id.to_vec().into(),
            payload: m.payload.clone().into(),
            ephemeral: m.ephemeral,
            targets: m
                .targets
                .iter()
                .map(|(mailbox, token)| pb::SendTarget {
                    mailbox_id: mailbox.to_vec().into(),
                    token: token.to_vec().into(),
                })
                .collect(),
        }));
        write_frame(&mut self.send, &frame)
            .await
            .map_err(|e| self.broken(e))?;
        loop {
            match self.next().await? {
                Some(pb::relay_frame::Frame::SendManyResult(r)) if r.request_id == request_id => {
                    if let Some(e) = r.error {
                        return Err(ClientError::Refused(WireError::from(e)));
                    }
                    if r.results.len() != m.targets.len() {
                        return Err(ClientError::Protocol(format!(
                            "{} results for {} targets",
                            r.results.len(),
                            m.targets.len()
                        )));
                    }
                    return Ok(r
                        .results
                        .into_iter()
                        .map(|t| match t.error {
                            Some(e) => Err(WireError::from(e)),
                            None => Ok(Stored),
                        })
                        .collect());
                }
                Some(pb::relay_frame::Frame::Error(e)) => {
                    return Err(ClientError::Refused(WireError::from(e)))
                }
                Some(_) => {}
                None => return Err(self.broken("relay closed the stream")),
            }
        }
    }

    /// Ask the relay to push this (authenticated) mailbox's envelopes.
    pub async fn subscribe(&mut self, window: u32) -> Result<(), ClientError> {
        let frame = pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Subscribe(pb::Subscribe { window })),
        };
        write_frame(&mut self.send, &frame)
            .await
            .map_err(|e| self.broken(e))
    }

    /// Acknowledge envelopes so the relay deletes them.
    pub async fn ack(&mut self, seqs: Vec<u64>) -> Result<(), ClientError> {
        let frame = pb::ClientFrame {
            frame: Some(pb::client_frame::Frame::Ack(pb::Ack { seqs })),
        };
        write_frame(&mut self.send, &frame)
            .await
            .map_err(|e| self.broken(e))
    }

    /// The next frame from the relay; `None` when the stream ended.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Option<pb::relay_frame::Frame>, ClientError> {
        match self.frames.recv().await {
            Some(Ok(f)) => Ok(Some(f)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }

    /// Finish our side of the stream and wait (at most `wait`) for the relay
    /// to end its side, so everything we wrote (the last acks) has arrived
    /// before the connection is closed. Frames still arriving are dropped
    /// unacknowledged; the relay keeps them for next time.
    pub async fn finish(&mut self, wait: Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(wait, async { while let Ok(Some(_)) = self.next().await {} })
            .await;
    }
}
