//! Sending: a message is encrypted ([`crate::layers`]) and written to the
//! on-disk outbox together with the advanced session, then the outbox is
//! deposited relay by relay. The rules are pure, in `rules`; this module
//! moves items between the store and the relays.
//!
//! A flush is rounds of three steps: `Client::plan_round` reads the
//! outbox (store only), `deposit_all` sends it (network only, no client:
//! the running client runs it beside receiving), and
//! `Client::settle_round` records what the relays said (store only).

pub(crate) mod rules;

use crate::backoff::Backoff;
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::event::{OutboxReport, SendOutcome};
use crate::layers;
use crate::store::{message_key, Contact, ContactId, OutboxItem, Status, StoredMessage};
use crate::transport::{Dialer, Outgoing, Stored};
use rules::{Decision, MAX_OUTBOX_WAIT, OUTBOX_RETRY_ROUNDS};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tern_crypto::PairSession;
use tern_protocol::pb;
use tern_protocol::url::RelayUrl;
use tern_protocol::WireError;
use tracing::debug;

/// Sends pipelined on a message stream at once.
const DEPOSIT_CHUNK: usize = 256;

/// Each item's send result on one relay (`None`: held back), or why the
/// relay could not be used at all.
pub(crate) type RelayResults = Result<Vec<Option<Result<Stored, WireError>>>, ClientError>;

/// One relay's part of a round: its items, in outbox order, and results.
pub(crate) struct Deposit {
    pub(crate) relay: String,
    pub(crate) items: Vec<OutboxItem>,
    pub(crate) results: RelayResults,
}

/// A flush's report, with the contact each reported id was for.
pub(crate) struct Flushed {
    pub(crate) report: OutboxReport,
    pub(crate) recipients: HashMap<String, ContactId>,
}

/// The backoff between a flush's rounds.
pub(crate) fn round_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), MAX_OUTBOX_WAIT)
}

/// Deposit a round's items on every relay at once: one slow or hostile
/// relay (each operation on it has a deadline, see
/// [`crate::transport::SEND_TIMEOUT`]) holds up only its own items, never
/// those for other relays. Each relay's part runs through a clone of
/// `dialer` (clones share endpoints and the send spacing).
pub(crate) async fn deposit_all(
    dialer: &mut Dialer,
    plan: BTreeMap<String, Vec<OutboxItem>>,
) -> Vec<Deposit> {
    let mut running = tokio::task::JoinSet::new();
    let mut done: Vec<Deposit> = Vec::with_capacity(plan.len());
    for (i, (relay, items)) in plan.into_iter().enumerate() {
        let mut dialer = dialer.clone();
        let (r, its) = (relay.clone(), items.clone());
        running.spawn(async move { (i, deposit(&mut dialer, &r, &its).await) });
        done.push(Deposit {
            relay,
            items,
            results: Err(ClientError::Protocol("deposit did not finish".into())),
        });
    }
    while let Some(joined) = running.join_next().await {
        // A deposit task that panicked leaves its relay's items queued.
        if let Ok((i, results)) = joined {
            if let Some(d) = done.get_mut(i) {
                d.results = results;
            }
        }
    }
    done
}

/// Deposit `items` (in outbox order) on one relay, each mailbox's first
/// item before the rest ([`rules::first_per_mailbox`]). `None` for an item
/// held back this time. Each recipient mailbox gets a connection of its
/// own ([`Dialer::connect_unlinked`]): sends to different contacts never
/// share a connection, socket or port, nor with our authenticated one.
pub(crate) async fn deposit(
    dialer: &mut Dialer,
    relay: &str,
    items: &[OutboxItem],
) -> RelayResults {
    let url: RelayUrl = relay.parse()?;
    let mut results: Vec<Option<Result<Stored, WireError>>> = vec![None; items.len()];
    for group in rules::by_mailbox(items.iter().map(|i| i.mailbox_id)) {
        let picked: Vec<OutboxItem> = group.iter().map(|&i| items[i].clone()).collect();
        let got = deposit_to_one(dialer, &url, &picked).await?;
        for (i, r) in group.into_iter().zip(got) {
            results[i] = r;
        }
    }
    Ok(results)
}

/// Deposit `items`, all for one mailbox, on a connection of their own.
async fn deposit_to_one(dialer: &mut Dialer, url: &RelayUrl, items: &[OutboxItem]) -> RelayResults {
    let link = dialer.connect_unlinked(url).await?;
    let mut stream = link.messages().await?;
    let outgoing = |i: &OutboxItem| Outgoing {
        mailbox: i.mailbox_id,
        token: i.token,
        message_id: i.message_id,
        payload: i.payload.clone(),
    };
    let mailboxes: Vec<[u8; 16]> = items.iter().map(|i| i.mailbox_id).collect();
    let mut results: Vec<Option<Result<Stored, WireError>>> = vec![None; items.len()];
    let (firsts, rest) = rules::first_per_mailbox(&mailboxes);
    for chunk in firsts.chunks(DEPOSIT_CHUNK) {
        let batch: Vec<Outgoing> = chunk.iter().map(|&i| outgoing(&items[i])).collect();
        for (&i, r) in chunk.iter().zip(stream.send_all(&batch).await?) {
            results[i] = Some(r);
        }
    }
    let rest = rules::released(&mailboxes, &firsts, rest, &results);
    for chunk in rest.chunks(DEPOSIT_CHUNK) {
        let batch: Vec<Outgoing> = chunk.iter().map(|&i| outgoing(&items[i])).collect();
        for (&i, r) in chunk.iter().zip(stream.send_all(&batch).await?) {
            results[i] = Some(r);
        }
    }
    stream.finish(Duration::from_secs(2)).await;
    link.close();
    Ok(results)
}

impl Client {
    /// Encrypt `content` for `contact` and put it in the outbox together
    /// with the advanced session (and the conversation entry, for texts).
    /// Texts and device lists go to every device of the contact
    /// (`crate::devices::fanout`).
    pub(crate) fn enqueue(
        &self,
        contact: &Contact,
        session: PairSession,
        content: &pb::Content,
        entry: Option<(&[u8], &StoredMessage)>,
    ) -> Result<(), ClientError> {
        if crate::devices::fanout::fans_out(content) {
            return self.enqueue_fanned(contact, Some(session), content, entry);
        }
        let target = crate::devices::Target::of_contact(contact);
        self.enqueue_to(&target, session, content, entry, false)
    }

    /// Put a text to the contact named `to` in the outbox, durably; returns
    /// its id (hex). Nothing is sent yet.
    pub async fn queue_text(&mut self, to: &str, text: &str) -> Result<String, ClientError> {
        let contact = self.contact_named(to)?;
        self.check_sendable(&contact)?;
        let session = self.contact_session(&contact)?;
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
        self.track_sent(&id, &key, &[contact.identity_key])?;
        let content = layers::content(id, at, layers::text_body(text));
        self.enqueue_fanned(&contact, session, &content, Some((&key, &entry)))?;
        // Our other devices show it as sent by us (devices/fanout.rs).
        self.sync_sent(&contact, &id, at, text)?;
        self.store.flush().await?;
        Ok(hex::encode(id))
    }

    /// Send a text to the contact named `to`. It is in the outbox (on disk)
    /// before anything goes out; returns its id and whether it reached the
    /// contact's relay now or waits for a later flush.
    pub async fn send_text(
        &mut self,
        to: &str,
        text: &str,
    ) -> Result<(String, SendOutcome), ClientError> {
        let id = self.queue_text(to, text).await?;
        let report = self.flush_outbox().await?;
        let outcome = rules::outcome(&report, &id).map_err(ClientError::Refused)?;
        Ok((id, outcome))
    }

    /// Try to deliver everything in the outbox, relay by relay. A relay that
    /// asks us to slow down (`RATE_LIMITED`, `STORAGE_UNAVAILABLE` with a
    /// short `retry_after`) is waited for and tried again, a few times.
    pub async fn flush_outbox(&mut self) -> Result<OutboxReport, ClientError> {
        let mut flushed = Flushed {
            report: OutboxReport::default(),
            recipients: HashMap::new(),
        };
        let mut backoff = round_backoff();
        for round in 0..=OUTBOX_RETRY_ROUNDS {
            let plan = self.plan_round()?;
            // Durable before it leaves (see `Task::launch_round`).
            self.store.flush().await?;
            let deposits = deposit_all(&mut self.dialer, plan).await;
            let wait = self.settle_round(deposits, &mut flushed)?;
            match rules::retry_pause(wait, round, !flushed.report.queued.is_empty()) {
                Some(w) => {
                    let delay = backoff.next_delay(Some(w));
                    debug!("relay asked to slow down; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                None => break,
            }
        }
        let mut report = flushed.report;
        self.flush_group_outbox(&mut report).await?;
        self.store.flush().await?;
        Ok(report)
    }

    /// Receive as [`Client::receive`] does while one round of the outbox is
    /// deposited beside it, so a send stuck on a slow or hostile relay
    /// never holds up receiving from the home relay (the deposit has its
    /// deadlines; receiving waits for it only at the end, to record what
    /// the relays said). Returns what arrived and what the round did.
    pub async fn receive_while_flushing(
        &mut self,
        wait: Duration,
    ) -> Result<(Vec<crate::event::Event>, OutboxReport), ClientError> {
        let plan = self.plan_round()?;
        let mut groups = self.plan_group_round()?;
        // Durable before it leaves (see `Task::launch_round`).
        self.store.flush().await?;
        let mut dialer = self.dialer.clone();
        // The group outbox after the pairwise one: keys before the messages
        // they open.
        let flight = tokio::spawn(async move {
            let deposits = deposit_all(&mut dialer, plan).await;
            crate::groups::deposit_groups(&mut dialer, &mut groups, None).await;
            (deposits, groups)
        });
        let received = self.receive(wait).await;
        let (deposits, groups) = flight
            .await
            .map_err(|e| ClientError::Protocol(format!("depositing failed: {e}")))?;
        let mut flushed = Flushed {
            report: OutboxReport::default(),
            recipients: HashMap::new(),
        };
        self.settle_round(deposits, &mut flushed)?;
        if self.settle_group_round(groups, &mut flushed.report)? {
            // Some members waited for keys that went out beside: their
            // group messages go now (what still waits is reported again).
            let mut again = OutboxReport::default();
            self.flush_group_outbox(&mut again).await?;
            let redone: Vec<&String> = again
                .sent
                .iter()
                .chain(again.queued.iter().map(|(i, _)| i))
                .collect();
            flushed.report.queued.retain(|(i, _)| !redone.contains(&i));
            flushed.report.sent.extend(again.sent);
            flushed.report.queued.extend(again.queued);
        }
        self.store.flush().await?;
        Ok((received?, flushed.report))
    }

    /// The outbox, by relay, for one round. Group messages waiting for a
    /// member's card that has come have its key queued first, to go in
    /// this round.
    pub(crate) fn plan_round(&self) -> Result<BTreeMap<String, Vec<OutboxItem>>, ClientError> {
        self.reach_pending_members()?;
        Ok(rules::by_relay(self.store.outbox()?))
    }

    /// Record a round's results: retire and fail items in the store, and add
    /// to `flushed` (its queued list is replaced: it says what waits now).
    /// Returns the pause a relay asked for, if one is worth waiting for.
    pub(crate) fn settle_round(
        &self,
        deposits: Vec<Deposit>,
        flushed: &mut Flushed,
    ) -> Result<Option<Duration>, ClientError> {
        let report = &mut flushed.report;
        report.queued.clear();
        let mut wait: Option<Duration> = None;
        for Deposit {
            relay,
            items,
            results,
        } in deposits
        {
            for i in items.iter().filter(|i| !i.copy) {
                flushed
                    .recipients
                    .insert(hex::encode(i.message_id), i.contact);
            }
            let results = match results {
                Ok(r) => r,
                Err(e) => {
                    // The relay is unreachable: its whole batch stays.
                    debug!("outbox for {relay} stays queued: {e}");
                    let reason = e.to_string();
                    report.queued.extend(
                        items
                            .iter()
                            .filter(|i| !i.copy)
                            .map(|i| (hex::encode(i.message_id), reason.clone())),
                    );
                    continue;
                }
            };
            for (item, result) in items.iter().zip(results) {
                let id = hex::encode(item.message_id);
                // Receipt batches go like messages but are not reported as
                // messages (crate::receipts).
                let receipts = self.store.is_receipt_batch(&item.message_id)?;
                if item.copy {
                    // A fan-out copy (devices/fanout.rs): settled, not reported.
                    match rules::decide(result) {
                        Decision::Retire => self.store.settle(item, Status::Sent)?,
                        Decision::Fail(e) => {
                            self.store.settle(item, Status::Failed(e.to_string()))?
                        }
                        Decision::Keep { pause, .. } => wait = rules::longest(wait, pause),
                        Decision::HeldBack => {}
                    }
                    continue;
                }
                match rules::decide(result) {
                    Decision::Retire => {
                        self.store.settle(item, Status::Sent)?;
                        if receipts {
                            self.store.forget_receipt_batch(&item.message_id)?;
                        } else {
                            self.note_relay_answer(&item.message_id, &item.contact, Ok(()))?;
                            report.sent.push(id);
                        }
                    }
                    Decision::Keep { reason, pause } => {
                        wait = rules::longest(wait, pause);
                        if !receipts {
                            report.queued.push((id, reason));
                        }
                    }
                    Decision::Fail(e) => {
                        self.store.settle(item, Status::Failed(e.to_string()))?;
                        if receipts {
                            self.store.forget_receipt_batch(&item.message_id)?;
                        } else {
                            let why = e.to_string();
                            self.note_relay_answer(&item.message_id, &item.contact, Err(&why))?;
                            report.failed.push((id, e));
                        }
                    }
                    Decision::HeldBack if receipts => {}
                    Decision::HeldBack => report.queued.push((id, rules::HELD_BACK.into())),
                }
            }
        }
        Ok(wait)
    }
}
