//! The client: an account on a home relay, contacts made by invite, sending
//! through an on-disk outbox, and receiving into the local store. Every
//! operation is safe to interrupt: what was sent is in the outbox until a
//! relay has it durably, and what was received is stored (with the ratchet
//! state that decrypted it) before it is acknowledged.

use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::store::{
    message_key, Contact, ContactId, LocalStore, OutboxItem, Profile, Status, StoredMessage,
};
use crate::transport::{Dialer, MessageStream, Outgoing, RelayLink};
use prost::Message;
use rand::RngCore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tern_crypto::{DeviceAccount, OlmCiphertext, PairSession, StoreKey};
use tern_protocol::invite::{decode_invite, encode_invite, validate_address};
use tern_protocol::pb::{self, content::Body, relay_frame::Frame};
use tern_protocol::url::RelayUrl;
use tern_protocol::{limits, ErrorCode, WireError};
use tracing::{debug, warn};

const KEY_FILE: &str = "store.key";
const STORE_DIR: &str = "store";
/// How many times one outbox flush waits for a relay that asked for a pause.
const OUTBOX_RETRY_ROUNDS: usize = 3;
/// The longest pause one outbox flush waits for.
const MAX_OUTBOX_WAIT: Duration = Duration::from_secs(5);
/// Envelopes processed between one durable flush-and-ack and the next.
const ACK_BATCH: usize = 64;

/// Something that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text message from a contact.
    Message(ReceivedMessage),
    /// Someone accepted one of our invites and is now a contact.
    ContactAdded {
        /// The name they gave (made unique among contacts).
        name: String,
    },
}

/// A message as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Message id, hex.
    pub id: String,
    /// Contact name.
    pub from: String,
    /// The text.
    pub text: String,
    /// When the sender wrote it, ms since the epoch.
    pub sent_at_ms: u64,
    /// When our home relay accepted it, ms since the epoch.
    pub received_at_ms: u64,
}

/// What became of the outbox.
#[derive(Debug, Default, Clone)]
pub struct OutboxReport {
    /// Ids (hex) now held durably by their relays.
    pub sent: Vec<String>,
    /// Ids refused for good, with the refusal.
    pub failed: Vec<(String, WireError)>,
    /// Ids still waiting, with why.
    pub queued: Vec<(String, String)>,
}

/// The result of sending one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The contact's relay holds it durably.
    Sent,
    /// It waits in the outbox; the reason it could not go yet.
    Queued(String),
}

/// A Tern device: its account, store and relay connections.
pub struct Client {
    home: PathBuf,
    key: StoreKey,
    store: LocalStore,
    account: DeviceAccount,
    profile: Profile,
    dialer: Dialer,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random16() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

impl Client {
    /// Create an account in `home`, registering a mailbox on `relay`.
    pub async fn init(home: &Path, relay: &RelayUrl, name: &str) -> Result<Self, ClientError> {
        let key_path = home.join(KEY_FILE);
        if key_path.exists() {
            return Err(ClientError::AccountExists(home.to_path_buf()));
        }
        let account = DeviceAccount::new();
        let mut dialer = Dialer::default();
        let link = dialer.connect(relay).await?;
        let mailbox_id = link.register(account.signing_key()).await?;
        link.close();

        std::fs::create_dir_all(home).map_err(io_err(home))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        }
        let key = StoreKey::generate();
        write_secret(&key_path, &key.to_bytes())?;
        let store = LocalStore::open(&home.join(STORE_DIR), key.clone())?;
        let profile = Profile {
            name: name.to_string(),
            relay_url: relay.to_string(),
            mailbox_id,
        };
        store.set_account_pickle(account.to_encrypted_pickle(&key))?;
        store.set_profile(&profile)?;
        store.flush().await?;
        Ok(Self {
            home: home.to_path_buf(),
            key,
            store,
            account,
            profile,
            dialer,
        })
    }

    /// Open the account in `home`.
    pub fn open(home: &Path) -> Result<Self, ClientError> {
        let key_path = home.join(KEY_FILE);
        if !key_path.exists() {
            return Err(ClientError::NoAccount(home.to_path_buf()));
        }
        let raw = std::fs::read(&key_path).map_err(io_err(&key_path))?;
        let bytes = key32(&raw).ok_or_else(|| ClientError::Store("store.key is damaged".into()))?;
        let key = StoreKey::from_bytes(bytes);
        let store = LocalStore::open(&home.join(STORE_DIR), key.clone())?;
        let pickle = store
            .account_pickle()?
            .ok_or_else(|| ClientError::NoAccount(home.into()))?;
        let account = DeviceAccount::from_encrypted_pickle(&pickle, &key)?;
        let profile = store
            .profile()?
            .ok_or_else(|| ClientError::NoAccount(home.into()))?;
        Ok(Self {
            home: home.to_path_buf(),
            key,
            store,
            account,
            profile,
            dialer: Dialer::default(),
        })
    }

    /// This device's profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.store.contacts()
    }

    fn save_account(&self) -> Result<(), ClientError> {
        self.store
            .set_account_pickle(self.account.to_encrypted_pickle(&self.key))
    }

    async fn home_link(&mut self) -> Result<RelayLink, ClientError> {
        let url: RelayUrl = self.profile.relay_url.parse()?;
        let link = self.dialer.connect(&url).await?;
        let account = &self.account;
        link.authenticate(&self.profile.mailbox_id, |m| account.sign(m))
            .await?;
        Ok(link)
    }

    fn my_address(&self, token: [u8; 32]) -> pb::Address {
        pb::Address {
            relay_url: self.profile.relay_url.clone(),
            mailbox_id: self.profile.mailbox_id.to_vec().into(),
            send_token: token.to_vec().into(),
        }
    }

    /// Make an invite code: a fresh send token and one-time key for whoever
    /// accepts it.
    pub async fn invite(&mut self) -> Result<String, ClientError> {
        let link = self.home_link().await?;
        let token = link.create_token().await?;
        link.close();
        let one_time_key = self.account.new_one_time_key();
        self.save_account()?;
        self.store.flush().await?;
        Ok(encode_invite(&pb::Invite {
            address: Some(self.my_address(token)),
            identity_key: self.account.identity_key().to_vec().into(),
            signing_key: self.account.signing_key().to_vec().into(),
            one_time_key: one_time_key.to_vec().into(),
            name: self.profile.name.clone(),
            seal_key: self.account.seal_public().to_vec().into(),
        }))
    }

    /// Accept an invite code, adding its maker as `name`. The maker learns
    /// of us from the hello this sends (now, or from the outbox later).
    pub async fn accept(&mut self, code: &str, name: &str) -> Result<Contact, ClientError> {
        let invite = decode_invite(code)?;
        let url = validate_address(invite.address.as_ref())?;
        let bad = |what| ClientError::Invite(tern_protocol::invite::InviteError::Field(what));
        let identity_key = key32(&invite.identity_key).ok_or(bad("identity key"))?;
        let one_time_key = key32(&invite.one_time_key).ok_or(bad("one-time key"))?;
        let signing_key = key32(&invite.signing_key).ok_or(bad("signing key"))?;
        let seal_key = key32(&invite.seal_key).ok_or(bad("seal key"))?;
        tern_crypto::validate_seal_public(&seal_key)?;
        if self.store.contact_named(name)?.is_some() {
            return Err(ClientError::ContactExists(name.to_string()));
        }
        if let Some(c) = self.store.contact(&identity_key)? {
            return Err(ClientError::ContactExists(c.name));
        }
        let address = invite.address.unwrap_or_default();
        let send_token = key32(&address.send_token).ok_or(bad("send token"))?;
        let mailbox_id = address.mailbox_id[..]
            .try_into()
            .map_err(|_| bad("mailbox id"))?;
        let session = self.account.start_session(&identity_key, &one_time_key)?;

        let link = self.home_link().await?;
        let my_token = link.create_token().await?;
        link.close();

        let contact = Contact {
            name: name.to_string(),
            identity_key,
            signing_key,
            seal_key,
            relay_url: url.to_string(),
            mailbox_id,
            send_token,
            token_given: Some(my_token),
            added_at_ms: now_ms(),
        };
        self.store.put_contact(&contact)?;
        let hello = Body::Hello(pb::ContactHello {
            name: self.profile.name.clone(),
            reply_to: Some(self.my_address(my_token)),
            signing_key: self.account.signing_key().to_vec().into(),
            seal_key: self.account.seal_public().to_vec().into(),
            invite_token: send_token.to_vec().into(),
        });
        self.enqueue(&contact, session, random16(), hello, None)?;
        self.store.flush().await?;
        let _ = self.flush_outbox().await;
        Ok(contact)
    }

    /// Encrypt `body` for `contact` and put it in the outbox together with
    /// the advanced session (and the conversation entry, for texts).
    fn enqueue(
        &self,
        contact: &Contact,
        mut session: PairSession,
        id: [u8; 16],
        body: Body,
        entry: Option<(&[u8], &StoredMessage)>,
    ) -> Result<(), ClientError> {
        let content = pb::Content {
            message_id: id.to_vec().into(),
            sent_at_ms: entry.map(|(_, m)| m.sent_at_ms).unwrap_or_else(now_ms),
            body: Some(body),
        };
        let olm = session.encrypt(&content.encode_to_vec());
        let sealed = pb::Sealed {
            sender_identity_key: self.account.identity_key().to_vec().into(),
            olm_type: olm.olm_type,
            olm_ciphertext: olm.body.into(),
        };
        let payload = tern_crypto::seal(&contact.seal_key, &sealed.encode_to_vec());
        if payload.len() > limits::DEFAULT_MAX_ENVELOPE {
            return Err(ClientError::TooLarge {
                size: payload.len(),
                max: limits::DEFAULT_MAX_ENVELOPE,
            });
        }
        let item = OutboxItem {
            position: self.store.next_position()?,
            message_id: id,
            contact: contact.identity_key,
            message_key: entry.map(|(k, _)| k.to_vec()),
            relay_url: contact.relay_url.clone(),
            mailbox_id: contact.mailbox_id,
            token: contact.send_token,
            payload,
        };
        self.store
            .commit_outgoing(&session.to_encrypted_pickle(&self.key), entry, &item)
    }

    fn load_session(&self, contact: &ContactId) -> Result<Option<PairSession>, ClientError> {
        match self.store.session(contact)? {
            Some(p) => Ok(Some(PairSession::from_encrypted_pickle(&p, &self.key)?)),
            None => Ok(None),
        }
    }

    /// Send a text to the contact named `to`. It is in the outbox (on disk)
    /// before anything goes out; returns its id and whether it reached the
    /// contact's relay now or waits for a later flush.
    pub async fn send_text(
        &mut self,
        to: &str,
        text: &str,
    ) -> Result<(String, SendOutcome), ClientError> {
        let contact = self
            .store
            .contact_named(to)?
            .ok_or_else(|| ClientError::UnknownContact(to.into()))?;
        let session = self
            .load_session(&contact.identity_key)?
            .ok_or_else(|| ClientError::Store(format!("no session with {to}")))?;
        let id = random16();
        let at = now_ms();
        let entry = StoredMessage {
            id: hex::encode(id),
            contact: contact.identity_key,
            outgoing: true,
            text: text.to_string(),
            sent_at_ms: at,
            stored_at_ms: at,
            status: Status::Queued,
        };
        let key = message_key(&contact.identity_key, at, &id);
        self.enqueue(
            &contact,
            session,
            id,
            Body::Text(pb::Text { body: text.into() }),
            Some((&key, &entry)),
        )?;
        self.store.flush().await?;
        let report = self.flush_outbox().await?;
        let hex_id = hex::encode(id);
        if let Some((_, e)) = report.failed.iter().find(|(i, _)| *i == hex_id) {
            return Err(ClientError::Refused(e.clone()));
        }
        if report.sent.contains(&hex_id) {
            return Ok((hex_id, SendOutcome::Sent));
        }
        let reason = report
            .queued
            .iter()
            .find(|(i, _)| *i == hex_id)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| "not attempted".into());
        Ok((hex_id, SendOutcome::Queued(reason)))
    }

    /// Try to deliver everything in the outbox, relay by relay. A relay that
    /// asks us to slow down (`RATE_LIMITED`, `STORAGE_UNAVAILABLE` with a
    /// short `retry_after`) is waited for and tried again, a few times.
    pub async fn flush_outbox(&mut self) -> Result<OutboxReport, ClientError> {
        let mut report = OutboxReport::default();
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_OUTBOX_WAIT);
        for round in 0..=OUTBOX_RETRY_ROUNDS {
            let (r, wait) = self.flush_round().await?;
            report.sent.extend(r.sent);
            report.failed.extend(r.failed);
            report.queued = r.queued;
            match wait {
                Some(w) if round < OUTBOX_RETRY_ROUNDS && !report.queued.is_empty() => {
                    let delay = backoff.next_delay(Some(w));
                    debug!("relay asked to slow down; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                _ => break,
            }
        }
        self.store.flush().await?;
        Ok(report)
    }

    /// One pass over the outbox. Returns what happened and, if a relay asked
    /// for a short pause, how long.
    async fn flush_round(&mut self) -> Result<(OutboxReport, Option<Duration>), ClientError> {
        let mut by_relay: BTreeMap<String, Vec<OutboxItem>> = BTreeMap::new();
        for item in self.store.outbox()? {
            by_relay
                .entry(item.relay_url.clone())
                .or_default()
                .push(item);
        }
        let mut report = OutboxReport::default();
        let mut wait: Option<Duration> = None;
        for (relay, items) in by_relay {
            let results = match self.deposit(&relay, &items).await {
                Ok(r) => r,
                Err(e) => {
                    debug!("outbox for {relay} stays queued: {e}");
                    let reason = e.to_string();
                    report.queued.extend(
                        items
                            .iter()
                            .map(|i| (hex::encode(i.message_id), reason.clone())),
                    );
                    continue;
                }
            };
            for (item, result) in items.iter().zip(results) {
                let id = hex::encode(item.message_id);
                match result {
                    Some(Ok(_)) => {
                        self.store.settle(item, Status::Sent)?;
                        report.sent.push(id);
                    }
                    Some(Err(e)) if e.is_retryable() => {
                        let after = Duration::from_millis(e.retry_after_ms);
                        let pause = matches!(
                            e.code,
                            ErrorCode::RateLimited | ErrorCode::StorageUnavailable
                        );
                        if pause && after <= MAX_OUTBOX_WAIT {
                            wait = Some(wait.map_or(after, |w| w.max(after)));
                        }
                        report.queued.push((id, e.to_string()));
                    }
                    Some(Err(e)) => {
                        self.store.settle(item, Status::Failed(e.to_string()))?;
                        report.failed.push((id, e));
                    }
                    None => report
                        .queued
                        .push((id, "waiting for an earlier message to this contact".into())),
                }
            }
        }
        Ok((report, wait))
    }

    /// Deposit `items` (in outbox order) on one relay. Each mailbox's first
    /// item goes first and the rest only once it is stored, so a contact's
    /// introduction can never land after the texts that depend on it (a rate
    /// limit may refuse one send of a pipelined batch and pass the next).
    /// `None` for an item held back this time.
    async fn deposit(
        &mut self,
        relay: &str,
        items: &[OutboxItem],
    ) -> Result<Vec<Option<Result<u64, WireError>>>, ClientError> {
        let url: RelayUrl = relay.parse()?;
        let link = self.dialer.connect(&url).await?;
        let mut stream = link.messages().await?;
        let outgoing = |i: &OutboxItem| Outgoing {
            mailbox: i.mailbox_id,
            token: i.token,
            message_id: i.message_id,
            payload: i.payload.clone(),
        };
        let mut results: Vec<Option<Result<u64, WireError>>> = vec![None; items.len()];
        let mut seen = std::collections::HashSet::new();
        let (firsts, rest): (Vec<usize>, Vec<usize>) =
            (0..items.len()).partition(|&i| seen.insert(items[i].mailbox_id));
        for chunk in firsts.chunks(256) {
            let batch: Vec<Outgoing> = chunk.iter().map(|&i| outgoing(&items[i])).collect();
            for (&i, r) in chunk.iter().zip(stream.send_all(&batch).await?) {
                results[i] = Some(r);
            }
        }
        let stored: std::collections::HashSet<[u8; 16]> = firsts
            .iter()
            .filter(|&&i| matches!(results[i], Some(Ok(_))))
            .map(|&i| items[i].mailbox_id)
            .collect();
        let rest: Vec<usize> = rest
            .into_iter()
            .filter(|&i| stored.contains(&items[i].mailbox_id))
            .collect();
        for chunk in rest.chunks(256) {
            let batch: Vec<Outgoing> = chunk.iter().map(|&i| outgoing(&items[i])).collect();
            for (&i, r) in chunk.iter().zip(stream.send_all(&batch).await?) {
                results[i] = Some(r);
            }
        }
        stream.finish(Duration::from_secs(2)).await;
        link.close();
        Ok(results)
    }

    /// Fetch everything waiting on the home relay, store it, acknowledge it,
    /// and keep listening for `wait` more. Returns what arrived.
    pub async fn receive(&mut self, wait: Duration) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        self.pump(Some(wait), &mut |e| events.push(e)).await?;
        Ok(events)
    }

    /// Stay connected and hand each arrival to `on_event`, reconnecting with
    /// backoff when the relay goes away. Runs until the future is dropped.
    pub async fn listen(
        &mut self,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let _ = self.flush_outbox().await;
            match self.pump(None, on_event).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let retry = match &e {
                        ClientError::Refused(w) => Some(Duration::from_millis(w.retry_after_ms)),
                        _ => None,
                    };
                    let delay = backoff.next_delay(retry);
                    warn!("relay connection lost ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One connection's worth of receiving. With `wait`, returns once the
    /// backlog is drained and `wait` has passed; without, runs until the
    /// connection ends.
    async fn pump(
        &mut self,
        wait: Option<Duration>,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        let link = self.home_link().await?;
        let mut stream = link.messages().await?;
        stream.subscribe(0).await?;
        let mut deadline: Option<Instant> = None;
        let mut acks = Vec::new();
        let mut shown = Vec::new();
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), stream.next()).await {
                    Ok(n) => n?,
                    Err(_) => break,
                },
                None if !acks.is_empty() => {
                    match tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
                        Ok(n) => n?,
                        Err(_) => {
                            self.settle(&mut stream, &mut acks, &mut shown, on_event)
                                .await?;
                            continue;
                        }
                    }
                }
                None => stream.next().await?,
            };
            match next {
                Some(Frame::Envelope(env)) => {
                    let seq = env.seq;
                    if let Some(event) = self.accept_envelope(env)? {
                        shown.push(event);
                    }
                    if seq != 0 {
                        acks.push(seq);
                    }
                    if acks.len() >= ACK_BATCH {
                        self.settle(&mut stream, &mut acks, &mut shown, on_event)
                            .await?;
                    }
                }
                Some(Frame::CaughtUp(_)) => {
                    self.settle(&mut stream, &mut acks, &mut shown, on_event)
                        .await?;
                    if let Some(w) = wait {
                        deadline = Some(Instant::now() + w);
                    }
                }
                Some(Frame::Error(e)) => return Err(ClientError::Refused(e.into())),
                Some(Frame::SendResult(_)) => {}
                None => {
                    return Err(ClientError::Unreachable {
                        relay: self.profile.relay_url.clone(),
                        reason: "relay closed the stream".into(),
                    })
                }
            }
        }
        self.settle(&mut stream, &mut acks, &mut shown, on_event)
            .await?;
        stream.finish(Duration::from_secs(2)).await;
        link.close();
        Ok(())
    }

    /// Make what was received durable, then show it, then acknowledge it.
    /// Showing only after the flush means a crash cannot show a message that
    /// the next run would show again; acking only after it means a crash
    /// cannot lose one.
    async fn settle(
        &self,
        stream: &mut MessageStream,
        acks: &mut Vec<u64>,
        shown: &mut Vec<Event>,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        self.store.flush().await?;
        for e in shown.drain(..) {
            on_event(e);
        }
        if !acks.is_empty() {
            stream.ack(std::mem::take(acks)).await?;
        }
        Ok(())
    }

    /// Open, decrypt and store one envelope. Envelopes that cannot be read
    /// (damaged, replayed, from strangers without a hello) are dropped: they
    /// can never become readable, and keeping them would block the mailbox.
    fn accept_envelope(&mut self, env: pb::Envelope) -> Result<Option<Event>, ClientError> {
        if let Ok(outer_id) = <[u8; 16]>::try_from(&env.message_id[..]) {
            if self.store.seen(&outer_id)? {
                debug!("dropping a message stored before");
                return Ok(None);
            }
        }
        let Some((sender, olm)) = self.unseal(&env.payload) else {
            warn!("dropping an envelope that does not open");
            return Ok(None);
        };
        let known = self.store.contact(&sender)?;
        let existing = match &known {
            Some(c) => self.load_session(&c.identity_key)?,
            None => None,
        };
        // A first message uses up a one-time key. It is used up on a copy of
        // the account that replaces this one only once the message is
        // stored, so a message that turns out unusable burns no key.
        let (session, plaintext, account) = match existing {
            Some(mut s) if !olm.is_pre_key() || s.matches_pre_key(&olm) => match s.decrypt(&olm) {
                Ok(p) => (s, p, None),
                Err(e) => {
                    warn!("dropping a message that does not decrypt: {e}");
                    return Ok(None);
                }
            },
            _ if olm.is_pre_key() => {
                let pickle = self.account.to_encrypted_pickle(&self.key);
                let mut candidate = DeviceAccount::from_encrypted_pickle(&pickle, &self.key)?;
                match candidate.accept_session(&sender, &olm.body) {
                    Ok((s, p)) => (s, p, Some(candidate)),
                    Err(e) => {
                        warn!("dropping a first message that does not decrypt: {e}");
                        return Ok(None);
                    }
                }
            }
            _ => {
                warn!("dropping a message from an unknown sender");
                return Ok(None);
            }
        };
        let Ok(content) = pb::Content::decode(&plaintext[..]) else {
            warn!("dropping a message with unreadable content");
            return Ok(None);
        };
        let Ok(id) = <[u8; 16]>::try_from(&content.message_id[..]) else {
            warn!("dropping a message without an id");
            return Ok(None);
        };
        if self.store.seen(&id)? {
            return Ok(None);
        }
        let pickle = session.to_encrypted_pickle(&self.key);
        let (contact, new_contact, event, entry) = match (content.body, known) {
            (Some(Body::Hello(h)), None) => {
                let Some(contact) = self.contact_from_hello(sender, h)? else {
                    warn!("dropping a malformed introduction");
                    return Ok(None);
                };
                let event = Event::ContactAdded {
                    name: contact.name.clone(),
                };
                (contact, true, Some(event), None)
            }
            (Some(Body::Hello(_)), Some(c)) => (c, false, None, None),
            (Some(Body::Text(t)), Some(c)) => {
                let at = now_ms();
                let entry = StoredMessage {
                    id: hex::encode(id),
                    contact: c.identity_key,
                    outgoing: false,
                    text: t.body.clone(),
                    sent_at_ms: content.sent_at_ms,
                    stored_at_ms: at,
                    status: Status::Received,
                };
                let event = Event::Message(ReceivedMessage {
                    id: hex::encode(id),
                    from: c.name.clone(),
                    text: t.body,
                    sent_at_ms: content.sent_at_ms,
                    received_at_ms: env.received_at_ms,
                });
                (c, false, Some(event), Some(entry))
            }
            (_, _) => {
                warn!("dropping a message that is neither text nor introduction");
                return Ok(None);
            }
        };
        let key = entry
            .as_ref()
            .map(|m| message_key(&contact.identity_key, m.sent_at_ms, &id));
        let entry_ref = match (&key, &entry) {
            (Some(k), Some(m)) => Some((&k[..], m)),
            _ => None,
        };
        self.store
            .commit_incoming(&contact, new_contact, &pickle, &id, entry_ref)?;
        if let Some(account) = account {
            // Saved after the message, so a crash in between cannot lose it
            // (the one-time key would be gone before the message is stored).
            self.account = account;
            self.save_account()?;
        }
        Ok(event)
    }

    fn unseal(&self, payload: &[u8]) -> Option<([u8; 32], OlmCiphertext)> {
        let opened = tern_crypto::open(self.account.seal_key(), payload).ok()?;
        let sealed = pb::Sealed::decode(&opened[..]).ok()?;
        let sender = key32(&sealed.sender_identity_key)?;
        Some((
            sender,
            OlmCiphertext {
                olm_type: sealed.olm_type,
                body: sealed.olm_ciphertext.to_vec(),
            },
        ))
    }

    fn contact_from_hello(
        &self,
        sender: [u8; 32],
        h: pb::ContactHello,
    ) -> Result<Option<Contact>, ClientError> {
        let Ok(url) = validate_address(h.reply_to.as_ref()) else {
            return Ok(None);
        };
        let address = h.reply_to.unwrap_or_default();
        let (Some(signing_key), Some(seal_key), Some(send_token), Ok(mailbox_id)) = (
            key32(&h.signing_key),
            key32(&h.seal_key),
            key32(&address.send_token),
            <[u8; 16]>::try_from(&address.mailbox_id[..]),
        ) else {
            return Ok(None);
        };
        if tern_crypto::validate_seal_public(&seal_key).is_err() {
            return Ok(None);
        }
        Ok(Some(Contact {
            name: self.unique_name(&h.name)?,
            identity_key: sender,
            signing_key,
            seal_key,
            relay_url: url.to_string(),
            mailbox_id,
            send_token,
            token_given: key32(&h.invite_token),
            added_at_ms: now_ms(),
        }))
    }

    fn unique_name(&self, wanted: &str) -> Result<String, ClientError> {
        let base: String = wanted
            .chars()
            .filter(|c| !c.is_control())
            .take(tern_protocol::invite::MAX_NAME_LEN)
            .collect();
        let base = if base.trim().is_empty() {
            "contact".to_string()
        } else {
            base
        };
        let mut name = base.clone();
        let mut n = 2;
        while self.store.contact_named(&name)?.is_some() {
            name = format!("{base}-{n}");
            n += 1;
        }
        Ok(name)
    }

    /// Block a contact: revoke the send token we gave them, so the relay
    /// refuses anything further they send.
    pub async fn block(&mut self, name: &str) -> Result<(), ClientError> {
        let contact = self
            .store
            .contact_named(name)?
            .ok_or_else(|| ClientError::UnknownContact(name.into()))?;
        let token = contact
            .token_given
            .ok_or_else(|| ClientError::Store(format!("no token on record for {name}")))?;
        let link = self.home_link().await?;
        link.revoke_token(&token).await?;
        link.close();
        Ok(())
    }

    /// The last `limit` messages with the contact named `name`, oldest first.
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<StoredMessage>, ClientError> {
        let contact = self
            .store
            .contact_named(name)?
            .ok_or_else(|| ClientError::UnknownContact(name.into()))?;
        self.store.history(&contact.identity_key, limit)
    }

    /// Close relay connections politely (bounded wait); call before exiting.
    pub async fn close(self) {
        self.dialer.wait_idle(Duration::from_secs(1)).await;
    }

    /// Messages still waiting in the outbox.
    pub fn outbox_len(&self) -> Result<usize, ClientError> {
        Ok(self.store.outbox()?.len())
    }
}
