//! Linking, the new device's side: create the store and a mailbox, send
//! the hello to the link mailbox, show the check code, and, once the user
//! confirmed, take on the existing device's bundle (the protocol is in
//! [`super::link`] and docs/protocol.md §13).

use super::link::{check_code, deposit, link_key, wait_for, BUNDLE_AAD, HELLO_AAD};
use super::list::verify_list;
use super::OwnDevices;
use crate::client::Client;
use crate::error::ClientError;
use crate::layers::key32;
use prost::Message;
use std::path::Path;
use std::time::{Duration, Instant};
use tern_crypto::RootKey;
use tern_protocol::link::decode_link_code;
use tern_protocol::pb;
use tern_protocol::url::RelayUrl;

/// A new device waiting for the existing one's answer.
pub struct PendingLink {
    /// The digits to compare with the existing device's.
    pub check_code: String,
    pub(super) secret: [u8; 32],
    pub(super) existing: [u8; 32],
    pub(super) device_id: [u8; 8],
}

impl Client {
    /// On the new device: create the account's store in `home` with a
    /// mailbox of its own (on `relay`, or the code's relay), and send our
    /// hello to the existing device. Then compare [`PendingLink::check_code`]
    /// and call [`Client::link_complete`], or [`Client::discard`].
    pub async fn link_join(
        home: &Path,
        code: &str,
        device_name: &str,
        relay: Option<&RelayUrl>,
        passphrase: Option<&[u8]>,
    ) -> Result<(Client, PendingLink), ClientError> {
        let code = decode_link_code(code)?;
        let bad = |what: &'static str| ClientError::Device(format!("link code has a bad {what}"));
        let secret = key32(&code.secret).ok_or(bad("secret"))?;
        let existing = key32(&code.identity_key).ok_or(bad("identity key"))?;
        let mailbox: [u8; 16] = code.mailbox_id[..].try_into().map_err(|_| bad("mailbox"))?;
        let token = key32(&code.send_token).ok_or(bad("token"))?;
        let code_relay: RelayUrl = code.relay_url.parse()?;
        let relay = relay.unwrap_or(&code_relay);
        let mut client = Client::init_with(home, relay, device_name, passphrase).await?;
        let result = async {
            let own_token = client.mint_own_token().await?;
            let me = client.my_device(super::random_id(), Some(own_token), device_name);
            client.save_account()?;
            client.store.flush().await?;
            let hello = pb::LinkHello {
                device: Some(me.to_pb()),
            };
            let payload = link_key(&secret).encrypt(HELLO_AAD, &hello.encode_to_vec());
            deposit(&mut client, &code.relay_url, mailbox, token, payload).await?;
            Ok::<_, ClientError>(PendingLink {
                check_code: check_code(&secret, &existing, &client.account.identity_key()),
                secret,
                existing,
                device_id: me.id,
            })
        }
        .await;
        match result {
            Ok(p) => Ok((client, p)),
            Err(e) => {
                client.discard();
                Err(e)
            }
        }
    }

    /// On the new device, after the user confirmed: wait (at most
    /// `timeout`) for the existing device's bundle and take it on.
    pub async fn link_complete(
        &mut self,
        pending: PendingLink,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let key = link_key(&pending.secret);
        let (link, mut stream) = self.subscribe_home().await?;
        let deadline = Instant::now() + timeout;
        let bundle = wait_for(&mut stream, deadline, |payload| {
            let plain = key.decrypt(BUNDLE_AAD, payload).ok()?;
            pb::LinkBundle::decode(&plain[..]).ok()
        })
        .await;
        stream.finish(Duration::from_secs(1)).await;
        link.close();
        let bundle = bundle?;
        let history_key = key32(&bundle.extra);
        self.take_bundle(bundle, &pending)?;
        // History on: the account's history key came along (the bundle's
        // settings already hold the days).
        if let Some(key) = history_key {
            let days = self.store.settings()?.history_days;
            self.import_history_key_bundle(key, days).await?;
        }
        self.store.flush().await
    }

    /// Store what the bundle carries, once its list checks out: signed by
    /// the root key it brings, naming the existing device and this one.
    fn take_bundle(&mut self, b: pb::LinkBundle, pending: &PendingLink) -> Result<(), ClientError> {
        let bad = |what: &str| ClientError::Device(format!("the link bundle has a bad {what}"));
        let secret = key32(&b.root_secret).ok_or_else(|| bad("root key"))?;
        let root = RootKey::from_bytes(&secret);
        let signed = b.list.ok_or_else(|| bad("device list"))?;
        let list = verify_list(&root.public(), &signed)?;
        let me = list
            .device(&self.account.identity_key())
            .ok_or_else(|| bad("device list (this device is not on it)"))?;
        if me.id != pending.device_id || list.device(&pending.existing).is_none() {
            return Err(bad("device list"));
        }
        if !b.settings.is_empty() {
            self.store
                .set_settings(&serde_json::from_slice(&b.settings)?)?;
        }
        // Each contact's list is checked again against its own root key;
        // the token we gave each is on the other device (not copied).
        for c in &b.contacts {
            self.add_contact_copy(c)?;
        }
        self.profile.name = b.name;
        self.store.set_profile(&self.profile)?;
        self.put_own(&OwnDevices {
            root_secret: *root.to_bytes(),
            device_id: pending.device_id,
            list,
        })?;
        // The account's groups, once this device knows its own list (it
        // acts for the member device of its account).
        self.take_link_groups(&b.groups)
    }

    /// Give up a home that [`Client::link_join`] created: its store and
    /// key file are deleted (the mailbox stays on the relay, unused).
    pub fn discard(self) {
        let home = self.home.clone();
        drop(self);
        let _ = std::fs::remove_file(home.join("store.key"));
        let _ = std::fs::remove_dir_all(home.join("store"));
    }
}
