//! The running client's side of direct paths (`crate::direct`): what
//! arrives on a path is opened and stored like an envelope from the home
//! relay, shown once durable, and only then acked to the peer; contacts
//! heard from get an offer of our candidates, offers from contacts get an
//! answer and a dial; paths opening and closing become [`Event::Path`].

use super::task::Task;
use crate::client::now_ms;
use crate::direct::offer::{candidates_of, OFFER_EVERY};
use crate::direct::Inbound;
use crate::event::{Event, PathState};
use crate::inbox::SETTLE_IDLE;
use crate::store::ContactId;
use std::collections::HashMap;
use tern_protocol::pb;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

/// Arrivals stored between one flush-and-ack and the next.
const DIRECT_BATCH: usize = 64;

/// Arrivals stored but not yet durable: what they show and whom to ack.
#[derive(Default)]
pub(super) struct DirectIntake {
    shown: Vec<Event>,
    acks: Vec<oneshot::Sender<()>>,
    /// When the first arrival not yet durable came.
    since: Option<Instant>,
    /// When we last offered a path to each contact.
    pub(super) offered: HashMap<ContactId, Instant>,
}

impl DirectIntake {
    /// Whether arrivals wait to be made durable.
    pub(super) fn has_pending(&self) -> bool {
        !self.acks.is_empty()
    }

    /// When to make pending arrivals durable: [`SETTLE_IDLE`] after the
    /// first of them, however busy the client is meanwhile.
    pub(super) fn settle_at(&self) -> Option<Instant> {
        self.since.map(|t| t + SETTLE_IDLE)
    }
}

impl Task {
    /// Something from the paths.
    pub(super) async fn on_direct(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Arrival(a) => {
                let env = pb::Envelope {
                    seq: 0,
                    message_id: a.message.message_id,
                    received_at_ms: now_ms(),
                    payload: a.message.payload,
                    ephemeral: a.message.ephemeral,
                };
                match self.client.accept_envelope(env) {
                    Ok(event) => {
                        self.direct.shown.extend(event);
                        self.direct.acks.push(a.stored);
                        self.direct.since.get_or_insert_with(Instant::now);
                    }
                    // Our store failed: no ack, the peer sends it through
                    // the relay.
                    Err(e) => warn!("storing a direct message: {e}"),
                }
                // Settle now if nothing else waits (one message: no
                // delay), else batch up to DIRECT_BATCH or SETTLE_IDLE.
                let more = self.direct_rx.as_ref().is_some_and(|rx| !rx.is_empty());
                if !more || self.direct.acks.len() >= DIRECT_BATCH {
                    self.settle_direct().await;
                }
            }
            Inbound::Opened { contact, rtt_ms } => {
                self.emit_path(&contact, PathState::Open, Some(rtt_ms));
                // What waits for this contact goes direct now.
                self.request_flush(Vec::new());
            }
            Inbound::Closed { contact } => self.emit_path(&contact, PathState::Closed, None),
        }
    }

    fn emit_path(&self, contact: &ContactId, state: PathState, rtt_ms: Option<u64>) {
        let name = match self.client.store.contact(contact) {
            Ok(Some(c)) => c.name,
            _ => return,
        };
        self.emit(Event::Path {
            contact: name,
            state,
            rtt_ms,
        });
    }

    /// Make what arrived on paths durable, then show it, then ack it to
    /// the peers; queue the receipts it is owed.
    pub(super) async fn settle_direct(&mut self) {
        self.direct.since = None;
        if let Err(e) = self.client.store.flush().await {
            // Not durable: no acks (dropping them tells the peers to go
            // through the relay); what was shown waits for that copy.
            warn!("flushing direct arrivals: {e}");
            self.direct.acks.clear();
            self.direct.shown.clear();
            return;
        }
        let read: Vec<([u8; 16], Option<ContactId>)> = self
            .direct
            .shown
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => hex::decode(&m.id).ok()?.try_into().ok(),
                _ => None,
            })
            .map(|id| (id, None))
            .collect();
        for e in std::mem::take(&mut self.direct.shown) {
            self.emit(e);
        }
        for ack in self.direct.acks.drain(..) {
            let _ = ack.send(());
        }
        match self
            .client
            .note_shown(&read)
            .and_then(|synced| Ok(self.client.queue_receipts()? > 0 || synced))
        {
            Ok(true) => self.receipts_soon(),
            Ok(false) => {}
            Err(e) => warn!("queueing receipts: {e}"),
        }
        self.act_on_direct_news();
    }

    /// Offer paths to contacts just heard from, answer and dial offers.
    pub(super) fn act_on_direct_news(&mut self) {
        if self.client.direct_news.is_empty() {
            return;
        }
        let news = self.client.direct_news.take();
        let Some(paths) = self.paths.clone() else {
            return;
        };
        let ours = paths.own_candidates();
        let now = Instant::now();
        let mut queued = false;
        let recently = |offered: &HashMap<ContactId, Instant>, c: &ContactId| {
            offered
                .get(c)
                .is_some_and(|at| now.duration_since(*at) < OFFER_EVERY)
        };
        let mut heard = news.heard;
        heard.sort();
        heard.dedup();
        for id in heard {
            if ours.is_empty() || paths.get(&id).is_some() || recently(&self.direct.offered, &id) {
                continue;
            }
            let Ok(Some(contact)) = self.client.store.contact(&id) else {
                continue;
            };
            if !self.client.direct_allowed(&contact).unwrap_or(false) {
                continue;
            }
            paths.allow(id, contact.signing_key);
            match self.client.queue_offer(&contact, ours.clone(), false) {
                Ok(()) => {
                    self.direct.offered.insert(id, now);
                    queued = true;
                }
                Err(e) => warn!("queueing a path offer: {e}"),
            }
        }
        for (contact, offer) in news.offers {
            let id = contact.identity_key;
            if !self.client.direct_allowed(&contact).unwrap_or(false) {
                continue;
            }
            let Some(theirs) = candidates_of(&offer, now_ms()) else {
                continue;
            };
            paths.allow(id, contact.signing_key);
            let open = paths.get(&id).is_some();
            if !offer.answer && !open && !ours.is_empty() && !recently(&self.direct.offered, &id) {
                match self.client.queue_offer(&contact, ours.clone(), true) {
                    Ok(()) => {
                        self.direct.offered.insert(id, now);
                        queued = true;
                    }
                    Err(e) => warn!("queueing a path answer: {e}"),
                }
            }
            paths.punch(id, contact.signing_key, theirs);
        }
        if queued {
            self.request_flush(Vec::new());
        }
    }
}
