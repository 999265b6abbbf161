//! The outbox's rules, pure: in what order items go to a relay, what a
//! relay's answer means for an item (retire it, keep it and maybe pause,
//! fail it for good, or hold it back), when a flush tries another round,
//! and what a flush means for one message.

use crate::event::{DeliveryStatus, OutboxReport, SendOutcome};
use crate::store::OutboxItem;
use crate::transport::Stored;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tern_protocol::{ErrorCode, WireError};

/// How many times one outbox flush waits for a relay that asked for a pause.
pub(crate) const OUTBOX_RETRY_ROUNDS: usize = 3;
/// The longest pause one outbox flush waits for.
pub(crate) const MAX_OUTBOX_WAIT: Duration = Duration::from_secs(5);

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
pub(crate) fn decide(result: Option<Result<Stored, WireError>>) -> Decision {
    match result {
        Some(Ok(Stored)) => Decision::Retire,
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
pub(crate) const HELD_BACK: &str = "waiting for an earlier message to this contact";

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

/// Indices of the items for each mailbox, in outbox order, one group per
/// mailbox in the order each first appears: each group goes out on a
/// connection of its own.
pub(crate) fn by_mailbox(mailboxes: impl Iterator<Item = [u8; 16]>) -> Vec<Vec<usize>> {
    let mut groups: Vec<([u8; 16], Vec<usize>)> = Vec::new();
    for (i, m) in mailboxes.enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == m) {
            Some((_, g)) => g.push(i),
            None => groups.push((m, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
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
    results: &[Option<Result<Stored, WireError>>],
) -> Vec<usize> {
    let stored: HashSet<[u8; 16]> = firsts
        .iter()
        .filter(|&&i| matches!(results[i], Some(Ok(Stored))))
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
    fn items_are_grouped_by_mailbox_in_outbox_order() {
        let (a, b) = ([1; 16], [2; 16]);
        assert_eq!(
            by_mailbox([a, b, a, a, b].into_iter()),
            vec![vec![0, 2, 3], vec![1, 4]]
        );
        assert!(by_mailbox(std::iter::empty()).is_empty());
    }

    #[test]
    fn a_stored_send_retires_and_a_missing_one_is_held_back() {
        assert_eq!(decide(Some(Ok(Stored))), Decision::Retire);
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
        results[0] = Some(Ok(Stored));
        results[2] = Some(Err(refusal(ErrorCode::RateLimited, 10)));
        results[4] = Some(Ok(Stored));
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
            copy: false,
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
