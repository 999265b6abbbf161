//! Multi-recipient sends (`SendMany`): one sealed payload, many (mailbox,
//! token) targets, one store operation, one answer. Groups and a user's
//! other devices are built on it. Each target's token is checked as a
//! `Send`'s is (in constant time; unknown tokens answer `TOKEN_INVALID`,
//! revoked ones are answered as delivered and dropped), each is charged the
//! per-token send rate, and each
//! mailbox's quota is its own, so one bad target refuses only itself.
//! Whole-request refusals are for what the whole frame got wrong (message
//! id, payload size, target count, a full disk).

use super::{fixed, store_error, RelayCore, TokenCheck};
use crate::clock::Clock;
use crate::store::{MailboxId, MailboxStore, MessageId, Quota};
use tern_protocol::pb;
use tern_protocol::{ErrorCode, WireError};

/// What a `SendMany` the relay took came to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SentMany {
    /// One result per target, in the order of the request's targets.
    pub results: Vec<pb::TargetResult>,
    /// Mailboxes that hold the envelope (new or already): their
    /// subscribers are woken at once, while the flush runs. Empty for an ephemeral send.
    pub stored: Vec<MailboxId>,
    /// For an ephemeral send, the mailboxes to pass it to.
    pub ephemeral: Vec<MailboxId>,
    /// Targets of a stored send whose token was revoked: answered as
    /// stored and dropped; the send's answer waits for durability all the
    /// same. Always 0 for an ephemeral send (answered at once anyway).
    pub discarded: usize,
    /// For a stored send, the envelope as each mailbox's subscription
    /// would fetch it, to hand over with the wake-up instead
    /// ([`crate::hub::Hub::stored_with`]).
    pub handoff: Option<Handoff>,
}

/// The envelope a stored multi-recipient send hands its woken subscribers,
/// so a subscription that has pushed everything before it need not read
/// it back from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    /// For each of [`SentMany::stored`], in order, its sequence number in
    /// that mailbox, or `None` where the mailbox already held the message
    /// (a re-send: nothing new to hand over, only a wake-up).
    pub seqs: Vec<Option<u64>>,
    /// The envelope with `seq` 0; the payload is shared, not copied.
    pub envelope: pb::Envelope,
}

impl<S: MailboxStore, C: Clock> RelayCore<S, C> {
    /// Check one target: its mailbox id, its token (constant time), and the
    /// token's send rate.
    fn check_target(&self, t: &pb::SendTarget) -> Result<(MailboxId, TokenCheck), WireError> {
        let mailbox: MailboxId = fixed(&t.mailbox_id, "mailbox_id")?;
        let check = self.check_token(&mailbox, &t.token)?;
        Ok((mailbox, check))
    }

    /// Check and apply one multi-recipient send. Every valid target is
    /// appended in one store operation; for a stored send the caller must
    /// await [`Self::durable`] once before answering.
    pub fn send_many(&self, s: &pb::SendMany) -> Result<SentMany, WireError> {
        let message_id: MessageId = fixed(&s.message_id, "message_id")?;
        self.check_envelope_size(s.payload.len())?;
        let max = self.limits.max_recipients_per_send;
        if s.targets.is_empty() || s.targets.len() > max {
            return Err(WireError::new(
                ErrorCode::Malformed,
                format!(
                    "a send must name 1 to {max} targets, not {}",
                    s.targets.len()
                ),
            ));
        }
        if !s.ephemeral {
            self.check_disk()?;
        }
        // `Ok(None)`: a revoked token's target, answered as taken.
        let checked: Vec<Result<Option<MailboxId>, WireError>> = s
            .targets
            .iter()
            .map(|t| {
                self.check_target(t).map(|(m, c)| match c {
                    TokenCheck::Valid(_) => Some(m),
                    TokenCheck::Revoked(_) => None,
                })
            })
            .collect();
        let valid: Vec<MailboxId> = checked
            .iter()
            .filter_map(|r| r.clone().ok().flatten())
            .collect();
        let discarded = checked.iter().filter(|r| matches!(r, Ok(None))).count();
        if s.ephemeral {
            return Ok(SentMany {
                results: checked
                    .into_iter()
                    .map(|r| pb::TargetResult::of(r.map(|_| false)))
                    .collect(),
                stored: Vec::new(),
                ephemeral: valid,
                discarded: 0,
                handoff: None,
            });
        }
        let (env, quota) = self.stamp(message_id, &s.payload);
        let targets: Vec<(MailboxId, Quota)> = valid.iter().map(|m| (*m, quota)).collect();
        let appended = if targets.is_empty() {
            Vec::new()
        } else {
            self.store.append_many(&targets, env).map_err(store_error)?
        };
        let envelope = pb::Envelope {
            seq: 0,
            message_id: s.message_id.clone(),
            received_at_ms: env.now_ms,
            payload: s.payload.clone(),
            ephemeral: false,
        };
        let mut appended = appended.into_iter();
        let mut stored = Vec::with_capacity(targets.len());
        let mut seqs = Vec::with_capacity(targets.len());
        let results = checked
            .into_iter()
            .map(|r| {
                let r = r.and_then(|mailbox| {
                    let Some(mailbox) = mailbox else {
                        return Ok(false);
                    };
                    match appended.next() {
                        // Stored, or already held: the answer is the same, as
                        // for a `Send`, so a re-send does not tell the sender
                        // whether this member has acked yet (threat-model.md).
                        Some(Ok(a)) => {
                            stored.push(mailbox);
                            seqs.push((!a.duplicate).then_some(a.seq));
                            Ok(false)
                        }
                        Some(Err(e)) => Err(store_error(e)),
                        None => Err(crate::core::storage_unavailable()),
                    }
                });
                pb::TargetResult::of(r)
            })
            .collect();
        Ok(SentMany {
            results,
            handoff: (!stored.is_empty()).then_some(Handoff { seqs, envelope }),
            stored,
            ephemeral: Vec::new(),
            discarded,
        })
    }

    /// The ephemeral envelope to pass on for an accepted ephemeral
    /// multi-recipient send.
    pub fn ephemeral_envelope_many(&self, s: &pb::SendMany) -> pb::Envelope {
        pb::Envelope {
            seq: 0,
            message_id: s.message_id.clone(),
            received_at_ms: self.clock.now_ms(),
            payload: s.payload.clone(),
            ephemeral: true,
        }
    }
}

#[cfg(test)]
#[path = "core_fanout_tests.rs"]
mod tests;
