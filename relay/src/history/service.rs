//! History requests without sockets: check the connection is authenticated
//! and the request is signed by its account's key on this TLS session,
//! check its bounds, and run it on the [`HistoryStore`]. The connection
//! driver hands over any control request that
//! [`tern_protocol::history::is_history`] names, off the async workers.

use super::{AccountId, Cursor, HistoryError, HistoryQuota, HistoryStore, NewBlob, Tag};
use crate::clock::Clock;
use crate::core::ConnAuth;
use ed25519_dalek::{Signature, VerifyingKey};
use std::sync::Arc;
use tern_protocol::history::{history_auth, history_signed_bytes, HISTORY_MAX_KEEP_DAYS};
use tern_protocol::pb::{self, control_request::Request, control_response::Response};
use tern_protocol::{ErrorCode, WireError};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The bounds on what history requests may make the relay hold and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Per account and relay-wide.
    pub quota: HistoryQuota,
    /// Largest blob ciphertext, bytes.
    pub max_blob_bytes: usize,
    /// Most blobs in one put.
    pub max_blobs_per_put: usize,
    /// Most blobs in one page.
    pub max_page_blobs: usize,
    /// Most ciphertext bytes in one page (it must fit a frame).
    pub max_page_bytes: usize,
}

impl HistoryLimits {
    /// Bounds from the relay's limits.
    pub fn from_limits(l: &crate::config::Limits) -> Self {
        Self {
            quota: HistoryQuota {
                account_bytes: l.history_account_max_bytes,
                account_blobs: l.history_account_max_blobs,
                total_bytes: l.history_max_total_bytes,
            },
            max_blob_bytes: l.history_max_blob_bytes,
            max_blobs_per_put: 256,
            max_page_blobs: 256,
            // Room for the frame's other fields: 32 bytes a blob at most.
            max_page_bytes: l.max_frame_bytes.saturating_sub(256 * 32 + 64),
        }
    }
}

/// History request handling over a store and a clock.
pub struct HistoryService {
    store: Arc<dyn HistoryStore>,
    clock: Arc<dyn Clock>,
    limits: HistoryLimits,
}

fn store_error(e: HistoryError) -> WireError {
    match e {
        HistoryError::AccountFull(what) => {
            WireError::new(ErrorCode::HistoryQuotaExceeded, format!("history: {what}"))
        }
        HistoryError::RelayFull => WireError::new(
            ErrorCode::HistoryQuotaExceeded,
            "the relay holds all the history it allows",
        )
        .retry_after(60_000),
        HistoryError::Unavailable(_) | HistoryError::Corrupt(_) => {
            tracing::warn!("history store: {e}");
            WireError::new(ErrorCode::StorageUnavailable, "history storage unavailable")
                .retry_after(1_000)
        }
    }
}

fn malformed(what: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Malformed, what)
}

fn tag_of(b: &[u8]) -> Result<Tag, WireError> {
    b.try_into()
        .map_err(|_| malformed("a history tag is 16 bytes"))
}

impl HistoryService {
    /// A service over `store`, timing expiry by `clock`.
    pub fn new(store: Arc<dyn HistoryStore>, clock: Arc<dyn Clock>, limits: HistoryLimits) -> Self {
        Self {
            store,
            clock,
            limits,
        }
    }

    /// Answer `req` if it is a history request (`None` otherwise).
    /// `exporter` is this TLS session's keying material, which the
    /// signature must cover. Writes are durable before this returns.
    pub fn control(
        &self,
        conn: &ConnAuth,
        exporter: &[u8],
        req: &pb::ControlRequest,
    ) -> Option<pb::ControlResponse> {
        history_auth(req)?;
        let result = self.answer(conn, exporter, req);
        Some(pb::ControlResponse {
            response: Some(result.unwrap_or_else(|e| Response::Error(e.into()))),
        })
    }

    fn answer(
        &self,
        conn: &ConnAuth,
        exporter: &[u8],
        req: &pb::ControlRequest,
    ) -> Result<Response, WireError> {
        if conn.mailbox().is_none() {
            return Err(WireError::new(
                ErrorCode::NotAuthenticated,
                "authenticate first",
            ));
        }
        let account = self.verify(exporter, req)?;
        match &req.request {
            Some(Request::HistoryPut(p)) => self.put(&account, p).map(Response::HistoryStored),
            Some(Request::HistoryPage(p)) => self.page(&account, p).map(Response::HistoryBlobs),
            Some(Request::HistoryDelete(_)) => {
                let blobs = self.store.delete_account(&account).map_err(store_error)?;
                self.store.flush().map_err(store_error)?;
                Ok(Response::HistoryDeleted(pb::HistoryDeleted { blobs }))
            }
            _ => Err(WireError::new(
                ErrorCode::Unsupported,
                "not a history request",
            )),
        }
    }

    /// The account whose key signed `req` on this session.
    fn verify(&self, exporter: &[u8], req: &pb::ControlRequest) -> Result<AccountId, WireError> {
        let failed = || WireError::new(ErrorCode::HistoryAuthFailed, "history signature invalid");
        let auth = history_auth(req).flatten().ok_or_else(failed)?;
        let account: AccountId = auth.account_key[..].try_into().map_err(|_| failed())?;
        let key = VerifyingKey::from_bytes(&account).map_err(|_| failed())?;
        let sig = Signature::from_slice(&auth.signature).map_err(|_| failed())?;
        let signed = history_signed_bytes(exporter, req).ok_or_else(failed)?;
        key.verify_strict(&signed, &sig).map_err(|_| failed())?;
        Ok(account)
    }

    fn put(&self, account: &AccountId, p: &pb::HistoryPut) -> Result<pb::HistoryStored, WireError> {
        if !(1..=HISTORY_MAX_KEEP_DAYS).contains(&p.keep_days) {
            return Err(malformed(format!(
                "keep_days must be 1-{HISTORY_MAX_KEEP_DAYS}"
            )));
        }
        if p.blobs.is_empty() || p.blobs.len() > self.limits.max_blobs_per_put {
            return Err(malformed(format!(
                "a put holds 1-{} blobs",
                self.limits.max_blobs_per_put
            )));
        }
        let mut blobs = Vec::with_capacity(p.blobs.len());
        for b in &p.blobs {
            if b.ciphertext.is_empty() || b.ciphertext.len() > self.limits.max_blob_bytes {
                return Err(malformed(format!(
                    "a blob holds 1-{} bytes",
                    self.limits.max_blob_bytes
                )));
            }
            blobs.push(NewBlob {
                tag: tag_of(&b.tag)?,
                bucket_ms: b.bucket_ms,
                ciphertext: &b.ciphertext,
            });
        }
        let expires = self
            .clock
            .now_ms()
            .saturating_add(u64::from(p.keep_days) * DAY_MS);
        let stored = self
            .store
            .put(account, &blobs, expires, self.limits.quota)
            .map_err(store_error)?;
        self.store.flush().map_err(store_error)?;
        Ok(pb::HistoryStored { stored })
    }

    fn page(
        &self,
        account: &AccountId,
        p: &pb::HistoryPage,
    ) -> Result<pb::HistoryBlobs, WireError> {
        let tag = tag_of(&p.tag)?;
        let before = if p.cursor.is_empty() {
            Cursor {
                bucket_ms: if p.before_ms == 0 {
                    u64::MAX
                } else {
                    p.before_ms
                },
                seq: 0,
            }
        } else {
            Cursor::from_bytes(&p.cursor).ok_or_else(|| malformed("bad history cursor"))?
        };
        let limit = (p.limit as usize).clamp(1, self.limits.max_page_blobs);
        // One more than asked says whether there are more.
        let mut blobs = self
            .store
            .page(
                account,
                &tag,
                before,
                limit + 1,
                self.limits.max_page_bytes,
                self.clock.now_ms(),
            )
            .map_err(store_error)?;
        let more = blobs.len() > limit || {
            // Cut short by bytes: there may be more.
            blobs.len() < limit + 1 && !blobs.is_empty() && self.page_was_cut(&blobs)
        };
        blobs.truncate(limit);
        let cursor = match (more, blobs.last()) {
            (true, Some(b)) => Cursor {
                bucket_ms: b.bucket_ms,
                seq: b.seq,
            }
            .to_bytes()
            .to_vec(),
            _ => Vec::new(),
        };
        Ok(pb::HistoryBlobs {
            blobs: blobs
                .into_iter()
                .map(|b| pb::HistoryBlob {
                    bucket_ms: b.bucket_ms,
                    ciphertext: b.ciphertext.into(),
                })
                .collect(),
            cursor: cursor.into(),
        })
    }

    /// Whether a page stopped for its byte bound (so more may follow).
    fn page_was_cut(&self, blobs: &[super::StoredBlob]) -> bool {
        let taken: usize = blobs.iter().map(|b| b.ciphertext.len()).sum();
        taken + self.limits.max_blob_bytes > self.limits.max_page_bytes
    }

    /// Delete expired blobs now; returns how many.
    pub fn sweep(&self) -> Result<u64, WireError> {
        let n = self.store.sweep(self.clock.now_ms()).map_err(store_error)?;
        if n > 0 {
            self.store.flush().map_err(store_error)?;
        }
        Ok(n)
    }

    /// Blobs and bytes an account holds (for tests and operators).
    pub fn usage(&self, account: &AccountId) -> Result<(u64, u64), WireError> {
        self.store.usage(account).map_err(store_error)
    }
}
