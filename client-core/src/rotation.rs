//! Rotating the token a contact writes to us with, through the end-to-end
//! channel.
//!
//! A token that never changes ties every envelope a contact ever sent to
//! every one they will send. `tern rotate CONTACT` takes a fresh token
//! from the pool ([`crate::tokens`], minted ahead of need), tells the
//! contact "write to me with this token from now on" in a `TokenRotation`
//! (Olm-encrypted like a text), and keeps the old token working for a
//! grace period, so messages the contact sent (or queued) before it read
//! the rotation still arrive. The relay does not tell a mailbox which
//! token an envelope used, so "the contact has used the new one" cannot be
//! observed; the old token is revoked once the grace period is over, at
//! the next chance (the next authentication for another reason), and at
//! once if the contact is blocked.

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::event::OutboxReport;
use crate::layers;
use crate::transport::RelayLink;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tern_protocol::pb::{self, content::Body};
use tracing::debug;

/// How long an old token keeps working after a rotation.
pub const ROTATION_GRACE: Duration = Duration::from_secs(2 * 24 * 3600);

/// A token being retired after a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringToken {
    /// The old token.
    pub token: [u8; 32],
    /// When it is revoked at the relay (at the next chance after this).
    pub revoke_after_ms: u64,
}

impl Client {
    /// Give the contact named `name` a new token to write to us with, and
    /// retire the old one after [`ROTATION_GRACE`]. The rotation goes
    /// through the outbox like a text; returns the flush's report.
    pub async fn rotate_token(&mut self, name: &str) -> Result<OutboxReport, ClientError> {
        self.rotate_token_with(name, ROTATION_GRACE).await
    }

    /// [`Client::rotate_token`] with a given grace period.
    pub async fn rotate_token_with(
        &mut self,
        name: &str,
        grace: Duration,
    ) -> Result<OutboxReport, ClientError> {
        self.rotate_token_queued(name, grace).await?;
        self.flush_outbox().await
    }

    /// [`Client::rotate_token_with`] up to the outbox: the rotation is
    /// queued (durably) with the contact's new state; nothing is sent yet.
    pub(crate) async fn rotate_token_queued(
        &mut self,
        name: &str,
        grace: Duration,
    ) -> Result<(), ClientError> {
        let mut contact = self.contact_named(name)?;
        let mut state = self.check_sendable(&contact)?;
        let session = self
            .load_session(&contact.identity_key)?
            .ok_or_else(|| ClientError::Store(format!("no session with {name}")))?;
        let token = self.take_token().await?;
        let now = now_ms();
        if let Some(old) = contact.token_given.replace(token) {
            let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
            state.retiring.push(RetiringToken {
                token: old,
                revoke_after_ms: now.saturating_add(grace_ms),
            });
        }
        let body = Body::TokenRotation(pb::TokenRotation {
            send_token: token.to_vec().into(),
        });
        let content = layers::content(random16(), now, body);
        self.enqueue(&contact, session, &content, None)?;
        self.store.put_contact(&contact)?;
        self.put_contact_state(&contact.identity_key, &state)?;
        self.store.flush().await
    }

    /// Revoke, over `link`, the retired tokens whose grace period is over
    /// (all of them for a blocked contact).
    pub(crate) async fn revoke_retired_tokens(&self, link: &RelayLink) -> Result<(), ClientError> {
        let now = now_ms();
        for c in self.store.contacts()? {
            let mut state = self.contact_state(&c.identity_key)?;
            let before = state.retiring.len();
            let mut keep = Vec::new();
            for r in std::mem::take(&mut state.retiring) {
                if state.blocked || now >= r.revoke_after_ms {
                    crate::invites::revoke_for_good(link, &r.token).await?;
                } else {
                    keep.push(r);
                }
            }
            state.retiring = keep;
            if state.retiring.len() != before {
                debug!("retired {} old token(s)", before - state.retiring.len());
                self.put_contact_state(&c.identity_key, &state)?;
            }
        }
        Ok(())
    }
}
