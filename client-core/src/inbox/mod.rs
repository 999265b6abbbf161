//! Receiving: envelopes pushed by the home relay are opened
//! ([`crate::layers`]), stored, shown and acknowledged, in that order.
//!
//! The rules are pure, in `rules`: `rules::decide` says, for an opened
//! message, what to store and what to show; every envelope is acknowledged
//! once what it carried is durable, including the ones dropped (damaged,
//! replayed, from strangers without a hello): they can never become
//! readable, and keeping them would block the mailbox. Only a failure of
//! our own store leaves an envelope unacknowledged, for the next run.

pub(crate) mod rules;

use crate::backoff::Backoff;
use crate::client::{now_ms, Client};
use crate::devices::Sender;
use crate::error::ClientError;
use crate::event::Event;
use crate::layers::{self, SessionChoice};
use crate::store::message_key;
use crate::transport::{MessageStream, RelayLink, FETCH_TIMEOUT};
use rules::{ack_of, decide, Verdict};
use std::time::{Duration, Instant};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::{self, content::Body, relay_frame::Frame};
use tracing::{debug, warn};

/// Envelopes processed between one durable flush-and-ack and the next.
const ACK_BATCH: usize = 64;
/// With acks pending and the relay quiet this long, settle them.
pub(crate) const SETTLE_IDLE: Duration = Duration::from_millis(20);

/// Received envelopes not yet settled: their acks and what they show.
#[derive(Default)]
pub(crate) struct Intake {
    acks: Vec<u64>,
    shown: Vec<Event>,
    /// Receipt batches were put in the outbox since last asked.
    receipts_queued: bool,
}

impl Intake {
    /// Open and store one envelope, holding its ack and event for
    /// [`Intake::settle`]. Errs only if our store fails.
    pub(crate) fn take(
        &mut self,
        client: &mut Client,
        env: pb::Envelope,
    ) -> Result<(), ClientError> {
        let seq = env.seq;
        if let Some(event) = client.accept_envelope(env)? {
            self.shown.push(event);
        }
        self.acks.extend(ack_of(seq));
        Ok(())
    }

    /// Whether a batch is full and should be settled now.
    pub(crate) fn is_full(&self) -> bool {
        self.acks.len() >= ACK_BATCH
    }

    /// Whether acks wait to be sent or events to be shown (an ephemeral
    /// envelope, a typing notice, has an event and no ack).
    pub(crate) fn has_pending(&self) -> bool {
        !self.acks.is_empty() || !self.shown.is_empty()
    }

    /// Make what was received durable, then show it, then acknowledge it.
    /// Showing only after the flush means a crash cannot show a message that
    /// the next run would show again; acking only after it means a crash
    /// cannot lose one.
    pub(crate) async fn settle(
        &mut self,
        client: &Client,
        stream: &mut MessageStream,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        client.store.flush().await?;
        let read = read_ids(&self.shown);
        for mut e in self.shown.drain(..) {
            // Read already on another of our devices (its DeviceSync came
            // in this batch or before).
            if let Event::Message(m) = &mut e {
                if let Some(id) = hex::decode(&m.id)
                    .ok()
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                {
                    m.read = client.store.was_shown(&id)?;
                }
            }
            on_event(e);
        }
        if !self.acks.is_empty() {
            stream.ack(std::mem::take(&mut self.acks)).await?;
        }
        // What was stored is owed delivered receipts, what was shown read
        // ones: one batch per peer into the outbox. A failure here costs
        // receipts, never messages, so it does not end the connection.
        // Our other devices learn what was read here (queued with them).
        match client
            .note_shown(&read)
            .and_then(|synced| Ok(client.queue_receipts()? > 0 || synced))
        {
            Ok(queued) => self.receipts_queued |= queued,
            Err(e) => warn!("queueing receipts: {e}"),
        }
        Ok(())
    }

    /// Whether receipt batches were queued since the last call (the
    /// running client then flushes the outbox).
    pub(crate) fn take_receipts_queued(&mut self) -> bool {
        std::mem::take(&mut self.receipts_queued)
    }
}

/// The ids of the messages among `shown` (the user sees them now).
fn read_ids(shown: &[Event]) -> Vec<([u8; 16], Option<crate::store::ContactId>)> {
    shown
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => hex::decode(&m.id).ok()?.try_into().ok(),
            _ => None,
        })
        .map(|id| (id, None))
        .collect()
}

impl Intake {
    /// The connection is gone with these acks: show what was stored (once
    /// it is durable), and leave the envelopes to the relay, which pushes
    /// them again on the next connection; they are then dropped as stored
    /// before.
    pub(crate) async fn abandon(self, client: &Client, on_event: &mut (dyn FnMut(Event) + Send)) {
        if client.store.flush().await.is_ok() {
            self.shown.into_iter().for_each(on_event);
        }
    }
}

impl Client {
    /// Fetch everything waiting on the home relay, store it, acknowledge it,
    /// and keep listening for `wait` more. Returns what arrived.
    pub async fn receive(&mut self, wait: Duration) -> Result<Vec<Event>, ClientError> {
        let mut events = Vec::new();
        self.pump(Some(wait), &mut |e| events.push(e)).await?;
        // Group work that needs the network: our card for groups we were
        // added to, and the control messages receiving queued.
        self.publish_group_cards().await?;
        self.forward_group_news()?;
        if std::mem::take(&mut self.group_news) {
            let _ = self.flush_outbox().await?;
        }
        Ok(events)
    }

    /// Stay connected and hand each arrival to `on_event`, reconnecting with
    /// backoff when the relay goes away. Runs until the future is dropped.
    /// (An app that also sends uses [`crate::spawn`] instead.)
    pub async fn listen(
        &mut self,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), ClientError> {
        let mut backoff = reconnect_backoff();
        loop {
            let _ = self.flush_outbox().await;
            match self.pump(None, on_event).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let delay = backoff.next_delay(retry_after(&e));
                    warn!("relay connection lost ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Connect to the home relay and subscribe to our mailbox.
    pub(crate) async fn subscribe_home(
        &mut self,
    ) -> Result<(RelayLink, MessageStream), ClientError> {
        subscribed(self.home_link().await?).await
    }

    /// The error for a home relay stream that ended.
    pub(crate) fn home_closed(&self) -> ClientError {
        ClientError::Unreachable {
            relay: self.profile.relay_url.clone(),
            reason: "relay closed the stream".into(),
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
        let (link, mut stream) = self.subscribe_home().await?;
        // Authenticated anyway: mint tokens ahead of need, and revoke the
        // tokens of invites that expired or were revoked. Neither is a
        // reason to fail receiving.
        if let Err(e) = self.top_up_tokens(&link).await {
            debug!("token pool not topped up: {e}");
        }
        if let Err(e) = self.revoke_stale_tokens(&link).await {
            debug!("stale invite tokens not revoked yet: {e}");
        }
        let mut deadline: Option<Instant> = None;
        let mut caught_up = false;
        let mut intake = Intake::default();
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), stream.next()).await {
                    Ok(n) => n?,
                    Err(_) => break,
                },
                None if intake.has_pending() => {
                    match tokio::time::timeout(SETTLE_IDLE, stream.next()).await {
                        Ok(n) => n?,
                        Err(_) => {
                            intake.settle(self, &mut stream, on_event).await?;
                            continue;
                        }
                    }
                }
                // Until the backlog is pushed, the relay owes frames: a
                // silent one is given up on.
                None if !caught_up => {
                    match tokio::time::timeout(FETCH_TIMEOUT, stream.next()).await {
                        Ok(n) => n?,
                        Err(_) => {
                            return Err(ClientError::TimedOut {
                                relay: self.profile.relay_url.clone(),
                                what: "fetching",
                            })
                        }
                    }
                }
                None => stream.next().await?,
            };
            match next {
                Some(Frame::Envelope(env)) => {
                    intake.take(self, env)?;
                    if intake.is_full() {
                        intake.settle(self, &mut stream, on_event).await?;
                    }
                }
                Some(Frame::CaughtUp(_)) => {
                    caught_up = true;
                    intake.settle(self, &mut stream, on_event).await?;
                    if let Some(w) = wait {
                        deadline = Some(Instant::now() + w);
                    }
                }
                Some(Frame::Error(e)) => return Err(ClientError::Refused(e.into())),
                Some(Frame::SendResult(_) | Frame::SendManyResult(_)) => {}
                None => return Err(self.home_closed()),
            }
        }
        intake.settle(self, &mut stream, on_event).await?;
        stream.finish(Duration::from_secs(2)).await;
        link.close();
        Ok(())
    }

    /// Open, decrypt and store one envelope; the event to show, if any.
    pub(crate) fn accept_envelope(
        &mut self,
        env: pb::Envelope,
    ) -> Result<Option<Event>, ClientError> {
        if let Ok(outer_id) = <[u8; 16]>::try_from(&env.message_id[..]) {
            if self.store.seen(&outer_id)? {
                debug!("dropping a message stored before");
                return Ok(None);
            }
        }
        let Ok(layers::Unsealed { sender, olm }) =
            layers::unseal(self.account.seal_key(), &env.payload)
        else {
            // Not a 1:1 seal: perhaps a group message (groups/receive.rs).
            return self.accept_group_envelope(&env);
        };
        // Which account and device it came from (devices/mod.rs): a device
        // its account's signed list does not name gets nothing read.
        let from = self.resolve_sender(&sender)?;
        if matches!(from, Sender::Refused) {
            warn!("dropping a message from a device not on its account's signed list");
            return Ok(None);
        }
        let own_device = matches!(from, Sender::OwnDevice);
        // Another device of a contact than the one we met: what is about
        // the met device's address (a hello, a token rotation) is not its
        // to say.
        let other_device = matches!(from, Sender::ContactDevice(_));
        // The device we met when we made the contact here keeps the old
        // rule: its new session always replaces ours.
        let met_here = matches!(&from, Sender::Contact(c) if c.token_given.is_some());
        let known = match from {
            Sender::Contact(c) | Sender::ContactDevice(c) => Some(c),
            _ => None,
        };
        // Contacts, their devices, our devices and group members we
        // exchanged messages with.
        let existing = self.load_session(&sender)?;
        // Two devices that met through a list or a group card may start
        // sessions with each other at once: the one started by the lower
        // identity key is kept on both sides, and a pre-key message of the
        // other is read once and not kept (docs/decisions.md, "Group
        // member cards").
        let keep_new = met_here || existing.is_none() || sender < self.account.identity_key();
        // A first message uses up a one-time key. It is used up on a copy of
        // the account that replaces this one only once the message is
        // stored, so a message that turns out unusable burns no key.
        let (session, opened, account) =
            match (layers::choose_session(existing.as_ref(), &olm), existing) {
                (SessionChoice::Existing, Some(mut s)) => {
                    match layers::decrypt_content(&mut s, &olm) {
                        Ok(opened) => (s, opened, None),
                        Err(e) => {
                            warn!("dropping a message: {e}");
                            return Ok(None);
                        }
                    }
                }
                (SessionChoice::New, _) => {
                    let pickle = self.account.to_encrypted_pickle(&self.key);
                    let mut candidate = DeviceAccount::from_encrypted_pickle(&pickle, &self.key)?;
                    match layers::accept_content(&mut candidate, &sender, &olm) {
                        Ok((s, opened)) => (s, opened, Some(candidate)),
                        Err(e) => {
                            warn!("dropping a first message: {e}");
                            return Ok(None);
                        }
                    }
                }
                _ => {
                    warn!("dropping a message from an unknown sender");
                    return Ok(None);
                }
            };
        let id = opened.id;
        if own_device {
            self.accept_from_own(&sender, &session, account, keep_new, opened)?;
            return Ok(None);
        }
        if let (Some(Body::DeviceListUpdate(u)), Some(c)) = (&opened.body, &known) {
            if !self.store.seen(&id)? {
                if let Some(signed) = &u.list {
                    self.apply_peer_list(c, &sender, signed)?;
                }
            }
            self.commit_no_entry(&sender, &session, account, keep_new, &id)?;
            return Ok(None);
        }
        if let (Some(Body::PresenceGrant(g)), Some(c)) = (&opened.body, &known) {
            if !self.store.seen(&id)? && !self.contact_state(&c.identity_key)?.blocked {
                self.accept_presence_grant(&c.identity_key, &sender, g)?;
            }
            self.commit_no_entry(&sender, &session, account, keep_new, &id)?;
            return Ok(None);
        }
        if other_device && matches!(opened.body, Some(Body::Hello(_) | Body::TokenRotation(_))) {
            warn!("dropping a hello or token rotation from a contact's other device");
            self.commit_no_entry(&sender, &session, account, keep_new, &id)?;
            return Ok(None);
        }
        // A hello's device list, kept once the contact is stored.
        let hello_list = match &opened.body {
            Some(Body::Hello(h)) => h.device_list.clone().map(|l| (h.root_key.to_vec(), l)),
            _ => None,
        };
        if matches!(opened.body, Some(Body::GroupUpdate(_) | Body::GroupKey(_))) {
            if !self.store.seen(&id)? {
                if let Some(body) = opened.body {
                    self.group_control(sender, body)?;
                }
            }
            self.commit_no_entry(&sender, &session, account, keep_new, &id)?;
            return Ok(None);
        }
        if known.is_none() && matches!(opened.body, Some(Body::Receipts(_))) {
            // Receipts from a group member who is not a contact (for a
            // group message we sent them): applied, never shown as text.
            let mut event = None;
            let member = match self.store.seen(&id)? {
                true => None,
                false => self.fellow_member(&sender)?,
            };
            if let (Some(member), Some(Body::Receipts(batch))) = (member, &opened.body) {
                let name = self.peer_name(&member)?;
                event = self.apply_receipts(&member, &name, batch)?;
            }
            self.commit_no_entry(&sender, &session, account, keep_new, &id)?;
            return Ok(event);
        }
        let seen = self.store.seen(&id)?;
        let now = now_ms();
        let blocked = match &known {
            Some(c) => self.contact_state(&c.identity_key)?.blocked,
            None => false,
        };
        let mut invite_used = None;
        let mut replaced = None;
        let (contact, new_contact, event, entry) =
            match decide(opened, known, seen, now, env.received_at_ms) {
                _ if blocked => {
                    debug!("dropping a message from a blocked contact");
                    return Ok(None);
                }
                Verdict::Drop { reason, quiet } => {
                    if quiet {
                        debug!("dropping {reason}");
                    } else {
                        warn!("dropping {reason}");
                    }
                    return Ok(None);
                }
                Verdict::Introduce(intro) => {
                    // Only a hello that uses one of our outstanding invites
                    // makes a contact, bound to that invite's token.
                    let invites = self.invites()?;
                    let Some(invite) =
                        crate::invites::usable(&invites, intro.token_given.as_ref(), now)
                    else {
                        warn!("dropping a hello that uses no outstanding invite of ours");
                        return Ok(None);
                    };
                    let mut invite = invite.clone();
                    invite.used_by = Some(sender);
                    // A hello from a new key giving a contact's address:
                    // that contact's key changed (crate::verify).
                    let old = self.store.contacts()?.into_iter().find(|c| {
                        c.relay_url == intro.relay_url && c.mailbox_id == intro.mailbox_id
                    });
                    let mut contact = self.contact_from(sender, intro, now)?;
                    contact.token_given = Some(invite.token);
                    invite_used = Some(self.sealed_invite(&invite)?);
                    let event = match &old {
                        Some(old) => {
                            contact.name = old.name.clone();
                            None
                        }
                        None => Some(Event::ContactAdded {
                            name: contact.name.clone(),
                        }),
                    };
                    replaced = old;
                    (contact, true, event, None)
                }
                Verdict::Rehello(c) => (c, false, None, None),
                // Written again, with the new token.
                Verdict::Rotate(c) => (c, true, None, None),
                Verdict::Text {
                    contact,
                    entry,
                    shown,
                } => {
                    self.direct_news.note_heard(contact.identity_key);
                    (contact, false, Some(Event::Message(shown)), Some(entry))
                }
                Verdict::PathOffer { contact, offer } => {
                    self.direct_news.note_offer(contact.clone(), offer);
                    (contact, false, None, None)
                }
                Verdict::Receipts { contact, batch } => {
                    self.direct_news.note_heard(contact.identity_key);
                    // Applied before the session step is saved: if we stop
                    // in between, the envelope comes again and applying it
                    // again changes nothing.
                    let event =
                        self.apply_receipts(&contact.identity_key, &contact.name, &batch)?;
                    (contact, false, event, None)
                }
                Verdict::Typing(contact) => {
                    let event = env.ephemeral.then(|| Event::Typing {
                        from: contact.name.clone(),
                        group: None,
                    });
                    (contact, false, event, None)
                }
            };
        let key = entry
            .as_ref()
            .map(|m| message_key(&contact.identity_key, m.sent_at_ms, &id));
        let entry_ref = match (&key, &entry) {
            (Some(k), Some(m)) => Some((&k[..], m)),
            _ => None,
        };
        let keep = account.is_none() || keep_new;
        let introduced = invite_used.is_some();
        let pickle = session.to_encrypted_pickle(&self.key);
        let invites = self.store.db().open_tree(crate::invites::TREE)?;
        let extra = invite_used.map(|(k, v)| (&invites, k, v));
        let kept = keep.then_some((&sender, &pickle[..]));
        self.store
            .commit_incoming_with(&contact, new_contact, kept, &id, entry_ref, extra)?;
        if introduced {
            if let Some((root, signed)) = &hello_list {
                match crate::devices::list::accept_first(root, signed, &sender) {
                    Ok(list) => self.put_peer_list(&contact.identity_key, &list)?,
                    Err(e) => warn!("a hello with a bad device list: {e}"),
                }
            }
            // Our other devices get the new contact too.
            if let Err(e) = self.sync_contact(&contact) {
                warn!("new contact not copied to our other devices: {e}");
            }
        }
        if entry.is_some() {
            // A text stored: its sender is owed a delivered receipt.
            self.note_stored(&contact.identity_key, &id)?;
        }
        let event = match &replaced {
            Some(old) => Some(self.change_contact_key(old, &contact)?),
            None => event,
        };
        if let Some(account) = account {
            // Saved after the message, so a crash in between cannot lose it
            // (the one-time key would be gone before the message is stored).
            self.account = account;
            self.save_account()?;
        }
        Ok(event)
    }
}

/// Open the message stream on an authenticated home link and subscribe.
pub(crate) async fn subscribed(link: RelayLink) -> Result<(RelayLink, MessageStream), ClientError> {
    let mut stream = link.messages().await?;
    stream.subscribe(0).await?;
    Ok((link, stream))
}

/// The backoff between reconnects to the home relay.
pub(crate) fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
}

/// A relay's own `retry_after`, if the error carries one.
pub(crate) fn retry_after(e: &ClientError) -> Option<Duration> {
    match e {
        ClientError::Refused(w) => Some(Duration::from_millis(w.retry_after_ms)),
        _ => None,
    }
}

impl Client {
    /// A pairwise message that made no conversation entry (a group control
    /// message, a member's receipts): its session is kept (unless it lost
    /// the race of two new sessions, see `keep_new`) and its id marked
    /// seen, together; then the account, if a one-time key was used.
    fn commit_no_entry(
        &mut self,
        sender: &[u8; 32],
        session: &tern_crypto::PairSession,
        account: Option<DeviceAccount>,
        keep_new: bool,
        id: &[u8; 16],
    ) -> Result<(), ClientError> {
        let keep = account.is_none() || keep_new;
        let pickle = keep.then(|| session.to_encrypted_pickle(&self.key));
        self.store.commit_session(sender, pickle.as_deref(), id)?;
        if let Some(account) = account {
            self.account = account;
            self.save_account()?;
        }
        Ok(())
    }
}
