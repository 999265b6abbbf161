//! **Pure**: an account's device list, signed by its root key, and the rules
//! for accepting one. No I/O, no clock: the caller stores what these return.
//!
//! A list is accepted only if the root key it is checked against signed it
//! (`"tern/1 device list" || list`), it names that root key, every entry is
//! well formed, no device id or identity key appears twice, and it has at
//! least one and at most [`MAX_DEVICES`] devices. An update must also carry
//! a higher version than the list held ([`accept_update`]); the first list
//! of a contact must name the device it came from ([`accept_first`]).

use crate::layers::key32;
use serde::{Deserialize, Serialize};
use tern_crypto::{verify_signature, RootKey};
use tern_protocol::pb;
use thiserror::Error;

/// Domain separation for list signatures.
pub const LIST_DOMAIN: &[u8] = b"tern/1 device list";
/// The most devices one account may list.
pub const MAX_DEVICES: usize = 16;

/// Why a device list was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ListError {
    /// The signature is not the root key's over this list.
    #[error("device list is not signed by the account's root key")]
    BadSignature,
    /// The list names another root key than the one it is checked against.
    #[error("device list names another root key")]
    OtherRoot,
    /// Not older than, or the same as, the list held.
    #[error("device list version {got} is not newer than {held}")]
    Stale {
        /// The version offered.
        got: u64,
        /// The version held.
        held: u64,
    },
    /// Damaged, empty, too long, or with a repeated device.
    #[error("device list is malformed: {0}")]
    Malformed(&'static str),
    /// A first list that does not name the device that sent it.
    #[error("device list does not name the device that sent it")]
    SenderMissing,
}

/// One device as the list names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// 8 random bytes naming it within its account.
    pub id: [u8; 8],
    /// Its Curve25519 identity key.
    pub identity_key: [u8; 32],
    /// Its Ed25519 signing key.
    pub signing_key: [u8; 32],
    /// Its X25519 seal key.
    pub seal_key: [u8; 32],
    /// Its home relay.
    pub relay_url: String,
    /// Its mailbox.
    pub mailbox_id: [u8; 16],
    /// The send token the account's contacts and devices share for it.
    pub token: Option<[u8; 32]>,
    /// What the user calls it.
    pub name: String,
    /// When it was added, ms since the epoch.
    pub added_at_ms: u64,
    /// Its reusable Olm fallback key.
    pub fallback_key: [u8; 32],
}

impl Device {
    /// The id as people type it (16 hex digits).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::DeviceEntry {
        pb::DeviceEntry {
            device_id: self.id.to_vec().into(),
            identity_key: self.identity_key.to_vec().into(),
            signing_key: self.signing_key.to_vec().into(),
            seal_key: self.seal_key.to_vec().into(),
            address: Some(pb::Address {
                relay_url: self.relay_url.clone(),
                mailbox_id: self.mailbox_id.to_vec().into(),
                send_token: self.token.map(|t| t.to_vec()).unwrap_or_default().into(),
            }),
            name: self.name.clone(),
            added_at_ms: self.added_at_ms,
            fallback_key: self.fallback_key.to_vec().into(),
        }
    }

    /// Read a wire entry, checking every field's shape.
    pub fn from_pb(e: &pb::DeviceEntry) -> Result<Self, ListError> {
        let bad = ListError::Malformed;
        let addr = e.address.as_ref().ok_or(bad("address"))?;
        addr.relay_url
            .parse::<tern_protocol::url::RelayUrl>()
            .map_err(|_| bad("relay URL"))?;
        let token = match addr.send_token.len() {
            0 => None,
            _ => Some(key32(&addr.send_token).ok_or(bad("send token"))?),
        };
        if e.name.len() > tern_protocol::invite::MAX_NAME_LEN {
            return Err(bad("name"));
        }
        Ok(Self {
            id: e.device_id[..].try_into().map_err(|_| bad("device id"))?,
            identity_key: key32(&e.identity_key).ok_or(bad("identity key"))?,
            signing_key: key32(&e.signing_key).ok_or(bad("signing key"))?,
            seal_key: key32(&e.seal_key).ok_or(bad("seal key"))?,
            relay_url: addr.relay_url.clone(),
            mailbox_id: addr.mailbox_id[..]
                .try_into()
                .map_err(|_| bad("mailbox id"))?,
            token,
            name: e.name.clone(),
            added_at_ms: e.added_at_ms,
            fallback_key: key32(&e.fallback_key).ok_or(bad("fallback key"))?,
        })
    }
}

/// A list whose signature was checked (or that we signed), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// The root key that signed it.
    pub root_key: [u8; 32],
    /// Higher replaces lower.
    pub version: u64,
    /// The devices.
    pub devices: Vec<Device>,
    /// The encoded `DeviceList` as signed.
    pub list: Vec<u8>,
    /// The root key's signature over it.
    pub signature: Vec<u8>,
}

impl DeviceList {
    /// The device with this identity key, if listed.
    pub fn device(&self, identity_key: &[u8; 32]) -> Option<&Device> {
        self.devices
            .iter()
            .find(|d| &d.identity_key == identity_key)
    }

    /// The wire form, to send.
    pub fn signed(&self) -> pb::DeviceSignedList {
        pb::DeviceSignedList {
            list: self.list.clone().into(),
            signature: self.signature.clone().into(),
        }
    }
}

fn signed_message(list: &[u8]) -> Vec<u8> {
    let mut m = LIST_DOMAIN.to_vec();
    m.extend_from_slice(list);
    m
}

/// Sign `devices` as version `version` of the account's list.
pub fn sign_list(root: &RootKey, version: u64, devices: Vec<Device>) -> DeviceList {
    use prost::Message;
    let list = pb::DeviceList {
        root_key: root.public().to_vec().into(),
        version,
        devices: devices.iter().map(Device::to_pb).collect(),
    }
    .encode_to_vec();
    let signature = root.sign(&signed_message(&list)).to_vec();
    DeviceList {
        root_key: root.public(),
        version,
        devices,
        list,
        signature,
    }
}

/// Check `signed` against `root_key` and read it.
pub fn verify_list(
    root_key: &[u8; 32],
    signed: &pb::DeviceSignedList,
) -> Result<DeviceList, ListError> {
    use prost::Message;
    verify_signature(root_key, &signed_message(&signed.list), &signed.signature)
        .map_err(|_| ListError::BadSignature)?;
    let list =
        pb::DeviceList::decode(&signed.list[..]).map_err(|_| ListError::Malformed("list"))?;
    if list.root_key[..] != root_key[..] {
        return Err(ListError::OtherRoot);
    }
    if list.devices.is_empty() || list.devices.len() > MAX_DEVICES {
        return Err(ListError::Malformed("number of devices"));
    }
    let devices = list
        .devices
        .iter()
        .map(Device::from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    for (i, d) in devices.iter().enumerate() {
        if devices[..i]
            .iter()
            .any(|o| o.id == d.id || o.identity_key == d.identity_key)
        {
            return Err(ListError::Malformed("a device listed twice"));
        }
    }
    Ok(DeviceList {
        root_key: *root_key,
        version: list.version,
        devices,
        list: signed.list.to_vec(),
        signature: signed.signature.to_vec(),
    })
}

/// A contact's first list (from its invite or hello): signed by the root
/// key it came with, and naming `sender`, the device we met.
pub fn accept_first(
    root_key: &[u8],
    signed: &pb::DeviceSignedList,
    sender: &[u8; 32],
) -> Result<DeviceList, ListError> {
    let root = key32(root_key).ok_or(ListError::Malformed("root key"))?;
    let list = verify_list(&root, signed)?;
    if list.device(sender).is_none() {
        return Err(ListError::SenderMissing);
    }
    Ok(list)
}

/// A list update: signed by the pinned root key and newer than `held`.
pub fn accept_update(
    held: &DeviceList,
    signed: &pb::DeviceSignedList,
) -> Result<DeviceList, ListError> {
    let list = verify_list(&held.root_key, signed)?;
    if list.version <= held.version {
        return Err(ListError::Stale {
            got: list.version,
            held: held.version,
        });
    }
    Ok(list)
}

/// Whether a message from device `sender` of a contact may be read: with
/// no list held (a contact from before device lists), only the device we
/// met (`met`); with a list, only the devices it names.
pub fn may_send(list: Option<&DeviceList>, met: &[u8; 32], sender: &[u8; 32]) -> bool {
    match list {
        Some(l) => l.device(sender).is_some(),
        None => met == sender,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> Device {
        Device {
            id: [n; 8],
            identity_key: [n; 32],
            signing_key: [n; 32],
            seal_key: [n; 32],
            relay_url: format!("tern://127.0.0.1:4433?fp={}", "ab".repeat(32)),
            mailbox_id: [n; 16],
            token: Some([n; 32]),
            name: format!("d{n}"),
            added_at_ms: 1,
            fallback_key: [n; 32],
        }
    }

    #[test]
    fn a_signed_list_verifies_and_reads_back() {
        let root = RootKey::generate();
        let l = sign_list(&root, 3, vec![device(1), device(2)]);
        let got = verify_list(&root.public(), &l.signed()).unwrap();
        assert_eq!(got, l);
        assert!(got.device(&[2; 32]).is_some());
        assert!(got.device(&[9; 32]).is_none());
    }

    #[test]
    fn another_root_or_a_changed_list_is_refused() {
        let root = RootKey::generate();
        let other = RootKey::generate();
        let l = sign_list(&root, 1, vec![device(1)]);
        assert_eq!(
            verify_list(&other.public(), &l.signed()),
            Err(ListError::BadSignature)
        );
        let mut tampered = l.signed();
        let mut bytes = tampered.list.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        tampered.list = bytes.into();
        assert_eq!(
            verify_list(&root.public(), &tampered),
            Err(ListError::BadSignature)
        );
        // Signed by `other` but naming `root`: refused for the signature when
        // checked against root, and for the root when checked against other.
        let forged = sign_list(&other, 9, vec![device(1), device(7)]);
        assert_eq!(
            accept_update(&l, &forged.signed()),
            Err(ListError::BadSignature)
        );
    }

    #[test]
    fn updates_must_be_newer() {
        let root = RootKey::generate();
        let held = sign_list(&root, 2, vec![device(1)]);
        let same = sign_list(&root, 2, vec![device(1), device(2)]);
        assert_eq!(
            accept_update(&held, &same.signed()),
            Err(ListError::Stale { got: 2, held: 2 })
        );
        let newer = sign_list(&root, 3, vec![device(2)]);
        assert_eq!(accept_update(&held, &newer.signed()).unwrap().version, 3);
    }

    #[test]
    fn malformed_lists_are_refused() {
        let root = RootKey::generate();
        let empty = sign_list(&root, 1, vec![]);
        assert!(matches!(
            verify_list(&root.public(), &empty.signed()),
            Err(ListError::Malformed(_))
        ));
        let twice = sign_list(&root, 1, vec![device(1), device(1)]);
        assert!(matches!(
            verify_list(&root.public(), &twice.signed()),
            Err(ListError::Malformed(_))
        ));
        let many = sign_list(&root, 1, (0..=MAX_DEVICES as u8).map(device).collect());
        assert!(matches!(
            verify_list(&root.public(), &many.signed()),
            Err(ListError::Malformed(_))
        ));
        let mut bad = device(1);
        bad.relay_url = "nope".into();
        let l = sign_list(&root, 1, vec![bad]);
        assert_eq!(
            verify_list(&root.public(), &l.signed()),
            Err(ListError::Malformed("relay URL"))
        );
    }

    #[test]
    fn a_first_list_must_name_its_sender() {
        let root = RootKey::generate();
        let l = sign_list(&root, 1, vec![device(1), device(2)]);
        assert!(accept_first(&root.public(), &l.signed(), &[2; 32]).is_ok());
        assert_eq!(
            accept_first(&root.public(), &l.signed(), &[3; 32]),
            Err(ListError::SenderMissing)
        );
        assert!(accept_first(&[1; 31], &l.signed(), &[2; 32]).is_err());
    }

    #[test]
    fn only_listed_devices_may_send() {
        let root = RootKey::generate();
        let l = sign_list(&root, 1, vec![device(1), device(2)]);
        assert!(may_send(Some(&l), &[1; 32], &[2; 32]));
        assert!(!may_send(Some(&l), &[1; 32], &[3; 32]));
        // A removed first device is refused too once a list says so.
        let later = sign_list(&root, 2, vec![device(2)]);
        assert!(!may_send(Some(&later), &[1; 32], &[1; 32]));
        assert!(may_send(None, &[1; 32], &[1; 32]));
        assert!(!may_send(None, &[1; 32], &[2; 32]));
    }
}
