//! Receiving: envelopes pushed by the home relay are opened
//! ([`crate::layers`]), stored, shown and acknowledged, in that order.
//!
//! The rules are pure and tested below: [`decide`] says, for an opened
//! message, what to store and what to show; every envelope is acknowledged
//! once what it carried is durable, including the ones dropped (damaged,
//! replayed, from strangers without a hello): they can never become
//! readable, and keeping them would block the mailbox. Only a failure of
//! our own store leaves an envelope unacknowledged, for the next run.

use crate::backoff::Backoff;
use crate::client::{now_ms, Client};
use crate::error::ClientError;
use crate::event::{Event, ReceivedMessage};
use crate::layers::{self, Introduction, Opened, SessionChoice};
use crate::store::{message_key, Contact, Status, StoredMessage};
use crate::transport::{MessageStream, RelayLink};
use std::time::{Duration, Instant};
use tern_crypto::DeviceAccount;
use tern_protocol::pb::{self, content::Body, relay_frame::Frame};
use tracing::{debug, warn};

/// Envelopes processed between one durable flush-and-ack and the next.
const ACK_BATCH: usize = 64;
/// With acks pending and the relay quiet this long, settle them.
pub(crate) const SETTLE_IDLE: Duration = Duration::from_millis(20);

/// What to do with a message that opened.
// One short-lived value per envelope: boxing the large variants would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store nothing, show nothing (still acknowledged). The reason is for
    /// the log; `quiet` ones are expected (a repeat) and logged at debug.
    Drop {
        /// Why.
        reason: &'static str,
        /// Expected, not worth a warning.
        quiet: bool,
    },
    /// A stranger introduced itself: store the contact, the session and the
    /// id; show that they are a contact now.
    Introduce(Introduction),
    /// A known contact's hello again (its first copy raced a reply): store
    /// the session and the id; show nothing.
    Rehello(Contact),
    /// A text: store it, the session and the id; show it.
    Text {
        /// From whom.
        contact: Contact,
        /// The conversation entry.
        entry: StoredMessage,
        /// What the user sees.
        shown: ReceivedMessage,
    },
}

/// Decide what an opened message means. `known` is the sender if they are
/// a contact, `seen` whether its id was stored before, `now_ms` our clock
/// and `received_at_ms` the home relay's.
pub(crate) fn decide(
    opened: Opened,
    known: Option<Contact>,
    seen: bool,
    now_ms: u64,
    received_at_ms: u64,
) -> Verdict {
    let drop = |reason| Verdict::Drop {
        reason,
        quiet: false,
    };
    if seen {
        return Verdict::Drop {
            reason: "a message stored before",
            quiet: true,
        };
    }
    match (opened.body, known) {
        (Some(Body::Hello(h)), None) => match layers::read_introduction(h) {
            Some(intro) => Verdict::Introduce(intro),
            None => drop("a malformed introduction"),
        },
        (Some(Body::Hello(_)), Some(c)) => Verdict::Rehello(c),
        (Some(Body::Text(t)), Some(c)) => {
            let id = hex::encode(opened.id);
            let entry = StoredMessage {
                id: id.clone(),
                contact: c.identity_key,
                outgoing: false,
                text: t.body.clone(),
                sent_at_ms: opened.sent_at_ms,
                stored_at_ms: now_ms,
                status: Status::Received,
            };
            let shown = ReceivedMessage {
                id,
                from: c.name.clone(),
                text: t.body,
                sent_at_ms: opened.sent_at_ms,
                received_at_ms,
            };
            Verdict::Text {
                contact: c,
                entry,
                shown,
            }
        }
        _ => drop("a message that is neither text nor introduction"),
    }
}

/// The sequence number to acknowledge for an envelope: every pushed one
/// (dropped or not); 0 marks an envelope that was never stored (ephemeral).
pub(crate) fn ack_of(seq: u64) -> Option<u64> {
    (seq != 0).then_some(seq)
}

/// Received envelopes not yet settled: their acks and what they show.
#[derive(Default)]
pub(crate) struct Intake {
    acks: Vec<u64>,
    shown: Vec<Event>,
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

    /// Whether acks wait to be sent.
    pub(crate) fn has_acks(&self) -> bool {
        !self.acks.is_empty()
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
        for e in self.shown.drain(..) {
            on_event(e);
        }
        if !self.acks.is_empty() {
            stream.ack(std::mem::take(&mut self.acks)).await?;
        }
        Ok(())
    }
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
        let link = self.home_link().await?;
        let mut stream = link.messages().await?;
        stream.subscribe(0).await?;
        Ok((link, stream))
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
        let mut deadline: Option<Instant> = None;
        let mut intake = Intake::default();
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d.into(), stream.next()).await {
                    Ok(n) => n?,
                    Err(_) => break,
                },
                None if intake.has_acks() => {
                    match tokio::time::timeout(SETTLE_IDLE, stream.next()).await {
                        Ok(n) => n?,
                        Err(_) => {
                            intake.settle(self, &mut stream, on_event).await?;
                            continue;
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
                    intake.settle(self, &mut stream, on_event).await?;
                    if let Some(w) = wait {
                        deadline = Some(Instant::now() + w);
                    }
                }
                Some(Frame::Error(e)) => return Err(ClientError::Refused(e.into())),
                Some(Frame::SendResult(_)) => {}
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
        let seen = self.store.seen(&id)?;
        let now = now_ms();
        let (contact, new_contact, event, entry) =
            match decide(opened, known, seen, now, env.received_at_ms) {
                Verdict::Drop { reason, quiet } => {
                    if quiet {
                        debug!("dropping {reason}");
                    } else {
                        warn!("dropping {reason}");
                    }
                    return Ok(None);
                }
                Verdict::Introduce(intro) => {
                    let contact = self.contact_from(sender, intro, now)?;
                    let event = Event::ContactAdded {
                        name: contact.name.clone(),
                    };
                    (contact, true, Some(event), None)
                }
                Verdict::Rehello(c) => (c, false, None, None),
                Verdict::Text {
                    contact,
                    entry,
                    shown,
                } => (contact, false, Some(Event::Message(shown)), Some(entry)),
            };
        let key = entry
            .as_ref()
            .map(|m| message_key(&contact.identity_key, m.sent_at_ms, &id));
        let entry_ref = match (&key, &entry) {
            (Some(k), Some(m)) => Some((&k[..], m)),
            _ => None,
        };
        let pickle = session.to_encrypted_pickle(&self.key);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> Contact {
        Contact {
            name: "bob".into(),
            identity_key: [1; 32],
            signing_key: [2; 32],
            seal_key: [3; 32],
            relay_url: "r".into(),
            mailbox_id: [4; 16],
            send_token: [5; 32],
            token_given: None,
            added_at_ms: 0,
        }
    }

    fn opened(body: Option<Body>) -> Opened {
        Opened {
            id: [9; 16],
            sent_at_ms: 100,
            body,
        }
    }

    fn text(t: &str) -> Option<Body> {
        Some(layers::text_body(t))
    }

    #[test]
    fn a_text_from_a_contact_is_stored_and_shown() {
        match decide(opened(text("hi")), Some(contact()), false, 150, 120) {
            Verdict::Text { entry, shown, .. } => {
                assert_eq!(entry.text, "hi");
                assert_eq!((entry.sent_at_ms, entry.stored_at_ms), (100, 150));
                assert_eq!(entry.status, Status::Received);
                assert!(!entry.outgoing);
                assert_eq!(shown.from, "bob");
                assert_eq!((shown.sent_at_ms, shown.received_at_ms), (100, 120));
                assert_eq!(shown.id, hex::encode([9; 16]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_repeat_is_dropped_quietly() {
        let v = decide(opened(text("hi")), Some(contact()), true, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: true, .. }));
    }

    #[test]
    fn a_text_from_a_stranger_and_an_unknown_body_are_dropped() {
        let v = decide(opened(text("hi")), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
        let v = decide(opened(None), Some(contact()), false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
    }

    #[test]
    fn hellos_introduce_strangers_and_only_advance_known_contacts() {
        let hello = Some(Body::Hello(pb::ContactHello::default()));
        // Malformed (no address, no keys): dropped.
        let v = decide(opened(hello.clone()), None, false, 0, 0);
        assert!(matches!(v, Verdict::Drop { quiet: false, .. }));
        let v = decide(opened(hello), Some(contact()), false, 0, 0);
        assert_eq!(v, Verdict::Rehello(contact()));

        let good = pb::ContactHello {
            name: "carol".into(),
            reply_to: Some(layers::address(
                &format!("tern://127.0.0.1:1?fp={}", "00".repeat(32)),
                &[1; 16],
                &[2; 32],
            )),
            signing_key: vec![3; 32].into(),
            seal_key: tern_crypto::SealKey::generate().public().to_vec().into(),
            invite_token: vec![].into(),
        };
        match decide(opened(Some(Body::Hello(good))), None, false, 0, 0) {
            Verdict::Introduce(i) => assert_eq!(i.name, "carol"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_stored_envelope_is_acked() {
        assert_eq!(ack_of(5), Some(5));
        assert_eq!(ack_of(0), None);
    }
}
