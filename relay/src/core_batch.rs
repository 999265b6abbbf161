//! A stream's batch of sends in two store calls: every token looked up at
//! once ([`MailboxStore::tokens`]), then every envelope appended at once
//! ([`MailboxStore::append_batch`]). Each send is checked and answered
//! exactly as alone (`RelayCore::send` is a batch of one); what changes is
//! how many round trips an engine across a network pays for the batch:
//! the Redis engine sends each call's commands together, one pipeline per
//! primary, instead of two round trips per send (docs/decisions.md).
//! The embedded engine's defaults do the calls one by one, as before.

use super::{fixed, storage_unavailable, store_error, Accepted, RelayCore, TokenCheck, TOKEN_LEN};
use crate::clock::Clock;
use crate::store::{BatchAppend, MailboxId, MailboxStore, MessageId, TokenHash};
use tern_protocol::pb;
use tern_protocol::{ErrorCode, WireError};

/// A send past the checks that need no store, waiting for its token.
struct Checked {
    /// Its place in the batch.
    at: usize,
    mailbox: MailboxId,
    message_id: MessageId,
}

impl<S: MailboxStore, C: Clock> RelayCore<S, C> {
    /// Check and apply a stream's sends, one answer per send in order, as
    /// [`Self::send`] would one by one. Sends to the same mailbox are
    /// stored in batch order. For stored envelopes the caller must await
    /// [`Self::durable`] once before answering any of them.
    pub fn send_batch(&self, sends: &[pb::Send]) -> Vec<Result<Accepted, WireError>> {
        let mut out: Vec<Option<Result<Accepted, WireError>>> =
            (0..sends.len()).map(|_| None).collect();
        let mut checked = Vec::with_capacity(sends.len());
        let mut hashes: Vec<TokenHash> = Vec::with_capacity(sends.len());
        for (at, s) in sends.iter().enumerate() {
            match self.check_send(s) {
                Ok((mailbox, message_id, hash)) => {
                    checked.push(Checked {
                        at,
                        mailbox,
                        message_id,
                    });
                    hashes.push(hash);
                }
                Err(e) => out[at] = Some(Err(e)),
            }
        }
        let records = self.store.tokens(&hashes);
        let mut items = Vec::with_capacity(checked.len());
        let mut item_at = Vec::with_capacity(checked.len());
        for ((c, hash), record) in checked.iter().zip(hashes).zip(records) {
            let s = &sends[c.at];
            let verdict = self
                .judge_token(&c.mailbox, hash, record)
                .and_then(|check| self.after_token(s, c.mailbox, check));
            match verdict {
                Ok(Some(accepted)) => out[c.at] = Some(Ok(accepted)),
                Ok(None) => {
                    let (env, quota) = self.stamp(c.message_id, &s.payload);
                    items.push(BatchAppend {
                        mailbox: c.mailbox,
                        env,
                        quota,
                    });
                    item_at.push(c.at);
                }
                Err(e) => out[c.at] = Some(Err(e)),
            }
        }
        let appended = if items.is_empty() {
            Vec::new()
        } else {
            self.store.append_batch(&items)
        };
        for (i, at) in item_at.into_iter().enumerate() {
            let result = match appended.get(i) {
                Some(Ok(a)) => Ok(Accepted::Stored {
                    mailbox: items[i].mailbox,
                    seq: a.seq,
                    duplicate: a.duplicate,
                }),
                Some(Err(e)) => Err(store_error(e.clone())),
                None => Err(storage_unavailable()),
            };
            out[at] = Some(result);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(storage_unavailable())))
            .collect()
    }

    /// An envelope of `len` bytes is within the relay's limit.
    pub(crate) fn check_envelope_size(&self, len: usize) -> Result<(), WireError> {
        if len > self.limits.max_envelope_bytes {
            return Err(WireError::new(
                ErrorCode::EnvelopeTooLarge,
                format!(
                    "envelope of {len} bytes exceeds the maximum of {}",
                    self.limits.max_envelope_bytes
                ),
            ));
        }
        Ok(())
    }

    /// What a send says about itself, checked before its token is looked
    /// up: its ids, its size, its token's length (an unusable token never
    /// reaches the store), and the token's hash.
    fn check_send(&self, s: &pb::Send) -> Result<(MailboxId, MessageId, TokenHash), WireError> {
        let mailbox: MailboxId = fixed(&s.mailbox_id, "mailbox_id")?;
        let message_id: MessageId = fixed(&s.message_id, "message_id")?;
        self.check_envelope_size(s.payload.len())?;
        if s.token.len() != TOKEN_LEN {
            return Err(super::invalid_token());
        }
        Ok((mailbox, message_id, super::token_hash(&s.token)))
    }

    /// A send whose token passed: answered now (ephemeral, or a revoked
    /// token's send dropped), or None to store it.
    fn after_token(
        &self,
        s: &pb::Send,
        mailbox: MailboxId,
        check: TokenCheck,
    ) -> Result<Option<Accepted>, WireError> {
        let revoked = matches!(check, TokenCheck::Revoked(_));
        if s.ephemeral {
            return Ok(Some(if revoked {
                Accepted::Discarded { ephemeral: true }
            } else {
                Accepted::Ephemeral { mailbox }
            }));
        }
        // A full disk refuses a blocked sender's send as it would anyone's.
        self.check_disk()?;
        Ok(revoked.then_some(Accepted::Discarded { ephemeral: false }))
    }
}
