//! The trust operations as one request type, so the CLI runs them the same
//! way with or without a running client: alone it calls
//! [`Client::trust`]; beside `tern listen` it sends the same
//! [`TrustRequest`] over the local socket (method `trust`), and the running
//! client calls [`Client::trust`] itself. Either way the CLI prints the
//! same [`TrustResult`].
//!
//! The operations are those of [`crate::invites`] (`tern invite --expires
//! / --list / --revoke`), [`crate::verify`] (`tern verify`) and
//! [`crate::rotation`] (`tern rotate`), and the account's devices
//! ([`crate::devices::manage`]: `tern device list / rename / remove`).

use crate::client::Client;
use crate::error::ClientError;
use crate::invites::{InviteRecord, DEFAULT_INVITE_TTL};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A trust operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TrustRequest {
    /// Make an invite usable for `ttl_ms` (default 7 days).
    Invite {
        /// How long it stays usable, ms.
        ttl_ms: Option<u64>,
    },
    /// Every invite made.
    InviteList,
    /// Revoke an invite (and its token at the relay).
    InviteRevoke {
        /// The invite's id.
        id: String,
    },
    /// The safety number with a contact.
    SafetyNumber {
        /// Contact name.
        contact: String,
    },
    /// Mark a contact verified, or not.
    SetVerified {
        /// Contact name.
        contact: String,
        /// Verified or not.
        verified: bool,
    },
    /// Accept a contact's new identity key.
    ConfirmKey {
        /// Contact name.
        contact: String,
    },
    /// Give a contact a new token (queued; the caller flushes).
    Rotate {
        /// Contact name.
        contact: String,
    },
    /// Which contacts are verified.
    Verified,
    /// The account's devices (`tern device list`).
    DeviceList,
    /// Rename a device (queued for contacts; the caller flushes).
    DeviceRename {
        /// Its id or a unique prefix.
        id: String,
        /// The new name.
        name: String,
    },
    /// Remove a device (queued for contacts; the caller flushes).
    DeviceRemove {
        /// Its id or a unique prefix.
        id: String,
    },
    /// Offer a link for `tern device link` beside a running client: the
    /// link mailbox and its code; the CLI waits for the new device itself.
    LinkOffer,
    /// Add the device that answered a link offered by this device, once
    /// the user confirmed the check code (`tern device link`).
    LinkAdd {
        /// The link code.
        code: String,
        /// The new device's `DeviceEntry`, encoded, hex.
        device: String,
    },
}

impl TrustRequest {
    /// Whether it queues messages the caller should deliver now.
    pub fn queues(&self) -> bool {
        matches!(
            self,
            TrustRequest::Rotate { .. }
                | TrustRequest::DeviceRename { .. }
                | TrustRequest::DeviceRemove { .. }
                | TrustRequest::LinkAdd { .. }
        )
    }
}

/// An invite as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteInfo {
    /// Its id.
    pub id: String,
    /// `outstanding`, `used`, `expired` or `revoked`.
    pub state: String,
    /// When it was made, ms since the epoch.
    pub created_at_ms: u64,
    /// When it expires, ms since the epoch.
    pub expires_at_ms: u64,
    /// Whether its token is revoked at the relay.
    pub token_revoked: bool,
}

impl InviteInfo {
    fn new(r: &InviteRecord, now_ms: u64) -> Self {
        Self {
            id: r.id.clone(),
            state: r.state(now_ms).as_str().to_string(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            token_revoked: r.token_revoked,
        }
    }
}

/// What a trust operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TrustResult {
    /// A new invite.
    Invite {
        /// The code.
        code: String,
        /// Its record.
        invite: InviteInfo,
    },
    /// Every invite.
    Invites {
        /// Oldest first.
        invites: Vec<InviteInfo>,
    },
    /// A revoked invite.
    Revoked {
        /// Its id.
        id: String,
    },
    /// A safety number (60 digits).
    SafetyNumber {
        /// The digits.
        number: String,
    },
    /// Done.
    Done,
    /// Contacts and whether each is verified.
    Verified {
        /// (name, verified), in name order.
        contacts: Vec<(String, bool)>,
    },
    /// The account's devices (after a rename or removal: the new list;
    /// after a link: the device added).
    Devices {
        /// In the list's order.
        devices: Vec<crate::devices::manage::DeviceInfo>,
    },
    /// A link offered: its code and the secret of the throwaway key that
    /// owns its mailbox (hex; over the local socket only).
    LinkOffer {
        /// The link code.
        code: String,
        /// The mailbox key's secret, hex.
        auth: String,
    },
}

impl Client {
    /// Run a trust operation. A `Rotate` is only queued: the caller
    /// delivers the outbox.
    pub async fn trust(&mut self, req: TrustRequest) -> Result<TrustResult, ClientError> {
        let now = crate::client::now_ms();
        Ok(match req {
            TrustRequest::Invite { ttl_ms } => {
                let ttl = ttl_ms.map_or(DEFAULT_INVITE_TTL, Duration::from_millis);
                let (code, record) = self.invite_for(ttl).await?;
                TrustResult::Invite {
                    code,
                    invite: InviteInfo::new(&record, now),
                }
            }
            TrustRequest::InviteList => TrustResult::Invites {
                invites: self
                    .invites()?
                    .iter()
                    .map(|r| InviteInfo::new(r, now))
                    .collect(),
            },
            TrustRequest::InviteRevoke { id } => TrustResult::Revoked {
                id: self.revoke_invite(&id).await?.id,
            },
            TrustRequest::SafetyNumber { contact } => TrustResult::SafetyNumber {
                number: self.safety_number(&contact)?,
            },
            TrustRequest::SetVerified { contact, verified } => {
                self.set_verified(&contact, verified).await?;
                TrustResult::Done
            }
            TrustRequest::ConfirmKey { contact } => {
                self.confirm_key(&contact).await?;
                TrustResult::Done
            }
            TrustRequest::Rotate { contact } => {
                self.rotate_token_queued(&contact, crate::rotation::ROTATION_GRACE)
                    .await?;
                TrustResult::Done
            }
            TrustRequest::Verified => {
                let mut contacts = Vec::new();
                for c in self.contacts()? {
                    let verified = self
                        .contact_state(&c.identity_key)?
                        .is_verified(&c.identity_key);
                    contacts.push((c.name, verified));
                }
                TrustResult::Verified { contacts }
            }
            TrustRequest::DeviceList => TrustResult::Devices {
                devices: self.devices()?,
            },
            TrustRequest::DeviceRename { id, name } => {
                self.rename_device_queued(&id, &name)?;
                TrustResult::Devices {
                    devices: self.devices()?,
                }
            }
            TrustRequest::DeviceRemove { id } => {
                self.remove_device_queued(&id).await?;
                TrustResult::Devices {
                    devices: self.devices()?,
                }
            }
            TrustRequest::LinkOffer => {
                let m = self.link_offer_mailbox().await?;
                TrustResult::LinkOffer {
                    code: m.code.clone(),
                    auth: hex::encode(m.auth),
                }
            }
            TrustRequest::LinkAdd { code, device } => {
                let entry = hex::decode(device.trim())
                    .map_err(|_| ClientError::Device("a damaged device entry".into()))?;
                TrustResult::Devices {
                    devices: vec![self.link_add(&code, &entry).await?],
                }
            }
        })
    }
}
