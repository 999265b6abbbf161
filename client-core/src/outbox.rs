//! Sending: a message is encrypted ([`crate::layers`]) and written to the
//! on-disk outbox together with the advanced session, then the outbox is
//! deposited relay by relay. The rules — what order items go in, what a
//! relay's answer means for an item, when to pause and try again — are the
//! pure functions at the top, tested below; the `Client` methods only move
//! items between the store and the relays.

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::event::{DeliveryStatus, OutboxReport, SendOutcome};
use crate::layers;
use crate::store::{message_key, Contact, ContactId, OutboxItem, Status, StoredMessage};
use crate::transport::Outgoing;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tern_crypto::PairSession;
use tern_protocol::pb;
use tern_protocol::{ErrorCode, WireError};
use tracing::debug;

/// How many times one outbox flush waits for a relay that asked for a pause.
const OUTBOX_RETRY_ROUNDS: usize = 3;
/// The longest pause one outbox flush waits for.
const MAX_OUTBOX_WAIT: Duration = Duration::from_secs(5);
/// Sends pipelined on a message stream at once.
const DEPOSIT_CHUNK: usize = 256;

/// What a relay's answer (or its absence) means for one outbox item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Stored durably: take it out of the outbox, mark the message sent.
    Retire,
    /// Refused for now: keep it. `pause` is how long the relay asked us to
    /// wait, if it is short enough to wait for within this flush.
    Keep {
        /// Why, for the user.
        reason: String,
        /// A pause worth waiting for before trying again.
        pause: Option<Duration>,
    },
    /// Refused for good (a revoked token: the contact blocked us; a
    /// malformed request): take it out and mark the message failed.
    Fail(WireError),
    /// Not sent this time: an earlier item to the same mailbox did not go.
    HeldBack,
}

/// Decide what a send result means.
pub(crate) fn decide(result: Option<Result<u64, WireError>>) -> Decision {
    match result {
        Some(Ok(_)) => Decision::Retire,
        Some(Err(e)) if e.is_retryable() => {
            let after = Duration::from_millis(e.retry_after_ms);
            let asked_to_pause = matches!(
                e.code,
                ErrorCode::RateLimited | ErrorCode::StorageUnavailable
            );
            Decision::Keep {
                reason: e.to_string(),
                pause: (asked_to_pause && after <= MAX_OUTBOX_WAIT).then_some(after),
            }
        }
        Some(Err(e)) => Decision::Fail(e),
        None => Decision::HeldBack,
    }
}

/// Why a held-back item waits.
const HELD_BACK: &str = "waiting for an earlier message to this contact";

/// The outbox split by target relay, each relay's items in outbox order.
pub(crate) fn by_relay(items: Vec<OutboxItem>) -> BTreeMap<String, Vec<OutboxItem>> {
    let mut grouped: BTreeMap<String, Vec<OutboxItem>> = BTreeMap::new();
    for item in items {
        grouped
            .entry(item.relay_url.clone())
            .or_default()
            .push(item);
    }
    grouped
}

/// Indices of each mailbox's first item, and of all the others, in order.
/// The firsts go out first and the rest only once their mailbox's first is
/// stored, so a contact's introduction can never land after the texts that
/// depend on it (a rate limit may refuse one send of a pipelined batch and
/// pass the next).
pub(crate) fn first_per_mailbox(mailboxes: &[[u8; 16]]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = HashSet::new();
    (0..mailboxes.len()).partition(|&i| seen.insert(mailboxes[i]))
}

/// Of `rest`, the items whose mailbox's first item was stored.
pub(crate) fn released(
    mailboxes: &[[u8; 16]],
    firsts: &[usize],
    rest: Vec<usize>,
    results: &[Option<Result<u64, WireError>>],
) -> Vec<usize> {
    let stored: HashSet<[u8; 16]> = firsts
        .iter()
        .filter(|&&i| matches!(results[i], Some(Ok(_))))
        .map(|&i| mailboxes[i])
        .collect();
    rest.into_iter()
        .filter(|&i| stored.contains(&mailboxes[i]))
        .collect()
}

/// The longest pause asked for, so one wait covers every relay.
pub(crate) fn longest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a flush tries another round after round `round`: only if a relay
/// asked for a short pause, something is still queued, and rounds remain.
pub(crate) fn retry_pause(wait: Option<Duration>, round: usize, queued: bool) -> Option<Duration> {
    wait.filter(|_| round < OUTBOX_RETRY_ROUNDS && queued)
}

/// What became of message `id` in a flush: sent, still queued (why), or
/// refused for good.
pub(crate) fn outcome(report: &OutboxReport, id: &str) -> Result<SendOutcome, WireError> {
    if let Some((_, e)) = report.failed.iter().find(|(i, _)| i == id) {
        return Err(e.clone());
    }
    if report.sent.iter().any(|i| i == id) {
        return Ok(SendOutcome::Sent);
    }
    let reason = report
        .queued
        .iter()
        .find(|(i, _)| i == id)
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| "not attempted".into());
    Ok(SendOutcome::Queued(reason))
}

/// The delivery status of every id in `report`.
pub(crate) fn statuses(report: &OutboxReport) -> Vec<(String, DeliveryStatus)> {
    let sent = report
        .sent
        .iter()
        .map(|id| (id.clone(), DeliveryStatus::Sent));
    let failed = report.failed.iter().map(|(id, e)| {
        let reason = e.to_string();
        (id.clone(), DeliveryStatus::Failed { reason })
    });
    let queued = report.queued.iter().map(|(id, reason)| {
        let reason = reason.clone();
        (id.clone(), DeliveryStatus::Queued { reason })
    });
    sent.chain(failed).chain(queued).collect()
}

/// A flush's report, with the contact each reported id was for.
pub(crate) struct Flushed {
    pub(crate) report: OutboxReport,
    pub(crate) recipients: HashMap<String, ContactId>,
}

impl Client {
    /// Encrypt `content` for `contact` and put it in the outbox together
    /// with the advanced session (and the conversation entry, for texts).
    pub(crate) fn enqueue(
        &self,
        contact: &Contact,
        mut session: PairSession,
        content: &pb::Content,
        entry: Option<(&[u8], &StoredMessage)>,
    ) -> Result<(), ClientError> {
        let payload = layers::seal_content(
            &mut session,
            &self.account.identity_key(),
            &contact.seal_key,
            content,
        );
        layers::check_size(&payload).map_err(|layers::SealError::TooLarge { size, max }| {
            ClientError::TooLarge { size, max }
        })?;
        let item = OutboxItem {
            position: self.store.next_position()?,
            message_id: content.message_id[..]
                .try_into()
                .map_err(|_| ClientError::Store("message id is not 16 bytes".into()))?,
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

    /// Put a text to the contact named `to` in the outbox, durably; returns
    /// its id (hex). Nothing is sent yet.
    pub(crate) async fn queue_text(&mut self, to: &str, text: &str) -> Result<String, ClientError> {
        let contact = self.contact_named(to)?;
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
        let content = layers::content(id, at, layers::text_body(text));
        self.enqueue(&contact, session, &content, Some((&key, &entry)))?;
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
        let outcome = outcome(&report, &id).map_err(ClientError::Refused)?;
        Ok((id, outcome))
    }

    /// Try to deliver everything in the outbox, relay by relay. A relay that
    /// asks us to slow down (`RATE_LIMITED`, `STORAGE_UNAVAILABLE` with a
    /// short `retry_after`) is waited for and tried again, a few times.
    pub async fn flush_outbox(&mut self) -> Result<OutboxReport, ClientError> {
        Ok(self.deliver().await?.report)
    }

    /// [`Client::flush_outbox`], also saying whom each message was for.
    pub(crate) async fn deliver(&mut self) -> Result<Flushed, ClientError> {
        let mut report = OutboxReport::default();
        let mut recipients = HashMap::new();
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), MAX_OUTBOX_WAIT);
        for round in 0..=OUTBOX_RETRY_ROUNDS {
            let (r, wait) = self.flush_round(&mut recipients).await?;
            report.sent.extend(r.sent);
            report.failed.extend(r.failed);
            report.queued = r.queued;
            match retry_pause(wait, round, !report.queued.is_empty()) {
                Some(w) => {
                    let delay = backoff.next_delay(Some(w));
                    debug!("relay asked to slow down; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                None => break,
            }
        }
        self.store.flush().await?;
        Ok(Flushed { report, recipients })
    }

    /// One pass over the outbox. Returns what happened and, if a relay asked
    /// for a short pause, how long.
    async fn flush_round(
        &mut self,
        recipients: &mut HashMap<String, ContactId>,
    ) -> Result<(OutboxReport, Option<Duration>), ClientError> {
        let mut report = OutboxReport::default();
        let mut wait: Option<Duration> = None;
        for (relay, items) in by_relay(self.store.outbox()?) {
            for i in &items {
                recipients.insert(hex::encode(i.message_id), i.contact);
            }
            let results = match self.deposit(&relay, &items).await {
                Ok(r) => r,
                Err(e) => {
                    // The relay is unreachable: the whole batch for it stays.
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
                match decide(result) {
                    Decision::Retire => {
                        self.store.settle(item, Status::Sent)?;
                        report.sent.push(id);
                    }
                    Decision::Keep { reason, pause } => {
                        wait = longest(wait, pause);
                        report.queued.push((id, reason));
                    }
                    Decision::Fail(e) => {
                        self.store.settle(item, Status::Failed(e.to_string()))?;
                        report.failed.push((id, e));
                    }
                    Decision::HeldBack => report.queued.push((id, HELD_BACK.into())),
                }
            }
        }
        Ok((report, wait))
    }

    /// Deposit `items` (in outbox order) on one relay, each mailbox's first
    /// item before the rest ([`first_per_mailbox`]). `None` for an item held
    /// back this time.
    async fn deposit(
        &mut self,
        relay: &str,
        items: &[OutboxItem],
    ) -> Result<Vec<Option<Result<u64, WireError>>>, ClientError> {
        let url: tern_protocol::url::RelayUrl = relay.parse()?;
        let link = self.dialer.connect(&url).await?;
        let mut stream = link.messages().await?;
        let outgoing = |i: &OutboxItem| Outgoing {
            mailbox: i.mailbox_id,
            token: i.token,
            message_id: i.message_id,
            payload: i.payload.clone(),
        };
        let mailboxes: Vec<[u8; 16]> = items.iter().map(|i| i.mailbox_id).collect();
        let mut results: Vec<Option<Result<u64, WireError>>> = vec![None; items.len()];
        let (firsts, rest) = first_per_mailbox(&mailboxes);
        for chunk in firsts.chunks(DEPOSIT_CHUNK) {
            let batch: Vec<Outgoing> = chunk.iter().map(|&i| outgoing(&items[i])).collect();
            for (&i, r) in chunk.iter().zip(stream.send_all(&batch).await?) {
                results[i] = Some(r);
            }
        }
        let rest = released(&mailboxes, &firsts, rest, &results);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: ErrorCode, retry_after_ms: u64) -> WireError {
        WireError {
            retry_after_ms,
            ..WireError::new(code, "no")
        }
    }

    #[test]
    fn a_stored_send_retires_and_a_missing_one_is_held_back() {
        assert_eq!(decide(Some(Ok(7))), Decision::Retire);
        assert_eq!(decide(None), Decision::HeldBack);
    }

    #[test]
    fn a_revoked_token_fails_for_good() {
        let e = refusal(ErrorCode::TokenInvalid, 0);
        assert_eq!(decide(Some(Err(e.clone()))), Decision::Fail(e));
    }

    #[test]
    fn a_short_pause_is_waited_for_and_a_long_one_is_not() {
        let short = refusal(ErrorCode::RateLimited, 300);
        match decide(Some(Err(short))) {
            Decision::Keep { pause, .. } => assert_eq!(pause, Some(Duration::from_millis(300))),
            other => panic!("{other:?}"),
        }
        let long = refusal(ErrorCode::StorageUnavailable, 60_000);
        assert!(matches!(
            decide(Some(Err(long))),
            Decision::Keep { pause: None, .. }
        ));
        // Retryable, but not a request to slow down: kept, no pause.
        let quota = refusal(ErrorCode::QuotaExceeded, 100);
        assert!(matches!(
            decide(Some(Err(quota))),
            Decision::Keep { pause: None, .. }
        ));
    }

    #[test]
    fn each_mailbox_first_item_goes_first_and_the_rest_follow_it() {
        let (a, b, c) = ([1; 16], [2; 16], [3; 16]);
        let boxes = [a, a, b, a, c, b];
        let (firsts, rest) = first_per_mailbox(&boxes);
        assert_eq!(firsts, [0, 2, 4]);
        assert_eq!(rest, [1, 3, 5]);
        // a's first was stored, b's was refused, c's was stored.
        let mut results = vec![None; boxes.len()];
        results[0] = Some(Ok(1));
        results[2] = Some(Err(refusal(ErrorCode::RateLimited, 10)));
        results[4] = Some(Ok(2));
        assert_eq!(released(&boxes, &firsts, rest, &results), [1, 3]);
    }

    #[test]
    fn items_group_by_relay_in_outbox_order() {
        let item = |position, relay: &str| OutboxItem {
            position,
            message_id: [position as u8; 16],
            contact: [0; 32],
            message_key: None,
            relay_url: relay.into(),
            mailbox_id: [0; 16],
            token: [0; 32],
            payload: vec![],
        };
        let grouped = by_relay(vec![item(1, "r2"), item(2, "r1"), item(3, "r2")]);
        let order: Vec<(&str, Vec<u64>)> = grouped
            .iter()
            .map(|(r, v)| (r.as_str(), v.iter().map(|i| i.position).collect()))
            .collect();
        assert_eq!(order, [("r1", vec![2]), ("r2", vec![1, 3])]);
    }

    #[test]
    fn rounds_stop_without_a_pause_or_a_queue_or_rounds_left() {
        let w = Some(Duration::from_millis(5));
        assert_eq!(retry_pause(w, 0, true), w);
        assert_eq!(retry_pause(None, 0, true), None);
        assert_eq!(retry_pause(w, 0, false), None);
        assert_eq!(retry_pause(w, OUTBOX_RETRY_ROUNDS, true), None);
        assert_eq!(
            longest(w, Some(Duration::from_millis(9))),
            Some(Duration::from_millis(9))
        );
        assert_eq!(longest(None, w), w);
    }

    #[test]
    fn a_message_outcome_reads_the_report() {
        let report = OutboxReport {
            sent: vec!["a".into()],
            failed: vec![("b".into(), refusal(ErrorCode::TokenInvalid, 0))],
            queued: vec![("c".into(), "later".into())],
        };
        assert_eq!(outcome(&report, "a"), Ok(SendOutcome::Sent));
        assert!(outcome(&report, "b").is_err());
        assert_eq!(
            outcome(&report, "c"),
            Ok(SendOutcome::Queued("later".into()))
        );
        assert_eq!(
            outcome(&report, "d"),
            Ok(SendOutcome::Queued("not attempted".into()))
        );
        let st = statuses(&report);
        assert_eq!(st.len(), 3);
        assert_eq!(st[0], ("a".into(), DeliveryStatus::Sent));
    }
}
