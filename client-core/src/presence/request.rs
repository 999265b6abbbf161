//! Presence commands as one request type, answered the same way by a
//! running client (over its socket) and by a client opened for one command:
//! `tern presence`, `tern settings presence|last-seen|push`.

use super::{owner, watch, ContactPresence, DeviceState, PresenceSharing};
use crate::client::Client;
use crate::error::ClientError;
use crate::transport::RelayLink;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// How long `tern presence` without a running client waits for relays.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3);

/// A presence command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PresenceRequest {
    /// Contacts' presence (one contact if named).
    Query {
        /// Only this contact.
        contact: Option<String>,
    },
    /// Show or set with whom presence is shared: `on`, `off`, or these
    /// contact names.
    Sharing {
        /// The new setting, if any.
        set: Option<SharingArg>,
    },
    /// Show or set whether watchers see last seen.
    LastSeen {
        /// The new setting, if any.
        set: Option<bool>,
    },
    /// Show or set the push endpoint (`""`: off).
    Push {
        /// The new endpoint, if any.
        set: Option<String>,
    },
}

/// `tern settings presence`'s value, with contact names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharingArg {
    /// Every contact.
    On,
    /// Nobody.
    Off,
    /// These contacts, by name.
    Contacts(Vec<String>),
}

/// A presence command's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum PresenceResult {
    /// Contacts' presence.
    States {
        /// One per contact.
        states: Vec<ContactPresence>,
    },
    /// The presence settings now in force.
    Settings {
        /// `on`, `off` or `contacts NAME...`.
        sharing: String,
        /// Watchers see last seen.
        last_seen: bool,
        /// The push endpoint, if any.
        push: Option<String>,
        /// The relay dropped the last endpoint after it failed too long.
        push_dropped: bool,
    },
}

impl Client {
    /// The presence settings as a [`PresenceResult::Settings`].
    pub fn presence_settings(&self) -> Result<PresenceResult, ClientError> {
        let s = self.settings()?;
        let sharing = match &s.presence {
            PresenceSharing::On => "on".to_string(),
            PresenceSharing::Off => "off".to_string(),
            PresenceSharing::Contacts(keys) => {
                let mut names = Vec::new();
                for c in self.store.contacts()? {
                    if keys.contains(&hex::encode(c.identity_key)) {
                        names.push(c.name);
                    }
                }
                format!("contacts {}", names.join(" "))
            }
        };
        Ok(PresenceResult::Settings {
            sharing,
            last_seen: s.last_seen,
            push: s.push.clone(),
            push_dropped: s.push_dropped,
        })
    }

    /// Apply a settings change; with `link` (authenticated, home) the
    /// relay hears of it now: the new capability set, or the endpoint.
    /// Without one, a change of sharing reaches the relay at the next
    /// connection; a push endpoint is only saved once the relay took it.
    pub async fn presence_set(
        &mut self,
        req: PresenceRequest,
        link: Option<&RelayLink>,
    ) -> Result<PresenceResult, ClientError> {
        let mut s = self.settings()?;
        match req {
            PresenceRequest::Query { .. } => {}
            PresenceRequest::Sharing { set: Some(arg) } => {
                s.presence = match arg {
                    SharingArg::On => PresenceSharing::On,
                    SharingArg::Off => PresenceSharing::Off,
                    SharingArg::Contacts(names) => {
                        let mut keys = Vec::new();
                        for n in names {
                            keys.push(hex::encode(self.contact_named(&n)?.identity_key));
                        }
                        PresenceSharing::Contacts(keys)
                    }
                };
                self.store.set_settings(&s)?;
                self.publish_presence(link).await?;
            }
            PresenceRequest::LastSeen { set: Some(on) } => {
                s.last_seen = on;
                self.store.set_settings(&s)?;
                self.publish_presence(link).await?;
            }
            PresenceRequest::Push { set: Some(url) } => {
                if let Some(link) = link {
                    owner::register_push(link, &url).await?;
                }
                s.push = (!url.is_empty()).then_some(url);
                s.push_dropped = false;
                self.store.set_settings(&s)?;
            }
            PresenceRequest::Sharing { set: None }
            | PresenceRequest::LastSeen { set: None }
            | PresenceRequest::Push { set: None } => {}
        }
        self.store.flush().await?;
        self.presence_settings()
    }

    /// Grants for newly allowed contacts into the outbox, and the
    /// capability set to the relay over `link` if there is one.
    pub(crate) async fn publish_presence(
        &mut self,
        link: Option<&RelayLink>,
    ) -> Result<bool, ClientError> {
        let (hashes, queued) = self.presence_reconcile().await?;
        if let Some(link) = link {
            let hide = !self.settings()?.last_seen;
            owner::publish(link, &hashes, hide).await?;
        }
        Ok(queued)
    }

    /// A presence command for a client opened for this one command: a
    /// query asks the relays once; a change is told to the home relay over
    /// a fresh authenticated connection, and grants are delivered.
    pub async fn presence_op(
        &mut self,
        req: PresenceRequest,
    ) -> Result<PresenceResult, ClientError> {
        match req {
            PresenceRequest::Query { contact } => {
                let grants = self.held_grants()?;
                let seen = watch::snapshot(&self.dialer, grants, SNAPSHOT_WAIT).await;
                let states: HashMap<[u8; 32], DeviceState> = seen
                    .into_iter()
                    .map(|s| (s.device, (s.online, s.last_seen_ms)))
                    .collect();
                let states = self.presence_view(&states, contact.as_deref())?;
                Ok(PresenceResult::States { states })
            }
            req @ (PresenceRequest::Sharing { set: Some(_) }
            | PresenceRequest::LastSeen { set: Some(_) }
            | PresenceRequest::Push { set: Some(_) }) => {
                let link = self.home_link().await?;
                let result = self.presence_set(req, Some(&link)).await;
                link.close();
                let result = result?;
                self.flush_outbox().await?;
                Ok(result)
            }
            _ => self.presence_settings(),
        }
    }
}
