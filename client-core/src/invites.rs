//! Invite records: which token each invite carries, when it expires, and
//! which contact used it.
//!
//! An invite hands out one of our send tokens. The inviter keeps a record
//! of it (`priv_invites`), and a hello is taken only if the token it names
//! is one of our outstanding invites: not expired, not revoked, not used
//! before. The contact is then bound to that token, so `tern block`
//! revokes the token the contact really holds, not whatever its hello
//! claimed. Invites expire (default 7 days); expired and revoked ones have
//! their tokens revoked at the relay at the next chance (the next time the
//! client is authenticated for another reason, or `tern invite --revoke`).
//!
//! The rule for a hello is pure ([`usable`]) so it is tested on its own.

use crate::client::{random16, Client};
use crate::error::ClientError;
use crate::store::ContactId;
use crate::transport::RelayLink;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::debug;

/// How long an invite stays usable unless told otherwise.
pub const DEFAULT_INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The tree of invite records.
pub(crate) const TREE: &str = "priv_invites";

/// One invite we made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Its id (hex), for `tern invite --list` and `--revoke`.
    pub id: String,
    /// The send token it carries.
    pub token: [u8; 32],
    /// When it was made, ms since the epoch.
    pub created_at_ms: u64,
    /// When it stops being usable, ms since the epoch.
    pub expires_at_ms: u64,
    /// The contact whose hello used it, if one did.
    pub used_by: Option<ContactId>,
    /// Revoked by the user.
    pub revoked: bool,
    /// Its token is revoked at the relay (revoked, or expired unused).
    pub token_revoked: bool,
}

/// Where an invite stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteState {
    /// Waiting to be accepted.
    Outstanding,
    /// A contact accepted it.
    Used,
    /// Not accepted in time.
    Expired,
    /// Revoked by the user.
    Revoked,
}

impl InviteState {
    /// The state as `tern invite --list` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            InviteState::Outstanding => "outstanding",
            InviteState::Used => "used",
            InviteState::Expired => "expired",
            InviteState::Revoked => "revoked",
        }
    }
}

impl InviteRecord {
    /// Where it stands at `now_ms`.
    pub fn state(&self, now_ms: u64) -> InviteState {
        if self.revoked {
            InviteState::Revoked
        } else if self.used_by.is_some() {
            InviteState::Used
        } else if now_ms >= self.expires_at_ms {
            InviteState::Expired
        } else {
            InviteState::Outstanding
        }
    }

    /// Whether its token should be revoked at the relay and is not yet.
    fn token_to_revoke(&self, now_ms: u64) -> bool {
        !self.token_revoked
            && matches!(
                self.state(now_ms),
                InviteState::Expired | InviteState::Revoked
            )
    }
}

/// The record a hello naming `token` may use at `now_ms`: an outstanding
/// invite carrying exactly that token (compared in constant time).
pub fn usable<'a>(
    records: &'a [InviteRecord],
    token: Option<&[u8; 32]>,
    now_ms: u64,
) -> Option<&'a InviteRecord> {
    let token = token?;
    records
        .iter()
        .find(|r| bool::from(r.token.ct_eq(token)) && r.state(now_ms) == InviteState::Outstanding)
}

impl Client {
    /// Every invite record, oldest first.
    pub fn invites(&self) -> Result<Vec<InviteRecord>, ClientError> {
        let tree = self.store.db().open_tree(TREE)?;
        let mut all = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv?;
            all.push(self.store.open_record::<InviteRecord>(TREE, &k, &v)?);
        }
        all.sort_by_key(|r| (r.created_at_ms, r.id.clone()));
        Ok(all)
    }

    /// A record sealed for its place: (key, value).
    pub(crate) fn sealed_invite(
        &self,
        r: &InviteRecord,
    ) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let k = r.id.as_bytes().to_vec();
        let v = self.store.seal_record(TREE, &k, r)?;
        Ok((k, v))
    }

    /// Save an invite record.
    pub(crate) fn put_invite(&self, r: &InviteRecord) -> Result<(), ClientError> {
        let (k, v) = self.sealed_invite(r)?;
        self.store.db().open_tree(TREE)?.insert(k, v)?;
        Ok(())
    }

    /// Record a new invite carrying `token`, usable for `ttl`.
    pub(crate) fn record_invite(
        &self,
        token: [u8; 32],
        now_ms: u64,
        ttl: Duration,
    ) -> Result<InviteRecord, ClientError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let record = InviteRecord {
            id: hex::encode(&random16()[..6]),
            token,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            used_by: None,
            revoked: false,
            token_revoked: false,
        };
        self.put_invite(&record)?;
        Ok(record)
    }

    /// Revoke the invite `id`: it can no longer be accepted, and its token
    /// is revoked at the relay (if a contact used it, they are blocked).
    pub async fn revoke_invite(&mut self, id: &str) -> Result<InviteRecord, ClientError> {
        let mut record = self
            .invites()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| ClientError::UnknownInvite(id.to_string()))?;
        record.revoked = true;
        self.put_invite(&record)?;
        self.store.flush().await?;
        let link = self.home_link().await?;
        self.dialer.spacing().note_auth();
        let result = self.revoke_stale_tokens(&link).await;
        link.close();
        result?;
        Ok(record)
    }

    /// Revoke at the relay the tokens of invites that expired unused or
    /// were revoked, over `link` (authenticated as us). Called whenever the
    /// client is authenticated anyway, so it adds no connection of its own.
    pub(crate) async fn revoke_stale_tokens(&self, link: &RelayLink) -> Result<(), ClientError> {
        let now = crate::client::now_ms();
        for mut r in self.invites()? {
            if r.token_to_revoke(now) {
                revoke_for_good(link, &r.token).await?;
                debug!("revoked the token of invite {}", r.id);
                r.token_revoked = true;
                self.put_invite(&r)?;
            }
        }
        self.revoke_retired_tokens(link).await?;
        self.store.flush().await
    }
}

/// Revoke `token` over `link`; a token the relay does not know as ours is
/// as good as revoked (it cannot be used), so it is not tried again.
pub(crate) async fn revoke_for_good(link: &RelayLink, token: &[u8; 32]) -> Result<(), ClientError> {
    match link.revoke_token(token).await {
        Err(e) if e.is_token_invalid() => {
            debug!("the relay does not know a token we revoke: done");
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: u8, expires_at_ms: u64) -> InviteRecord {
        InviteRecord {
            id: format!("{token}"),
            token: [token; 32],
            created_at_ms: 0,
            expires_at_ms,
            used_by: None,
            revoked: false,
            token_revoked: false,
        }
    }

    #[test]
    fn only_an_outstanding_invite_with_that_token_is_usable() {
        let mut used = record(2, 100);
        used.used_by = Some([9; 32]);
        let mut revoked = record(3, 100);
        revoked.revoked = true;
        let records = vec![record(1, 100), used, revoked, record(4, 50)];
        assert_eq!(
            usable(&records, Some(&[1; 32]), 10).map(|r| &r.id[..]),
            Some("1")
        );
        assert!(usable(&records, Some(&[1; 32]), 100).is_none(), "expired");
        assert!(usable(&records, Some(&[2; 32]), 10).is_none(), "used");
        assert!(usable(&records, Some(&[3; 32]), 10).is_none(), "revoked");
        assert!(usable(&records, Some(&[4; 32]), 60).is_none(), "expired");
        assert!(usable(&records, Some(&[5; 32]), 10).is_none(), "never ours");
        assert!(usable(&records, None, 10).is_none(), "no token");
    }

    #[test]
    fn states_and_which_tokens_to_revoke() {
        let r = record(1, 100);
        assert_eq!(r.state(99), InviteState::Outstanding);
        assert_eq!(r.state(100), InviteState::Expired);
        assert!(!r.token_to_revoke(99));
        assert!(r.token_to_revoke(100));
        let mut done = r.clone();
        done.token_revoked = true;
        assert!(!done.token_to_revoke(100));
        let mut used = r;
        used.used_by = Some([1; 32]);
        assert_eq!(used.state(1000), InviteState::Used);
        assert!(
            !used.token_to_revoke(1000),
            "a used invite's token is the contact's"
        );
    }
}
