//! Account backups (`tern backup export FILE`, `tern init --restore FILE`):
//! the whole local store (keys, Olm sessions, contacts, groups, settings,
//! local history, the history key, the outbox) and the store key, in one
//! file encrypted under a recovery phrase ([`tern_crypto::backup`]:
//! Argon2id, then ChaCha20-Poly1305).
//!
//! The payload is every sled tree of the store, copied as stored (values
//! stay sealed under the store key, which travels with them):
//!
//! ```text
//! "TERNACCT1" || store key (32) || { name len (u32) || name || count (u64)
//!     || { key len (u32) || key || value len (u32) || value } } ...
//! ```
//!
//! A backup is a snapshot: restored, the device is the account as it was
//! at export, with the same mailbox on the same relay, so it receives
//! whatever is still in the mailbox (everything not acknowledged by the
//! device that made the backup). Messages that device acknowledged after
//! the export are gone from the relay; they come back only through
//! history (`tern history --restore`) if history is on.

use crate::client::Client;
use crate::error::ClientError;
use std::path::Path;
use tern_crypto::backup::{new_recovery_phrase, open_backup, seal_backup};
use tern_crypto::passphrase::KdfCost;
use zeroize::Zeroizing;

const MAGIC: &[u8] = b"TERNACCT1";
/// Most bytes a backup file may be (a hostile file must not make us
/// allocate without bound).
pub const MAX_BACKUP_BYTES: u64 = 4 << 30;

fn bad() -> ClientError {
    ClientError::Backup("the backup's contents are damaged".into())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A reader over the payload that refuses to run past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ClientError> {
        if self.0.len() < n {
            return Err(bad());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<usize, ClientError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| bad())?;
        Ok(u32::from_be_bytes(b) as usize)
    }
    fn u64(&mut self) -> Result<u64, ClientError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| bad())?;
        Ok(u64::from_be_bytes(b))
    }
    fn bytes(&mut self) -> Result<&'a [u8], ClientError> {
        let n = self.u32()?;
        self.take(n)
    }
}

/// Write `bytes` to `path` readable by the owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    use std::io::Write;
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tern-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Client {
    /// The account as a backup payload (unencrypted: callers seal it).
    fn backup_payload(&self) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let db = self.store.db();
        let mut out = Zeroizing::new(MAGIC.to_vec());
        out.extend_from_slice(&self.key.to_bytes());
        for name in db.tree_names() {
            let tree = db.open_tree(&name)?;
            put_bytes(&mut out, &name);
            out.extend_from_slice(&(tree.len() as u64).to_be_bytes());
            for kv in tree.iter() {
                let (k, v) = kv?;
                put_bytes(&mut out, &k);
                put_bytes(&mut out, &v);
            }
        }
        Ok(out)
    }

    /// Write this account, encrypted under a new recovery phrase, to
    /// `path`; returns the phrase (shown once, to be written down).
    pub async fn export_backup(&self, path: &Path) -> Result<Zeroizing<String>, ClientError> {
        self.store.flush().await?;
        let payload = self.backup_payload()?;
        let phrase = new_recovery_phrase();
        let file = seal_backup(&phrase, &payload, KdfCost::DEFAULT)?;
        write_private(path, &file)?;
        Ok(phrase)
    }

    /// Bring back the account in the backup `file` into `home` (which must
    /// hold no account), with its recovery `phrase`; the store key is
    /// protected by `passphrase` if one is given.
    pub async fn restore_backup(
        home: &Path,
        file: &[u8],
        phrase: &str,
        passphrase: Option<&[u8]>,
    ) -> Result<Self, ClientError> {
        if home.join("store.key").exists() {
            return Err(ClientError::AccountExists(home.to_path_buf()));
        }
        let payload = open_backup(phrase, file).map_err(|e| match e {
            tern_crypto::CryptoError::WrongPassphrase => {
                ClientError::Backup("wrong recovery phrase (or a damaged backup)".into())
            }
            _ => ClientError::Backup("not a tern backup file".into()),
        })?;
        let mut r = Reader(&payload);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(bad());
        }
        let key: [u8; 32] = r.take(32)?.try_into().map_err(|_| bad())?;
        let store_dir = home.join("store");
        std::fs::create_dir_all(home).map_err(|source| ClientError::Io {
            path: home.to_path_buf(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        }
        {
            let db = sled::open(&store_dir)?;
            while !r.0.is_empty() {
                let name = r.bytes()?;
                let tree = db.open_tree(name)?;
                let count = r.u64()?;
                let mut batch = sled::Batch::default();
                for _ in 0..count {
                    let k = r.bytes()?;
                    let v = r.bytes()?;
                    batch.insert(k, v);
                }
                tree.apply_batch(batch)?;
            }
            crate::store::flush_db(&db).await?;
        }
        // The key file last: a restore cut short leaves no account, and
        // can be run again.
        let key = tern_crypto::StoreKey::from_bytes(key);
        let key_file = match passphrase {
            Some([]) => return Err(ClientError::EmptyPassphrase),
            Some(p) => Zeroizing::new(tern_crypto::passphrase::wrap_store_key(
                &key,
                p,
                KdfCost::DEFAULT,
            )?),
            None => Zeroizing::new(key.to_bytes().to_vec()),
        };
        write_private(&home.join("store.key"), &key_file)?;
        // sled lets go of its lock a moment after the handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Client::open_with(home, passphrase) {
                Err(ClientError::Store(e))
                    if e.contains("lock") && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backup_restores_the_whole_store_in_a_fresh_home() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::offline_for_tests(&dir.path().join("a"));
        client.store.set_profile(&client.profile).unwrap();
        client.save_account().unwrap();
        client.set_read_receipts(false).await.unwrap();
        let hkey = client.history_key_bundle().unwrap();
        let file = dir.path().join("backup.tern");
        let phrase = client.export_backup(&file).await.unwrap();
        let raw = std::fs::read(&file).unwrap();
        assert!(
            !raw.windows(3).any(|w| w == b"ann"),
            "the backup is encrypted"
        );
        let home = dir.path().join("b");
        assert!(Client::restore_backup(&home, &raw, "AAAA-BBBB", None)
            .await
            .is_err());
        let restored = Client::restore_backup(&home, &raw, &phrase, None)
            .await
            .unwrap();
        assert_eq!(restored.profile().name, "ann");
        assert_eq!(
            restored.account.identity_key(),
            client.account.identity_key()
        );
        assert!(!restored.settings().unwrap().read_receipts);
        assert_eq!(restored.history_key_bundle().unwrap(), hkey);
        // Not over an existing account.
        assert!(matches!(
            Client::restore_backup(&home, &raw, &phrase, None).await,
            Err(ClientError::AccountExists(_))
        ));
    }
}
