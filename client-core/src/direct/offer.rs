//! Path offers: a device's candidate addresses, sent to one contact as an
//! ordinary end-to-end envelope (`Content.path_offer`), so the relay sees
//! one more envelope like any other and never learns that two users try to
//! connect. Who gets an offer and when, and what an offer received may
//! say, are the pure rules here; [`Client::queue_offer`] puts one in the
//! outbox.

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::layers;
use crate::settings::DirectMode;
use crate::store::{Contact, ContactId, OutboxItem};
use crate::transport::RelayLink;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tern_protocol::pb::control_response::Response;
use tern_protocol::pb::{self, content::Body, control_request::Request};

/// How long an offer stays good.
pub const OFFER_TTL: Duration = Duration::from_secs(60);
/// At most one unanswered offer per contact this often.
pub const OFFER_EVERY: Duration = Duration::from_secs(20);
/// Candidates read from one offer, at most.
pub const MAX_CANDIDATES: usize = 8;

/// Most contacts and offers noted between two drains.
pub const NEWS_CAP: usize = 64;

/// What receiving learned for direct paths, drained by the running client.
#[derive(Debug, Default)]
pub struct News {
    /// Contacts a message or receipt just came from (they are online).
    pub(crate) heard: Vec<ContactId>,
    /// Offers that arrived, with their sender.
    pub(crate) offers: Vec<(Contact, pb::PathOffer)>,
}

impl News {
    /// Take everything noted so far.
    pub(crate) fn take(&mut self) -> News {
        std::mem::take(self)
    }

    /// A message or receipt came from `contact`. (A client that never
    /// drains this, one that does not run, keeps at most [`NEWS_CAP`].)
    pub(crate) fn note_heard(&mut self, contact: ContactId) {
        if self.heard.len() < NEWS_CAP && !self.heard.contains(&contact) {
            self.heard.push(contact);
        }
    }

    /// An offer came from `contact` (at most [`NEWS_CAP`] kept).
    pub(crate) fn note_offer(&mut self, contact: Contact, offer: pb::PathOffer) {
        if self.offers.len() < NEWS_CAP {
            self.offers.push((contact, offer));
        }
    }

    /// Whether nothing is noted.
    pub(crate) fn is_empty(&self) -> bool {
        self.heard.is_empty() && self.offers.is_empty()
    }
}

/// The addresses an offer names that are worth dialing, or `None` if it
/// is stale at `now_ms`. Unparsable, unspecified, multicast and port-0
/// entries are skipped; at most [`MAX_CANDIDATES`] are read.
pub fn candidates_of(offer: &pb::PathOffer, now_ms: u64) -> Option<Vec<SocketAddr>> {
    if offer.expires_ms <= now_ms {
        return None;
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for c in offer.candidates.iter().take(MAX_CANDIDATES) {
        let Ok(a) = c.parse::<SocketAddr>() else {
            continue;
        };
        if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
            continue;
        }
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Some(out)
}

/// This socket's candidates: the address the home relay observed, then
/// the local one, without repeats, as text.
pub fn candidates(observed: Option<SocketAddr>, local: Option<SocketAddr>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in [observed, local].into_iter().flatten() {
        let s = a.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Whether `mode` allows a path with a contact (`verified`: whether the
/// user verified the contact's current key).
pub fn allowed(mode: DirectMode, verified: bool) -> bool {
    match mode {
        DirectMode::On => true,
        DirectMode::Off => false,
        DirectMode::Verified => verified,
    }
}

/// The local address of a socket bound to `port` on all addresses, as seen
/// toward `toward`: the address of the interface the system routes there
/// (no packet is sent).
pub fn local_address(toward: SocketAddr, port: u16) -> Option<SocketAddr> {
    let bind: SocketAddr = match toward.ip() {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(bind).ok()?;
    probe.connect(toward).ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(SocketAddr::new(ip, port))
}

/// Ask the relay of `link` where it sees the connection come from.
pub async fn observe(link: &RelayLink) -> Result<SocketAddr, ClientError> {
    match link
        .control(Request::ObserveAddress(pb::ObserveAddress {}))
        .await?
    {
        Response::ObservedAddress(a) => {
            let ip: IpAddr = a
                .ip
                .parse()
                .map_err(|_| ClientError::Protocol(format!("bad observed address {:?}", a.ip)))?;
            let port = u16::try_from(a.port)
                .map_err(|_| ClientError::Protocol(format!("bad observed port {}", a.port)))?;
            Ok(SocketAddr::new(ip, port))
        }
        other => Err(ClientError::Protocol(format!(
            "unexpected response {other:?}"
        ))),
    }
}

impl Client {
    /// Whether the settings allow a direct path with `contact`.
    pub(crate) fn direct_allowed(&self, contact: &Contact) -> Result<bool, ClientError> {
        let mode = self.store.settings()?.direct;
        let verified = match mode {
            DirectMode::Verified => self
                .contact_state(&contact.identity_key)?
                .is_verified(&contact.identity_key),
            _ => false,
        };
        Ok(allowed(mode, verified))
    }

    /// Put an offer of `candidates` to `contact` in the outbox. It goes
    /// like any 1:1 message but, like a receipt batch, is never reported
    /// (no delivery event, no conversation entry, no receipt).
    pub(crate) fn queue_offer(
        &self,
        contact: &Contact,
        candidates: Vec<String>,
        answer: bool,
    ) -> Result<(), ClientError> {
        let Some(mut session) = self.load_session(&contact.identity_key)? else {
            return Ok(());
        };
        let now = now_ms();
        let body = Body::PathOffer(pb::PathOffer {
            candidates,
            nonce: random16().to_vec().into(),
            expires_ms: now + OFFER_TTL.as_millis() as u64,
            answer,
        });
        let id = random16();
        let content = layers::content(id, now, body);
        let payload = layers::seal_content(
            &mut session,
            &self.account.identity_key(),
            &contact.seal_key,
            &content,
        );
        let item = OutboxItem {
            position: self.store.next_position()?,
            message_id: id,
            contact: contact.identity_key,
            message_key: None,
            relay_url: contact.relay_url.clone(),
            mailbox_id: contact.mailbox_id,
            token: contact.send_token,
            payload,
            copy: false,
        };
        self.store
            .commit_receipt_batch(&session.to_encrypted_pickle(&self.key), &item, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(c: &[&str], expires_ms: u64) -> pb::PathOffer {
        pb::PathOffer {
            candidates: c.iter().map(|s| s.to_string()).collect(),
            nonce: vec![1; 16].into(),
            expires_ms,
            answer: false,
        }
    }

    #[test]
    fn only_usable_candidates_of_a_fresh_offer_are_dialed() {
        let o = offer(
            &[
                "192.0.2.1:4000",
                "nonsense",
                "0.0.0.0:5",
                "192.0.2.1:0",
                "224.0.0.1:9",
                "192.0.2.1:4000",
                "[2001:db8::1]:7",
            ],
            1_000,
        );
        let got = candidates_of(&o, 999).unwrap();
        assert_eq!(
            got,
            vec![
                "192.0.2.1:4000".parse().unwrap(),
                "[2001:db8::1]:7".parse().unwrap()
            ]
        );
        assert_eq!(candidates_of(&o, 1_000), None, "stale");
        let many: Vec<String> = (1..=20).map(|p| format!("192.0.2.1:{p}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            candidates_of(&offer(&refs, 5), 0).unwrap().len(),
            MAX_CANDIDATES
        );
    }

    #[test]
    fn own_candidates_are_observed_first_without_repeats() {
        let a: SocketAddr = "198.51.100.2:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        assert_eq!(
            candidates(Some(a), Some(b)),
            vec![a.to_string(), b.to_string()]
        );
        assert_eq!(candidates(Some(a), Some(a)), vec![a.to_string()]);
        assert!(candidates(None, None).is_empty());
    }

    #[test]
    fn news_of_a_client_that_never_drains_stays_bounded() {
        let mut news = News::default();
        for i in 0..200u8 {
            news.note_heard([i; 32]);
            news.note_heard([i; 32]);
        }
        assert_eq!(news.heard.len(), NEWS_CAP);
        let taken = news.take();
        assert_eq!(taken.heard.len(), NEWS_CAP);
        assert!(news.is_empty());
    }

    #[test]
    fn the_setting_decides_who_gets_a_path() {
        assert!(allowed(DirectMode::On, false));
        assert!(!allowed(DirectMode::Off, true));
        assert!(allowed(DirectMode::Verified, true));
        assert!(!allowed(DirectMode::Verified, false));
    }

    #[test]
    fn the_local_address_is_the_routed_interface() {
        let got = local_address("127.0.0.1:9".parse().unwrap(), 4242).unwrap();
        assert_eq!(got, "127.0.0.1:4242".parse().unwrap());
    }
}
