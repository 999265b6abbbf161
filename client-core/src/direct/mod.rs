//! Direct paths (issue 18): when a contact is online at the same time, the
//! two devices talk over QUIC directly and the relay carries nothing; the
//! relay stays the fallback and the durable outbox the source of truth.
//!
//! - The socket the client uses for its home relay (the dialer's shared
//!   endpoint) also accepts QUIC connections, with ALPN `tern-direct/1`
//!   only ([`tls`]).
//! - Candidates (the socket's local address and the address the home relay
//!   observes, `ObserveAddress`) travel to the contact in a
//!   [`tern_protocol::pb::PathOffer`], an ordinary end-to-end envelope
//!   ([`offer`]); both sides then dial each other at once, with retries
//!   ([`punch`]), and prove who they are by their signing keys.
//! - While a path is up, 1:1 outbox items go over it ([`deposit`]) and are
//!   retired only when the peer acks them ([`link`]); anything else goes
//!   through the relay, and the recipient drops repeats by message id.
//!
//! [`Paths`] is the shared state: open paths by contact, contacts we
//! accept a path from, and the channel to the running client's task.

pub(crate) mod deposit;
pub(crate) mod link;
pub mod offer;
pub(crate) mod punch;
pub mod tls;

use crate::store::ContactId;
use link::{Arrival, Path};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_crypto::DeviceAccount;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Arrivals and path news waiting for the running client.
const INBOUND_QUEUE: usize = 256;
/// How long after an offer a contact may open a path to us.
pub(crate) const ALLOW_FOR: Duration = Duration::from_secs(30);

/// Where a direct path to one contact stands, for `tern contacts --json`
/// and `tern status CONTACT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PathInfo {
    /// A path is open.
    pub direct: bool,
    /// Its round-trip time, if open.
    pub rtt_ms: Option<u64>,
}

/// The home link is up: accept paths on its socket and learn where the
/// relay sees it. Failures only cost direct paths, never the link.
pub(crate) async fn on_home_link(
    paths: &Paths,
    dialer: &crate::transport::Dialer,
    link: &crate::transport::RelayLink,
) {
    if let Some(endpoint) = dialer.shared_endpoint() {
        if let Err(e) = paths.attach(endpoint) {
            tracing::warn!("direct paths off: {e}");
            return;
        }
    }
    let observed = match offer::observe(link).await {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::debug!("the home relay did not say our address: {e}");
            None
        }
    };
    paths.note_home(observed, link.remote_address());
}

/// Hand a prepared typing notice for one contact to its path (ephemeral:
/// shown if the peer is listening, never stored); whether it was acked.
pub(crate) async fn send_typing(path: &Path, prepared: &crate::typing::PreparedTyping) -> bool {
    let [(_, m)] = prepared.sends.as_slice() else {
        return false;
    };
    let item = link::DirectItem {
        message_id: m.message_id,
        payload: m.payload.clone(),
        ephemeral: true,
    };
    path.send_batch(&[item]).await == [true]
}

/// What the paths tell the running client.
pub(crate) enum Inbound {
    /// A message arrived on a path.
    Arrival(Arrival),
    /// A path to this contact opened (none was open before).
    Opened { contact: ContactId, rtt_ms: u64 },
    /// The last path to this contact closed.
    Closed { contact: ContactId },
}

/// The running client's direct paths (cheap to clone; clones share).
#[derive(Clone)]
pub(crate) struct Paths {
    inner: Arc<Inner>,
}

struct Inner {
    /// Our Curve25519 identity key.
    me: ContactId,
    signer: Arc<DeviceAccount>,
    open: Mutex<HashMap<ContactId, Arc<Path>>>,
    /// Contacts that may open a path to us, with their signing key, until
    /// when.
    allowed: Mutex<HashMap<ContactId, ([u8; 32], Instant)>>,
    /// Contacts we are dialing now, until when.
    punching: Mutex<HashMap<ContactId, Instant>>,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// Where the home relay sees our socket, and the relay's address.
    home: Mutex<(Option<SocketAddr>, Option<SocketAddr>)>,
    inbound: mpsc::Sender<Inbound>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Paths {
    /// Paths for the device `signer`; the receiver gets what they bring.
    pub(crate) fn new(signer: Arc<DeviceAccount>) -> (Self, mpsc::Receiver<Inbound>) {
        let (inbound, rx) = mpsc::channel(INBOUND_QUEUE);
        let inner = Inner {
            me: signer.identity_key(),
            signer,
            open: Mutex::default(),
            allowed: Mutex::default(),
            punching: Mutex::default(),
            endpoint: Mutex::default(),
            home: Mutex::default(),
            inbound,
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// Accept direct paths on `endpoint` (the home relay's socket) from
    /// now on; once per endpoint.
    pub(crate) fn attach(&self, endpoint: quinn::Endpoint) -> Result<(), tls::DirectTlsError> {
        {
            let mut held = lock(&self.inner.endpoint);
            if held
                .as_ref()
                .is_some_and(|e| e.local_addr().ok() == endpoint.local_addr().ok())
            {
                return Ok(());
            }
            endpoint.set_server_config(Some(tls::server_config()?));
            *held = Some(endpoint.clone());
        }
        tokio::spawn(punch::accept_loop(self.clone(), endpoint));
        Ok(())
    }

    /// What the home relay said of our socket (`observed`), and its own
    /// address (`relay`), for our candidates.
    pub(crate) fn note_home(&self, observed: Option<SocketAddr>, relay: SocketAddr) {
        *lock(&self.inner.home) = (observed, Some(relay));
    }

    /// Our candidates: the address the home relay observed and the local
    /// one, with the attached socket's port. Empty until attached.
    pub(crate) fn own_candidates(&self) -> Vec<String> {
        let Some(port) = self
            .endpoint()
            .and_then(|e| e.local_addr().ok())
            .map(|a| a.port())
        else {
            return Vec::new();
        };
        let (observed, relay) = *lock(&self.inner.home);
        let local = relay.and_then(|r| offer::local_address(r, port));
        offer::candidates(observed, local)
    }

    /// The socket paths use, once attached.
    pub(crate) fn endpoint(&self) -> Option<quinn::Endpoint> {
        lock(&self.inner.endpoint).clone()
    }

    /// Accept a path from `contact` (proving `signing_key`) for a while.
    pub(crate) fn allow(&self, contact: ContactId, signing_key: [u8; 32]) {
        lock(&self.inner.allowed).insert(contact, (signing_key, Instant::now() + ALLOW_FOR));
    }

    /// The signing key `contact` must prove, if it may open a path now.
    pub(crate) fn allowed_key(&self, contact: &ContactId) -> Option<[u8; 32]> {
        let mut allowed = lock(&self.inner.allowed);
        let now = Instant::now();
        allowed.retain(|_, (_, until)| *until > now);
        if let Some((k, _)) = allowed.get(contact) {
            return Some(*k);
        }
        None
    }

    /// Dial `contact` at `candidates` for a few seconds, unless a path is
    /// open or being dialed.
    pub(crate) fn punch(
        &self,
        contact: ContactId,
        signing_key: [u8; 32],
        candidates: Vec<SocketAddr>,
    ) {
        if self.get(&contact).is_some() || candidates.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut punching = lock(&self.inner.punching);
            if punching.get(&contact).is_some_and(|until| *until > now) {
                return;
            }
            punching.insert(contact, now + punch::PUNCH_FOR);
        }
        let Some(endpoint) = self.endpoint() else {
            return;
        };
        tokio::spawn(punch::dial(
            self.clone(),
            endpoint,
            contact,
            signing_key,
            candidates,
        ));
    }

    /// The open path to `contact`, if one is.
    pub(crate) fn get(&self, contact: &ContactId) -> Option<Arc<Path>> {
        lock(&self.inner.open)
            .get(contact)
            .filter(|p| p.is_open())
            .cloned()
    }

    /// Where the path to `contact` stands.
    pub(crate) fn info(&self, contact: &ContactId) -> PathInfo {
        match self.get(contact) {
            Some(p) => PathInfo {
                direct: true,
                rtt_ms: Some(p.rtt_ms()),
            },
            None => PathInfo {
                direct: false,
                rtt_ms: None,
            },
        }
    }

    /// Close every path (shutdown).
    pub(crate) fn close_all(&self) {
        let open: Vec<Arc<Path>> = lock(&self.inner.open).drain().map(|(_, p)| p).collect();
        for p in open {
            p.conn.close(0u32.into(), b"bye");
        }
        if let Some(e) = lock(&self.inner.endpoint).take() {
            e.set_server_config(None);
        }
    }

    /// Keep `path` if it is the one both sides keep: then serve it, watch
    /// it close, and say it opened (if none was open). The one it replaces,
    /// or `path` itself if it loses, is closed after a grace period, so
    /// what is in flight on it still lands.
    pub(crate) fn install(&self, path: Path) {
        let path = Arc::new(path);
        let contact = path.contact;
        let (loser, was_open) = {
            let mut open = lock(&self.inner.open);
            let current = open.get(&contact).filter(|p| p.is_open()).cloned();
            match current {
                Some(cur) if cur.rank <= path.rank => (Some(path.clone()), true),
                Some(cur) => {
                    open.insert(contact, path.clone());
                    (Some(cur), true)
                }
                None => {
                    open.insert(contact, path.clone());
                    (None, false)
                }
            }
        };
        lock(&self.inner.punching).remove(&contact);
        // Both are served: the peer may still be sending on the loser.
        let inbound = self.inner.inbound.clone();
        let (arrivals_tx, mut arrivals_rx) = mpsc::channel(INBOUND_QUEUE);
        let forward = inbound.clone();
        tokio::spawn(async move {
            while let Some(a) = arrivals_rx.recv().await {
                if forward.send(Inbound::Arrival(a)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(Arc::clone(&path).serve(arrivals_tx));
        if let Some(loser) = loser {
            tokio::spawn(async move {
                tokio::time::sleep(punch::REPLACED_GRACE).await;
                loser.conn.close(0u32.into(), b"replaced");
            });
        }
        if !was_open {
            let rtt_ms = path.rtt_ms();
            tokio::spawn(async move { inbound.send(Inbound::Opened { contact, rtt_ms }).await });
        }
        let paths = self.clone();
        tokio::spawn(async move {
            path.conn.closed().await;
            paths.closed(&path);
        });
    }

    /// `path` closed: forget it, and say so if it was the contact's path.
    fn closed(&self, path: &Arc<Path>) {
        let contact = path.contact;
        let gone = {
            let mut open = lock(&self.inner.open);
            match open.get(&contact) {
                Some(p) if Arc::ptr_eq(p, path) => {
                    open.remove(&contact);
                    true
                }
                _ => false,
            }
        };
        if gone {
            let inbound = self.inner.inbound.clone();
            tokio::spawn(async move { inbound.send(Inbound::Closed { contact }).await });
        }
    }
}
