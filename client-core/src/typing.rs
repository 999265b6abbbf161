//! Typing indicators: "I am typing" travels as a [`pb::TypingNotice`]
//! inside the pairwise Olm session, in an ephemeral envelope: the relay
//! pushes it to the recipient if they are connected and stores it nowhere,
//! so an offline recipient never sees it. It never goes through the outbox
//! (a typing notice that waits is worthless) and is never answered with a
//! receipt.
//!
//! The client rate-limits it: at most one per contact per
//! [`TYPING_INTERVAL`], remembered in the store so separate `tern typing`
//! runs obey it too. Like every send, it leaves on a connection of its own
//! ([`crate::transport::Dialer::connect_unlinked`]), kept apart in time from
//! the device's authentications (`spacing.rs`).
//!
//! Preparing (encrypt, save the advanced session) needs the store;
//! [`send_typing`] needs only the network, so a running client can do it
//! in a task of its own.

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::layers;
use crate::transport::{Dialer, OutgoingMany};
use std::time::Duration;
use tern_protocol::pb::{self, content::Body};
use tern_protocol::url::RelayUrl;

/// The shortest time between two typing notices to one contact.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(3);

/// What became of a typing notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypingOutcome {
    /// Handed to the contact's relay, which passes it on if they are
    /// connected (nobody learns whether they were).
    Sent,
    /// Not sent: one went to this contact less than [`TYPING_INTERVAL`]
    /// ago. Try again in this long.
    TooSoon(Duration),
}

/// A typing notice sealed and ready for the network: one ephemeral
/// envelope per relay (one for a contact; for a group, one upload per
/// relay of its members).
#[derive(Debug, Clone)]
pub struct PreparedTyping {
    pub(crate) sends: Vec<(RelayUrl, OutgoingMany)>,
}

/// How long until a typing notice may go to a contact last told at
/// `last_ms`, at `now_ms` (zero: now).
pub fn typing_wait(last_ms: Option<u64>, now_ms: u64) -> Duration {
    let interval = TYPING_INTERVAL.as_millis() as u64;
    match last_ms {
        Some(last) if now_ms < last.saturating_add(interval) => {
            Duration::from_millis((last.saturating_add(interval) - now_ms).min(interval))
        }
        _ => Duration::ZERO,
    }
}

impl Client {
    /// Seal a typing notice for the contact named `to` (or, if no contact
    /// has that name, the group: see `groups/typing.rs`) and save the
    /// advanced session (durably: a session step must never be sent twice);
    /// `Err(wait)` if one went to them too recently.
    pub async fn prepare_typing(
        &self,
        to: &str,
    ) -> Result<Result<PreparedTyping, Duration>, ClientError> {
        let contact = match self.contact_named(to) {
            Ok(c) => c,
            Err(ClientError::UnknownContact(_)) if self.group_named(to).is_ok() => {
                return self.prepare_group_typing(to).await;
            }
            Err(e) => return Err(e),
        };
        let now = now_ms();
        let wait = typing_wait(self.store.typing_sent_at(&contact.identity_key)?, now);
        if !wait.is_zero() {
            return Ok(Err(wait));
        }
        let mut session = self
            .load_session(&contact.identity_key)?
            .ok_or_else(|| ClientError::Store(format!("no session with {to}")))?;
        let id = random16();
        let content = layers::content(id, now, Body::Typing(pb::TypingNotice {}));
        let payload = layers::seal_content(
            &mut session,
            &self.account.identity_key(),
            &contact.seal_key,
            &content,
        );
        self.store.commit_typing(
            &contact.identity_key,
            &session.to_encrypted_pickle(&self.key),
            now,
        )?;
        self.store.flush().await?;
        Ok(Ok(PreparedTyping {
            sends: vec![(
                contact.relay_url.parse()?,
                OutgoingMany {
                    message_id: id,
                    payload,
                    targets: vec![(contact.mailbox_id, contact.send_token)],
                    ephemeral: true,
                },
            )],
        }))
    }

    /// Tell the contact named `to` that we are typing (see the module
    /// docs), unless we told them less than [`TYPING_INTERVAL`] ago.
    pub async fn send_typing(&mut self, to: &str) -> Result<TypingOutcome, ClientError> {
        match self.prepare_typing(to).await? {
            Ok(prepared) => {
                send_typing(&mut self.dialer, prepared).await?;
                Ok(TypingOutcome::Sent)
            }
            Err(wait) => Ok(TypingOutcome::TooSoon(wait)),
        }
    }
}

/// Hand a prepared typing notice to its relays, as ephemeral envelopes on
/// send connections of their own. For a group, a relay that cannot be
/// reached or a refused target costs only that notice; the first error is
/// returned once every relay was tried.
pub async fn send_typing(dialer: &mut Dialer, prepared: PreparedTyping) -> Result<(), ClientError> {
    let mut first_error = None;
    for (relay, envelope) in &prepared.sends {
        if let Err(e) = send_one(dialer, relay, envelope).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn send_one(
    dialer: &mut Dialer,
    relay: &RelayUrl,
    envelope: &OutgoingMany,
) -> Result<(), ClientError> {
    let link = dialer.connect_unlinked(relay).await?;
    let result = async {
        let mut stream = link.messages().await?;
        let results = stream.send_many(envelope).await?;
        stream.finish(Duration::from_secs(2)).await;
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(ClientError::Refused(e)),
            None => Ok(()),
        }
    }
    .await;
    link.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_notice_per_contact_per_interval() {
        assert_eq!(typing_wait(None, 10_000), Duration::ZERO);
        assert_eq!(
            typing_wait(Some(10_000), 11_000),
            Duration::from_millis(2_000)
        );
        assert_eq!(typing_wait(Some(10_000), 13_000), Duration::ZERO);
        // A clock that went backwards waits at most one interval.
        assert_eq!(typing_wait(Some(10_000), 9_000), TYPING_INTERVAL);
    }
}
