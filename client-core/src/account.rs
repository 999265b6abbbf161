//! Creating and opening an account: the device's keys, its profile and the
//! encrypted store in the home directory. The store key lives in a file of
//! its own, readable by the owner only: either the raw 32 bytes, or (with a
//! passphrase) wrapped under an Argon2id key
//! ([`tern_crypto::passphrase`]), so that a copy of the home directory
//! alone opens nothing.

use crate::client::Client;
use crate::error::ClientError;
use crate::layers::key32;
use crate::store::{LocalStore, Profile};
use crate::transport::Dialer;
use std::path::Path;
use tern_crypto::passphrase::{is_wrapped, unwrap_store_key, wrap_store_key, KdfCost};
use tern_crypto::{CryptoError, DeviceAccount, StoreKey};
use tern_protocol::url::RelayUrl;

const KEY_FILE: &str = "store.key";
const STORE_DIR: &str = "store";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

impl Client {
    /// Protect this account's store key with `passphrase` from now on, or
    /// (with `None`) store it unprotected again. The key itself does not
    /// change, so nothing else is rewritten; the key file is replaced
    /// atomically (written beside it, synced, renamed).
    pub fn set_passphrase(&self, passphrase: Option<&[u8]>) -> Result<(), ClientError> {
        let bytes = match passphrase {
            Some([]) => return Err(ClientError::EmptyPassphrase),
            Some(p) => wrap_store_key(&self.key, p, KdfCost::DEFAULT)?,
            None => self.key.to_bytes().to_vec(),
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        let key_path = self.home.join(KEY_FILE);
        let fresh = self.home.join(format!("{KEY_FILE}.new"));
        let _ = std::fs::remove_file(&fresh);
        write_secret(&fresh, &bytes)?;
        std::fs::rename(&fresh, &key_path).map_err(io_err(&key_path))?;
        if let Ok(dir) = std::fs::File::open(&self.home) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Create an account in `home`, registering a mailbox on `relay`.
    pub async fn init(home: &Path, relay: &RelayUrl, name: &str) -> Result<Self, ClientError> {
        Self::init_with(home, relay, name, None).await
    }

    /// [`Client::init`], protecting the store key with `passphrase` if
    /// one is given (every later open then needs it).
    pub async fn init_with(
        home: &Path,
        relay: &RelayUrl,
        name: &str,
        passphrase: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        if passphrase.is_some_and(|p| p.is_empty()) {
            return Err(ClientError::EmptyPassphrase);
        }
        let key_path = home.join(KEY_FILE);
        if key_path.exists() {
            return Err(ClientError::AccountExists(home.to_path_buf()));
        }
        let account = DeviceAccount::new();
        let mut dialer = Dialer::default();
        let link = dialer.connect(relay).await?;
        let mailbox_id = link.register(account.signing_key()).await?;
        link.close();

        std::fs::create_dir_all(home).map_err(io_err(home))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        }
        let key = StoreKey::generate();
        match passphrase {
            Some(p) => write_secret(&key_path, &wrap_store_key(&key, p, KdfCost::DEFAULT)?)?,
            None => write_secret(&key_path, &key.to_bytes())?,
        }
        let store = LocalStore::open(&home.join(STORE_DIR), key.clone())?;
        let profile = Profile {
            name: name.to_string(),
            relay_url: relay.to_string(),
            mailbox_id,
        };
        store.set_account_pickle(account.to_encrypted_pickle(&key))?;
        store.set_profile(&profile)?;
        store.flush().await?;
        Ok(Self {
            home: home.to_path_buf(),
            key,
            store,
            account,
            profile,
            dialer,
            group_news: false,
            direct_news: Default::default(),
            group_states: Default::default(),
        })
    }

    /// Open the account in `home` (its store key must not be protected by
    /// a passphrase: see [`Client::open_with`]).
    pub fn open(home: &Path) -> Result<Self, ClientError> {
        Self::open_with(home, None)
    }

    /// Open the account in `home`, unwrapping its store key with
    /// `passphrase` if it is protected by one. A protected key without a
    /// passphrase is [`ClientError::PassphraseNeeded`]; a wrong one,
    /// [`ClientError::WrongPassphrase`]. A passphrase given for an
    /// unprotected key is ignored.
    pub fn open_with(home: &Path, passphrase: Option<&[u8]>) -> Result<Self, ClientError> {
        let key_path = home.join(KEY_FILE);
        if !key_path.exists() {
            return Err(ClientError::NoAccount(home.to_path_buf()));
        }
        let raw = zeroize::Zeroizing::new(std::fs::read(&key_path).map_err(io_err(&key_path))?);
        let key = if is_wrapped(&raw) {
            let p = passphrase.ok_or(ClientError::PassphraseNeeded)?;
            unwrap_store_key(&raw, p).map_err(|e| match e {
                CryptoError::WrongPassphrase => ClientError::WrongPassphrase,
                e => ClientError::Crypto(e),
            })?
        } else {
            let bytes =
                key32(&raw).ok_or_else(|| ClientError::Store("store.key is damaged".into()))?;
            StoreKey::from_bytes(bytes)
        };
        let store = LocalStore::open(&home.join(STORE_DIR), key.clone())?;
        let pickle = store
            .account_pickle()?
            .ok_or_else(|| ClientError::NoAccount(home.into()))?;
        let account = DeviceAccount::from_encrypted_pickle(&pickle, &key)?;
        let profile = store
            .profile()?
            .ok_or_else(|| ClientError::NoAccount(home.into()))?;
        let mut client = Self {
            home: home.to_path_buf(),
            key,
            store,
            account,
            profile,
            dialer: Dialer::default(),
            group_news: false,
            direct_news: Default::default(),
            group_states: Default::default(),
        };
        // Accounts from before device lists get a root key and a list of
        // this one device (devices/mod.rs); single-device use is unchanged.
        client.own_devices()?;
        Ok(client)
    }
}
