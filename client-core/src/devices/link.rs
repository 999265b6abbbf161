//! Linking a new device to the account over an authenticated channel: the
//! shared parts and the existing device's side (the new device's is
//! [`super::join`]).
//!
//! The existing device registers a mailbox for this link only on its relay,
//! mints a token for it and prints a link code (`ternlink1…`: relay URL,
//! that mailbox and token, 32 random bytes `secret`, and its own identity
//! key). The new device registers its own mailbox, mints a token for it,
//! and writes a `LinkHello` (its list entry) to the link mailbox. The
//! existing device answers with a `LinkBundle` (the root key, the new list
//! naming both, contacts, their lists, settings) written to the new
//! device's mailbox. Both are encrypted under a key derived from `secret`
//! (ChaCha20-Poly1305 through [`StoreKey`]), so only a holder of the code
//! can take part. Both sides show a 6-digit check code ([`check_code`])
//! over the secret and both identity keys: someone else who used a leaked
//! code would make the two sides show different digits, and the user
//! confirms only if they match.

use super::list::Device;
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::inbox::subscribed;
use crate::layers::key32;
use crate::transport::Dialer;
use crate::transport::{MessageStream, Outgoing, RelayLink};
use prost::Message;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tern_crypto::{RootKey, StoreKey};
use tern_protocol::link::{decode_link_code, encode_link_code};
use tern_protocol::pb::{self, relay_frame::Frame};
use tern_protocol::url::RelayUrl;
use tracing::debug;
use zeroize::Zeroize;

/// How long a link waits for the other side by default.
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(600);
pub(super) const HELLO_AAD: &[u8] = b"tern/1 link hello";
pub(super) const BUNDLE_AAD: &[u8] = b"tern/1 link bundle";

/// **Pure**: the 6-digit code both sides show: the first 4 bytes of
/// SHA-256("tern/1 link check" || secret || existing identity key || new
/// identity key), big-endian, mod 10^6.
pub fn check_code(secret: &[u8; 32], existing: &[u8; 32], new: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"tern/1 link check");
    h.update(secret);
    h.update(existing);
    h.update(new);
    let d = h.finalize();
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) % 1_000_000;
    format!("{n:06}")
}

/// The link channel's key.
pub(super) fn link_key(secret: &[u8; 32]) -> StoreKey {
    let mut h = Sha256::new();
    h.update(b"tern/1 link key");
    h.update(secret);
    StoreKey::from_bytes(h.finalize().into())
}

/// The most bytes of bundle in one envelope (the relay takes 64 KiB).
const BUNDLE_BUDGET: usize = 48 * 1024;

/// **Pure**: put as many of `copies` in `bundle` as keep it within
/// `budget` encoded bytes, in order; returns the ones left out.
fn fill_bundle(
    bundle: &mut pb::LinkBundle,
    copies: Vec<pb::DeviceContactCopy>,
    budget: usize,
) -> Vec<pb::DeviceContactCopy> {
    let mut rest = Vec::new();
    for c in copies {
        // A field of a message: its bytes, a tag and a length prefix.
        let adds = c.encoded_len() + 1 + prost::length_delimiter_len(c.encoded_len());
        if rest.is_empty() && bundle.encoded_len() + adds <= budget {
            bundle.contacts.push(c);
        } else {
            rest.push(c);
        }
    }
    rest
}

/// A link's mailbox, registered but not listened on yet: its code, and
/// the throwaway key that owns the mailbox. A running client makes it for
/// a `tern device link` beside it, which then listens itself
/// ([`LinkOffer::listen`]): the wait for the new device (minutes) never
/// holds the running client.
#[derive(Clone)]
pub struct OfferMailbox {
    /// The code to give the new device.
    pub code: String,
    /// The secret of the Ed25519 key that owns the link mailbox.
    pub auth: [u8; 32],
}

impl Drop for OfferMailbox {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.auth);
    }
}

/// A link being offered by the existing device.
pub struct LinkOffer {
    /// The code to give the new device.
    pub code: String,
    secret: [u8; 32],
    existing: [u8; 32],
    link: RelayLink,
    stream: MessageStream,
}

/// A new device that answered a [`LinkOffer`].
#[derive(Debug, Clone)]
pub struct LinkRequest {
    /// The digits to compare with the new device's.
    pub check_code: String,
    /// What the new device calls itself.
    pub device_name: String,
    device: Device,
}

impl LinkRequest {
    /// The new device's list entry, encoded (`DeviceEntry`), for a running
    /// client to add ([`Client::link_add`]).
    pub fn device_entry(&self) -> Vec<u8> {
        self.device.to_pb().encode_to_vec()
    }
}

impl LinkOffer {
    /// Listen on the link mailbox `m` (on `dialer`, which need not be a
    /// client's: the CLI listens beside a running `tern listen`).
    pub async fn listen(dialer: &mut Dialer, m: &OfferMailbox) -> Result<Self, ClientError> {
        let bad = |_| ClientError::Device("a damaged link code".into());
        let code = decode_link_code(&m.code).map_err(bad)?;
        let url: RelayUrl = code.relay_url.parse()?;
        let (Ok(mailbox), Some(secret), Some(existing)) = (
            <[u8; 16]>::try_from(&code.mailbox_id[..]),
            key32(&code.secret),
            key32(&code.identity_key),
        ) else {
            return Err(ClientError::Device("a damaged link code".into()));
        };
        let auth = RootKey::from_bytes(&m.auth);
        let link = dialer
            .connect_authenticated(&url, &mailbox, |x| auth.sign(x))
            .await?;
        let (link, stream) = subscribed(link).await?;
        Ok(Self {
            code: m.code.clone(),
            secret,
            existing,
            link,
            stream,
        })
    }

    /// Wait (at most `timeout`) for the new device's hello.
    pub async fn wait(&mut self, timeout: Duration) -> Result<LinkRequest, ClientError> {
        let key = link_key(&self.secret);
        let deadline = Instant::now() + timeout;
        let device = wait_for(&mut self.stream, deadline, |payload| {
            let plain = key.decrypt(HELLO_AAD, payload).ok()?;
            let hello = pb::LinkHello::decode(&plain[..]).ok()?;
            Device::from_pb(&hello.device?).ok()
        })
        .await?;
        Ok(LinkRequest {
            check_code: check_code(&self.secret, &self.existing, &device.identity_key),
            device_name: device.name.clone(),
            device,
        })
    }

    /// Stop listening on the link mailbox.
    pub async fn close(mut self) {
        self.stream.finish(Duration::from_secs(1)).await;
        self.link.close();
    }
}

/// Wait for the first envelope on `stream` that `open` accepts (acking
/// it; others stay for the inbox), until `deadline`.
pub(super) async fn wait_for<T>(
    stream: &mut MessageStream,
    deadline: Instant,
    mut open: impl FnMut(&[u8]) -> Option<T>,
) -> Result<T, ClientError> {
    loop {
        let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
        match next {
            Err(_) => return Err(ClientError::Device("the link timed out".into())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Err(ClientError::Device("the relay closed the link".into())),
            Ok(Ok(Some(Frame::Envelope(env)))) => {
                if let Some(got) = open(&env.payload) {
                    if env.seq != 0 {
                        stream.ack(vec![env.seq]).await?;
                    }
                    return Ok(got);
                }
                debug!("an envelope that is not for this link");
            }
            Ok(Ok(Some(Frame::Error(e)))) => return Err(ClientError::Refused(e.into())),
            Ok(Ok(Some(_))) => {}
        }
    }
}

/// Deposit `payload` in one mailbox (a connection of its own).
pub(super) async fn deposit(
    client: &mut Client,
    relay: &str,
    mailbox: [u8; 16],
    token: [u8; 32],
    payload: Vec<u8>,
) -> Result<(), ClientError> {
    let url: RelayUrl = relay.parse()?;
    let link = client.dialer.connect_unlinked(&url).await?;
    let mut stream = link.messages().await?;
    let results = stream
        .send_all(&[Outgoing {
            mailbox,
            token,
            message_id: random16(),
            payload,
        }])
        .await?;
    stream.finish(Duration::from_secs(2)).await;
    link.close();
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(ClientError::Refused(e)),
        None => Err(ClientError::Protocol("no answer to a link send".into())),
    }
}

impl Client {
    /// Offer a link: a mailbox for this link only on our relay, and the
    /// code that reaches it.
    pub async fn link_offer(&mut self) -> Result<LinkOffer, ClientError> {
        let m = self.link_offer_mailbox().await?;
        LinkOffer::listen(&mut self.dialer, &m).await
    }

    /// Register a mailbox for a link only (with a throwaway key), mint a
    /// token for it, and make the code that reaches it.
    pub async fn link_offer_mailbox(&mut self) -> Result<OfferMailbox, ClientError> {
        let url: RelayUrl = self.profile.relay_url.parse()?;
        let auth = RootKey::generate();
        let link = self.dialer.connect(&url).await?;
        let mailbox = link.register(auth.public()).await?;
        link.close();
        let link = self
            .dialer
            .connect_authenticated(&url, &mailbox, |m| auth.sign(m))
            .await?;
        let token = link.create_token().await?;
        link.close();
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(&random16());
        secret[16..].copy_from_slice(&random16());
        let code = encode_link_code(&pb::LinkCode {
            relay_url: self.profile.relay_url.clone(),
            mailbox_id: mailbox.to_vec().into(),
            send_token: token.to_vec().into(),
            secret: secret.to_vec().into(),
            identity_key: self.account.identity_key().to_vec().into(),
        });
        secret.zeroize();
        Ok(OfferMailbox {
            code,
            auth: *auth.to_bytes(),
        })
    }

    /// Wait (at most `timeout`) for the new device's hello.
    pub async fn link_wait(
        &mut self,
        offer: &mut LinkOffer,
        timeout: Duration,
    ) -> Result<LinkRequest, ClientError> {
        offer.wait(timeout).await
    }

    /// The user confirmed: add the device to the list, send it everything
    /// it needs, and tell every contact and our other devices.
    pub async fn link_accept(
        &mut self,
        offer: LinkOffer,
        request: LinkRequest,
    ) -> Result<super::manage::DeviceInfo, ClientError> {
        let secret = offer.secret;
        offer.close().await;
        self.link_device(&secret, request).await
    }

    /// Add the device whose encoded `DeviceEntry` a `tern device link`
    /// beside this running client received for the link `code` (one this
    /// device offered), after the user confirmed the check code there.
    pub async fn link_add(
        &mut self,
        code: &str,
        entry: &[u8],
    ) -> Result<super::manage::DeviceInfo, ClientError> {
        let bad = || ClientError::Device("a damaged link code or device".into());
        let code = decode_link_code(code).map_err(|_| bad())?;
        let secret = key32(&code.secret).ok_or_else(bad)?;
        if key32(&code.identity_key) != Some(self.account.identity_key()) {
            return Err(ClientError::Device(
                "that link code was offered by another device".into(),
            ));
        }
        let entry = pb::DeviceEntry::decode(entry).map_err(|_| bad())?;
        let device = Device::from_pb(&entry).map_err(|_| bad())?;
        let request = LinkRequest {
            check_code: check_code(&secret, &self.account.identity_key(), &device.identity_key),
            device_name: device.name.clone(),
            device,
        };
        self.link_device(&secret, request).await
    }

    /// Sign the next list naming `request`'s device, send it the bundle
    /// (under the link key of `secret`), and tell everyone.
    async fn link_device(
        &mut self,
        secret: &[u8; 32],
        request: LinkRequest,
    ) -> Result<super::manage::DeviceInfo, ClientError> {
        let mut own = self.own_devices()?;
        let me = self.account.identity_key();
        let mut devices = own.list.devices.clone();
        if devices
            .iter()
            .any(|d| d.identity_key == request.device.identity_key)
        {
            return Err(ClientError::Device(
                "that device is on the list already".into(),
            ));
        }
        // Our other devices write to us with a shared token: mint ours if
        // this device has none yet.
        if devices
            .iter()
            .any(|d| d.identity_key == me && d.token.is_none())
        {
            let token = self.mint_own_token().await?;
            for d in devices.iter_mut().filter(|d| d.identity_key == me) {
                d.token = Some(token);
            }
        }
        let mut new = request.device.clone();
        new.added_at_ms = now_ms();
        devices.push(new.clone());
        if devices.len() > super::list::MAX_DEVICES {
            return Err(ClientError::Device(
                "the account has the most devices it may have".into(),
            ));
        }
        let next = super::list::sign_list(&own.root(), own.list.version + 1, devices.clone());
        let mut bundle = pb::LinkBundle {
            root_secret: own.root_secret.to_vec().into(),
            list: Some(next.signed()),
            name: self.profile.name.clone(),
            contacts: Vec::new(),
            groups: Vec::new().into(),
            settings: serde_json::to_vec(&self.store.settings()?)?.into(),
            extra: self.link_extra()?.into(),
        };
        let mut copies = Vec::new();
        for c in self.store.contacts()? {
            copies.push(self.contact_copy(&c)?);
        }
        let rest = fill_bundle(&mut bundle, copies, BUNDLE_BUDGET);
        // Groups in what room is left; the rest follow through Olm.
        let room = BUNDLE_BUDGET.saturating_sub(bundle.encoded_len() + 16);
        let (groups, more_groups) = self.link_groups(room)?;
        bundle.groups = groups.into();
        let payload = link_key(secret).encrypt(BUNDLE_AAD, &bundle.encode_to_vec());
        let token = new
            .token
            .ok_or_else(|| ClientError::Device("the new device gave no token".into()))?;
        deposit(self, &new.relay_url, new.mailbox_id, token, payload).await?;
        // The list as sent; publish_list signs the next version for everyone.
        own.list.version = next.version - 1;
        self.publish_list(own, devices)?;
        // Contacts that did not fit follow through the Olm channel.
        if !rest.is_empty() {
            self.send_contacts_to(&new, rest)?;
        }
        if !more_groups.is_empty() {
            if let Some(t) = super::Target::of_device(&new) {
                for u in more_groups {
                    self.send_control_to_device(&t, pb::content::Body::GroupUpdate(u))?;
                }
            }
        }
        self.store.flush().await?;
        let _ = self.flush_outbox().await;
        Ok(super::manage::DeviceInfo {
            id: new.id_hex(),
            name: new.name.clone(),
            this_device: false,
            relay: new.relay_url.clone(),
            added_at_ms: new.added_at_ms,
        })
    }

    /// What rides in `LinkBundle.extra`: the account history key (32
    /// bytes) when history is on, so the new device uploads to and
    /// restores from the same history account; empty when it is off.
    fn link_extra(&self) -> Result<Vec<u8>, ClientError> {
        if self.store.settings()?.history_days == 0 {
            return Ok(Vec::new());
        }
        Ok(self.history_key_bundle()?.to_vec())
    }

    /// Contact copies for the new device `d` (already on our list), each
    /// as a `DeviceSync` through the outbox.
    fn send_contacts_to(
        &self,
        d: &Device,
        copies: Vec<pb::DeviceContactCopy>,
    ) -> Result<(), ClientError> {
        let Some(t) = super::Target::of_device(d) else {
            return Ok(());
        };
        for c in copies {
            let Some(s) = self.session_for(&t)? else {
                return Ok(());
            };
            let body = pb::content::Body::DeviceSync(pb::DeviceSync {
                contact: Some(c),
                ..Default::default()
            });
            let content = crate::layers::content(random16(), now_ms(), body);
            self.enqueue_to(&t, s, &content, None, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_codes_are_six_digits_and_depend_on_every_input() {
        let c = check_code(&[1; 32], &[2; 32], &[3; 32]);
        assert_eq!(c.len(), 6);
        assert!(c.chars().all(|x| x.is_ascii_digit()));
        assert_eq!(c, check_code(&[1; 32], &[2; 32], &[3; 32]));
        assert_ne!(c, check_code(&[9; 32], &[2; 32], &[3; 32]));
        assert_ne!(c, check_code(&[1; 32], &[2; 32], &[4; 32]));
        assert_ne!(c, check_code(&[1; 32], &[4; 32], &[3; 32]));
    }

    #[test]
    fn contacts_that_do_not_fit_the_bundle_are_left_for_later_in_order() {
        let copy = |n: u8| pb::DeviceContactCopy {
            name: format!("c{n}"),
            identity_key: vec![n; 32].into(),
            device_list: Some(pb::DeviceSignedList {
                list: vec![n; 700].into(),
                signature: vec![n; 64].into(),
            }),
            ..Default::default()
        };
        let mut bundle = pb::LinkBundle {
            root_secret: vec![1; 32].into(),
            ..Default::default()
        };
        let rest = fill_bundle(&mut bundle, (0..100).map(copy).collect(), 20_000);
        assert!(bundle.encoded_len() <= 20_000);
        assert!(!bundle.contacts.is_empty() && !rest.is_empty());
        assert_eq!(bundle.contacts.len() + rest.len(), 100);
        let n = bundle.contacts.len();
        assert_eq!(bundle.contacts[n - 1].name, format!("c{}", n - 1));
        assert_eq!(rest[0].name, format!("c{n}"));
        // Everything fits a large enough budget.
        let mut all = pb::LinkBundle::default();
        assert!(fill_bundle(&mut all, (0..3).map(copy).collect(), 48 * 1024).is_empty());
        assert_eq!(all.contacts.len(), 3);
    }

    #[test]
    fn the_link_key_opens_only_its_own_messages() {
        let k = link_key(&[7; 32]);
        let sealed = k.encrypt(HELLO_AAD, b"hello");
        assert_eq!(k.decrypt(HELLO_AAD, &sealed).unwrap(), b"hello");
        assert!(k.decrypt(BUNDLE_AAD, &sealed).is_err());
        assert!(link_key(&[8; 32]).decrypt(HELLO_AAD, &sealed).is_err());
    }
}
