//! `tern device list / rename / remove`: the account's list as the user
//! sees it, and changing it. Every change is a new version signed by the
//! root key, stored, and pushed as a `DeviceListUpdate` to every contact
//! (all their devices) and to our own other devices.

use super::list::{sign_list, Device};
use super::OwnDevices;
use crate::client::{now_ms, random16, Client};
use crate::error::ClientError;
use crate::event::OutboxReport;
use crate::layers;
use serde::{Deserialize, Serialize};
use tern_protocol::pb::{self, content::Body};
use tracing::warn;

/// One device of the account, as `tern device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device id (16 hex digits).
    pub id: String,
    /// What the user calls it.
    pub name: String,
    /// Whether it is the device asked.
    pub this_device: bool,
    /// Its home relay.
    pub relay: String,
    /// When it was added, ms since the epoch.
    pub added_at_ms: u64,
}

/// The device whose id is `id` or starts with it (at least 4 hex digits),
/// if exactly one does.
pub(crate) fn find_device<'a>(devices: &'a [Device], id: &str) -> Result<&'a Device, ClientError> {
    let id = id.trim().to_ascii_lowercase();
    let hits: Vec<&Device> = if id.len() >= 4 {
        devices
            .iter()
            .filter(|d| d.id_hex().starts_with(&id))
            .collect()
    } else {
        Vec::new()
    };
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(ClientError::Device(format!(
            "no device {id:?} on this account"
        ))),
        _ => Err(ClientError::Device(format!(
            "{id:?} names more than one device"
        ))),
    }
}

impl Client {
    /// The account's devices, this one marked.
    pub fn devices(&mut self) -> Result<Vec<DeviceInfo>, ClientError> {
        let own = self.own_devices()?;
        let me = self.account.identity_key();
        Ok(own
            .list
            .devices
            .iter()
            .map(|d| DeviceInfo {
                id: d.id_hex(),
                name: d.name.clone(),
                this_device: d.identity_key == me,
                relay: d.relay_url.clone(),
                added_at_ms: d.added_at_ms,
            })
            .collect())
    }

    /// Call device `id` `name` from now on (on every device and contact).
    pub async fn rename_device(
        &mut self,
        id: &str,
        name: &str,
    ) -> Result<OutboxReport, ClientError> {
        self.rename_device_queued(id, name)?;
        self.store.flush().await?;
        self.flush_outbox().await
    }

    /// [`Client::rename_device`] up to the outbox.
    pub(crate) fn rename_device_queued(&mut self, id: &str, name: &str) -> Result<(), ClientError> {
        let own = self.own_devices()?;
        let name = crate::contacts::base_name(name);
        let mut devices = own.list.devices.clone();
        let target = find_device(&devices, id)?.id;
        for d in devices.iter_mut().filter(|d| d.id == target) {
            d.name = name.clone();
        }
        self.publish_list(own, devices)
    }

    /// Take device `id` off the account: contacts and our other devices
    /// get the new list and stop sending to it, our sessions with it are
    /// dropped, and the token it knew for this device's mailbox is revoked
    /// (a new one goes into the list).
    pub async fn remove_device(&mut self, id: &str) -> Result<OutboxReport, ClientError> {
        self.remove_device_queued(id).await?;
        self.flush_outbox().await
    }

    /// [`Client::remove_device`] up to the outbox (the token is minted and
    /// the old one revoked now).
    pub(crate) async fn remove_device_queued(&mut self, id: &str) -> Result<(), ClientError> {
        let own = self.own_devices()?;
        let me = self.account.identity_key();
        let gone = find_device(&own.list.devices, id)?.clone();
        if gone.identity_key == me {
            return Err(ClientError::Device(
                "this is the device asked; remove it from another device of the account".into(),
            ));
        }
        let mut devices: Vec<Device> = own
            .list
            .devices
            .iter()
            .filter(|d| d.id != gone.id)
            .cloned()
            .collect();
        // The removed device knew our shared token: a new one replaces it.
        let old_token = devices
            .iter()
            .find(|d| d.identity_key == me)
            .and_then(|d| d.token);
        if old_token.is_some() {
            let fresh = self.mint_own_token().await?;
            for d in devices.iter_mut().filter(|d| d.identity_key == me) {
                d.token = Some(fresh);
            }
        }
        self.store.drop_session(&gone.identity_key)?;
        self.publish_list(own, devices)?;
        self.store.flush().await?;
        if let Some(old) = old_token {
            let link = self.home_link().await?;
            self.dialer.spacing().note_auth();
            let revoked = crate::invites::revoke_for_good(&link, &old).await;
            link.close();
            revoked?;
        }
        Ok(())
    }

    /// A fresh send token for our own mailbox (to share in the list).
    pub(crate) async fn mint_own_token(&mut self) -> Result<[u8; 32], ClientError> {
        let link = self.home_link().await?;
        let token = link.create_token().await;
        self.dialer.spacing().note_auth();
        link.close();
        token
    }

    /// Sign `devices` as the next version of our list, store it, and queue
    /// it for every contact and every other device on it.
    pub(crate) fn publish_list(
        &mut self,
        mut own: OwnDevices,
        devices: Vec<Device>,
    ) -> Result<(), ClientError> {
        own.list = sign_list(&own.root(), own.list.version + 1, devices);
        self.put_own(&own)?;
        let body = Body::DeviceListUpdate(pb::DeviceListUpdate {
            list: Some(own.list.signed()),
        });
        for c in self.store.contacts()? {
            if self.contact_state(&c.identity_key)?.blocked {
                continue;
            }
            let content = layers::content(random16(), now_ms(), body.clone());
            if let Err(e) = self.enqueue_fanned(&c, None, &content, None) {
                warn!("device list not queued for {}: {e}", c.name);
            }
        }
        self.sync_to_own(body)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: [u8; 8]) -> Device {
        Device {
            id,
            identity_key: [id[0]; 32],
            signing_key: [0; 32],
            seal_key: [0; 32],
            relay_url: String::new(),
            mailbox_id: [0; 16],
            token: None,
            name: String::new(),
            added_at_ms: 0,
            fallback_key: [0; 32],
        }
    }

    #[test]
    fn devices_are_found_by_a_unique_prefix_of_their_id() {
        let ds = [
            dev([0xab, 0xcd, 1, 1, 1, 1, 1, 1]),
            dev([0xab, 0xce, 2, 2, 2, 2, 2, 2]),
        ];
        assert_eq!(find_device(&ds, "abcd").unwrap().id[2], 1);
        assert_eq!(find_device(&ds, "ABCE0202").unwrap().id[2], 2);
        assert!(find_device(&ds, "abc").is_err(), "too short to be sure");
        assert!(find_device(&ds, "ffff").is_err());
        let same = [dev([1, 2, 3, 4, 5, 6, 7, 8]), dev([1, 2, 3, 4, 5, 6, 7, 9])];
        assert!(find_device(&same, "01020304").is_err(), "ambiguous");
    }
}
