//! The [`Client`]: one device's account, store and relay connections, and
//! the one-shot operations an app or the CLI calls on it. The work is done
//! in the modules named for each job: [`crate::account`] (creating and
//! opening), [`crate::contacts`] (invites, introductions, blocking),
//! [`crate::outbox`] (sending), [`crate::inbox`] (receiving) and
//! [`crate::layers`] (the message encryption, pure). To send while
//! receiving, hand the client to [`crate::spawn`].
//!
//! Every operation is safe to interrupt: what was sent is in the outbox
//! until a relay has it durably, and what was received is stored (with the
//! ratchet state that decrypted it) before it is acknowledged.

use crate::error::ClientError;
use crate::store::{Contact, ContactId, LocalStore, Profile, StoredMessage};
use crate::transport::{Dialer, RelayLink};
use rand::RngCore;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tern_crypto::{DeviceAccount, PairSession, StoreKey};
use tern_protocol::url::RelayUrl;

/// A Tern device: its account, store and relay connections.
pub struct Client {
    pub(crate) home: PathBuf,
    pub(crate) key: StoreKey,
    pub(crate) store: LocalStore,
    pub(crate) account: DeviceAccount,
    pub(crate) profile: Profile,
    pub(crate) dialer: Dialer,
    /// Receiving queued group control messages for other members (an
    /// update to pass on, our new card): flush soon.
    pub(crate) group_news: bool,
    /// What receiving learned for direct paths (contacts heard from,
    /// their path offers), for the running client to act on.
    pub(crate) direct_news: crate::direct::offer::News,
    /// Each group's membership as last replayed, by group id, with the
    /// digest of the op set it was replayed from (`groups::Client::group_state`).
    pub(crate) group_states: std::sync::Mutex<crate::groups::StateCache>,
}

/// The wall clock, ms since the epoch: the one place the client reads it
/// (tests and the load generator stamp messages with it too).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random message id.
pub fn random16() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    id
}

impl Client {
    /// This device's profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<Contact>, ClientError> {
        self.store.contacts()
    }

    /// The last `limit` messages with the contact named `name`, oldest first.
    pub fn history(&self, name: &str, limit: usize) -> Result<Vec<StoredMessage>, ClientError> {
        let contact = self.contact_named(name)?;
        self.store.history(&contact.identity_key, limit)
    }

    /// Messages still waiting in the outbox.
    pub fn outbox_len(&self) -> Result<usize, ClientError> {
        Ok(self.store.outbox()?.len())
    }

    /// Keep sends between `min` and `max` (drawn at random each time) away
    /// from this client's authentications and token minting, in either
    /// order (`spacing.rs`; default 300 ms to 3 s). Zero turns it off, for
    /// tests that do not look at timing.
    pub fn set_send_spacing(&self, min: Duration, max: Duration) {
        self.dialer.spacing().set_range(min, max);
    }

    /// Close relay connections politely (bounded wait); call before exiting.
    pub async fn close(self) {
        self.dialer.wait_idle(Duration::from_secs(1)).await;
    }

    /// The contact named `name`, or [`ClientError::UnknownContact`].
    pub(crate) fn contact_named(&self, name: &str) -> Result<Contact, ClientError> {
        self.store
            .contact_named(name)?
            .ok_or_else(|| ClientError::UnknownContact(name.into()))
    }

    pub(crate) fn save_account(&self) -> Result<(), ClientError> {
        self.store
            .set_account_pickle(self.account.to_encrypted_pickle(&self.key))
    }

    pub(crate) fn load_session(
        &self,
        contact: &ContactId,
    ) -> Result<Option<PairSession>, ClientError> {
        match self.store.session(contact)? {
            Some(p) => Ok(Some(PairSession::from_encrypted_pickle(&p, &self.key)?)),
            None => Ok(None),
        }
    }

    /// A connection to the home relay, authenticated as our mailbox.
    pub(crate) async fn home_link(&mut self) -> Result<RelayLink, ClientError> {
        let account = &self.account;
        authenticated_link(
            &mut self.dialer,
            &self.profile.relay_url,
            &self.profile.mailbox_id,
            |m| account.sign(m),
        )
        .await
    }
}

/// A connection to `relay_url`, authenticated as owner of `mailbox` with
/// `sign` (the device's signing key). Needs no `Client`, so the running
/// client can connect in a task of its own.
pub(crate) async fn authenticated_link(
    dialer: &mut Dialer,
    relay_url: &str,
    mailbox: &[u8; 16],
    sign: impl Fn(&[u8]) -> [u8; 64],
) -> Result<RelayLink, ClientError> {
    let url: RelayUrl = relay_url.parse()?;
    dialer.connect_authenticated(&url, mailbox, sign).await
}

#[cfg(test)]
impl Client {
    /// A client whose home relay URL does not parse: it never connects, so
    /// everything but the network can be tested with it.
    pub(crate) fn offline_for_tests(dir: &Path) -> Self {
        let key = StoreKey::generate();
        Client {
            home: dir.to_path_buf(),
            #[allow(clippy::unwrap_used)]
            store: LocalStore::open(&dir.join("store"), key.clone()).unwrap(),
            key,
            account: DeviceAccount::new(),
            profile: Profile {
                name: "ann".into(),
                relay_url: "not a relay".into(),
                mailbox_id: [1; 16],
            },
            dialer: Dialer::default(),
            group_news: false,
            direct_news: Default::default(),
            group_states: Default::default(),
        }
    }
}
