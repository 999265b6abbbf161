//! Mailbox and send-token records, the ones that change rarely, in sled.
//! They share one tree (`relay`), told apart by a prefix byte:
//!
//! | prefix | key after the prefix   | value                                                        |
//! |--------|------------------------|--------------------------------------------------------------|
//! | `m`    | mailbox id (16)        | auth key (32), next seq floor, 0, 0, tokens, created (8 each) |
//! | `t`    | SHA-256 of token (32)  | mailbox id (16), revoked (1)                                 |
//!
//! All integers are big-endian. A mailbox record's envelope and byte counts
//! are always 0 on disk: what is held is counted by the envelope index. Its
//! next sequence number is a floor, raised at checkpoints, below which no
//! number is handed out again.
//!
//! Writes land in sled's memory and mark the records dirty; the engine's
//! group commit calls [`Meta::flush_if_dirty`] so only flushes after a
//! record changed pay for a sled flush.
//!
//! Durability: sled 0.34's `flush` ends in `sync_file_range` on Linux,
//! which neither flushes the disk's cache nor the file's metadata. After
//! it, [`Meta::flush`] `fsync`s sled's files and directory itself, so a
//! record is durable across power loss before its reply. A failed flush or
//! fsync ends the process (`durability::fatal`), as a failed log sync does:
//! retrying it could report success over pages the kernel dropped
//! (docs/decisions.md, "Durable metadata").

use super::token_cache::TokenCache;
use super::{unavailable, MailboxId, MailboxRecord, StoreError, TokenHash, TokenRecord};
use ::sled::{Batch, Db, Tree};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const MAILBOX: u8 = b'm';
const TOKEN: u8 = b't';
/// The tree holding both kinds of record.
const TREE: &str = "relay";

/// What a revocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// No such token, or it writes to another mailbox: nothing changed.
    NotThisMailbox,
    /// It was revoked before: nothing changed.
    Already,
    /// Revoked now; the change awaits a flush.
    Now,
}

/// The sled database of mailbox and token records.
pub struct Meta {
    db: Db,
    /// sled's directory, whose files [`Meta::flush`] fsyncs.
    dir: std::path::PathBuf,
    tree: Tree,
    /// A mailbox or token record changed since sled was last flushed.
    dirty: AtomicBool,
    /// Held across taking `dirty` and flushing, so a second caller waits for
    /// a flush already under way instead of skipping it.
    flushing: Mutex<()>,
    /// Token records in use, in front of `tree`.
    tokens: TokenCache,
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt("short integer"))
}

fn key(prefix: u8, part: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + part.len());
    k.push(prefix);
    k.extend_from_slice(part);
    k
}

fn mailbox_key(id: &MailboxId) -> Vec<u8> {
    key(MAILBOX, id)
}

fn token_key(hash: &TokenHash) -> Vec<u8> {
    key(TOKEN, hash)
}

fn encode_mailbox(m: &MailboxRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&m.auth_key);
    for n in [m.next_seq, m.envelopes, m.bytes, m.tokens, m.created_ms] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    v
}

fn decode_mailbox(v: &[u8]) -> Result<MailboxRecord, StoreError> {
    let auth_key = v
        .get(..32)
        .and_then(|b| b.try_into().ok())
        .ok_or(StoreError::Corrupt("mailbox record"))?;
    Ok(MailboxRecord {
        auth_key,
        next_seq: u64_at(v, 32)?,
        envelopes: u64_at(v, 40)?,
        bytes: u64_at(v, 48)?,
        tokens: u64_at(v, 56)?,
        created_ms: u64_at(v, 64)?,
    })
}

/// Token value: mailbox id (16) ‖ revoked (1).
fn token_value(mailbox: &MailboxId, revoked: bool) -> Vec<u8> {
    let mut v = mailbox.to_vec();
    v.push(u8::from(revoked));
    v
}

impl Meta {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = ::sled::Config::new()
            .path(dir)
            // Durability comes from our own group-commit flushes; sled's
            // background flush stays on as a backstop.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(unavailable)?;
        let tree = db.open_tree(TREE).map_err(unavailable)?;
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            tree,
            dirty: AtomicBool::new(false),
            flushing: Mutex::new(()),
            tokens: TokenCache::default(),
        })
    }

    /// A mailbox's record as saved (envelope and byte counts 0).
    pub fn mailbox(&self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        match self.tree.get(mailbox_key(id)).map_err(unavailable)? {
            Some(v) => Ok(Some(decode_mailbox(&v)?)),
            None => Ok(None),
        }
    }

    /// Create a mailbox record unless the id is taken.
    pub fn create_mailbox(
        &self,
        id: MailboxId,
        auth_key: [u8; 32],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let record = MailboxRecord {
            auth_key,
            next_seq: 1,
            envelopes: 0,
            bytes: 0,
            tokens: 0,
            created_ms: now_ms,
        };
        let swapped = self
            .tree
            .compare_and_swap(
                mailbox_key(&id),
                None as Option<&[u8]>,
                Some(encode_mailbox(&record)),
            )
            .map_err(unavailable)?;
        self.dirty.store(true, Ordering::SeqCst);
        swapped.map_err(|_| StoreError::MailboxExists)
    }

    /// Record a token and count it against its mailbox. The caller holds
    /// the mailbox's index shard, which serialises changes to its record.
    pub fn add_token(
        &self,
        hash: TokenHash,
        mailbox: MailboxId,
        max_tokens: u64,
    ) -> Result<(), StoreError> {
        let mut m = self.mailbox(&mailbox)?.ok_or(StoreError::UnknownMailbox)?;
        if m.tokens >= max_tokens {
            return Err(StoreError::QuotaExceeded {
                envelopes: m.envelopes,
                bytes: m.bytes,
            });
        }
        m.tokens += 1;
        let mut batch = Batch::default();
        batch.insert(mailbox_key(&mailbox), encode_mailbox(&m));
        batch.insert(token_key(&hash), token_value(&mailbox, false));
        self.tokens
            .change(&hash, || self.tree.apply_batch(batch).map_err(unavailable))?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Look a token up by its hash.
    pub fn token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens.get(hash, || self.load_token(hash))
    }

    /// Read a token's record from sled.
    fn load_token(&self, hash: &TokenHash) -> Result<Option<TokenRecord>, StoreError> {
        let Some(v) = self.tree.get(token_key(hash)).map_err(unavailable)? else {
            return Ok(None);
        };
        let mailbox = v
            .get(..16)
            .and_then(|b| b.try_into().ok())
            .ok_or(StoreError::Corrupt("token record"))?;
        Ok(Some(TokenRecord {
            mailbox,
            revoked: v.get(16) == Some(&1),
        }))
    }

    /// Revoke a token of `mailbox`. The caller holds the mailbox's shard.
    pub fn revoke_token(
        &self,
        hash: &TokenHash,
        mailbox: &MailboxId,
    ) -> Result<Revoked, StoreError> {
        self.tokens
            .change(hash, || self.write_revocation(hash, mailbox))
    }

    fn write_revocation(
        &self,
        hash: &TokenHash,
        mailbox: &MailboxId,
    ) -> Result<Revoked, StoreError> {
        let tkey = token_key(hash);
        let Some(v) = self.tree.get(&tkey).map_err(unavailable)? else {
            return Ok(Revoked::NotThisMailbox);
        };
        if v.get(..16) != Some(&mailbox[..]) {
            return Ok(Revoked::NotThisMailbox);
        }
        if v.get(16) == Some(&1) {
            return Ok(Revoked::Already);
        }
        let mut batch = Batch::default();
        batch.insert(tkey, token_value(mailbox, true));
        if let Some(mut m) = self.mailbox(mailbox)? {
            m.tokens = m.tokens.saturating_sub(1);
            batch.insert(mailbox_key(mailbox), encode_mailbox(&m));
        }
        self.tree.apply_batch(batch).map_err(unavailable)?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(Revoked::Now)
    }

    /// Raise a mailbox's saved next-sequence floor to `next` (not flushed:
    /// see [`Self::flush`]). The caller holds the mailbox's shard.
    pub fn raise_next_seq(&self, id: &MailboxId, next: u64) -> Result<(), StoreError> {
        if let Some(mut rec) = self.mailbox(id)? {
            if rec.next_seq < next {
                rec.next_seq = next;
                self.tree
                    .insert(mailbox_key(id), encode_mailbox(&rec))
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Flush sled now, whatever changed, and fsync its files and
    /// directory; a failure ends the process.
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Err(e) = self.db.flush() {
            super::durability::fatal(&format!("flush of the metadata database failed: {e}"));
        }
        self.fsync_files()
    }

    /// `fsync` every file sled keeps in its directory, and the directory.
    fn fsync_files(&self) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(unavailable)?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // sled's files: `db`, `conf`, `snap.*` (and `blobs/`, unused
            // for records this small). Segment files live elsewhere.
            if name == "db" || name == "conf" || name.starts_with("snap.") {
                let synced = std::fs::File::open(entry.path()).and_then(|f| f.sync_all());
                if let Err(e) = synced {
                    super::durability::fatal(&format!("fsync of metadata file {name} failed: {e}"));
                }
            }
        }
        if let Err(e) = std::fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            super::durability::fatal(&format!("fsync of the metadata directory failed: {e}"));
        }
        Ok(())
    }

    /// Flush sled if a record changed since the last flush.
    pub fn flush_if_dirty(&self) -> Result<(), StoreError> {
        let _flushing = self.flushing.lock().map_err(|_| super::poisoned())?;
        if self.dirty.swap(false, Ordering::SeqCst) {
            self.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Existing relays' databases must keep opening: these bytes are the
    /// format, not an implementation detail.
    #[test]
    fn records_keep_their_on_disk_layout() {
        assert_eq!(
            mailbox_key(&[0xAA; 16]),
            [&[b'm'][..], &[0xAA; 16]].concat()
        );
        assert_eq!(token_key(&[0xBB; 32]), [&[b't'][..], &[0xBB; 32]].concat());
        assert_eq!(
            token_value(&[0xCC; 16], true),
            [&[0xCC; 16][..], &[1]].concat()
        );
        let rec = MailboxRecord {
            auth_key: [7; 32],
            next_seq: 0x0102,
            envelopes: 0,
            bytes: 0,
            tokens: 3,
            created_ms: 0x0A0B_0C0D,
        };
        let bytes = encode_mailbox(&rec);
        let mut want = vec![7u8; 32];
        for n in [0x0102u64, 0, 0, 3, 0x0A0B_0C0D] {
            want.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(bytes, want);
        assert_eq!(decode_mailbox(&bytes), Ok(rec));
        assert_eq!(
            decode_mailbox(&bytes[..70]),
            Err(StoreError::Corrupt("short integer"))
        );
    }

    #[test]
    fn a_token_read_before_its_revocation_is_seen_revoked_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.create_mailbox([1; 16], [2; 32], 3).unwrap();
        meta.add_token([5; 32], [1; 16], 10).unwrap();
        let live = TokenRecord {
            mailbox: [1; 16],
            revoked: false,
        };
        // Read twice: the second from memory.
        assert_eq!(meta.token(&[5; 32]).unwrap(), Some(live));
        assert_eq!(meta.token(&[5; 32]).unwrap(), Some(live));
        assert_eq!(meta.revoke_token(&[5; 32], &[1; 16]).unwrap(), Revoked::Now);
        let revoked = TokenRecord {
            revoked: true,
            ..live
        };
        assert_eq!(meta.token(&[5; 32]).unwrap(), Some(revoked));
        // A token added after a miss on it is found.
        assert_eq!(meta.token(&[6; 32]).unwrap(), None);
        meta.add_token([6; 32], [1; 16], 10).unwrap();
        assert_eq!(meta.token(&[6; 32]).unwrap(), Some(live));
    }

    #[test]
    fn flush_if_dirty_flushes_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.create_mailbox([1; 16], [2; 32], 3).unwrap();
        assert!(meta.dirty.load(Ordering::SeqCst));
        meta.flush_if_dirty().unwrap();
        assert!(!meta.dirty.load(Ordering::SeqCst));
    }
}
