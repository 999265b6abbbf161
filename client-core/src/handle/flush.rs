//! The running client's outbox side: flush cycles. A cycle is rounds of
//! plan (read the outbox), deposit (in a task of its own, with a clone of
//! the dialer, so receiving goes on meanwhile) and settle (record what the
//! relays said), with the pause a relay asked for between rounds
//! ([`crate::outbox::rules`]). One cycle runs at a time; sends that arrive
//! during one are on disk at once and go out in the next. At the end of a
//! cycle each message whose fate is news becomes an [`Event::Delivery`],
//! and whoever waited for the cycle is answered.

use super::task::{Reply, Task};
use crate::backoff::Backoff;
use crate::error::ClientError;
use crate::event::{DeliveryStatus, Event, OutboxReport, SendOutcome};
use crate::groups::{deposit_groups, GroupDeposit};
use crate::outbox::{deposit_all, round_backoff, rules, Deposit, Flushed};
use std::collections::HashMap;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tracing::warn;

/// Someone waiting for the end of a flush cycle.
pub(super) enum Waiter {
    Send {
        id: String,
        reply: Reply<(String, SendOutcome)>,
    },
    Report(Reply<OutboxReport>),
    /// A group command forwarded to the running client: its result is
    /// the report (with the message id, for a send).
    Group {
        id: Option<String>,
        reply: Reply<serde_json::Value>,
    },
}

impl Waiter {
    fn answer(self, result: Result<&OutboxReport, String>) {
        match (self, result) {
            (Waiter::Send { id, reply }, Ok(report)) => {
                let r = rules::outcome(report, &id)
                    .map(|o| (id, o))
                    .map_err(ClientError::Refused);
                let _ = reply.send(r);
            }
            (Waiter::Report(reply), Ok(report)) => {
                let _ = reply.send(Ok(report.clone()));
            }
            (Waiter::Group { id, reply }, Ok(report)) => {
                let v = match id {
                    Some(id) => Ok(serde_json::json!({ "id": id, "report": report })),
                    None => serde_json::to_value(report),
                };
                let _ = reply
                    .send(v.map_err(|e| ClientError::Store(format!("encoding a report: {e}"))));
            }
            (Waiter::Group { reply, .. }, Err(e)) => {
                let _ = reply.send(Err(ClientError::Store(e)));
            }
            (Waiter::Send { reply, .. }, Err(e)) => {
                let _ = reply.send(Err(ClientError::Store(e)));
            }
            (Waiter::Report(reply), Err(e)) => {
                let _ = reply.send(Err(ClientError::Store(e)));
            }
        }
    }
}

/// A round's deposits: the pairwise outbox's, then (after it, so keys
/// reach a mailbox before the group message they open) the group outbox's.
pub(super) struct Round {
    pairwise: Vec<Deposit>,
    groups: Vec<GroupDeposit>,
}

/// A flush under way: rounds of deposit, settle, and maybe pause.
pub(super) struct Cycle {
    round: usize,
    flushed: Flushed,
    backoff: Backoff,
    waiters: Vec<Waiter>,
    flight: Option<JoinHandle<Round>>,
    resume_at: Option<Instant>,
}

impl Cycle {
    /// A deposit in flight, if one is.
    pub(super) fn flight(&mut self) -> Option<&mut JoinHandle<Round>> {
        self.flight.as_mut()
    }

    /// Whether a deposit is in flight.
    pub(super) fn is_flying(&self) -> bool {
        self.flight.is_some()
    }

    /// When the pause between rounds ends, if the cycle is paused.
    pub(super) fn resume_at(&self) -> Option<Instant> {
        self.resume_at
    }

    /// Stop waiting for a deposit (shutdown gave up on it).
    pub(super) fn take_flight(&mut self) -> Option<JoinHandle<Round>> {
        self.flight.take()
    }
}

impl Task {
    /// Ask for a flush: now if none runs, else right after the one running.
    pub(super) fn request_flush(&mut self, waiters: Vec<Waiter>) {
        if self.cycle.is_none() {
            self.cycle = Some(Cycle {
                round: 0,
                flushed: Flushed {
                    report: OutboxReport::default(),
                    recipients: HashMap::new(),
                },
                backoff: round_backoff(),
                waiters,
                flight: None,
                resume_at: None,
            });
            self.launch_round();
        } else {
            self.next_cycle.get_or_insert_with(Vec::new).extend(waiters);
        }
    }

    /// Read the outbox and send it off in a task of its own.
    pub(super) fn launch_round(&mut self) {
        let plan = self.client.plan_round().and_then(|p| {
            let groups = self.client.plan_group_round()?;
            Ok((p, groups))
        });
        let Some(cycle) = self.cycle.as_mut() else {
            return;
        };
        cycle.resume_at = None;
        match plan {
            Ok((plan, mut groups)) => {
                let mut dialer = self.client.dialer.clone();
                let paths = self.paths.clone();
                let db = self.client.store.db().clone();
                cycle.flight = Some(tokio::spawn(async move {
                    // Nothing leaves before what made it is on disk: a
                    // receipt sealed under a fresh ratchet key that reached
                    // the peer while the key died with a crash would make
                    // everything the peer sends next undecryptable.
                    if let Err(e) = crate::store::flush_db(&db).await {
                        warn!("flushing the store before a deposit: {e}");
                        return Round {
                            pairwise: Vec::new(),
                            groups: Vec::new(),
                        };
                    }
                    let pairwise = match &paths {
                        Some(p) => crate::direct::deposit::deposit_all(p, &mut dialer, plan).await,
                        None => deposit_all(&mut dialer, plan).await,
                    };
                    deposit_groups(&mut dialer, &mut groups, paths.as_ref()).await;
                    Round { pairwise, groups }
                }));
            }
            Err(e) => self.end_cycle(Err(e.to_string())),
        }
    }

    /// A round came back: record it, then pause and go again, or finish.
    pub(super) async fn on_deposited(&mut self, deposits: Result<Round, JoinError>) {
        let Round { pairwise, groups } = deposits.unwrap_or_else(|e| {
            warn!("an outbox deposit failed: {e}");
            Round {
                pairwise: Vec::new(),
                groups: Vec::new(),
            }
        });
        let Some(cycle) = self.cycle.as_mut() else {
            return;
        };
        cycle.flight = None;
        // Items that left the outbox this round (counted here: items
        // queued meanwhile, a path offer, must not hide that it moved).
        let moved = pairwise
            .iter()
            .filter_map(|d| d.results.as_ref().ok())
            .flatten()
            .any(|r| matches!(r, Some(Ok(_))));
        let settled = self
            .client
            .settle_round(pairwise, &mut cycle.flushed)
            .and_then(|wait| {
                let keys_waited = self
                    .client
                    .settle_group_round(groups, &mut cycle.flushed.report)?;
                Ok((wait, keys_waited))
            });
        let (mut wait, keys_waited) = match settled {
            Ok(w) => w,
            Err(e) => return self.end_cycle(Err(e.to_string())),
        };
        // Group targets that waited for their keys go in another round at
        // once, if the pairwise outbox moved (their keys may be out now).
        if keys_waited && moved {
            wait = wait.or(Some(std::time::Duration::ZERO));
        }
        let queued = !cycle.flushed.report.queued.is_empty();
        match rules::retry_pause(wait, cycle.round, queued) {
            Some(w) => {
                cycle.round += 1;
                cycle.resume_at = Some(Instant::now() + cycle.backoff.next_delay(Some(w)));
            }
            None => {
                let flushed = self.client.store.flush().await.map_err(|e| e.to_string());
                self.end_cycle(flushed);
            }
        }
    }

    /// Finish the cycle: report deliveries, answer its waiters, and start
    /// the next cycle if one was asked for.
    pub(super) fn end_cycle(&mut self, result: Result<(), String>) {
        let Some(cycle) = self.cycle.take() else {
            return;
        };
        let report = &cycle.flushed.report;
        if result.is_ok() {
            self.report_deliveries(&cycle.flushed);
        }
        for w in cycle.waiters {
            w.answer(result.clone().map(|()| report));
        }
        if let Some(waiters) = self.next_cycle.take() {
            self.request_flush(waiters);
        }
    }

    /// An event per message whose fate is news: sent and failed always,
    /// queued only the first time.
    pub(super) fn report_deliveries(&mut self, flushed: &Flushed) {
        for (id, status) in rules::statuses(&flushed.report) {
            let fresh = match status {
                DeliveryStatus::Queued { .. } => self.reported_queued.insert(id.clone()),
                _ => {
                    self.reported_queued.remove(&id);
                    true
                }
            };
            if !fresh {
                continue;
            }
            // Group messages (no single recipient) have their status per
            // member in `tern status`, not a delivery event.
            let Some(k) = flushed.recipients.get(&id) else {
                continue;
            };
            let contact = self
                .client
                .store
                .contact(k)
                .ok()
                .flatten()
                .map(|c| c.name)
                .unwrap_or_default();
            self.emit(Event::Delivery {
                message_id: id,
                contact,
                status,
            });
        }
    }
}
