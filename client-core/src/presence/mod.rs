//! Presence under the user's control (docs/protocol.md §17).
//!
//! Each device hands every contact it shares presence with a capability of
//! its own (32 random bytes) in a `PresenceGrant`, end to end, and
//! publishes the SHA-256 hashes of those capabilities to its home relay on
//! its authenticated connection ([`owner`]); a capability left out of the
//! next publish is revoked. While the running client is connected it beats
//! on that connection, and the relay counts the device online until no
//! beat came for its grace period.
//!
//! A contact's devices keep the grants they were given, one per granting
//! device, and watch them ([`watch`]) on connections of their own that never
//! authenticate, so the relay cannot tie a watcher to its mailbox. An
//! account shows online when any of its devices is, and last seen is the
//! latest of theirs.
//!
//! Who gets a grant follows [`PresenceSharing`]; `tern settings last-seen
//! off` makes the relay tell watchers online/offline only.

pub mod owner;
pub mod request;
pub mod watch;

use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::layers;
use crate::store::Contact;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use tern_protocol::pb::{self, content::Body};
use tracing::{debug, warn};

/// Capabilities this device gave, by contact identity key.
pub(crate) const GIVEN_TREE: &str = "pres_given";
/// Grants contacts gave us, by contact identity key || granting device key.
pub(crate) const HELD_TREE: &str = "pres_held";
/// Bumped on every grant received, so the running client re-watches.
const HELD_GEN_KEY: &[u8] = b"gen";

/// With whom this device shares presence (`tern settings presence`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceSharing {
    /// Every contact (the default).
    #[default]
    On,
    /// Nobody.
    Off,
    /// Only these contacts (identity keys, hex).
    Contacts(Vec<String>),
}

/// A grant held: where and with what to watch one device of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldGrant {
    /// The contact's identity key (the conversation).
    pub contact: [u8; 32],
    /// The granting device's identity key.
    pub device: [u8; 32],
    /// Its home relay.
    pub relay_url: String,
    /// The capability.
    pub capability: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Given {
    capability: [u8; 32],
}

/// One contact's presence as far as this device knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactPresence {
    /// The contact's name.
    pub contact: String,
    /// Online now; `None` when unknown (no grant, or no answer yet).
    pub online: Option<bool>,
    /// When last online (ms since the epoch, rounded to the minute by the
    /// relay); `None` when online, hidden or unknown.
    pub last_seen_ms: Option<u64>,
}

/// What one watched device last said: (online, last seen ms, 0 unknown).
pub type DeviceState = (bool, u64);

/// An account's presence from its devices' states: online if any is; last
/// seen the latest.
pub fn combine<'a>(states: impl IntoIterator<Item = &'a DeviceState>) -> (Option<bool>, u64) {
    let mut online = None;
    let mut last = 0;
    for (on, seen) in states {
        online = Some(online.unwrap_or(false) || *on);
        last = last.max(*seen);
    }
    (online, last)
}

/// SHA-256 of a capability: what the relay is given.
pub fn capability_hash(capability: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(capability).into()
}

impl Client {
    fn presence_tree(&self, name: &str) -> Result<sled::Tree, ClientError> {
        Ok(self.store.db().open_tree(name)?)
    }

    /// The contacts allowed to see our presence now.
    fn presence_audience(&self) -> Result<Vec<Contact>, ClientError> {
        let settings = self.settings()?;
        let mut out = Vec::new();
        for c in self.store.contacts()? {
            if self.contact_state(&c.identity_key)?.blocked {
                continue;
            }
            let allowed = match &settings.presence {
                PresenceSharing::On => true,
                PresenceSharing::Off => false,
                PresenceSharing::Contacts(keys) => keys.contains(&hex::encode(c.identity_key)),
            };
            if allowed {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Bring the capabilities we gave in line with the settings: a grant
    /// (queued in the outbox) for each allowed contact without one, and
    /// those of contacts no longer allowed forgotten. Returns the hashes
    /// to publish and whether grants were queued (flush the outbox).
    pub async fn presence_reconcile(&mut self) -> Result<(Vec<[u8; 32]>, bool), ClientError> {
        let given = self.presence_tree(GIVEN_TREE)?;
        let audience = self.presence_audience()?;
        let allowed: HashSet<[u8; 32]> = audience.iter().map(|c| c.identity_key).collect();
        for item in given.iter() {
            let (k, _) = item?;
            if <[u8; 32]>::try_from(&k[..]).is_ok_and(|k| !allowed.contains(&k)) {
                given.remove(k)?;
                debug!("presence capability revoked");
            }
        }
        let mut queued = false;
        for c in &audience {
            if given.contains_key(c.identity_key)? {
                continue;
            }
            let Some(session) = self.load_session(&c.identity_key)? else {
                continue;
            };
            let mut capability = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut capability);
            let body = Body::PresenceGrant(pb::PresenceGrant {
                relay_url: self.profile.relay_url.clone(),
                capability: capability.to_vec().into(),
            });
            let content = layers::content(random16(), now_ms(), body);
            // Quiet items, like fan-out copies: a grant is settled when
            // the relay takes it and never reported as a message sent.
            let target = crate::devices::Target::of_contact(c);
            self.enqueue_to(&target, session, &content, None, true)?;
            self.copy_to_other_devices(c, &content)?;
            let record = serde_json::to_vec(&Given { capability })
                .map_err(|e| ClientError::Store(e.to_string()))?;
            given.insert(c.identity_key, record)?;
            queued = true;
        }
        let mut hashes = Vec::new();
        for item in given.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<Given>(&v) {
                Ok(g) => hashes.push(capability_hash(&g.capability)),
                Err(e) => warn!("a damaged presence capability record: {e}"),
            }
        }
        self.store.flush().await?;
        Ok((hashes, queued))
    }

    /// A contact's device gave us a grant: keep it (replacing that
    /// device's earlier one).
    pub(crate) fn accept_presence_grant(
        &self,
        contact: &[u8; 32],
        device: &[u8; 32],
        g: &pb::PresenceGrant,
    ) -> Result<(), ClientError> {
        let Some(capability) = layers::key32(&g.capability) else {
            warn!("a malformed presence grant");
            return Ok(());
        };
        if g.relay_url.parse::<tern_protocol::url::RelayUrl>().is_err() {
            warn!("a presence grant with a bad relay URL");
            return Ok(());
        }
        let held = HeldGrant {
            contact: *contact,
            device: *device,
            relay_url: g.relay_url.clone(),
            capability,
        };
        let tree = self.presence_tree(HELD_TREE)?;
        let mut key = contact.to_vec();
        key.extend_from_slice(device);
        let v = serde_json::to_vec(&held).map_err(|e| ClientError::Store(e.to_string()))?;
        tree.insert(key, v)?;
        let gen = self.presence_generation()?.wrapping_add(1);
        tree.insert(HELD_GEN_KEY, &gen.to_be_bytes())?;
        Ok(())
    }

    /// Changes every time a grant is received.
    pub fn presence_generation(&self) -> Result<u64, ClientError> {
        let tree = self.presence_tree(HELD_TREE)?;
        Ok(tree
            .get(HELD_GEN_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Every grant we hold from a current contact.
    pub fn held_grants(&self) -> Result<Vec<HeldGrant>, ClientError> {
        let contacts: HashSet<[u8; 32]> = self
            .store
            .contacts()?
            .into_iter()
            .map(|c| c.identity_key)
            .collect();
        let mut out = Vec::new();
        for item in self.presence_tree(HELD_TREE)?.iter() {
            let (k, v) = item?;
            if k.len() != 64 {
                continue;
            }
            match serde_json::from_slice::<HeldGrant>(&v) {
                Ok(g) if contacts.contains(&g.contact) => out.push(g),
                Ok(_) => {}
                Err(e) => warn!("a damaged presence grant record: {e}"),
            }
        }
        Ok(out)
    }

    /// Each contact's presence from what the watched devices said
    /// (`states`, by granting device key), `only` one contact if named.
    pub fn presence_view(
        &self,
        states: &HashMap<[u8; 32], DeviceState>,
        only: Option<&str>,
    ) -> Result<Vec<ContactPresence>, ClientError> {
        let grants = self.held_grants()?;
        let contacts = match only {
            Some(name) => vec![self.contact_named(name)?],
            None => self.store.contacts()?,
        };
        Ok(contacts
            .into_iter()
            .map(|c| {
                let known: Vec<&DeviceState> = grants
                    .iter()
                    .filter(|g| g.contact == c.identity_key)
                    .filter_map(|g| states.get(&g.device))
                    .collect();
                let (online, last) = combine(known);
                ContactPresence {
                    contact: c.name,
                    online,
                    last_seen_ms: (online == Some(false) && last != 0).then_some(last),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_online_when_any_device_is_and_last_seen_is_the_latest() {
        assert_eq!(combine(&[]), (None, 0), "no device heard from: unknown");
        assert_eq!(
            combine(&[(false, 60_000), (false, 120_000)]),
            (Some(false), 120_000)
        );
        assert_eq!(combine(&[(false, 60_000), (true, 0)]).0, Some(true));
    }

    #[test]
    fn sharing_reads_from_settings_json_and_defaults_to_every_contact() {
        let s: crate::settings::Settings = serde_json::from_str("{}").unwrap();
        assert_eq!(s.presence, PresenceSharing::On);
        assert!(s.last_seen);
        let s: crate::settings::Settings =
            serde_json::from_str(r#"{"presence":{"contacts":["ab"]},"last_seen":false}"#).unwrap();
        assert_eq!(s.presence, PresenceSharing::Contacts(vec!["ab".into()]));
        assert!(!s.last_seen);
    }
}
